"""Checks for Lab 06-3 (quantization): int8 per channel and asymmetric int4 in groups.

Each check runs the student's round trip (quantize, then dequantize) next to the course's
``llmfoundations.inference.quantization`` (bit-equal to torchao) on fixed weights and either
prints one line of success or raises ``AssertionError`` naming the failing case, with a hint
where the wrong result is a known mistake:

- ``int8_round_trip``: absmax / 127 instead of torchao's / 127.5, one scale for the whole
  matrix instead of one per row, no clamp to [-128, 127] (the largest positive weight
  rounds to 128), truncating instead of rounding, returning the integer codes;
- ``int4_asym_round_trip``: a range [min, max] that leaves out 0, 16 steps instead of 15,
  a zero point that is not rounded to an integer, one range per row instead of per group,
  the symmetric grid instead.

The one weight whose code is a true tie (the most negative weight of a row equal to minus
its absmax lands on -127.5 exactly; ``w / s`` and torchao's ``w * (1 / s)`` may round it
to different neighbours) is accepted on either side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from llmfoundations.inference.quantization import dequantize_weight, quantize_weight

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_int8_round_trip", "check_int4_asym_round_trip"]

_TINY = torch.finfo(torch.float32).smallest_normal


def _weights(seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(4, 16, generator=g) * 0.05
    w2 = torch.randn(8, 64, generator=g)
    w2[1, 5] = 9.0  # an outlier: its row's step becomes coarse
    w3 = torch.rand(3, 32, generator=g) + 0.1  # all positive: the range must still hold 0
    w3[1] = -w3[1]  # a row all negative
    w4 = torch.randn(5, 48, generator=g) * 3.0
    w4[2] = 0.0  # an all-zero row
    w5 = torch.tensor([[0.9, -0.3, 0.05, 0.6, 1.2, -0.15, 0.0, 0.45]])
    return [w1, w2, w3, w4, w5]


def _as_weight(name: str, got: Any, w: Tensor) -> Tensor:
    if not isinstance(got, Tensor):
        raise AssertionError(f"{name} must return a tensor, got {type(got).__name__}")
    if got.shape != w.shape:
        raise AssertionError(f"{name} must return the restored weight, shaped like w {tuple(w.shape)}; got {tuple(got.shape)}")
    return got.float()


# ------------------------------------------------------------------------------ int8


def reference_int8_round_trip(w: Tensor) -> Tensor:
    """``dequantize_weight(quantize_weight(w, 8))``: symmetric, one scale per row."""
    return dequantize_weight(quantize_weight(w, bits=8))


def _int8_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def trip(w, scale, rounding=torch.round, lo=-128, hi=127, codes=False):
        q = rounding(w / scale)
        q = q.clamp(lo, hi) if lo is not None else q
        return q if codes else q * scale

    def row_scale(w, div):
        return (w.abs().amax(1, keepdim=True) / div).clamp(min=_TINY)

    return [
        (lambda w: trip(w, row_scale(w, 127.0)),
         "divide the absmax by 127.5, not 127 (torchao's convention: w / s then lies in [-127.5, 127.5] "
         "and every code -128..127 can be used)"),
        (lambda w: trip(w, (w.abs().amax() / 127.5).clamp(min=_TINY)),
         "one scale per row (per output channel): amax over dim=1 with keepdim=True, not over the whole matrix"),
        (lambda w: trip(w, row_scale(w, 127.5), lo=None),
         "clamp the codes to [-128, 127]: the row's largest positive weight lands on 127.5, which rounds to 128"),
        (lambda w: trip(w, row_scale(w, 127.5), rounding=torch.trunc),
         "round to the nearest integer (torch.round), do not truncate"),
        (lambda w: trip(w, row_scale(w, 127.5), codes=True),
         "return the restored weights q * s, not the integer codes q"),
    ]  # fmt: skip


def _settle_tie(w: Tensor, got: Tensor) -> Tensor:
    """``got`` with the true tie (a row's most negative weight equal to minus its absmax,
    -127.5 steps) set to the reference's value when it lies on either neighbour."""
    scale = (w.abs().amax(1, keepdim=True) / 127.5).clamp(min=_TINY)  # (Cout, 1)
    tie = (w == -w.abs().amax(1, keepdim=True)) & (w != 0)  # (Cout, Cin)
    either = torch.isclose(got, -128 * scale) | torch.isclose(got, -127 * scale)
    return torch.where(tie & either, reference_int8_round_trip(w), got)


@exercise_check
def check_int8_round_trip(student: Callable[[Tensor], Tensor]) -> None:
    """Lab 06-3: ``int8_round_trip(w)`` -> ``q * s`` with ``s = absmax(row) / 127.5`` and
    ``q = clamp(round(w / s), -128, 127)``, shaped like ``w``."""
    check_callable("int8_round_trip", student)

    def graded(w: Tensor) -> Tensor:
        return _settle_tie(w, _as_weight("int8_round_trip", student(w.clone()), w))

    hints = [(lambda w, f=f: _settle_tie(w, f(w)), msg) for f, msg in _int8_mistakes()]
    compare_with_reference(
        "int8_round_trip", graded, reference_int8_round_trip, [((w,), {}) for w in _weights(6)],
        atol=1e-7, rtol=1e-5, hints=hints,
    )  # fmt: skip


# ------------------------------------------------------------------------------ int4


def reference_int4_asym_round_trip(w: Tensor, group_size: int) -> Tensor:
    """``dequantize_weight(quantize_weight(w, 4, group_size, symmetric=False))``."""
    return dequantize_weight(quantize_weight(w, bits=4, group_size=group_size, symmetric=False))


def _int4_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def trip(w, g, steps=15, with_zero=True, round_zero=True):
        groups = w.reshape(w.shape[0], -1, g)
        lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        if with_zero:
            lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        s = ((hi - lo) / steps).clamp(min=_TINY)
        z = -lo / s
        z = torch.round(z).clamp(0, 15) if round_zero else z
        c = (torch.round(groups / s) + z).clamp(0, 15) if round_zero else (torch.round(groups / s + z)).clamp(0, 15)
        return ((c - z) * s).reshape(w.shape)

    def symmetric(w, g):
        return dequantize_weight(quantize_weight(w, bits=4, group_size=g))

    return [
        (lambda w, g: trip(w, g, with_zero=False),
         "the range is [min(min w, 0), max(max w, 0)]: it must hold 0, or the zero point leaves [0, 15] "
         "for a group of all-positive or all-negative weights"),
        (lambda w, g: trip(w, g, steps=16),
         "16 levels make 15 steps: s = (hi - lo) / 15"),
        (lambda w, g: trip(w, g, round_zero=False),
         "round the zero point to an integer: z = clamp(-round(lo / s), 0, 15) (a float offset is GGUF "
         "Q4_1's choice, not this format's)"),
        (lambda w, g: trip(w, w.shape[1]),
         "one range per group of group_size weights of a row, not per row"),
        (symmetric, "this is the symmetric grid; the asymmetric one spreads 16 levels over [lo, hi]"),
    ]  # fmt: skip


@exercise_check
def check_int4_asym_round_trip(student: Callable[[Tensor, int], Tensor]) -> None:
    """Lab 06-3: ``int4_asym_round_trip(w, group_size)`` -> ``(c - z) * s`` for every group
    of ``group_size`` weights of a row, ``s = (hi - lo) / 15`` over the range holding 0."""
    check_callable("int4_asym_round_trip", student)

    def graded(w: Tensor, group_size: int) -> Tensor:
        return _as_weight("int4_asym_round_trip", student(w.clone(), group_size), w)

    ws = _weights(7)
    cases = [((ws[0], 8), {}), ((ws[1], 32), {}), ((ws[2], 16), {}), ((ws[3], 16), {}), ((ws[4], 8), {}),
             ((ws[1], 64), {})]  # fmt: skip
    compare_with_reference(
        "int4_asym_round_trip", graded, reference_int4_asym_round_trip, cases,
        atol=1e-6, rtol=1e-5, hints=_int4_mistakes(),
    )  # fmt: skip
