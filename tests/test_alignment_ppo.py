"""Tests of alignment/ppo.py: KL estimators, RLHF rewards, GAE, whitening, clipped losses.

Oracles: closed forms on small exact cases, a naive per-row Python loop for GAE
(hypothesis over lengths, gamma and lambda), a Monte-Carlo check that k1 and k3 are
unbiased on a small categorical, and the formulas of TRL's ``PPOTrainer``
(``trl.experimental.ppo``, not shipped in TRL 1.16, so written out here).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.alignment.ppo import (
    gae,
    kl_penalty,
    ppo_policy_loss,
    ppo_value_loss,
    rlhf_rewards,
    whiten,
)

# --------------------------------------------------------------------------- KL


def test_kl_estimators_closed_form():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0])
    log_r = ref - logp  # [-1, 1]
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.5, 0.5]))
    k3 = torch.tensor([math.exp(-1) - 1 + 1, math.e - 1 - 1])
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), k3)
    assert torch.equal(kl_penalty(logp, logp, "k3"), torch.zeros(2))
    assert bool((kl_penalty(logp, ref, "k3") >= 0).all())
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), log_r.exp() - 1 - log_r)


def test_k1_and_k3_are_unbiased_k2_is_not():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    true_kl = float((p * (p / q).log()).sum())  # KL(p || q) = 0.2453...
    samples = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, ref = p.log()[samples], q.log()[samples]
    means = {k: float(kl_penalty(logp, ref, k).mean()) for k in ("k1", "k2", "k3")}
    assert means["k1"] == pytest.approx(true_kl, abs=0.01)
    assert means["k3"] == pytest.approx(true_kl, abs=0.01)
    exact_k2 = float((p * 0.5 * (q / p).log() ** 2).sum())
    assert means["k2"] == pytest.approx(exact_k2, abs=0.01)
    assert abs(exact_k2 - true_kl) > 0.02  # biased here


def test_kl_bad_inputs():
    with pytest.raises(ValueError, match="ref_logp"):
        kl_penalty(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")
    with pytest.raises(TypeError, match="logp"):
        kl_penalty([0.0], torch.zeros(1))


# ---------------------------------------------------------------------- rewards


def test_rlhf_rewards_put_the_score_on_the_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    r = rlhf_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.5)
    expected = torch.tensor([[-0.05, -0.1, -0.15 + 2.0], [-0.2 - 1.0, 0.0, 0.0]])
    torch.testing.assert_close(r, expected)


def test_rlhf_rewards_bad_inputs():
    kl, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="score"):
        rlhf_rewards(torch.zeros(3), kl, mask)
    with pytest.raises(ValueError, match="kl_coef"):
        rlhf_rewards(torch.zeros(2), kl, mask, kl_coef=-0.1)
    with pytest.raises(ValueError, match="at least one"):
        rlhf_rewards(torch.zeros(2), kl, torch.tensor([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="right-padded"):
        rlhf_rewards(torch.zeros(2), kl, torch.tensor([[1, 0, 1], [1, 1, 1]]))
    with pytest.raises(ValueError, match="mask"):
        rlhf_rewards(torch.zeros(2), kl, torch.ones(2, 2))


# -------------------------------------------------------------------------- GAE


def _gae_loop(rewards: list[float], values: list[float], gamma: float, lam: float):
    """One row, its real tokens only: the textbook recursion."""
    n = len(rewards)
    adv = [0.0] * n
    running = 0.0
    for t in reversed(range(n)):
        next_value = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, [a + v for a, v in zip(adv, values, strict=True)]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_gae_matches_a_naive_loop(lengths, gamma, lam, seed):
    g = torch.Generator().manual_seed(seed)
    t = max(lengths) + 1
    rewards = torch.randn(len(lengths), t, generator=g, dtype=torch.float64)
    values = torch.randn(len(lengths), t, generator=g, dtype=torch.float64)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for i, n in enumerate(lengths):
        a, r = _gae_loop(rewards[i, :n].tolist(), values[i, :n].tolist(), gamma, lam)
        torch.testing.assert_close(adv[i, :n], torch.tensor(a, dtype=torch.float64))
        torch.testing.assert_close(ret[i, :n], torch.tensor(r, dtype=torch.float64))
        assert bool((adv[i, n:] == 0).all()) and bool((ret[i, n:] == 0).all())


def test_gae_limits():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.25, 1.0]])
    mask = torch.ones(1, 3)
    # lam = 1, gamma = 1: returns are the rewards-to-go
    _, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[6.0, 5.0, 3.0]]))
    # lam = 0: the one-step TD errors
    adv, _ = gae(rewards, values, mask, gamma=0.5, lam=0.0)
    torch.testing.assert_close(adv, torch.tensor([[1 + 0.125 - 0.5, 2 + 0.5 - 0.25, 3 - 1.0]]))


def test_gae_bad_inputs():
    r, m = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="values"):
        gae(r, torch.zeros(2, 2), m)
    with pytest.raises(ValueError, match="gamma"):
        gae(r, r, m, gamma=1.5)
    with pytest.raises(ValueError, match="lam"):
        gae(r, r, m, lam=-0.1)
    with pytest.raises(ValueError, match="right-padded"):
        gae(r, r, torch.tensor([[0, 1, 1], [1, 1, 1]]))
    with pytest.raises(ValueError, match="rewards"):
        gae(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 3))


# ------------------------------------------------------------------------ whiten


def test_whiten_matches_trl_masked_whiten():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()
    # trl.trainer.utils masked_mean / masked_var(unbiased=True) / masked_whiten
    mean = (x * mask).sum() / mask.sum()
    var = ((x - mean) ** 2 * mask).sum() / mask.sum() * mask.sum() / (mask.sum() - 1)
    for shift in (True, False):
        expected = (x - mean) * torch.rsqrt(var + 1e-8) + (0 if shift else mean)
        got = whiten(x, mask, shift_mean=shift)
        torch.testing.assert_close(got[mask], expected[mask])
        assert bool((got[~mask] == 0).all())
    w = whiten(x, mask)
    assert w[mask].mean().abs() < 1e-6 and w[mask].std().item() == pytest.approx(1.0, abs=1e-6)


def test_whiten_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        whiten(torch.zeros(1, 3), torch.tensor([[1, 0, 0]]))
    with pytest.raises(TypeError, match="shift_mean"):
        whiten(torch.zeros(1, 3), torch.ones(1, 3), shift_mean=1)
    with pytest.raises(ValueError, match="0 and 1"):
        whiten(torch.zeros(1, 3), torch.full((1, 3), 2))


# ---------------------------------------------------------------- clipped losses


def test_policy_loss_closed_form_and_gradient():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = ppo_policy_loss(logp, old, adv, mask, clip_range=0.2)
    # max(-A rho, -A clip(rho)): -1.2, -0.5, +1.5 (the 4th is padding)
    torch.testing.assert_close(out.loss, torch.tensor((-1.2 - 0.5 + 1.5) / 3))
    torch.testing.assert_close(out.clip_fraction, torch.tensor(1 / 3))
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5 / 3, 1.5 / 3, 0.0]]))


def test_policy_loss_matches_trl_formula():
    g = torch.Generator().manual_seed(1)
    logp, old = -torch.rand(3, 4, generator=g), -torch.rand(3, 4, generator=g)
    adv = torch.randn(3, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    ratio = torch.exp(logp - old)
    pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 0.8, 1.2))
    expected = (pg * mask).sum() / mask.sum()
    torch.testing.assert_close(ppo_policy_loss(logp, old, adv, mask).loss, expected)


def test_value_loss_closed_form():
    values = torch.tensor([[1.0, 0.1, 0.0]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 5.0]])
    out = ppo_value_loss(values, old, returns, torch.tensor([[1, 1, 0]]), clip_range=0.2)
    # token 1: max(1, 1.8^2) = 3.24; token 2: max(0.01, 0.01) = 0.01
    torch.testing.assert_close(out.loss, torch.tensor(0.5 * (3.24 + 0.01) / 2))
    torch.testing.assert_close(out.clip_fraction, torch.tensor(0.5))


def test_clipped_losses_bad_inputs():
    x, m = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="clip_range"):
        ppo_policy_loss(x, x, x, m, clip_range=-0.2)
    with pytest.raises(ValueError, match="advantages"):
        ppo_policy_loss(x, x, torch.zeros(2), m)
    with pytest.raises(ValueError, match="old_values"):
        ppo_value_loss(x, torch.zeros(3, 2), x, m)
    with pytest.raises(ValueError, match="mask"):
        ppo_value_loss(x, x, x, torch.ones(3, 3))
