"""Checks for Lab 06-8 (parallelism): bytes of a ring all-reduce, ZeRO memory per rank.

Each check runs the student's function beside the course's reference
(``llmfoundations.inference.parallel_costs``) on fixed cases and prints one line of success
or raises ``AssertionError`` naming the failing case, with a hint for known mistakes:

- ``ring_bytes``: ``(W - 1) / W`` without the factor 2 (only the reduce-scatter half),
  ``2 (W - 1)`` times the size (sending the whole tensor at every step), ``2 S`` (forgetting
  that a rank keeps its own chunk), and ``S`` (a naive send to one rank);
- ``zero_bytes``: stages shifted by one, sharding everything from stage 1 on, leaving out
  the optimizer state, and counting fp32 gradients (4 bytes) instead of fp16 ones.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from llmfoundations.inference.parallel_costs import ring_all_reduce_bytes, zero_bytes_per_rank

from .core import check_callable, compare_with_reference, exercise_check, refuse_calling

__all__ = ["check_ring_all_reduce_bytes", "check_zero_bytes_per_rank"]


def _scalar(x: float) -> Tensor:
    """A number as a 0-d float64 tensor (compared with a tolerance)."""
    return torch.tensor(float(x), dtype=torch.float64)


def _as_number(name: str, student: Callable[..., Any]) -> Callable[..., Tensor]:
    def run(*args: Any) -> Tensor:
        got = student(*args)
        shape = getattr(got, "shape", None)
        if shape is not None and hasattr(got, "item") and math.prod(shape) == 1:
            got = got.item()  # a one-element tensor or NumPy array (0-d or not), a NumPy scalar
        if isinstance(got, bool) or not isinstance(got, numbers.Real):  # NumPy's too
            raise AssertionError(f"{name} must return a number, got {type(got).__name__}")
        return _scalar(got)

    return run


# ---------------------------------------------------------------------- ring all-reduce


# (1000, 3): W does not divide S, so a chunk rounded to whole bytes is told apart
_RING_CASES = [((s, w), {}) for s, w in [(1000, 2), (1000, 4), (4096, 8), (12, 3), (1000, 1), (6_000_000, 16),
                                         (1000, 3)]]  # fmt: skip


def _ring_mistakes() -> list[tuple[Callable[..., Any], str]]:
    return [
        (lambda s, w: (w - 1) / w * s,
         "that is only the reduce-scatter half: after it each rank holds one reduced chunk, and an "
         "all-gather of W - 1 more steps sends the chunks to everyone (factor 2)"),
        (lambda s, w: 2 * (w - 1) * s,
         "each of the 2 (W - 1) steps sends one chunk of size S / W, not the whole tensor"),
        (lambda s, w: 2.0 * s,
         "a rank never sends its own chunk to itself: 2 (W - 1) / W * S, which is 0 for W = 1"),
        (lambda s, w: float(s),
         "count both phases, reduce-scatter and all-gather: 2 (W - 1) chunks of S / W"),
        (lambda s, w: 2 * (w - 1) / w * s if w > 1 else float(s),
         "with W = 1 there is no other rank: nothing is sent, and 2 (W - 1) / W * S gives 0"),
        (lambda s, w: float(2 * (w - 1) * (s // w)),
         "keep the fraction: a chunk is S / W bytes, not rounded down (1000 bytes on 3 ranks: "
         "1333.3 bytes sent; a real ring pads the chunks, which this count leaves out)"),
        (lambda s, w: float(2 * (w - 1) * s // w),
         "keep the fraction: 2 (W - 1) / W * S with /, not // (1000 bytes on 3 ranks: 1333.3)"),
    ]  # fmt: skip


@exercise_check
def check_ring_all_reduce_bytes(student: Callable[[int, int], float]) -> None:
    """Lab 06-8: ``ring_bytes(n_bytes, world_size)`` -> bytes each rank sends in a ring
    all-reduce, ``2 (W - 1) / W * n_bytes``."""
    check_callable("ring_bytes", student)
    student = refuse_calling("ring_bytes", student, ring_all_reduce_bytes, "work it out from the steps")
    compare_with_reference(  # (rtol: float32 arithmetic passes, the nearest mistake is far)
        "ring_bytes", _as_number("ring_bytes", student),
        lambda s, w: _scalar(ring_all_reduce_bytes(s, w)), _RING_CASES, atol=1e-6, rtol=1e-6,
        hints=[(lambda s, w, f=f: _scalar(f(s, w)), m) for f, m in _ring_mistakes()],
    )  # fmt: skip


# ------------------------------------------------------------------------- ZeRO bytes


_ZERO_CASES = [((p, w, s), {}) for p, w, s in [(7_500_000_000, 64, 0), (7_500_000_000, 64, 1),
                                                 (7_500_000_000, 64, 2), (7_500_000_000, 64, 3),
                                                 (1000, 4, 1), (1000, 4, 2), (1000, 1, 3), (135_000_000, 8, 3)]]  # fmt: skip


def _zero_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def staged(p: int, w: int, s: int, wb: int = 2, gb: int = 2, k: int = 12, shift: int = 0) -> float:
        s = s + shift
        return wb * p / (w if s >= 3 else 1) + gb * p / (w if s >= 2 else 1) + k * p / (w if s >= 1 else 1)

    return [
        (lambda p, w, s: staged(p, w, s, shift=1),
         "the stages are off by one: stage 1 shards only the optimizer state, stage 2 adds the "
         "gradients, stage 3 the weights (stage 0 shards nothing)"),
        (lambda p, w, s: 16 * p / (w if s >= 1 else 1),
         "stage 1 shards only the optimizer state (K = 12 bytes per parameter); weights and "
         "gradients stay whole until stages 3 and 2"),
        (lambda p, w, s: staged(p, w, s, k=0),
         "the optimizer state is missing: mixed-precision Adam keeps K = 12 bytes per parameter "
         "(an fp32 copy of the weights, and two fp32 moments)"),
        (lambda p, w, s: staged(p, w, s, gb=4),
         "the gradients are fp16 (2 bytes per parameter) in mixed-precision training"),
        (lambda p, w, s: staged(p, w, s) / 1e9,
         "return bytes, not gigabytes (the text's 120 GB is 1.2e11 bytes)"),
        (lambda p, w, s: staged(p, w, s) / 2**30,
         "return bytes, not GiB"),
    ]  # fmt: skip


@exercise_check
def check_zero_bytes_per_rank(student: Callable[[int, int, int], float]) -> None:
    """Lab 06-8: ``zero_bytes(n_params, world_size, stage)`` -> model-state bytes per rank
    under ZeRO stage 0-3 with mixed-precision Adam (2 + 2 + 12 bytes per parameter)."""
    check_callable("zero_bytes", student)
    student = refuse_calling("zero_bytes", student, zero_bytes_per_rank, "work it out from the description")
    compare_with_reference(  # (rtol: float32 arithmetic passes; W - 1 for W at 64 is 7e-4 off)
        "zero_bytes", _as_number("zero_bytes", student),
        lambda p, w, s: _scalar(zero_bytes_per_rank(p, w, s)), _ZERO_CASES, atol=1e-3, rtol=1e-6,
        hints=[(lambda p, w, s, f=f: _scalar(f(p, w, s)), m) for f, m in _zero_mistakes()],
    )  # fmt: skip
