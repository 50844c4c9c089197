"""Generative Adversarial Distillation (GAD, arXiv 2511.10643) in one readable loop.
`python train_gad.py` runs it all on the embedded world; `--help` lists every option and the paper's values.

Stage 0  read the data files; collect the teacher's answers (cached on disk, never paid for twice)
Stage 1  warmup (`warmup_step`): D learns to rank teacher above student (Bradley-Terry) on G's samples;
         G learns by SFT on the teacher's answers (after the first d_only_steps, where D learns alone)
Stage 2  GAD (`gad_step`), per step, in the paper's order (Algorithm 1):
           1. sample n responses per prompt from G
           2. rewards = D's scores of the samples, with D's weights before this step's update (Eq. 2)
           3. group-normalised advantages (Eq. 6)
           4. one D update on the Bradley-Terry loss (Eq. 3)
           5. one G update on the GRPO loss with a k3 KL to the post-warmup G
SeqKD    the baseline: SFT on the same teacher data, same start, same number of G steps and prompts.

Simplified (README "Simplifications"): defaults sized for a 2-core CPU and a 0.8M student; SeqKD keeps its last
checkpoint. Flags, resume and logs: run.py; `torchrun --nproc-per-node N train_gad.py`, FSDP2: parallel.py.
"""
import math
import os
import time

import torch
from tqdm import tqdm

import checkpoint
import parallel
import run
import world
from data import (Data, DataError, fixed_subset, micro_batches, read_training_file, rows, student_batch,
                  within_prompt_len)
from discriminator import bce_loss, bt_loss
from generator import (group_advantages, masked_mean, policy_loss, response_tokens, reward_metrics, sample,
                       sample_metrics, sft_loss, to, token_logprobs)
from teacher import TeacherCache, TeacherError, collect, default_cache_path, make_teacher, trainable
from teacher_batch import collect_batch

# ---------------------------------------------------------------------------- the paper's hyper-parameters
PAPER = {  # name: (default here, meaning (paper: its value))
    "batch_prompts": (16, "prompts per step; 88 steps = 1 epoch of the 1408 train prompts (paper: 256)"),
    "n_samples": (8, "student samples per prompt, the GRPO group size n (paper: 8)"),
    "temperature": (0.8, "sampling temperature; training log-probs use logits / temperature (paper: 0.8)"),
    "max_response_len": (40, "response length limit in tokens; a longer teacher response is skipped (paper: 1536)"),
    "max_prompt_len": (1024, "a prompt longer than this many tokens is skipped, counted in the log (paper: 2048)"),
    "warmup_steps": (88, "stage 1 steps (paper: 1 epoch)"),
    "d_only_steps": (10, "first warmup steps train D alone (paper: 10)"),
    "gad_steps": (176, "stage 2 steps (paper: 2 epochs)"),
    "seqkd_steps": (-1, "SeqKD steps; -1 = warmup_steps + gad_steps, the same G steps (paper: 3 epochs)"),
    "lr_warmup": (5e-4, "G learning rate in warmup SFT (paper: 1e-6 for 3-14B models)"),
    "lr_gad": (3e-5, "G learning rate in GAD; 1e-4 diverged here, README (paper: 1e-6)"),
    "lr_d": (1e-3, "D learning rate, warmup and GAD (paper: 1e-6)"),
    "lr_seqkd": (5e-4, "G learning rate for the SeqKD baseline (paper: 5e-6)"),
    "kl_coef": (0.001, "weight of the k3 KL-to-reference loss term (paper: 0.001)"),
    "clip_eps": (0.2, "PPO clip range; inactive with one step per batch, ratio = 1 (paper: 0.2)"),
    "grad_clip": (1.0, "max grad norm for G and D (paper: 0.2)"),
    "weight_decay": (0.01, "AdamW weight decay (paper: 0.01)"),
    "d_loss": ("bt", "bt = Bradley-Terry, Eq. 3; bce = the weaker baseline of Table 4 (paper: bt)"),
    "d_steps": (1, "D updates per GAD step, each on the step's samples scored anew (paper: 1)"),
    "teacher_temperature": (1.0, "teacher sampling temperature (paper: the API's default)"),
    "teacher_max_tokens": (1024, "teacher response limit in tokens; a cut-off answer is not trained on (paper: 1024)"),
}
# ---------------------------------------------------------------------------- the run: models, I/O, labs
RUN = {
    "out_dir": ("runs/default", "everything of the run goes here"),
    "mode": ("all", "all = GAD + SeqKD + eval; gad = GAD + eval; seqkd = SeqKD baseline + eval"),
    "seed": (0, "seed for data order, sampling, D's new head and the teacher (not the start: --pretrain-seed)"),
    "student": ("embedded", "'embedded' = the embedded world's student; else any HF causal LM (hub name or folder)"),
    "pretrain_steps": (800, "embedded student: pretraining steps on the broad corpus (batch 64)"),
    "pretrain_seed": (0, "embedded student: its pretraining seed (the same start for every --seed, as in the paper)"),
    "student_hidden": (128, "embedded student: hidden size (its own pretrained start when not 128)"),
    "student_layers": (3, "embedded student: decoder layers (its own pretrained start when not 3)"),
    "world": ("default", "embedded world variant: default | long (a 31-token teacher mode, constraints across it)"),
    "train_prompts": (0, "train on this many prompts, a fixed subset the same for every seed (0 = all)"),
    "teacher": ("embedded", "embedded | openai:MODEL (any OpenAI-compatible endpoint) | hf:PATH (a local model)"),
    "teacher_base_url": ("", "OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else OpenAI's); key from the env"),
    "teacher_cache": ("", "answer cache file; default: <parent of --out-dir>/.teacher_cache/, shared by those runs"),
    "teacher_system_prompt": ("", "a system prompt only the teacher sees (context distillation)"),
    "teacher_concurrency": (8, "teacher requests in flight at once"),
    "teacher_timeout": (120.0, "seconds before a teacher request is abandoned and retried"),
    "teacher_batch": (False, "openai: teachers: collect missing answers through the Batch API (~half price, hours)"),
    "teacher_batch_poll": (30.0, "seconds between two looks at a submitted batch (--teacher-batch)"),
    "prompts": ("", "JSONL/parquet of prompts (content = chat messages, or prompt = string) for --teacher"),
    "teacher_data": ("", "JSONL/parquet of answers already collected (+ teacher_response, the paper's format)"),
    "gen_batch_size": (64, "sequences sampled at once (chunks keep generation memory flat)"),
    "micro_batch_size": (0, "rows per forward/backward in every update (0 = all at once); the gradient is exact"),
    "gradient_checkpointing": (False, "trade compute for memory in G and D (flag)"),
    "trust_remote_code": (False, "allow model code from the checkpoint to run (flag; off unless you ask)"),
    "init_from": ("", "start stage 2 from a warmup folder of an earlier run (runs/x/warmup): skip stage 1"),
    "save_every": (50, "write a resume point every this many steps (0 = never); see --resume"),
    "resume": (False, "continue from the newest resume point in --out-dir (same flags as the killed run)"),
    "max_bad_steps": (3, "stop after this many consecutive steps with a non-finite loss or gradient"),
    "eval_every": (0, "embedded world: log judge_fidelity of G every N steps (evaluation only, never trained on)"),
    "eval_samples": (4, "samples per held-out prompt at evaluation"),
    "eval_models": ("before,warmup,seqkd,gad", "embedded world: the checkpoints judged at the end ('' = none)"),
    "eval_temperature": (0.8, "sampling temperature at evaluation (0 = greedy)"),
    "log_every": (22, "print a log line every this many steps"),
    "report_to": ("none", "also send every metrics.jsonl record to: none | tensorboard | wandb (optional extras)"),
    "sample_every": (88, "print one (prompt / student / teacher) triple every this many steps"),
    "no_d_warmup": (False, "ablation (paper Table 3): D is not trained in stage 1 (flag)"),
    "frozen_d": ("", "ablation (paper Fig. 6): a trained discriminator folder used as a fixed reward model"),
    "break_eos_symmetry": (False, "lab (exercises/lab1_eos.md): D sees teacher responses without their EOS (flag)"),
}
CONFIG = {**PAPER, **RUN}
DEVICE = run.DEVICE


def parse_args(argv=None):  # the flags of CONFIG, each checked (run.py)
    return run.parse_args(CONFIG, argv, __doc__)


# ---------------------------------------------------------------------------- stage 0: data and teacher answers
def teacher_pairs(cfg, records, tok, log):
    """(prompts, teacher texts): from --teacher-data, or by asking the teacher (cached). Prompts over
    --max-prompt-len are left out before anything is asked; empty, refused and cut-off answers after, each with
    a count in the log."""
    if cfg.teacher_data:
        records = fixed_subset(records, cfg.train_prompts, log)
        log(f"[teacher] {len(records)} pre-collected responses from {cfg.teacher_data}; no teacher calls")
        return [r["messages"] for r in records], [r["teacher_response"] for r in records]
    prompts = [r["messages"] for r in records] if records else world.prompts("train")
    prompts = within_prompt_len(fixed_subset(prompts, cfg.train_prompts, log), tok, cfg.max_prompt_len, log)
    try:
        teacher = make_teacher(cfg.teacher, seed=cfg.seed, base_url=cfg.teacher_base_url or None,
                               system_prompt=cfg.teacher_system_prompt or None, temperature=cfg.teacher_temperature,
                               max_tokens=cfg.teacher_max_tokens, timeout=cfg.teacher_timeout,
                               trust_remote_code=cfg.trust_remote_code, log=log)
        path = cfg.teacher_cache or default_cache_path(os.path.dirname(os.path.abspath(cfg.out_dir)), teacher.name)
        cache = TeacherCache(path, log)
        if cfg.teacher_batch:  # teacher_batch.py; what the batch does not answer is asked live below
            collect_batch(teacher, prompts, cache, os.path.join(cfg.out_dir, "teacher_batch.json"), log,
                          cfg.teacher_batch_poll)
        texts, finishes, calls = collect(teacher, prompts, cache, n=1, concurrency=cfg.teacher_concurrency, log=log)
    except TeacherError as e:
        raise SystemExit(f"train_gad.py: {e}")
    log(f"[teacher] {len(prompts)} prompts: {calls} teacher calls, {len(prompts) - calls} from the cache ({path})"
        + (f", {teacher.retries} retries" if getattr(teacher, "retries", 0) else ""))
    texts, keep = [t[0] for t in texts], trainable([f[0] for f in finishes], [t[0] for t in texts], log)
    return [prompts[i] for i in keep], [texts[i] for i in keep]


# ---------------------------------------------------------------------------- one update of each player
# Every update runs over micro-batches of --micro-batch-size rows (default: all at once), each loss divided by
# the step's whole count (response tokens, pairs), so the accumulated gradient is exactly the full batch's.
def optimizer_step(model, opt, cfg, name, loss):
    """Clip and step on the accumulated gradient -- unless the loss or the gradient is not finite: then skip."""
    norm = parallel.full(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    if not (math.isfinite(parallel.mean(loss)) and torch.isfinite(norm)):  # every rank decides alike
        opt.zero_grad()
        return {f"{name}_grad_norm": None, f"{name}_skipped": 1}
    opt.step()
    return {f"{name}_grad_norm": norm.item()}


def d_scores(D, batch, s_batch, cfg, backward=True):
    """D's scores of the teacher rows [B] and of the samples [B*n], detached, in micro-batches of whole prompt
    groups; with backward, D's loss (Eq. 3, or Table 4's BCE) is back-propagated on the way (its gradient
    accumulates in D until d_update steps on it)."""
    n, B, loss_fn = cfg.n_samples, len(batch.prompts), bt_loss if cfg.d_loss == "bt" else bce_loss
    per, scores = max(1, cfg.micro_batch_size // n) if cfg.micro_batch_size else B, []
    D.zero_grad()
    for i in range(0, B, per):
        with torch.set_grad_enabled(backward):
            t = D(to(rows(batch.teacher_for_d, i, i + per), DEVICE))                  # [p]
            s = D(to(rows(s_batch, i * n, (i + per) * n), DEVICE))                    # [p*n]
        if backward:
            loss_fn(t, s, n, prompts=B)[0].backward()
        scores.append((t.detach(), s.detach()))
    return torch.cat([t for t, _ in scores]), torch.cat([s for _, s in scores])


def d_update(D, opt, teacher_scores, student_scores, cfg, step=True):
    """D's health metrics on this step's scores, and one optimiser step (unless D is frozen)."""
    loss, m = (bt_loss if cfg.d_loss == "bt" else bce_loss)(teacher_scores, student_scores, cfg.n_samples)
    return m | (optimizer_step(D, opt, cfg, "d", loss.item()) if step else {})


def sft_update(G, opt, batch, cfg):
    opt.zero_grad()
    m, count = {"sft_loss": 0.0}, parallel.token_count(response_tokens(batch))  # the step's, over all ranks
    for _, part in micro_batches(batch, cfg.micro_batch_size):
        loss, _ = sft_loss(G, to(part, DEVICE), count)
        loss.backward()
        m["sft_loss"] += loss.item()
    return m | optimizer_step(G, opt, cfg, "g", m["sft_loss"])


def g_update(G, ref, opt, s_batch, advantages, cfg):
    """One GRPO update of G on its own samples, with the k3 KL to the reference as a loss term."""
    opt.zero_grad()
    m, total, count = {}, 0.0, parallel.token_count(response_tokens(s_batch))  # the step's, over all ranks
    for rows_, part in micro_batches(s_batch, cfg.micro_batch_size):
        part = to(part, DEVICE)
        logp, entropy = token_logprobs(G, part, cfg.temperature, with_entropy=True)     # [b, L]
        with torch.no_grad():
            ref_logp = token_logprobs(ref, part, cfg.temperature)                        # [b, L]
        loss, pm = policy_loss(logp, logp.detach(), ref_logp, advantages[rows_], part["response_mask"],
                               cfg.clip_eps, cfg.kl_coef, count)
        loss.backward()
        total += loss.item()
        pm["entropy"] = masked_mean(entropy, part["response_mask"], count).item()
        m = {k: m.get(k, 0.0) + v for k, v in pm.items()}  # partial means over the step's tokens add up
    return m | optimizer_step(G, opt, cfg, "g", total)


# ---------------------------------------------------------------------------- Algorithm 1, one step of each stage
def warmup_step(G, D, g_opt, d_opt, tok, batch, cfg, update_D=True, update_G=True):
    """Stage 1: D learns to rank the teacher's answers above G's samples; G imitates the teacher (SFT)."""
    m, samples, n = {}, None, cfg.n_samples
    if update_D:
        # 1. sample n responses per prompt from the current G
        samples = sample(G, tok, batch.prompts, n, cfg.temperature, cfg.max_response_len, cfg.gen_batch_size)
        s_batch = student_batch(batch, samples, n, tok.pad_token_id)
        # 2. one D update on the Bradley-Terry loss (Eq. 3), each sample paired with its prompt's teacher answer
        m = d_update(D, d_opt, *d_scores(D, batch, s_batch, cfg), cfg)
        m |= sample_metrics(samples, tok.eos_token_id)
    if update_G:
        # 3. one SFT update of G on the teacher's answers
        m |= sft_update(G, g_opt, batch.teacher, cfg)
    return m, samples


def gad_step(G, D, ref, g_opt, d_opt, tok, batch, cfg, update_D=True):
    """Stage 2: G learns by policy gradient from D's scores of its own samples; D keeps learning."""
    n = cfg.n_samples
    # 1. sample n responses per prompt from the current G
    samples = sample(G, tok, batch.prompts, n, cfg.temperature, cfg.max_response_len, cfg.gen_batch_size)
    s_batch = student_batch(batch, samples, n, tok.pad_token_id)
    # 2. rewards (Eq. 2): D's scores of the samples with D's weights before this step's update.
    #    The same forward pass back-propagates D's loss for 4 (one D forward, not two).
    teacher_scores, student_scores = d_scores(D, batch, s_batch, cfg, backward=update_D)  # [B], [B*n]
    rewards = student_scores                                                             # [B*n], detached
    # 3. group-normalised advantages (Eq. 6)
    advantages = group_advantages(rewards, n)                                            # [B*n]
    # 4. one D update on the Bradley-Terry loss (Eq. 3) -- not with --frozen-d; --d-steps k: k - 1 more
    m = d_update(D, d_opt, teacher_scores, student_scores, cfg, step=update_D)
    for _ in range(cfg.d_steps - 1 if update_D else 0):
        d_update(D, d_opt, *d_scores(D, batch, s_batch, cfg), cfg)  # (the log keeps the first update's metrics)
    # 5. one G update: GRPO with these advantages + k3 KL to the post-warmup G
    m |= g_update(G, ref, g_opt, s_batch, advantages, cfg)
    m |= reward_metrics(parallel.gather(rewards), n)  # over every process's rewards under torchrun
    return m | sample_metrics(samples, tok.eos_token_id), samples


# ---------------------------------------------------------------------------- the loops
def train_gad(G, D, tok, data, cfg, r, resume=None):
    """Stage 1 (warmup) then stage 2 (GAD). Saves warmup/ and gad/ (and resume points through r, run.Run)."""
    g_opt, d_opt = adamw(G, cfg.lr_warmup, cfg), adamw(D, cfg.lr_d, cfg)
    ref, start = None, resume["next_step"] if resume else 0
    if resume:  # continue a killed run exactly where its last resume point was written
        if start > cfg.warmup_steps:  # past the hand-off: the KL reference, GAD's G optimiser
            ref, g_opt = run.reference(cfg), adamw(G, cfg.lr_gad, cfg)
        checkpoint.restore_state(resume, data, (G, g_opt), (D, d_opt))
    for step in r.steps(start, cfg.warmup_steps + cfg.gad_steps, "warmup+GAD"):
        stage = "warmup" if step < cfg.warmup_steps else "gad"
        if step == cfg.warmup_steps:  # hand-off: KL reference = the post-warmup G; G gets a new optimiser, D keeps its
            run.save_players(G, D, tok, "warmup", cfg)
            ref, g_opt = run.reference(cfg), adamw(G, cfg.lr_gad, cfg)
        t0, batch = time.time(), parallel.local(data.next())  # this process's prompt groups (all, in one process)
        # who learns: every ablation and lab that keeps a player still is here, once (D alone in the first steps)
        update_D = not cfg.frozen_d and not (stage == "warmup" and cfg.no_d_warmup)
        update_G = stage == "gad" or step >= cfg.d_only_steps
        with run.amp():
            if stage == "warmup":
                m, samples = warmup_step(G, D, g_opt, d_opt, tok, batch, cfg, update_D, update_G)
            else:
                m, samples = gad_step(G, D, ref, g_opt, d_opt, tok, batch, cfg, update_D)
        r.end_step(stage, step, m, time.time() - t0, data, batch, samples, tok, (G, g_opt, D, d_opt))
    run.save_players(G, D, tok, "gad", cfg)


def train_seqkd(G, tok, data, cfg, r, resume=None):
    """The baseline: SFT on the teacher's answers only, from the same starting student."""
    opt, start = adamw(G, cfg.lr_seqkd, cfg), resume["next_step"] if resume else 0
    if resume:
        checkpoint.restore_state(resume, data, (G, opt))
    for step in r.steps(start, cfg.seqkd_steps, "SeqKD"):
        t0, batch = time.time(), parallel.local(data.next())
        with run.amp():
            m = sft_update(G, opt, batch.teacher, cfg)
        r.end_step("seqkd", step, m, time.time() - t0, data, batch, None, tok, (G, opt, None, None))
    run.save_players(G, None, tok, "seqkd", cfg)


def adamw(model, lr, cfg):
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


# ---------------------------------------------------------------------------- main
def main(argv=None):
    cfg, t_start = parse_args(argv), time.time()
    log = parallel.init(vars(cfg), tqdm.write)      # under torchrun: join the others (same flags?); rank 0 logs
    torch.manual_seed(cfg.seed)
    try:                                            # stage 0: every check before anything is loaded or paid for
        records = read_training_file(cfg.teacher_data or cfg.prompts, bool(cfg.teacher_data), cfg.batch_prompts, log)
    except DataError as e:
        raise SystemExit(f"train_gad.py: {e}")
    with parallel.together(lambda: run.Run(cfg, log)) as r:  # the run folder, locked: same flags on --resume?
        # under torchrun rank 0 alone makes the student and asks the teacher; every rank trains on its data
        student, tok = parallel.from_main(lambda: run.starting_student(cfg, log))
        pairs = parallel.from_main(lambda: teacher_pairs(cfg, records, tok, log))
        data = Data(tok, *pairs, cfg, log)
        for phase, resume in r.start():             # config.json is written now: the run really starts
            torch.manual_seed(cfg.seed)
            data.restart()
            at = resume["dir"] if resume else cfg.init_from if phase == "gad" else ""  # a folder to start from
            G = run.load_generator(os.path.join(at, "generator") if at else student, cfg)
            if phase == "gad":
                D = run.load_discriminator(cfg.frozen_d or (os.path.join(at, "discriminator") if at else student),
                                           cfg)
                parallel.seed(cfg.seed)             # under torchrun: each process samples its own stream
                train_gad(G, D, tok, data, cfg, r, resume)
            else:
                train_seqkd(G, tok, data, cfg, r, resume)
            r.finish(phase)
        run.evaluate(cfg, log)
        log(f"[done] {time.time() - t_start:.0f} s; everything is in {cfg.out_dir}")
    parallel.finish()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback, no wait for teacher requests in flight
        run.interrupted()
