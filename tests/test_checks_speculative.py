"""The Lab 06-5 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import pytest
import torch

from llmfoundations import checks


def good_residual(p, q):
    excess = (p - q).clamp(min=0)
    total = excess.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, excess / total.clamp(min=1e-300), p)


def good_expected_tokens(alpha, gamma):
    if alpha == 1:
        return gamma + 1.0
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def test_residual_check_passes_a_correct_answer(capsys):
    checks.check_residual_distribution(good_residual)
    assert "✔ residual: all 4 cases" in capsys.readouterr().out


def test_residual_check_passes_a_loop_over_rows(capsys):
    def by_rows(p, q):
        out = []
        for pr, qr in zip(p, q, strict=True):
            e = torch.clamp(pr - qr, min=0)
            out.append(pr if e.sum() == 0 else e / e.sum())
        return torch.stack(out)

    checks.check_residual_distribution(by_rows)
    assert "✔ residual" in capsys.readouterr().out


def _norm(x):
    return x / x.sum(-1, keepdim=True)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda p, q: (p - q).clamp(min=0), "normalize"),
        (lambda p, q: _norm((q - p).clamp(min=0)), "wrong way round"),
        (lambda p, q: _norm((p - q).abs()), "positive part"),
        (lambda p, q: torch.softmax(p - q, -1), "softmax"),
        (lambda p, q: _norm((p - q).clamp(min=0)).nan_to_num(0.0), "p == q"),
        (lambda p, q: _norm((p - q).clamp(min=0)), "residual"),  # NaN on the p == q row
        (lambda p, q: p, "residual"),
    ],
)
def test_residual_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="residual") as err:
        checks.check_residual_distribution(wrong)
    assert hint in str(err.value)


def test_expected_tokens_check_passes_correct_answers(capsys):
    checks.check_expected_tokens_per_round(good_expected_tokens)
    assert "✔ expected_tokens: all 8 cases" in capsys.readouterr().out
    # the sum of the geometric series, term by term, and a tensor result
    checks.check_expected_tokens_per_round(lambda a, g: sum(a**i for i in range(g + 1)))
    checks.check_expected_tokens_per_round(lambda a, g: torch.tensor(float(good_expected_tokens(a, g))))


def _closed(a, g, k):
    return (1 - a**k) / (1 - a)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda a, g: g + 1.0 if a == 1 else _closed(a, g, g), "gamma + 1"),
        (lambda a, g: g + 0.0 if a == 1 else _closed(a, g, g + 1) - 1, "not only the accepted"),
        (lambda a, g: a * g + 1, "alpha^i"),
        (lambda a, g: _closed(a, g, g + 1), "divided by zero"),
        (lambda a, g: "3.36", "must return a number"),
    ],
)
def test_expected_tokens_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="expected_tokens") as err:
        checks.check_expected_tokens_per_round(wrong)
    assert hint in str(err.value)
