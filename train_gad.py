"""Generative Adversarial Distillation (GAD, arXiv 2511.10643) in one readable loop.

    python train_gad.py                      # embedded world: teacher data, warmup, GAD, SeqKD, eval
    python train_gad.py --mode seqkd         # only the SeqKD baseline (SFT on teacher text)
    python train_gad.py --help               # every hyper-parameter, with its meaning

Stage 0  collect teacher responses (teacher.collect; cached on disk, never paid for twice)
Stage 1  warmup, per step: G samples n responses per prompt; D takes one Bradley-Terry step on
         (teacher, student) pairs; G takes one SFT step on the teacher responses (after d_only_steps)
Stage 2  GAD, per step, in the paper's order:
           1. sample n responses per prompt from G                     generator.sample
           2. score them with D (pre-update) -> rewards -> advantages  Discriminator.forward, group_advantages
           3. one D step on the Bradley-Terry loss                     discriminator.bt_loss
           4. one G step on the GRPO loss, KL to the post-warmup G     generator.policy_loss
SeqKD    the baseline: SFT on the same teacher data, same start, same number of G steps and prompts.

What is simplified relative to the paper (see README "Simplifications"):
  - one optimiser step per rollout batch (as the paper), so the PPO ratio is 1; no micro-batching
  - the defaults are sized for a 2-core CPU and a 0.8M-parameter student; the paper's learning rates
    (1e-6) and grad clip (0.2) are for 3-14B models and are overridable flags here
  - SeqKD trains for a fixed number of steps (the paper keeps the best of 3 epochs)
"""
import argparse
import contextlib
import copy
import json
import os
import random
import shutil
import time

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

import checkpoint as C
import discriminator as D
import generator as G
import teacher as T
import world

# ---------------------------------------------------------------------------- every default, one block
CONFIG = {  # name: (default, meaning)
    "out_dir": ("runs/default", "everything of the run goes here"),
    "mode": ("all", "all = GAD + SeqKD + eval; gad = GAD + eval; seqkd = SeqKD baseline + eval"),
    "seed": (0, "seed for data order, sampling, D's new head and the teacher (not the start: --pretrain-seed)"),
    "student": ("embedded", "'embedded' = pretrain the embedded world's student here; else any HF causal LM "
                "(hub name or local folder)"),
    "pretrain_steps": (800, "embedded student: pretraining steps on the broad corpus (batch 64)"),
    "pretrain_seed": (0, "embedded student: its pretraining seed (the same start for every --seed, as in the paper)"),
    "teacher": ("embedded", "embedded | openai:MODEL (any OpenAI-compatible endpoint) | hf:PATH (a local model)"),
    "teacher_base_url": ("", "base URL of the OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else "
                         "OpenAI's); the key comes from $OPENAI_API_KEY"),
    "teacher_cache": ("", "the teacher's answer cache (JSONL); default: one file per teacher in "
                      "<parent of --out-dir>/.teacher_cache/, shared by every run there"),
    "teacher_system_prompt": ("", "a system prompt only the teacher sees (context distillation)"),
    "teacher_temperature": (1.0, "teacher sampling temperature"),
    "teacher_max_tokens": (1024, "teacher response limit in tokens"),
    "teacher_concurrency": (8, "teacher requests in flight at once"),
    "teacher_timeout": (120.0, "seconds before a teacher request is abandoned and retried"),
    "prompts": ("", "JSONL/parquet of prompts (column content = chat messages, or prompt = string) to send to "
                "--teacher; default: the embedded world's training prompts"),
    "teacher_data": ("", "JSONL/parquet with responses already collected (columns content/prompt + "
                     "teacher_response, the paper's format); no teacher is called"),
    "max_prompt_len": (1024, "a prompt longer than this many tokens is skipped (and counted in the log)"),
    "gen_batch_size": (64, "sequences sampled at once (chunks keep generation memory flat)"),
    "gradient_checkpointing": (False, "trade compute for memory in G and D (flag)"),
    "trust_remote_code": (False, "allow model code from the checkpoint to run (flag; off unless you ask)"),
    "init_from": ("", "start stage 2 from a warmup folder of an earlier run (runs/x/warmup): skip stage 1"),
    "save_every": (50, "write a resume point every this many steps (0 = never); see --resume"),
    "resume": (False, "continue from the newest resume point in --out-dir (same flags as the killed run)"),
    "max_bad_steps": (3, "stop after this many consecutive steps with a non-finite loss or gradient"),
    "batch_prompts": (16, "prompts per step (paper: 256); 88 steps = 1 epoch of the 1408 train prompts"),
    "n_samples": (8, "student samples per prompt, the GRPO group size n (paper: 8)"),
    "temperature": (0.8, "sampling temperature; training log-probs use logits / temperature (paper: 0.8)"),
    "max_response_len": (40, "response length limit in tokens; a longer teacher response is skipped"),
    "warmup_steps": (88, "stage 1 steps (paper: 1 epoch)"),
    "d_only_steps": (10, "first warmup steps train D alone (paper: 10)"),
    "gad_steps": (176, "stage 2 steps (paper: 2 epochs)"),
    "seqkd_steps": (-1, "SeqKD steps; -1 = warmup_steps + gad_steps (same G steps; here 3 epochs, as the paper)"),
    "lr_warmup": (5e-4, "G learning rate in warmup SFT (paper: 1e-6 for 3-14B models)"),
    "lr_gad": (3e-5, "G learning rate in GAD (paper: 1e-6); 1e-4 diverged here (README)"),
    "lr_d": (1e-3, "D learning rate, warmup and GAD (paper: 1e-6)"),
    "lr_seqkd": (5e-4, "G learning rate for the SeqKD baseline (paper: 5e-6)"),
    "kl_coef": (0.001, "weight of the k3 KL-to-reference loss term (paper: 0.001)"),
    "clip_eps": (0.2, "PPO clip range; inactive with one step per batch (ratio = 1)"),
    "grad_clip": (1.0, "max grad norm for G and D (paper: 0.2)"),
    "weight_decay": (0.01, "AdamW weight decay (paper: 0.01)"),
    "d_loss": ("bt", "bt = Bradley-Terry (paper Eq. 3); bce = the weaker baseline of paper Table 4"),
    "no_d_warmup": (False, "ablation (paper Table 3): D is not trained in stage 1 (flag)"),
    "break_eos_symmetry": (False, "lab (exercises/lab1_eos.md): D sees teacher responses without their EOS (flag)"),
    "frozen_d": ("", "ablation (paper Fig. 6): a trained discriminator folder used as a fixed reward model"),
    "eval_every": (0, "embedded world: judge G on the test prompts every N steps and log judge_fidelity "
                      "(evaluation only; the judge never trains anything)"),
    "eval_samples": (4, "samples per held-out prompt at evaluation"),
    "eval_models": ("before,warmup,seqkd,gad", "embedded world: the checkpoints judged at the end ('' = none)"),
    "eval_temperature": (0.8, "sampling temperature at evaluation (0 = greedy)"),
    "log_every": (22, "print a log line every this many steps"),
    "sample_every": (88, "print one (prompt / student / teacher) triple every this many steps"),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (default, meaning) in CONFIG.items():
        if isinstance(default, bool):
            ap.add_argument("--" + name.replace("_", "-"), action="store_true", help=meaning)
        else:
            ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                            help=f"{meaning} (default: {default!r})")
    cfg = ap.parse_args(argv)
    if cfg.seqkd_steps == -1:
        cfg.seqkd_steps = cfg.warmup_steps + cfg.gad_steps
    if cfg.mode not in ("all", "gad", "seqkd"):
        ap.error(f"--mode must be all, gad or seqkd, got {cfg.mode!r}")
    if cfg.d_loss not in ("bt", "bce"):
        ap.error(f"--d-loss must be bt or bce, got {cfg.d_loss!r}")
    if cfg.n_samples < 2:
        ap.error(f"--n-samples must be >= 2 for group-normalised advantages, got {cfg.n_samples}")
    at_least = {"lr_warmup": 0, "lr_gad": 0, "lr_d": 0, "lr_seqkd": 0, "kl_coef": 0, "clip_eps": 0, "weight_decay": 0,
                "warmup_steps": 0, "d_only_steps": 0, "gad_steps": 0, "seqkd_steps": 0, "save_every": 0,
                "eval_every": 0, "teacher_temperature": 0, "eval_temperature": 0, "batch_prompts": 1,
                "max_response_len": 1, "max_prompt_len": 1, "gen_batch_size": 1, "teacher_concurrency": 1,
                "teacher_max_tokens": 1, "pretrain_steps": 1, "max_bad_steps": 1, "eval_samples": 1, "log_every": 1,
                "sample_every": 1}
    for name, low in at_least.items():
        if getattr(cfg, name) < low:
            ap.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(cfg, name)}")
    for name in ("temperature", "grad_clip", "teacher_timeout"):
        if getattr(cfg, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}"
                     + (" (on-policy sampling needs a temperature)" if name == "temperature" else ""))
    if cfg.frozen_d and not os.path.exists(os.path.join(cfg.frozen_d, "config.json")):
        ap.error(f"--frozen-d: {cfg.frozen_d} is not a model folder (no config.json); expected e.g. runs/x/gad/discriminator")
    if not (cfg.prompts or cfg.teacher_data) and cfg.batch_prompts > len(world.prompts("train")):
        ap.error(f"--batch-prompts {cfg.batch_prompts} is larger than the embedded world's "
                 f"{len(world.prompts('train'))} training prompts")
    if cfg.prompts and cfg.teacher_data:
        ap.error("give --prompts (to send to a teacher) or --teacher-data (already answered), not both")
    if cfg.init_from:
        if not os.path.isdir(os.path.join(cfg.init_from, "generator")):
            ap.error(f"--init-from: {cfg.init_from}/generator not found (expected a run's warmup folder)")
        cfg.warmup_steps = 0
    return cfg


# ---------------------------------------------------------------------------- data
class Data:
    """Training prompts as token ids, each with its one teacher response (+ EOS), in shuffled epochs."""

    def __init__(self, tokenizer, prompts, teacher_texts, cfg, log):
        self.prompts, self.prompt_ids, self.teacher_ids, self.teacher_texts = [], [], [], []
        skipped = {"empty teacher response": 0, f"teacher response > {cfg.max_response_len} tokens": 0,
                   f"prompt > {cfg.max_prompt_len} tokens": 0}
        keys = list(skipped)
        for messages, text in zip(prompts, teacher_texts):
            if not text or not text.strip():  # an empty or missing answer teaches nothing
                skipped[keys[0]] += 1
                continue
            r = G.response_ids(tokenizer, text)
            if len(r) > cfg.max_response_len:  # would lose its EOS: skip, keeping the EOS symmetry
                skipped[keys[1]] += 1
                continue
            p = G.prompt_ids(tokenizer, messages)
            if len(p) > cfg.max_prompt_len:
                skipped[keys[2]] += 1
                continue
            self.prompts.append(messages)
            self.prompt_ids.append(p)
            self.teacher_ids.append(r)
            self.teacher_texts.append(text)
        for why, count in skipped.items():
            if count:
                log(f"[data] skipped {count} of {len(prompts)} examples: {why}")
        if not self.prompt_ids:
            raise SystemExit("train_gad.py: no usable training examples left (see the [data] lines above)")
        if cfg.batch_prompts > len(self.prompt_ids):
            raise SystemExit(f"train_gad.py: --batch-prompts {cfg.batch_prompts} is larger than the "
                             f"{len(self.prompt_ids)} usable training examples")
        self.seed, self.batch = cfg.seed, cfg.batch_prompts
        self.restart()

    def restart(self):
        """A fresh data order for the next phase (the same for GAD and SeqKD)."""
        self.rng, self.order = random.Random(self.seed), []

    def next(self):
        """Indices of the next batch_prompts prompts (a new shuffled epoch when one runs out)."""
        while len(self.order) < self.batch:
            epoch = list(range(len(self.prompt_ids)))
            self.rng.shuffle(epoch)
            self.order += epoch
        idx, self.order = self.order[:self.batch], self.order[self.batch:]
        return idx


def teacher_batch(data, idx, pad_id, eos=True):
    """[prompt ; teacher response + EOS] rows; eos=False drops the EOS (only for --break-eos-symmetry)."""
    return G.pack([data.prompt_ids[i] for i in idx], [data.teacher_ids[i][:None if eos else -1] for i in idx], pad_id)


def student_batch(data, idx, samples, n, pad_id):
    return G.pack([data.prompt_ids[i] for i in idx for _ in range(n)], samples, pad_id)


# ---------------------------------------------------------------------------- one update of each player
def optimizer_step(loss, model, opt, cfg, name):
    """Backward, clip, step -- unless the loss or the gradient is not finite: then the step is skipped."""
    opt.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    if not (torch.isfinite(loss) and torch.isfinite(norm)):
        opt.zero_grad()
        return {f"{name}_grad_norm": None, f"{name}_skipped": 1}
    opt.step()
    return {f"{name}_grad_norm": norm.item()}


def d_step(disc, opt, t_batch, s_batch, cfg, device, update=True):
    """One discriminator update. Returns D's scores of the student samples *before* the update."""
    with torch.set_grad_enabled(update):
        t_scores, s_scores = disc(G.to(t_batch, device)), disc(G.to(s_batch, device))  # [B], [B*n]
    loss_fn = D.bt_loss if cfg.d_loss == "bt" else D.bce_loss
    loss, metrics = loss_fn(t_scores, s_scores, cfg.n_samples)
    if update:  # not in the ablations that keep D fixed (--frozen-d, --no-d-warmup in stage 1)
        metrics.update(optimizer_step(loss, disc, opt, cfg, "d"))
    return s_scores.detach(), metrics


def sft_step(gen, opt, batch, cfg, device):
    loss, metrics = G.sft_loss(gen, G.to(batch, device))
    metrics.update(optimizer_step(loss, gen, opt, cfg, "g"))
    return metrics


def g_step(gen, ref, opt, s_batch, advantages, cfg, device):
    """One GRPO generator update on the student's own samples."""
    s_batch = G.to(s_batch, device)
    mask = s_batch["response_mask"]
    logp, entropy = G.token_logprobs(gen, s_batch, cfg.temperature, with_entropy=True)   # [B*n, L]
    with torch.no_grad():
        ref_logp = G.token_logprobs(ref, s_batch, cfg.temperature)                       # [B*n, L]
    loss, metrics = G.policy_loss(logp, logp.detach(), ref_logp, advantages, mask, cfg.clip_eps, cfg.kl_coef)
    metrics.update(optimizer_step(loss, gen, opt, cfg, "g"))
    metrics["entropy"] = G.masked_mean(entropy, mask).item()
    return metrics


def amp(device):
    """bf16 autocast on GPU (weights and optimiser stay fp32); plain fp32 on CPU."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()


def adamw(model, lr, cfg):
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


# ---------------------------------------------------------------------------- the loops
def train_gad(gen, disc, tok, data, cfg, device, logger, resume=None):
    """Stage 1 (warmup) then stage 2 (GAD). Saves warmup/ and gad/ checkpoints (and resume points)."""
    g_opt, d_opt = adamw(gen, cfg.lr_warmup, cfg), adamw(disc, cfg.lr_d, cfg)
    ref, start = None, 0
    if resume:  # continue a killed run exactly where its last resume point was written
        start = resume["next_step"]
        g_state, d_state = C.restore_state(resume, data)
        if start > cfg.warmup_steps:  # past the hand-off: rebuild the KL reference, GAD's G optimiser
            ref = load_generator(os.path.join(cfg.out_dir, "warmup", "generator"), cfg, device)
            ref = ref.eval().requires_grad_(False)
            g_opt = adamw(gen, cfg.lr_gad, cfg)
        g_opt.load_state_dict(g_state)
        d_opt.load_state_dict(d_state)
    total = cfg.warmup_steps + cfg.gad_steps
    guard = BadStepGuard(cfg)
    for step in tqdm(range(start, total), desc="warmup+GAD", initial=start, total=total, disable=None):
        stage = "warmup" if step < cfg.warmup_steps else "gad"
        if step == cfg.warmup_steps:  # hand-off: KL reference = the post-warmup student; new G optimiser
            C.save_model(gen, os.path.join(cfg.out_dir, "warmup", "generator"), tok)
            C.save_model(disc, os.path.join(cfg.out_dir, "warmup", "discriminator"), tok)
            ref = copy.deepcopy(gen).eval().requires_grad_(False)
            g_opt = adamw(gen, cfg.lr_gad, cfg)  # D keeps its optimiser state across the hand-off
        t0 = time.time()
        idx = data.next()
        with amp(device):
            m, samples = gad_or_warmup_step(gen, disc, ref, g_opt, d_opt, tok, data, idx, stage, step, cfg, device)
        if cfg.eval_every and step % cfg.eval_every == 0:
            m["judge_fidelity"] = judge_fidelity(gen, tok, cfg)
        logger.step(stage, step, m, time.time() - t0, data, idx, samples, tok)
        guard.check(m, stage, step)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            C.save_resume(cfg.out_dir, "gad", step + 1, tok, data, gen, g_opt, disc, d_opt)
    C.save_model(gen, os.path.join(cfg.out_dir, "gad", "generator"), tok)
    C.save_model(disc, os.path.join(cfg.out_dir, "gad", "discriminator"), tok)


def gad_or_warmup_step(gen, disc, ref, g_opt, d_opt, tok, data, idx, stage, step, cfg, device):
    """One step of stage 1 (warmup) or stage 2 (GAD), in the paper's order. Returns (metrics, samples)."""
    t_batch = teacher_batch(data, idx, tok.pad_token_id)
    train_d = not cfg.frozen_d and not (stage == "warmup" and cfg.no_d_warmup)
    if stage == "warmup" and not train_d:  # --no-d-warmup: stage 1 is SFT alone, nothing to sample or score
        return (sft_step(gen, g_opt, t_batch, cfg, device) if step >= cfg.d_only_steps else {}), None
    # 1. sample n responses per prompt from the current G
    samples = G.sample(gen, tok, [data.prompt_ids[i] for i in idx], cfg.n_samples, cfg.temperature,
                       cfg.max_response_len, cfg.gen_batch_size)
    s_batch = student_batch(data, idx, samples, cfg.n_samples, tok.pad_token_id)
    # 2.+3. D scores the samples with its pre-update weights (= rewards), then takes one BT step
    d_teacher = teacher_batch(data, idx, tok.pad_token_id, eos=False) if cfg.break_eos_symmetry else t_batch
    rewards, m = d_step(disc, d_opt, d_teacher, s_batch, cfg, device, update=train_d)  # [B*n]
    if stage == "warmup":
        if step >= cfg.d_only_steps:
            m.update(sft_step(gen, g_opt, t_batch, cfg, device))
    else:
        # 4. group-normalised advantages -> one GRPO step of G
        advantages = G.group_advantages(rewards, cfg.n_samples)                    # [B*n]
        m.update(g_step(gen, ref, g_opt, s_batch, advantages, cfg, device))
        m.update(reward_mean=rewards.mean().item(), reward_std=rewards.std().item(),
                 reward_group_std=G.group_std(rewards.view(-1, cfg.n_samples)).mean().item())
    m.update(G.sample_metrics(samples, tok.eos_token_id))
    return m, samples


def judge_fidelity(gen, tok, cfg):
    """Privileged-judge fidelity of G on the test prompts, 1 sample each; the RNG is left untouched."""
    import eval as E
    state = torch.get_rng_state()
    prompts = world.prompts("test")
    texts, _ = E.student_responses(gen, tok, prompts, 1, cfg.eval_temperature, cfg.max_response_len)
    torch.set_rng_state(state)
    return E.judge_responses(prompts, texts, 1)["fidelity"]


def train_seqkd(gen, tok, data, cfg, device, logger, resume=None):
    """The baseline: SFT on teacher responses only, from the same starting student."""
    opt, start = adamw(gen, cfg.lr_seqkd, cfg), 0
    if resume:
        start = resume["next_step"]
        opt.load_state_dict(C.restore_state(resume, data)[0])
    guard = BadStepGuard(cfg)
    for step in tqdm(range(start, cfg.seqkd_steps), desc="SeqKD", initial=start, total=cfg.seqkd_steps, disable=None):
        t0 = time.time()
        idx = data.next()
        with amp(device):
            m = sft_step(gen, opt, teacher_batch(data, idx, tok.pad_token_id), cfg, device)
        logger.step("seqkd", step, m, time.time() - t0, data, idx, None, tok)
        guard.check(m, "seqkd", step)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.seqkd_steps:
            C.save_resume(cfg.out_dir, "seqkd", step + 1, tok, data, gen, opt)
    C.save_model(gen, os.path.join(cfg.out_dir, "seqkd", "generator"), tok)


class BadStepGuard:
    """Counts consecutive skipped (non-finite) steps; stops the run when there are too many."""

    def __init__(self, cfg):
        self.cfg, self.bad = cfg, 0

    def check(self, metrics, stage, step):
        if not any(k.endswith("_skipped") for k in metrics):
            self.bad = 0
            return
        self.bad += 1
        tqdm.write(f"[{stage} {step}] non-finite loss or gradient: update skipped ({self.bad} in a row)")
        if self.bad >= self.cfg.max_bad_steps:
            last = C.latest(self.cfg.out_dir)
            raise SystemExit(f"train_gad.py: stopped at {stage} step {step} after {self.bad} consecutive non-finite "
                             f"steps; last good resume point: {last['dir'] if last else 'none'}")


# ---------------------------------------------------------------------------- saving and logging
class Logger:
    """metrics.jsonl (one JSON object per step) + a concise line every log_every steps."""

    def __init__(self, cfg):
        self.path, self.cfg = os.path.join(cfg.out_dir, "metrics.jsonl"), cfg

    def step(self, stage, step, metrics, seconds, data, idx, samples, tok):
        rec = {"stage": stage, "step": step, **{k: C.finite_or_none(v) for k, v in metrics.items()},
               "seconds": round(seconds, 4)}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if step % self.cfg.log_every == 0:
            keys = ["d_loss", "d_acc", "d_gap", "sft_loss", "reward_mean", "reward_group_std", "kl",
                    "entropy", "response_length"]
            tqdm.write(f"[{stage} {step:4d}] " + " ".join(f"{k} {rec[k]:.3f}" for k in keys if rec.get(k) is not None))
        if samples is not None and step % self.cfg.sample_every == 0:
            tqdm.write(f"  prompt : {data.prompts[idx[0]][-1]['content']}\n"
                       f"  student: {tok.decode(samples[0], skip_special_tokens=True)}\n"
                       f"  teacher: {data.teacher_texts[idx[0]]}")


# ---------------------------------------------------------------------------- main
def model_kwargs(cfg):
    # fp32 master weights everywhere (bf16 weights would round away 1e-6-sized updates); bf16 autocast on GPU
    return dict(dtype=torch.float32, trust_remote_code=cfg.trust_remote_code)


def load_generator(path, cfg, device):
    """G (or the KL reference): a causal LM from a checkpoint folder or hub name."""
    gen = AutoModelForCausalLM.from_pretrained(path, **model_kwargs(cfg)).to(device)
    if cfg.gradient_checkpointing:  # transformers 5 renamed it; older: the 2nd name
        getattr(gen, "activation_checkpointing_enable", gen.gradient_checkpointing_enable)()
    return gen


def load_discriminator(path, cfg, device):
    """D: the backbone alone (no LM head is loaded) + a fresh scalar head, unless one is saved there."""
    disc = D.Discriminator.from_pretrained(path, **model_kwargs(cfg)).to(device)
    if cfg.gradient_checkpointing:
        getattr(disc.backbone, "activation_checkpointing_enable", disc.backbone.gradient_checkpointing_enable)()
    return disc


def main(argv=None):
    import data as DATA
    cfg = parse_args(argv)
    os.makedirs(cfg.out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log = tqdm.write
    t_start = time.time()
    config_path = os.path.join(cfg.out_dir, "config.json")
    config = {**vars(cfg), "teacher_base_url": T.redact_url(cfg.teacher_base_url)}  # never a password
    if cfg.resume and os.path.exists(config_path):  # a resumed run must be the same run
        old = json.load(open(config_path))
        changed = [k for k, v in config.items() if k != "resume" and k in old and old[k] != v]
        if changed:
            raise SystemExit(f"train_gad.py: --resume with different flags than the run in {cfg.out_dir}: "
                             + ", ".join(f"--{k.replace('_', '-')} {old[k]!r} -> {config[k]!r}" for k in changed))
    try:  # cheap checks first (data files, then the student), before paying for any teacher call
        records = T.read_data_files(cfg)
    except DATA.DataError as e:
        raise SystemExit(f"train_gad.py: {e}")
    if records and DATA.duplicate_prompts(records):
        log(f"[data] {DATA.duplicate_prompts(records)} of {len(records)} prompts are duplicates of an earlier row "
            "(kept: each row is a training example)")
    if records and cfg.batch_prompts > len(records):
        raise SystemExit(f"train_gad.py: --batch-prompts {cfg.batch_prompts} is larger than the {len(records)} rows "
                         f"of {cfg.prompts or cfg.teacher_data}")
    student_path = world.starting_student(cfg, log)
    try:
        tok = G.load_tokenizer(student_path, cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise SystemExit(f"train_gad.py: --student {cfg.student}: {str(e).splitlines()[0]}")
    try:
        prompts, teacher_texts = T.training_pairs(cfg, records, log)
    except T.TeacherError as e:
        raise SystemExit(f"train_gad.py: {e}")
    data = Data(tok, prompts, teacher_texts, cfg, log)
    C.write_json(config_path, config)  # only now: a command that fails its checks leaves an earlier run intact
    logger = Logger(cfg)
    phases = {"all": ["gad", "seqkd"], "gad": ["gad"], "seqkd": ["seqkd"]}[cfg.mode]
    stages = {"gad": {"warmup", "gad"}, "seqkd": {"seqkd"}}
    resume = C.latest(cfg.out_dir) if cfg.resume else None
    if resume and resume["phase"] not in phases + ["done"]:
        raise SystemExit(f"train_gad.py: --resume: the resume point is for phase {resume['phase']!r}, "
                         f"which --mode {cfg.mode} does not run")
    if resume:
        log(f"[resume] continuing at {resume['phase']} step {resume['next_step']}")
        done = phases.index(resume["phase"]) if resume["phase"] in phases else len(phases)
        phases = phases[done:]
        C.reset_metrics(cfg.out_dir, set().union(*[stages[p] for p in phases]) if phases else set(), resume["next_step"])
    else:
        if cfg.resume:
            log(f"[resume] no resume point in {cfg.out_dir}: starting from the beginning")
        shutil.rmtree(os.path.join(cfg.out_dir, "resume"), ignore_errors=True)
        C.reset_metrics(cfg.out_dir, set().union(*[stages[p] for p in phases]))

    for i, phase in enumerate(phases):
        r = resume if resume and resume["phase"] == phase and resume["dir"] else None
        torch.manual_seed(cfg.seed)
        data.restart()
        if phase == "gad":
            start = r["dir"] if r else (cfg.init_from or None)
            gen = load_generator(os.path.join(start, "generator") if start else student_path, cfg, device)
            d_path = cfg.frozen_d or (os.path.join(start, "discriminator") if start else student_path)
            disc = load_discriminator(d_path, cfg, device)
            train_gad(gen, disc, tok, data, cfg, device, logger, resume=r)
        else:
            gen = load_generator(os.path.join(r["dir"], "generator") if r else student_path, cfg, device)
            train_seqkd(gen, tok, data, cfg, device, logger, resume=r)
        C.mark_phase_start(cfg.out_dir, phases[i + 1] if i + 1 < len(phases) else "done")

    if cfg.student == "embedded" and cfg.teacher == "embedded" and not (cfg.prompts or cfg.teacher_data):
        import eval as E
        E.evaluate(cfg.out_dir, cfg.eval_samples, cfg.eval_temperature, cfg.max_response_len, cfg.seed, log=log,
                   models=[m for m in cfg.eval_models.split(",") if m])
    else:
        log(f"[eval] judge this run with: python eval.py {cfg.out_dir} --test-data TEST.jsonl --judge openai:MODEL")
    log(f"[done] {time.time() - t_start:.0f} s; everything is in {cfg.out_dir}")


if __name__ == "__main__":
    main()
