"""GAD in a dozen lines -- read this first (exercise 0).

The whole adversarial game on a toy you can hold in your head. The teacher is a distribution over 10
classes with three separated modes; the student is a discretised Gaussian (a mean and a log-std), which
cannot cover all three. D is one logit per class. Then:

  SeqKD  maximum likelihood on teacher samples: the student spreads over every mode (mass in between)
  GAD    sample n per "prompt" -> rewards = D's scores, before D's update -> group-normalised advantages
         (Eq. 6) -> one Bradley-Terry step of D (Eq. 3) -> one REINFORCE step of G: it locks onto a mode

This is the paper's Fig. 5 (mode seeking). The real loop (train_gad.gad_step) is the same five lines with
language models, padding, a KL term and a PPO-shaped loss around them.

    python gad_toy.py                  # both students printed; runs/gad_toy/gad_toy.json (+ .png with matplotlib)
"""
import argparse
import json
import os
import statistics

import torch

from discriminator import bt_loss
from generator import group_advantages

# three separated modes, as the paper's mixture (with a 2% floor on every class our GAD student went uniform)
TEACHER = torch.tensor([0.005, 0.30, 0.10, 0.005, 0.08, 0.30, 0.005, 0.005, 0.195, 0.005])
CLASSES = torch.arange(10, dtype=torch.float)


def student(mu, log_sd):
    """log p(class) of the discretised Gaussian N(mu, exp(log_sd)^2) over classes 0-9 -> [10]."""
    return torch.log_softmax(-0.5 * ((CLASSES - mu) / log_sd.exp()) ** 2, -1)


def step(opt, loss):
    opt.zero_grad()
    loss.backward()
    opt.step()


def seqkd(steps):
    """Maximum likelihood on the teacher's samples (what SFT does)."""
    mu = torch.tensor(4.5, requires_grad=True)
    log_sd = torch.tensor(1.0, requires_grad=True)
    opt = torch.optim.Adam([mu, log_sd], lr=0.05)
    for _ in range(steps):
        y_t = torch.multinomial(TEACHER, 64, replacement=True)
        step(opt, -student(mu, log_sd)[y_t].mean())
    return student(mu, log_sd).exp()


def gad(steps, prompts=16, n=8):
    """The GAD game: G samples, D scores, G follows D's group-normalised scores, D learns to rank the teacher up."""
    mu = torch.tensor(4.5, requires_grad=True)
    log_sd = torch.tensor(1.0, requires_grad=True)
    d_logit = torch.zeros(10, requires_grad=True)                                     # D: a score per class
    g_opt = torch.optim.Adam([mu, log_sd], lr=0.05)
    d_opt = torch.optim.Adam([d_logit], lr=0.05)
    for _ in range(steps):
        logp = student(mu, log_sd)                                                    # [10]
        y_s = torch.multinomial(logp.exp().detach(), prompts * n, replacement=True)   # 1. n samples per prompt
        y_t = torch.multinomial(TEACHER, prompts, replacement=True)                   #    one teacher answer each
        rewards = d_logit[y_s].detach()                                               # 2. D's scores, pre-update
        advantages = group_advantages(rewards, n)                                     # 3. Eq. 6
        d_loss, _ = bt_loss(d_logit[y_t], d_logit[y_s], n)                            # 4. Bradley-Terry, Eq. 3
        step(d_opt, d_loss)
        step(g_opt, -(advantages * logp[y_s]).mean())                                 # 5. REINFORCE
    return student(mu, log_sd).exp()


def mode_seeking(seeds=(0, 1, 2), steps=1500):
    """Both students per seed, their mean, and how much of each student sits on its peak / on the teacher."""
    out = {"teacher": TEACHER.tolist(), "seqkd": [], "gad": []}
    for s in seeds:
        torch.manual_seed(s)
        out["seqkd"].append(seqkd(steps).tolist())
        out["gad"].append(gad(steps).tolist())
    mean = {k: [statistics.mean(p[i] for p in out[k]) for i in range(10)] for k in ("seqkd", "gad")}
    overlap = {k: sum(min(a, b) for a, b in zip(mean[k], TEACHER.tolist())) for k in mean}
    return {"seeds": list(seeds), "steps": steps, "distributions": out, "mean": mean, "overlap": overlap}


def markdown(result):
    mean = result["mean"]
    peak = {k: max(range(10), key=lambda i: mean[k][i]) for k in mean}
    return ("| student | mass on its peak class | overlap with the teacher |\n|---|---|---|\n" + "\n".join(
        f"| {k} | class {peak[k]}: {mean[k][peak[k]]:.2f} | {result['overlap'][k]:.2f} |" for k in ("seqkd", "gad")))


def plot(result, plt):
    plt.bar(range(10), result["distributions"]["teacher"], color="lightgray", label="teacher")
    plt.plot(range(10), result["mean"]["seqkd"], "o-", label="SeqKD (maximum likelihood)")
    plt.plot(range(10), result["mean"]["gad"], "s-", label="GAD (adversarial)")
    plt.xticks(range(10))
    plt.xlabel("class")
    plt.ylabel("probability")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join("runs", "gad_toy"), help="output folder")
    ap.add_argument("--steps", type=int, default=1500, help="training steps of each student (default: 1500)")
    a = ap.parse_args()
    if a.steps < 1:
        ap.error(f"--steps must be >= 1, got {a.steps}")
    result = mode_seeking(steps=a.steps)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gad_toy.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(markdown(result))
    for k, dist in {**result["mean"], "teacher": TEACHER.tolist()}.items():
        print(f"{k:>7}: " + " ".join(f"{p:.2f}" for p in dist))
    try:
        import matplotlib  # the optional extra (requirements-plots.txt)
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        plt.figure(figsize=(5, 3.5))
        plot(result, plt)
        plt.legend(fontsize=7)
        plt.tight_layout()
        plt.savefig(os.path.join(a.out, "gad_toy.png"), dpi=80)
        print(f"figure: {os.path.join(a.out, 'gad_toy.png')}")
    except ImportError:
        print("(pip install -r requirements-plots.txt for the figure)")
