"""Exercise 5 -- one GAD step (Algorithm 1, stage 2), in the paper's order. Sheet: exercises/ex5_gad_step.md

Finish gad_step below, then run:  python exercises/check.py 5
The project's version is train_gad.gad_step; train_gad.train_gad calls it once per GAD step.
The check records the order your step calls its building blocks in, then trains a tiny run in which only
your step teaches G (the warmup trains D alone), about a minute on a laptop, and checks that G learns.
"""
from data import student_batch  # noqa: F401
from generator import group_advantages, group_std, reward_metrics, sample, sample_metrics  # noqa: F401
from train_gad import d_scores, d_update, g_update  # noqa: F401


def gad_step(G, D, ref, g_opt, d_opt, tok, batch, cfg, update_D=True):
    """Stage 2: G learns by policy gradient from D's scores of its own samples; D keeps learning.
    Returns (metrics, samples, rewards).

    The blocks: sample (n responses per prompt from G), student_batch ([prompt ; sample] rows), d_scores
    (D's scores of the teacher rows and the samples, detached, and D's Bradley-Terry loss, Eq. 3; with
    backward=True it also back-propagates that loss), group_advantages (Eq. 6), d_update (D's metrics and one
    optimiser step unless step=False), g_update (one GRPO + k3 KL update of G), reward_metrics and
    sample_metrics (what the log shows). update_D is False with --frozen-d: D still scores, but learns nothing.
    """
    n = cfg.n_samples
    # TODO: the step. Use lines from this list (each at most once; two of them are traps), in the right order.
    #
    #   m |= g_update(G, ref, g_opt, s_batch, advantages, cfg)
    #   advantages = group_advantages(rewards, n)                                              # [B*n]
    #   samples = sample(G, tok, batch.prompts, n, cfg.temperature, cfg.max_response_len, cfg.gen_batch_size)
    #   rewards = d_scores(D, batch, s_batch, cfg, backward=False)[1]                           # [B*n]
    #   m = d_update(D, d_opt, teacher_scores, student_scores, d_loss, cfg, step=update_D)
    #   teacher_scores, student_scores, d_loss = d_scores(D, batch, s_batch, cfg, backward=update_D)  # [B], [B*n]
    #   s_batch = student_batch(batch, samples, n, tok.pad_token_id)
    #   return m | reward_metrics(rewards, n) | sample_metrics(samples, tok.eos_token_id), samples, rewards
    #   rewards = student_scores                                                                # [B*n]
    #   advantages = group_advantages(rewards, cfg.batch_prompts)                              # [B*n]
    raise NotImplementedError("exercise 5: order the lines of one GAD step")
