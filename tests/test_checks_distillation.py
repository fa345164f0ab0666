"""The Lab 06-4 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmfoundations import checks


def good_soft_target_loss(s, t, T):
    log_q, log_p = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * T**2


def test_soft_target_loss_check_passes_a_correct_answer(capsys):
    checks.check_kd_soft_target_loss(good_soft_target_loss)
    assert "✔ soft_target_loss: all 5 cases" in capsys.readouterr().out


def test_soft_target_loss_check_passes_the_probability_target_form(capsys):
    # the textbook spelling: F.kl_div with probabilities as the target
    def probs_form(s, t, T):
        return F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T

    checks.check_kd_soft_target_loss(probs_form)
    assert "✔ soft_target_loss" in capsys.readouterr().out


def _kl_rows(s, t, ts, tt):
    log_p, log_q = F.log_softmax(t / tt, -1), F.log_softmax(s / ts, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda s, t, T: _kl_rows(s, t, T, T).mean(), "T^2 factor is missing"),
        (lambda s, t, T: _kl_rows(s, t, T, T).mean() / T, "do not divide by T"),
        pytest.param(
            lambda s, t, T: F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="mean") * T**2,
            "reduction='mean'",
            marks=pytest.mark.filterwarnings("ignore:reduction. 'mean' divides"),
        ),
        (lambda s, t, T: _kl_rows(s, t, T, T).sum() * T**2, "do not sum"),
        (lambda s, t, T: _kl_rows(t, s, T, T).mean() * T**2, "wrong way round"),
        (lambda s, t, T: _kl_rows(s, t, T, 1.0).mean() * T**2, "teacher's logits by T too"),
        (lambda s, t, T: _kl_rows(s, t, T, T) * T**2, "scalar tensor"),
    ],
)
def test_soft_target_loss_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="soft_target_loss") as err:
        checks.check_kd_soft_target_loss(wrong)
    assert hint in str(err.value)


def _lp(x):
    return F.log_softmax(x, -1)


def _kl(log_p, log_q):
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def good_jsd(s, t, beta):
    log_q, log_p = _lp(s), _lp(t)
    if beta == 0:
        return _kl(log_p, log_q).mean()
    if beta == 1:
        return _kl(log_q, log_p).mean()
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
    return (beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)).mean()


def test_generalized_jsd_check_passes_a_correct_answer(capsys):
    checks.check_generalized_jsd_loss(good_jsd)
    assert "✔ generalized_jsd_loss: all 7 cases" in capsys.readouterr().out


def test_generalized_jsd_check_passes_the_kl_div_form(capsys):
    # TRL's spelling with F.kl_div(input=log m, target=log p, log_target=True)
    def trl_form(s, t, beta):
        log_q, log_p = _lp(s), _lp(t)
        if beta == 0:
            return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
        if beta == 1:
            return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
        log_m = torch.logsumexp(torch.stack([log_q + math.log(1 - beta), log_p + math.log(beta)]), dim=0)
        kl_t = F.kl_div(log_m, log_p, reduction="batchmean", log_target=True)
        kl_s = F.kl_div(log_m, log_q, reduction="batchmean", log_target=True)
        return beta * kl_t + (1 - beta) * kl_s

    checks.check_generalized_jsd_loss(trl_form)
    assert "✔ generalized_jsd_loss" in capsys.readouterr().out


def _swapped_ends(s, t, beta):
    if beta == 0:
        return _kl(_lp(s), _lp(t)).mean()
    if beta == 1:
        return _kl(_lp(t), _lp(s)).mean()
    return good_jsd(s, t, beta)


def _swapped_mixture(s, t, beta):
    if beta in (0, 1):
        return good_jsd(s, t, beta)
    log_q, log_p = _lp(s), _lp(t)
    log_m = torch.logaddexp(log_p + math.log(1 - beta), log_q + math.log(beta))
    return (beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)).mean()


def _mixed_everywhere(s, t, beta):
    log_q, log_p = _lp(s), _lp(t)
    log_m = (beta * log_p.exp() + (1 - beta) * log_q.exp()).log()
    return (beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)).mean()


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_swapped_ends, "endpoints are swapped"),
        (_swapped_mixture, "mixture's weights are swapped"),
        (_mixed_everywhere, "0 at beta = 0 and beta = 1"),
        (lambda s, t, beta: good_jsd(s, t, beta) * s.shape[0], "do not sum"),
        (lambda s, t, beta: good_jsd(s, t, beta).reshape(1), "scalar tensor"),
    ],
)
def test_generalized_jsd_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="generalized_jsd_loss") as err:
        checks.check_generalized_jsd_loss(wrong)
    assert hint in str(err.value)


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    checks.check_kd_soft_target_loss(good_soft_target_loss)
    checks.check_generalized_jsd_loss(good_jsd)
    torch.testing.assert_close(torch.rand(3), before, rtol=0, atol=0)
