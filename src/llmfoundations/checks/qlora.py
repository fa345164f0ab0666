"""Checks for Lab 03-3 (QLoRA and NF4): block-wise quantization, nibble packing, NF4 bytes.

Each check runs the student's function next to the course's reference
(``llmfoundations.finetuning.nf4``) on fixed inputs and either prints one line of success
or raises ``AssertionError`` naming the failing case. The cases are chosen so that the
usual mistakes fail:

- ``blockwise_quantize``: one absmax for the whole tensor instead of one per block, the
  largest value instead of the largest magnitude, blocks cut along columns instead of the
  row-major flattening, rounding to the code value below instead of the nearest one,
  dropping a shorter last block;
- ``pack_nibbles``: the first index in the low nibble, padding an odd length with index 0
  (the code value -1) instead of 7 (0.0), returning int64 instead of uint8;
- ``nf4_nbytes``: forgetting the absmax, 16-bit instead of 32-bit scales, rounding the
  number of blocks down, forgetting the float32 mean or the per-256 scales of double
  quantization.

The random cases are drawn so that no scaled value lies within 1e-4 of the midpoint
between two code values: dividing by the absmax or multiplying by its reciprocal (as
bitsandbytes does) then gives the same nearest code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from llmfoundations.finetuning.nf4 import NF4_CODE, quantize_nf4
from llmfoundations.finetuning.nf4 import _blockwise_quantize as _reference_blockwise
from llmfoundations.finetuning.nf4 import _pack as _reference_pack

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_blockwise_quantize", "check_pack_nibbles", "check_nf4_nbytes"]

_INT4_CODE = torch.arange(-7, 8, dtype=torch.float32) / 7  # a uniform code, 15 values


# ------------------------------------------------------------------- blockwise_quantize


def _far_from_midpoints(x: Tensor, code: Tensor, block_size: int) -> bool:
    """Whether every scaled value of ``x`` lies 1e-4 or more from a midpoint of ``code``."""
    _, absmax = _reference_blockwise(x.reshape(-1).float(), code, block_size)
    n = x.numel()
    scale = absmax.repeat_interleave(block_size)[:n].clamp(min=1e-38)
    scaled = x.reshape(-1).float() / scale
    mids = (code[:-1] + code[1:]) / 2
    return bool(((scaled[:, None] - mids[None, :]).abs().min(dim=1).values >= 1e-4).all())


def _weights(seed: int, shape: tuple[int, ...], code: Tensor, block_size: int) -> Tensor:
    """Seeded heavy-tailed weights (a few outliers) far from every rounding boundary."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(100):
        w = torch.randn(*shape, generator=g) * 0.05
        w = w * (1 + 4 * (torch.rand(*shape, generator=g) < 0.02))  # a few outliers
        if _far_from_midpoints(w, code, block_size):
            return w
        seed += 1000
    raise RuntimeError("no case far enough from the midpoints")  # pragma: no cover


def _blockwise_cases() -> list[tuple[tuple, dict]]:
    zero_block = _weights(7, (4, 32), NF4_CODE, 32)
    zero_block[1] = 0.0  # an all-zero block
    return [
        ((torch.tensor([0.30, -0.12, 0.05, -0.60]), NF4_CODE, 4), {}),  # the chapter's block
        ((_weights(1, (8, 64), NF4_CODE, 64), NF4_CODE, 64), {}),
        ((_weights(2, (6, 40), NF4_CODE, 64), NF4_CODE, 64), {}),  # rows cross blocks
        ((_weights(3, (5, 30), NF4_CODE, 64), NF4_CODE, 64), {}),  # a shorter last block
        ((_weights(4, (3, 48), _INT4_CODE, 16), _INT4_CODE, 16), {}),  # another code
        ((zero_block, NF4_CODE, 32), {}),
    ]


def _ref_blockwise_quantize(w: Tensor, code: Tensor, block_size: int):
    return _reference_blockwise(w.reshape(-1).float(), code, block_size)


def _wrong_global_absmax(w, code, block_size):
    x = w.reshape(-1).float()
    m = x.abs().max()
    idx = ((x / m)[:, None] - code[None, :]).abs().argmin(dim=1)
    n_blocks = -(-x.numel() // block_size)
    return idx, m.repeat(n_blocks)


def _wrong_signed_max(w, code, block_size):
    x = w.reshape(-1).float()
    n_blocks = -(-x.numel() // block_size)
    padded = torch.nn.functional.pad(x, (0, n_blocks * block_size - x.numel()))
    m = padded.view(n_blocks, block_size).amax(dim=1)  # max, not max |.|
    scaled = (padded.view(n_blocks, block_size) / m[:, None]).clamp(-1, 1).reshape(-1)[: x.numel()]
    return (scaled[:, None] - code[None, :]).abs().argmin(dim=1), m


def _wrong_column_major(w, code, block_size):
    return _ref_blockwise_quantize(w.t().contiguous() if w.ndim == 2 else w, code, block_size)


def _wrong_round_down(w, code, block_size):
    idx, absmax = _ref_blockwise_quantize(w, code, block_size)
    x = w.reshape(-1).float()
    scale = absmax.repeat_interleave(block_size)[: x.numel()].clamp(min=1e-38)
    below = torch.bucketize(x / scale, code, right=True) - 1
    return below.clamp(0, code.numel() - 1), absmax


def _wrong_drop_last_block(w, code, block_size):
    idx, absmax = _ref_blockwise_quantize(w, code, block_size)
    whole = w.numel() // block_size
    return idx[: whole * block_size], absmax[:whole]


_BLOCKWISE_HINTS = [
    (_wrong_global_absmax, "use one absmax per block of block_size numbers, not one for the whole tensor"),
    (_wrong_signed_max, "the absmax is the largest magnitude: w.abs().max() per block, not w.max()"),
    (_wrong_column_major, "flatten row by row (w.reshape(-1)); blocks follow the rows, not the columns"),
    (_wrong_round_down, "take the nearest code value, not the largest one below (argmin of |x - code|)"),
    (_wrong_drop_last_block, "keep the last block even when it is shorter than block_size (pad it, or handle it apart)"),
]


def _part(fn: Callable[..., Any], i: int, name: str) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        got = fn(*args, **kwargs)
        if not isinstance(got, tuple) or len(got) != 2:
            raise AssertionError(f"{name} must return a tuple (indices, absmax), got {type(got).__name__}")
        return got[i]

    return wrapped


@exercise_check
def check_blockwise_quantize(student: Callable[..., tuple[Tensor, Tensor]]) -> None:
    """Lab 03-3: ``blockwise_quantize(w, code, block_size)`` -> ``(indices (N,), absmax (Nb,))``.

    ``w`` flattened row by row, blocks of ``block_size`` (the last may be shorter), each
    divided by its largest magnitude, each number replaced by the index of the nearest code
    value. Indices are compared exactly, absmax values to float32 rounding.
    """
    check_callable("blockwise_quantize", student)
    cases = _blockwise_cases()
    for part, what, atol in ((1, "absmax", 1e-7), (0, "indices", 0.0)):
        compare_with_reference(
            f"blockwise_quantize ({what})",
            _part(student, part, "blockwise_quantize"),
            _part(_ref_blockwise_quantize, part, "reference"),
            cases,
            atol=atol,
            rtol=1e-6 if part == 1 else 0.0,
            hints=[(_part(wrong, part, "hint"), message) for wrong, message in _BLOCKWISE_HINTS],
            quiet=True,
        )
    print(f"✔ blockwise_quantize: all {len(cases)} cases match the reference (indices and absmax)")


# ------------------------------------------------------------------------- pack_nibbles


def _ref_pack_nibbles(indices: Tensor) -> Tensor:
    return _reference_pack(indices)


def _wrong_low_first(indices):
    if indices.numel() % 2:
        indices = torch.cat([indices, indices.new_tensor([7])])
    q = indices.to(torch.uint8)
    return (q[1::2] << 4) | q[0::2]


def _wrong_pad_zero(indices):
    if indices.numel() % 2:
        indices = torch.cat([indices, indices.new_tensor([0])])
    q = indices.to(torch.uint8)
    return (q[0::2] << 4) | q[1::2]


def _wrong_int64(indices):
    return _ref_pack_nibbles(indices).long()


def _returns_uint8(student: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(indices: Tensor) -> Any:
        got = student(indices)
        if isinstance(got, Tensor) and got.dtype != torch.uint8:
            raise AssertionError(f"pack_nibbles must return a torch.uint8 tensor (one byte each), got {got.dtype}")
        return got

    return wrapped


@exercise_check
def check_pack_nibbles(student: Callable[[Tensor], Tensor]) -> None:
    """Lab 03-3: ``pack_nibbles(indices)`` -> uint8 ``(ceil(N / 2),)``, the first index in the
    high nibble, an odd length padded with index 7."""
    check_callable("pack_nibbles", student)
    g = torch.Generator().manual_seed(3)
    cases = [
        ((torch.tensor([12, 5, 8, 0]),), {}),  # the chapter's block: 0xC5, 0x80
        ((torch.tensor([15, 0]),), {}),
        ((torch.tensor([3, 9, 1]),), {}),  # odd: padded with 7
        ((torch.randint(0, 16, (64,), generator=g),), {}),
        ((torch.randint(0, 16, (101,), generator=g),), {}),
    ]
    hints = [
        (_wrong_low_first, "the first index goes in the HIGH nibble: byte = 16 * first + second"),
        (_wrong_pad_zero, "pad an odd length with index 7 (NF4's 0.0), not 0 (which means -1)"),
        (_wrong_int64, "return bytes: convert to torch.uint8"),
    ]
    compare_with_reference(
        "pack_nibbles", _returns_uint8(student), _ref_pack_nibbles, cases, atol=0.0, rtol=0.0, hints=hints
    )


# --------------------------------------------------------------------------- nf4_nbytes


def _ref_nf4_nbytes(n: int, block_size: int = 64, double_quant: bool = False) -> int:
    return quantize_nf4(torch.zeros(n), block_size, double_quant=double_quant).nbytes


def _wrong_no_absmax(n, block_size=64, double_quant=False):
    return -(-n // 2)


def _wrong_fp16_absmax(n, block_size=64, double_quant=False):
    n_blocks = -(-n // block_size)
    if double_quant:
        return _ref_nf4_nbytes(n, block_size, True)
    return -(-n // 2) + 2 * n_blocks


def _wrong_floor_blocks(n, block_size=64, double_quant=False):
    n_blocks = n // block_size
    if double_quant:
        return -(-n // 2) + n_blocks + 4 * (n_blocks // 256) + 4
    return -(-n // 2) + 4 * n_blocks


def _wrong_no_mean(n, block_size=64, double_quant=False):
    return _ref_nf4_nbytes(n, block_size, double_quant) - (4 if double_quant else 0)


def _wrong_no_scales(n, block_size=64, double_quant=False):
    n_blocks = -(-n // block_size)
    if double_quant:
        return -(-n // 2) + n_blocks + 4
    return -(-n // 2) + 4 * n_blocks


def _int_result(student: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        got = student(*args, **kwargs)
        if isinstance(got, float) and got.is_integer():
            raise AssertionError(f"nf4_nbytes must return an int (a count of bytes), got the float {got!r}")
        return got

    return wrapped


@exercise_check
def check_nf4_nbytes(student: Callable[..., int]) -> None:
    """Lab 03-3: ``nf4_nbytes(n, block_size=64, double_quant=False)`` -> bytes (int), as
    ``NF4Weight.nbytes`` counts them."""
    check_callable("nf4_nbytes", student)
    cases = [
        ((331_776,), {}),  # a 576 x 576 projection
        ((331_776,), {"double_quant": True}),
        ((100,), {}),  # a shorter last block, 50 bytes of codes
        ((101,), {"block_size": 32}),  # odd: ceil(n / 2)
        ((884_736,), {"double_quant": True}),  # 13,824 blocks: 54 groups of 256
        ((64 * 300,), {"double_quant": True}),  # 300 blocks: a shorter last group
        ((1000,), {"block_size": 128, "double_quant": True}),
    ]
    hints = [
        (_wrong_no_absmax, "count the scales too: one float32 absmax (4 bytes) per block"),
        (_wrong_fp16_absmax, "the absmax values are float32: 4 bytes each"),
        (_wrong_floor_blocks, "a shorter last block (or group of 256) still needs its scale: round up"),
        (_wrong_no_mean, "double quantization also stores the float32 mean of the absmax values (4 bytes)"),
        (_wrong_no_scales, "double quantization stores one float32 scale per 256 absmax values"),
    ]
    compare_with_reference(
        "nf4_nbytes", _int_result(student), _ref_nf4_nbytes, cases, atol=0.0, rtol=0.0, hints=hints
    )

