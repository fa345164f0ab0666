"""How far to trust a judge: agreement with the truth, and whether its confidence means anything.

A judge (a person, a metric, a language model) is checked against labels we trust: the
known answers of a verifiable task, or human ratings. This module holds the statistics,
as plain functions of 1-D arrays (lists, NumPy arrays or tensors), computed in float64:

- **Agreement on labels.** :func:`accuracy`, and :func:`cohen_kappa` (Cohen, 1960), which
  discounts the agreement two raters would reach by chance given how often each uses
  each label: ``kappa = (p_o - p_e) / (1 - p_e)``. 0 is chance level, 1 is perfect;
  ``weights="linear"`` or ``"quadratic"`` give partial credit to near misses on an
  ordinal scale (distances count *positions* in ``labels``, so pass the full scale,
  ``labels=[1, 2, 3, 4, 5]``, when some values never occur).
- **Agreement on rankings.** :func:`spearman` (Pearson correlation of the ranks, ties
  sharing their average rank: :func:`rankdata`) and :func:`kendall_tau` (tau-b: the
  balance of concordant and discordant pairs, corrected for ties). A judge whose scores
  rank the answers like the truth does is useful even when its scale is off.
- **Calibration.** A judge that says "90% sure" should be right 90% of the time. The
  *reliability curve* (:func:`reliability_curve`) sorts predictions into equal-width
  confidence bins and compares each bin's mean confidence with its accuracy; the
  *expected calibration error* (:func:`expected_calibration_error`) is their gap averaged
  over the bins, weighted by bin size (Guo et al., 2017, https://arxiv.org/abs/1706.04599).
  :func:`top_label` turns a matrix of probabilities and the true labels into the
  (confidence, correct) pairs these functions take.
- **Temperature scaling** (:func:`fit_temperature`, Guo et al. again): one scalar ``T``
  divides the judge's logits, ``softmax(z / T)``, chosen to minimise the negative
  log-likelihood on *held-out* labelled data. It keeps the argmax (so the accuracy) and
  changes only the confidence: ``T > 1`` softens an over-confident judge.

Equal to scipy / scikit-learn (the tests): ``sklearn.metrics.accuracy_score`` and
``cohen_kappa_score`` (all weightings), ``scipy.stats.rankdata``, ``spearmanr`` and
``kendalltau`` (tau-b), ``sklearn.calibration.calibration_curve`` (same bins: edges
``linspace(0, 1, n_bins + 1)``, a confidence on an inner edge goes to the lower bin),
and the temperature that ``scipy.optimize.minimize_scalar`` finds for the same loss.
Differences: where those return NaN (a constant input, one label only) we raise a
``ValueError`` that says why the statistic is undefined.

Left out: p-values and confidence intervals of the correlations (the ``harness`` module
bootstraps means), Fleiss' kappa and Krippendorff's alpha (more than two raters),
adaptive (equal-mass) bins, classwise ECE, and vector or matrix scaling (a temperature
per class).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from torch import Tensor

from llmfoundations._validate import check_choice, check_int

__all__ = [
    "Weights",
    "accuracy",
    "cohen_kappa",
    "rankdata",
    "spearman",
    "kendall_tau",
    "top_label",
    "ReliabilityCurve",
    "reliability_curve",
    "expected_calibration_error",
    "TemperatureFit",
    "fit_temperature",
]

Weights = Literal["none", "linear", "quadratic"]
ArrayLike = Sequence[float] | np.ndarray | Tensor


# ------------------------------------------------------------------ agreement on labels


def accuracy(predicted: ArrayLike, truth: ArrayLike) -> float:
    """Share of positions where ``predicted`` equals ``truth``.

    >>> accuracy([1, 2, 3, 4], [1, 2, 4, 4])
    0.75
    """
    a, b = _pair("predicted", predicted, "truth", truth, numeric=False)
    return float(np.mean(a == b))


def cohen_kappa(
    a: ArrayLike,
    b: ArrayLike,
    *,
    weights: Weights = "none",
    labels: Sequence[object] | None = None,
) -> float:
    """Cohen's kappa between two raters' labels of the same items.

    ``kappa = 1 - sum(w * observed) / sum(w * expected)``, with ``observed`` the
    confusion matrix, ``expected`` the outer product of the two raters' label counts
    over the number of items, and ``w`` 0 on the diagonal and 1 elsewhere
    (``"none"``), ``|i - j|`` (``"linear"``) or ``(i - j)^2`` (``"quadratic"``), with
    ``i, j`` positions in ``labels`` (default: the sorted labels that occur).

    >>> cohen_kappa(["yes", "yes", "no", "no"], ["yes", "no", "no", "no"])
    0.5
    """
    check_choice("weights", weights, get_args(Weights))
    x, y = _pair("a", a, "b", b, numeric=False)
    if labels is None:
        classes = sorted(set(x.tolist()) | set(y.tolist()))
    else:
        if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
            raise ValueError(f"labels must be a non-empty list, got {labels!r}")
        classes = list(labels)
        if len(set(classes)) != len(classes):
            raise ValueError(f"labels must not repeat, got {classes}")
        unknown = (set(x.tolist()) | set(y.tolist())) - set(classes)
        if unknown:
            raise ValueError(f"a and b hold labels missing from labels: {sorted(unknown, key=str)}")
    index = {label: k for k, label in enumerate(classes)}
    k = len(classes)
    observed = np.zeros((k, k))  # (K, K): rows a's label, columns b's
    np.add.at(observed, ([index[v] for v in x.tolist()], [index[v] for v in y.tolist()]), 1)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    i, j = np.indices((k, k))
    if weights == "none":
        w = (i != j).astype(float)
    elif weights == "linear":
        w = np.abs(i - j).astype(float)
    else:
        w = ((i - j) ** 2).astype(float)
    chance = float(np.sum(w * expected))
    if chance == 0:
        raise ValueError(
            "kappa is undefined: chance disagreement is 0 (both raters use one and the same label)"
        )
    return 1 - float(np.sum(w * observed)) / chance


# ---------------------------------------------------------------- agreement on rankings


def rankdata(x: ArrayLike) -> np.ndarray:
    """Ranks ``1..n`` of ``x``, ties sharing the mean of their ranks (float64).

    >>> rankdata([10, 20, 10, 30]).tolist()
    [1.5, 3.0, 1.5, 4.0]
    """
    return _rankdata(_vector("x", x))


def _rankdata(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # a new group of tied values starts where the sorted value changes
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]  # exclusive
    mean_rank = (starts + 1 + ends) / 2  # mean of the ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation: Pearson's correlation of :func:`rankdata` ranks.

    >>> spearman([1, 2, 3, 4], [10, 20, 40, 30])
    0.8
    """
    a, b = _pair("x", x, "y", y)
    _check_not_constant(x=a, y=b)
    ra, rb = _rankdata(a), _rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float(np.clip(np.sum(ra * rb) / math.sqrt(np.sum(ra * ra) * np.sum(rb * rb)), -1, 1))


def kendall_tau(x: ArrayLike, y: ArrayLike) -> float:
    """Kendall's tau-b: ``(C - D) / sqrt((n0 - n1) * (n0 - n2))``.

    Over all ``n0 = n(n-1)/2`` pairs of items, ``C`` pairs are ordered the same way by
    ``x`` and ``y``, ``D`` the opposite way; ``n1`` and ``n2`` count the pairs tied in
    ``x`` and in ``y``. O(n^2) memory and time: fine for a few thousand items.

    >>> kendall_tau([1, 2, 3, 4], [10, 20, 40, 30])
    0.6666666666666666
    """
    a, b = _pair("x", x, "y", y)
    _check_not_constant(x=a, y=b)
    upper = np.triu_indices(len(a), k=1)  # every pair i < j once
    sx = np.sign(a[:, None] - a[None, :])[upper]  # (n0,)
    sy = np.sign(b[:, None] - b[None, :])[upper]  # (n0,)
    concordant_minus_discordant = float(np.sum(sx * sy))
    untied_x, untied_y = float(np.sum(sx != 0)), float(np.sum(sy != 0))  # n0 - n1, n0 - n2
    return float(np.clip(concordant_minus_discordant / math.sqrt(untied_x * untied_y), -1, 1))


# -------------------------------------------------------------------------- calibration


def top_label(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, correct)`` of a classifier's top choice, for the calibration functions.

    ``probs`` is ``(B, O)`` (each row a distribution over ``O`` options) and ``labels``
    ``(B,)`` the indices of the true options. ``confidence = max_k probs[:, k]`` and
    ``correct = (argmax_k probs[:, k] == labels)`` as floats.

    >>> top_label([[0.9, 0.1], [0.4, 0.6]], [0, 0])
    (array([0.9, 0.6]), array([1., 0.]))
    """
    p = _matrix("probs", probs)
    y = _labels(labels, p.shape)
    if np.any(p < 0) or np.any(p > 1):
        raise ValueError("probs must lie in [0, 1]")
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(float)


@dataclass(frozen=True)
class ReliabilityCurve:
    """The non-empty bins of a reliability diagram (bins of equal width on [0, 1]).

    Attributes:
        n_bins: bins on [0, 1]; ``edges = linspace(0, 1, n_bins + 1)``.
        bin_index: which bin each entry describes (0 = the lowest confidences), one entry
            per non-empty bin, as in the next three fields.
        counts: predictions in the bin.
        mean_confidence: their mean confidence.
        accuracy: the share of them that were correct.

    Perfect calibration puts every point ``(mean_confidence, accuracy)`` on the diagonal.
    """

    n_bins: int
    bin_index: tuple[int, ...]
    counts: tuple[int, ...]
    mean_confidence: tuple[float, ...]
    accuracy: tuple[float, ...]

    def __post_init__(self) -> None:
        check_int("n_bins", self.n_bins, minimum=1)
        lengths = {
            len(self.bin_index),
            len(self.counts),
            len(self.mean_confidence),
            len(self.accuracy),
        }
        if len(lengths) != 1:
            raise ValueError(
                "bin_index, counts, mean_confidence and accuracy must have one entry per bin"
            )
        if any(c <= 0 for c in self.counts):
            raise ValueError(f"counts must be positive (only non-empty bins), got {self.counts}")

    @property
    def edges(self) -> np.ndarray:
        """``(n_bins + 1,)`` bin edges."""
        return np.linspace(0.0, 1.0, self.n_bins + 1)


def reliability_curve(
    confidence: ArrayLike, correct: ArrayLike, *, n_bins: int = 10
) -> ReliabilityCurve:
    """Bin predictions by confidence and compare each bin's confidence with its accuracy.

    ``confidence[i]`` in ``[0, 1]`` is how sure the judge was of its answer ``i``,
    ``correct[i]`` (0/1 or bool) whether that answer was right. Bin ``m`` holds the
    confidences in ``(m/M, (m+1)/M]`` (the first bin also holds 0). Empty bins are left out.

    >>> c = reliability_curve([0.95, 0.95, 0.65, 0.65], [1, 0, 1, 1], n_bins=10)
    >>> c.bin_index, c.counts, c.accuracy
    ((6, 9), (2, 2), (1.0, 0.5))
    """
    check_int("n_bins", n_bins, minimum=1)
    conf, hit = _calibration_inputs(confidence, correct)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], conf)  # an inner edge belongs to the bin below it
    counts = np.bincount(bins, minlength=n_bins)
    sum_conf = np.bincount(bins, weights=conf, minlength=n_bins)
    sum_hit = np.bincount(bins, weights=hit, minlength=n_bins)
    used = np.flatnonzero(counts)
    return ReliabilityCurve(
        n_bins=n_bins,
        bin_index=tuple(int(m) for m in used),
        counts=tuple(int(counts[m]) for m in used),
        mean_confidence=tuple(float(sum_conf[m] / counts[m]) for m in used),
        accuracy=tuple(float(sum_hit[m] / counts[m]) for m in used),
    )


def expected_calibration_error(
    confidence: ArrayLike, correct: ArrayLike, *, n_bins: int = 10
) -> float:
    """ECE: ``sum_m (n_m / n) * |accuracy_m - confidence_m|`` over the bins of
    :func:`reliability_curve`. 0 for a perfectly calibrated judge; at most 1.

    >>> round(expected_calibration_error([0.95, 0.95, 0.65, 0.65], [1, 0, 1, 1]), 6)
    0.4
    """
    curve = reliability_curve(confidence, correct, n_bins=n_bins)
    n = sum(curve.counts)
    return float(
        sum(
            c / n * abs(a - m)
            for c, a, m in zip(curve.counts, curve.accuracy, curve.mean_confidence, strict=True)
        )
    )


# ------------------------------------------------------------------ temperature scaling


@dataclass(frozen=True)
class TemperatureFit:
    """What :func:`fit_temperature` found.

    Attributes:
        temperature: ``T`` in ``[t_min, t_max]``; divide the logits by it.
        nll_before: mean negative log-likelihood of the labels at ``T = 1``.
        nll_after: the same at ``T``.
        at_bound: ``T`` sits on ``t_min`` or ``t_max`` (the optimum lies beyond: the
            logits separate the labels perfectly, or carry no information).
    """

    temperature: float
    nll_before: float
    nll_after: float
    at_bound: bool

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")

    def probabilities(self, logits: ArrayLike) -> np.ndarray:
        """``softmax(logits / T)`` row by row: ``(B, O)`` float64."""
        return _softmax(_matrix("logits", logits) / self.temperature)


def fit_temperature(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    t_min: float = 0.01,
    t_max: float = 100.0,
) -> TemperatureFit:
    """The temperature ``T`` that minimises the NLL of ``labels`` under ``softmax(logits / T)``.

    ``logits`` is ``(B, O)``: anything whose softmax is the judge's distribution, such as
    the ``logprobs`` of a ``judge`` result (a constant shift per row does not matter).
    ``labels`` ``(B,)`` holds the indices of the true options. Fit it on held-out data,
    then apply it to new judgements with :meth:`TemperatureFit.probabilities`.

    As a function of ``beta = 1 / T`` the NLL is convex, and its derivative,
    ``mean(E_softmax(beta z)[z] - z_label)``, increases with ``beta``; bisection on it
    finds the minimum to machine precision. The search is limited to
    ``[t_min, t_max]``.

    >>> fit = fit_temperature([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], [0, 0, 1, 1])
    >>> round(fit.temperature, 4), fit.nll_after < fit.nll_before
    (1.8205, True)
    """
    z = _matrix("logits", logits)
    y = _labels(labels, z.shape)
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite")
    for name, value in (("t_min", t_min), ("t_max", t_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if not t_min < t_max:
        raise ValueError(f"t_min must be < t_max, got {t_min} and {t_max}")
    z_label = z[np.arange(len(y)), y]  # (B,)

    def slope(beta: float) -> float:  # d NLL / d beta
        return float(np.mean(np.sum(_softmax(beta * z) * z, axis=1) - z_label))

    lo, hi = 1.0 / t_max, 1.0 / t_min  # beta
    if slope(lo) >= 0:
        beta, at_bound = lo, True
    elif slope(hi) <= 0:
        beta, at_bound = hi, True
    else:
        for _ in range(200):
            mid = (lo + hi) / 2
            if mid in (lo, hi):
                break
            if slope(mid) < 0:
                lo = mid
            else:
                hi = mid
        beta, at_bound = (lo + hi) / 2, False
    return TemperatureFit(
        temperature=1.0 / beta,
        nll_before=_nll(z, y),
        nll_after=_nll(beta * z, y),
        at_bound=at_bound,
    )


def _softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    """Mean of ``logsumexp(z_i) - z_i[y_i]`` (stable)."""
    top = z.max(axis=1)
    lse = top + np.log(np.sum(np.exp(z - top[:, None]), axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


# ------------------------------------------------------------------------------- checks


def _as_array(name: str, x: object) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, str) or not isinstance(x, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a list, a NumPy array or a tensor, got {type(x).__name__}")
    return np.asarray(x)


def _vector(name: str, x: object, numeric: bool = True) -> np.ndarray:
    a = _as_array(name, x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if len(a) == 0:
        raise ValueError(f"{name} must not be empty")
    if numeric:
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite (no NaN or inf)")
    return a


def _pair(
    name_a: str, a: object, name_b: str, b: object, numeric: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    x, y = _vector(name_a, a, numeric), _vector(name_b, b, numeric)
    if len(x) != len(y):
        raise ValueError(
            f"{name_a} and {name_b} must have the same length, got {len(x)} and {len(y)}"
        )
    return x, y


def _check_not_constant(**arrays: np.ndarray) -> None:
    for name, a in arrays.items():
        if np.all(a == a[0]):
            raise ValueError(f"{name} is constant: a correlation with it is undefined")


def _matrix(name: str, x: object) -> np.ndarray:
    a = _as_array(name, x)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] < 2:
        raise ValueError(f"{name} must have shape (B, O) with B >= 1 and O >= 2, got {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    return a.astype(np.float64)


def _labels(labels: object, shape: tuple[int, ...]) -> np.ndarray:
    y = _as_array("labels", labels)
    if y.shape != (shape[0],):
        raise ValueError(f"labels must have shape ({shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must hold integer option indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= shape[1]:
        raise ValueError(f"labels must lie in [0, {shape[1]}), got {y.min()} to {y.max()}")
    return y.astype(np.int64)


def _calibration_inputs(confidence: object, correct: object) -> tuple[np.ndarray, np.ndarray]:
    conf, hit = _pair("confidence", confidence, "correct", correct)
    if np.any(conf < 0) or np.any(conf > 1):
        raise ValueError(f"confidence must lie in [0, 1], got {conf.min()} to {conf.max()}")
    if not np.all((hit == 0) | (hit == 1)):
        raise ValueError("correct must hold 0/1 or booleans")
    return conf, hit
