"""Exercise 1 -- the Bradley-Terry discriminator loss (paper Eq. 3). Sheet: exercises/ex1_bt_loss.md

Write bt_loss below, then run:  python exercises/check.py 1
The project's version is discriminator.bt_loss; the training loop calls it once per step.
"""
import torch
import torch.nn.functional as F  # noqa: F401  (you will want F.logsigmoid)


def bt_loss(teacher_scores, student_scores, n):
    """Bradley-Terry loss of the discriminator, and its health metrics.

    teacher_scores  [B]    D(x_i, y_t,i): D's score of prompt i's one teacher response
    student_scores  [B*n]  D(x_i, y_s,ij): D's scores of the n student samples of each prompt,
                           grouped by prompt (prompt 0's n samples first, then prompt 1's, ...)
    n               samples per prompt

    Every student sample is paired with its own prompt's teacher response:
        loss = mean over the B*n pairs of  -log sigmoid(D(x, y_t) - D(x, y_s))
    Returns (loss, metrics): loss a 0-dim tensor (so D can be trained with loss.backward()), metrics a
    dict with at least "d_acc" = the fraction of pairs where D(teacher) > D(student).
    """
    # TODO: about four lines. Build the [B*n] gap, take the mean of -logsigmoid(gap), compute d_acc.
    raise NotImplementedError("exercise 1: write bt_loss")
