"""The paper's findings in miniature, on the embedded world: one command, several seeds, JSON + plots.

    python experiments.py all                 # every experiment, seeds 0 1 2 (27 min on a slow 2-core CPU; README)
    python experiments.py warmup_ablation     # one experiment
    python experiments.py all --tiny          # seconds: a smoke test of the machinery (numbers meaningless)

Writes runs/experiments/<name>.json, <name>.png (with matplotlib: pip install -r requirements-plots.txt)
and runs/experiments/summary.md. Training runs go to runs/experiments/runs/<variant>/seed<k>/ (console
output in its train.log); a finished run with the same flags is reused, not retrained. Curves come from
each run's metrics.jsonl. The privileged judge only evaluates; it never trains anything.

How it fits in 30 minutes on 2 cores:
  - the suite's one change to the defaults is SUITE: groups of n = 4 samples (paper and default: 8), which
    halves the cost of a step (README "Experiments" says what that changes);
  - every experiment first declares its runs; then all are trained, --workers at a time, each in its own
    process on one CPU thread (1.35x the work of one two-thread run here, the same bits); a run starts once
    the runs it reads are finished;
  - nothing is computed twice: the base run of each seed (GAD + SeqKD, judged every 22 steps, which leaves
    training unchanged) is table2's row, the ablations' GAD and SeqKD rows, BT's row and frozen_d's
    co-evolving arm (the frozen arm starts from its warmup checkpoint); one pretrained start for all seeds.

  table2             GAD vs SeqKD vs start vs teacher (paper Table 2)
  quality_diversity  fidelity vs distinct-2 for SeqKD and GAD sampled at several temperatures (not in the paper)
  warmup_ablation    GAD; without generator warmup; without discriminator warmup (paper Table 3)
  bt_vs_bce          Bradley-Terry vs binary cross-entropy discriminator (paper Table 4)
  frozen_d           a discriminator trained once against SeqKD, then frozen, vs co-evolving D (paper Fig. 6)
  mode_seeking       a 10-class teacher with 3 modes fit by a discretised Gaussian: MLE vs GAD (paper Fig. 5)
"""
import argparse
import concurrent.futures as futures
import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import time

import torch

import checkpoint as C

OUT = os.path.join("runs", "experiments")
SUITE = ["--n-samples", "4"]  # every run of the suite: GRPO groups of 4 (default 8) to fit 30 minutes on 2 cores
TEMPERATURES = [0.5, 0.7, 0.8, 1.0, 1.2]
TINY = ["--pretrain-steps", "60", "--batch-prompts", "4", "--n-samples", "2", "--warmup-steps", "4",
        "--d-only-steps", "1", "--gad-steps", "4", "--seqkd-steps", "8", "--eval-samples", "1", "--save-every", "0"]
ONLY_GAD = ["--mode", "gad", "--eval-models", "gad"]  # a variant's own result is its GAD student; the rest is shared
METRICS = ["fidelity", "relevance", "length", "distinct_2", "modes", "ood_fidelity"]
JOBS = {}  # output path -> (kind, arguments): declared by the experiments, done by train_all


# ---------------------------------------------------------------------------- declaring runs
def run(variant, seed, flags, tiny):
    """Declare one training run, `python train_gad.py --seed SEED --out-dir FOLDER SUITE [TINY] FLAGS`;
    returns its folder (trained by train_all)."""
    out = os.path.join(OUT, "runs", variant, f"seed{seed}")
    JOBS[out] = ("train", ["--seed", str(seed), "--out-dir", out, *SUITE, *(TINY if tiny else []), *flags])
    return out


def base(seed, tiny):
    """The base run of a seed (GAD + SeqKD), judged every 22 steps: table2's row and frozen_d's co-evolving arm.
    The judge restores the RNG state, so --eval-every leaves training unchanged."""
    return run("gad_seqkd", seed, ["--eval-every", "2" if tiny else "22"], tiny)


def sweep(seed, tiny):
    """Declare the temperature sweep of a base run's SeqKD and GAD students; returns its JSON path."""
    path = os.path.join(base(seed, tiny), "temperature_sweep.json")
    JOBS[path] = ("sweep", [base(seed, tiny), seed, tiny])
    return path


# ---------------------------------------------------------------------------- doing them, in parallel
def start_folder(tiny):
    return os.path.join(OUT, "runs", "start", "tiny" if tiny else "default")


def is_done(path, job):
    kind, args = job
    if kind == "train":
        marker = os.path.join(path, "args.json")
        return os.path.exists(marker) and json.load(open(marker)) == args
    if kind == "sweep":
        return os.path.exists(path) and json.load(open(path))["temperatures"] == TEMPERATURES
    return os.path.exists(os.path.join(path, "before", "generator", "world.json"))  # "start"


def dependencies(path, job, pending):
    """The pending jobs this one reads: those whose folder appears in its arguments (and the shared start)."""
    kind, args = job
    deps = {p for p in pending if p != path and any(isinstance(a, str) and (a == p or a.startswith(p + os.sep))
                                                    for a in args)}
    if kind == "train" and "--student" not in args:
        deps |= {p for p in pending if pending[p][0] == "start"}
    return deps


def to_do(tiny):
    """The declared jobs not done yet, plus those that read one of them, plus the shared start if needed."""
    pending = {p: j for p, j in JOBS.items() if not is_done(p, j)}
    while True:  # a job that reads a job to be (re)done is redone too
        stale = {p: j for p, j in JOBS.items() if p not in pending and dependencies(p, j, pending)}
        if not stale:
            break
        pending.update(stale)
    start = start_folder(tiny)
    if any(k == "train" and "--student" not in a for k, a in pending.values()) and not is_done(start, ("start", [tiny])):
        pending[start] = ("start", [tiny])
    return pending


def train_all(workers, tiny, log):
    """Do every job of to_do, `workers` processes at a time, one CPU thread each; a job starts once the jobs it
    reads are done."""
    pending, running, t0 = to_do(tiny), {}, time.time()  # running: future -> (path, job)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked torch threads
    with futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=torch.set_num_threads,
                                     initargs=(1,)) as pool:
        while pending or running:
            unfinished = {**pending, **dict(running.values())}
            ready = [p for p, j in pending.items() if not dependencies(p, j, unfinished)]
            needed = set().union(*[dependencies(p, j, unfinished) for p, j in pending.items()])
            for path in sorted(ready, key=lambda p: p not in needed)[:workers - len(running)]:  # unblockers first
                job = pending.pop(path)
                log(f"[experiments] start: {describe(path, job)}")
                running[pool.submit(work, path, job, start_folder(tiny))] = (path, job)
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for f in done:
                path, job = running.pop(f)
                error, seconds = f.result()
                if error:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise SystemExit(f"experiments.py: {path} failed: {error} (log: {log_file(path, job)})")
                log(f"[experiments] done in {seconds:.0f} s: {path}")
    log(f"[experiments] every run is ready ({time.time() - t0:.0f} s)")


def describe(path, job):
    return {"train": lambda: "python train_gad.py " + " ".join(job[1]), "sweep": lambda: f"temperature sweep of "
            f"{job[1][0]}", "start": lambda: f"pretraining the shared start in {path}"}[job[0]]()


def log_file(path, job):
    return path[:-len(".json")] + ".log" if job[0] == "sweep" else os.path.join(path, "train.log")


def work(path, job, start):
    """One job, in a worker process; returns (error or None, seconds). Its output goes to its log file.
    Jobs run on one CPU thread, except the shared start, which everything waits for: it gets up to 4."""
    import train_gad
    (kind, args), t0 = job, time.time()
    os.makedirs(os.path.dirname(path) if kind == "sweep" else path, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):  # the "done" marker goes until the job is done again
        os.remove(path if kind == "sweep" else os.path.join(path, "args.json"))
    if kind == "train" and "--student" not in args and not os.path.isdir(os.path.join(path, "before")):
        shutil.copytree(os.path.join(start, "before"), os.path.join(path, "before"))  # the shared start
    with open(log_file(path, job), "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            if kind == "train":
                train_gad.main(args)
                C.write_json(os.path.join(path, "args.json"), args)
            elif kind == "sweep":
                C.write_json(path, temperature_sweep(*args))
            else:
                import world
                torch.set_num_threads(min(4, os.cpu_count() or 1))  # the same bits as one thread, on this CPU
                world.starting_student(train_gad.parse_args(["--out-dir", path, *(TINY if args[0] else [])]), print)
                torch.set_num_threads(1)
        except SystemExit as e:  # train_gad reports bad input / a failed run this way
            return str(e), time.time() - t0
    return None, time.time() - t0


def temperature_sweep(folder, seed, tiny):
    """Judge a base run's SeqKD and GAD students on the test prompts at each of TEMPERATURES."""
    import eval as E
    import world
    from transformers import AutoModelForCausalLM, AutoTokenizer
    prompts, points = world.prompts("test"), {"temperatures": TEMPERATURES}
    for model in ("seqkd", "gad"):
        path = os.path.join(folder, model, "generator")
        tok, gen = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
        for t in TEMPERATURES:
            torch.manual_seed(seed)
            texts, _ = E.student_responses(gen, tok, prompts, 1 if tiny else 4, t, 40)
            m = E.judge_responses(prompts, texts, 1 if tiny else 4)
            points.setdefault(model, {})[str(t)] = {k: m[k] for k in ("fidelity", "distinct_2", "modes")}
    return points


# ---------------------------------------------------------------------------- reading results
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


EXPERIMENTS = {f.__name__: (globals()[f.__name__ + "_runs"], f) for f in (table2, quality_diversity, warmup_ablation,
                                                                          bt_vs_bce, frozen_d, mode_seeking)}


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
    names = list(EXPERIMENTS) if a.name == "all" else [a.name]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
        print("[experiments] matplotlib not installed: JSON and markdown only (pip install -r requirements-plots.txt)")
    t0 = time.time()
    runs = {name: EXPERIMENTS[name][0](a.seeds, a.tiny) for name in names}  # declare every run first,
    train_all(a.workers, a.tiny, print)                                    # then train them, in parallel
    for name in names:
        result, md, plot = EXPERIMENTS[name][1](runs[name], a.seeds, a.tiny)
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
