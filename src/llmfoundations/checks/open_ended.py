"""Checks for Lab 05-2, evaluating open-ended generation: a rubric's weighted total and a
paired bootstrap interval.

Each check runs the student's function next to a reference on fixed inputs and either
prints one line of success or raises ``AssertionError`` naming the failing case, with a
hint when the result reproduces a known mistake:

- ``weighted_totals``: the plain mean of the criterion scores (weights ignored), the
  weighted sum not divided by the sum of the weights, divided by the number of criteria
  instead, weights matched to criteria by position instead of by name (the cases give
  the weights in another order than the scores);
- ``paired_bootstrap_ci``: resampling the two systems' scores with two independent draws
  of indices (which throws away the pairing), a 90% interval instead of 95%, the
  interval of each system subtracted from the other's (``low_a - high_b`` to
  ``high_a - low_b``).

The references are ``llmfoundations.evaluation.harness.bootstrap_ci`` (itself tested
against ``scipy.stats.bootstrap``) and plain Python.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llmfoundations.evaluation.harness import bootstrap_ci

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_rubric_weighted_totals", "check_paired_bootstrap_ci"]


# ---------------------------------------------------------------------- weighted totals


def reference_weighted_totals(
    scores: Sequence[Mapping[str, float]], weights: Mapping[str, float]
) -> list[float]:
    """``sum_c w_c s_c / sum_c w_c`` for each output's scores, criteria matched by name.

    >>> reference_weighted_totals([{"a": 1.0, "b": 0.0}], {"b": 1.0, "a": 3.0})
    [0.75]
    """
    total_weight = sum(weights.values())
    return [sum(weights[c] * s[c] for c in weights) / total_weight for s in scores]


def _as_tensor(name: str, fn: Callable[..., Any]) -> Callable[..., Tensor]:
    """Call ``fn`` and turn its list of numbers into a float64 tensor (a clear error otherwise)."""

    def wrapped(*args: Any) -> Tensor:
        got = fn(*args)
        if isinstance(got, (str, bytes)) or not isinstance(got, (list, tuple, np.ndarray)):
            raise AssertionError(f"{name} must return a list of numbers, got {type(got).__name__}")
        try:
            return torch.tensor([float(x) for x in got], dtype=torch.float64)
        except (TypeError, ValueError):
            raise AssertionError(f"{name} must return a list of numbers, got {got!r:.80}") from None

    return wrapped


def _unweighted(scores, weights):
    return [sum(s.values()) / len(s) for s in scores]


def _not_normalised(scores, weights):
    return [sum(weights[c] * s[c] for c in weights) for s in scores]


def _over_count(scores, weights):
    return [sum(weights[c] * s[c] for c in weights) / len(weights) for s in scores]


def _by_position(scores, weights):
    w = list(weights.values())
    return [sum(wi * si for wi, si in zip(w, s.values(), strict=True)) / sum(w) for s in scores]


@exercise_check
def check_rubric_weighted_totals(
    student: Callable[[Sequence[Mapping[str, float]], Mapping[str, float]], list[float]],
) -> None:
    """Lab 05-2: ``weighted_totals(scores, weights)``, each output's rubric total."""
    check_callable("weighted_totals", student)
    weights = {"policy": 3.0, "order": 2.0, "concise": 1.0, "complete": 1.0}  # not the scores' order
    scores = [
        {"order": 1.0, "policy": 0.0, "concise": 1.0, "complete": 1.0},
        {"order": 1.0, "policy": 1.0, "concise": 1.0, "complete": 0.0},
        {"order": 0.0, "policy": 0.0, "concise": 1.0, "complete": 0.0},
        {"order": 0.5, "policy": 0.25, "concise": 1.0, "complete": 1.0},
    ]
    cases = [
        ((scores, weights), {}),
        (([{"order": 1.0, "policy": 0.0}], {"policy": 1.0, "order": 1.0}), {}),  # equal weights
        (([{"correct": 0.9, "polite": 0.2}], {"polite": 1.0, "correct": 4.0}), {}),
        (([{"x": 1.0, "y": 0.0, "z": 0.5}], {"z": 0.5, "y": 0.25, "x": 0.25}), {}),  # weights sum to 1
    ]
    hints = [
        (_as_tensor("weighted_totals", _unweighted),
         "that is the plain mean of the scores: multiply each by its criterion's weight"),
        (_as_tensor("weighted_totals", _not_normalised),
         "divide the weighted sum by the sum of the weights, so the total stays in [0, 1]"),
        (_as_tensor("weighted_totals", _over_count),
         "divide by the sum of the weights, not by the number of criteria"),
        (_as_tensor("weighted_totals", _by_position),
         "match each weight to its criterion by name (weights[c] * s[c]): the two dicts "
         "list the criteria in different orders"),
    ]
    compare_with_reference(
        "weighted_totals",
        _as_tensor("weighted_totals", student),
        _as_tensor("weighted_totals", reference_weighted_totals),
        cases,
        atol=1e-9,
        rtol=1e-9,
        hints=hints,
    )


# --------------------------------------------------------------------- paired bootstrap


def reference_paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of ``mean(a - b)``, resampling the pairs.

    >>> reference_paired_bootstrap_ci([1, 1, 1, 0], [0, 1, 0, 0])
    (0.0, 1.0)
    """
    ci = bootstrap_ci(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64),
                      n_resamples=n_resamples, seed=seed)
    return ci.low, ci.high


def _quantiles(means: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def _unpaired(a, b, n_resamples=1000, seed=0):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), (n_resamples, len(a)))
    ib = rng.integers(0, len(b), (n_resamples, len(b)))
    return _quantiles(a[ia].mean(axis=1) - b[ib].mean(axis=1))


def _ninety(a, b, n_resamples=1000, seed=0):
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    index = np.random.default_rng(seed).integers(0, len(d), (n_resamples, len(d)))
    return _quantiles(d[index].mean(axis=1), 0.90)


def _interval_difference(a, b, n_resamples=1000, seed=0):
    ca = bootstrap_ci(np.asarray(a, dtype=np.float64), n_resamples=n_resamples, seed=seed)
    cb = bootstrap_ci(np.asarray(b, dtype=np.float64), n_resamples=n_resamples, seed=seed)
    return ca.low - cb.high, ca.high - cb.low


def _pair(name: str, fn: Callable[..., Any]) -> Callable[..., Tensor]:
    """Call ``fn`` and turn its ``(low, high)`` into a float64 tensor (a clear error otherwise)."""

    def wrapped(*args: Any, **kwargs: Any) -> Tensor:
        got = fn(*args, **kwargs)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise AssertionError(f"{name} must return a pair (low, high), got {got!r:.80}")
        try:
            low, high = float(got[0]), float(got[1])
        except (TypeError, ValueError):
            raise AssertionError(f"{name} must return two numbers, got {got!r:.80}") from None
        return torch.tensor([low, high], dtype=torch.float64)

    return wrapped


@exercise_check
def check_paired_bootstrap_ci(
    student: Callable[..., tuple[float, float]],
) -> None:
    """Lab 05-2: ``paired_bootstrap_ci(a, b, n_resamples, seed)``, the interval of the mean difference."""
    check_callable("paired_bootstrap_ci", student)
    rng = np.random.default_rng(12)
    difficulty = rng.uniform(0, 1, 30)  # shared by both systems: the pairing matters
    a = np.clip(difficulty + rng.normal(0.10, 0.05, 30), 0, 1).round(3).tolist()
    b = np.clip(difficulty + rng.normal(0.00, 0.05, 30), 0, 1).round(3).tolist()
    cases = [
        ((a, b), {"n_resamples": 1000, "seed": 0}),
        ((a[:8], b[:8]), {"n_resamples": 2000, "seed": 3}),
        (([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]), {"n_resamples": 500, "seed": 7}),
        (([0.75, 0.5, 0.25, 1.0, 0.5], [0.5, 0.5, 0.25, 0.75, 0.25]), {"n_resamples": 1000, "seed": 1}),
    ]
    hints = [
        (_pair("paired_bootstrap_ci", _unpaired),
         "draw ONE set of indices and take the same examples from a and b (resample the "
         "differences a - b): two independent draws lose the pairing and widen the interval"),
        (_pair("paired_bootstrap_ci", _ninety),
         "a 95% interval keeps the middle 95%: the 2.5% and 97.5% quantiles"),
        (_pair("paired_bootstrap_ci", _interval_difference),
         "bootstrap the per-example differences a - b, not each system on its own"),
    ]
    compare_with_reference(
        "paired_bootstrap_ci",
        _pair("paired_bootstrap_ci", student),
        _pair("paired_bootstrap_ci", reference_paired_bootstrap_ci),
        cases,
        atol=1e-9,
        rtol=1e-9,
        hints=hints,
    )
