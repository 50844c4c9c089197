"""The paper's findings in miniature, on the embedded world: one command, several seeds, JSON + plots.

    python tools/experiments.py all           # every experiment, seeds 0 1 2 (27 min on 2 cores; docs/experiments.md)
    python tools/experiments.py warmup_ablation     # one experiment
    python tools/experiments.py all --tiny          # seconds: a smoke test of the machinery (numbers meaningless)

Writes runs/experiments/<name>.json, <name>.png (with matplotlib: pip install -r requirements-plots.txt)
and runs/experiments/summary.md. Training runs go to runs/experiments/runs/<variant>/seed<k>/ (console
output in its train.log); a finished run with the same flags is reused, not retrained. Curves come from
each run's metrics.jsonl. The privileged judge only evaluates; it never trains anything.

How it fits in 30 minutes on 2 cores:
  - the suite's one change to the defaults is SUITE: groups of n = 4 samples (paper and default: 8), which
    halves the cost of a step (docs/experiments.md says what that changes);
  - every experiment first declares its runs; then jobs.py trains them all, --workers at a time, each in its
    own process on one CPU thread (1.35x the work of one two-thread run here, the same bits); a run starts
    once the runs it reads are finished;
  - nothing is computed twice: the base run of each seed (GAD + SeqKD, judged every 22 steps, which leaves
    training unchanged) is table2's row, the ablations' GAD and SeqKD rows, BT's row and frozen_d's
    co-evolving arm (the frozen arm starts from its warmup checkpoint); one pretrained start for all seeds.

  table2             GAD vs SeqKD vs start vs teacher (paper Table 2)
  quality_diversity  fidelity vs distinct-2 for SeqKD and GAD sampled at several temperatures (not in the paper)
  warmup_ablation    GAD; without generator warmup; without discriminator warmup (paper Table 3)
  bt_vs_bce          Bradley-Terry vs binary cross-entropy discriminator (paper Table 4)
  frozen_d           a discriminator trained once against SeqKD, then frozen, vs co-evolving D (paper Fig. 6)
  mode_seeking       gad_toy.py: a 10-class teacher with 3 modes fit by a discretised Gaussian, MLE vs GAD (Fig. 5)
  where_gad_helps    not in `all`: the pre-registered study of where the adversarial stage helps (study.py: 8
                     settings at the default n = 8, search and held-out seeds; 45 min on 2 cores)
"""
import argparse
import json
import os
import sys
import time

from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root

import gad_toy
import jobs
import study
import world
from checkpoint import write_json
from eval import sample_and_judge
from report import curves, evals, mean_std, table

OUT = os.path.join("runs", "experiments")
SUITE = ["--n-samples", "4"]  # every run of the suite: GRPO groups of 4 (default 8) to fit 30 minutes on 2 cores
TEMPERATURES = [0.5, 0.7, 0.8, 1.0, 1.2]
TINY = ["--pretrain-steps", "60", "--batch-prompts", "4", "--n-samples", "2", "--warmup-steps", "4",
        "--d-only-steps", "1", "--gad-steps", "4", "--seqkd-steps", "8", "--eval-samples", "1", "--save-every", "0"]
ONLY_GAD = ["--mode", "gad", "--eval-models", "gad"]  # a variant's own result is its GAD student; the rest is shared


# ---------------------------------------------------------------------------- declaring runs
def run(variant, seed, flags, tiny):
    """Declare one training run, `python train_gad.py --seed SEED --out-dir FOLDER SUITE [TINY] FLAGS`;
    returns its folder (trained by jobs.train_all)."""
    out = os.path.join(OUT, "runs", variant, f"seed{seed}")
    return jobs.declare(out, "train", ["--seed", str(seed), "--out-dir", out, *SUITE, *(TINY if tiny else []), *flags])


def base(seed, tiny):
    """The base run of a seed (GAD + SeqKD), judged every 22 steps: table2's row and frozen_d's co-evolving arm.
    The judge restores the RNG state, so --eval-every leaves training unchanged."""
    return run("gad_seqkd", seed, ["--eval-every", "2" if tiny else "22"], tiny)


def sweep(seed, tiny):
    """Declare the temperature sweep of a base run's SeqKD and GAD students; returns its JSON path."""
    path = os.path.join(base(seed, tiny), "temperature_sweep.json")
    return jobs.declare(path, "call", ["experiments.temperature_sweep", base(seed, tiny), seed, tiny])


def start_folder(tiny):
    return os.path.join(OUT, "runs", "start", "tiny" if tiny else "default")


def temperature_sweep(folder, seed, tiny):
    """Judge a base run's SeqKD and GAD students on the test prompts at each of TEMPERATURES."""
    prompts, points = world.prompts("test"), {"temperatures": TEMPERATURES}
    for model in ("seqkd", "gad"):
        path = os.path.join(folder, model, "generator")
        tok, gen = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
        for t in TEMPERATURES:
            m, _ = sample_and_judge(gen, tok, prompts, 1 if tiny else 4, t, 40, seed)
            points.setdefault(model, {})[str(t)] = {k: m[k] for k in ("fidelity", "distinct_2", "modes")}
    return points


# ---------------------------------------------------------------------------- the experiments
# Each experiment is a pair: `<name>_runs(seeds, tiny)` declares the runs it reads ({label: [folder per seed]});
# `<name>(runs, seeds, tiny)` reads them once they are trained -> (JSON dict, markdown, plot function or None).
def table2_runs(seeds, tiny):
    return {"base": [base(s, tiny) for s in seeds]}


def table2(runs, seeds, tiny):
    ev = evals(runs["base"])
    data, md = table({k: [e[k] for e in ev] for k in ["before", "seqkd", "gad", "teacher"]})
    return {"seeds": seeds, "runs": runs["base"], "results": data}, md, bar_plot(data, ("fidelity", "ood_fidelity"))


def quality_diversity_runs(seeds, tiny):
    return {"sweeps": [sweep(s, tiny) for s in seeds]}


def quality_diversity(runs, seeds, tiny):
    sweeps = [json.load(open(p)) for p in runs["sweeps"]]
    data = {model: {str(t): {k: mean_std([s[model][str(t)][k] for s in sweeps]) for k in ("fidelity", "distinct_2",
                                                                                         "modes")}
                    for t in TEMPERATURES} for model in ("seqkd", "gad")}
    md = ["| T | SeqKD fidelity | SeqKD distinct-2 | GAD fidelity | GAD distinct-2 |", "|---|---|---|---|---|"]
    for t in map(str, TEMPERATURES):
        q, g = data["seqkd"][t], data["gad"][t]
        md.append(f"| {t} | {q['fidelity']['mean']:.3f} ± {q['fidelity']['std']:.3f} | "
                  f"{q['distinct_2']['mean']:.3f} | "
                  f"{g['fidelity']['mean']:.3f} ± {g['fidelity']['std']:.3f} | {g['distinct_2']['mean']:.3f} |")

    def plot(plt):
        for model, style in (("seqkd", "o-"), ("gad", "s-")):
            xs = [data[model][str(t)]["distinct_2"]["mean"] for t in TEMPERATURES]
            ys = [data[model][str(t)]["fidelity"]["mean"] for t in TEMPERATURES]
            plt.plot(xs, ys, style, label=model.upper() if model == "gad" else "SeqKD")
            for t, x, y in zip(TEMPERATURES, xs, ys):
                plt.annotate(f"T={t}", (x, y), fontsize=7)
        plt.xlabel("distinct-2 (diversity)")
        plt.ylabel("fidelity (privileged judge)")
    return {"seeds": seeds, "temperatures": TEMPERATURES, "results": data}, "\n".join(md), plot


def warmup_ablation_runs(seeds, tiny):
    warm = "4" if tiny else "88"
    return {"GAD": [base(s, tiny) for s in seeds],
            "w/o generator warmup": [run("ablation_d-only-steps", s, ["--d-only-steps", warm, *ONLY_GAD], tiny)
                                     for s in seeds],
            "w/o discriminator warmup": [run("ablation_no-d-warmup", s, ["--no-d-warmup", *ONLY_GAD], tiny)
                                         for s in seeds]}


def warmup_ablation(runs, seeds, tiny):
    rows = {label: [e["gad"] for e in evals(folders)] for label, folders in runs.items()}
    rows["SeqKD"] = [e["seqkd"] for e in evals(runs["GAD"])]
    data, md = table(rows)
    return {"seeds": seeds, "results": data}, md, bar_plot(data)


def bt_vs_bce_runs(seeds, tiny):
    return {"BT": [base(s, tiny) for s in seeds],
            "BCE": [run("bce", s, ["--d-loss", "bce", *ONLY_GAD], tiny) for s in seeds]}


def bt_vs_bce(runs, seeds, tiny):
    data, md = table({label: [e["gad"] for e in evals(folders)] for label, folders in runs.items()})
    return {"seeds": seeds, "results": data}, md, bar_plot(data)


def frozen_d_runs(seeds, tiny):
    every, warm = ("2", "4") if tiny else ("22", "88")
    runs = {"co-evolving D": [], "frozen D": []}
    for s in seeds:
        co = base(s, tiny)  # the co-evolving arm is the base run's GAD stage; the frozen arm starts from its
        # warmup checkpoint, against a D trained once on the SeqKD student's samples (D-only warmup), then frozen
        d_run = run("seqkd_discriminator", s, ["--student", os.path.join(co, "seqkd", "generator"), "--mode", "gad",
                                               "--warmup-steps", warm, "--d-only-steps", warm, "--gad-steps", "0",
                                               "--eval-models", ""], tiny)
        runs["frozen D"].append(run("frozen_d", s, ["--init-from", os.path.join(co, "warmup"), "--frozen-d",
                                                    os.path.join(d_run, "gad", "discriminator"), *ONLY_GAD,
                                                    "--eval-every", every], tiny))
        runs["co-evolving D"].append(co)
    return runs


def frozen_d(runs, seeds, tiny):
    keys = ["reward_mean", "response_length", "judge_fidelity"]
    data = {label: [curves(f, keys) for f in folders] for label, folders in runs.items()}
    res, md = table({label: [e["gad"] for e in evals(folders)] for label, folders in runs.items()})

    def plot(plt):
        fig = plt.gcf()
        fig.set_size_inches(11, 3.2)
        for i, key in enumerate(keys):
            ax = fig.add_subplot(1, 3, i + 1)
            for label, style in (("co-evolving D", "-"), ("frozen D", "--")):
                for k, c in enumerate(data[label]):
                    xs, ys = zip(*c[key]) if c[key] else ([], [])
                    ax.plot(xs, ys, style, color="C0" if label.startswith("co") else "C3", alpha=0.8,
                            label=label if k == 0 else None)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("GAD step")
        ax.legend(fontsize=7)
    return {"seeds": seeds, "curves": data, "results": res}, md, plot


def mode_seeking_runs(seeds, tiny): return {}  # no training runs: two tiny models, fit in a few seconds


def mode_seeking(runs, seeds, tiny):
    """gad_toy.py's two students (SeqKD = maximum likelihood, GAD = the adversarial game) on 3 teacher modes."""
    result = gad_toy.mode_seeking(seeds, 100 if tiny else 1500)
    return result, gad_toy.markdown(result), lambda plt: gad_toy.plot(result, plt)


def where_gad_helps_runs(seeds, tiny):  # the pre-registered study lives in study.py
    return study.declare(OUT, seeds, TINY if tiny else [])


def where_gad_helps(runs, seeds, tiny):
    return study.analyse(runs, seeds, OUT, TINY if tiny else [],
                         lambda: jobs.train_all(WORKERS[0], start_folder(tiny), TINY if tiny else [], print))


WORKERS = [2]  # main sets it from --workers (the study trains its held-out seeds itself)


def bar_plot(data, metrics=("fidelity",)):
    """Bars of mean +- std over seeds, one group per model."""
    def plot(plt):
        labels, w = list(data), 0.8 / len(metrics)
        for j, metric in enumerate(metrics):
            plt.bar([i + j * w for i in range(len(labels))], [data[k][metric]["mean"] for k in labels], w,
                    yerr=[data[k][metric]["std"] for k in labels], capsize=3, label=metric)
        plt.xticks([i + w * (len(metrics) - 1) / 2 for i in range(len(labels))], labels, fontsize=8)
        plt.ylabel("privileged judge")
    return plot


EXPERIMENTS = {f.__name__: (globals()[f.__name__ + "_runs"], f) for f in (table2, quality_diversity, warmup_ablation,
                                                                          bt_vs_bce, frozen_d, mode_seeking,
                                                                          where_gad_helps)}
PAPER_EXPERIMENTS = [name for name in EXPERIMENTS if name != "where_gad_helps"]  # "all" (the study is its own)


def main(argv=None):
    global OUT, SUITE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=list(EXPERIMENTS) + ["all"], help="which experiment")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration (numbers meaningless)")
    ap.add_argument("--out", default=OUT, help=f"output folder (default: {OUT})")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                    help="runs trained at once, one CPU thread each (default: the cores, at most 4); same numbers")
    ap.add_argument("--n-samples", type=int, default=int(SUITE[1]),
                    help=f"the group size of every run (default: {SUITE[1]}; train_gad.py's default and the paper: 8)")
    a = ap.parse_args(argv)
    if a.workers < 1 or a.n_samples < 2:
        ap.error(f"need --workers >= 1 and --n-samples >= 2, got {a.workers} and {a.n_samples}")
    OUT, SUITE = a.out, ["--n-samples", str(a.n_samples)]
    os.makedirs(OUT, exist_ok=True)
    names, WORKERS[0] = PAPER_EXPERIMENTS if a.name == "all" else [a.name], a.workers
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
        print("[experiments] matplotlib not installed: JSON and markdown only (pip install -r requirements-plots.txt)")
    t0 = time.time()
    runs = {name: EXPERIMENTS[name][0](a.seeds, a.tiny) for name in names}  # declare every run first,
    jobs.train_all(a.workers, start_folder(a.tiny), TINY if a.tiny else [], print)  # then train them, in parallel
    for name in names:
        result, md, plot = EXPERIMENTS[name][1](runs[name], a.seeds, a.tiny)
        result["tiny"] = a.tiny
        write_json(os.path.join(OUT, name + ".json"), result)
        with open(os.path.join(OUT, name + ".md"), "w") as f:
            f.write(f"### {name}\n\n{md}\n")
        if plt is not None and plot is not None:
            plt.figure(figsize=(5, 3.5))
            plot(plt)
            plt.legend(fontsize=7) if plt.gca().get_legend_handles_labels()[0] else None
            plt.tight_layout()
            plt.savefig(os.path.join(OUT, name + ".png"), dpi=80)
            plt.close("all")
        print(f"\n### {name}\n{md}\n", flush=True)
    done = [n for n in EXPERIMENTS if os.path.exists(os.path.join(OUT, n + ".md"))]
    parts = [open(os.path.join(OUT, n + ".md")).read() for n in done]
    with open(os.path.join(OUT, "summary.md"), "w") as f:
        f.write("\n".join(parts))
    print(f"[experiments] {', '.join(names)}: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
