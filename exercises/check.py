"""Self-checks for the exercises: property checks run against *your* version of a project function.

    python exercises/check.py 1              # checks the function you wrote in exercises/ex1_bt_loss.py
    python exercises/check.py 1 --project    # the same checks against the project's own function (all pass)
    python exercises/check.py 1 --file F.py  # checks the function of that name in another file

  1  discriminator.bt_loss             Bradley-Terry discriminator loss (paper Eq. 3)
  2  generator.group_advantages        group-normalised advantage (paper Eq. 6), all-equal rewards included
  3  generator.k3_kl + masked_mean     the k3 KL estimator and token-mean aggregation with masks
  4  discriminator.last_token_index    where D reads its score, under left and right padding
  5  train_gad.gad_step                one GAD step in the paper's order, then a tiny run it alone teaches (~1 min)

Each check prints PASS or FAIL with what went wrong and a hint. The exit status is 0 only when all pass.
The checks compute the expected values their own way (plain Python loops, Monte Carlo), never by calling
the project's function, so they would catch a bug in the project too.
"""
import argparse
import importlib
import importlib.util
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from check5 import checks_5  # noqa: E402  (exercise 5, the longest, in a file of its own)
from checking import Fail, close, expect  # noqa: E402,F401

# number -> (skeleton file, project module, function names)
EXERCISES = {
    1: ("ex1_bt_loss.py", "discriminator", ["bt_loss"]),
    2: ("ex2_group_advantage.py", "generator", ["group_advantages"]),
    3: ("ex3_k3_token_mean.py", "generator", ["k3_kl", "masked_mean"]),
    4: ("ex4_last_token.py", "discriminator", ["last_token_index"]),
    5: ("ex5_gad_step.py", "train_gad", ["gad_step"]),
}


# ---------------------------------------------------------------------------- 1. Bradley-Terry loss
def bt_reference(t, s, n):
    """mean over pairs (prompt i, sample j) of -log sigmoid(t_i - s_ij), in plain Python."""
    total = 0.0
    for k, s_k in enumerate(s):
        gap = t[k // n] - s_k
        total += math.log1p(math.exp(-gap)) if gap > -30 else -gap + math.log1p(math.exp(gap))
    return total / len(s)


def checks_1(f):
    def value():
        t, s = [0.5, -1.0], [0.2, 0.9, -0.3, -2.0, -1.0, 1.5]        # B = 2 prompts, n = 3 samples each
        loss, metrics = f(torch.tensor(t), torch.tensor(s), 3)
        expect(torch.is_tensor(loss) and loss.dim() == 0, f"the loss must be a 0-dim tensor, got {loss!r}")
        expect(isinstance(metrics, dict), "return (loss, metrics) with metrics a dict")
        want = bt_reference(t, s, 3)
        expect(close(loss.item(), want), f"loss {loss.item():.6f}, expected {want:.6f} for teacher {t}, students {s}")

    def ln2():
        loss, _ = f(torch.zeros(4), torch.zeros(8), 2)
        expect(close(loss.item(), math.log(2)), f"equal scores should give ln 2 = 0.6931, got {loss.item():.4f}")

    def direction():
        t, s = torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0, 0.0, 0.0])
        base = f(t, s, 2)[0].item()
        expect(f(t + 1, s, 2)[0].item() < base,
               "raising the teacher's scores must lower D's loss (D ranks teacher first)")
        expect(f(t, s + 1, 2)[0].item() > base, "raising the students' scores must raise D's loss")

    def pairing():
        # each student sample is paired with ITS prompt's teacher response: samples are grouped by prompt
        t, s = [3.0, -3.0], [2.0, 2.5, -3.5, -2.5]
        loss, _ = f(torch.tensor(t), torch.tensor(s), 2)
        want = bt_reference(t, s, 2)
        expect(close(loss.item(), want), f"loss {loss.item():.5f}, expected {want:.5f}: sample k of a [B*n] batch "
               "belongs to prompt k // n (repeat_interleave, not repeat)")

    def gradient():
        t = torch.tensor([0.3, -0.2], requires_grad=True)
        s = torch.tensor([0.1, 0.4, 0.0, -0.6], requires_grad=True)
        f(t, s, 2)[0].backward()
        tv, sv = t.detach().tolist(), s.detach().tolist()
        for k in range(4):  # d/ds_k mean(-log sigmoid(t - s)) = sigmoid(-(t - s_k)) / (B*n)
            want = 1 / (1 + math.exp(tv[k // 2] - sv[k])) / 4
            expect(s.grad is not None and close(s.grad[k].item(), want, 1e-4),
                   f"d loss / d s[{k}] = {None if s.grad is None else s.grad[k].item()}, expected {want:.5f}")

    def stable():
        loss, _ = f(torch.tensor([-100.0]), torch.tensor([100.0, 100.0]), 2)
        expect(torch.isfinite(loss) and close(loss.item(), 200.0, 1e-3),
               f"a gap of -200 should give a loss of ~200, got {loss.item()} (log(sigmoid(x)) underflows)")

    def accuracy():
        _, m = f(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0, -1.0, 1.0]), 2)
        expect("d_acc" in m,
               f"metrics should include d_acc (fraction of pairs with D(teacher) > D(student)); got {sorted(m)}")
        expect(close(m["d_acc"], 0.5), f"d_acc {m['d_acc']}, expected 0.5 (2 of 4 pairs ranked right)")

    return [("value on a small batch", value, "L = mean over all B*n pairs of -log sigmoid(D(x,y_t) - D(x,y_s))"),
            ("equal scores give ln 2", ln2, "sigmoid(0) = 1/2"),
            ("direction: D wants teacher above student", direction, "the gap is teacher minus student"),
            ("each sample meets its own prompt's teacher", pairing, "teacher_scores.repeat_interleave(n)"),
            ("gradient", gradient, "take the mean over pairs, not the sum"),
            ("numerically stable", stable, "use torch.nn.functional.logsigmoid, not torch.log(torch.sigmoid(...))"),
            ("d_acc metric", accuracy, "(gap > 0).float().mean()")]


# ---------------------------------------------------------------------------- 2. group advantages
def checks_2(f):
    def shape_and_order():
        r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 40.0])             # prompt 0: 1,2,3; prompt 1: 10,10,40
        a = f(r, 3)
        expect(a.shape == r.shape, f"advantages must have the rewards' shape {tuple(r.shape)}, got {tuple(a.shape)}")
        for g in range(2):
            grp = r[3 * g:3 * g + 3].tolist()
            m = sum(grp) / 3
            for sd in (math.sqrt(sum((x - m) ** 2 for x in grp) / 3), math.sqrt(sum((x - m) ** 2 for x in grp) / 2)):
                want = [(x - m) / (sd + 1e-6) for x in grp]
                if all(close(a[3 * g + i].item(), want[i], 1e-4) for i in range(3)):
                    break
            else:
                raise Fail(f"group {g} {grp}: got {a[3 * g:3 * g + 3].tolist()}, expected (r - mean) / (std + 1e-6) "
                           f"within the group, e.g. {[round(w, 4) for w in want]}")

    def zero_mean():
        torch.manual_seed(0)
        r = torch.randn(5 * 8) * 3 + 7
        a = f(r, 8).view(5, 8)
        expect(a.mean(-1).abs().max().item() < 1e-5,
               f"each group's advantages should have mean 0, got {a.mean(-1).tolist()}")

    def all_equal():
        a = f(torch.tensor([2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 2.0, 3.0]), 4)
        expect(torch.isfinite(a).all(), f"all-equal rewards gave {a.tolist()}: 0 / 0 -- add eps to the std")
        expect(a[:4].abs().max().item() == 0.0,
               f"a group whose rewards are all equal carries no signal: expected zeros, got {a[:4].tolist()}")
        expect(a[4:].abs().max().item() > 0.5, "the second group (0, 1, 2, 3) should keep non-zero advantages")

    def invariance():
        torch.manual_seed(1)
        r = torch.randn(3 * 4)
        shift = torch.tensor([5.0, -3.0, 100.0]).repeat_interleave(4)
        a, b = f(r, 4), f(2.5 * r + shift, 4)
        expect(torch.allclose(a, b, atol=1e-4), "adding a constant to one prompt's rewards, or scaling all rewards by "
               "a positive factor, must not change the advantages (D's scores have no fixed offset or scale)")

    def groups_not_batch():
        r = torch.tensor([0.0, 1.0, 100.0, 101.0])
        a = f(r, 2)
        expect(close(a[0].item(), a[2].item(), 1e-4) and a[0].item() < 0,
               f"advantages {a.tolist()}: the mean and std are per prompt (group of n), not over the batch")

    return [("values and grouping", shape_and_order, "r.view(-1, n): row i holds prompt i's n samples"),
            ("zero mean per group", zero_mean, "subtract the group mean"),
            ("all-equal rewards give zeros, not NaN", all_equal, "(r - mean) / (std + eps), eps = 1e-6"),
            ("invariant to shift and scale", invariance, "normalise by the group std"),
            ("normalised per prompt, not per batch", groups_not_batch, "mean(-1, keepdim=True) on the [B, n] view")]


# ---------------------------------------------------------------------------- 3. k3 and the masked token mean
def checks_3(k3, masked_mean):
    def k3_formula():
        logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])
        got = k3(logp, ref)
        want = [math.exp(r - l) - (r - l) - 1 for l, r in zip(logp.tolist(), ref.tolist())]
        expect(got.shape == logp.shape and all(close(g, w) for g, w in zip(got.tolist(), want)),
               f"k3({logp.tolist()}, {ref.tolist()}) = {got.tolist()}, expected {[round(w, 5) for w in want]}")

    def k3_nonneg():
        torch.manual_seed(0)
        v = k3(torch.randn(1000) * 3, torch.randn(1000) * 3)
        expect(v.min().item() >= -1e-6, f"k3 is exp(d) - d - 1 >= 0 for every token; got min {v.min().item()}")
        expect(k3(torch.tensor([-0.7]), torch.tensor([-0.7])).abs().item() < 1e-7, "k3 must be 0 when logp == ref")

    def k3_unbiased():
        # samples from pi: the mean of k3 estimates KL(pi || ref), the direction GRPO penalises
        pi, ref = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.3, 0.5])
        g = torch.Generator().manual_seed(0)
        y = torch.multinomial(pi, 200_000, replacement=True, generator=g)
        est = k3(pi.log()[y], ref.log()[y]).mean().item()
        kl = sum(p * math.log(p / q) for p, q in zip(pi.tolist(), ref.tolist()))
        expect(abs(est - kl) < 0.02, f"mean k3 over samples from pi = {est:.4f}, but KL(pi || ref) = {kl:.4f}: "
               "check the argument order (d = ref_logp - logp)")

    def mean_token_level():
        x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 0.0, 0.0, 0.0]])
        mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
        got = masked_mean(x, mask).item()
        expect(close(got, 4.0), f"got {got}, expected (1+2+3+4+10) / 5 = 4.0: one mean over all response tokens of the "
               "batch (per-sequence means first would give 6.25)")

    def mean_ignores_masked():
        x = torch.tensor([[1.0, float("nan"), float("inf")], [3.0, 5.0, -float("inf")]])
        mask = torch.tensor([[1, 0, 0], [1, 1, 0]])
        got = masked_mean(x, mask)
        expect(torch.isfinite(got) and close(got.item(), 3.0),
               f"got {got.item()}, expected 3.0: masked-out positions (padding) can hold NaN or inf; "
               "x * mask keeps them")

    def mean_all_masked():
        got = masked_mean(torch.ones(2, 3), torch.zeros(2, 3))
        expect(torch.isfinite(got) and got.item() == 0.0, f"an all-masked batch must give 0, not {got.item()} "
               "(a response truncated to zero tokens happens)")

    def mean_gradient():
        x = torch.ones(2, 3, requires_grad=True)
        masked_mean(x, torch.tensor([[1, 1, 0], [0, 1, 0]])).backward()
        want = [[1 / 3, 1 / 3, 0.0], [0.0, 1 / 3, 0.0]]
        expect(x.grad is not None and torch.allclose(x.grad, torch.tensor(want)),
               f"gradient {None if x.grad is None else x.grad.tolist()}, expected {want}: no gradient through padding")

    return [("k3 value", k3_formula, "d = ref_logp - logp; k3 = exp(d) - d - 1"),
            ("k3 >= 0 and 0 at equality", k3_nonneg, "exp(d) >= 1 + d"),
            ("k3 estimates KL(pi || ref) on samples from pi", k3_unbiased, "E_pi[exp(d)] = 1 when d = log(ref / pi)"),
            ("token mean over the whole batch", mean_token_level, "sum of x over mask / number of mask tokens"),
            ("padding values never leak", mean_ignores_masked, "torch.where(mask.bool(), x, 0.0), not x * mask"),
            ("all-masked gives 0", mean_all_masked, "clamp the token count to >= 1"),
            ("gradient only through response tokens", mean_gradient, "divide by the count of mask tokens")]


# ---------------------------------------------------------------------------- 4. last-token read-out
def checks_4(f):
    def check(mask, want, what):
        got = f(torch.tensor(mask))
        expect(torch.is_tensor(got) and got.dtype in (torch.int64, torch.int32),
               f"return integer indices (a LongTensor), got {got!r}")
        expect(got.tolist() == want, f"{what}: mask {mask} -> {got.tolist()}, expected {want}")

    return [("right padding", lambda: check([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], [2, 4], "right padding"),
             "the last position whose mask is 1"),
            ("left padding", lambda: check([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], [4, 4], "left padding"),
             "with left padding the last token is the last column: mask.sum(-1) - 1 is wrong here"),
            ("no padding and one-token rows", lambda: check([[1, 1, 1], [0, 0, 1], [1, 0, 0]], [2, 2, 0], "edge rows"),
             "positions count from 0"),
            ("a score ignores the padding side", lambda: padding_invariance(f),
             "read the hidden state at the index you return, for every row")]


def padding_invariance(f):
    """Read a fake per-position 'hidden state' at the index for the same tokens padded left and right."""
    tokens = [5.0, 7.0, 9.0]
    right = torch.tensor([tokens + [0.0, 0.0]])
    left = torch.tensor([[0.0, 0.0] + tokens])
    i_r = f(torch.tensor([[1, 1, 1, 0, 0]]))
    i_l = f(torch.tensor([[0, 0, 1, 1, 1]]))
    expect(right[0, i_r[0]].item() == 9.0 and left[0, i_l[0]].item() == 9.0,
           f"the same response read {right[0, i_r[0]].item()} (right-padded) and {left[0, i_l[0]].item()} "
           "(left-padded);"
           " both should read its last token (9.0), e.g. the EOS")


CHECKS = {1: checks_1, 2: checks_2, 3: checks_3, 4: checks_4, 5: checks_5}
SLOW = {"a tiny run learns"}  # skipped with --quick


# ---------------------------------------------------------------------------- running
def load(n, project=False, file=None):
    skeleton, module, names = EXERCISES[n]
    if project:
        mod = importlib.import_module(module)
        where = f"the project's {module}.py"
    else:
        path = file or os.path.join(HERE, skeleton)
        if not os.path.exists(path):
            raise SystemExit(f"check.py: {path} not found")
        spec = importlib.util.spec_from_file_location(f"exercise{n}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        where = os.path.relpath(path)
    missing = [x for x in names if not callable(getattr(mod, x, None))]
    if missing:
        raise SystemExit(f"check.py: {where} defines no function named {', '.join(missing)}")
    return [getattr(mod, x) for x in names], where


def run(n, project=False, file=None, quick=False):
    funcs, where = load(n, project, file)
    print(f"Exercise {n}: checking {', '.join(f.__name__ for f in funcs)} from {where}")
    checks = [c for c in CHECKS[n](*funcs) if not (quick and c[0] in SLOW)]
    failed = 0
    for name, check, hint in checks:
        try:
            check()
            print(f"  PASS  {name}")
        except NotImplementedError:
            failed += 1
            print(f"  FAIL  {name}: not written yet (the skeleton still raises NotImplementedError)")
        except Fail as e:
            failed += 1
            print(f"  FAIL  {name}: {e}\n        hint: {hint}")
        except Exception as e:  # a crash in the learner's code is a failed check, with its message
            failed += 1
            print(f"  FAIL  {name}: {type(e).__name__}: {e}\n        hint: {hint}")
    print(f"{len(checks) - failed}/{len(checks)} checks passed" + ("" if failed else " -- well done")
          + (" (--quick: the tiny training run was skipped)" if quick and len(checks) < len(CHECKS[n](*funcs)) else ""))
    return 1 if failed else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exercise", type=int, choices=sorted(EXERCISES), help="exercise number")
    ap.add_argument("--project", action="store_true", help="check the project's own implementation instead")
    ap.add_argument("--file", default=None, help="check the function in this file instead of the skeleton")
    ap.add_argument("--quick", action="store_true", help="skip the checks that train a tiny run (exercise 5)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    return run(a.exercise, a.project, a.file, a.quick)


if __name__ == "__main__":
    sys.exit(main())
