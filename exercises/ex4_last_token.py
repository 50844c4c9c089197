"""Exercise 4 -- where the discriminator reads its score. Sheet: exercises/ex4_last_token.md

Write last_token_index below, then run:  python exercises/check.py 4
The project's version is discriminator.last_token_index; Discriminator.forward reads the final hidden
state at these indices and maps it to one scalar with a linear head.
"""
import torch  # noqa: F401


def last_token_index(attention_mask):
    """attention_mask [B, L] of 0/1 -> LongTensor [B]: the index of the last position with mask 1.

    Batches are padded on the right for training and on the left for generation; the answer must be
    right for both, e.g.
        [[1, 1, 1, 0, 0],      -> [2,
         [0, 0, 1, 1, 1]]          4]
    For a finished response that last token is the EOS, for teacher and student alike.
    """
    # TODO: one or two lines, no Python loop over rows.
    raise NotImplementedError("exercise 4: write last_token_index")
