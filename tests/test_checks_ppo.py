"""The Lab 03-6 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import pytest
import torch

from llmfoundations import checks


def good_rlhf_rewards(score, kl, mask, kl_coef):
    rewards = torch.where(mask, -kl_coef * kl, 0.0)
    last = mask.sum(dim=1) - 1
    rewards[torch.arange(len(score)), last] += score
    return rewards


def test_rlhf_rewards_check_passes_a_correct_answer(capsys):
    checks.check_ppo_rlhf_rewards(good_rlhf_rewards)
    assert "✔ rlhf_rewards: all 4 cases" in capsys.readouterr().out


def _add_at(col):
    def wrong(score, kl, mask, c):
        out = torch.where(mask, -c * kl, 0.0)
        out[:, col] += score
        return out

    return wrong


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_add_at(0), "LAST response token"),
        (_add_at(-1), "not at the last position"),
        (lambda s, kl, m, c: torch.where(m, -c * kl + s[:, None], 0.0), "paid once per response"),
        (lambda s, kl, m, c: good_rlhf_rewards(s, -kl, m, c), "-kl_coef * kl"),
        (lambda s, kl, m, c: good_rlhf_rewards(s, kl, m, c) + torch.where(m, 0.0, -c * kl), "padding"),
        (lambda s, kl, m, c: good_rlhf_rewards(s, kl, m, 2 * c), None),
        (lambda s, kl, m, c: good_rlhf_rewards(s, kl, m, c).sum(1), "one reward per position"),
    ],
)
def test_rlhf_rewards_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="rlhf_rewards") as err:
        checks.check_ppo_rlhf_rewards(wrong)
    if hint is not None:
        assert hint in str(err.value)


def good_gae(rewards, values, mask, gamma, lam):
    rewards = torch.where(mask, rewards, 0.0)
    values = torch.where(mask, values, 0.0)
    advantages = torch.zeros_like(values)
    running = torch.zeros(values.shape[0])
    next_value = torch.zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_value = values[:, t]
    advantages = torch.where(mask, advantages, 0.0)
    return advantages, torch.where(mask, advantages + values, 0.0)


def test_gae_check_passes_a_correct_answer(capsys):
    checks.check_ppo_gae(good_gae)
    assert "✔ gae: all 4 cases" in capsys.readouterr().out


def _bootstrap_from_padding(rewards, values, mask, gamma, lam):
    advantages = torch.zeros_like(values)
    running = torch.zeros(values.shape[0])
    next_value = torch.zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(mask[:, t], delta + gamma * lam * running, 0.0)
        advantages[:, t] = running
        next_value = values[:, t]  # padding values leak into the last real token
    return advantages, torch.where(mask, advantages + values, 0.0)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_bootstrap_from_padding, "value after it"),
        (lambda r, v, m, g, lam: good_gae(r, v, m, lam, g), "gamma discounts the value"),
        (lambda r, v, m, g, lam: good_gae(r, v, m, g, 1.0), "not gamma alone"),
        (lambda r, v, m, g, lam: (good_gae(r, v, m, g, lam)[0], good_gae(r, v, m, g, lam)[0]), "advantages + values"),
        (lambda r, v, m, g, lam: good_gae(r, v, m, g, lam)[0], "tuple"),
        (lambda r, v, m, g, lam: (good_gae(r, v, m, g, lam)[0][:, :-1], good_gae(r, v, m, g, lam)[1]), "shape"),
        (lambda r, v, m, g, lam: (-good_gae(r, v, m, g, lam)[0], good_gae(r, v, m, g, lam)[1]), None),
    ],
)
def test_gae_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="gae") as err:
        checks.check_ppo_gae(wrong)
    if hint is not None:
        assert hint in str(err.value)


def test_ppo_checks_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    checks.check_ppo_rlhf_rewards(good_rlhf_rewards)
    checks.check_ppo_gae(good_gae)
    assert torch.equal(torch.get_rng_state(), state)
