"""Unit and property tests of every loss, advantage and mask."""
import math

import pytest
import torch

import discriminator as D
import generator as G
import world
from data import pack, prompt_ids, response_ids


def test_bt_loss_is_ln2_for_equal_scores():
    t, s = torch.zeros(3), torch.zeros(3 * 4)
    loss, m = D.bt_loss(t, s, n=4)
    assert abs(loss.item() - math.log(2)) < 1e-6
    assert m["d_acc"] == 0.0  # ties are not counted as correct


def test_bt_gradient_raises_teacher_and_lowers_student():
    t = torch.randn(3, requires_grad=True)
    s = torch.randn(12, requires_grad=True)
    loss, _ = D.bt_loss(t, s, n=4)
    loss.backward()
    assert (t.grad < 0).all(), "descending the loss must raise every teacher score"
    assert (s.grad > 0).all(), "descending the loss must lower every student score"


def test_bt_pairs_each_sample_with_its_own_prompts_teacher():
    t = torch.tensor([10.0, -10.0])             # prompt 0's teacher scores high, prompt 1's low
    s = torch.tensor([0.0, 0.0, 0.0, 0.0])       # n = 2 samples per prompt
    _, m = D.bt_loss(t, s, n=2)
    assert m["d_acc"] == 0.5                     # right for prompt 0's pairs, wrong for prompt 1's


def test_bce_loss_direction():
    t = torch.zeros(2, requires_grad=True)
    s = torch.zeros(4, requires_grad=True)
    loss, _ = D.bce_loss(t, s, n=2)
    loss.backward()
    assert abs(loss.item() - 2 * math.log(2)) < 1e-6
    assert (t.grad < 0).all() and (s.grad > 0).all()


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_plain_python_and_stops_at_its_target_gap(eps):
    t, s = torch.tensor([1.5, -0.5]), torch.tensor([0.2, 2.0, -1.0, 0.0])       # n = 2
    loss, _ = D.bt_loss(t, s, n=2, smoothing=eps)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    pairs = [(1.5, 0.2), (1.5, 2.0), (-0.5, -1.0), (-0.5, 0.0)]
    expected = sum(-(1 - eps) * math.log(sig(a - b)) - eps * math.log(sig(b - a)) for a, b in pairs) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    if eps:  # the per-pair minimum: gap = log((1 - eps) / eps), no longer +infinity
        gap = torch.tensor([math.log((1 - eps) / eps)], requires_grad=True)
        D.bt_loss(gap, torch.zeros(1), n=1, smoothing=eps)[0].backward()
        assert abs(gap.grad.item()) < 1e-6
        t = torch.tensor([math.log((1 - eps) / eps)], requires_grad=True)
        s = torch.tensor([-math.log((1 - eps) / eps)], requires_grad=True)
        D.bce_loss(t, s, n=1, smoothing=eps)[0].backward()            # BCE: targets 1 - eps and eps
        assert abs(t.grad.item()) < 1e-6 and abs(s.grad.item()) < 1e-6


def test_group_advantages_zero_mean_unit_scale():
    torch.manual_seed(0)
    r = torch.randn(5 * 8) * 3 + 7
    a = G.group_advantages(r, n=8).view(5, 8)
    assert torch.allclose(a.mean(-1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(a.std(-1, unbiased=False), torch.ones(5), atol=1e-3)
    # order within the group is kept: the best sample gets the largest advantage
    assert (a.argmax(-1) == r.view(5, 8).argmax(-1)).all()


def test_group_advantages_identical_rewards_give_zeros_not_nan():
    r = torch.tensor([1.5] * 4 + [0.0, 1.0, 2.0, 3.0])
    a = G.group_advantages(r, n=4)
    assert torch.isfinite(a).all()
    assert (a[:4] == 0).all()
    assert a[4:].abs().sum() > 0


def test_k3_zero_when_equal_and_nonnegative():
    torch.manual_seed(0)
    x = torch.randn(1000) * 5
    assert torch.equal(G.k3_kl(x, x), torch.zeros(1000))
    y = torch.randn(1000) * 5
    kl = G.k3_kl(x, y)
    assert (kl >= 0).all() and (kl > 0).any()


def test_k3_is_an_unbiased_kl_estimate():
    # samples from p; E_p[k3] = KL(p || q)
    torch.manual_seed(0)
    p = torch.distributions.Categorical(logits=torch.tensor([1.0, 0.0, -1.0]))
    q = torch.distributions.Categorical(logits=torch.tensor([0.0, 0.5, 0.0]))
    x = p.sample((200000,))
    est = G.k3_kl(p.log_prob(x), q.log_prob(x)).mean()
    assert abs(est.item() - torch.distributions.kl_divergence(p, q).item()) < 0.01


def test_masked_mean_ignores_masked_entries_and_never_nans():
    x = torch.tensor([[1.0, 2.0, 100.0], [float("nan"), 5.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert G.masked_mean(x, mask).item() == 1.5
    assert G.masked_mean(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0  # all masked: 0, not NaN


def test_policy_loss_all_masked_row_is_finite():
    logp = torch.randn(2, 5, requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 0, 0, 0]])
    loss, m = G.policy_loss(logp, logp.detach(), logp.detach(), torch.tensor([1.0, -1.0]), mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert (logp.grad[1] == 0).all(), "a fully masked row must get no gradient"


def test_policy_loss_value_is_minus_mean_advantage_and_gradient_follows_advantage():
    logp = torch.full((2, 4), -1.0, requires_grad=True)
    mask = torch.ones(2, 4)
    adv = torch.tensor([2.0, -2.0])
    loss, m = G.policy_loss(logp, logp.detach(), logp.detach(), adv, mask, kl_coef=0.0)
    assert abs(loss.item()) < 1e-6 and m["kl"] == 0.0   # on-policy loss value ~ 0 by construction
    loss.backward()
    assert (logp.grad[0] < 0).all() and (logp.grad[1] > 0).all()  # descent raises logp where A > 0


def test_policy_loss_kl_term_pulls_towards_reference():
    logp = torch.zeros(1, 3, requires_grad=True)
    ref = torch.full((1, 3), -1.0)                       # the policy is above the reference
    loss, m = G.policy_loss(logp, logp.detach(), ref, torch.zeros(1), torch.ones(1, 3), kl_coef=1.0)
    loss.backward()
    assert m["kl"] > 0 and (logp.grad > 0).all()         # descent lowers logp towards ref


def test_policy_loss_clips_large_ratios():
    logp = torch.tensor([[0.5]], requires_grad=True)      # ratio e^0.5 > 1.2 with A > 0: clipped
    loss, m = G.policy_loss(logp, torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1),
                            clip_eps=0.2, kl_coef=0.0)
    loss.backward()
    assert m["clip_frac"] == 1.0 and logp.grad.item() == 0.0


@pytest.mark.parametrize("value", [0.3, 50.3, 1e4, -7.77, 0.0])
@pytest.mark.parametrize("n", [2, 3, 4, 8, 16])
def test_tied_group_gets_exactly_zero_advantages(value, n):
    # fp32 means of equal values can be off by one rounding step; that error must not become an advantage
    r = torch.cat([torch.full((n,), value), torch.arange(n, dtype=torch.float32)])  # a tied group, then a spread one
    a = G.group_advantages(r, n)
    assert (a[:n] == 0).all(), a[:n]
    assert a[n:].abs().min() > 0 or n % 2 == 1                # the spread group is untouched (odd n: a 0 in the middle)


@pytest.mark.parametrize("value", [0.3, 50.3, 1e4])
def test_rewards_equal_up_to_rounding_are_a_tie(value):
    x = torch.tensor(value, dtype=torch.float32)
    r = torch.stack([x, torch.nextafter(x, torch.tensor(float("inf"))), x, x])   # one ulp apart
    assert (G.group_advantages(r, 4) == 0).all()
    far = torch.tensor([value, value * 1.001, value, value], dtype=torch.float32)  # a real difference
    assert G.group_advantages(far, 4).abs().max() > 1


def test_a_real_discriminator_scoring_identical_samples_gives_zero_advantages(tok):
    from transformers import LlamaModel
    torch.manual_seed(0)
    d = D.Discriminator(LlamaModel(world.student_config(tok, hidden=32, layers=2)))
    with torch.no_grad():
        d.head.weight.mul_(300)                                 # scores of order 100: rounding matters
    prompt = prompt_ids(tok, world.prompts("train")[0])
    same, other = response_ids(tok, "cats are furry ."), response_ids(tok, "i think cats are wild and quick !")
    for n in (2, 8, 16):
        batch = pack([prompt] * 2 * n, [same] * n + [other] * (n - 1) + [same], tok.pad_token_id)
        with torch.no_grad():
            rewards = d(batch)
        a = G.group_advantages(rewards, n)
        assert (a[:n] == 0).all(), (n, a[:n])
        assert (a[n:] != 0).all()


def test_logged_group_std_is_the_one_the_advantages_divide_by():
    torch.manual_seed(0)
    r = torch.randn(3, 8)
    a = G.group_advantages(r.view(-1), 8).view(3, 8)
    assert torch.allclose(a * (G.group_std(r) + 1e-6), r - r.mean(-1, keepdim=True), atol=1e-6)
