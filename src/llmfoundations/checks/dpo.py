"""Checks for Lab 03-7 (DPO): the sigmoid DPO loss and the implicit rewards.

Each check runs the student's function next to the course's reference
(``llmfoundations.alignment.dpo.dpo_loss``) on fixed inputs and either prints one line of
success or raises ``AssertionError`` naming the failing case, with a hint where the wrong
result is a known mistake:

- ``sigmoid_dpo_loss``: leaving out the reference (``h = log pi(y_w) - log pi(y_l)``), the
  wrong sign (``-log sigmoid(-beta h)``), forgetting ``beta``, adding the two log-ratios
  instead of subtracting them, summing over pairs instead of averaging, and
  ``log(sigmoid(x))``, which is ``-inf`` for very negative ``x`` (one case has ``beta h``
  around -200);
- ``implicit_rewards``: forgetting ``beta``, the log-ratio upside down (``ref - policy``),
  the policy's log-probabilities alone as rewards, counting ties as wins (``>=``), a
  count instead of a share, the reward margin in place of the rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llmfoundations.alignment.dpo import dpo_loss

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_dpo_sigmoid_loss", "check_dpo_implicit_rewards"]


def _cases(seed: int) -> list[tuple[tuple, dict]]:
    """Five cases of (policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)."""
    g = torch.Generator().manual_seed(seed)

    def logps(b: int, scale: float = 5.0) -> Tensor:
        return -torch.rand(b, generator=g, dtype=torch.float64) * scale - 0.05

    same_c, same_r = logps(4), logps(4)
    tie = torch.tensor([-2.0, -1.0, -3.0], dtype=torch.float64)
    return [
        ((same_c, same_r, same_c.clone(), same_r.clone(), 0.1), {}),  # policy = reference: ln 2
        ((logps(1), logps(1), logps(1), logps(1), 0.5), {}),  # one pair
        ((logps(6), logps(6), logps(6), logps(6), 0.1), {}),
        ((logps(5, 20), logps(5, 20), logps(5, 20), logps(5, 20), 2.0), {}),
        # float32, as a model gives them: a pair with beta * h = -200 (log(sigmoid) underflows
        # to -inf), a pair with a tie, a good pair
        ((torch.tensor([-101.0, -2.0, -1.0]), tie.float(), torch.tensor([-1.0, -1.0, -2.0]),
          tie.float() + torch.tensor([0.0, 1.0, 0.5]), 2.0), {}),
    ]  # fmt: skip


# ------------------------------------------------------------------------------ loss


def reference_sigmoid_dpo_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float) -> Tensor:
    """Mean over pairs of ``-log sigmoid(beta * h)``: ``dpo_loss(..., loss_type="sigmoid").loss``."""
    return dpo_loss(pc, pr, rc, rr, beta=beta).loss


def _loss_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def h(pc, pr, rc, rr):
        return (pc - rc) - (pr - rr)

    return [
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)).mean(),
         "the reference is missing: h is a difference of log-RATIOS, (log pi(y_w) - log pi_ref(y_w)) "
         "- (log pi(y_l) - log pi_ref(y_l))"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(-beta * h(pc, pr, rc, rr)).mean(),
         "the sign is reversed: the loss is -log sigmoid(+beta * h), small when the chosen answer "
         "gained more than the rejected one"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(h(pc, pr, rc, rr)).mean(),
         "beta is missing: the loss is -log sigmoid(beta * h)"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - rc) + (pr - rr))).mean(),
         "subtract the rejected log-ratio from the chosen one; do not add them"),
        (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * h(pc, pr, rc, rr)).sum(),
         "average over the pairs (.mean()), do not sum"),
        (lambda pc, pr, rc, rr, beta: -torch.log(torch.sigmoid(beta * h(pc, pr, rc, rr))).mean(),
         "log(sigmoid(x)) underflows to -inf for very negative x; use F.logsigmoid(x), which is "
         "stable"),
    ]  # fmt: skip


@exercise_check
def check_dpo_sigmoid_loss(student: Callable[..., Tensor]) -> None:
    """Lab 03-7: ``sigmoid_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
    beta)`` -> the mean over pairs of ``-log sigmoid(beta * h)``, a scalar tensor."""
    check_callable("sigmoid_dpo_loss", student)

    def as_scalar(*args: Any) -> Tensor:
        got = student(*[a.clone() if isinstance(a, Tensor) else a for a in args])
        if not isinstance(got, Tensor) or got.ndim != 0:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise AssertionError(
                f"sigmoid_dpo_loss must return a scalar tensor (the mean over pairs), got {shape}"
            )
        return got.double()

    compare_with_reference(
        "sigmoid_dpo_loss", as_scalar, reference_sigmoid_dpo_loss, _cases(3),
        atol=1e-6, rtol=1e-5, hints=_loss_mistakes(),
    )  # fmt: skip


# --------------------------------------------------------------------------- rewards


def reference_implicit_rewards(
    pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(chosen_rewards, rejected_rewards, reward_accuracy)`` as ``dpo_loss`` reports them."""
    out = dpo_loss(pc, pr, rc, rr, beta=beta)
    return out.chosen_rewards, out.rejected_rewards, out.reward_accuracy


def _flat(chosen: Tensor, rejected: Tensor, accuracy: Tensor) -> Tensor:
    """The three results as one float64 vector (B + B + 1,), so that they compare as one."""
    return torch.cat([chosen.double(), rejected.double(), accuracy.double().reshape(1)])


def _reward_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def with_acc(c: Tensor, r: Tensor) -> Tensor:
        return _flat(c, r, (c > r).double().mean())

    return [
        (lambda pc, pr, rc, rr, beta: with_acc(pc - rc, pr - rr),
         "beta is missing: the implicit reward is beta * (log pi(y) - log pi_ref(y))"),
        (lambda pc, pr, rc, rr, beta: with_acc(beta * (rc - pc), beta * (rr - pr)),
         "the log-ratio is upside down: policy minus reference, log pi(y) - log pi_ref(y)"),
        (lambda pc, pr, rc, rr, beta: with_acc(beta * pc, beta * pr),
         "the reward is relative to the reference: beta * (log pi(y) - log pi_ref(y)), not beta * "
         "log pi(y)"),
        (lambda pc, pr, rc, rr, beta: _flat(beta * (pc - rc), beta * (pr - rr),
                                            (beta * (pc - rc) >= beta * (pr - rr)).double().mean()),
         "a tie is not a win: count pairs with chosen reward > rejected reward (strictly)"),
        (lambda pc, pr, rc, rr, beta: _flat(beta * (pc - rc), beta * (pr - rr),
                                            (beta * (pc - rc) > beta * (pr - rr)).double().sum()),
         "the accuracy is a share of the pairs (a mean), not a count"),
    ]  # fmt: skip


@exercise_check
def check_dpo_implicit_rewards(student: Callable[..., tuple[Tensor, Tensor, Tensor]]) -> None:
    """Lab 03-7: ``implicit_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
    beta)`` -> ``(chosen_rewards, rejected_rewards, accuracy)``: two (B,) tensors
    ``beta * (log pi - log pi_ref)`` and the share of pairs whose chosen reward is strictly
    larger (a 0-d tensor)."""
    check_callable("implicit_rewards", student)

    def as_triple(*args: Any) -> Tensor:
        got = student(*[a.clone() if isinstance(a, Tensor) else a for a in args])
        if not isinstance(got, tuple) or len(got) != 3:
            raise AssertionError(
                "implicit_rewards must return a tuple (chosen_rewards, rejected_rewards, accuracy), "
                f"got {type(got).__name__}"
            )
        chosen, rejected, accuracy = got
        for name, t in (("chosen_rewards", chosen), ("rejected_rewards", rejected)):
            if not isinstance(t, Tensor):
                raise AssertionError(f"implicit_rewards: {name} must be a tensor, got {type(t).__name__}")
        if not isinstance(accuracy, Tensor) or accuracy.ndim != 0:
            raise AssertionError(
                "implicit_rewards: accuracy must be a 0-dimensional tensor, e.g. "
                "(chosen > rejected).float().mean()"
            )
        for name, t in (("chosen_rewards", chosen), ("rejected_rewards", rejected)):
            if t.shape != args[0].shape:
                raise AssertionError(
                    f"implicit_rewards: {name} must have one reward per pair, shape "
                    f"{tuple(args[0].shape)}, got {tuple(t.shape)}"
                )
        return _flat(chosen, rejected, accuracy)

    def reference(*args: Any) -> Tensor:
        return _flat(*reference_implicit_rewards(*args))

    compare_with_reference(
        "implicit_rewards", as_triple, reference, _cases(5), atol=1e-6, rtol=1e-5,
        hints=_reward_mistakes(),
    )  # fmt: skip
