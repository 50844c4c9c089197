"""Reading finished runs: seed summaries, training health side by side, curves. Used by the labs and by
experiments.py; it only reads run folders (eval.json, metrics.jsonl), never trains or judges.

    python tools/report.py --summary runs/seed0 runs/seed1 runs/seed2     # mean +- std of eval.json, D health per run
    python tools/report.py --compare runs/default runs/lab_eos --plot lab.png   # GAD-stage health side by side (labs)
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root

from checkpoint import read_json, read_jsonl
from eval import MODELS
METRICS = ["fidelity", "relevance", "length", "distinct_2", "modes", "ood_fidelity"]


def evals(run_dirs):
    """The eval.json of each run."""
    return [read_json(os.path.join(d, "eval.json")) for d in run_dirs]


def mean_std(values):
    """Mean and population std over seeds (and the values themselves)."""
    return {"mean": statistics.mean(values), "std": statistics.pstdev(values), "values": values}


def table(rows, metrics=METRICS):
    """rows: {label: [eval entries over seeds]} -> (json dict, markdown table of mean ± std)."""
    data = {label: {m: mean_std([e[m] for e in entries]) for m in metrics} for label, entries in rows.items()}
    md = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for label, d in data.items():
        md.append(f"| {label} | " + " | ".join(f"{d[m]['mean']:.3f} ± {d[m]['std']:.3f}" for m in metrics) + " |")
    return data, "\n".join(md)


def summarize(run_dirs, keys=("fidelity", "relevance", "length", "distinct_2", "modes", "ood_fidelity",
                                 "ood_relevance")):
    """Markdown table of mean +- std (population) over several runs' eval.json: the embedded world's metrics, or
    (real models) the numeric metrics every run has."""
    runs = evals(run_dirs)
    names = [name for name in MODELS + ["teacher"] if all(isinstance(e.get(name), dict) for e in runs)]
    entries = [e[name] for e in runs for name in names]
    if not all(isinstance(x.get(k), (int, float)) for x in entries for k in keys):
        keys = [k for k in dict.fromkeys(k for x in entries for k in x)
                if all(isinstance(x.get(k), (int, float)) and not isinstance(x.get(k), bool) for x in entries)]
    _, md = table({name: [e[name] for e in runs] for name in names}, list(keys))
    lines = [md, "", "Discriminator health per run (from metrics.jsonl): mean d_acc in warmup / GAD, median "
             "reward_group_std and mean / max k3 KL in GAD, mean judge_d_auc (D's scores of each step's samples "
             "against the judge) in warmup / GAD"]
    for d in run_dirs:
        lines.append(f"- {d}: " + health(d))
    seeing = [(d, e) for d, e in zip(run_dirs, runs) if any("d_auc" in (e.get(m) or {}) for m in ("warmup", "gad"))]
    if seeing:
        lines += ["", "Does D see validity? (eval.json: its AUC valid over invalid samples of its G, and the share of "
                  "groups holding both; warmup / GAD)"]
        def cell(e, k):
            return " / ".join(f"{e[m][k]:.2f}" if isinstance((e.get(m) or {}).get(k), float) else "-"
                              for m in ("warmup", "gad"))
        for d, e in seeing:
            lines.append(f"- {d}: d_auc {cell(e, 'd_auc')}, d_mixed_groups {cell(e, 'd_mixed_groups')}")
    return "\n".join(lines) + f"\n\n({len(runs)} run{'' if len(runs) == 1 else 's'}: {', '.join(run_dirs)})"


def stage_records(run_dir, stage):
    """The metrics.jsonl records of one stage (warmup, gad or seqkd) of a run, in step order."""
    return [r for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if r.get("stage") == stage]


def health(run_dir):
    if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        return "no metrics.jsonl"
    g = stage_records(run_dir, "gad")
    if not g:
        return "no GAD steps"

    def mean_of(recs, key, how=statistics.mean):
        values = [r[key] for r in recs if isinstance(r.get(key), (int, float))]
        return f"{how(values):.3f}" if values else "-"  # e.g. no d_acc in warmup with --no-d-warmup
    w = stage_records(run_dir, "warmup")
    judged = any("judge_d_auc" in r for r in g)  # the embedded world: D's scores of each step's samples, judged
    return (f"d_acc {mean_of(w, 'd_acc')} / {mean_of(g, 'd_acc')}, "
            f"reward_group_std {mean_of(g, 'reward_group_std', statistics.median)}, "
            f"kl {mean_of(g, 'kl')} / {mean_of(g, 'kl', max)}"
            + (f", judge_d_auc {mean_of(w, 'judge_d_auc')} / {mean_of(g, 'judge_d_auc')}" if judged else ""))


COMPARE_KEYS = ["d_acc", "judge_d_auc", "d_gap", "reward_mean", "reward_group_std", "kl", "entropy", "response_length",
                "truncated"]


def compare(run_dirs, keys=COMPARE_KEYS, window=22):
    """Side-by-side health of runs (the labs): GAD-stage metrics from metrics.jsonl, mean over the first and the
    last `window` GAD steps (first -> last), then the judge's numbers of the final student from eval.json."""
    lines = ["| run | " + " | ".join(keys) + " | fidelity | ood_fidelity | length (eval) | modes |",
             "|---" * (len(keys) + 5) + "|"]
    for d in run_dirs:
        g = stage_records(d, "gad")
        cells = []
        for k in keys:
            first = [r[k] for r in g[:window] if r.get(k) is not None]
            last = [r[k] for r in g[-window:] if r.get(k) is not None]
            cells.append(f"{statistics.mean(first):.3f} -> {statistics.mean(last):.3f}" if first and last else "-")
        ev = read_json(os.path.join(d, "eval.json")).get("gad", {}) if os.path.exists(
            os.path.join(d, "eval.json")) else {}
        cells += [f"{ev[k]:.3f}" if isinstance(ev.get(k), (int, float)) else "-"
                  for k in ("fidelity", "ood_fidelity", "length", "modes")]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\n(GAD stage: mean of the first {window} steps -> mean of the last {window}; "
                               "fidelity, ood_fidelity, length, modes: the final GAD student on held-out prompts)")


def curves(run_dir, keys):
    """{key: [(GAD step, value)]} for the GAD stage of a run's metrics.jsonl (steps counted from its start)."""
    recs = stage_records(run_dir, "gad")
    first = recs[0]["step"] if recs else 0
    return {k: [(r["step"] - first, r[k]) for r in recs if r.get(k) is not None] for k in keys}


def plot_curves(run_dirs, path, keys=("d_acc", "reward_mean", "kl", "response_length", "truncated", "judge_fidelity")):
    """One panel per metric, one line per run, over the GAD steps (smoothed over 11 steps); needs matplotlib."""
    import matplotlib  # the optional extra (requirements-plots.txt): imported only when a plot is asked for
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 2.8))
    for d in run_dirs:
        g = stage_records(d, "gad")
        for ax, k in zip(axes, keys):
            pts = [(r["step"] - g[0]["step"], r[k]) for r in g if r.get(k) is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            w = 1 if k == "judge_fidelity" else min(11, len(ys))
            smooth = [statistics.mean(ys[max(0, i - w + 1):i + 1]) for i in range(len(ys))]
            ax.plot(xs, smooth, label=os.path.normpath(d))
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("GAD step", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", help="run folder(s) written by train_gad.py")
    ap.add_argument("--summary", action="store_true", help="mean ± std of the runs' eval.json, and D's health per run")
    ap.add_argument("--compare", action="store_true", help="side-by-side training health of the runs (the labs)")
    ap.add_argument("--plot", default="", help="with --compare: also draw the GAD-stage curves to this PNG "
                    "(needs matplotlib)")
    a = ap.parse_args()
    if a.summary == a.compare:
        ap.error("choose one of --summary or --compare")
    need = "eval.json" if a.summary else "metrics.jsonl"
    for d in a.run_dirs:
        path = os.path.join(d, need)
        if os.path.isdir(path):
            sys.exit(f"report.py: {path} is a folder, not a file")
        if not os.path.isfile(path):
            sys.exit(f"report.py: {path} not found" + (" (run eval.py on it first)" if a.summary
                                                       else " (not a train_gad.py run folder?)"))
    try:
        print(summarize(a.run_dirs) if a.summary else compare(a.run_dirs))
    except SystemExit as e:  # a damaged file: one line naming it
        sys.exit(f"report.py: {e.code}")
    if a.compare:
        if a.plot:
            try:
                plot_curves(a.run_dirs, a.plot)
                print(f"curves: {a.plot}")
            except ImportError:
                print("--plot needs matplotlib: pip install -r requirements-plots.txt")
