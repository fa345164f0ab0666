"""The Lab 03-8 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import pytest
import torch

from llmfoundations import checks


def good_group_advantages(rewards, group_size):
    groups = rewards.view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    return (centred / (groups.std(dim=1, keepdim=True) + 1e-4)).reshape(-1)


def test_group_advantages_check_passes_a_correct_answer(capsys):
    checks.check_grpo_group_advantages(good_group_advantages)
    assert "✔ group_advantages: all 5 cases" in capsys.readouterr().out


def _grouped(f):
    def run(r, g):
        x = r.view(-1, g)
        return f(x, r).reshape(-1)

    return run


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_grouped(lambda x, r: (x - x.mean(1, keepdim=True)) / (x.std(1, correction=0, keepdim=True) + 1e-4)),
         "Bessel"),
        (_grouped(lambda x, r: (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)), "add 1e-4"),
        (_grouped(lambda x, r: (x - x.mean(1, keepdim=True)) / (r.std() + 1e-4)), "own std"),
        (lambda r, g: ((r.view(g, -1) - r.view(g, -1).mean(0)) / (r.view(g, -1).std(0) + 1e-4)).reshape(-1),
         "consecutive"),
        (_grouped(lambda x, r: x / (x.std(1, keepdim=True) + 1e-4)), "mean reward first"),
        (lambda r, g: r - r.mean(), None),
        (lambda r, g: r.view(-1, g), "shape"),
    ],
)
def test_group_advantages_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="group_advantages") as err:
        checks.check_grpo_group_advantages(wrong)
    if hint is not None:
        assert hint in str(err.value)


def good_clipped_objective(logp, old_logp, advantages, eps):
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    return -torch.min(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a)


def test_clipped_objective_check_passes_a_correct_answer(capsys):
    checks.check_grpo_clipped_objective(good_clipped_objective)
    assert "✔ clipped_objective: all 4 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda lp, old, a, e: -torch.max(torch.exp(lp - old) * a[:, None],
                                          torch.exp(lp - old).clamp(1 - e, 1 + e) * a[:, None]), "take the min"),
        (lambda lp, old, a, e: -good_clipped_objective(lp, old, a, e), "negative"),
        (lambda lp, old, a, e: -torch.exp(lp - old).clamp(1 - e, 1 + e) * a[:, None], "clipped term alone"),
        (lambda lp, old, a, e: -torch.min((lp - old) * a[:, None], (lp - old).clamp(1 - e, 1 + e) * a[:, None]),
         "exp(logp - old_logp), not"),
        (lambda lp, old, a, e: good_clipped_objective(old, lp, a, e), "new policy over the old"),
        (lambda lp, old, a, e: -torch.exp(lp - old) * a[:, None], None),  # no clipping at all
        (lambda lp, old, a, e: good_clipped_objective(lp, old, a, e).mean(), "one loss per token"),
    ],
)
def test_clipped_objective_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="clipped_objective") as err:
        checks.check_grpo_clipped_objective(wrong)
    if hint is not None:
        assert hint in str(err.value)
