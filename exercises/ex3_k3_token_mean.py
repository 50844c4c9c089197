"""Exercise 3 -- the k3 KL estimator and the masked token mean. Sheet: exercises/ex3_k3_token_mean.md

Write both functions below, then run:  python exercises/check.py 3
The project's versions are generator.k3_kl and generator.masked_mean; generator.policy_loss uses both:
    loss = masked_mean(pg + kl_coef * k3_kl(logp, ref_logp), response_mask)
"""
import torch  # noqa: F401


def k3_kl(logp, ref_logp):
    """Per-token k3 estimate of KL(pi || ref), for tokens sampled from pi.

    logp      [B, L]  log pi(token) under the generator being trained
    ref_logp  [B, L]  log ref(token) under the frozen reference (the post-warmup student)
    With d = ref_logp - logp:   k3 = exp(d) - d - 1   (>= 0, and unbiased: its mean over samples
    from pi is KL(pi || ref); Schulman, "Approximating KL divergence", 2020).
    Returns [B, L].
    """
    # TODO: two lines.
    raise NotImplementedError("exercise 3: write k3_kl")


def masked_mean(x, mask):
    """Token mean of x over the positions where mask == 1, over the whole batch.

    x [B, L] per-token values; mask [B, L] 1 on response tokens, 0 on prompt and padding.
    One mean over all response tokens of the batch (not a mean of per-sequence means).
    Padding positions may hold anything, even NaN or inf, and must not leak into the result.
    An all-masked batch returns 0 (not NaN).
    """
    # TODO: two or three lines.
    raise NotImplementedError("exercise 3: write masked_mean")
