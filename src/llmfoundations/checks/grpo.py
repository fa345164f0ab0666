"""Checks for Lab 03-8 (GRPO): group-relative advantages and the clipped per-token objective.

Each check runs the student's function next to the course's reference
(``llmfoundations.alignment.grpo``) on fixed inputs and either prints one line of success
or raises ``AssertionError`` naming the failing case, with a hint where the wrong result
is a known mistake:

- ``group_advantages``: the population std instead of Bessel's (n - 1), no epsilon (NaN
  for a group whose rewards are all equal), the std of the whole batch, groups read
  across the batch (``view(G, -1)``) instead of consecutive, not subtracting the mean;
- ``clipped_objective``: ``max`` instead of ``min`` (or no minus sign), the clipped term
  alone, the ratio as ``logp - old_logp`` without ``exp``, the ratio upside down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from llmfoundations.alignment.grpo import STD_EPS, group_advantages

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_grpo_group_advantages", "check_grpo_clipped_objective"]


# ------------------------------------------------------------------- advantages


def reference_group_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """``(r - group mean) / (group std + 1e-4)``, Bessel-corrected std, groups consecutive."""
    return group_advantages(rewards, group_size, scale="group")


def _advantage_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def grouped(r, g):
        return r.view(-1, g)

    def population_std(r, g):
        x = grouped(r, g)
        return ((x - x.mean(1, keepdim=True)) / (x.std(1, correction=0, keepdim=True) + STD_EPS)).reshape(-1)

    def no_eps(r, g):
        x = grouped(r, g)
        return ((x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)).reshape(-1)

    def batch_std(r, g):
        x = grouped(r, g)
        return ((x - x.mean(1, keepdim=True)) / (r.std() + STD_EPS)).reshape(-1)

    def across(r, g):
        x = r.view(g, -1)
        return ((x - x.mean(0, keepdim=True)) / (x.std(0, keepdim=True) + STD_EPS)).reshape(-1)

    def no_centring(r, g):
        x = grouped(r, g)
        return (x / (x.std(1, keepdim=True) + STD_EPS)).reshape(-1)

    return [
        (population_std, "use the sample standard deviation (divide by G - 1, Bessel's "
                         "correction), as GRPO implementations do: torch's std(correction=1)"),
        (no_eps, "add 1e-4 to the std before dividing: a group whose rewards are all equal "
                 "has std 0 and must get advantage 0, not 0/0 = NaN"),
        (batch_std, "divide by each group's own std, not the std of the whole batch"),
        (across, "the G answers of one prompt are consecutive: rewards.view(-1, G) puts one "
                 "group per row (view(G, -1) mixes prompts)"),
        (no_centring, "subtract the group's mean reward first: it is the baseline that "
                      "replaces PPO's value model"),
    ]


@exercise_check
def check_grpo_group_advantages(student: Callable[[Tensor, int], Tensor]) -> None:
    """Lab 03-8: ``group_advantages(rewards, group_size)`` -> (N,) advantages.

    ``rewards`` (N,), the ``group_size`` answers of each prompt consecutive. Each answer's
    advantage is its reward minus its group's mean, divided by the group's standard
    deviation (Bessel-corrected) plus 1e-4.
    """
    check_callable("group_advantages", student)
    g = torch.Generator().manual_seed(38)
    cases = [
        ((torch.tensor([1.0, 0.0, 0.0, 0.0]), 4), {}),
        ((torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), 3), {}),
        ((torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]), 4), {}),  # a solved group
        ((torch.randn(12, generator=g), 4), {}),
        ((torch.randint(0, 2, (16,), generator=g).float(), 8), {}),
    ]

    def run(rewards: Tensor, group_size: int) -> Tensor:
        got = student(rewards.clone(), group_size)
        if not isinstance(got, Tensor) or got.shape != rewards.shape:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise AssertionError(
                f"group_advantages must return a tensor of the rewards' shape "
                f"{tuple(rewards.shape)}, got {shape}"
            )
        return got.float()

    compare_with_reference(
        "group_advantages", run, reference_group_advantages, cases, atol=1e-4, rtol=1e-4,
        hints=_advantage_mistakes(),
    )  # fmt: skip


# ------------------------------------------------------------- clipped objective


def reference_clipped_objective(logp: Tensor, old_logp: Tensor, advantages: Tensor, eps: float) -> Tensor:
    """Per-token loss ``-min(rho A, clip(rho, 1 - eps, 1 + eps) A)``, ``rho = exp(logp - old)``."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    return -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv)


def _objective_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def with_max(logp, old, a, eps):
        ratio, adv = torch.exp(logp - old), a[:, None]
        return -torch.maximum(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv)

    def no_minus(logp, old, a, eps):
        return -reference_clipped_objective(logp, old, a, eps)

    def clipped_only(logp, old, a, eps):
        return -torch.clamp(torch.exp(logp - old), 1 - eps, 1 + eps) * a[:, None]

    def log_ratio(logp, old, a, eps):
        ratio, adv = logp - old, a[:, None]
        return -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv)

    def upside_down(logp, old, a, eps):
        return reference_clipped_objective(old, logp, a, eps)

    return [
        (with_max, "take the min of the two terms (the pessimistic one), then negate: the "
                   "loss is -min(rho A, clip(rho) A)"),
        (no_minus, "the objective is maximised, so the loss is its negative: -min(...)"),
        (clipped_only, "keep both terms and take their min: the clipped term alone removes "
                       "the penalty when the ratio moves the wrong way"),
        (log_ratio, "the ratio is pi / pi_old = exp(logp - old_logp), not the difference of "
                    "the logs"),
        (upside_down, "the ratio is exp(logp - old_logp): the new policy over the old one"),
    ]


@exercise_check
def check_grpo_clipped_objective(student: Callable[[Tensor, Tensor, Tensor, float], Tensor]) -> None:
    """Lab 03-8: ``clipped_objective(logp, old_logp, advantages, eps)`` -> (N, T) losses.

    ``logp`` and ``old_logp`` (N, T), ``advantages`` (N,) (one per answer, shared by its
    tokens). Per token: ``-min(rho A, clip(rho, 1 - eps, 1 + eps) A)`` with
    ``rho = exp(logp - old_logp)``.
    """
    check_callable("clipped_objective", student)
    g = torch.Generator().manual_seed(308)
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.9]])
    cases = [
        ((torch.log(ratios), torch.zeros(1, 4), torch.tensor([1.0]), 0.2), {}),
        ((torch.log(ratios), torch.zeros(1, 4), torch.tensor([-1.0]), 0.2), {}),
        ((-torch.rand(3, 5, generator=g) * 3, -torch.rand(3, 5, generator=g) * 3,
          torch.randn(3, generator=g), 0.2), {}),
        ((-torch.rand(2, 4, generator=g) * 2, -torch.rand(2, 4, generator=g) * 2,
          torch.tensor([2.0, -0.5]), 0.28), {}),
    ]  # fmt: skip

    def run(logp: Tensor, old: Tensor, adv: Tensor, eps: float) -> Tensor:
        got = student(logp.clone(), old.clone(), adv.clone(), eps)
        if not isinstance(got, Tensor) or got.shape != logp.shape:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise AssertionError(
                f"clipped_objective must return one loss per token, shape {tuple(logp.shape)}, "
                f"got {shape}"
            )
        return got.float()

    compare_with_reference(
        "clipped_objective", run, reference_clipped_objective, cases, atol=1e-5, rtol=1e-5,
        hints=_objective_mistakes(),
    )  # fmt: skip
