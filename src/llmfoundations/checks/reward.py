"""Checks for Lab 03-5 (reward model): the Bradley–Terry loss and last-token pooling.

Each check runs the student's function next to the course's reference
(``llmfoundations.alignment.reward``) on fixed inputs and either prints one line of
success or raises ``AssertionError`` naming the failing case, with a hint where the wrong
result is a known mistake:

- ``bradley_terry_loss``: the gap the wrong way round, the margin added instead of
  subtracted, a sum instead of a mean, a missing minus sign, ``log(sigmoid(x))`` written
  naively (``inf`` for a large wrong gap), ``sigmoid`` without the log;
- ``last_token_pool``: the last position whatever the padding, ``lengths - 1`` (right
  only, wrong for left padding), ``lengths`` (one too far), the first token, the mean over
  real tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llmfoundations.alignment.reward import bradley_terry_loss, last_token_pool

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_bradley_terry_loss", "check_reward_last_token_pool"]


# ----------------------------------------------------------------------- loss


def _gap(rc: Tensor, rr: Tensor, margin: Tensor | None) -> Tensor:
    gap = rc.double() - rr.double()
    return gap if margin is None else gap - margin.double()


def _loss_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def swapped(rc, rr, margin=None):
        return -F.logsigmoid(-_gap(rc, rr, None) - (0 if margin is None else margin.double())).mean()

    def margin_added(rc, rr, margin=None):
        gap = rc.double() - rr.double() + (0 if margin is None else margin.double())
        return -F.logsigmoid(gap).mean()

    def summed(rc, rr, margin=None):
        return -F.logsigmoid(_gap(rc, rr, margin)).sum()

    def no_minus(rc, rr, margin=None):
        return F.logsigmoid(_gap(rc, rr, margin)).mean()

    def naive_log(rc, rr, margin=None):
        return -torch.log(torch.sigmoid(_gap(rc, rr, margin).float())).double().mean()

    def no_log(rc, rr, margin=None):
        return torch.sigmoid(-_gap(rc, rr, margin)).mean()

    return [
        (swapped, "the loss rewards the chosen answer: use r_chosen - r_rejected (minus the margin), "
                  "not r_rejected - r_chosen"),
        (margin_added, "the margin is subtracted from the gap (r_chosen - r_rejected - margin): the "
                       "loss keeps pushing until the gap exceeds the margin"),
        (summed, "the loss is the mean over pairs, not their sum"),
        (no_minus, "the loss is MINUS the mean log-probability of the observed preferences (it must "
                   "be >= 0)"),
        (naive_log, "log(sigmoid(x)) is -inf once sigmoid(x) underflows (a large wrong gap): use "
                    "F.logsigmoid(x), which is finite for every x"),
        (no_log, "the loss is -log sigma(gap), not sigma(-gap) (that is its gradient's weight)"),
    ]


@exercise_check
def check_bradley_terry_loss(student: Callable[..., Tensor]) -> None:
    """Lab 03-5: ``bt_loss(r_chosen, r_rejected, margin=None)``, the reward model's loss.

    ``r_chosen``, ``r_rejected``: (B,) float rewards; ``margin``: ``None`` or a (B,) float
    tensor. Returns the scalar ``-mean log sigma(r_chosen - r_rejected - margin)``, finite
    for any gap.
    """
    check_callable("bt_loss", student)
    g = torch.Generator().manual_seed(5)
    cases = [
        ((torch.zeros(3), torch.zeros(3)), {}),  # a tie: ln 2
        ((torch.tensor([1.0]), torch.tensor([0.0])), {}),
        ((torch.tensor([2.0, -1.0, 0.5, 3.0]), torch.tensor([0.0, 1.0, 0.5, -2.0])), {}),
        ((torch.randn(6, generator=g) * 3, torch.randn(6, generator=g) * 3), {}),
        ((torch.tensor([1.0, 0.0, 4.0]), torch.tensor([0.0, 0.0, 1.0])),
         {"margin": torch.tensor([0.5, 1.0, 3.0])}),
        ((torch.randn(5, generator=g) * 2, torch.randn(5, generator=g) * 2),
         {"margin": torch.rand(5, generator=g)}),
        ((torch.tensor([0.0, 0.0]), torch.tensor([150.0, -150.0])), {}),  # one huge wrong gap
    ]

    def as_float(rc: Tensor, rr: Tensor, margin: Tensor | None = None) -> Tensor:
        kwargs = {} if margin is None else {"margin": margin.clone()}
        try:
            got = student(rc.clone(), rr.clone(), **kwargs)
        except TypeError as err:
            if "margin" not in str(err):
                raise
            raise AssertionError(
                "bt_loss must take a keyword argument margin (None, or a (B,) tensor to "
                f"subtract from each gap); calling it with margin=... raised: {err}"
            ) from None
        if not isinstance(got, Tensor) or got.ndim != 0:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise AssertionError(f"bt_loss must return a scalar tensor (the mean over pairs), got {shape}")
        return got.double()

    def reference(rc: Tensor, rr: Tensor, margin: Tensor | None = None) -> Tensor:
        return bradley_terry_loss(rc.double(), rr.double(), None if margin is None else margin.double())

    compare_with_reference(
        "bt_loss", as_float, reference, cases, atol=1e-5, rtol=1e-5, hints=_loss_mistakes(),
    )


# -------------------------------------------------------------------- pooling


def _pool_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def rows(h):
        return torch.arange(h.shape[0])

    def last_position(h, mask):
        return h[:, -1]

    def lengths_minus_one(h, mask):
        return h[rows(h), mask.long().sum(1) - 1]

    def lengths(h, mask):
        return h[rows(h), (mask.long().sum(1)).clamp_max(h.shape[1] - 1)]

    def first(h, mask):
        return h[:, 0]

    def mean(h, mask):
        m = mask.to(h.dtype)[..., None]
        return (h * m).sum(1) / m.sum(1)

    return [
        (last_position, "the last position is padding in a right-padded row: read the position of "
                        "each row's last 1 in attention_mask"),
        (lengths_minus_one, "lengths - 1 is the last real token only with right padding; with left "
                            "padding it is T - 1. Find the position of each row's last 1 in the mask"),
        (lengths, "one position too far: positions count from 0, so the last real token of a "
                  "right-padded row of length n is at n - 1"),
        (first, "a decoder's first position has read only the first token: the reward reads the "
                "LAST real token, the one that has seen the whole text"),
        (mean, "this is mean pooling; a decoder reward model reads the hidden state of the last "
               "real token"),
    ]


@exercise_check
def check_reward_last_token_pool(student: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Lab 03-5: ``last_token_hidden(hidden_states, attention_mask)`` -> (B, C).

    ``hidden_states`` (B, T, C); ``attention_mask`` (B, T) of 0/1 integers, padding on the
    right or on the left (rows of one batch may differ). Returns, for each row, the hidden
    state at the position of its last real token.
    """
    check_callable("last_token_hidden", student)
    g = torch.Generator().manual_seed(11)

    def h(b: int, t: int, c: int) -> Tensor:
        return torch.randn(b, t, c, generator=g)

    cases = [
        ((h(2, 3, 2), torch.tensor([[1, 1, 1], [1, 1, 1]])), {}),  # no padding
        ((h(3, 5, 4), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])), {}),  # right
        ((h(3, 4, 3), torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])), {}),  # left
        ((h(2, 6, 2), torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])), {}),  # one of each
    ]

    def run(hidden: Tensor, mask: Tensor) -> Tensor:
        got = student(hidden.clone(), mask.clone())
        if not isinstance(got, Tensor):
            raise AssertionError(f"last_token_hidden must return a tensor, got {type(got).__name__}")
        return got

    compare_with_reference(
        "last_token_hidden", run, last_token_pool, cases, atol=0, rtol=0, hints=_pool_mistakes(),
    )
