"""The paper's findings in miniature, on the embedded world: one command, several seeds, JSON + plots.

    python experiments.py all                 # every experiment, seeds 0 1 2 (~8 default runs of compute; see README)
    python experiments.py warmup_ablation     # one experiment
    python experiments.py all --tiny          # seconds: a smoke test of the machinery (numbers meaningless)

Writes runs/experiments/<name>.json, <name>.png (with matplotlib: pip install -r requirements-plots.txt)
and runs/experiments/summary.md. Training runs go to runs/experiments/runs/<variant>/seed<k>/ (console
output in its train.log); a finished run with the same flags is reused, not retrained. Curves come from
each run's metrics.jsonl. The privileged judge only evaluates; it never trains anything.

Nothing is computed twice: the default run of each seed (gad_seqkd, judged every 22 steps, which leaves
training unchanged) is table2's row, the ablations' GAD and SeqKD rows, BT's row and frozen_d's co-evolving
arm; the frozen arm starts from that run's warmup checkpoint; every seed starts from the same pretrained
student; a variant judges only its own GAD student.

  table2             GAD vs SeqKD vs start vs teacher (paper Table 2)
  quality_diversity  fidelity vs distinct-2 for SeqKD and GAD sampled at several temperatures (not in the paper)
  warmup_ablation    GAD; without generator warmup; without discriminator warmup (paper Table 3)
  bt_vs_bce          Bradley-Terry vs binary cross-entropy discriminator (paper Table 4)
  frozen_d           a discriminator trained once against SeqKD, then frozen, vs co-evolving D (paper Fig. 6)
  mode_seeking       a 10-class teacher with 3 modes fit by a discretised Gaussian: MLE vs GAD (paper Fig. 5)
"""
import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import time

import torch

import checkpoint as C

OUT = os.path.join("runs", "experiments")
TEMPERATURES = [0.5, 0.7, 0.8, 1.0, 1.2]
TINY = ["--pretrain-steps", "60", "--batch-prompts", "4", "--n-samples", "2", "--warmup-steps", "4",
        "--d-only-steps", "1", "--gad-steps", "4", "--seqkd-steps", "8", "--eval-samples", "1", "--save-every", "0"]
ONLY_GAD = ["--mode", "gad", "--eval-models", "gad"]  # a variant's own result is its GAD student; the rest is shared
METRICS = ["fidelity", "relevance", "length", "distinct_2", "modes", "ood_fidelity"]


# ---------------------------------------------------------------------------- running train_gad.py
def run(variant, seed, flags, tiny, log):
    """Train (or reuse) one run; returns its folder. The starting student of a seed is shared.

    The run is train_gad.main called in this process (it reseeds everything itself, so the result equals
    `python train_gad.py ARGS`); its console output goes to <run>/train.log."""
    import train_gad
    out = os.path.join(OUT, "runs", variant, f"seed{seed}")
    args = ["--seed", str(seed), "--out-dir", out, *(TINY if tiny else []), *flags]  # later flags win
    done = os.path.exists(os.path.join(out, "args.json")) and json.load(open(os.path.join(out, "args.json"))) == args
    if done:
        log(f"[experiments] reusing {out}")
        return out
    shared = os.path.join(OUT, "runs", "start", "tiny" if tiny else "default", "before")  # one start for all seeds
    embedded = "--student" not in flags
    if embedded and os.path.isdir(shared) and not os.path.isdir(os.path.join(out, "before")):
        shutil.copytree(shared, os.path.join(out, "before"))  # the same pretrained student: no need to redo it
    log(f"[experiments] python train_gad.py {' '.join(args)}")
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(out, "train.log"), "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            train_gad.main(args)
            error = None
        except SystemExit as e:  # train_gad reports bad input / a failed run this way
            error = str(e)
    if error:
        raise SystemExit(f"experiments.py: run {out} failed: {error} (log: {out}/train.log)")
    log(f"[experiments]   {time.time() - t0:.0f} s")
    if embedded and not os.path.isdir(shared):
        shutil.copytree(os.path.join(out, "before"), shared)
    C.write_json(os.path.join(out, "args.json"), args)
    gc.collect()
    return out


def base(seed, tiny, log):
    """The default run of a seed (GAD + SeqKD), judged every 22 steps: table2's row and frozen_d's co-evolving arm.
    The judge restores the RNG state, so --eval-every leaves training unchanged."""
    return run("gad_seqkd", seed, ["--eval-every", "2" if tiny else "22"], tiny, log)


def evals(folders):
    return [json.load(open(os.path.join(f, "eval.json"))) for f in folders]


def mean_std(values):
    return {"mean": statistics.mean(values), "std": statistics.pstdev(values), "values": values}


def table(rows, metrics=METRICS):
    """rows: {label: [eval entries over seeds]} -> (json dict, markdown table)."""
    data = {label: {m: mean_std([e[m] for e in entries]) for m in metrics} for label, entries in rows.items()}
    md = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for label, d in data.items():
        md.append(f"| {label} | " + " | ".join(f"{d[m]['mean']:.3f} ± {d[m]['std']:.3f}" for m in metrics) + " |")
    return data, "\n".join(md)


def curves(folder, stage_keys):
    """{key: [(GAD step, value)]} for the GAD stage of a run's metrics.jsonl (steps counted from its start)."""
    import eval as E
    recs = E.stage_records(folder, "gad")
    first = recs[0]["step"] if recs else 0
    return {k: [(r["step"] - first, r[k]) for r in recs if r.get(k) is not None] for k in stage_keys}


# ---------------------------------------------------------------------------- the experiments
def table2(seeds, tiny, log):
    runs = [base(s, tiny, log) for s in seeds]
    ev = evals(runs)
    data, md = table({k: [e[k] for e in ev] for k in ["before", "seqkd", "gad", "teacher"]})
    return {"seeds": seeds, "runs": runs, "results": data}, md, bar_plot(data, ("fidelity", "ood_fidelity"))


def quality_diversity(seeds, tiny, log):
    import eval as E
    import world
    from transformers import AutoModelForCausalLM, AutoTokenizer
    prompts = world.prompts("test")
    points = {"seqkd": {}, "gad": {}}
    for s in seeds:
        folder = base(s, tiny, log)
        for model in points:
            path = os.path.join(folder, model, "generator")
            tok, gen = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
            for t in TEMPERATURES:
                torch.manual_seed(s)
                texts, _ = E.student_responses(gen, tok, prompts, 1 if tiny else 4, t, 40)
                m = E.judge_responses(prompts, texts, 1 if tiny else 4)
                points[model].setdefault(str(t), []).append({"fidelity": m["fidelity"], "distinct_2": m["distinct_2"],
                                                             "modes": m["modes"]})
    data = {model: {t: {k: mean_std([p[k] for p in ps]) for k in ("fidelity", "distinct_2", "modes")}
                    for t, ps in by_t.items()} for model, by_t in points.items()}
    md = ["| T | SeqKD fidelity | SeqKD distinct-2 | GAD fidelity | GAD distinct-2 |", "|---|---|---|---|---|"]
    for t in map(str, TEMPERATURES):
        q, g = data["seqkd"][t], data["gad"][t]
        md.append(f"| {t} | {q['fidelity']['mean']:.3f} ± {q['fidelity']['std']:.3f} | {q['distinct_2']['mean']:.3f} | "
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


def warmup_ablation(seeds, tiny, log):
    warm = 4 if tiny else 88
    variants = {"GAD": [], "w/o generator warmup": ["--d-only-steps", str(warm)], "w/o discriminator warmup":
                ["--no-d-warmup"]}
    rows = {}
    for label, flags in variants.items():
        folders = [base(s, tiny, log) if not flags else run("ablation_" + flags[0].strip("-"), s, flags + ONLY_GAD,
                                                              tiny, log) for s in seeds]
        rows[label] = [e["gad"] for e in evals(folders)]
    rows["SeqKD"] = [e["seqkd"] for e in evals([base(s, tiny, log) for s in seeds])]
    data, md = table(rows)
    return {"seeds": seeds, "results": data}, md, bar_plot(data)


def bt_vs_bce(seeds, tiny, log):
    rows = {"BT": [e["gad"] for e in evals([base(s, tiny, log) for s in seeds])],
            "BCE": [e["gad"] for e in evals([run("bce", s, ["--d-loss", "bce", *ONLY_GAD], tiny, log)
                                              for s in seeds])]}
    data, md = table(rows)
    return {"seeds": seeds, "results": data}, md, bar_plot(data)


def frozen_d(seeds, tiny, log):
    every = "2" if tiny else "22"
    warm = "4" if tiny else "88"
    coevolving, frozen = [], []
    for s in seeds:
        co = base(s, tiny, log)  # the co-evolving arm is the default run's GAD stage
        # D trained once against the SeqKD student (D-only warmup on its samples), then frozen; the frozen arm
        # starts from the same warmed-up generator as the co-evolving arm
        d_run = run("seqkd_discriminator", s, ["--student", os.path.join(co, "seqkd", "generator"), "--mode", "gad",
                                               "--warmup-steps", warm, "--d-only-steps", warm, "--gad-steps", "0",
                                               "--eval-models", ""],
                    tiny, log)
        frozen.append(run("frozen_d", s, ["--init-from", os.path.join(co, "warmup"), "--frozen-d",
                                          os.path.join(d_run, "gad", "discriminator"), *ONLY_GAD,
                                          "--eval-every", every], tiny, log))
        coevolving.append(co)
    keys = ["reward_mean", "response_length", "judge_fidelity"]
    data = {"co-evolving D": [curves(f, keys) for f in coevolving], "frozen D": [curves(f, keys) for f in frozen]}
    rows = {"co-evolving D": [e["gad"] for e in evals(coevolving)], "frozen D": [e["gad"] for e in evals(frozen)]}
    res, md = table(rows)

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


def mode_seeking(seeds, tiny, log):
    """Teacher: 3 modes over classes 0-9. Student: a discretised Gaussian (mean, log-std).
    SeqKD = maximum likelihood on teacher samples; GAD = REINFORCE with group-normalised advantages
    against a discriminator (one logit per class) trained with the BT loss."""
    import discriminator as D
    import generator as G
    # three well-separated modes (like the paper's Gaussian mixture). With a 2% floor on every class instead,
    # reverse KL prefers a flat student and our GAD student went uniform (see README).
    teacher = torch.tensor([0.005, 0.30, 0.10, 0.005, 0.08, 0.30, 0.005, 0.005, 0.195, 0.005])
    classes = torch.arange(10, dtype=torch.float)
    steps = 100 if tiny else 1500

    def student(mu, log_sd):
        return torch.log_softmax(-0.5 * ((classes - mu) / log_sd.exp()) ** 2, -1)  # [10]

    out = {"teacher": teacher.tolist(), "seqkd": [], "gad": []}
    for s in seeds:
        torch.manual_seed(s)
        mu, log_sd = torch.tensor(4.5, requires_grad=True), torch.tensor(1.0, requires_grad=True)
        opt = torch.optim.Adam([mu, log_sd], lr=0.05)
        for _ in range(steps):  # SeqKD: maximum likelihood
            y = torch.multinomial(teacher, 64, replacement=True)
            loss = -student(mu, log_sd)[y].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        out["seqkd"].append(student(mu, log_sd).exp().tolist())
        mu, log_sd = torch.tensor(4.5, requires_grad=True), torch.tensor(1.0, requires_grad=True)
        d_logit = torch.zeros(10, requires_grad=True)
        g_opt, d_opt = torch.optim.Adam([mu, log_sd], lr=0.05), torch.optim.Adam([d_logit], lr=0.05)
        n = 8
        for _ in range(steps):  # GAD: sample -> score -> advantages -> D step -> G step
            logp = student(mu, log_sd)
            y_s = torch.multinomial(logp.exp().detach(), 16 * n, replacement=True)        # [B*n]
            y_t = torch.multinomial(teacher, 16, replacement=True)                       # [B]
            d_loss, _ = D.bt_loss(d_logit[y_t], d_logit[y_s], n)
            adv = G.group_advantages(d_logit[y_s].detach(), n)
            d_opt.zero_grad()
            d_loss.backward()
            d_opt.step()
            g_loss = -(adv * logp[y_s]).mean()                                           # REINFORCE
            g_opt.zero_grad()
            g_loss.backward()
            g_opt.step()
        out["gad"].append(student(mu, log_sd).exp().tolist())
    mean = {k: [statistics.mean(p[i] for p in out[k]) for i in range(10)] for k in ("seqkd", "gad")}
    peak = {k: max(range(10), key=lambda i: mean[k][i]) for k in mean}
    cover = {k: sum(min(a, b) for a, b in zip(mean[k], teacher.tolist())) for k in mean}
    md = ("| student | mass on its peak class | overlap with the teacher |\n|---|---|---|\n"
          + "\n".join(f"| {k} | class {peak[k]}: {mean[k][peak[k]]:.2f} | {cover[k]:.2f} |" for k in ("seqkd", "gad")))

    def plot(plt):
        plt.bar(range(10), teacher.tolist(), color="lightgray", label="teacher")
        plt.plot(range(10), mean["seqkd"], "o-", label="SeqKD (maximum likelihood)")
        plt.plot(range(10), mean["gad"], "s-", label="GAD (adversarial)")
        plt.xticks(range(10))
        plt.xlabel("class")
        plt.ylabel("probability")
    return {"seeds": seeds, "steps": steps, "distributions": out, "mean": mean, "overlap": cover}, md, plot


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


EXPERIMENTS = {f.__name__: f for f in (table2, quality_diversity, warmup_ablation, bt_vs_bce, frozen_d, mode_seeking)}


def main(argv=None):
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=list(EXPERIMENTS) + ["all"], help="which experiment")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration (numbers meaningless)")
    ap.add_argument("--out", default=OUT, help=f"output folder (default: {OUT})")
    a = ap.parse_args(argv)
    OUT = a.out
    os.makedirs(OUT, exist_ok=True)
    names = list(EXPERIMENTS) if a.name == "all" else [a.name]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
        print("[experiments] matplotlib not installed: JSON and markdown only (pip install -r requirements-plots.txt)")
    t0 = time.time()
    for name in names:
        result, md, plot = EXPERIMENTS[name](a.seeds, a.tiny, print)
        result["tiny"] = a.tiny
        C.write_json(os.path.join(OUT, name + ".json"), result)
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
    parts = [open(os.path.join(OUT, n + ".md")).read() for n in EXPERIMENTS if os.path.exists(os.path.join(OUT, n + ".md"))]
    with open(os.path.join(OUT, "summary.md"), "w") as f:
        f.write("\n".join(parts))
    print(f"[experiments] {', '.join(names)}: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
