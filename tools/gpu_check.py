"""The prepared GPU check: one GAD step with full fine-tuning and with LoRA (r = 16), in bf16, on random students of
Qwen2.5-0.5B and -1.5B shapes (Llama layers; nothing is downloaded), each setting in a fresh process.

    python tools/gpu_check.py                          # on a GPU (a few minutes) -> runs/gpu_check/gpu_check.json
    python tools/gpu_check.py --tiny                   # the same code on a 2-layer model, seconds on a CPU (the tests)

Each row: rollout tokens/s (generate alone), seconds per phase (tools/bench.py's: sample, d_score, d_update,
reference, g_update), peak GPU memory (torch's peak allocation), and the update's MFU: G's update FLOPs over
its seconds and the GPU's peak bf16 rate (--peak-tflops; 989 for an H100 or H200 SXM, dense). G's update FLOPs
are 6 x parameters x trained tokens with full fine-tuning, 4 x with LoRA (no weight gradients for the base).
Samples of a random model never end: every one runs to the 128-token limit.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = ["gpu-0.5b", "gpu-0.5b-lora", "gpu-1.5b", "gpu-1.5b-lora"]
TINY = ["gpu-tiny", "gpu-tiny-lora"]


def mfu(row, peak_tflops):
    """The update's model FLOPs utilisation of one bench.py row."""
    tokens = row["rows"] * (row["response_tokens"] + 32)        # bench.py's prompts are 32 tokens
    flops = (4 if row["lora"] else 6) * row["parameters"] * tokens
    return flops / (row["seconds"]["g_update"] * peak_tflops * 1e12)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the CPU smoke test: a 2-layer model")
    ap.add_argument("--out", default=os.path.join("runs", "gpu_check"), help="output folder")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (default 989)")
    a = ap.parse_args(argv)
    settings = TINY if a.tiny else REAL
    os.makedirs(a.out, exist_ok=True)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench.py"), "--only", *settings, "--steps", "1",
                        "--untimed", "1", "--out", a.out], cwd=ROOT, capture_output=True, text=True)
    print(p.stdout[-4000:] + p.stderr[-2000:])
    rows = json.load(open(os.path.join(a.out, "bench.json"))) if os.path.exists(os.path.join(a.out, "bench.json")) \
        else []
    if p.returncode != 0 or len(rows) != len(settings):
        raise SystemExit(f"gpu_check.py: {len(rows)} of {len(settings)} settings ran (see above)")
    out = {"peak_tflops": a.peak_tflops, "rows": [{**r, "update_mfu": mfu(r, a.peak_tflops)} for r in rows]}
    path = os.path.join(a.out, "gpu_check.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=2)
    os.replace(path + ".tmp", path)
    for r in out["rows"]:
        print(f"{r['setting']:>16}: {r['parameters'] / 1e6:,.0f}M parameters on {r['device']}, rollout "
              f"{r['rollout_tokens_per_s']:,.0f} tokens/s, step {r['seconds']['total']:.2f} s, peak "
              f"{r['peak_gb']:.2f} GB, update MFU {r['update_mfu']:.1%}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
