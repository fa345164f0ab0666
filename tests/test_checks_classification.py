"""The Lab 07-3 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmfoundations import checks


def good_calibrate(scores, content_free):
    p = scores.softmax(-1)  # (N, L)
    p_cf = content_free.softmax(-1).mean(0)  # (L,)
    return (p / p_cf).softmax(-1)


def test_calibrate_check_passes_a_correct_answer(capsys):
    checks.check_calibrate(good_calibrate)
    assert "✔ calibrate_scores: all 5 cases" in capsys.readouterr().out


def test_calibrate_check_passes_the_log_space_spelling(capsys):
    # p / p_cf = exp(log p - log p_cf): another correct way to write it
    def log_space(scores, content_free):
        log_p = scores.log_softmax(-1)
        log_p_cf = content_free.softmax(-1).mean(0).log()
        return (log_p - log_p_cf).exp().softmax(-1)

    checks.check_calibrate(log_space)
    assert "✔ calibrate_scores" in capsys.readouterr().out


def _p_cf(cf):
    return cf.softmax(-1).mean(0)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda s, cf: (s.exp() / cf.exp().mean(0)).softmax(-1), "renormalise over the labels"),
        (lambda s, cf: (s.softmax(-1) / cf.mean(0).softmax(-1)).softmax(-1), "mean of the content-free PROB"),
        (lambda s, cf: torch.stack([(s.softmax(-1) / r.softmax(-1)).softmax(-1) for r in cf]).mean(0),
         "calibrate once"),
        (lambda s, cf: (s.log_softmax(-1) / _p_cf(cf).log()).softmax(-1), "not the log-probabilities"),
        (lambda s, cf: (s.softmax(-1) / _p_cf(cf)) / (s.softmax(-1) / _p_cf(cf)).sum(-1, keepdim=True),
         "not p / p_cf divided by its sum"),
        (lambda s, cf: s.softmax(-1) / _p_cf(cf), "finish with a softmax"),
        (lambda s, cf: s.softmax(-1), None),  # no calibration at all: fails, no known hint
        (lambda s, cf: good_calibrate(s, cf).argmax(-1), "shaped like scores"),
    ],
)
def test_calibrate_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="calibrate_scores") as err:
        checks.check_calibrate(wrong)
    if hint is not None:
        assert hint in str(err.value)


def good_fit_probe(features, labels, n_classes, steps=200, lr=0.05):
    probe = nn.Linear(features.shape[1], n_classes)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    for _ in range(steps):
        loss = F.cross_entropy(probe(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


def test_fit_probe_check_passes_a_correct_answer(capsys):
    checks.check_fit_probe(good_fit_probe)
    assert "✔ fit_probe: all 3 data sets" in capsys.readouterr().out


def test_fit_probe_check_passes_sgd_too(capsys):
    def sgd(features, labels, n_classes):
        probe = nn.Linear(features.shape[1], n_classes)
        optimizer = torch.optim.SGD(probe.parameters(), lr=0.5)
        for _ in range(300):
            optimizer.zero_grad()
            F.cross_entropy(probe(features), labels).backward()
            optimizer.step()
        return probe

    checks.check_fit_probe(sgd)
    assert "✔ fit_probe" in capsys.readouterr().out


def test_fit_probe_check_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_fit_probe(good_fit_probe)
    torch.testing.assert_close(torch.rand(3), expected, atol=0.0, rtol=0.0)


def _no_step(features, labels, n_classes):
    probe = nn.Linear(features.shape[1], n_classes)
    for _ in range(50):
        F.cross_entropy(probe(features), labels).backward()  # never steps
    return probe


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_no_step, "optimizer.step()"),
        (lambda x, y, c: nn.Linear(x.shape[1], c), "optimizer.step()"),
        (lambda x, y, c: nn.Linear(x.shape[1], 1), "nn.Linear(16, 1)"),
        (lambda x, y, c: good_fit_probe(x, y, c)(x), "must return the trained nn.Linear"),
        (lambda x, y, c: good_fit_probe(x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))], c),
         "training loss"),  # labels shuffled: nothing to learn
    ],
)
def test_fit_probe_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="fit_probe") as err:
        checks.check_fit_probe(wrong)
    assert hint in str(err.value)
