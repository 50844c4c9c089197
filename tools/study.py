"""Where does the adversarial stage earn its keep? A pre-registered study:
`python tools/experiments.py where_gad_helps`.

Fixed before any of its runs existed; nothing here is tuned on its results (docs/where_gad_helps.md has them):
  - every setting of STUDY changes one thing from the default run (n = 8 samples, not the suite's 4), in the
    direction that gives the adversary more room; search seeds 0 1 2, held-out seeds 3 4 5, trained only after
    the search is finished and only for candidates;
  - per seed: the GAD student (T = 0.8), its own warmup checkpoint, SeqKD with the same G steps (T = 0.8) and
    temperature-tuned SeqKD: SeqKD sampled at the temperature of VAL_TEMPERATURES with the best fidelity on
    world.prompts("val") (128 training prompts; ties: the lower temperature), then judged on test and ood;
  - GAD "beats" a rival on a metric (test fidelity or ood fidelity) when mean(GAD) - mean(rival) > 2 x the pooled
    seed std, sqrt((s_GAD^2 + s_rival^2) / 2), s the sample std over seeds (ddof 1) (`beats`);
  - a setting is a candidate when GAD beats both SeqKD and tuned SeqKD on one metric on the search seeds, and
    "helps" only when it does so again, on the same metric, on the held-out seeds.
The GAD stage's own margin over its warmup is reported beside the rule: it is how the mechanism is read.
Runs live in runs/experiments/runs/study_<setting>/seed<k>/, trained by jobs.py and reused when finished.
"""
import json
import os
import sys
import statistics

from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root

import jobs
import run
import train_gad
import world
from eval import sample_and_judge
from report import evals, stage_records

SOURCES = (("gad", "run"), ("seqkd", "seqkd"))  # (the model, the runs its eval.json entries come from)
VAL_TEMPERATURES = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
STUDY_METRICS = ["fidelity", "ood_fidelity"]
STUDY = {  # setting: (what changes from the default, its flags, whether it trains its own SeqKD baseline)
    "default": ("nothing (the default run)", [], True),
    "a1_d_steps_4": ("a stronger D: 4 D updates per G step", ["--d-steps", "4"], False),
    "a2_lr_d_x3": ("a stronger D: D's learning rate x 3 (3e-3)", ["--lr-d", "3e-3"], False),
    "b_weak_warmup": ("a weaker warmup: 22 SFT steps instead of 78 (D still warms up for 88); SeqKD 22 + 176 steps",
                      ["--d-only-steps", "66", "--seqkd-steps", "198"], True),
    "c_small_student": ("a student SFT cannot fit: hidden 64, 2 layers, pretrained the same way",
                        ["--student-hidden", "64", "--student-layers", "2"], True),
    "d_long_answers": ("longer answers: --world long (a 31-token mode, no repeated item, closing = opening)",
                       ["--world", "long"], True),
    "e_scarce_data": ("scarce teacher data: 352 training prompts instead of 1,408", ["--train-prompts", "352"], True),
    "f_bold_g": ("a bolder G step: GAD learning rate x 3 (9e-5) with the KL weight x 10 (0.01)",
                 ["--lr-gad", "9e-5", "--kl-coef", "0.01"], False),
}
NEEDS_START = {"c_small_student", "d_long_answers"}  # their own pretrained starting student


def study_run(root, setting, seed, tiny_flags, settings=None, needs_start=NEEDS_START):
    """Declare a setting's run for one seed (GAD + its SeqKD, or GAD alone) and the tuning of its SeqKD.
    root: the experiments' output folder; tiny_flags: the smoke-test flags, or [] for the real study;
    settings: STUDY, or another comparison's settings under the same rule (tools/regime.py --compare)."""
    _, flags, own_seqkd = (settings or STUDY)[setting]
    folder = os.path.join(root, "runs", f"study_{setting}")
    out, start = os.path.join(folder, f"seed{seed}"), os.path.join(folder, "start.json")
    mode = [] if own_seqkd else ["--mode", "gad", "--eval-models", "before,warmup,gad"]
    if setting in needs_start:  # pretrained once per setting, before its seeds (they share it)
        jobs.declare(start, "call", ["study.pretrain_start", os.path.join(folder, "start"), flags, tiny_flags])
    run_dir = jobs.declare(out, "train", ["--seed", str(seed), "--out-dir", out, *tiny_flags, *flags, *mode],
                           after=[start] if setting in needs_start else [])
    seqkd_dir = run_dir if own_seqkd else study_run(root, "default", seed, tiny_flags)["run"]
    tuned = jobs.declare(os.path.join(seqkd_dir, "tuned_seqkd.json"), "call",
                         ["study.tuned_seqkd", seqkd_dir, seed, bool(tiny_flags)])
    return {"run": run_dir, "seqkd": seqkd_dir, "tuned": tuned}


def pretrain_start(folder, flags, tiny_flags):
    """A setting's own starting student (another size or world), pretrained once for all its seeds."""
    cfg = train_gad.parse_args(["--out-dir", folder, *tiny_flags, *flags])
    return {"student": run.student_folder(cfg, print)}


def tuned_seqkd(run_dir, seed, tiny):
    """SeqKD at its best validation temperature: fidelity on world.prompts("val") at each of VAL_TEMPERATURES, then
    test and ood at the best one (as eval.py judges: 4 samples per prompt, seeded alike)."""
    world.use(json.load(open(os.path.join(run_dir, "config.json")))["world"])
    path, samples = os.path.join(run_dir, "seqkd", "generator"), 1 if tiny else 4
    tok, gen = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)

    def judged(prompts, t):
        return sample_and_judge(gen, tok, prompts, samples, t, 40, seed)[0]
    val = {str(t): judged(world.prompts("val"), t)["fidelity"] for t in VAL_TEMPERATURES}
    best = max(VAL_TEMPERATURES, key=lambda t: (val[str(t)], -t))
    test, ood = judged(world.prompts("test"), best), judged(world.prompts("ood"), best)
    return {"val_fidelity": val, "temperature": best, "fidelity": test["fidelity"], "modes": test["modes"],
            "length": test["length"], "ood_fidelity": ood["fidelity"]}


def beats(gad, rival):
    """The pre-registered test: (GAD's margin over the rival, 2 x pooled seed std, margin > 2 x pooled std)."""
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    margin, pooled = statistics.mean(gad) - statistics.mean(rival), ((sd(gad) ** 2 + sd(rival) ** 2) / 2) ** 0.5
    return margin, 2 * pooled, margin > 2 * pooled


def study_numbers(runs):
    """Per metric: GAD, its warmup, SeqKD and tuned SeqKD over seeds; the tests; D's health and the modes."""
    ev = {k: evals([r[k] for r in runs]) for k in ("run", "seqkd")}
    tuned = [json.load(open(r["tuned"])) for r in runs]
    out = {"runs": [r["run"] for r in runs], "tuned_temperature": [t["temperature"] for t in tuned]}
    for m in STUDY_METRICS:
        gad, seqkd = [e["gad"][m] for e in ev["run"]], [e["seqkd"][m] for e in ev["seqkd"]]
        out[m] = {"gad": gad, "warmup": [e["warmup"][m] for e in ev["run"]], "seqkd": seqkd,
                  "tuned_seqkd": [t[m] for t in tuned],
                  "vs_seqkd": beats(gad, seqkd), "vs_tuned_seqkd": beats(gad, [t[m] for t in tuned])}
        out[m]["gad_beats_both"] = out[m]["vs_seqkd"][2] and out[m]["vs_tuned_seqkd"][2]
        out[m]["vs_warmup"] = beats(gad, out[m]["warmup"])  # the GAD stage's own gain (reported, not the rule)
    gad_steps = [stage_records(r["run"], "gad") for r in runs]
    out["health"] = {"d_acc": [statistics.mean(x["d_acc"] for x in g) for g in gad_steps],
                     "reward_group_std": [statistics.median(x["reward_group_std"] for x in g) for g in gad_steps],
                     "kl": [statistics.mean(x["kl"] for x in g) for g in gad_steps],
                     "modes": {k: [e[k]["modes"] for e in ev[src]] for k, src in SOURCES},
                     "length": {k: [e[k]["length"] for e in ev[src]] for k, src in SOURCES}}
    return out


def declare(root, seeds, tiny_flags):
    """Every setting's runs on the search seeds: {setting: [study_run per seed]}."""
    return {name: [study_run(root, name, s, tiny_flags) for s in seeds] for name in STUDY}


def analyse(runs, seeds, root, tiny_flags, train, settings=None, needs_start=NEEDS_START):
    """The search, then (for candidates only) the held-out seeds, trained by train(); -> (JSON, markdown, plot)."""
    settings = settings or STUDY
    held_out = [max(seeds) + 1 + i for i in range(len(seeds))]
    result = {"rule": "GAD beats SeqKD and temperature-tuned SeqKD by more than 2 x the pooled seed std on test or ood "
                      "fidelity on the search seeds, and again on the same metric on held-out seeds",
              "search_seeds": seeds, "held_out_seeds": held_out, "settings": {}}
    for name, (what, flags, _) in settings.items():
        search = study_numbers(runs[name])
        result["settings"][name] = {"what": what, "flags": flags, "search": search, "held_out": None,
                                    "candidate_on": [m for m in STUDY_METRICS if search[m]["gad_beats_both"]]}
    candidates = [n for n, r in result["settings"].items() if r["candidate_on"]]
    if candidates:  # only now, after the search: the held-out seeds of the candidates
        later = {n: [study_run(root, n, s, tiny_flags, settings, needs_start) for s in held_out] for n in candidates}
        train()
        for n in candidates:
            result["settings"][n]["held_out"] = study_numbers(later[n])
    for r in result["settings"].values():
        confirmed = [m for m in r["candidate_on"] if r["held_out"] and r["held_out"][m]["gad_beats_both"]]
        r["verdict"] = ("helps (" + ", ".join(confirmed) + ")" if confirmed else
                        "candidate, not confirmed on held-out seeds" if r["candidate_on"] else "does not help")
    return result, study_markdown(result), study_plot(result)


def study_markdown(result):
    def f(v):
        return f"{statistics.mean(v):.3f}"

    def d(vs):
        return f"{vs[0]:+.3f} ({'>' if vs[2] else '<='} {vs[1]:.3f})"
    md = []
    for m in STUDY_METRICS:
        md += [f"**{m}** (GAD and SeqKD sampled at T = 0.8; margins: mean difference, > or <= 2 pooled seed std)", "",
               "| setting | seeds | GAD | its warmup | SeqKD | tuned SeqKD (T) | GAD - warmup | GAD - SeqKD | "
               "GAD - tuned |", "|---" * 9 + "|"]
        for name, r in result["settings"].items():
            for part, seeds in (("search", result["search_seeds"]), ("held_out", result["held_out_seeds"])):
                if r[part] is None:
                    continue
                s = r[part][m]
                md.append(f"| {name} | {', '.join(map(str, seeds))} | {f(s['gad'])} | {f(s['warmup'])} | "
                          f"{f(s['seqkd'])} | {f(s['tuned_seqkd'])} "
                          f"({', '.join(map(str, r[part]['tuned_temperature']))})"
                          f" | {d(s['vs_warmup'])} | {d(s['vs_seqkd'])} | {d(s['vs_tuned_seqkd'])} |")
        md.append("")
    md += ["**D's health and the students' answers** (search seeds; means over GAD steps, then seeds)", "",
           "| setting | what changes | D pair accuracy | reward group std | KL to warmup | modes GAD / SeqKD | "
           "length GAD / SeqKD | verdict |", "|---" * 8 + "|"]
    for name, r in result["settings"].items():
        h = r["search"]["health"]
        md.append(f"| {name} | {r['what']} | {f(h['d_acc'])} | {f(h['reward_group_std'])} | "
                  f"{statistics.mean(h['kl']):.4f} | {f(h['modes']['gad'])} / {f(h['modes']['seqkd'])} | "
                  f"{f(h['length']['gad'])} / {f(h['length']['seqkd'])} | {r['verdict']} |")
    md.append(f"\nSearch seeds {result['search_seeds']}; held-out seeds {result['held_out_seeds']}, run only for "
              "candidates. Rule: " + result["rule"] + ".")
    return "\n".join(md)


def study_plot(result):
    def plot(plt):
        fig, names = plt.gcf(), list(result["settings"])
        fig.set_size_inches(10, 3.8)
        for i, m in enumerate(STUDY_METRICS):
            ax = fig.add_subplot(1, 2, i + 1)
            for j, (rival, color) in enumerate((("vs_warmup", "C2"), ("vs_seqkd", "C0"), ("vs_tuned_seqkd", "C1"))):
                vals = [result["settings"][n]["search"][m][rival] for n in names]
                ax.barh([k + 0.27 * j for k in range(len(names))], [v[0] for v in vals], 0.27,
                        xerr=[v[1] for v in vals], color=color, capsize=2, label="GAD - " + rival[3:])
            ax.axvline(0, color="k", lw=0.8)
            ax.set_yticks([k + 0.27 for k in range(len(names))], names if i == 0 else [], fontsize=7)
            ax.set_title(f"{m}: GAD's margin, search seeds (bar: 2 pooled seed std)", fontsize=8)
        ax.legend(fontsize=7)
    return plot
