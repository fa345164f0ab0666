"""The Lab 03-7 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmfoundations import checks


def good_sigmoid_dpo_loss(pc, pr, rc, rr, beta):
    h = (pc - rc) - (pr - rr)
    return -F.logsigmoid(beta * h).mean()


def _h(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def test_sigmoid_dpo_loss_check_passes_a_correct_answer(capsys):
    checks.check_dpo_sigmoid_loss(good_sigmoid_dpo_loss)
    assert "✔ sigmoid_dpo_loss: all 5 cases" in capsys.readouterr().out


def test_sigmoid_dpo_loss_check_passes_the_softplus_form(capsys):
    # -log sigmoid(x) = softplus(-x): another correct, stable spelling
    checks.check_dpo_sigmoid_loss(lambda pc, pr, rc, rr, beta: F.softplus(-beta * _h(pc, pr, rc, rr)).mean())
    assert "✔ sigmoid_dpo_loss" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)).mean(), "reference is missing"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(-beta * _h(pc, pr, rc, rr)).mean(), "sign is reversed"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(_h(pc, pr, rc, rr)).mean(), "beta is missing"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - rc) + (pr - rr))).mean(), "do not add"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * _h(pc, pr, rc, rr)).sum(), "do not sum"),
        (lambda pc, pr, rc, rr, beta: -torch.log(torch.sigmoid(beta * _h(pc, pr, rc, rr))).mean(),
         "F.logsigmoid"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * _h(pc, pr, rc, rr)), "scalar tensor"),
    ],
)
def test_sigmoid_dpo_loss_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="sigmoid_dpo_loss") as err:
        checks.check_dpo_sigmoid_loss(wrong)
    assert hint in str(err.value)


def good_implicit_rewards(pc, pr, rc, rr, beta):
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    return chosen, rejected, (chosen > rejected).float().mean()


def test_implicit_rewards_check_passes_a_correct_answer(capsys):
    checks.check_dpo_implicit_rewards(good_implicit_rewards)
    assert "✔ implicit_rewards: all 5 cases" in capsys.readouterr().out


def _acc(c, r):
    return (c > r).float().mean()


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda pc, pr, rc, rr, beta: (pc - rc, pr - rr, _acc(pc - rc, pr - rr)), "beta is missing"),
        (lambda pc, pr, rc, rr, beta: (beta * (rc - pc), beta * (rr - pr), _acc(rc - pc, rr - pr)),
         "upside down"),
        (lambda pc, pr, rc, rr, beta: (beta * pc, beta * pr, _acc(pc, pr)), "relative to the reference"),
        (lambda pc, pr, rc, rr, beta: (beta * (pc - rc), beta * (pr - rr), (pc - rc >= pr - rr).float().mean()),
         "a tie is not a win"),
        (lambda pc, pr, rc, rr, beta: (beta * (pc - rc), beta * (pr - rr), (pc - rc > pr - rr).float().sum()),
         "not a count"),
        (lambda pc, pr, rc, rr, beta: (beta * (pc - rc), beta * (pr - rr)), "must return a tuple"),
        (lambda pc, pr, rc, rr, beta: (beta * (pc - rc), beta * (pr - rr), 0.5), "0-dimensional tensor"),
        (lambda pc, pr, rc, rr, beta: (beta * (pc - rc).sum(), beta * (pr - rr), _acc(pc - rc, pr - rr)),
         "one reward per pair"),
    ],
)
def test_implicit_rewards_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="implicit_rewards") as err:
        checks.check_dpo_implicit_rewards(wrong)
    assert hint in str(err.value)
