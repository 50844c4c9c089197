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
import json
import math
import os
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import torch  # noqa: E402

# number -> (skeleton file, project module, function names)
EXERCISES = {
    1: ("ex1_bt_loss.py", "discriminator", ["bt_loss"]),
    2: ("ex2_group_advantage.py", "generator", ["group_advantages"]),
    3: ("ex3_k3_token_mean.py", "generator", ["k3_kl", "masked_mean"]),
    4: ("ex4_last_token.py", "discriminator", ["last_token_index"]),
    5: ("ex5_gad_step.py", "train_gad", ["gad_step"]),
}


class Fail(Exception):
    pass


def expect(cond, message):
    if not cond:
        raise Fail(message)


def close(a, b, tol=1e-5):
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


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


# ---------------------------------------------------------------------------- 5. one GAD step
class Recorder:
    """Stand-ins for the step's building blocks: they record what was called, in which order, with what."""

    def __init__(self, update_D=True):
        self.calls, self.update_D = [], update_D
        self.teacher_scores = self.student_scores = self.advantages = self.d_loss = None

    def blocks(self, cfg):
        rec = self

        def sample(G, tok, prompts, n, temperature, max_new_tokens, gen_batch_size=64, eos_id=None):
            rec.calls.append("sample")
            expect(n == cfg.n_samples, f"sample got n={n}; sample cfg.n_samples={cfg.n_samples} responses per prompt")
            return [[3, 4, 1] for _ in range(len(prompts) * n)]

        def student_batch(batch, samples, n, pad_id):
            expect(samples is not None and len(samples) == len(batch.prompts) * n,
                   "student_batch needs this step's samples")
            return "s_batch"

        def d_scores(D_, batch, s_batch, cfg_, backward=True):
            expect("d_update" not in rec.calls, "D scored the samples after its update: the rewards are D's scores "
                   "*before* this step's update (Eq. 2)")
            expect(s_batch == "s_batch", "d_scores must score this step's samples (s_batch)")
            expect(backward == rec.update_D, f"d_scores(backward={backward}) when update_D={rec.update_D}: D's loss "
                   "must be back-propagated exactly when D is to be updated")
            rec.calls.append("d_scores")
            rec.teacher_scores = torch.zeros(cfg.batch_prompts)
            rec.student_scores = torch.arange(float(cfg.batch_prompts * cfg.n_samples))
            rec.d_loss = 0.69
            return rec.teacher_scores, rec.student_scores, rec.d_loss

        def group_advantages(rewards, n, eps=1e-6):
            rec.calls.append("advantages")
            expect(rewards is rec.student_scores, "the advantages must be computed from the rewards: d_scores' "
                   "scores of this step's samples, before D's update")
            expect(n == cfg.n_samples, f"group_advantages got n={n}; a group is the n_samples={cfg.n_samples} "
                   "samples of one prompt")
            rec.advantages = torch.zeros_like(rewards)
            return rec.advantages

        def d_update(D_, opt, teacher_scores, student_scores, loss, cfg_, step=True):
            rec.calls.append("d_update")
            expect(student_scores is rec.student_scores and teacher_scores is rec.teacher_scores and loss == rec.d_loss,
                   "d_update must get the teacher's and the samples' scores and D's loss of this step's d_scores")
            expect(step == rec.update_D, f"d_update(step={step}) when update_D={rec.update_D}: a frozen D "
                   "(--frozen-d) must not take an optimiser step")
            return {"d_loss": 0.69}

        def g_update(G, ref, opt, s_batch, advantages, cfg_):
            rec.calls.append("g_update")
            expect(advantages is rec.advantages, "g_update must get the group advantages of this step's rewards")
            expect(s_batch == "s_batch", "g_update trains on this step's samples (s_batch)")
            return {"kl": 0.0}

        return dict(sample=sample, student_batch=student_batch, group_advantages=group_advantages, d_scores=d_scores,
                    d_update=d_update, g_update=g_update, reward_metrics=lambda r, n: {"reward_mean": 0.0},
                    sample_metrics=lambda s, e: {"response_length": 2.0, "truncated": 0.0})


def run_step(f, update_D=True):
    cfg = types.SimpleNamespace(n_samples=4, batch_prompts=2, temperature=0.8, max_response_len=8, gen_batch_size=64,
                                d_steps=1)
    rec = Recorder(update_D)
    blocks = rec.blocks(cfg)
    g = types.FunctionType(f.__code__, {**f.__globals__, **blocks}, f.__name__, f.__defaults__, f.__closure__)
    batch = types.SimpleNamespace(idx=[0, 1], prompts=[[1, 2], [1, 3]], teacher="t_batch",
                                  teacher_for_d="t_batch_for_d")
    tok = types.SimpleNamespace(pad_token_id=0, eos_token_id=1)
    out = g(object(), object(), object(), object(), object(), tok, batch, cfg, update_D)
    expect(isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict),
           f"return (metrics, samples); got {type(out).__name__}")
    return rec, out


LEARN_RUN = ["--mode", "gad", "--pretrain-steps", "300", "--batch-prompts", "8", "--n-samples", "4",
             "--warmup-steps", "20", "--d-only-steps", "20", "--gad-steps", "40",
             "--eval-samples", "2", "--eval-models", "before,gad", "--save-every", "0", "--log-every", "10",
             "--sample-every", "1000"]
LEARN_GAIN = 0.15  # the project's own step: 0.344 -> 0.625 here (exercises/ex5_gad_step.md); a step doing nothing: +0


def checks_5(f):
    def order():
        rec, (m, samples) = run_step(f)
        expect(rec.calls in (["sample", "d_scores", "advantages", "d_update", "g_update"],
                             ["sample", "d_scores", "d_update", "advantages", "g_update"]),
               f"a GAD step called {rec.calls}; expected sample -> d_scores (the rewards) -> advantages -> "
               "d_update -> g_update: the paper's order")
        expect(samples is not None and len(samples) == 8, "return this step's samples (the logger prints one)")
        for k in ("reward_mean", "response_length", "kl"):
            expect(k in m, f"a GAD step's metrics should include {k} (the log shows it); got {sorted(m)}")

    def frozen():
        rec, _ = run_step(f, update_D=False)
        expect("d_update" in rec.calls, "with a frozen D the step still computes D's loss (its metrics are logged)")

    def learns():
        import train_gad
        out = tempfile.mkdtemp(prefix="ex5_")
        argv = ["--out-dir", out, *LEARN_RUN]
        print(f"      tiny run: python train_gad.py {' '.join(argv)}  (with your step; ~1 minute)", flush=True)
        saved = train_gad.gad_step
        train_gad.gad_step = f
        try:
            train_gad.main(argv)
        finally:
            train_gad.gad_step = saved
        ev = json.load(open(os.path.join(out, "eval.json")))
        before, after = ev["before"]["fidelity"], ev["gad"]["fidelity"]
        recs = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
        gad = [r for r in recs if r["stage"] == "gad"]
        print(f"      fidelity before {before:.3f} -> after GAD alone {after:.3f} (the warmup trained D only); "
              f"GAD steps logged: {len(gad)}; results in {out}")
        expect(len(gad) == 40 and all(r.get("reward_mean") is not None for r in gad),
               "every GAD step should log a reward")
        expect(after >= before + LEARN_GAIN, f"the tiny run did not learn: fidelity {before:.3f} -> {after:.3f} "
               f"(the project's own step gains more than {LEARN_GAIN} here, from GAD alone)")

    return [("GAD step order", order, "sample, then D's scores (= rewards, before D's update), advantages, "
             "d_update, g_update"),
            ("frozen D is not updated", frozen, "pass backward=update_D to d_scores and step=update_D to d_update"),
            ("a tiny run learns", learns, "compare your function with the lines given in the skeleton")]


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
