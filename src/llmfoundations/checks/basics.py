"""Checks for Lab 00.

``softmax``: the exercise asks for it without ``torch.softmax``, so a function that calls
a softmax (``torch.softmax``, ``F.softmax``, ``tensor.softmax``, ``log_softmax``) fails;
an unstable softmax (NaN at 1000) and a sum over the wrong dimension get a hint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .core import compare_with_reference, exercise_check, random_cases

__all__ = ["check_softmax"]

#: The calls lab 00's softmax exercise rules out, with what to do instead.
NO_BUILT_IN_SOFTMAX = {
    name: "compute exp(x - max) / sum yourself, over the last dimension"
    for name in ("softmax", "log_softmax")
}


def _mistakes() -> list[tuple[Callable[[Tensor], Tensor], str]]:
    """Known wrong answers of ``softmax`` and what to tell the student about each."""
    return [
        (lambda x: x.exp() / x.exp().sum(-1, keepdim=True),
         "exp overflows for large inputs (NaN at 1000): subtract the row maximum first, "
         "x - x.max(dim=-1, keepdim=True).values; the result does not change."),
        (lambda x: torch.softmax(x, dim=0),
         "the sum runs over the first dimension; normalise over the last one: "
         ".sum(dim=-1, keepdim=True)."),
        (lambda x: x.exp() / x.exp().sum(),
         "the sum runs over the whole tensor; normalise each row over the last dimension: "
         ".sum(dim=-1, keepdim=True)."),
    ]  # fmt: skip


@exercise_check
def check_softmax(student: Callable[[Tensor], Tensor]) -> None:
    """Lab 00: a softmax over the last dimension, stable for large inputs, without
    ``torch.softmax``."""
    cases = random_cases([(5,), (3, 7), (2, 4, 6)])
    cases.append(((torch.tensor([1000.0, 1001.0, 1002.0]),), {}))  # overflows if not stabilised
    # rows of very different scale: subtracting one *global* maximum underflows the small row
    cases.append(((torch.tensor([[1000.0, 1001.0], [0.0, 1.0]]),), {}))
    compare_with_reference("softmax", student, lambda x: torch.softmax(x, dim=-1), cases,
                           hints=_mistakes(), forbid=NO_BUILT_IN_SOFTMAX)
