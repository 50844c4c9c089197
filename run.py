"""Run support for train_gad.py: nothing here is the algorithm.

    parse_args          the flags of train_gad.CONFIG, each checked (one line per bad value, before anything loads)
    Run                 the run folder: the same flags on --resume, which phases are left, config.json, then per
                        step: the log (metrics.jsonl + a line), the non-finite guard and the resume points
    starting_student    the embedded world's pretrained student, shared by the runs under one parent folder
    load_generator / load_discriminator / reference / save_players / amp     the players (sharded under torchrun:
                        parallel.py), their checkpoints and precision
    evaluate            the final judgement (embedded world), or how to judge a real-model run
"""
import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import uuid

import torch
import yaml
from tqdm import tqdm
from transformers import AutoModelForCausalLM

import checkpoint
import parallel
import world
from discriminator import Discriminator
from generator import load_tokenizer
from eval import evaluate as evaluate_run, judge_responses, student_responses
from teacher import redact_url

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PHASES = {"all": ["gad", "seqkd"], "gad": ["gad"], "seqkd": ["seqkd"]}
STAGES = {"gad": {"warmup", "gad"}, "seqkd": {"seqkd"}}  # the metrics.jsonl stages each phase writes


# ---------------------------------------------------------------------------- flags
def parse_args(config, argv=None, doc=None):
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="", help="a YAML or JSON file of flag values named as the flags (a run's "
                    "config.json repeats that run); flags on the command line win")
    for name, (default, meaning) in config.items():
        if isinstance(default, bool):
            ap.add_argument("--" + name.replace("_", "-"), action="store_true", help=meaning)
        else:
            ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                            help=f"{meaning} (default: {default!r})")
    path = ap.parse_known_args(argv)[0].config
    if path:  # the file's values become the defaults, so the command line wins
        ap.set_defaults(**read_config(path, config, ap.error))
    cfg = ap.parse_args(argv)
    if cfg.seqkd_steps == -1:
        cfg.seqkd_steps = cfg.warmup_steps + cfg.gad_steps
    check(cfg, ap.error)
    world.use(cfg.world)  # the embedded world's variant: its teacher, student and judge
    if cfg.init_from:
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
            error(f"--config {path}: unknown key {key!r} (not a flag of train_gad.py)")
        kind = type(config[name][0])
        exact = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not (exact or (kind is float and isinstance(value, int) and not isinstance(value, bool))):
            error(f"--config {path}: key {key!r}: expected {kind.__name__}, got {value!r}")
        out[name] = kind(value)
    return out


def check(cfg, error):
    """Every flag value that cannot work gets one line here, before any data file, model or teacher is touched."""
    if cfg.mode not in PHASES:
        error(f"--mode must be all, gad or seqkd, got {cfg.mode!r}")
    if cfg.teacher_batch and not cfg.teacher.startswith("openai:"):
        error(f"--teacher-batch needs an openai:MODEL teacher (the Batch API), got --teacher {cfg.teacher}")
    if cfg.teacher_batch_poll <= 0:
        error(f"--teacher-batch-poll must be > 0, got {cfg.teacher_batch_poll}")
    if cfg.report_to not in ("none", "tensorboard", "wandb"):
        error(f"--report-to must be none, tensorboard or wandb, got {cfg.report_to!r}")
    if cfg.report_to != "none" and importlib.util.find_spec(cfg.report_to) is None:
        error(f"--report-to {cfg.report_to}: the package is not installed (pip install -r requirements-tracking.txt)")
    if cfg.world not in world.WORLDS:
        error(f"--world must be one of {', '.join(world.WORLDS)}, got {cfg.world!r}")
    if cfg.student_hidden % 4:
        error(f"--student-hidden must be a multiple of 4 (4 attention heads), got {cfg.student_hidden}")
    if cfg.train_prompts and cfg.train_prompts < cfg.batch_prompts:
        error(f"--train-prompts {cfg.train_prompts} is smaller than --batch-prompts {cfg.batch_prompts}")
    if cfg.d_loss not in ("bt", "bce"):
        error(f"--d-loss must be bt or bce, got {cfg.d_loss!r}")
    if cfg.n_samples < 2:
        error(f"--n-samples must be >= 2 for group-normalised advantages, got {cfg.n_samples}")
    at_least = {"lr_warmup": 0, "lr_gad": 0, "lr_d": 0, "lr_seqkd": 0, "kl_coef": 0, "clip_eps": 0, "weight_decay": 0,
                "warmup_steps": 0, "d_only_steps": 0, "gad_steps": 0, "seqkd_steps": 0, "save_every": 0,
                "eval_every": 0, "micro_batch_size": 0, "teacher_temperature": 0, "eval_temperature": 0,
                "batch_prompts": 1, "d_steps": 1, "train_prompts": 0, "student_layers": 1, "student_hidden": 4,
                "max_response_len": 1, "max_prompt_len": 1, "gen_batch_size": 1, "teacher_concurrency": 1,
                "teacher_max_tokens": 1, "pretrain_steps": 1, "max_bad_steps": 1, "eval_samples": 1, "log_every": 1,
                "sample_every": 1}
    for name, low in at_least.items():
        if getattr(cfg, name) < low:
            error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(cfg, name)}")
    for name in ("temperature", "grad_clip", "teacher_timeout"):
        if getattr(cfg, name) <= 0:
            error(f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}"
                  + (" (on-policy sampling needs a temperature)" if name == "temperature" else ""))
    if set(cfg.eval_models.split(",")) - {"", "before", "warmup", "seqkd", "gad"}:
        error(f"--eval-models: choose from before,warmup,seqkd,gad (comma-separated), got {cfg.eval_models!r}")
    if cfg.prompts and cfg.teacher_data:
        error("give --prompts (to send to a teacher) or --teacher-data (already answered), not both")
    if cfg.frozen_d and not os.path.exists(os.path.join(cfg.frozen_d, "config.json")):
        error(f"--frozen-d: {cfg.frozen_d} is not a model folder (no config.json); expected runs/x/gad/discriminator")
    if cfg.init_from and not os.path.isdir(os.path.join(cfg.init_from, "generator")):
        error(f"--init-from: {cfg.init_from}/generator not found (expected a run's warmup folder)")
    if not (cfg.prompts or cfg.teacher_data) and cfg.batch_prompts > len(world.prompts("train")):
        error(f"--batch-prompts {cfg.batch_prompts} is larger than the embedded world's "
              f"{len(world.prompts('train'))} training prompts")


# ---------------------------------------------------------------------------- the run folder
class Run:
    """One run folder: config.json, metrics.jsonl, resume points, and the per-step bookkeeping."""

    def __init__(self, cfg, log):
        self.cfg, self.log, self.bad = cfg, log, 0
        self.config = {**vars(cfg), "teacher_base_url": redact_url(cfg.teacher_base_url)}  # never a password
        self.config_path = os.path.join(cfg.out_dir, "config.json")
        if cfg.resume and os.path.exists(self.config_path):  # a resumed run must be the same run
            old = json.load(open(self.config_path))
            changed = [k for k, v in self.config.items() if k not in ("resume", "config") and k in old and old[k] != v]
            if changed:
                raise SystemExit(f"train_gad.py: --resume with different flags than the run in {cfg.out_dir}: "
                                 + ", ".join(f"--{k.replace('_', '-')} {old[k]!r} -> {self.config[k]!r}"
                                             for k in changed))
        os.makedirs(cfg.out_dir, exist_ok=True)

    def start(self):
        """The run really starts: write config.json, find the resume point, reset the metrics of what will be
        redone. Returns [(phase, its resume point or None)] for the phases left to train."""
        cfg, main = self.cfg, parallel.is_main()
        if main:
            checkpoint.write_json(self.config_path, self.config)
        phases = PHASES[cfg.mode]
        resume = checkpoint.latest(cfg.out_dir) if cfg.resume else None
        if resume and resume["phase"] not in phases + ["done"]:
            raise SystemExit(f"train_gad.py: --resume: the resume point is for phase {resume['phase']!r}, "
                             f"which --mode {cfg.mode} does not run")
        if resume:
            self.log(f"[resume] continuing at {resume['phase']} step {resume['next_step']}")
            phases = phases[phases.index(resume["phase"]):] if resume["phase"] in phases else []
        else:
            if cfg.resume:
                self.log(f"[resume] no resume point in {cfg.out_dir}: starting from the beginning")
            if main:
                shutil.rmtree(os.path.join(cfg.out_dir, "resume"), ignore_errors=True)
        if main:
            checkpoint.reset_metrics(cfg.out_dir, set().union(*[STAGES[p] for p in phases]),
                                     resume["next_step"] if resume else 0)
        parallel.barrier()
        self.phases, self.tracker = phases, Tracker(cfg, self.config) if main else None
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

    def end_step(self, stage, step, metrics, seconds, data, batch, samples, tok, players):
        """After one step: judge (--eval-every), log, stop after too many non-finite steps, write a resume point.
        players = (G, G's optimiser, D or None, D's optimiser or None)."""
        cfg, metrics = self.cfg, parallel.mean_metrics(metrics)  # under torchrun: the means over all ranks
        if cfg.eval_every and step % cfg.eval_every == 0:
            metrics["judge_fidelity"] = judge_fidelity(players[0], tok, cfg)
        if parallel.is_main():
            self.write_metrics(stage, step, metrics, seconds, data, batch, samples, tok)
        self.guard(metrics, stage, step)
        total = cfg.seqkd_steps if stage == "seqkd" else cfg.warmup_steps + cfg.gad_steps
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            checkpoint.save_resume(cfg.out_dir, "seqkd" if stage == "seqkd" else "gad", step + 1, tok, data, *players)

    def write_metrics(self, stage, step, metrics, seconds, data, batch, samples, tok):
        """metrics.jsonl (one JSON object per step) + a concise line every log_every steps."""
        rec = {"stage": stage, "step": step, **{k: checkpoint.finite_or_none(v) for k, v in metrics.items()},
               "seconds": round(seconds, 4)}
        with open(os.path.join(self.cfg.out_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.tracker.log(rec)
        if step % self.cfg.log_every == 0:
            keys = ["d_loss", "d_acc", "d_gap", "sft_loss", "reward_mean", "reward_group_std", "kl",
                    "entropy", "response_length"]
            tqdm.write(f"[{stage} {step:4d}] " + " ".join(f"{k} {rec[k]:.3f}" for k in keys if rec.get(k) is not None))
        if samples is not None and step % self.cfg.sample_every == 0:
            i = batch.idx[0]
            tqdm.write(f"  prompt : {data.prompts[i][-1]['content']}\n"
                       f"  student: {tok.decode(samples[0], skip_special_tokens=True)}\n"
                       f"  teacher: {data.teacher_texts[i]}")

    def guard(self, metrics, stage, step):
        """Counts consecutive skipped (non-finite) steps; stops the run when there are too many."""
        if not any(k.endswith("_skipped") for k in metrics):
            self.bad = 0
            return
        self.bad += 1
        tqdm.write(f"[{stage} {step}] non-finite loss or gradient: update skipped ({self.bad} in a row)")
        if self.bad >= self.cfg.max_bad_steps:
            last = checkpoint.latest(self.cfg.out_dir)
            raise SystemExit(f"train_gad.py: stopped at {stage} step {step} after {self.bad} consecutive non-finite "
                             f"steps; last good resume point: {last['dir'] if last else 'none'}")


class Tracker:
    """--report-to: every metrics.jsonl record also goes to TensorBoard (out_dir/tensorboard/) or Weights & Biases
    (project $WANDB_PROJECT, default "gad"; offline with WANDB_MODE=offline), with the run's config. Rank 0 only."""

    def __init__(self, cfg, config):
        self.kind, self.writer = cfg.report_to, None
        if self.kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # optional extra: requirements-tracking.txt
            self.writer = SummaryWriter(os.path.join(cfg.out_dir, "tensorboard"))
            self.writer.add_text("config", "    " + json.dumps(config, indent=2).replace("\n", "\n    "))
        elif self.kind == "wandb":
            import wandb  # optional extra: requirements-tracking.txt
            id_file = os.path.join(cfg.out_dir, "wandb_run_id.txt")  # a resumed run continues the same W&B run
            run_id = open(id_file).read().strip() if os.path.exists(id_file) else uuid.uuid4().hex[:8]
            with open(id_file, "w") as f:
                f.write(run_id)
            self.writer = wandb.init(project=os.environ.get("WANDB_PROJECT", "gad"), id=run_id, resume="allow",
                                     name=os.path.basename(os.path.abspath(cfg.out_dir)), dir=cfg.out_dir,
                                     config=config)

    def log(self, rec):
        values = {f"{rec['stage']}/{k}": v for k, v in rec.items()
                  if k not in ("stage", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.kind == "tensorboard":
            for key, value in values.items():
                self.writer.add_scalar(key, value, rec["step"])
            self.writer.flush()
        elif self.kind == "wandb":
            self.writer.log({**values, f"{rec['stage']}/step": rec["step"]})

    def close(self):
        if self.writer is not None:
            self.writer.close() if self.kind == "tensorboard" else self.writer.finish()
            self.writer = None


# ---------------------------------------------------------------------------- the players' checkpoints
def amp():
    """bf16 autocast on GPU (weights and optimiser stay fp32); plain fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if DEVICE == "cuda" else contextlib.nullcontext()


def model_kwargs(cfg):
    # fp32 master weights everywhere (bf16 weights would round away 1e-6-sized updates); bf16 autocast on GPU
    return dict(dtype=torch.float32, trust_remote_code=cfg.trust_remote_code)


def load_generator(path, cfg):
    """G (or the KL reference): a causal LM from a checkpoint folder or hub name."""
    G = AutoModelForCausalLM.from_pretrained(path, **model_kwargs(cfg))
    if cfg.gradient_checkpointing:  # transformers 5 renamed it; older: the 2nd name
        getattr(G, "activation_checkpointing_enable", G.gradient_checkpointing_enable)()
    return parallel.shard(G, DEVICE)


def load_discriminator(path, cfg):
    """D: the backbone alone (no LM head is loaded) + a fresh scalar head, unless one is saved there."""
    D = Discriminator.from_pretrained(path, **model_kwargs(cfg))
    if cfg.gradient_checkpointing:
        getattr(D.backbone, "activation_checkpointing_enable", D.backbone.gradient_checkpointing_enable)()
    return parallel.shard(D, DEVICE, layers_of=D.backbone)


def reference(cfg):
    """The KL reference of stage 2: the post-warmup G, frozen (read back from runs/x/warmup/generator)."""
    return load_generator(os.path.join(cfg.out_dir, "warmup", "generator"), cfg).eval().requires_grad_(False)


def save_players(G, D, tok, name, cfg):
    """runs/<name>/<warmup|gad|seqkd>/generator (and discriminator/): plain save_pretrained folders."""
    checkpoint.save_model(G, os.path.join(cfg.out_dir, name, "generator"), tok)
    if D is not None:
        checkpoint.save_model(D, os.path.join(cfg.out_dir, name, "discriminator"), tok)


# ---------------------------------------------------------------------------- the embedded student, evaluation
def starting_student(cfg, log):
    """(folder or hub name, tokenizer) of the starting student: --student, or the embedded world's (pretrained
    here once, then shared)."""
    path = student_folder(cfg, log)
    try:
        return path, load_tokenizer(path, cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise SystemExit(f"train_gad.py: --student {cfg.student}: {str(e).splitlines()[0]}")


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
        marker = os.path.join(folder, "world.json")
        return os.path.exists(marker) and json.load(open(marker)) == spec

    if ready(path):
        log(f"[world] reusing the pretrained starting student in {path}")
        return path
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if ready(world.SHIPPED_STUDENT):  # the default start ships with the project (its sha256 is checked)
        log(f"[world] the shipped starting student ({world.SHIPPED_STUDENT}, sha256 checked)")
        shutil.copytree(world.shipped_student(), tmp)
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
    """Privileged-judge fidelity of G on the test prompts, 1 sample each; the RNG is left untouched."""
    state = torch.get_rng_state()
    prompts = world.prompts("test")
    texts, _ = student_responses(G, tok, prompts, 1, cfg.eval_temperature, cfg.max_response_len)
    torch.set_rng_state(state)
    return judge_responses(prompts, texts, 1)["fidelity"]


def evaluate(cfg, log):
    """The embedded world: judge the run's checkpoints now. Real models: say how (an LLM judge costs money)."""
    if not parallel.is_main():
        return
    if cfg.student == "embedded" and cfg.teacher == "embedded" and not (cfg.prompts or cfg.teacher_data):
        evaluate_run(cfg.out_dir, cfg.eval_samples, cfg.eval_temperature, cfg.max_response_len, cfg.seed, log=log,
                     models=[m for m in cfg.eval_models.split(",") if m])
    else:
        log(f"[eval] judge this run with: python eval.py {cfg.out_dir} --test-data TEST.jsonl --judge openai:MODEL")
