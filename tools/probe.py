"""Is the discriminator seeing? A probe of a finished embedded-world run's D, checked against the world's judge.
It reads the run's checkpoints and never changes them; nothing here is used in training.

    python tools/probe.py runs/default                     # the gad/ checkpoint (D after GAD)
    python tools/probe.py runs/default --checkpoint warmup  # D at the hand-off
    python tools/probe.py runs/default --fresh-teacher      # the fresh D sees a new teacher answer every step

    python tools/probe.py runs/default --fresh-target judge # the same backbone given the judge's labels
    python tools/probe.py runs/default --fresh-readout mean # the fresh D reads the mean of the response tokens

Writes <run>/probe_<checkpoint>.json (or --out) (temp file, then rename) and prints one line per number.

The run's D, on n fresh samples of its G per test prompt (at the run's temperature):
  d_auc, d_group_rank_acc, d_mixed_groups, d_acc_valid, d_acc_invalid   as eval.d_informativeness
  d_auc_same_length   the AUC over (valid, invalid) pairs of the same prompt and the same response length: any
                      score made of the prompt and the length alone gets exactly 0.5 here
  corr_length         Pearson correlation of D's score with the response's length, inside prompt groups
  corr_logp           ... with G's log-probability of the response (how often G says it): < 0 means D rewards what
                      G rarely says, a frequency signal, not a quality one
  d_auc_same_mode     the AUC over (valid, invalid) samples that follow the same teacher template (the invalid
                      ones break its constraints, e.g. a repeated adjective): a D that knows only the mode gets 0.5
  by_mode             per teacher mode: the share of G's samples in its template (teacher_share: the teacher's),
                      the share of those that break its constraints, D's mean score of them
  zero_variance_groups  the share of groups whose n scores are all equal: GRPO learns nothing from them
  identical_text      max |D(x, y) read as a teacher row - D(x, y) read as a sample row|, the rows built by the
                      training code itself (data.Data, data.student_batch): must be 0 (EOS and template parity)
A fresh D (G's backbone + a new head) trained by Bradley-Terry on frozen samples of G (--fresh-prompts train
prompts x n samples, every step the whole set), then read on the held-out test samples above:
  fresh_train_acc     pair accuracy on its own training pairs at the end; fresh_train_auc: its AUC there
  fresh_heldout_acc   pair accuracy on held-out prompts (a fresh teacher answer above each sample)
  fresh_heldout_auc, fresh_heldout_auc_same_length   as d_auc, d_auc_same_length
Verdicts, thresholds fixed before any probe was run:
  the run's D   sees      d_auc >= 0.7 and d_auc_same_length >= 0.7
                inverted  d_auc <= 0.4 (its reward pushes G toward invalid answers)
                blind     otherwise (includes a D that only reads length)
  the fresh D   sees validity           fresh_heldout_auc >= 0.7
                separates, not by validity   fresh_heldout_acc >= 0.6 (not with --fresh-target judge)
                memorises               fresh_train_acc >= 0.7 (--fresh-target judge: fresh_train_auc), and
                                        neither of the above
                too weak                otherwise
"""
import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root

import torch
import torch.nn.functional as F

import world
from checkpoint import write_json
from data import Data, pack, position_ids, prompt_ids, response_ids, student_batch
from discriminator import Discriminator, bt_loss
from eval import auc, d_informativeness, judged_valid, load, writable
from generator import sample, token_logprobs
from teacher import EmbeddedTeacher


def scores_of(D, ids, samples, n, pad_id, per=32):
    """D's scores [len(ids) * n] of the samples (sample i answers ids[i // n]), in chunks of `per` prompts."""
    with torch.no_grad():
        return torch.cat([D(pack([p for p in ids[i:i + per] for _ in range(n)], samples[i * n:(i + per) * n], pad_id))
                          for i in range(0, len(ids), per)])


def same_length_auc(scores, valid, lengths, n):
    """AUC over (valid, invalid) pairs inside one prompt group with the same response length; None without any."""
    wins = pairs = 0.0
    for g in range(0, len(scores), n):
        idx = range(g, g + n)
        for i in idx:
            for j in idx:
                if valid[i] and not valid[j] and lengths[i] == lengths[j]:
                    wins += (scores[i] > scores[j]) + 0.5 * (scores[i] == scores[j])
                    pairs += 1
    return wins / pairs if pairs else None


def template_mode(topic, text):
    """The teacher mode whose template a response follows, its constraints (distinct words) aside; else None."""
    return next((mode for mode, pattern in world._mode_patterns(topic).items() if pattern.match(text)), None)


def by_mode(prompts, samples, scores, valid, n, tok):
    """What D's score tracks inside the teacher's grammar: for each mode, the share of G's samples in its template
    (valid or not), the share of those that break its constraints, D's mean score of them; and the AUC of valid
    over invalid among samples of the same template (a D that only knows the mode gets 0.5 there)."""
    modes = [template_mode(world.topic_of(prompts[i // n]), tok.decode(x, skip_special_tokens=True).strip())
             for i, x in enumerate(samples)]
    out = {}
    wins = pairs = 0.0
    for mode in world.TEACHER_MODES:
        idx = [i for i, m in enumerate(modes) if m == mode]
        good = [scores[i] for i in idx if valid[i]]
        bad = [scores[i] for i in idx if not valid[i]]
        out[mode] = {"share": len(idx) / len(samples), "broken": len(bad) / len(idx) if idx else None,
                     "mean_score": sum(scores[i] for i in idx) / len(idx) if idx else None}
        if good and bad:
            wins += auc(good, bad) * len(good) * len(bad)
            pairs += len(good) * len(bad)
    return out, (wins / pairs if pairs else None)


def within_group_corr(x, y, n):
    """Pearson correlation of x and y after each prompt group's mean is removed from both; None if constant."""
    x = torch.tensor(x, dtype=torch.float64).view(-1, n)
    y = torch.tensor(y, dtype=torch.float64).view(-1, n)
    x = (x - x.mean(1, keepdim=True)).flatten()
    y = (y - y.mean(1, keepdim=True)).flatten()
    den = (x.norm() * y.norm()).item()
    return (x @ y).item() / den if den > 0 else None


def sequence_logp(G, ids, samples, n, pad_id, temperature, per=32):
    """G's log-probability of each sample (summed over its tokens, EOS included) at `temperature`."""
    out = []
    with torch.no_grad():
        for i in range(0, len(ids), per):
            batch = pack([p for p in ids[i:i + per] for _ in range(n)], samples[i * n:(i + per) * n], pad_id)
            out += (token_logprobs(G, batch, temperature) * batch["response_mask"]).sum(-1).tolist()
    return out


def identical_text(D, tok, cfg, prompts, samples):
    """The same text as a teacher answer and as a G sample must score the same, built by the training code."""
    texts = [tok.decode(s, skip_special_tokens=True).strip() for s in samples]
    keep = [i for i, t in enumerate(texts) if t and len(response_ids(tok, t)) <= cfg.max_response_len]  # Data's rule
    if not keep:
        return None
    cfg = argparse.Namespace(**{**vars(cfg), "batch_prompts": len(keep)})
    data = Data(tok, [prompts[i] for i in keep], [texts[i] for i in keep], cfg, lambda *a: None)
    batch = data.next()
    rows = [response_ids(tok, data.teacher_texts[i]) for i in batch.idx]  # each text as G would end it (EOS)
    with torch.no_grad():
        t = D(batch.teacher_for_d)
        s = D(student_batch(batch, rows, 1, tok.pad_token_id))
    return (t - s).abs().max().item()


class MeanPoolD(Discriminator):
    """--fresh-readout mean: D's head on the mean of the response tokens' final hidden states (not the last one)."""

    def forward(self, batch):
        mask = batch["attention_mask"]
        h = self.backbone(input_ids=batch["input_ids"], attention_mask=mask,
                          position_ids=position_ids(mask)).last_hidden_state           # [B, L, H]
        r = batch["response_mask"].unsqueeze(-1).to(h.dtype)                            # [B, L, 1]
        return self.head((h * r).sum(1) / r.sum(1).clamp(min=1)).squeeze(-1).float()  # [B]


def balanced_bce(scores, valid):
    """--fresh-target judge: the judge's labels directly, each class weighted 1/2 (an upper bound, not GAD)."""
    v = torch.tensor(valid)
    terms = [-F.logsigmoid(side).mean() for side in (scores[v], -scores[~v]) if len(side)]   # a class may be absent
    return sum(terms) / len(terms)


def train_fresh_d(G_path, tok, ids, samples, n, teacher, prompts, steps, lr, fresh_teacher, seed, readout="last",
                  target="bt", valid=None):
    """A new D on G's backbone, trained on frozen samples (each step: every training pair) by Bradley-Terry
    against the teacher's answers, or (target "judge") on the judge's labels. -> (D, pair accuracy, train AUC)."""
    torch.manual_seed(seed)
    D = (MeanPoolD if readout == "mean" else Discriminator).from_pretrained(G_path)
    opt = torch.optim.AdamW(D.parameters(), lr=lr, weight_decay=0.01)
    answers = [response_ids(tok, teacher.respond(m)[0]) for m in prompts]
    s_batch = pack([p for p in ids for _ in range(n)], samples, tok.pad_token_id)
    rng = random.Random(seed)  # the embedded teacher is deterministic per (seed, prompt): fresh answers need an RNG
    for _ in range(steps):
        if fresh_teacher:
            answers = [response_ids(tok, world.teacher_respond(m, rng)) for m in prompts]
        if target == "judge":
            loss = balanced_bce(D(s_batch), valid)
        else:
            loss = bt_loss(D(pack(ids, answers, tok.pad_token_id)), D(s_batch), n)[0]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(D.parameters(), 1.0)
        opt.step()
    with torch.no_grad():
        s = D(s_batch)
        _, m = bt_loss(D(pack(ids, answers, tok.pad_token_id)), s, n)
    s = s.tolist()
    return D.eval(), m["d_acc"], auc([x for x, v in zip(s, valid) if v], [x for x, v in zip(s, valid) if not v])


def verdicts(r):
    same = r["d_auc_same_length"]
    run_d = ("sees" if r["d_auc"] is not None and r["d_auc"] >= 0.7 and same is not None and same >= 0.7 else
             "inverted" if r["d_auc"] is not None and r["d_auc"] <= 0.4 else "blind")
    fresh = None
    if "fresh_train_acc" in r:  # (trained on the judge's labels: its training AUC is what it fits)
        judge = r["_config"]["fresh_target"] == "judge"
        fresh = ("sees validity" if (r["fresh_heldout_auc"] or 0) >= 0.7 else
                 "separates, not by validity" if r["fresh_heldout_acc"] >= 0.6 and not judge else
                 "memorises" if ((r["fresh_train_auc"] if judge else r["fresh_train_acc"]) or 0) >= 0.7 else
                 "too weak")
    return run_d, fresh


def probe(run_dir, checkpoint="gad", n=8, fresh_prompts=16, fresh_steps=400, fresh_lr=1e-3, fresh_teacher=False,
          fresh_readout="last", fresh_target="bt", seed=0, D=None, test_prompts=None, log=print, out=""):
    """The numbers of the module docstring for run_dir/<checkpoint>; D: a planted discriminator instead of the
    checkpoint's (tests). test_prompts: how many test prompts to use (None = all 128)."""
    import train_gad
    cfg = train_gad.parse_args(["--config", os.path.join(run_dir, "config.json"), "--out-dir", run_dir])
    if cfg.student != "embedded" or cfg.teacher != "embedded":
        raise SystemExit(f"probe.py: {run_dir} is not an embedded-world run: only the embedded world has a judge")
    world.use(cfg.world)
    G_path = os.path.join(run_dir, checkpoint, "generator")
    D_path = os.path.join(run_dir, checkpoint, "discriminator")
    if not os.path.isdir(G_path) or (D is None and not os.path.isdir(D_path)):
        raise SystemExit(f"probe.py: {run_dir}/{checkpoint} holds no generator/ and discriminator/ to probe")
    out = out or os.path.join(run_dir, f"probe_{checkpoint}.json")
    writable(out)
    tok, G = load(G_path)
    D = (D or Discriminator.from_pretrained(D_path)).eval()
    prompts = world.prompts("test")[:test_prompts]
    T = cfg.temperature
    torch.manual_seed(seed)
    ids = [prompt_ids(tok, m) for m in prompts]
    samples = sample(G, tok, ids, n, T, cfg.max_response_len)
    r = d_informativeness(D, G, tok, prompts, n, T, cfg.max_response_len, seed, samples)
    valid = judged_valid(prompts, samples, n, tok)
    scores = scores_of(D, ids, samples, n, tok.pad_token_id).tolist()
    lengths = [len(s) for s in samples]
    r["d_auc_same_length"] = same_length_auc(scores, valid, lengths, n)
    r["corr_length"] = within_group_corr(scores, lengths, n)
    r["corr_logp"] = within_group_corr(scores, sequence_logp(G, ids, samples, n, tok.pad_token_id, T), n)
    groups = torch.tensor(scores).view(-1, n)
    r["by_mode"], r["d_auc_same_mode"] = by_mode(prompts, samples, scores, valid, n, tok)
    teacher = EmbeddedTeacher(seed=seed + 999)
    t_modes = [world.judge(world.topic_of(m), a)["mode"] for m in prompts for a in teacher.respond(m, n)]
    for mode in r["by_mode"]:
        r["by_mode"][mode]["teacher_share"] = t_modes.count(mode) / len(t_modes)
    r["zero_variance_groups"] = ((groups.max(1).values - groups.min(1).values) <= 1e-6).float().mean().item()
    r["identical_text"] = identical_text(D, tok, cfg, prompts, samples[::n])
    r["valid_share"] = sum(valid) / len(valid)
    if fresh_steps:
        train = world.prompts("train")[:fresh_prompts]
        train_ids = [prompt_ids(tok, m) for m in train]
        train_samples = sample(G, tok, train_ids, n, T, cfg.max_response_len)
        fresh, r["fresh_train_acc"], r["fresh_train_auc"] = train_fresh_d(
            G_path, tok, train_ids, train_samples, n, EmbeddedTeacher(seed=seed + 777), train, fresh_steps, fresh_lr,
            fresh_teacher, seed, fresh_readout, fresh_target, judged_valid(train, train_samples, n, tok))
        f = scores_of(fresh, ids, samples, n, tok.pad_token_id).tolist()
        answers = [response_ids(tok, EmbeddedTeacher(seed=seed + 54321).respond(m)[0]) for m in prompts]
        with torch.no_grad():
            t = fresh(pack(ids, answers, tok.pad_token_id)).tolist()
        r["fresh_heldout_acc"] = sum(t[i // n] > s for i, s in enumerate(f)) / len(f)
        r["fresh_heldout_auc"] = auc([s for s, v in zip(f, valid) if v], [s for s, v in zip(f, valid) if not v])
        r["fresh_heldout_auc_same_length"] = same_length_auc(f, valid, lengths, n)
    r["_config"] = {"checkpoint": checkpoint, "samples_per_prompt": n, "test_prompts": len(prompts),
                    "temperature": T, "fresh_prompts": fresh_prompts, "fresh_steps": fresh_steps, "fresh_lr": fresh_lr,
                    "fresh_teacher": fresh_teacher, "fresh_readout": fresh_readout, "fresh_target": fresh_target,
                    "seed": seed}
    r["verdict"], r["fresh_verdict"] = verdicts(r)
    write_json(out, r)
    for k, v in r.items():
        if k != "_config":
            log(f"{k:>30}  {v:.3f}" if isinstance(v, float) else f"{k:>30}  {json_round(v)}")
    return r


def json_round(v):
    if isinstance(v, dict):
        return {k: json_round(x) for k, x in v.items()}
    return round(v, 3) if isinstance(v, float) else v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a finished embedded-world run folder (runs/x)")
    ap.add_argument("--checkpoint", default="gad", choices=("warmup", "gad"), help="whose D (default: gad)")
    ap.add_argument("--samples", type=int, default=8, help="G's samples per test prompt (default: 8)")
    ap.add_argument("--test-prompts", type=int, default=0, help="the first this many test prompts (0 = all 128)")
    ap.add_argument("--fresh-prompts", type=int, default=16, help="train prompts of the fresh D (default: 16)")
    ap.add_argument("--fresh-steps", type=int, default=400, help="the fresh D's steps; 0 = no fresh D (default: 400)")
    ap.add_argument("--fresh-lr", type=float, default=1e-3, help="the fresh D's learning rate (default: 1e-3)")
    ap.add_argument("--fresh-teacher", action="store_true", help="a new teacher answer per pair every step")
    ap.add_argument("--fresh-readout", default="last", choices=("last", "mean"),
                    help="the fresh D reads the last token (the paper's) or the mean of the response tokens")
    ap.add_argument("--fresh-target", default="bt", choices=("bt", "judge"),
                    help="the fresh D learns Bradley-Terry (GAD's) or the judge's labels (an upper bound)")
    ap.add_argument("--out", default="", help="the JSON's path (default: <run>/probe_<checkpoint>.json)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for flag, value, low in (("--samples", a.samples, 2), ("--fresh-prompts", a.fresh_prompts, 1),
                             ("--test-prompts", a.test_prompts, 0), ("--fresh-steps", a.fresh_steps, 0)):
        if value < low:
            ap.error(f"{flag} must be >= {low}, got {value}")
    if not os.path.isfile(os.path.join(a.run_dir, "config.json")):
        ap.error(f"{a.run_dir}: not a run folder (no config.json)")
    probe(a.run_dir, a.checkpoint, a.samples, a.fresh_prompts, a.fresh_steps, a.fresh_lr, a.fresh_teacher,
          a.fresh_readout, a.fresh_target, a.seed, test_prompts=a.test_prompts or None, out=a.out)


if __name__ == "__main__":
    main()
