"""exercises/check.py: passes on the project's own functions, fails on the shipped skeletons and on planted bugs."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "exercises"))
import check  # noqa: E402
import check5  # noqa: E402

HEAD = "import torch\nimport torch.nn.functional as F\n"

# a correct exercise-5 step; the planted bugs below each change one thing in it
STEP5 = """
from data import student_batch
from generator import group_advantages, reward_metrics, sample, sample_metrics
from train_gad import d_scores, d_update, g_update
def gad_step(G, D, ref, g_opt, d_opt, tok, batch, cfg, update_D=True):
    n = cfg.n_samples
    samples = sample(G, tok, batch.prompts, n, cfg.temperature, cfg.max_response_len, cfg.gen_batch_size)
    s_batch = student_batch(batch, samples, n, tok.pad_token_id)
    teacher_scores, student_scores, d_loss = d_scores(D, batch, s_batch, cfg, backward=update_D)
    rewards = student_scores
    advantages = group_advantages(rewards, n)
    m = d_update(D, d_opt, teacher_scores, student_scores, d_loss, cfg, step=update_D)
    m |= g_update(G, ref, g_opt, s_batch, advantages, cfg)
    return m | reward_metrics(rewards, n) | sample_metrics(samples, tok.eos_token_id), samples, rewards
"""

# (exercise, planted bug, source of the learner's wrong version)
PLANTED = [
    (1, "flipped sign", """
        def bt_loss(t, s, n):
            gap = s - t.repeat_interleave(n)
            return -F.logsigmoid(gap).mean(), {"d_acc": (gap > 0).float().mean().item()}"""),
    (1, "repeat instead of repeat_interleave", """
        def bt_loss(t, s, n):
            gap = t.repeat(n) - s
            return -F.logsigmoid(gap).mean(), {"d_acc": (gap > 0).float().mean().item()}"""),
    (1, "log(sigmoid()) underflows", """
        def bt_loss(t, s, n):
            gap = t.repeat_interleave(n) - s
            return -torch.log(torch.sigmoid(gap)).mean(), {"d_acc": (gap > 0).float().mean().item()}"""),
    (1, "sum instead of mean", """
        def bt_loss(t, s, n):
            gap = t.repeat_interleave(n) - s
            return -F.logsigmoid(gap).sum(), {"d_acc": (gap > 0).float().mean().item()}"""),
    (2, "no eps: all-equal rewards give NaN", """
        def group_advantages(r, n, eps=1e-6):
            r = r.view(-1, n)
            return ((r - r.mean(-1, keepdim=True)) / r.std(-1, keepdim=True)).view(-1)"""),
    (2, "normalised over the batch", """
        def group_advantages(r, n, eps=1e-6):
            return (r - r.mean()) / (r.std() + eps)"""),
    (2, "groups taken column-wise", """
        def group_advantages(r, n, eps=1e-6):
            r = r.view(n, -1)
            return ((r - r.mean(0, keepdim=True)) / (r.std(0, keepdim=True) + eps)).view(-1)"""),
    (3, "k3 with its arguments swapped", """
        def k3_kl(logp, ref):
            d = logp - ref
            return torch.exp(d) - d - 1
        def masked_mean(x, mask):
            return torch.where(mask.bool(), x, 0.0).sum() / mask.sum().clamp(min=1)"""),
    (3, "missing mask", """
        def k3_kl(logp, ref):
            d = ref - logp
            return torch.exp(d) - d - 1
        def masked_mean(x, mask):
            return x.mean()"""),
    (3, "x * mask and no clamp", """
        def k3_kl(logp, ref):
            d = ref - logp
            return torch.exp(d) - d - 1
        def masked_mean(x, mask):
            return (x * mask).sum() / mask.sum()"""),
    (3, "mean of per-sequence means", """
        def k3_kl(logp, ref):
            d = ref - logp
            return torch.exp(d) - d - 1
        def masked_mean(x, mask):
            m = mask.bool()
            return (torch.where(m, x, 0.0).sum(-1) / m.sum(-1).clamp(min=1)).mean()"""),
    (4, "off-by-one", """
        def last_token_index(mask):
            return mask.sum(-1)"""),
    (4, "right padding only", """
        def last_token_index(mask):
            return mask.sum(-1) - 1"""),
    (5, "rewards re-scored after D's update", STEP5.replace(
        "    advantages = group_advantages(rewards, n)\n    m = d_update(D, d_opt, teacher_scores, student_scores, "
        "d_loss, cfg, step=update_D)\n",
        "    m = d_update(D, d_opt, teacher_scores, student_scores, d_loss, cfg, step=update_D)\n"
        "    rewards = d_scores(D, batch, s_batch, cfg, backward=False)[1]\n"
        "    advantages = group_advantages(rewards, n)\n")),
    (5, "frozen D updated", STEP5.replace("step=update_D", "step=True")),
    (5, "advantages over the wrong groups", STEP5.replace("group_advantages(rewards, n)",
                                                          "group_advantages(rewards, cfg.batch_prompts)")),
    (5, "D's loss never back-propagated", STEP5.replace("backward=update_D", "backward=False")),
]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_project_passes(n, capsys):
    assert check.main([str(n), "--project", "--quick"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_shipped_skeleton_fails_with_not_written(n, capsys):
    assert check.main([str(n), "--quick"]) == 1
    assert "not written yet" in capsys.readouterr().out


def test_the_unplanted_step5_passes(tmp_path, capsys):
    """The base the exercise-5 bugs are planted in is itself correct, so each failure below is the bug's."""
    f = tmp_path / "right5.py"
    f.write_text(HEAD + STEP5)
    assert check.main(["5", "--file", str(f), "--quick"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("n,bug,src", PLANTED, ids=[f"{n}-{bug}" for n, bug, _ in PLANTED])
def test_planted_bug_fails(n, bug, src, tmp_path, capsys):
    f = tmp_path / f"wrong{n}.py"
    f.write_text(HEAD + textwrap.dedent(src))
    assert check.main([str(n), "--file", str(f), "--quick"]) == 1, f"check.py {n} passed a planted bug: {bug}"
    out = capsys.readouterr().out
    assert "FAIL" in out and "hint:" in out


def test_exercise5_tiny_run_learns_with_the_project_step():
    """The full check 5 (with its ~1 minute training run) in a subprocess, as a learner runs it."""
    p = subprocess.run([sys.executable, "exercises/check.py", "5", "--project"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "PASS  a tiny run learns" in p.stdout


def test_exercise5_learning_check_can_fail(tmp_path, monkeypatch):
    """A step that updates nothing must fail the learning check (the order checks are bypassed here)."""
    def idle_step(G, D, ref, g_opt, d_opt, tok, batch, cfg, update_D=True):
        return {"reward_mean": 0.0}, None, None
    monkeypatch.setattr(check5.tempfile, "mkdtemp", lambda prefix="": str(tmp_path))
    learns = dict((name, fn) for name, fn, _ in check5.checks_5(idle_step))["a tiny run learns"]
    with pytest.raises(check.Fail, match="did not learn"):
        learns()
