"""Exercise 2 -- the group-normalised advantage (paper Eq. 6). Sheet: exercises/ex2_group_advantage.md

Write group_advantages below, then run:  python exercises/check.py 2
The project's version is generator.group_advantages.
"""
import torch  # noqa: F401


def group_advantages(rewards, n, eps=1e-6):
    """rewards [B*n] grouped by prompt (prompt 0's n samples first) -> advantages [B*n].

    For the n samples of one prompt, with r the group's rewards (D's scores of those samples):
        A_i = (r_i - mean(r)) / (std(r) + eps)
    A group whose rewards are all equal carries no signal: its advantages must be 0 (never NaN).
    """
    # TODO: about three lines. A [B*n] -> [B, n] view puts each prompt's group in one row.
    raise NotImplementedError("exercise 2: write group_advantages")
