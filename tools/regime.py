"""The search for the paper's regime (docs/d_sees.md): does a change of world or data make D see validity?

    python tools/regime.py K1 K2              # seed 0 of each candidate (the screening)
    python tools/regime.py K2 --seeds 0 1 2   # the three seeds
    python tools/regime.py --summary          # the table of every finished run, added to docs/d_sees/regime.json
    python tools/regime.py --compare          # GAD vs SeqKD vs tuned SeqKD where D sees best (study.py's rule)

Runs `train_gad.py --mode gad` per candidate and seed into runs/dsees/<id>_s<seed> (a finished run is reused),
then reads each run's eval.json and metrics.jsonl. The criteria (fixed before the runs, docs/d_sees.md):
  (1) warmup D's held-out d_auc >= 0.8   (2) mean d_acc of the last 22 warmup steps >= 0.6
  (3) mean d_acc of the last 44 GAD steps below that of the last 22 warmup steps
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoint import read_json, read_jsonl, write_json  # noqa: E402

CANDIDATES = {  # id -> (what changes, flags); the order of docs/d_sees.md
    "K0": ("the default world", []),
    "K1": ("--world long", ["--world", "long"]),
    "K2": ("D's learning rate / 10", ["--lr-d", "1e-4"]),
    "K3": ("--world long, D's learning rate / 10", ["--world", "long", "--lr-d", "1e-4"]),
    # added after K0-K3 were screened (docs/d_sees.md says why)
    "K4": ("--world habits: a starting student whose own styles one epoch of SFT may not remove",
           ["--world", "habits"]),
    "K5": ("a starting student pretrained 3 x longer (its habits entrenched)", ["--pretrain-steps", "2400"]),
    "K6": ("--world list: one teacher mode, the one whose constraint the student breaks", ["--world", "list"]),
    "K7": ("a student SFT cannot fit (hidden 64, 2 layers): its errors stay its own", ["--student-hidden", "64",
                                                                                     "--student-layers", "2"]),
    "K8": ("SFT's learning rate in warmup / 10 (5e-5): warmup ends before the student's own styles are gone",
           ["--lr-warmup", "5e-5"]),
    "K9": ("--world habits and SFT's learning rate in warmup / 10", ["--world", "habits", "--lr-warmup", "5e-5"]),
    # added in a later session: the methods departures the issue names, each on K9 (the closest to the regime)
    "K10": ("K9 + D's label smoothing 0.1", ["--world", "habits", "--lr-warmup", "5e-5", "--d-label-smoothing", "0.1"]),
    "K11": ("K9 + a D larger than the student (hidden 256, 4 layers, pretrained as the student)",
            ["--world", "habits", "--lr-warmup", "5e-5", "--d-init", "{D_BIG}"]),
}
D_BIG = ["--world", "habits", "--student-hidden", "256", "--student-layers", "4"]  # K11's D: pretrained as G is
OUT = os.path.join(ROOT, "runs", "dsees")
# the pre-registered comparison (docs/d_sees.md, written before its runs): no candidate reached the regime, so it
# runs where D sees best -- K9, the highest mean warmup d_auc over seeds 0-2 -- under study.py's rule and seeds
COMPARE = {"K9": (CANDIDATES["K9"][0], CANDIDATES["K9"][1], True)}  # study.STUDY's form: (what, flags, own SeqKD)


def run_dir(cid, seed):
    return os.path.join(OUT, f"{cid}_s{seed}")


def d_big():
    """K11's D backbone: a larger embedded student, pretrained by train_gad.py as any student is (0 steps after)."""
    d = os.path.join(OUT, "d_big")
    if not os.path.exists(os.path.join(d, "before", "generator", "config.json")):
        subprocess.run([sys.executable, "train_gad.py", "--mode", "gad", "--warmup-steps", "0", "--gad-steps", "0",
                        "--eval-models", "", "--out-dir", d, *D_BIG], cwd=ROOT, check=True)
    return os.path.join(d, "before", "generator")


def train(cid, seed):
    d = run_dir(cid, seed)
    if os.path.exists(os.path.join(d, "eval.json")):
        return
    flags = [d_big() if f == "{D_BIG}" else f for f in CANDIDATES[cid][1]]
    cmd = [sys.executable, "train_gad.py", "--mode", "gad", "--seed", str(seed), "--out-dir", d,
           "--eval-models", "warmup,gad", *flags]
    print(" ".join(cmd[1:]), flush=True)
    with open(d + ".log", "w") as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)


def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def summary(d):
    """The criteria's numbers for one run, and the judge's per-step view of D (means over windows of steps)."""
    ev = read_json(os.path.join(d, "eval.json"))
    recs = read_jsonl(os.path.join(d, "metrics.jsonl"))
    warm = [r for r in recs if r["stage"] == "warmup"]
    gad = [r for r in recs if r["stage"] == "gad"]
    s = {"warmup_d_auc": ev["warmup"]["d_auc"], "gad_d_auc": ev["gad"]["d_auc"],
         "warmup_fidelity": ev["warmup"]["fidelity"], "gad_fidelity": ev["gad"]["fidelity"],
         "d_acc_warmup_last22": mean(r["d_acc"] for r in warm[-22:]),
         "d_acc_gad_last44": mean(r["d_acc"] for r in gad[-44:]),
         "step_d_auc_warmup_first22": mean(r.get("judge_d_auc") for r in warm[:22]),
         "step_valid_warmup_first22": mean(r.get("judge_valid") for r in warm[:22]),
         "step_d_auc_warmup_last22": mean(r.get("judge_d_auc") for r in warm[-22:]),
         "step_d_auc_gad": mean(r.get("judge_d_auc") for r in gad),
         "step_valid_warmup_last22": mean(r.get("judge_valid") for r in warm[-22:])}
    s["meets"] = [s["warmup_d_auc"] is not None and s["warmup_d_auc"] >= 0.8, s["d_acc_warmup_last22"] >= 0.6,
                  s["d_acc_gad_last44"] < s["d_acc_warmup_last22"]]
    return s


def plot(run_dirs, path, keys=("judge_valid", "judge_d_auc", "d_acc")):
    """Per-step curves over warmup and GAD (smoothed over 11 steps), the hand-off dotted; needs matplotlib."""
    import matplotlib  # the optional extra (requirements-plots.txt)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for d in run_dirs:
        recs = read_jsonl(os.path.join(d, "metrics.jsonl"))
        for ax, k in zip(axes, keys):
            pts = [(r["step"], r[k]) for r in recs if r.get(k) is not None]
            xs, ys = zip(*pts)
            ax.plot(xs, [statistics.mean(ys[max(0, i - 10):i + 1]) for i in range(len(ys))], label=os.path.basename(d))
            ax.set_title(k + " (mean of 11 steps)", fontsize=9)
            ax.set_xlabel("step (warmup, then GAD)", fontsize=8)
    for ax in axes:
        ax.axvline(88, color="grey", linestyle=":")
        ax.axhline(0.5, color="grey", linewidth=0.5)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def compare(out, tiny):
    """study.py's comparison for COMPARE's setting: search seeds 0-2, held-out 3-5 only for a candidate; D's
    informativeness (regime's summary of each GAD run) beside every row. -> (result, markdown, plot)."""
    import jobs
    import study
    from experiments import TINY
    flags = TINY if tiny else []
    start = os.path.join(out, "runs", "start", "tiny" if tiny else "default")

    def train():
        jobs.train_all(2, start, flags, print)  # two runs at once, one thread each (the study's way)
    runs = {n: [study.study_run(out, n, s, flags, COMPARE, set(COMPARE)) for s in (0, 1, 2)] for n in COMPARE}
    train()
    result, md, plot = study.analyse(runs, [0, 1, 2], out, flags, train, COMPARE, set(COMPARE))
    lines = ["", "**D's informativeness** (the judge's labels: warmup / GAD D's d_auc from `eval.json`; "
             "`d_acc` means of metrics.jsonl)", "", "| run | warmup D's d_auc | GAD D's d_auc | "
             "d_acc, last 22 warmup steps | d_acc, last 44 GAD steps | meets (1) (2) (3) |", "|---" * 6 + "|"]

    def f(v):
        return "-" if v is None else f"{v:.2f}"
    for name in COMPARE:
        r = result["settings"][name]
        r["d_informativeness"] = {}
        for part in ("search", "held_out"):
            for d in (r[part] or {}).get("runs", []):
                s = r["d_informativeness"][os.path.relpath(d, out)] = summary(d)
                lines.append(f"| {os.path.relpath(d, out)} | {f(s['warmup_d_auc'])} | {f(s['gad_d_auc'])} | "
                             f"{f(s['d_acc_warmup_last22'])} | {f(s['d_acc_gad_last44'])} | "
                             f"{' '.join('yes' if m else 'no' for m in s['meets'])} |")
            if r[part]:
                r[part]["runs"] = [os.path.relpath(d, out) for d in r[part]["runs"]]  # no machine's path in docs/
    return result, md + "\n" + "\n".join(lines), plot


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", nargs="*", help=f"candidate ids: {', '.join(CANDIDATES)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--plot", default="", help="--summary: also draw the seed-0 runs in runs/dsees to docs/d_sees/PLOT")
    ap.add_argument("--compare", action="store_true", help="the pre-registered comparison (docs/d_sees/compare.*)")
    ap.add_argument("--tiny", action="store_true", help="--compare in seconds (numbers meaningless; not in docs/)")
    a = ap.parse_args()
    if a.compare:
        out = os.path.join(ROOT, "runs", "dsees_compare" + ("_tiny" if a.tiny else ""))
        result, md, plot = compare(out, a.tiny)
        where = out if a.tiny else os.path.join(ROOT, "docs", "d_sees")
        write_json(os.path.join(where, "compare.json"), result)
        with open(os.path.join(where, "compare.md"), "w") as f:
            f.write(md + "\n")
        print(md)
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        plt.figure()
        plot(plt)
        plt.tight_layout()
        plt.savefig(os.path.join(where, "compare.png"), dpi=80)
        return
    for cid in a.candidates:
        if cid not in CANDIDATES:
            ap.error(f"unknown candidate {cid!r}: expected one of {', '.join(CANDIDATES)}")
    os.makedirs(OUT, exist_ok=True)
    for cid in a.candidates:
        for seed in a.seeds:
            train(cid, seed)
    path = os.path.join(ROOT, "docs", "d_sees", "regime.json")
    rows = read_json(path) if os.path.exists(path) else {}  # runs made elsewhere keep their committed rows
    for cid in CANDIDATES:
        for seed in range(10):
            if os.path.exists(os.path.join(run_dir(cid, seed), "eval.json")):
                new = {"candidate": CANDIDATES[cid][0], **summary(run_dir(cid, seed))}
                old = rows.get(f"{cid}_s{seed}")
                if old and old != new and f"{cid}_s{seed}@committed" not in rows:  # a rerun: both rows are kept
                    rows[f"{cid}_s{seed}@committed"] = old
                rows[f"{cid}_s{seed}"] = new
    for k, r in rows.items():
        print(k, json.dumps({m: round(v, 3) if isinstance(v, float) else v for m, v in r.items()}))
    if a.summary:
        write_json(path, rows)
        here = [run_dir(*k.rsplit("_s", 1)) for k in rows if k.endswith("_s0")]
        if a.plot:
            plot([d for d in here if os.path.isdir(d)], os.path.join(ROOT, "docs", "d_sees", a.plot))


if __name__ == "__main__":
    main()
