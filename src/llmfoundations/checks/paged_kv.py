"""Checks for Lab 06-7 (paged KV cache and continuous batching): the blocks a growing
sequence needs, and the slots one static batch wastes.

Each check runs the student's function next to a reference on fixed inputs and either
prints one line of success or raises ``AssertionError`` naming the failing case, with a
hint where the wrong result is a known mistake:

- ``blocks_to_allocate(length, num_new_tokens, block_size)``: the reference is the
  course's ``PagedKVCache.blocks_needed`` on a cache that holds ``length`` tokens. Known
  mistakes: the free slots of the last block counted as ``P - length % P`` (a full last
  block, or no block at all, taken for ``P`` free slots), rounding down (``//``) instead
  of up, ``ceil(num_new / P)`` (as if the last block had no room left), the total blocks
  of the grown sequence instead of the new ones;
- ``static_waste(prompt_lens, answer_lens)``: ``(padding positions, idle row-steps)``,
  returned as any sequence of two whole numbers (a tuple, a list, a 1-D NumPy array or
  tensor). Known mistakes: the two the wrong way round, all the batch's slots instead of
  the wasted ones, an idle count off by one row-step per row.

Left out: the checks do not look at how the answer is computed (a loop is as good as a
formula).
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch

from llmfoundations.inference.paged_kv import PagedKVCache

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_blocks_to_allocate", "check_static_waste"]


# ------------------------------------------------------------------ blocks to allocate


def _blocks_reference(length: int, num_new_tokens: int, block_size: int) -> int:
    """New blocks for ``num_new_tokens`` more tokens, asked of a real paged cache."""
    room = length + num_new_tokens + 1  # blocks enough for any block size
    cache = PagedKVCache(n_layers=1, num_blocks=room, block_size=block_size, n_kv_heads=1, head_dim=1)
    seq = cache.add_sequence()
    if length:
        kv = torch.zeros(1, length, 1)  # (Hkv, T, D)
        cache.append(0, seq, kv, kv)
    return cache.blocks_needed(seq, num_new_tokens)


# (length, num_new_tokens, block_size): empty sequences, full and partly full last blocks,
# a write that spans several blocks, nothing to write.
_BLOCK_CASES = [((t, n, p), {}) for t, n, p in [
    (0, 1, 16), (15, 1, 16), (16, 1, 16), (5, 30, 16), (10, 6, 16), (0, 0, 16),
    (7, 1, 4), (8, 1, 4), (3, 20, 4), (32, 0, 4), (0, 9, 4), (1, 1, 1),
]]  # fmt: skip


def _free_slots_mod(t: int, n: int, p: int) -> int:
    """The mistake ``free = p - t % p``: a full last block (``t % p == 0``, an empty
    sequence too) is taken for ``p`` free slots, so its next token gets no new block."""
    free = p - t % p
    return max(0, -(-(n - free) // p))


def _block_mistakes() -> list[tuple[Callable[..., Any], str]]:
    # Order matters: where a student's results match no mistake in every case, the first
    # mistake that reproduces the first wrong case wins. The free-slots mistake and rounding
    # down agree on an empty sequence (the first case), so the narrower one goes first.
    return [
        (_free_slots_mod,
         "a full last block has no free slot: block_size - length % block_size counts block_size "
         "free slots when length % block_size == 0 (and an empty sequence holds no block at all); "
         "the last block's free slots are ceil(length / block_size) * block_size - length"),
        (lambda t, n, p: (t + n) // p - t // p,
         "round up, not down: a sequence of T tokens holds ceil(T / block_size) blocks (its last "
         "block may be partly full), in Python -(-T // block_size)"),
        (lambda t, n, p: -(-n // p),
         "the sequence's last block may still have room: count the blocks for length + "
         "num_new_tokens tokens, minus the blocks it already holds"),
        (lambda t, n, p: -(-(t + n) // p),
         "that is every block of the grown sequence: subtract the ceil(length / block_size) "
         "blocks it already holds"),
    ]  # fmt: skip


def _count(x: Any) -> int | None:
    """``x`` as an int if it is a whole number (an int, NumPy integer, whole float, or a
    one-element tensor or NumPy array of one), else ``None``. ``True`` / ``False`` are not
    counts."""
    if isinstance(x, torch.Tensor) or hasattr(x, "ndim"):  # a tensor, NumPy array or scalar
        if (x.numel() if isinstance(x, torch.Tensor) else getattr(x, "size", None)) != 1:
            return None
        x = x.item()
    if isinstance(x, bool) or str(getattr(x, "dtype", "")) == "bool":  # NumPy's bool too
        return None
    if hasattr(x, "__index__"):
        return operator.index(x)
    if isinstance(x, numbers.Real) and float(x).is_integer():  # 3.0, np.float32(3.0)
        return int(x)
    return None


@exercise_check
def check_blocks_to_allocate(student: Callable[[int, int, int], int]) -> None:
    """Lab 06-7: ``blocks_to_allocate(length, num_new_tokens, block_size)`` -> the new
    blocks, ``ceil((length + n) / P) - ceil(length / P)``, an int."""
    check_callable("blocks_to_allocate", student)

    def as_int(t: int, n: int, p: int) -> int:
        raw = student(t, n, p)
        got = _count(raw)
        if got is None:
            raise AssertionError(
                f"blocks_to_allocate({t}, {n}, {p}) must return an int (a number of blocks), "
                f"got {raw!r}"
            )
        return got

    compare_with_reference(
        "blocks_to_allocate", as_int, _blocks_reference, _BLOCK_CASES, hints=_block_mistakes()
    )


# ------------------------------------------------------------------------ static waste


def _static_reference(prompt_lens: Sequence[int], answer_lens: Sequence[int]) -> tuple[int, int]:
    """(padding positions, row-steps of rows whose answer has ended) for one static batch."""
    width, steps = max(prompt_lens), max(answer_lens)
    return sum(width - p for p in prompt_lens), sum(steps - n for n in answer_lens)


_WASTE_CASES = [((p, a), {}) for p, a in [
    ([37, 34, 33], [20, 6, 14]),
    ([10], [5]),
    ([8, 8, 8, 8], [3, 3, 3, 3]),
    ([12, 30, 7, 19, 25], [4, 28, 9, 16, 1]),
    ([5, 50], [40, 2]),
    ([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]),
]]  # fmt: skip


def _waste_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def swapped(p: Sequence[int], a: Sequence[int]) -> tuple[int, int]:
        pad, idle = _static_reference(p, a)
        return idle, pad

    return [
        (swapped, "return (padding positions, idle row-steps) in this order"),
        (lambda p, a: (len(p) * max(p), len(a) * max(a)),
         "count only the wasted slots: the batch computes len * max slots, of which sum(lengths) "
         "are real; the difference is the waste"),
        (lambda p, a: (_static_reference(p, a)[0], sum(max(a) - n - 1 for n in a)),
         "a row whose answer has n tokens is busy for n steps (the first step gives its first "
         "token), so it idles for max(answer_lens) - n steps"),
        (lambda p, a: (_static_reference(p, a)[0], sum(max(a) - n + 1 for n in a)),
         "a row whose answer has n tokens is busy for n steps (the first step gives its first "
         "token), so it idles for max(answer_lens) - n steps"),
    ]  # fmt: skip


def _pair(x: Any) -> tuple[int, int] | None:
    """``x`` as two ints if it is a sequence of two whole numbers (a tuple, a list, a 1-D
    NumPy array or tensor), else ``None``: bools, strings, mappings, scalars, arrays of
    another rank or length are not pairs."""
    if isinstance(x, (str, bytes)):
        return None
    ndim = getattr(x, "ndim", None)  # NumPy arrays and tensors are not Sequences
    if ndim is not None:
        if ndim != 1:
            return None
    elif not isinstance(x, Sequence):
        return None
    items = list(x)
    if len(items) != 2:
        return None
    first, second = _count(items[0]), _count(items[1])
    if first is None or second is None:
        return None
    return first, second


@exercise_check
def check_static_waste(student: Callable[[list[int], list[int]], tuple[int, int]]) -> None:
    """Lab 06-7: ``static_waste(prompt_lens, answer_lens)`` -> ``(sum(max(p) - p),
    sum(max(a) - a))``, a tuple of two ints (a list or a 1-D array of two is accepted)."""
    check_callable("static_waste", student)

    def as_pair(p: Sequence[int], a: Sequence[int]) -> tuple[int, int]:
        got = student(list(p), list(a))
        pair = _pair(got)
        if pair is None:
            raise AssertionError(
                f"static_waste({list(p)}, {list(a)}) must return a tuple of two ints "
                f"(padding positions, idle row-steps), got {got!r}"
            )
        return pair

    compare_with_reference(
        "static_waste", as_pair, _static_reference, _WASTE_CASES, hints=_waste_mistakes()
    )
