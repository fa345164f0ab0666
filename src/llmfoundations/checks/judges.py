"""Checks for Lab 05-3 (LLM judges, calibrated): kappa, ECE and the swap test, by hand.

Each check runs the student's function next to a reference on fixed inputs and either
prints one line of success or raises ``AssertionError`` naming the failing case, with a
hint when the result matches a known mistake:

- ``kappa_from_table``: returning the observed agreement ``p_o`` (no chance correction),
  taking the chance agreement as ``1 / K`` (uniform) instead of the product of the
  marginals, using the row marginals twice (``sum r_k^2``), dividing by ``1 - p_o``;
- ``equal_width_ece``: the unweighted mean of the bins' gaps, the signed gap (no absolute
  value, or the absolute value of the signed sum, which is one bin for everything:
  ``|accuracy - mean confidence|``), a confidence on an
  inner edge put in the bin *above* (``floor(c * M)``), bins over ``[0, 1)`` that drop or
  misplace a confidence of exactly 1;
- ``swap_averaged``: averaging ``P(A)`` of both games (which measures the position bias,
  not the preference), forgetting to flip the second game, calling a pair consistent when
  both games say "A" (the slot, not the answer), calling 1/2 a preference.

The references are ``llmfoundations.evaluation.agreement`` (``cohen_kappa``,
``expected_calibration_error``, themselves tested against scikit-learn) and the
``PairwiseJudgement`` arithmetic of ``llmfoundations.evaluation.judge``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from llmfoundations.evaluation.agreement import cohen_kappa, expected_calibration_error

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_kappa_from_table", "check_equal_width_ece", "check_swap_averaged"]


def _as_float(name: str, student: Callable[..., Any]) -> Callable[..., Tensor]:
    """Wrap a student's float-returning function so results compare within a tolerance."""

    def wrapped(*args: Any, **kwargs: Any) -> Tensor:
        got = student(*args, **kwargs)
        if hasattr(got, "item") and not isinstance(got, bool):  # a NumPy or torch scalar
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise AssertionError(f"{name} must return a float, got {type(got).__name__}")
        return torch.tensor(float(got), dtype=torch.float64)

    return wrapped


def _float_reference(fn: Callable[..., float]) -> Callable[..., Tensor]:
    return lambda *args, **kwargs: torch.tensor(float(fn(*args, **kwargs)), dtype=torch.float64)


# -------------------------------------------------------------------------------- kappa


def reference_kappa_from_table(table: Sequence[Sequence[int]]) -> float:
    """Cohen's kappa of a ``K x K`` confusion table, via ``agreement.cohen_kappa`` on the
    items the table counts.

    >>> round(reference_kappa_from_table([[20, 5], [10, 15]]), 6)
    0.4
    """
    a, b = [], []
    for i, row in enumerate(table):
        for j, count in enumerate(row):
            a += [i] * count
            b += [j] * count
    return cohen_kappa(a, b, labels=list(range(len(table))))


def _kappa_parts(table: Sequence[Sequence[int]]) -> tuple[float, list[float], list[float]]:
    n = sum(sum(row) for row in table)
    k = len(table)
    p_o = sum(table[i][i] for i in range(k)) / n
    rows = [sum(table[i]) / n for i in range(k)]
    cols = [sum(table[i][j] for i in range(k)) / n for j in range(k)]
    return p_o, rows, cols


def _kappa_observed_only(table):
    return _kappa_parts(table)[0]


def _kappa_uniform_chance(table):
    p_o, rows, _ = _kappa_parts(table)
    p_e = 1 / len(rows)
    return (p_o - p_e) / (1 - p_e)


def _kappa_rows_twice(table):
    p_o, rows, _ = _kappa_parts(table)
    p_e = sum(r * r for r in rows)
    return (p_o - p_e) / (1 - p_e)


def _kappa_wrong_denominator(table):
    p_o, rows, cols = _kappa_parts(table)
    p_e = sum(r * c for r, c in zip(rows, cols, strict=True))
    return (p_o - p_e) / (1 - p_o) if p_o != 1 else 0.0


KAPPA_TABLES = [
    [[20, 5], [10, 15]],  # kappa 0.4 (the docstring)
    [[45, 0], [40, 15]],  # a judge that mostly says "No"-like class 0
    [[0, 24], [0, 24]],  # one empty column: a judge that says one thing; kappa 0
    [[30, 2, 1], [3, 25, 4], [0, 5, 30]],  # three classes, rows and columns differ
    [[5, 10], [12, 3]],  # worse than chance: kappa < 0
    [[7, 1, 0, 2], [0, 9, 3, 0], [1, 0, 6, 2], [3, 0, 1, 8]],  # four classes
]


@exercise_check
def check_kappa_from_table(student: Callable[[list[list[int]]], float]) -> None:
    """Lab 05-3: ``kappa_from_table(table)``, Cohen's kappa from a confusion table."""
    check_callable("kappa_from_table", student)
    compare_with_reference(
        "kappa_from_table",
        _as_float("kappa_from_table", student),
        _float_reference(reference_kappa_from_table),
        [(([list(row) for row in t],), {}) for t in KAPPA_TABLES],
        atol=1e-9,
        rtol=1e-7,
        hints=[
            (_float_reference(_kappa_observed_only),
             "you returned the observed agreement p_o; kappa discounts the chance agreement: "
             "(p_o - p_e) / (1 - p_e)"),
            (_float_reference(_kappa_uniform_chance),
             "p_e is not 1/K: it is sum_k r_k * c_k, the product of the row and column shares "
             "(how often each rater uses each class)"),
            (_float_reference(_kappa_rows_twice),
             "p_e multiplies the row share of class k by its *column* share, not by itself"),
            (_float_reference(_kappa_wrong_denominator),
             "the denominator is 1 - p_e (the most agreement above chance possible), not 1 - p_o"),
        ],
    )


# ---------------------------------------------------------------------------------- ECE


def reference_equal_width_ece(
    confidence: Sequence[float], correct: Sequence[int], n_bins: int = 10
) -> float:
    """ECE over equal-width bins ``(m/M, (m+1)/M]`` (0 in the first): ``agreement``'s.

    >>> round(reference_equal_width_ece([0.95, 0.95, 0.65, 0.65], [1, 0, 1, 1]), 6)
    0.4
    """
    return expected_calibration_error(list(confidence), list(correct), n_bins=n_bins)


def _binned(confidence, correct, n_bins, bin_of):
    bins: dict[int, list[tuple[float, int]]] = {}
    for c, ok in zip(confidence, correct, strict=True):
        bins.setdefault(bin_of(c, n_bins), []).append((c, ok))
    out = []
    for items in bins.values():
        conf = sum(c for c, _ in items) / len(items)
        acc = sum(ok for _, ok in items) / len(items)
        out.append((len(items), acc, conf))
    return out


def _upper_edge_bin(c, m):
    return max(math.ceil(c * m) - 1, 0)


def _lower_edge_bin(c, m):  # floor: an inner edge goes to the bin above; 1.0 to bin M-1
    return min(math.floor(c * m), m - 1)


def _ece_unweighted(confidence, correct, n_bins=10):
    parts = _binned(confidence, correct, n_bins, _upper_edge_bin)
    return sum(abs(a - c) for _, a, c in parts) / len(parts)


def _ece_signed_raw(confidence, correct, n_bins=10):
    parts = _binned(confidence, correct, n_bins, _upper_edge_bin)
    n = len(confidence)
    return sum(k / n * (a - c) for k, a, c in parts)


def _ece_one_bin(confidence, correct, n_bins=10):
    n = len(confidence)
    return abs(sum(correct) / n - sum(confidence) / n)


def _ece_floor_bins(confidence, correct, n_bins=10):
    parts = _binned(confidence, correct, n_bins, _lower_edge_bin)
    n = len(confidence)
    return sum(k / n * abs(a - c) for k, a, c in parts)


def _ece_over_all_bins(confidence, correct, n_bins=10):
    parts = _binned(confidence, correct, n_bins, _upper_edge_bin)
    return sum(abs(a - c) for _, a, c in parts) / n_bins


ECE_CASES = [
    ([0.95, 0.95, 0.65, 0.65], [1, 0, 1, 1], 10),  # 0.4, the chapter's example
    ([0.9, 0.8, 0.7, 0.6, 0.55, 0.52], [1, 1, 0, 1, 0, 1], 10),  # confidences on inner edges
    ([0.5, 0.5, 0.5, 0.5], [1, 1, 1, 0], 10),  # one bin, the edge 0.5 belongs to bin 4
    ([1.0, 1.0, 0.0, 0.25, 0.75], [1, 0, 0, 1, 1], 4),  # 1.0 and 0.0, and edges of 4 bins
    ([0.99, 0.91, 0.97, 0.62, 0.58, 0.71, 0.83], [0, 1, 1, 1, 0, 1, 1], 5),  # 5 bins
    ([0.3, 0.35, 0.8, 0.85, 0.9], [0, 1, 1, 1, 0], 3),  # 3 bins, a signed sum would cancel
]


@exercise_check
def check_equal_width_ece(student: Callable[..., float]) -> None:
    """Lab 05-3: ``equal_width_ece(confidence, correct, n_bins)``, the expected calibration error."""
    check_callable("equal_width_ece", student)
    compare_with_reference(
        "equal_width_ece",
        _as_float("equal_width_ece", student),
        _float_reference(reference_equal_width_ece),
        [((list(c), list(y), m), {}) for c, y, m in ECE_CASES],
        atol=1e-9,
        rtol=1e-7,
        hints=[
            (_float_reference(_ece_unweighted),
             "weight each bin's gap by its share of the verdicts, n_m / n, instead of "
             "averaging the gaps of the bins"),
            (_float_reference(_ece_over_all_bins),
             "weight each bin's gap by n_m / n; dividing by the number of bins counts empty "
             "bins and ignores how full each one is"),
            (_float_reference(_ece_signed_raw),
             "take the absolute gap |acc_m - conf_m| in each bin before summing"),
            (_float_reference(_ece_one_bin),
             "take the absolute gap in each bin, then sum: one gap over all verdicts (the same "
             "as the absolute value of the signed sum) lets over- and under-confident bins cancel"),
            (_float_reference(_ece_floor_bins),
             "a confidence exactly on an inner edge (such as 0.5 with 10 bins) belongs to "
             "the bin below it: bin (m/M, (m+1)/M], so use ceil(c * M) - 1, not floor(c * M)"),
        ],
    )


# ---------------------------------------------------------------------------- swap test


def reference_swap_averaged(p_a_12: float, p_a_21: float) -> tuple[float, bool]:
    """``(p_first, consistent)`` from ``P(A)`` of the two games, as ``PairwiseJudgement``.

    >>> reference_swap_averaged(0.9, 0.8)
    (0.55, False)
    """
    p_12, p_21 = p_a_12, 1 - p_a_21
    consistent = (p_12 > 0.5 and p_21 > 0.5) or (p_12 < 0.5 and p_21 < 0.5)
    return round((p_12 + p_21) / 2, 12), consistent


SWAP_CASES = [
    (0.9, 0.8),  # the chapter's example: the slot decides, (0.55, False)
    (0.9, 0.2),  # consistent for answer 1
    (0.3, 0.6),  # consistent for answer 2
    (0.5, 0.3),  # 1/2 prefers neither: never consistent
    (0.7, 0.7),  # A both times: inconsistent, exactly 1/2
    (0.2, 0.9),  # B both times
    (0.55, 0.5),  # 1/2 in the second game
]


def _swap_result(student: Callable[[float, float], Any]) -> Callable[[float, float], Tensor]:
    """Wrap the student's function: its ``(p_first, consistent)`` as one tensor ``(2,)``."""

    def wrapped(a: float, b: float) -> Tensor:
        got = student(a, b)
        if not isinstance(got, tuple) or len(got) != 2:
            raise AssertionError(
                f"swap_averaged must return a tuple (p_first, consistent), got {type(got).__name__}"
            )
        p, ok = got
        if hasattr(p, "item"):
            p = p.item()
        if hasattr(ok, "item"):
            ok = ok.item()
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise AssertionError(f"swap_averaged: p_first must be a float, got {type(p).__name__}")
        if not isinstance(ok, bool):
            raise AssertionError(f"swap_averaged: consistent must be a bool, got {type(ok).__name__}")
        return torch.tensor([float(p), float(ok)], dtype=torch.float64)

    return wrapped


def _swap_ref(fn):
    def wrapped(a, b):
        p, ok = fn(a, b)
        return torch.tensor([float(p), float(ok)], dtype=torch.float64)

    return wrapped


def _swap_position_a(a, b):  # P(A) averaged: the bias, not the preference
    return (a + b) / 2, (a > 0.5 and b > 0.5) or (a < 0.5 and b < 0.5)


def _swap_no_flip(a, b):
    return (a + b) / 2, (a > 0.5 and 1 - b > 0.5) or (a < 0.5 and 1 - b < 0.5)


def _swap_same_letter(a, b):  # consistent when the same *letter* wins both games
    p_21 = 1 - b
    return (a + p_21) / 2, (a > 0.5 and b > 0.5) or (a < 0.5 and b < 0.5)


def _swap_half_counts(a, b):  # >= instead of >: 1/2 taken as a preference
    p_21 = 1 - b
    return (a + p_21) / 2, (a >= 0.5 and p_21 >= 0.5) or (a <= 0.5 and p_21 <= 0.5)


@exercise_check
def check_swap_averaged(student: Callable[[float, float], tuple[float, bool]]) -> None:
    """Lab 05-3: ``swap_averaged(p_a_12, p_a_21)``, the swap test of a pairwise judge."""
    check_callable("swap_averaged", student)
    compare_with_reference(
        "swap_averaged",
        _swap_result(student),
        _swap_ref(reference_swap_averaged),
        [((a, b), {}) for a, b in SWAP_CASES],
        atol=1e-9,
        rtol=1e-7,
        hints=[
            (_swap_ref(_swap_position_a),
             "in the second game answer 1 is shown as B, so P(answer 1 is better) there is "
             "1 - P(A); averaging P(A) of both games measures the position bias instead"),
            (_swap_ref(_swap_no_flip),
             "flip the second game (1 - p_a_21) in the average too, not only in the consistency"),
            (_swap_ref(_swap_same_letter),
             "a pair is consistent when both games prefer the same *answer*; the same letter "
             "winning both games means the slot decided, which is inconsistent"),
            (_swap_ref(_swap_half_counts),
             "a probability of exactly 1/2 prefers neither answer, so it is never consistent: "
             "use > and <, not >= and <="),
        ],
    )
