"""The discriminator D: the student's backbone plus a new scalar head, and its Bradley-Terry loss.

D(x, y) is a raw, unbounded logit read from the final hidden state at the *last valid token* of [prompt ; response]:
for a finished response the EOS, for teacher and student alike (data.response_ids). No pooling; padding on either
side does not change a score.

  bt_loss  paper Eq. 3:  L_D = mean over pairs of -log sigmoid(D(x, y_t) - D(x, y_s))
           Each of a prompt's n student samples is paired with that prompt's one teacher response.
"""
import os

import torch
import torch.nn.functional as F
from transformers import AutoModel

import lora
import parallel
from data import position_ids


class Discriminator(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone  # a base model (no LM head) that returns last_hidden_state
        hidden = backbone.config.hidden_size
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.normal_(self.head.weight, std=hidden ** -0.5)
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(cls, path, backbone=None, **kwargs):
        """Backbone from a causal-LM checkpoint (its LM head dropped), or the one given; a fresh head unless saved."""
        d = cls(backbone or AutoModel.from_pretrained(path, **kwargs))
        head = os.path.join(path, "discriminator_head.pt")
        if os.path.exists(head):
            d.head.load_state_dict(torch.load(head, weights_only=True))
        return d if backbone else d.to(dtype=d.backbone.dtype)

    def save_pretrained(self, path, state_dict=None):
        """The backbone as a save_pretrained folder + discriminator_head.pt; state_dict: D's full weights if sharded."""
        if state_dict is None:
            self.backbone.save_pretrained(path)
            torch.save(self.head.state_dict(), os.path.join(path, "discriminator_head.pt"))
            return
        part = {name: {k[len(name) + 1:]: v for k, v in state_dict.items() if k.startswith(name + ".")}
                for name in ("backbone", "head")}
        self.backbone.save_pretrained(path, state_dict=part["backbone"])
        torch.save(part["head"], os.path.join(path, "discriminator_head.pt"))

    def forward(self, batch):
        """batch from data.pack -> scores [B] read at each row's last valid token."""
        mask = batch["attention_mask"]
        h = self.backbone(input_ids=batch["input_ids"], attention_mask=mask,
                          position_ids=position_ids(mask)).last_hidden_state           # [B, L, H]
        last = last_token_index(mask)                                                    # [B]
        h_last = h[torch.arange(h.shape[0], device=h.device), last]                      # [B, H]
        return self.head(h_last).squeeze(-1).float()                                     # [B]


def load_discriminator(path, cfg):
    """D: a checkpoint's backbone (no LM head) + a new head unless saved; fp32, sharded (--lora-rank: lora.py)."""
    D = Discriminator.from_pretrained(path, backbone=lora.from_pretrained(AutoModel, path, cfg, "backbone"))
    return lora.replicate(D) if cfg.lora_rank else parallel.shard(D, parallel.DEVICE, layers_of=D.backbone)


def last_token_index(attention_mask):
    """Index of the last position with attention_mask == 1 in each row (left or right padding)."""
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask * (pos + 1)).argmax(-1)                                       # [B]


def bt_loss(teacher_scores, student_scores, n, prompts=None, smoothing=0.0):
    """Bradley-Terry loss (paper Eq. 3) and D's health metrics.

    teacher_scores [B], student_scores [B*n] grouped by prompt. prompts: the step's number of prompts when these
    are one micro-batch of its prompt groups (the micro-batches' losses then sum to the mean over all pairs).
    smoothing eps (--d-label-smoothing, not the paper's): the target P(teacher ranks above) is 1 - eps, so each
    pair adds -(1 - eps) log s(gap) - eps log s(-gap), minimal at gap = log((1 - eps) / eps): D stops short of
    saturating (label smoothing, Szegedy et al. 2016, as GAN discriminators use it, Salimans et al. 2016; on a
    preference pair, cDPO, Mitchell 2023). The loss's floor is then the entropy H(eps), not 0."""
    gap = teacher_scores.repeat_interleave(n) - student_scores                           # [B*n]
    pair = (1 - smoothing) * F.logsigmoid(gap) + (smoothing * F.logsigmoid(-gap) if smoothing else 0)
    loss = -pair.sum() / (n * (prompts or len(teacher_scores)))
    return loss, pair_metrics(loss.item(), teacher_scores, student_scores, n)


def bce_loss(teacher_scores, student_scores, n, prompts=None, smoothing=0.0):
    """The binary-cross-entropy alternative (paper Table 4): -log s(D(y_t)) - log(1 - s(D(y_s))); smoothing eps:
    the targets are 1 - eps and eps."""
    prompts = prompts or len(teacher_scores)
    t, s = teacher_scores, student_scores
    loss = -((1 - smoothing) * F.logsigmoid(t) + smoothing * F.logsigmoid(-t)).sum() / prompts \
        - ((1 - smoothing) * F.logsigmoid(-s) + smoothing * F.logsigmoid(s)).sum() / (n * prompts)
    return loss, pair_metrics(loss.item(), teacher_scores, student_scores, n)


D_LOSSES = {"bt": bt_loss, "bce": bce_loss}  # --d-loss


def pair_metrics(loss, teacher_scores, student_scores, n):
    """d_loss (a number), d_acc = fraction of (teacher, sample) pairs ranked correctly, mean scores and mean gap."""
    gap = teacher_scores.repeat_interleave(n) - student_scores                           # [B*n]
    return {"d_loss": loss, "d_acc": (gap > 0).float().mean().item(),
            "d_teacher_score": teacher_scores.mean().item(), "d_student_score": student_scores.mean().item(),
            "d_gap": gap.mean().item()}
