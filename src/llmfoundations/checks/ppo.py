"""Checks for Lab 03-6 (RLHF with PPO): per-token RLHF rewards and GAE.

Each check runs the student's function next to the course's reference
(``llmfoundations.alignment.ppo``) on fixed inputs (drawn from a local generator, so the
student's random state is untouched) and either prints one line of success or raises
``AssertionError`` naming the failing case, with a hint where the wrong result is a
known mistake:

- ``rlhf_rewards``: the score on the first token, or on the last *position* whatever the
  padding, or on every token; the KL added instead of subtracted; padding not zeroed;
- ``gae``: the value after a row's last token taken from the padding instead of 0, the
  loop run forwards, gamma and lambda swapped, ``lambda`` left out of the recursion, the
  returns without the values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from llmfoundations.alignment.ppo import _gae, rlhf_rewards

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_ppo_rlhf_rewards", "check_ppo_gae"]


def _padded_mask(lengths: list[int], t: int) -> Tensor:
    return torch.tensor([[i < n for i in range(t)] for n in lengths])  # (B, T) right-padded


# ------------------------------------------------------------------ RLHF rewards


def reference_rlhf_rewards(score: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """``-kl_coef * kl`` on the response tokens, plus ``score`` on each row's last one; 0 on padding."""
    return rlhf_rewards(score, kl, mask, kl_coef)


def _reward_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def base(kl, mask, c):
        return torch.where(mask, -c * kl, 0.0)

    def first_token(score, kl, mask, c):
        out = base(kl, mask, c)
        out[:, 0] += score
        return out

    def last_position(score, kl, mask, c):
        out = base(kl, mask, c)
        out[:, -1] += score
        return out

    def every_token(score, kl, mask, c):
        return torch.where(mask, -c * kl + score[:, None], 0.0)

    def plus_kl(score, kl, mask, c):
        return reference_rlhf_rewards(score, -kl, mask, c)

    def no_mask(score, kl, mask, c):
        return reference_rlhf_rewards(score, kl, mask, c) + torch.where(mask, 0.0, -c * kl)

    return [
        (first_token, "the reward model scores the finished response: its score goes on the "
                      "LAST response token of each row (position mask.sum(1) - 1)"),
        (last_position, "rows are padded: the last response token of a row is at "
                        "mask.sum(1) - 1, not at the last position T - 1"),
        (every_token, "the score is paid once per response, on its last token; only the KL "
                      "penalty is paid at every token"),
        (plus_kl, "the KL is a penalty: the per-token reward is -kl_coef * kl"),
        (no_mask, "padding positions are not part of the response: their reward is 0"),
    ]


@exercise_check
def check_ppo_rlhf_rewards(student: Callable[[Tensor, Tensor, Tensor, float], Tensor]) -> None:
    """Lab 03-6: ``rlhf_rewards(score, kl, mask, kl_coef)`` -> (B, T) per-token rewards.

    ``score`` (B,), ``kl`` (B, T) per-token KL estimates, ``mask`` (B, T) bool,
    right-padded. Each response token gets ``-kl_coef * kl``; the last one of each row
    also gets the row's ``score``; padding gets 0.
    """
    check_callable("rlhf_rewards", student)
    g = torch.Generator().manual_seed(36)
    cases = [
        ((torch.tensor([1.0]), torch.tensor([[0.5, 0.5, 0.5]]), _padded_mask([3], 3), 0.1), {}),
        ((torch.tensor([2.0, -1.0]), torch.tensor([[0.2, 0.4, 9.0], [0.1, 9.0, 9.0]]),
          _padded_mask([2, 1], 3), 0.05), {}),
        ((torch.randn(4, generator=g), torch.randn(4, 5, generator=g), _padded_mask([5, 3, 1, 4], 5), 0.2), {}),
        ((torch.randn(3, generator=g), torch.rand(3, 4, generator=g), _padded_mask([4, 4, 2], 4), 0.0), {}),
    ]  # fmt: skip

    def run(score: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
        got = student(score.clone(), kl.clone(), mask.clone(), kl_coef)
        if not isinstance(got, Tensor) or got.shape != kl.shape:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise AssertionError(
                f"rlhf_rewards must return one reward per position, shape {tuple(kl.shape)}, got {shape}"
            )
        return got.float()

    compare_with_reference(
        "rlhf_rewards", run, reference_rlhf_rewards, cases, atol=1e-5, rtol=1e-5,
        hints=_reward_mistakes(),
    )  # fmt: skip


# --------------------------------------------------------------------------- GAE


def reference_gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Advantages and returns of :func:`llmfoundations.alignment.ppo.gae`, stacked (2, B, T)."""
    return torch.stack(_gae(rewards, values, mask, gamma, lam))


def _gae_loop(rewards, values, mask, gamma, lam, *, bootstrap_padding=False, forward=False, no_lam=False):
    """The GAE recursion with one of the known mistakes switched on (stacked like the reference)."""
    b, t = rewards.shape
    adv = torch.zeros(b, t)
    for row in range(b):
        n = int(mask[row].sum())
        running = 0.0
        steps = range(n) if forward else reversed(range(n))
        for i in steps:
            if forward:
                nxt = values[row, i - 1] if i > 0 else 0.0
            elif i + 1 < n or (bootstrap_padding and i + 1 < t):
                nxt = values[row, i + 1]
            else:
                nxt = 0.0
            delta = rewards[row, i] + gamma * nxt - values[row, i]
            running = delta + gamma * (1.0 if no_lam else lam) * running
            adv[row, i] = running
    ret = torch.where(mask, adv + values, 0.0)
    return torch.stack([adv, ret])


def _gae_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def padding_value(r, v, m, gamma, lam):
        return _gae_loop(r, v, m, gamma, lam, bootstrap_padding=True)

    def forwards(r, v, m, gamma, lam):
        return _gae_loop(r, v, m, gamma, lam, forward=True)

    def swapped(r, v, m, gamma, lam):
        return reference_gae(r, v, m, lam, gamma)

    def no_lam(r, v, m, gamma, lam):
        return _gae_loop(r, v, m, gamma, lam, no_lam=True)

    def returns_without_values(r, v, m, gamma, lam):
        adv, _ = _gae(r, v, m, gamma, lam)
        return torch.stack([adv, adv])

    return [
        (padding_value, "the episode ends at a row's last response token: the value after it "
                        "is 0, not the value stored at the padding position"),
        (forwards, "A_t depends on A_{t+1}: run the loop backwards, from the last token"),
        (swapped, "delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}: "
                  "gamma discounts the value, gamma * lam the next advantage"),
        (no_lam, "the next advantage is weighted by gamma * lam, not gamma alone"),
        (returns_without_values, "the returns are advantages + values (the value targets)"),
    ]


@exercise_check
def check_ppo_gae(student: Callable[[Tensor, Tensor, Tensor, float, float], tuple[Tensor, Tensor]]) -> None:
    """Lab 03-6: ``gae(rewards, values, mask, gamma, lam)`` -> ``(advantages, returns)``.

    ``rewards``, ``values`` (B, T), ``mask`` (B, T) bool, right-padded (a row's episode ends
    at its last True; the value after it is 0). ``delta_t = r_t + gamma V_{t+1} - V_t``,
    ``A_t = delta_t + gamma lam A_{t+1}``, ``returns = A + V``; both 0 on padding.
    """
    check_callable("gae", student)
    g = torch.Generator().manual_seed(306)
    cases = [
        ((torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]), _padded_mask([2], 2), 1.0, 1.0), {}),
        ((torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.2, 0.4, 0.6]]), _padded_mask([3], 3), 0.9, 0.8), {}),
        ((torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), _padded_mask([5, 2, 4], 5), 1.0, 0.95),
         {}),
        ((torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g), _padded_mask([1, 4, 3, 2], 4), 0.99,
          0.9), {}),
    ]  # fmt: skip

    def run(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
        got = student(rewards.clone(), values.clone(), mask.clone(), gamma, lam)
        if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(x, Tensor) for x in got)):
            raise AssertionError(f"gae must return a tuple (advantages, returns) of two tensors, got "
                                 f"{type(got).__name__}")  # fmt: skip
        for what, x in zip(("advantages", "returns"), got, strict=True):
            if x.shape != rewards.shape:
                raise AssertionError(
                    f"gae: {what} must have the rewards' shape {tuple(rewards.shape)}, got {tuple(x.shape)}"
                )
        return torch.stack([x.float() for x in got])

    compare_with_reference(
        "gae", run, reference_gae, cases, atol=1e-5, rtol=1e-5, hints=_gae_mistakes(),
    )  # fmt: skip
