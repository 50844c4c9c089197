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
  - the defaults are sized for a 2-core CPU and a ~0.2M-parameter student; the paper's learning rates
    (1e-6) and grad clip (0.2) are for 3-14B models and are overridable flags here
  - SeqKD trains for a fixed number of steps (the paper keeps the best of 3 epochs)
"""
import argparse
import copy
import json
import os
import random
import shutil
import time

import torch
from tqdm import tqdm

import discriminator as D
import generator as G
import teacher as T
import world

# ---------------------------------------------------------------------------- every default, one block
CONFIG = {  # name: (default, meaning)
    "out_dir": ("runs/default", "everything of the run goes here"),
    "mode": ("all", "all = GAD + SeqKD + eval; gad = GAD + eval; seqkd = SeqKD baseline + eval"),
    "seed": (0, "seed for data order, sampling, initialisation and the teacher's randomness"),
    "student": ("embedded", "'embedded' = pretrain the embedded world's student here; else a local HF folder"),
    "pretrain_steps": (800, "embedded student: pretraining steps on the broad corpus (batch 64)"),
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
    "eval_samples": (4, "samples per held-out prompt at evaluation"),
    "eval_temperature": (0.8, "sampling temperature at evaluation (0 = greedy)"),
    "log_every": (22, "print a log line every this many steps"),
    "sample_every": (88, "print one (prompt / student / teacher) triple every this many steps"),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (default, meaning) in CONFIG.items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                        help=f"{meaning} (default: {default})")
    cfg = ap.parse_args(argv)
    if cfg.seqkd_steps < 0:
        cfg.seqkd_steps = cfg.warmup_steps + cfg.gad_steps
    if cfg.mode not in ("all", "gad", "seqkd"):
        ap.error(f"--mode must be all, gad or seqkd, got {cfg.mode!r}")
    if cfg.d_loss not in ("bt", "bce"):
        ap.error(f"--d-loss must be bt or bce, got {cfg.d_loss!r}")
    if cfg.n_samples < 2:
        ap.error(f"--n-samples must be >= 2 for group-normalised advantages, got {cfg.n_samples}")
    for lr in ("lr_warmup", "lr_gad", "lr_d", "lr_seqkd"):
        if getattr(cfg, lr) < 0:
            ap.error(f"--{lr.replace('_', '-')} must be >= 0, got {getattr(cfg, lr)}")
    return cfg


# ---------------------------------------------------------------------------- data
class Data:
    """Training prompts as token ids, each with its one teacher response (+ EOS), in shuffled epochs."""

    def __init__(self, tokenizer, prompts, teacher_texts, cfg, log):
        self.prompts, self.prompt_ids, self.teacher_ids, self.teacher_texts = [], [], [], []
        skipped = 0
        for messages, text in zip(prompts, teacher_texts):
            r = G.response_ids(tokenizer, text)
            if len(r) > cfg.max_response_len:  # would lose its EOS: skip, keeping the EOS symmetry
                skipped += 1
                continue
            self.prompts.append(messages)
            self.prompt_ids.append(G.prompt_ids(tokenizer, messages))
            self.teacher_ids.append(r)
            self.teacher_texts.append(text)
        if skipped:
            log(f"[data] skipped {skipped} teacher responses longer than max_response_len={cfg.max_response_len}")
        self.rng, self.order, self.batch = random.Random(cfg.seed), [], cfg.batch_prompts

    def next(self):
        """Indices of the next batch_prompts prompts (a new shuffled epoch when one runs out)."""
        while len(self.order) < self.batch:
            epoch = list(range(len(self.prompt_ids)))
            self.rng.shuffle(epoch)
            self.order += epoch
        idx, self.order = self.order[:self.batch], self.order[self.batch:]
        return idx


def teacher_batch(data, idx, pad_id):
    return G.pack([data.prompt_ids[i] for i in idx], [data.teacher_ids[i] for i in idx], pad_id)


def student_batch(data, idx, samples, n, pad_id):
    return G.pack([data.prompt_ids[i] for i in idx for _ in range(n)], samples, pad_id)


# ---------------------------------------------------------------------------- one update of each player
def d_step(disc, opt, t_batch, s_batch, cfg, device):
    """One discriminator update. Returns D's scores of the student samples *before* the update."""
    t_scores, s_scores = disc(G.to(t_batch, device)), disc(G.to(s_batch, device))      # [B], [B*n]
    loss_fn = D.bt_loss if cfg.d_loss == "bt" else D.bce_loss
    loss, metrics = loss_fn(t_scores, s_scores, cfg.n_samples)
    opt.zero_grad()
    loss.backward()
    metrics["d_grad_norm"] = torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg.grad_clip).item()
    opt.step()
    return s_scores.detach(), metrics


def sft_step(gen, opt, batch, cfg, device):
    loss, metrics = G.sft_loss(gen, G.to(batch, device))
    opt.zero_grad()
    loss.backward()
    metrics["g_grad_norm"] = torch.nn.utils.clip_grad_norm_(gen.parameters(), cfg.grad_clip).item()
    opt.step()
    return metrics


def g_step(gen, ref, opt, s_batch, advantages, cfg, device):
    """One GRPO generator update on the student's own samples."""
    s_batch = G.to(s_batch, device)
    mask = s_batch["response_mask"]
    logp, entropy = G.token_logprobs(gen, s_batch, cfg.temperature, with_entropy=True)   # [B*n, L]
    with torch.no_grad():
        ref_logp = G.token_logprobs(ref, s_batch, cfg.temperature)                       # [B*n, L]
    loss, metrics = G.policy_loss(logp, logp.detach(), ref_logp, advantages, mask, cfg.clip_eps, cfg.kl_coef)
    opt.zero_grad()
    loss.backward()
    metrics["g_grad_norm"] = torch.nn.utils.clip_grad_norm_(gen.parameters(), cfg.grad_clip).item()
    opt.step()
    metrics["entropy"] = G.masked_mean(entropy, mask).item()
    return metrics


def adamw(model, lr, cfg):
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


# ---------------------------------------------------------------------------- the loops
def train_gad(gen, disc, tok, data, cfg, device, logger):
    """Stage 1 (warmup) then stage 2 (GAD). Saves warmup/ and gad/ checkpoints."""
    g_opt, d_opt = adamw(gen, cfg.lr_warmup, cfg), adamw(disc, cfg.lr_d, cfg)
    ref = None
    total = cfg.warmup_steps + cfg.gad_steps
    for step in tqdm(range(total), desc="warmup+GAD", disable=None):
        stage = "warmup" if step < cfg.warmup_steps else "gad"
        if step == cfg.warmup_steps:  # hand-off: KL reference = the post-warmup student; new G optimiser
            save(gen, os.path.join(cfg.out_dir, "warmup", "generator"), tok)
            save(disc, os.path.join(cfg.out_dir, "warmup", "discriminator"), tok)
            ref = copy.deepcopy(gen).eval().requires_grad_(False)
            g_opt = adamw(gen, cfg.lr_gad, cfg)  # D keeps its optimiser state across the hand-off
        t0 = time.time()
        idx = data.next()
        # 1. sample n responses per prompt from the current G
        samples = G.sample(gen, tok, [data.prompt_ids[i] for i in idx], cfg.n_samples, cfg.temperature,
                           cfg.max_response_len)
        t_batch = teacher_batch(data, idx, tok.pad_token_id)
        s_batch = student_batch(data, idx, samples, cfg.n_samples, tok.pad_token_id)
        # 2.+3. D scores the samples with its pre-update weights (= rewards), then takes one BT step
        rewards, m = d_step(disc, d_opt, t_batch, s_batch, cfg, device)                # [B*n]
        if stage == "warmup":
            if step >= cfg.d_only_steps:
                m.update(sft_step(gen, g_opt, t_batch, cfg, device))
        else:
            # 4. group-normalised advantages -> one GRPO step of G
            advantages = G.group_advantages(rewards, cfg.n_samples)                    # [B*n]
            m.update(g_step(gen, ref, g_opt, s_batch, advantages, cfg, device))
            m.update(reward_mean=rewards.mean().item(), reward_std=rewards.std().item(),
                     reward_group_std=rewards.view(-1, cfg.n_samples).std(-1).mean().item())
        m.update(sample_metrics(samples, tok.eos_token_id))
        logger.step(stage, step, m, time.time() - t0, data, idx, samples, tok)
    save(gen, os.path.join(cfg.out_dir, "gad", "generator"), tok)
    save(disc, os.path.join(cfg.out_dir, "gad", "discriminator"), tok)


def train_seqkd(gen, tok, data, cfg, device, logger):
    """The baseline: SFT on teacher responses only, from the same starting student."""
    opt = adamw(gen, cfg.lr_seqkd, cfg)
    for step in tqdm(range(cfg.seqkd_steps), desc="SeqKD", disable=None):
        t0 = time.time()
        idx = data.next()
        m = sft_step(gen, opt, teacher_batch(data, idx, tok.pad_token_id), cfg, device)
        logger.step("seqkd", step, m, time.time() - t0, data, idx, None, tok)
    save(gen, os.path.join(cfg.out_dir, "seqkd", "generator"), tok)


def sample_metrics(samples, eos_id):
    lengths = [len(s) for s in samples]
    return {"response_length": sum(lengths) / len(lengths),
            "truncated": sum(not G.finished(s, eos_id) for s in samples) / len(samples)}


# ---------------------------------------------------------------------------- saving and logging
def save(model, path, tok):
    """save_pretrained into a temp folder, then rename: a crash never leaves a half-written checkpoint."""
    tmp, old = path + ".tmp", path + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


class Logger:
    """metrics.jsonl (one JSON object per step) + a concise line every log_every steps."""

    def __init__(self, cfg):
        self.path, self.cfg = os.path.join(cfg.out_dir, "metrics.jsonl"), cfg

    def step(self, stage, step, metrics, seconds, data, idx, samples, tok):
        rec = {"stage": stage, "step": step, **metrics, "seconds": round(seconds, 4)}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if step % self.cfg.log_every == 0:
            keys = ["d_loss", "d_acc", "d_gap", "sft_loss", "reward_mean", "reward_group_std", "kl",
                    "entropy", "response_length"]
            tqdm.write(f"[{stage} {step:4d}] " + " ".join(f"{k} {rec[k]:.3f}" for k in keys if k in rec))
        if samples is not None and step % self.cfg.sample_every == 0:
            tqdm.write(f"  prompt : {data.prompts[idx[0]][-1]['content']}\n"
                       f"  student: {tok.decode(samples[0], skip_special_tokens=True)}\n"
                       f"  teacher: {data.teacher_texts[idx[0]]}")


def reset_metrics(cfg, stages):
    """Drop the records of the stages this invocation will write again (temp file, then rename)."""
    path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if json.loads(line).get("stage") not in stages]
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------------------- main
def start_student(cfg, log):
    """The starting student's folder (model + tokenizer): embedded world pretrained here, or a given path."""
    if cfg.student != "embedded":
        if not os.path.isdir(cfg.student):
            raise SystemExit(f"train_gad.py: --student: model folder not found: {cfg.student}")
        return cfg.student
    path = os.path.join(cfg.out_dir, "before", "generator")
    spec = {"seed": cfg.seed, "pretrain_steps": cfg.pretrain_steps, "world": "embedded:world-v1"}
    marker = os.path.join(path, "world.json")
    if os.path.exists(marker) and json.load(open(marker)) == spec:
        log(f"[world] reusing the pretrained starting student in {path}")
        return path
    log(f"[world] pretraining the starting student ({cfg.pretrain_steps} steps)")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    world.build_student(tmp, seed=cfg.seed, steps=cfg.pretrain_steps, log=log)
    json.dump(spec, open(os.path.join(tmp, "world.json"), "w"))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def main(argv=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cfg = parse_args(argv)
    os.makedirs(cfg.out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log = tqdm.write
    t_start = time.time()
    with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
        json.dump(vars(cfg), f, indent=2)
    student_path = start_student(cfg, log)
    tok = AutoTokenizer.from_pretrained(student_path)

    # Stage 0: teacher responses for the training prompts (from the cache when already collected)
    prompts = world.prompts("train")
    teacher = T.EmbeddedTeacher(seed=cfg.seed)
    cache = T.TeacherCache(os.path.join(cfg.out_dir, "teacher_cache.jsonl"))
    responses, calls = T.collect(teacher, prompts, cache, n=1)
    log(f"[teacher] {len(prompts)} prompts, {calls} teacher calls, {len(prompts) - calls} from cache")
    logger = Logger(cfg)
    reset_metrics(cfg, {"all": {"warmup", "gad", "seqkd"}, "gad": {"warmup", "gad"}, "seqkd": {"seqkd"}}[cfg.mode])

    if cfg.mode in ("all", "gad"):
        torch.manual_seed(cfg.seed)
        data = Data(tok, prompts, [r[0] for r in responses], cfg, log)
        gen = AutoModelForCausalLM.from_pretrained(student_path).to(device)
        disc = D.Discriminator.from_pretrained(student_path).to(device)
        train_gad(gen, disc, tok, data, cfg, device, logger)
    if cfg.mode in ("all", "seqkd"):
        torch.manual_seed(cfg.seed)
        data = Data(tok, prompts, [r[0] for r in responses], cfg, log)
        gen = AutoModelForCausalLM.from_pretrained(student_path).to(device)
        train_seqkd(gen, tok, data, cfg, device, logger)

    import eval as E
    E.evaluate(cfg.out_dir, cfg.eval_samples, cfg.eval_temperature, cfg.max_response_len, cfg.seed, log=log)
    log(f"[done] {time.time() - t_start:.0f} s; results in {os.path.join(cfg.out_dir, 'eval.json')}")


if __name__ == "__main__":
    main()
