"""Generative Adversarial Distillation (GAD, arXiv 2511.10643) in one readable loop.
`python train_gad.py` runs it all on the embedded world; `--help` lists every option and the paper's values.

Stage 0  read the data files; collect the teacher's answers (teacher.training_pairs: cached, never paid twice)
Stage 1  warmup (`warmup_step`): D learns to rank teacher above student (Bradley-Terry) on G's samples;
         G learns by SFT on the teacher's answers (after the first d_only_steps, where D learns alone)
Stage 2  GAD (`gad_step`), per step, in the paper's order (Algorithm 1):
           1. sample n responses per prompt from G
           2. rewards = D's scores of the samples, with D's weights before this step's update (Eq. 2)
           3. group-normalised advantages (Eq. 6)
           4. one D update on the Bradley-Terry loss (Eq. 3)
           5. one G update on the GRPO loss with a k3 KL to the post-warmup G
SeqKD    the baseline: SFT on the same teacher data, same start, same number of G steps and prompts.

Simplified (docs/world.md): sized for a 2-core CPU and a 0.8M student; SeqKD keeps its last checkpoint. The run folder
and logs: run.py; `torchrun --nproc-per-node N train_gad.py`: parallel.py.
"""
import math
import os
import time

import torch
from tqdm import tqdm

import checkpoint
import parallel
import run
import teacher
from data import Data, DataError, micro_batches, read_training_file, rows, student_batch, to_device
from discriminator import D_LOSSES, load_discriminator, pair_metrics
from generator import (group_advantages, load_generator, masked_mean, policy_loss, response_tokens, reward_metrics,
                       sample, sample_metrics, sft_loss, token_logprobs)

# name: (default here, meaning (paper: its value), bound: ">= x", "> x", choices, None), checked by run.check
# ---------------------------------------------------------------------------- the paper's hyper-parameters
PAPER = {
    "batch_prompts": (16, "prompts per step; 88 steps = 1 epoch of the 1408 train prompts (paper: 256)", ">= 1"),
    "n_samples": (8, "student samples per prompt, the GRPO group size n (paper: 8)", ">= 2"),
    "temperature": (0.8, "sampling temperature; training log-probs use logits / temperature (paper: 0.8)", "> 0"),
    "max_response_len": (40, "response limit in tokens; a longer teacher response is skipped (paper: 1536)", ">= 1"),
    "warmup_steps": (88, "stage 1 steps (paper: 1 epoch)", ">= 0"),
    "d_only_steps": (10, "first warmup steps train D alone (paper: 10)", ">= 0"),
    "gad_steps": (176, "stage 2 steps (paper: 2 epochs)", ">= 0"),
    "seqkd_steps": (-1, "SeqKD steps; -1 = warmup_steps + gad_steps, the same G steps (paper: 3 epochs)", ">= 0"),
    "lr_warmup": (5e-4, "G learning rate in warmup SFT (paper: 1e-6 for 3-14B models)", ">= 0"),
    "lr_gad": (3e-5, "G learning rate in GAD; 1e-4 diverged here, README (paper: 1e-6)", ">= 0"),
    "lr_d": (1e-3, "D learning rate, warmup and GAD (paper: 1e-6)", ">= 0"),
    "lr_seqkd": (5e-4, "G learning rate for the SeqKD baseline (paper: 5e-6)", ">= 0"),
    "kl_coef": (0.001, "weight of the k3 KL-to-reference loss term (paper: 0.001)", ">= 0"),
    "grad_clip": (1.0, "max grad norm for G and D (paper: 0.2)", "> 0"),
    "weight_decay": (0.01, "AdamW weight decay (paper: 0.01)", ">= 0"),
}
# ---------------------------------------------------------------------------- the run
RUN = {
    "out_dir": ("runs/default", "everything of the run goes here", None),
    "mode": ("all", "all = GAD + SeqKD + eval; gad = GAD + eval; seqkd = SeqKD + eval", ("all", "gad", "seqkd")),
    "seed": (0, "seed of data order, sampling, D's new head, the teacher (not the start: --pretrain-seed)", None),
    "student": ("embedded", "embedded = the embedded world's; else any HF causal LM (hub name or folder)", None),
    "teacher": ("embedded", "embedded | openai:MODEL (any OpenAI-compatible endpoint) | hf:PATH (local)", None),
    "prompts": ("", "JSONL/parquet of prompts (content = chat messages, or prompt = string) for --teacher", None),
    "teacher_data": ("", "JSONL/parquet of answers already collected (+ teacher_response, the paper's format)", None),
    "save_every": (50, "write a resume point every this many steps (0 = never); see --resume", ">= 0"),
    "resume": (False, "continue from the newest resume point in --out-dir (same flags as the killed run)", None),
    "eval_samples": (4, "samples per held-out prompt at evaluation", ">= 1"),
    "eval_models": ("before,warmup,seqkd,gad", "embedded world: the checkpoints judged at the end ('' = none)", None),
    "eval_temperature": (0.8, "sampling temperature at evaluation (0 = greedy)", ">= 0"),
    "log_every": (22, "print a log line every this many steps", ">= 1"),
    "sample_every": (88, "every N steps: print a (prompt, student, teacher); save the samples (samples.jsonl)", ">= 1"),
}
# ---------------------------------------------------------------------------- labs and ablations
LABS = {
    "d_loss": ("bt", "bt = Bradley-Terry, Eq. 3; bce = the weaker baseline of Table 4 (paper: bt)", ("bt", "bce")),
    "d_steps": (1, "D updates per GAD step: k - 1 more after the step, its samples scored anew (paper: 1)", ">= 1"),
    "d_label_smoothing": (0.0, "departure: D's target 1 - eps, not 1 (label smoothing; paper: 0)", ">= 0"),
    "d_init": ("", "departure: D's backbone from this causal LM, same tokenizer (paper: the student's)", None),
    "clip_eps": (0.2, "PPO clip range; inactive with one step per batch, ratio = 1 (paper: 0.2)", ">= 0"),
    "no_d_warmup": (False, "ablation (paper Table 3): D is not trained in stage 1 (flag)", None),
    "frozen_d": ("", "ablation (paper Fig. 6): a trained discriminator folder as a fixed reward model", None),
    "break_eos_symmetry": (False, "lab (exercises/lab1_eos.md): D sees teacher answers without their EOS", None),
    "init_from": ("", "start stage 2 from a warmup folder of an earlier run (runs/x/warmup): skip stage 1", None),
    "eval_every": (0, "embedded world: log judge_fidelity of G every N steps (evaluation only)", ">= 0"),
    "world": ("default", "the embedded world's variant (docs/world.md)", ("default", "long", "habits", "list")),
    "train_prompts": (0, "train on this many prompts, a fixed subset the same for every seed (0 = all)", ">= 0"),
    "pretrain_steps": (800, "embedded student: pretraining steps on the broad corpus (batch 64)", ">= 1"),
    "pretrain_seed": (0, "embedded student: its pretraining seed (one start for every --seed, as the paper)", None),
    "student_hidden": (128, "embedded student: hidden size (its own pretrained start when not 128)", ">= 4"),
    "student_layers": (3, "embedded student: decoder layers (its own pretrained start when not 3)", ">= 1"),
}
# ---------------------------------------------------------------------------- real models and long jobs
REAL = {
    "teacher_base_url": ("", "OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else OpenAI's)", None),
    "teacher_cache": ("", "answer cache; default: <parent of --out-dir>/.teacher_cache/, shared by those runs", None),
    "teacher_system_prompt": ("", "a system prompt only the teacher sees (context distillation)", None),
    "teacher_temperature": (1.0, "teacher sampling temperature (paper: the API's default)", ">= 0"),
    "teacher_max_tokens": (1024, "teacher answer limit in tokens; a cut-off answer is not trained on", ">= 1"),
    "max_prompt_len": (1024, "a longer prompt is left out before the teacher is asked (paper: 2048)", ">= 1"),
    "teacher_concurrency": (8, "teacher requests in flight at once", ">= 1"),
    "teacher_timeout": (120.0, "seconds before a teacher request is abandoned and retried", "> 0"),
    "teacher_batch": (False, "openai: teachers: ask through the Batch API (~half price, hours)", None),
    "teacher_batch_poll": (30.0, "seconds between two looks at a submitted batch (--teacher-batch)", "> 0"),
    "gen_batch_size": (64, "sequences sampled at once (chunks keep generation memory flat)", ">= 1"),
    "micro_batch_size": (0, "rows per forward/backward in an update (0 = all); the gradient is exact", ">= 0"),
    "gradient_checkpointing": (False, "trade compute for memory in G and D", None),
    "lora_rank": (0, "LoRA adapters of this rank for G, the reference and D on one frozen base (0 = full)", ">= 0"),
    "lora_alpha": (16.0, "LoRA scale alpha: an adapter adds (alpha / rank) B A to each weight", "> 0"),
    "lora_targets": ("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "the layers adapted, by name", None),
    "trust_remote_code": (False, "allow model code from the checkpoint to run (off unless you ask)", None),
    "max_bad_steps": (3, "stop after this many consecutive steps with a non-finite loss or gradient", ">= 1"),
    "report_to": ("none", "also send every metrics.jsonl record to a tracker", ("none", "tensorboard", "wandb")),
}
GROUPS = {"the paper's hyper-parameters": PAPER, "the run": RUN, "labs and ablations": LABS,
          "real models and long jobs": REAL}


def parse_args(argv=None):  # the flags of GROUPS, each checked (run.py)
    return run.parse_args(GROUPS, argv, __doc__)


# ---------------------------------------------------------------------------- one update of each player
# Every update runs over micro-batches of --micro-batch-size rows (default: all at once), each loss divided by
# the step's whole count (response tokens, pairs), so the accumulated gradient is exactly the full batch's.
def optimizer_step(model, opt, cfg, name, loss):
    """Clip and step on the accumulated gradient -- unless the loss or the gradient is not finite: then skip."""
    norm = parallel.full_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    if not (math.isfinite(parallel.mean(loss)) and torch.isfinite(norm)):  # every process decides alike
        opt.zero_grad()
        return {f"{name}_grad_norm": None, f"{name}_skipped": 1}
    opt.step()
    return {f"{name}_grad_norm": norm.item()}


def d_scores(D, batch, s_batch, cfg, backward=True):
    """D's scores of the teacher rows [B] and of the samples [B*n], detached, and D's loss (Eq. 3, or Table 4's
    BCE: --d-loss), computed once, in micro-batches of whole prompt groups. With backward, the loss is
    back-propagated on the way: its gradient waits in D for d_update's step."""
    n = cfg.n_samples
    B = len(batch.prompts)
    per = max(1, cfg.micro_batch_size // n) if cfg.micro_batch_size else B
    loss_fn = D_LOSSES[cfg.d_loss]
    parts = []                                      # (teacher scores, sample scores) of each micro-batch
    loss_value = 0.0
    D.zero_grad()
    for i in range(0, B, per):
        with torch.set_grad_enabled(backward):
            t = D(to_device(rows(batch.teacher_for_d, i, i + per), parallel.DEVICE))          # [p]
            s = D(to_device(rows(s_batch, i * n, (i + per) * n), parallel.DEVICE))            # [p*n]
            loss, _ = loss_fn(t, s, n, prompts=B, smoothing=cfg.d_label_smoothing)  # this part of the step's mean
        if backward:
            loss.backward()
        loss_value += loss.item()
        parts.append((t.detach(), s.detach()))
    return torch.cat([t for t, _ in parts]), torch.cat([s for _, s in parts]), loss_value


def d_update(D, opt, teacher_scores, student_scores, loss, cfg, step=True):
    """D's health metrics on this step's scores, and one optimiser step on the gradient d_scores left in D."""
    m = pair_metrics(loss, teacher_scores, student_scores, cfg.n_samples)
    return m | (optimizer_step(D, opt, cfg, "d", loss) if step else {})


def sft_update(G, opt, batch, cfg):
    opt.zero_grad()
    m = {"sft_loss": 0.0}
    count = parallel.token_count(response_tokens(batch))  # the step's response tokens, over all processes
    for _, part in micro_batches(batch, cfg.micro_batch_size):
        loss, _ = sft_loss(G, to_device(part, parallel.DEVICE), count)
        loss.backward()
        m["sft_loss"] += loss.item()
    return m | optimizer_step(G, opt, cfg, "g", m["sft_loss"])


def g_update(G, ref, opt, s_batch, advantages, cfg):
    """One GRPO update of G on its own samples, with the k3 KL to the reference as a loss term."""
    opt.zero_grad()
    m = {}
    total = 0.0
    count = parallel.token_count(response_tokens(s_batch))  # the step's response tokens, over all processes
    for part_rows, part in micro_batches(s_batch, cfg.micro_batch_size):
        part = to_device(part, parallel.DEVICE)
        logp, entropy = token_logprobs(G, part, cfg.temperature, with_entropy=True)     # [b, L]
        with torch.no_grad():
            ref_logp = token_logprobs(ref, part, cfg.temperature)                        # [b, L]
        loss, pm = policy_loss(logp, logp.detach(), ref_logp, advantages[part_rows], part["response_mask"],
                               cfg.clip_eps, cfg.kl_coef, count)
        loss.backward()
        total += loss.item()
        pm["entropy"] = masked_mean(entropy, part["response_mask"], count).item()
        m = {k: m.get(k, 0.0) + v for k, v in pm.items()}  # partial means over the step's tokens add up
    return m | optimizer_step(G, opt, cfg, "g", total)


# ---------------------------------------------------------------------------- Algorithm 1, one step of each stage
def warmup_step(G, D, g_opt, d_opt, tok, batch, cfg, update_D=True, update_G=True):
    """Stage 1: D learns to rank the teacher's answers above G's samples; G imitates the teacher (SFT)."""
    m = {}
    samples = scores = None
    if update_D:
        # 1. sample n responses per prompt from the current G
        samples = sample(G, tok, batch.prompts, cfg.n_samples, cfg.temperature, cfg.max_response_len,
                         cfg.gen_batch_size)
        s_batch = student_batch(batch, samples, cfg.n_samples, tok.pad_token_id)
        # 2. one D update on the Bradley-Terry loss (Eq. 3), each sample paired with its prompt's teacher answer
        teacher_scores, scores, d_loss = d_scores(D, batch, s_batch, cfg)                 # [B], [B*n]
        m = d_update(D, d_opt, teacher_scores, scores, d_loss, cfg) | sample_metrics(samples, tok.eos_token_id)
    if update_G:
        # 3. one SFT update of G on the teacher's answers
        m |= sft_update(G, g_opt, batch.teacher, cfg)
    return m, samples, scores


def gad_step(G, D, ref, g_opt, d_opt, tok, batch, cfg, update_D=True):
    """Stage 2: G learns by policy gradient from D's scores of its own samples; D keeps learning."""
    n = cfg.n_samples
    # 1. sample n responses per prompt from the current G
    samples = sample(G, tok, batch.prompts, n, cfg.temperature, cfg.max_response_len, cfg.gen_batch_size)
    s_batch = student_batch(batch, samples, n, tok.pad_token_id)
    # 2. rewards (Eq. 2): D's scores of the samples with D's weights before this step's update. This one forward
    #    also gives D's loss for step 4 and back-propagates it (unless D is frozen); D steps only at 4
    teacher_scores, student_scores, d_loss = d_scores(D, batch, s_batch, cfg, backward=update_D)  # [B], [B*n]
    rewards = student_scores                                                             # [B*n], detached
    # 3. group-normalised advantages (Eq. 6)
    advantages = group_advantages(rewards, n)                                            # [B*n]
    # 4. one D update on the Bradley-Terry loss (Eq. 3) -- not with --frozen-d
    m = d_update(D, d_opt, teacher_scores, student_scores, d_loss, cfg, step=update_D)
    # 5. one G update: GRPO with these advantages + k3 KL to the post-warmup G
    m |= g_update(G, ref, g_opt, s_batch, advantages, cfg)
    return m | reward_metrics(rewards, n) | sample_metrics(samples, tok.eos_token_id), samples, rewards


# ---------------------------------------------------------------------------- the loops
def train_gad(G, D, tok, data, cfg, folder, resume=None):
    """Stage 1 (warmup), the hand-off, stage 2 (GAD). Saves warmup/ and gad/; resume only chooses where to start."""
    start = resume["next_step"] if resume else 0
    past_hand_off = start > cfg.warmup_steps      # a resume point inside stage 2
    ref = reference(cfg) if past_hand_off else None
    g_opt = adamw(G, cfg.lr_gad if past_hand_off else cfg.lr_warmup, cfg)
    d_opt = adamw(D, cfg.lr_d, cfg)
    if resume:
        checkpoint.restore_state(resume, data, (G, g_opt), (D, d_opt))
    update_D = not cfg.frozen_d                   # who learns: the ablations and labs change only these
    for step in folder.steps(start, cfg.warmup_steps, "warmup"):                      # stage 1
        t0 = time.time()
        batch = parallel.local(data.next())       # this process's prompt groups (all of them in one process)
        with parallel.amp():
            m, samples, scores = warmup_step(G, D, g_opt, d_opt, tok, batch, cfg, update_D and not cfg.no_d_warmup,
                                             update_G=step >= cfg.d_only_steps)
        m = folder.evaluate_if_due(step, parallel.mean_metrics(m), G, tok, (data.messages(batch), samples, scores))
        folder.log("warmup", step, m, time.time() - t0)
        folder.show_sample("warmup", step, data, batch, samples, tok, scores)
        folder.save_if_due("gad", step, tok, data, G, g_opt, D, d_opt)
    if not past_hand_off and cfg.gad_steps:       # the hand-off: the post-warmup G is the KL reference from now
        checkpoint.save_players(G, D, tok, "warmup", cfg)
        ref = reference(cfg)
        g_opt = adamw(G, cfg.lr_gad, cfg)         # G gets a new optimiser; D keeps its own
    for step in folder.steps(max(start, cfg.warmup_steps), cfg.warmup_steps + cfg.gad_steps, "GAD"):   # stage 2
        t0 = time.time()
        batch = parallel.local(data.next())
        with parallel.amp():
            m, samples, rewards = gad_step(G, D, ref, g_opt, d_opt, tok, batch, cfg, update_D)
            s_batch = student_batch(batch, samples, cfg.n_samples, tok.pad_token_id) if cfg.d_steps > 1 else None
            for _ in range(cfg.d_steps - 1 if update_D else 0):  # --d-steps k, a lab: k - 1 more D updates
                d_update(D, d_opt, *d_scores(D, batch, s_batch, cfg), cfg)
        m = folder.evaluate_if_due(step, parallel.mean_metrics(m), G, tok, (data.messages(batch), samples, rewards))
        folder.log("gad", step, m, time.time() - t0)
        folder.show_sample("gad", step, data, batch, samples, tok, rewards)
        folder.save_if_due("gad", step, tok, data, G, g_opt, D, d_opt)
    checkpoint.save_players(G, D, tok, "gad", cfg)


def train_seqkd(G, tok, data, cfg, folder, resume=None):
    """The baseline: SFT on the teacher's answers only, from the same starting student."""
    opt = adamw(G, cfg.lr_seqkd, cfg)
    start = resume["next_step"] if resume else 0
    if resume:
        checkpoint.restore_state(resume, data, (G, opt))
    for step in folder.steps(start, cfg.seqkd_steps, "SeqKD"):
        t0 = time.time()
        batch = parallel.local(data.next())
        with parallel.amp():
            m = sft_update(G, opt, batch.teacher, cfg)
        m = folder.evaluate_if_due(step, parallel.mean_metrics(m), G, tok)
        folder.log("seqkd", step, m, time.time() - t0)
        folder.save_if_due("seqkd", step, tok, data, G, opt)
    checkpoint.save_players(G, None, tok, "seqkd", cfg)


def reference(cfg):
    """The KL reference of stage 2: the post-warmup G, frozen (read back from runs/x/warmup/generator)."""
    return load_generator(os.path.join(cfg.out_dir, "warmup", "generator"), cfg).eval().requires_grad_(False)


def adamw(model, lr, cfg):  # the trainable weights: all, or with --lora-rank the adapters and D's head
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=cfg.weight_decay)


# ---------------------------------------------------------------------------- main
def main(argv=None):
    t_start = time.time()
    cfg = parse_args(argv)
    log = parallel.init(vars(cfg), tqdm.write)      # under torchrun: join the others (same flags?); rank 0 logs
    torch.manual_seed(cfg.seed)
    try:                                            # stage 0: every check before anything is loaded or paid for
        records = read_training_file(cfg.teacher_data or cfg.prompts, bool(cfg.teacher_data), cfg.batch_prompts, log)
    except DataError as e:
        raise SystemExit(f"train_gad.py: {e}")
    with parallel.together(lambda: run.Run(cfg, log)) as folder:  # the run folder, locked: same flags on --resume?
        # under torchrun rank 0 alone makes the student and asks the teacher; every process trains on its data
        student, tok = parallel.from_main(lambda: run.starting_student(cfg, log))
        pairs = parallel.from_main(lambda: teacher.training_pairs(cfg, records, tok, log))
        data = Data(tok, *pairs, cfg, log)
        for phase, resume in folder.start():        # config.json is written now: the run really starts
            torch.manual_seed(cfg.seed)
            data.restart()
            at = resume["dir"] if resume else cfg.init_from if phase == "gad" else ""  # a folder to start from
            G = load_generator(os.path.join(at, "generator") if at else student, cfg)
            if phase == "gad":
                D = load_discriminator(cfg.frozen_d or (os.path.join(at, "discriminator") if at else cfg.d_init or
                                                        student), cfg)
                parallel.seed(cfg.seed)             # under torchrun: each process samples its own stream
                train_gad(G, D, tok, data, cfg, folder, resume)
            else:
                train_seqkd(G, tok, data, cfg, folder, resume)
            folder.finish(phase)
        run.evaluate(cfg, log)
        log(f"[done] {time.time() - t_start:.0f} s; everything is in {cfg.out_dir}")
    parallel.finish()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback, no wait for teacher requests in flight
        run.interrupted()
