"""Checks for Lab 07-3 (classification and NLI): contextual calibration and a linear probe.

- ``calibrate_scores(scores, content_free)`` is compared with the course's
  ``applications.tasks.calibrate`` on fixed cases (label scores that are log-probabilities
  of verbalizers, so they do not sum to one over the labels). Hints for known mistakes:
  ``exp`` instead of a softmax over the labels (no renormalisation), the content-free
  log-probabilities averaged *before* the softmax, one calibration per content-free input
  averaged afterwards, dividing log-probabilities instead of probabilities, and normalising
  ``p / p_cf`` by its sum instead of the paper's softmax.
- ``fit_probe(features, labels, n_classes)`` must return an ``nn.Linear`` (``d`` in,
  ``n_classes`` out) trained as a logistic regression: it is run on three small data sets
  (two and three Gaussian blobs, one of them with the classes' means only 2 units apart)
  and must reach a training loss below a fraction of ``ln C`` and a held-out accuracy
  close to the Bayes-optimal one. Training is random, so the check states thresholds, not
  exact weights; it runs inside ``fork_rng`` so the student's generator is untouched.

Left out: checking the probe's training loop step by step (any optimiser that fits is
accepted).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmfoundations.applications.tasks import calibrate

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_calibrate", "check_fit_probe"]


# --------------------------------------------------------------------------- calibrate


def _calibrate_cases(seed: int) -> list[tuple[tuple, dict]]:
    g = torch.Generator().manual_seed(seed)

    def logps(n: int, labels: int) -> Tensor:
        return -torch.rand(n, labels, generator=g) * 6 - 0.5  # (n, L) verbalizer log-probs

    return [
        ((torch.tensor([[0.6, 0.4]]).log(), torch.tensor([[0.75, 0.25]]).log()), {}),
        ((logps(5, 2), logps(1, 2)), {}),
        ((logps(6, 2), logps(3, 2)), {}),
        ((logps(4, 3), logps(3, 3)), {}),
        ((logps(7, 4), logps(2, 4)), {}),
    ]


def _calibrate_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def p_cf(cf: Tensor) -> Tensor:
        return cf.softmax(-1).mean(0)

    return [
        (lambda s, cf: (s.exp() / cf.exp().mean(0)).softmax(-1),
         "renormalise over the labels first: p = softmax(scores) (and the same for the "
         "content-free rows); exp(scores) alone does not sum to one over the labels"),
        (lambda s, cf: (s.softmax(-1) / cf.mean(0).softmax(-1)).softmax(-1),
         "p_cf is the mean of the content-free PROBABILITIES: softmax each row, then average "
         "over the rows (not softmax of the mean log-probability)"),
        (lambda s, cf: torch.stack([(s.softmax(-1) / row.softmax(-1)).softmax(-1) for row in cf]).mean(0),
         "average the content-free probabilities into one p_cf first, then calibrate once"),
        (lambda s, cf: (s.log_softmax(-1) / p_cf(cf).log()).softmax(-1),
         "divide the probabilities p by p_cf, not the log-probabilities"),
        (lambda s, cf: (s.softmax(-1) / p_cf(cf)) / (s.softmax(-1) / p_cf(cf)).sum(-1, keepdim=True),
         "the paper's calibrated output is softmax(W p) with W = diag(p_cf)^-1: a softmax of "
         "p / p_cf, not p / p_cf divided by its sum (the argmax is the same, the numbers are not)"),
        (lambda s, cf: s.softmax(-1) / p_cf(cf),
         "finish with a softmax over the labels: q = softmax(p / p_cf)"),
    ]  # fmt: skip


@exercise_check
def check_calibrate(student: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Lab 07-3: ``calibrate_scores(scores (N, L), content_free (M, L))`` -> the calibrated
    probabilities (N, L), ``softmax(p / p_cf)`` (Zhao et al., 2021)."""
    check_callable("calibrate_scores", student)

    def run(scores: Tensor, content_free: Tensor) -> Tensor:
        got = student(scores.clone(), content_free.clone())
        if not isinstance(got, Tensor) or got.shape != scores.shape:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise AssertionError(
                f"calibrate_scores must return a tensor shaped like scores {tuple(scores.shape)}, "
                f"got {shape}"
            )
        return got.float()

    compare_with_reference(
        "calibrate_scores", run, calibrate, _calibrate_cases(7),
        atol=1e-5, rtol=1e-4, hints=_calibrate_mistakes(),
    )  # fmt: skip


# --------------------------------------------------------------------------- the probe


def _blobs(n_per_class: int, means: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Gaussian blobs with unit variance around ``means`` (C, d): ((C n, d), (C n,))."""
    g = torch.Generator().manual_seed(seed)
    c, d = means.shape
    x = torch.randn(c * n_per_class, d, generator=g) + means.repeat_interleave(n_per_class, 0)
    y = torch.arange(c).repeat_interleave(n_per_class)
    return x, y


def _probe_cases() -> list[tuple[str, Tensor, int, float]]:
    """(description, class means (C, d), training points per class, accuracy needed)."""
    far = torch.zeros(2, 16)
    far[0, 0], far[1, 0] = -3.0, 3.0  # 6 units apart: nearly separable
    near = torch.zeros(2, 32)
    near[0, :2], near[1, :2] = torch.tensor([-0.71, -0.71]), torch.tensor([0.71, 0.71])  # 2 apart
    three = torch.zeros(3, 8)
    three[0, 0], three[1, 1], three[2, 2] = 4.0, 4.0, 4.0
    # Bayes accuracy: ~1.0, Phi(1) = 0.84, ~0.99; thresholds leave room for 32-d overfitting
    return [("two classes, far apart", far, 40, 0.95), ("two classes, 2 units apart", near, 60, 0.72),
            ("three classes", three, 30, 0.93)]  # fmt: skip


@exercise_check
def check_fit_probe(student: Callable[..., Any]) -> None:
    """Lab 07-3: ``fit_probe(features (N, d), labels (N,), n_classes)`` -> a trained
    ``nn.Linear(d, n_classes)`` (a logistic regression on the features)."""
    check_callable("fit_probe", student)
    with torch.random.fork_rng(devices=[]):  # leave the student's random state alone
        torch.manual_seed(0)
        for i, (what, means, n, needed) in enumerate(_probe_cases(), start=1):
            where = f"fit_probe, case {i} of 3 ({what})"
            x, y = _blobs(n, means, seed=i)
            x_test, y_test = _blobs(500, means, seed=100 + i)
            c, d = means.shape
            probe = student(x.clone(), y.clone(), c)
            if not isinstance(probe, nn.Linear):
                raise AssertionError(f"{where}: must return the trained nn.Linear, got {type(probe).__name__}")
            if (probe.in_features, probe.out_features) != (d, c):
                raise AssertionError(
                    f"{where}: the probe maps d = {d} features to n_classes = {c} scores, got "
                    f"nn.Linear({probe.in_features}, {probe.out_features})"
                )
            with torch.no_grad():
                loss = F.cross_entropy(probe(x), y).item()
                accuracy = (probe(x_test).argmax(-1) == y_test).float().mean().item()
            if not math.isfinite(loss) or loss > 0.8 * math.log(c):
                raise AssertionError(
                    f"{where}: the training loss is {loss:.3f}, not below 0.8 ln C = "
                    f"{0.8 * math.log(c):.3f}.\nHint: did the loop compute F.cross_entropy(probe(x), y), "
                    "call loss.backward() and optimizer.step() (after optimizer.zero_grad()) for "
                    "enough steps?"
                )
            if accuracy < needed:
                raise AssertionError(
                    f"{where}: held-out accuracy {accuracy:.3f}, below {needed} (a logistic "
                    "regression reaches it)"
                )
    print("✔ fit_probe: all 3 data sets fitted (training loss and held-out accuracy)")
