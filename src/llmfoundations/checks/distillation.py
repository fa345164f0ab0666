"""Checks for Lab 06-4 (distillation): Hinton's soft-target loss and GKD's generalized JSD.

Each check runs the student's function next to the course's reference
(``llmfoundations.inference.distillation``) on fixed ``(N, V)`` logits and either prints one
line of success or raises ``AssertionError`` naming the failing case, with a hint where the
wrong result is a known mistake:

- ``soft_target_loss``: forgetting ``T^2``, dividing by ``T`` instead of multiplying by
  ``T^2``, ``reduction="mean"`` (which also divides by ``V``), a sum over rows, the KL the
  wrong way round, and the teacher's logits left at temperature 1;
- ``generalized_jsd_loss``: the endpoints swapped (``beta = 0`` is the forward KL, teacher
  first), the mixture's weights swapped (``m = beta * q + (1 - beta) * p``), the mixed
  formula used at the endpoints too (it gives 0 there), and a sum over rows.

The cases use their own generator, so the student's random state is untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llmfoundations.inference.distillation import generalized_jsd, kd_loss

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_kd_soft_target_loss", "check_generalized_jsd_loss"]


def _logits(g: torch.Generator, n: int, v: int, scale: float = 3.0) -> Tensor:
    return torch.randn(n, v, generator=g, dtype=torch.float64) * scale


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q)`` per row (N,)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _scalar(name: str, student: Callable[..., Any]) -> Callable[..., Tensor]:
    def run(*args: Any) -> Tensor:
        got = student(*[a.clone() if isinstance(a, Tensor) else a for a in args])
        if not isinstance(got, Tensor) or got.ndim != 0:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise AssertionError(f"{name} must return a scalar tensor (a mean over the rows), got {shape}")
        return got.double()

    return run


# ---------------------------------------------------------------------------- soft targets


def _kd_cases(seed: int) -> list[tuple[tuple, dict]]:
    """(student_logits, teacher_logits, temperature): several T, N and V, including T = 1."""
    g = torch.Generator().manual_seed(seed)
    return [
        ((_logits(g, 4, 5), _logits(g, 4, 5), 1.0), {}),
        ((_logits(g, 3, 7), _logits(g, 3, 7), 2.0), {}),
        ((_logits(g, 6, 11), _logits(g, 6, 11), 4.0), {}),
        ((_logits(g, 1, 9), _logits(g, 1, 9), 0.5), {}),
        ((_logits(g, 5, 3, 8.0).float(), _logits(g, 5, 3, 8.0).float(), 3.0), {}),
    ]


def reference_soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * mean over rows of KL(softmax(t/T) || softmax(s/T))``: ``kd_loss(..., alpha=1).loss``."""
    return kd_loss(student_logits, teacher_logits, temperature=temperature, alpha=1.0).loss


def _kd_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def kl_rows(s: Tensor, t: Tensor, ts: float, tt: float) -> Tensor:
        return _kl(F.log_softmax(t / tt, -1), F.log_softmax(s / ts, -1))

    return [
        (lambda s, t, T: kl_rows(s, t, T, T).mean(),
         "the T^2 factor is missing: multiply the KL by temperature**2, so that the gradient keeps "
         "its scale whatever T is"),
        (lambda s, t, T: kl_rows(s, t, T, T).mean() / T,
         "multiply by T^2; do not divide by T"),
        (lambda s, t, T: kl_rows(s, t, T, T).mean() * T**2 / s.shape[-1],
         "reduction='mean' divides by N * V; the KL per position needs 'batchmean' (divide by N)"),
        (lambda s, t, T: kl_rows(s, t, T, T).sum() * T**2,
         "average over the rows ('batchmean'); do not sum"),
        (lambda s, t, T: _kl(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)).mean() * T**2,
         "the KL is the wrong way round: KL(teacher || student), the teacher's probabilities weight "
         "the log-ratio (F.kl_div(log q_student, p_teacher))"),
        (lambda s, t, T: kl_rows(s, t, T, 1.0).mean() * T**2,
         "divide the teacher's logits by T too: both distributions are softened"),
    ]  # fmt: skip


@exercise_check
def check_kd_soft_target_loss(student: Callable[..., Tensor]) -> None:
    """Lab 06-4: ``soft_target_loss(student_logits, teacher_logits, temperature)`` ->
    ``T^2 * (1/N) * sum_n KL(softmax(t_n/T) || softmax(s_n/T))`` for ``(N, V)`` logits."""
    check_callable("soft_target_loss", student)
    compare_with_reference(
        "soft_target_loss", _scalar("soft_target_loss", student), reference_soft_target_loss,
        _kd_cases(11), atol=1e-5, rtol=1e-4, hints=_kd_mistakes(),
    )  # fmt: skip


# ---------------------------------------------------------------------------- generalized JSD


def _jsd_cases(seed: int) -> list[tuple[tuple, dict]]:
    """(student_logits, teacher_logits, beta): both endpoints, the middle, and off-centre."""
    g = torch.Generator().manual_seed(seed)
    return [
        ((_logits(g, 4, 6), _logits(g, 4, 6), 0.0), {}),
        ((_logits(g, 4, 6), _logits(g, 4, 6), 1.0), {}),
        ((_logits(g, 3, 8), _logits(g, 3, 8), 0.5), {}),
        ((_logits(g, 5, 5), _logits(g, 5, 5), 0.1), {}),
        ((_logits(g, 2, 10), _logits(g, 2, 10), 0.9), {}),
        ((_logits(g, 6, 4).float(), _logits(g, 6, 4).float(), 0.0), {}),
        ((_logits(g, 6, 4).float(), _logits(g, 6, 4).float(), 1.0), {}),
    ]


def reference_generalized_jsd_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float) -> Tensor:
    """GKD's divergence at temperature 1, averaged over rows: ``generalized_jsd``."""
    return generalized_jsd(student_logits, teacher_logits, beta=beta, temperature=1.0)


def _mixed(log_p: Tensor, log_q: Tensor, beta: float, weight_p: float) -> Tensor:
    """The mixed formula with the mixture weight of p set to ``weight_p`` (N,)."""
    log_m = (weight_p * log_p.exp() + (1 - weight_p) * log_q.exp()).log()  # (N, V)
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


def _jsd_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def lp(x: Tensor) -> Tensor:
        return F.log_softmax(x, -1)

    def endpoints(s: Tensor, t: Tensor, beta: float, forward_first: bool) -> Tensor | None:
        if beta in (0, 1):
            forward = _kl(lp(t), lp(s)).mean()
            reverse = _kl(lp(s), lp(t)).mean()
            first, second = (forward, reverse) if forward_first else (reverse, forward)
            return first if beta == 0 else second
        return None

    def swapped_ends(s: Tensor, t: Tensor, beta: float) -> Tensor:
        end = endpoints(s, t, beta, forward_first=False)
        return end if end is not None else reference_generalized_jsd_loss(s, t, beta)

    def swapped_mixture(s: Tensor, t: Tensor, beta: float) -> Tensor:
        end = endpoints(s, t, beta, forward_first=True)
        return end if end is not None else _mixed(lp(t), lp(s), beta, 1 - beta).mean()

    def mixed_everywhere(s: Tensor, t: Tensor, beta: float) -> Tensor:
        return _mixed(lp(t), lp(s), beta, beta).mean()

    return [
        (swapped_ends,
         "the endpoints are swapped: beta = 0 is the forward KL(teacher || student), beta = 1 the "
         "reverse KL(student || teacher)"),
        (swapped_mixture,
         "the mixture's weights are swapped: m = beta * p_teacher + (1 - beta) * q_student"),
        (mixed_everywhere,
         "the mixed formula is 0 at beta = 0 and beta = 1: return the forward KL at beta = 0 and the "
         "reverse KL at beta = 1"),
        (lambda s, t, beta: reference_generalized_jsd_loss(s, t, beta) * s.shape[0],
         "average over the rows (a mean); do not sum"),
    ]  # fmt: skip


@exercise_check
def check_generalized_jsd_loss(student: Callable[..., Tensor]) -> None:
    """Lab 06-4: ``generalized_jsd_loss(student_logits, teacher_logits, beta)`` -> GKD's
    generalized JSD at temperature 1 for ``(N, V)`` logits, averaged over the rows; forward KL
    at ``beta = 0``, reverse KL at ``beta = 1``."""
    check_callable("generalized_jsd_loss", student)
    compare_with_reference(
        "generalized_jsd_loss", _scalar("generalized_jsd_loss", student), reference_generalized_jsd_loss,
        _jsd_cases(12), atol=1e-5, rtol=1e-4, hints=_jsd_mistakes(),
    )  # fmt: skip


