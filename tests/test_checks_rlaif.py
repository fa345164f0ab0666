"""The Lab 03-9 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import pytest
import torch

from llmfoundations import checks


def good_verdicts(logp_ab, logp_ba):
    p1_ab = logp_ab.softmax(-1)[:, 0]  # answer 1 shown as A
    p1_ba = logp_ba.softmax(-1)[:, 1]  # answer 1 shown as B
    out = torch.full(p1_ab.shape, -1, dtype=torch.long)
    out[(p1_ab > 0.5) & (p1_ba > 0.5)] = 1
    out[(p1_ab < 0.5) & (p1_ba < 0.5)] = 0
    return out


def logit_verdicts(logp_ab, logp_ba):
    # another correct spelling: compare the log-probabilities directly (no softmax needed)
    wins_ab = logp_ab[:, 0] > logp_ab[:, 1]
    loses_ab = logp_ab[:, 0] < logp_ab[:, 1]
    wins_ba = logp_ba[:, 1] > logp_ba[:, 0]
    loses_ba = logp_ba[:, 1] < logp_ba[:, 0]
    return torch.where(wins_ab & wins_ba, 1, torch.where(loses_ab & loses_ba, 0, -1))


@pytest.mark.parametrize("fn", [good_verdicts, logit_verdicts])
def test_verdicts_check_passes_correct_answers(fn, capsys):
    checks.check_rlaif_verdicts(fn)
    assert "✔ verdicts: all 5 cases" in capsys.readouterr().out


def _p_a(lp):
    return lp.softmax(-1)[:, 0]


def _label(first, second):
    return torch.where(first & second, 1, torch.where(~first & ~second, 0, -1))


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda ab, ba: _label(_p_a(ab) > 0.5, _p_a(ba) > 0.5), "shown as B"),
        (lambda ab, ba: (_p_a(ab) > 0.5).long(), "needs both orders"),
        (lambda ab, ba: ((_p_a(ab) + 1 - _p_a(ba)) / 2 > 0.5).long(), "no ties"),
        (lambda ab, ba: _label(_p_a(ab) >= 0.5, 1 - _p_a(ba) >= 0.5), "strict comparisons"),
        (lambda ab, ba: good_verdicts(ab, ba).float(), "integer labels"),
        (lambda ab, ba: good_verdicts(ab, ba)[:1], "must return a tensor of shape"),
    ],
)
def test_verdicts_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="verdicts") as err:
        checks.check_rlaif_verdicts(wrong)
    assert hint in str(err.value)


def good_statistics(logp_ab, logp_ba, truth):
    games = torch.cat([logp_ab, logp_ba])  # (2N, 2)
    first_slot = (games[:, 0] > games[:, 1]).float().mean().item()
    labels = good_verdicts(logp_ab, logp_ba)
    decided = labels != -1
    accuracy = (labels[decided] == truth[decided]).float().mean().item()
    return first_slot, 1 - decided.float().mean().item(), accuracy


def test_statistics_check_passes_a_correct_answer(capsys):
    checks.check_rlaif_judge_statistics(good_statistics)
    assert "✔ judge_statistics: all 5 cases" in capsys.readouterr().out


def _replace(i, value):
    def wrong(ab, ba, t):
        out = list(good_statistics(ab, ba, t))
        out[i] = value(ab, ba, t)
        return tuple(out)

    return wrong


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_replace(0, lambda ab, ba, t: (ab[:, 0] > ab[:, 1]).float().mean().item()), "both orders"),
        (_replace(0, lambda ab, ba, t: torch.cat([ab, ba]).softmax(-1)[:, 0].mean().item()), "mean probability"),
        (_replace(2, lambda ab, ba, t: (good_verdicts(ab, ba) == t).float().mean().item()), "leave the ties out"),
        (_replace(1, lambda ab, ba, t: float((good_verdicts(ab, ba) == -1).sum())), "not a count"),
        (_replace(1, lambda ab, ba, t: (good_verdicts(ab, ba) == -1).float().mean().item() + 0.1), "case 1"),
        (lambda ab, ba, t: list(good_statistics(ab, ba, t)), "must return a tuple"),
    ],
)
def test_statistics_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="judge_statistics") as err:
        checks.check_rlaif_judge_statistics(wrong)
    assert hint in str(err.value)


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    checks.check_rlaif_verdicts(good_verdicts)
    checks.check_rlaif_judge_statistics(good_statistics)
    assert torch.equal(torch.rand(3), before)
