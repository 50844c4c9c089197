"""Exercise 5 -- one GAD step, in the paper's order. Sheet: exercises/ex5_gad_step.md

Finish gad_or_warmup_step below, then run:  python exercises/check.py 5
The project's version is train_gad.gad_or_warmup_step; train_gad.train_gad calls it once per step.
The check records the order your step calls its building blocks in, then trains a tiny run with your
step in place of the project's (about a minute on a laptop) and checks that it learns.
"""
import generator as G  # noqa: F401
from train_gad import d_step, g_step, sft_step, student_batch, teacher_batch  # noqa: F401


def gad_or_warmup_step(gen, disc, ref, g_opt, d_opt, tok, data, idx, stage, step, cfg, device):
    """One step of stage 1 (warmup) or stage 2 (GAD). Returns (metrics, samples).

    stage "warmup": for the first cfg.d_only_steps steps only D learns; after that G also does SFT
                    on the teacher responses.
    stage "gad":    G learns by policy gradient from D's scores of its own samples, D keeps learning.
    The blocks: G.sample (n responses per prompt), d_step (D's scores of the samples with its weights
    *before* its update -- these are the rewards -- then one BT update of D), G.group_advantages,
    g_step (one GRPO update of G), sft_step (one SFT update of G).
    """
    t_batch = teacher_batch(data, idx, tok.pad_token_id)
    train_d = not cfg.frozen_d and not (stage == "warmup" and cfg.no_d_warmup)
    if stage == "warmup" and not train_d:  # --no-d-warmup: stage 1 is SFT alone, nothing to sample or score
        return (sft_step(gen, g_opt, t_batch, cfg, device) if step >= cfg.d_only_steps else {}), None
    d_teacher = teacher_batch(data, idx, tok.pad_token_id, eos=False) if cfg.break_eos_symmetry else t_batch

    # TODO: the rest of the step. Use lines from this list (each at most once; two of them are traps),
    # in the right order, under `if stage == "warmup":` / `else:` and `if step >= cfg.d_only_steps:`.
    #
    #   advantages = G.group_advantages(rewards, cfg.n_samples)                          # [B*n]
    #   m.update(sft_step(gen, g_opt, t_batch, cfg, device))
    #   rewards, m = d_step(disc, d_opt, d_teacher, s_batch, cfg, device, update=train_d)  # [B*n]
    #   return m, samples
    #   samples = G.sample(gen, tok, [data.prompt_ids[i] for i in idx], cfg.n_samples, cfg.temperature,
    #                      cfg.max_response_len, cfg.gen_batch_size)
    #   m.update(g_step(gen, ref, g_opt, s_batch, advantages, cfg, device))
    #   rewards = disc(G.to(s_batch, device)).detach()                                   # [B*n]
    #   m.update(G.sample_metrics(samples, tok.eos_token_id))
    #   s_batch = student_batch(data, idx, samples, cfg.n_samples, tok.pad_token_id)
    #   m.update(reward_mean=rewards.mean().item(), reward_std=rewards.std().item(),
    #            reward_group_std=rewards.view(-1, cfg.n_samples).std(-1).mean().item())
    #   advantages = G.group_advantages(rewards, cfg.batch_prompts)                      # [B*n]
    raise NotImplementedError("exercise 5: order the steps of one GAD step")
