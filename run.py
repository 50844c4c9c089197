"""Run support for train_gad.py: nothing here is the algorithm.

    parse_args          the flags of train_gad.GROUPS, each checked against its bound (one line per bad value, before
                        anything loads), in four --help groups
    Run                 the run folder: locked, the same flags on --resume, which phases are left, config.json, then
                        per step: evaluate_if_due, log (metrics.jsonl, a line, the non-finite guard), show_sample
                        (samples.jsonl), save_if_due (resume points)
    starting_student    the embedded world's pretrained student, shared by the runs under one parent folder
    evaluate            the final judgement (embedded world), or how to judge a real-model run
"""
import argparse
import contextlib
import importlib.util
import json
import math
import os
import reprlib
import shutil
import sys

import torch
import yaml
from tqdm import tqdm

import checkpoint
import parallel
import world
from data import load_tokenizer
from eval import evaluate as evaluate_run, judge_step, sample_and_judge
from generator import finished

PHASES = {"all": ["gad", "seqkd"], "gad": ["gad"], "seqkd": ["seqkd"]}
STAGES = {"gad": {"warmup", "gad"}, "seqkd": {"seqkd"}}  # the metrics.jsonl stages each phase writes


# ---------------------------------------------------------------------------- flags
def parse_args(groups, argv=None, doc=None):
    """groups: {title: {name: (default, meaning, bound)}} -> the checked flags (argparse.Namespace)."""
    config = {name: entry for flags in groups.values() for name, entry in flags.items()}
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="", help="a YAML or JSON file of flag values named as the flags (a run's "
                    "config.json repeats that run); flags on the command line win")
    for title, flags in groups.items():
        group = ap.add_argument_group(title)
        for name, (default, meaning, _) in flags.items():
            if isinstance(default, bool):
                group.add_argument("--" + name.replace("_", "-"), action="store_true", help=meaning)
            else:
                group.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                                   help=f"{meaning} (default: {default!r})")
    path = ap.parse_known_args(argv)[0].config
    values = read_config(path, config, ap.error) if path else {}
    ap.set_defaults(**values)  # the file's values become the defaults, so the command line wins
    cfg = ap.parse_args(argv)
    # values derived from others: config.json keeps them as given (so a replay derives them anew), the log shows both
    cfg.as_given = {}
    if cfg.seqkd_steps == -1:
        cfg.as_given["seqkd_steps"] = -1
        cfg.seqkd_steps = cfg.warmup_steps + cfg.gad_steps
    check(cfg, config, ap.error)
    given = sys.argv[1:] if argv is None else argv
    if "out_dir" in values and not any(a == "--out-dir" or a.startswith("--out-dir=") for a in given) \
            and os.path.exists(os.path.join(cfg.out_dir, "config.json")) and not cfg.resume:
        ap.error(f"--config {path} names --out-dir {cfg.out_dir}, which holds a run already: give the replay its own "
                 f"--out-dir (or --resume to continue that run, --out-dir {cfg.out_dir} to start it over)")
    world.use(cfg.world)  # the embedded world's variant: its teacher, student and judge
    if cfg.init_from:
        cfg.as_given["warmup_steps"] = cfg.warmup_steps
        cfg.warmup_steps = 0
    return cfg


def read_config(path, config, error):
    """{name: value} of a --config file (YAML or JSON), each name a flag of config and each value of its type."""
    if not os.path.isfile(path):
        error(f"--config {path}: file not found")
    try:
        with open(path) as f:
            values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        kind = "JSON" if path.endswith(".json") else "YAML"
        error(f"--config {path}: not valid {kind} ({str(e).splitlines()[0][:120]})")
    if not isinstance(values, dict):
        error(f"--config {path}: expected a mapping of flag names to values")
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name == "config":  # a run's config.json names the file it was read from
            continue
        if name not in config:
            error(f"--config {path}: unknown key {short(key)} (not a flag of train_gad.py)")
        kind = type(config[name][0])
        if kind is float and isinstance(value, str):  # PyYAML reads 5e-4 (no dot) as a string: YAML 1.1's rule
            with contextlib.suppress(ValueError):
                value = float(value)
        exact = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not (exact or (kind is float and isinstance(value, int) and not isinstance(value, bool))):
            error(f"--config {path}: key {short(key)}: expected {kind.__name__}, got {short(value)}")
        if kind is float and not math.isfinite(value):
            error(f"--config {path}: key {short(key)}: expected a finite number, got {value}")
        out[name] = kind(value)
    return out


def short(value):
    """A value as an error message may echo it: at most 80 characters (a YAML anchor can expand a small file into
    a huge value)."""
    brief = reprlib.Repr()
    brief.maxstring = brief.maxother = 60
    brief.maxlist = brief.maxdict = 4
    brief.maxlevel = 2
    return brief.repr(value)[:80]


def check(cfg, config, error):
    """Every flag value that cannot work gets one line here, before any data file, model or teacher is touched:
    each flag against the bound of its entry, then what depends on several flags or on the disk."""
    for name, value in vars(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            error(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    for name, (_, _, bound) in config.items():
        value = getattr(cfg, name)
        flag = "--" + name.replace("_", "-")
        if isinstance(bound, tuple) and value not in bound:
            error(f"{flag} must be one of {', '.join(bound)}, got {value!r}")
        elif isinstance(bound, str):
            kind, low = bound.split()
            if (value < float(low)) if kind == ">=" else (value <= float(low)):
                error(f"{flag} must be {bound}, got {value}")
    if cfg.teacher_batch and not cfg.teacher.startswith("openai:"):
        error(f"--teacher-batch needs an openai:MODEL teacher (the Batch API), got --teacher {cfg.teacher}")
    if cfg.report_to != "none" and importlib.util.find_spec(cfg.report_to) is None:
        error(f"--report-to {cfg.report_to}: the package is not installed (pip install -r requirements-tracking.txt)")
    if cfg.student_hidden % 4:
        error(f"--student-hidden must be a multiple of 4 (4 attention heads), got {cfg.student_hidden}")
    if cfg.train_prompts and cfg.train_prompts < cfg.batch_prompts:
        error(f"--train-prompts {cfg.train_prompts} is smaller than --batch-prompts {cfg.batch_prompts}")
    if set(cfg.eval_models.split(",")) - {"", "before", "warmup", "seqkd", "gad"}:
        error(f"--eval-models: choose from before,warmup,seqkd,gad (comma-separated), got {cfg.eval_models!r}")
    if cfg.prompts and cfg.teacher_data:
        error("give --prompts (to send to a teacher) or --teacher-data (already answered), not both")
    if cfg.frozen_d and not os.path.exists(os.path.join(cfg.frozen_d, "config.json")):
        error(f"--frozen-d: {cfg.frozen_d} is not a model folder (no config.json); expected runs/x/gad/discriminator")
    if cfg.d_init and (cfg.frozen_d or cfg.init_from or not os.path.exists(os.path.join(cfg.d_init, "config.json"))):
        error(f"--d-init {cfg.d_init}: expected a model folder (config.json), and not with --frozen-d or --init-from")
    if cfg.d_label_smoothing >= 0.5:
        error(f"--d-label-smoothing must be below 0.5 (0.5 = no preference), got {cfg.d_label_smoothing}")
    if cfg.init_from and not os.path.isdir(os.path.join(cfg.init_from, "generator")):
        error(f"--init-from: {cfg.init_from}/generator not found (expected a run's warmup folder)")
    if not (cfg.prompts or cfg.teacher_data) and cfg.batch_prompts > len(world.prompts("train")):
        error(f"--batch-prompts {cfg.batch_prompts} is larger than the embedded world's "
              f"{len(world.prompts('train'))} training prompts")


# ---------------------------------------------------------------------------- the run folder
def config_record(cfg):
    """What config.json holds: the flags as given (a derived value is derived again by a replay), never a password."""
    return {**{k: v for k, v in vars(cfg).items() if k != "as_given"}, **cfg.as_given,
            "teacher_base_url": checkpoint.redact_url(cfg.teacher_base_url)}


SAME_RUN_IGNORES = {"resume", "config", "out_dir"}  # a folder may be moved or spelled differently; it is the run's
NEW_PHASE_IGNORES = SAME_RUN_IGNORES | {"mode"}     # --mode gad, then --mode seqkd: the two phases of one run


class Run:
    """One run folder: config.json, metrics.jsonl, resume points, and the per-step bookkeeping.

    The folder is locked (out_dir/.lock) while a run uses it. --resume needs the flags of the run in the folder;
    a fresh start in a folder that holds another run (other flags) is refused, so two runs never mix there."""

    def __init__(self, cfg, log):
        self.cfg = cfg
        self.say = log          # rank 0's console (a no-op on the others)
        self.bad = 0            # consecutive non-finite steps
        self.config = config_record(cfg)
        for name, value in cfg.as_given.items():
            log(f"[config] --{name.replace('_', '-')} {value} -> {getattr(cfg, name)}")
        self.config_path = os.path.join(cfg.out_dir, "config.json")
        self.lock = checkpoint.lock_folder(cfg.out_dir) if parallel.is_main() else None
        try:
            self.same_run()
        except SystemExit:
            self.close()
            raise

    def same_run(self):
        """--resume: the flags of the run in the folder; a fresh start: no other run's folder (phases may differ)."""
        cfg = self.cfg
        if not os.path.exists(self.config_path):
            return
        old = checkpoint.read_json(self.config_path)
        ignore = SAME_RUN_IGNORES if cfg.resume else NEW_PHASE_IGNORES
        changed = [k for k, v in self.config.items() if k not in ignore and k in old and old[k] != v]
        if changed:
            what = ", ".join(f"--{k.replace('_', '-')} {old[k]!r} -> {self.config[k]!r}" for k in changed[:6])
            raise SystemExit(f"train_gad.py: --resume with different flags than the run in {cfg.out_dir}: {what}"
                             if cfg.resume else
                             f"train_gad.py: {cfg.out_dir} holds another run (its flags differ: {what}); give this "
                             "one its own --out-dir, or remove that folder first")

    def __enter__(self):  # with Run(cfg, log) as folder: the lock is let go however the run ends
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """The folder is free again (the lock goes with the process anyway)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def start(self):
        """The run really starts: write config.json, find the resume point, reset the metrics of what will be
        redone. Returns [(phase, its resume point or None)] for the phases left to train."""
        cfg = self.cfg
        main = parallel.is_main()
        if main:
            checkpoint.write_json(self.config_path, self.config)
        phases = PHASES[cfg.mode]
        resume = checkpoint.latest(cfg.out_dir) if cfg.resume else None
        if resume and resume["phase"] not in phases + ["done"]:
            raise SystemExit(f"train_gad.py: --resume: the resume point is for phase {resume['phase']!r}, "
                             f"which --mode {cfg.mode} does not run")
        if resume:
            self.say(f"[resume] continuing at {resume['phase']} step {resume['next_step']}")
            phases = phases[phases.index(resume["phase"]):] if resume["phase"] in phases else []
        else:
            if cfg.resume:
                self.say(f"[resume] no resume point in {cfg.out_dir}: starting from the beginning")
            if main:
                shutil.rmtree(os.path.join(cfg.out_dir, "resume"), ignore_errors=True)
        if main:
            checkpoint.reset_metrics(cfg.out_dir, set().union(*[STAGES[p] for p in phases]),
                                     resume["next_step"] if resume else 0)
        parallel.barrier()
        self.phases = phases
        self.tracker = checkpoint.Tracker(cfg, self.config, resume) if main else None
        return [(p, resume if resume and resume["phase"] == p and resume["dir"] else None) for p in phases]

    def finish(self, phase):
        """A phase is trained: the resume pointer moves to the next one ("done" after the last)."""
        i = self.phases.index(phase)
        if parallel.is_main():
            checkpoint.mark_phase_start(self.cfg.out_dir, self.phases[i + 1] if i + 1 < len(self.phases) else "done")
            if i + 1 == len(self.phases):
                self.tracker.close()

    def steps(self, start, total, desc):
        return tqdm(range(start, total), desc=desc, initial=start, total=total,
                    disable=None if parallel.is_main() else True)

    def evaluate_if_due(self, step, metrics, G, tok, judged=None):
        """Evaluation only: the judge on (prompts, samples, D's scores) of a step (rank 0's); --eval-every: fidelity."""
        if judged and judged[1] is not None and self.cfg.teacher == "embedded" and parallel.is_main():
            metrics |= judge_step(*judged, self.cfg.n_samples, tok)
        if self.cfg.eval_every and step % self.cfg.eval_every == 0:
            metrics["judge_fidelity"] = judge_fidelity(G, tok, self.cfg)
        return metrics

    def log(self, stage, step, metrics, seconds):
        """One metrics.jsonl record (and the tracker's), a console line every log_every steps; then the non-finite
        guard: the run stops after max_bad_steps skipped updates in a row."""
        if parallel.is_main():
            rec = checkpoint.json_safe({"stage": stage, "step": step, **metrics, "seconds": round(seconds, 4)})
            checkpoint.append_jsonl(os.path.join(self.cfg.out_dir, "metrics.jsonl"), rec)
            self.tracker.log(rec)
            if step % self.cfg.log_every == 0:
                keys = ["d_loss", "d_acc", "d_gap", "sft_loss", "reward_mean", "reward_group_std", "kl",
                        "entropy", "response_length"]
                shown = " ".join(f"{k} {rec[k]:.3f}" for k in keys if rec.get(k) is not None)
                tqdm.write(f"[{stage} {step:4d}] {shown}")
        self.guard(metrics, stage, step)

    def show_sample(self, stage, step, data, batch, samples, tok, scores=None):
        """Every sample_every steps: (prompt, G's sample, teacher) printed; the step's samples to samples.jsonl."""
        if parallel.is_main() and samples is not None and step % self.cfg.sample_every == 0:
            i, text = batch.idx[0], [tok.decode(s, skip_special_tokens=True) for s in samples]
            tqdm.write(f"  prompt : {data.prompts[i][-1]['content']}\n  student: {text[0]}\n"
                       f"  teacher: {data.teacher_texts[i]}")
            checkpoint.append_jsonl(os.path.join(self.cfg.out_dir, "samples.jsonl"), {
                "stage": stage, "step": step, "prompts": [data.prompts[j][-1]["content"] for j in batch.idx],
                "samples": text, "ended": [finished(s, tok.eos_token_id) for s in samples],
                "scores": None if scores is None else scores.float().flatten().tolist()})

    def save_if_due(self, phase, step, tok, data, G, g_opt, D=None, d_opt=None):
        """Every save_every steps (not after the last): a resume point of the phase ("gad" or "seqkd")."""
        cfg = self.cfg
        total = cfg.seqkd_steps if phase == "seqkd" else cfg.warmup_steps + cfg.gad_steps
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            checkpoint.save_resume(cfg.out_dir, phase, step + 1, tok, data, G, g_opt, D, d_opt)

    def guard(self, metrics, stage, step):
        """Counts consecutive skipped (non-finite) steps; stops the run when there are too many."""
        self.bad = self.bad + 1 if any(k.endswith("_skipped") for k in metrics) else 0
        if self.bad:
            tqdm.write(f"[{stage} {step}] non-finite loss or gradient: update skipped ({self.bad} in a row)")
        if self.bad >= self.cfg.max_bad_steps:
            last = checkpoint.latest(self.cfg.out_dir)
            raise SystemExit(f"train_gad.py: stopped at {stage} step {step} after {self.bad} consecutive non-finite "
                             f"steps; last good resume point: {last['dir'] if last else 'none'}")


def interrupted():
    """Ctrl-C: one line, then leave at once (requests in flight are not waited for; everything written is whole)."""
    sys.stdout.flush()
    print("\ntrain_gad.py: interrupted. The teacher answers collected so far are cached; rerun the same command "
          "(with --resume to continue from the last resume point)", file=sys.stderr, flush=True)
    os._exit(130)


# ---------------------------------------------------------------------------- the embedded student, evaluation
def starting_student(cfg, log):
    """(folder or hub name, tokenizer) of the starting student: --student, or the embedded world's (pretrained
    here once, then shared)."""
    path = student_folder(cfg, log)
    flag, where = "--student", cfg.student
    try:
        tok = load_tokenizer(path, cfg.trust_remote_code)
        flag, where = "--d-init", cfg.d_init
        d_tok = load_tokenizer(cfg.d_init, cfg.trust_remote_code) if cfg.d_init else tok
    except (OSError, ValueError) as e:
        raise SystemExit(f"train_gad.py: {flag} {where}: {str(e).splitlines()[0]}")
    if d_tok is not tok and d_tok.get_vocab() != tok.get_vocab():
        raise SystemExit(f"train_gad.py: --d-init {cfg.d_init}: its tokenizer is not the student's (D reads G's ids)")
    return path, tok


def student_folder(cfg, log):
    """--student's folder; for the embedded world, out_dir/before/generator: the shipped student (the default
    start), a copy shared by the runs of one parent folder, or pretrained now (another seed, size or world)."""
    if cfg.student != "embedded":
        if not os.path.isdir(cfg.student) and (cfg.student.startswith((".", "/")) or cfg.student.count("/") != 1):
            raise SystemExit(f"train_gad.py: --student: model folder not found: {cfg.student}")
        return cfg.student
    path = os.path.join(cfg.out_dir, "before", "generator")
    # one fixed starting student for every --seed, as the paper starts every run from the same checkpoint;
    # --seed varies the distillation, --pretrain-seed the student
    spec, name = world.student_spec(cfg.pretrain_seed, cfg.pretrain_steps, cfg.student_hidden, cfg.student_layers)
    # runs under the same parent folder share it: runs/.starting_student/<spec>/ (3 MB), copied into before/
    shared = os.path.join(os.path.dirname(os.path.abspath(cfg.out_dir)), ".starting_student", name)

    def ready(folder):
        try:
            with open(os.path.join(folder, "world.json")) as f:
                if json.load(f) != spec:
                    return False
        except (OSError, ValueError):
            return False
        if os.path.exists(os.path.join(folder, "recipe.json")):  # a copy of the shipped student: every file as shipped
            try:
                world.shipped_student(folder)
            except SystemExit as e:
                log(f"[world] {folder} is not the shipped student any more ({e}); copying it again")
                return False
        return True

    if ready(path):
        log(f"[world] reusing the pretrained starting student in {path}")
        return path
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if world.ships(cfg.pretrain_seed, cfg.pretrain_steps, cfg.student_hidden, cfg.student_layers):
        shutil.copytree(world.shipped_student(), tmp)  # the default start ships with the project (sha256 checked)
        log(f"[world] the shipped starting student ({world.SHIPPED_STUDENT}, sha256 checked)")
    elif ready(shared):
        log(f"[world] copying the pretrained starting student from {shared}")
        shutil.copytree(shared, tmp)
    else:
        log(f"[world] pretraining the starting student ({cfg.pretrain_steps} steps)")
        world.build_student(tmp, seed=cfg.pretrain_seed, steps=cfg.pretrain_steps, hidden=cfg.student_hidden,
                            layers=cfg.student_layers, log=log)
        with open(os.path.join(tmp, "world.json"), "w") as f:
            json.dump(spec, f)
        shared_tmp = f"{shared}.tmp{os.getpid()}"
        shutil.copytree(tmp, shared_tmp)
        shutil.rmtree(shared, ignore_errors=True)
        os.replace(shared_tmp, shared)  # atomic: a half-copied student is never "ready"
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def judge_fidelity(G, tok, cfg):
    """Privileged-judge fidelity of G on the test prompts, 1 sample each; the RNGs (CPU, GPU) are left untouched."""
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        m = sample_and_judge(G, tok, world.prompts("test"), 1, cfg.eval_temperature, cfg.max_response_len)[0]
    return m["fidelity"]


def evaluate(cfg, log):
    """The embedded world: judge the run's checkpoints now. Real models: say how (an LLM judge costs money)."""
    if not parallel.is_main():
        return
    if cfg.student == "embedded" and cfg.teacher == "embedded" and not (cfg.prompts or cfg.teacher_data):
        evaluate_run(cfg.out_dir, cfg.eval_samples, cfg.eval_temperature, cfg.max_response_len, cfg.seed, log=log,
                     models=[m for m in cfg.eval_models.split(",") if m])
    else:
        log(f"[eval] judge this run with: python eval.py {cfg.out_dir} --test-data TEST.jsonl --judge openai:MODEL")
