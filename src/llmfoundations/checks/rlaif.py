"""Checks for Lab 03-9 (RLAIF): a verdict from both orders, and a judge's statistics.

Each check runs the student's function next to the course's reference
(``llmfoundations.alignment.rlaif.AIPreferences``) on fixed inputs, the judge's
``(N, 2)`` log-probabilities of "A" and "B" in both orders, and either prints one line of
success or raises ``AssertionError`` naming the failing case, with a hint where the wrong
result is a known mistake:

- ``verdicts``: forgetting that answer 1 is shown as B in the swapped order, reading the
  first order only, averaging the two orders into a verdict without ties, and calling an
  exactly undecided order (P("A") = P("B")) a verdict;
- ``judge_statistics``: the first slot counted in one order only, the mean probability of
  "A" in place of the share of games won by the first slot, ties counted as wrong answers
  in the agreement, and a count of ties in place of a share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from llmfoundations.alignment.rlaif import TIE, AIPreferences

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_rlaif_verdicts", "check_rlaif_judge_statistics"]


def _logp(p_a: Tensor) -> Tensor:
    """``(N, 2)`` log-probabilities of "A" and "B" from P("A") (the rest of the vocabulary
    holds a little mass, as with a real model)."""
    return torch.stack([p_a, 1 - p_a], dim=-1).mul(0.9).log()


def _cases(seed: int) -> list[tuple[tuple, dict]]:
    """Five cases of (logp_ab, logp_ba, truth)."""
    g = torch.Generator().manual_seed(seed)

    def rand(n: int) -> Tensor:
        return torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01

    def truth(n: int) -> Tensor:
        return (torch.rand(n, generator=g) < 0.5).long()

    # a judge that says "A" in both orders for most pairs: many ties, a strong first-slot bias
    biased_ab, biased_ba = torch.rand(8, generator=g) * 0.3 + 0.6, torch.rand(8, generator=g) * 0.3 + 0.6
    biased_ab[:2], biased_ba[:2] = 0.8, 0.2  # two decided pairs (answer 1 both times)
    # exactly undecided orders (P(A) = P(B) = 1/2) next to decided ones
    half = torch.tensor([0.5, 0.7, 0.3, 0.5, 0.8, 0.1], dtype=torch.float64)
    other = torch.tensor([0.2, 0.4, 0.6, 0.5, 0.1, 0.9], dtype=torch.float64)
    return [
        ((_logp(rand(6)), _logp(rand(6)), truth(6)), {}),
        ((_logp(rand(1) * 0 + 0.9), _logp(rand(1) * 0 + 0.2), torch.tensor([1])), {}),  # one decided pair
        ((_logp(rand(12)), _logp(rand(12)), truth(12)), {}),
        ((_logp(biased_ab.double()), _logp(biased_ba.double()), truth(8)), {}),
        ((_logp(half).float(), _logp(other).float(), torch.tensor([1, 0, 1, 0, 1, 0])), {}),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- verdicts


def reference_verdicts(logp_ab: Tensor, logp_ba: Tensor) -> Tensor:
    """``(N,)`` long: 1 = answer 1 wins both orders, 0 = answer 2 does, ``TIE`` otherwise."""
    return AIPreferences(logp_ab=logp_ab, logp_ba=logp_ba).labels


def _verdict_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def label(first: Tensor, second: Tensor) -> Tensor:
        out = torch.full(first.shape, TIE, dtype=torch.long)
        out[first & second] = 1
        out[~first & ~second] = 0
        return out

    def p_a(lp: Tensor) -> Tensor:
        return lp.softmax(-1)[:, 0]

    return [
        (lambda ab, ba: label(p_a(ab) > 0.5, p_a(ba) > 0.5),
         'in the swapped order answer 1 is shown as B: its probability there is P("B"), '
         "not P(\"A\")"),
        (lambda ab, ba: (p_a(ab) > 0.5).long(),
         "a verdict needs both orders: answer 1 wins only if it wins as A and as B; when the "
         "orders disagree the pair is a tie (-1)"),
        (lambda ab, ba: ((p_a(ab) + 1 - p_a(ba)) / 2 > 0.5).long(),
         "averaging the two orders gives a preference but no ties: a pair whose verdict follows "
         "the slot (the orders disagree) is a tie, -1"),
        (lambda ab, ba: label(p_a(ab) >= 0.5, 1 - p_a(ba) >= 0.5),
         "an order with P(A) = P(B) exactly decides nothing: use strict comparisons, so that such "
         "a pair is a tie"),
    ]  # fmt: skip


@exercise_check
def check_rlaif_verdicts(student: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Lab 03-9: ``verdicts(logp_ab, logp_ba)`` -> ``(N,)`` long tensor of 1 (answer 1 is
    better), 0 (answer 2) or -1 (a tie: the two orders disagree or one is undecided)."""
    check_callable("verdicts", student)

    def as_labels(logp_ab: Tensor, logp_ba: Tensor, truth: Tensor) -> Tensor:
        got = student(logp_ab.clone(), logp_ba.clone())
        if not isinstance(got, Tensor) or got.shape != logp_ab.shape[:1]:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise AssertionError(f"verdicts must return a tensor of shape ({logp_ab.shape[0]},), got {shape}")
        if got.is_floating_point() or got.dtype == torch.bool:
            raise AssertionError(f"verdicts must return integer labels (1, 0, -1), got dtype {got.dtype}")
        return got.long()

    compare_with_reference(
        "verdicts", as_labels, lambda ab, ba, t: reference_verdicts(ab, ba), _cases(7),
        atol=0, rtol=0, hints=[(lambda ab, ba, t, w=w: w(ab, ba), m) for w, m in _verdict_mistakes()],
    )  # fmt: skip


# ---------------------------------------------------------------------------- statistics


def reference_judge_statistics(logp_ab: Tensor, logp_ba: Tensor, truth: Tensor) -> tuple[float, float, float]:
    """``(first_slot, tie_rate, accuracy)``: the share of the 2N games in which the judge
    prefers the answer shown first, the share of pairs that are ties, and the agreement with
    ``truth`` over the decided pairs."""
    prefs = AIPreferences(logp_ab=logp_ab, logp_ba=logp_ba)
    games = torch.cat([logp_ab, logp_ba])  # (2N, 2)
    first_slot = (games[:, 0] > games[:, 1]).double().mean().item()
    labels = prefs.labels
    decided = labels != TIE
    tie_rate = 1 - decided.double().mean().item()
    accuracy = (labels[decided] == truth[decided]).double().mean().item()
    return first_slot, tie_rate, accuracy


def _statistics_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def ref(ab: Tensor, ba: Tensor, t: Tensor) -> tuple[float, float, float]:
        return reference_judge_statistics(ab, ba, t)

    def replace(i: int, value: Callable[..., float]) -> Callable[..., tuple[float, float, float]]:
        def wrong(ab: Tensor, ba: Tensor, t: Tensor) -> tuple[float, float, float]:
            out = list(ref(ab, ba, t))
            out[i] = value(ab, ba, t)
            return tuple(out)  # type: ignore[return-value]
        return wrong

    def labels(ab: Tensor, ba: Tensor) -> Tensor:
        return AIPreferences(logp_ab=ab, logp_ba=ba).labels

    return [
        (replace(0, lambda ab, ba, t: (ab[:, 0] > ab[:, 1]).double().mean().item()),
         "count the first slot over both orders (2N games), not over the first order only"),
        (replace(0, lambda ab, ba, t: torch.cat([ab, ba]).softmax(-1)[:, 0].mean().item()),
         'first_slot is the share of games in which "A" beats "B", not the mean probability of "A"'),
        (replace(2, lambda ab, ba, t: (labels(ab, ba) == t).double().mean().item()),
         "the agreement is measured over the decided pairs only: leave the ties out"),
        (replace(1, lambda ab, ba, t: float((labels(ab, ba) == TIE).sum().item())),
         "the tie rate is a share of the pairs (a mean), not a count"),
    ]  # fmt: skip


@exercise_check
def check_rlaif_judge_statistics(student: Callable[[Tensor, Tensor, Tensor], tuple[float, float, float]]) -> None:
    """Lab 03-9: ``judge_statistics(logp_ab, logp_ba, truth)`` -> ``(first_slot, tie_rate,
    accuracy)``, three floats."""
    check_callable("judge_statistics", student)

    def as_floats(logp_ab: Tensor, logp_ba: Tensor, truth: Tensor) -> Tensor:
        got = student(logp_ab.clone(), logp_ba.clone(), truth.clone())
        if not isinstance(got, tuple) or len(got) != 3:
            raise AssertionError(
                f"judge_statistics must return a tuple (first_slot, tie_rate, accuracy), got {type(got).__name__}"
            )
        try:
            return torch.tensor([float(x) for x in got], dtype=torch.float64)
        except (TypeError, ValueError):
            raise AssertionError("judge_statistics must return three numbers") from None

    def reference(*args: Tensor) -> Tensor:
        return torch.tensor(reference_judge_statistics(*args), dtype=torch.float64)

    hints = [(lambda *a, w=w: torch.tensor(w(*a), dtype=torch.float64), m) for w, m in _statistics_mistakes()]
    compare_with_reference(
        "judge_statistics", as_floats, reference, _cases(11), atol=1e-6, rtol=1e-5, hints=hints,
    )  # fmt: skip
