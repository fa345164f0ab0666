"""Checks for Lab 06-5 (speculative decoding): the residual distribution and the expected
number of tokens per round.

Each check runs the student's function next to the course's reference
(``llmfoundations.inference.speculative``) on fixed inputs and either prints one line of
success or raises ``AssertionError`` naming the failing case, with a hint where the wrong
result is a known mistake:

- ``residual(p, q)``: forgetting to normalize, the difference the wrong way round
  (``q - p``), ``|p - q|`` instead of the positive part, a softmax of ``p - q`` in place of
  the normalization, and a row with ``p == q`` (nothing in excess) that must give ``p``,
  not ``0 / 0 = nan``;
- ``expected_tokens(alpha, gamma)``: the exponent ``γ`` instead of ``γ + 1``, leaving out
  the replacement or bonus token (the accepted drafts only), ``α·γ + 1``, and ``α = 1``
  (a division by zero; the answer is ``γ + 1``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from llmfoundations.inference.speculative import expected_tokens_per_round, residual_distribution

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_residual_distribution", "check_expected_tokens_per_round"]


# --------------------------------------------------------------------------- residual


def _residual_cases() -> list[tuple[tuple, dict]]:
    """(p, q) pairs, (N, V) float64: random rows, a draft that filtered tokens (q = 0),
    a one-hot draft (prompt lookup), a row with p == q, a row with one token in excess."""
    g = torch.Generator().manual_seed(11)

    def rows(n: int, v: int, scale: float = 2.0) -> Tensor:
        return torch.softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * scale, -1)

    p, q = rows(4, 6), rows(4, 6)
    q[1, :2] = 0
    q[1] /= q[1].sum()
    q[2] = 0
    q[2, 3] = 1.0  # a one-hot draft: the residual is p without token 3
    q[3] = p[3]  # nothing to correct: the residual is p itself
    p2, q2 = rows(1, 10), rows(1, 10)
    big = torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64)
    small = torch.tensor([[0.2, 0.4, 0.4]], dtype=torch.float64)
    return [((p, q), {}), ((p2, q2), {}), ((big, small), {}), ((rows(3, 5, 4.0), rows(3, 5, 0.5)), {})]


def _residual_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def norm(x: Tensor) -> Tensor:
        return x / x.sum(-1, keepdim=True)

    return [
        (lambda p, q: (p - q).clamp_min(0),
         "normalize: divide max(0, p - q) by its sum over the vocabulary, so that each row sums to 1"),
        (lambda p, q: norm((q - p).clamp_min(0)),
         "the difference is the wrong way round: the residual keeps where the TARGET has more "
         "than the draft, max(0, p - q)"),
        (lambda p, q: norm((p - q).abs()),
         "keep only the positive part, max(0, p - q), not |p - q|: where the draft proposed too "
         "much, the residual must be 0"),
        (lambda p, q: torch.softmax(p - q, -1),
         "a softmax is not a normalization of probabilities: divide max(0, p - q) by its sum"),
        (lambda p, q: norm((p - q).clamp_min(0)).nan_to_num(0.0),
         "a row with p == q has nothing in excess (0 / 0): return p for such a row (a rejection "
         "never happens there, and p is what the target samples from)"),
    ]  # fmt: skip


@exercise_check
def check_residual_distribution(student: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Lab 06-5: ``residual(p, q)`` -> (N, V): ``max(0, p - q)`` normalized row by row
    (``p`` for a row where ``p == q``)."""
    check_callable("residual", student)
    compare_with_reference(
        "residual", lambda p, q: student(p.clone(), q.clone()), residual_distribution,
        _residual_cases(), atol=1e-9, rtol=1e-7, hints=_residual_mistakes(),
    )  # fmt: skip


# ------------------------------------------------------------------- tokens per round


_ROUND_CASES = [((a, g), {}) for a, g in [(0.8, 4), (0.5, 1), (0.0, 3), (0.9, 10), (0.3, 0), (1.0, 4),
                                           (0.999, 2), (0.6, 7)]]  # fmt: skip


def _round_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def guard(f: Callable[[float, int], float]) -> Callable[[float, int], float]:
        def run(a: float, g: int) -> float:
            try:
                return float(f(a, g))
            except ZeroDivisionError:
                return float("nan")

        return run

    return [
        (guard(lambda a, g: (1 - a**g) / (1 - a)),
         "the exponent is gamma + 1: a round can yield up to gamma + 1 tokens (gamma drafts and a "
         "bonus token)"),
        (guard(lambda a, g: (1 - a ** (g + 1)) / (1 - a) - 1),
         "count the token the target adds every round (the replacement or the bonus), not only "
         "the accepted drafts"),
        (lambda a, g: a * g + 1,
         "the drafts are accepted one after another until the first rejection: the i-th one "
         "counts with probability alpha^i, so sum alpha^i for i = 0 .. gamma"),
    ]  # fmt: skip


def _scalar(x: float) -> Tensor:
    """A number as a 0-d float64 tensor (compared with a tolerance, NaN equal to NaN)."""
    return torch.tensor(float(x), dtype=torch.float64)


@exercise_check
def check_expected_tokens_per_round(student: Callable[[float, int], float]) -> None:
    """Lab 06-5: ``expected_tokens(alpha, gamma)`` -> ``(1 - α^(γ+1)) / (1 - α)``, a float
    (``γ + 1`` when ``α = 1``)."""
    check_callable("expected_tokens", student)

    def as_float(alpha: float, gamma: int) -> float:
        try:
            got = student(alpha, gamma)
        except ZeroDivisionError:
            raise AssertionError(
                f"expected_tokens({alpha}, {gamma}) divided by zero: when alpha = 1 every draft is "
                "accepted and a round yields gamma + 1 tokens (the limit of the formula)"
            ) from None
        if isinstance(got, Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise AssertionError(f"expected_tokens must return a number, got {type(got).__name__}")
        return _scalar(got)

    compare_with_reference(
        "expected_tokens", as_float, lambda a, g: _scalar(expected_tokens_per_round(a, g)),
        _ROUND_CASES, atol=1e-9, rtol=1e-7,
        hints=[(lambda a, g, f=f: _scalar(f(a, g)), m) for f, m in _round_mistakes()],
    )  # fmt: skip
