"""Checks for Lab 06-1 (flash attention): counting bytes, the online softmax, tiled attention.

Each check runs the student's function next to a reference on fixed, seeded inputs and
either prints one line of success or raises ``AssertionError`` naming the failing case.
The cases are chosen so that the usual mistakes fail:

- ``naive_attention_bytes``: the score matrix counted once instead of four times (written,
  read, probabilities written, read), Q, K, V and O forgotten, T and D swapped, bits
  instead of bytes;
- ``online_softmax``: the old sum not rescaled when the maximum grows, the factor
  ``exp(m_new - m_old)`` instead of ``exp(m_old - m_new)``, no maximum subtracted at all
  (overflows on scores near 1000), a ragged last block dropped;
- ``tiled_attention``: the accumulator not rescaled, the ``1/sqrt(D)`` scale missing or
  taken from the value size, each tile normalised on its own.

Two exercises are about *not* looking at a whole row at once, which equal outputs cannot
show. While the student's function runs, these checks therefore watch the PyTorch calls
it makes (a ``torch.overrides.TorchFunctionMode``): ``online_softmax`` may not reduce
more than ``block_size`` numbers of a row at once (so no ``torch.softmax(x)``, and no
``x.amax(-1)`` up front), and ``tiled_attention`` may not create a tensor that ends in the
full ``(Tq, Tk)`` score matrix or run a softmax (or a fused attention) over more than
``block_k`` keys. The watch
sees calls made through ``torch`` in Python, not what happens inside them.

References, independent of the student's code: ``torch.softmax``,
``torch.nn.functional.scaled_dot_product_attention`` and the course's
``inference.flash.attention_traffic``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from llmfoundations.inference.flash import attention_traffic

from .core import check_callable, compare_with_reference, exercise_check

__all__ = [
    "check_naive_attention_bytes",
    "check_online_softmax",
    "check_tiled_attention",
]

# Calls that combine numbers along a dimension (a softmax is one too).
_REDUCTIONS = frozenset(
    {"sum", "nansum", "mean", "amax", "max", "logsumexp", "softmax", "log_softmax", "cumsum"}
)
_SOFTMAXES = frozenset({"softmax", "log_softmax", "logsumexp", "scaled_dot_product_attention"})



def _reduced_size(func: Callable[..., Any], args: Sequence[Any], kwargs: dict) -> int | None:
    """How many numbers one output of a reduction combines; None if ``func`` is not one."""
    name = getattr(func, "__name__", "")
    if name not in _REDUCTIONS or not args or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if isinstance(dim, torch.Tensor) or isinstance(kwargs.get("other"), torch.Tensor):
        return None  # torch.max(a, b): elementwise, not a reduction
    if dim is None:
        return x.numel()
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    if not all(isinstance(d, int) for d in dims) or x.ndim == 0:
        return None
    return math.prod(x.shape[d] for d in dims)


class _Watch(TorchFunctionMode):
    """Records the widest reduction and every output shape of the torch calls made inside."""

    def __init__(self) -> None:
        super().__init__()
        self.widest: tuple[int, str] = (0, "")  # (numbers combined, function name)
        self.widest_softmax: tuple[int, str] = (0, "")
        self.shapes: list[tuple[tuple[int, ...], str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        size = _reduced_size(func, args, kwargs)
        name = getattr(func, "__name__", str(func))
        if name == "scaled_dot_product_attention" and len(args) > 1:
            size = args[1].shape[-2]  # a fused softmax over every key
        if size is not None:
            self.widest = max(self.widest, (size, name))
            if name in _SOFTMAXES:
                self.widest_softmax = max(self.widest_softmax, (size, name))
        out = func(*args, **kwargs)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append((tuple(t.shape), name))
        return out


# ------------------------------------------------------------------ naive_attention_bytes


def _reference_naive_attention_bytes(seq_len: int, head_dim: int, dtype_bytes: int) -> int:
    return attention_traffic(seq_len, head_dim, bytes_per_element=dtype_bytes).naive_bytes


@exercise_check
def check_naive_attention_bytes(student: Callable[[int, int, int], int]) -> None:
    """Lab 06-1: ``naive_attention_bytes(T, D, dtype_bytes)``, bytes one head's plain
    attention forward moves: read Q, K, V, write O, and write S, read S, write P, read P."""
    check_callable("naive_attention_bytes", student)
    cases = [
        (1024, 64, 2),
        (4096, 128, 2),
        (100, 16, 4),  # float32
        (7, 3, 1),  # one byte per number (fp8)
        (65536, 128, 2),
        (2048, 2048, 2),  # T = D
        (1, 1, 1),
    ]
    compare_with_reference(
        "naive_attention_bytes",
        student,
        _reference_naive_attention_bytes,
        [(case, {}) for case in cases],
    )


# ------------------------------------------------------------------------- online_softmax


def _watched_online_softmax(student: Callable[[torch.Tensor, int], torch.Tensor]):
    def run(x: torch.Tensor, block_size: int) -> torch.Tensor:
        with _Watch() as watch:
            out = student(x, block_size)
        widest, name = watch.widest
        if widest > block_size:
            raise AssertionError(
                f"online_softmax must read each row one block at a time, but a call of "
                f"{name} combined {widest} numbers at once (block_size = {block_size}, rows "
                f"of {x.shape[-1]}): keep a running maximum and sum, update them per block"
            )
        return out

    return run


@exercise_check
def check_online_softmax(student: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """Lab 06-1: ``online_softmax(x, block_size)``, the softmax over the last dimension,
    computed by reading ``block_size`` columns at a time (running maximum and sum)."""
    check_callable("online_softmax", student)
    g = torch.Generator().manual_seed(61)
    inf = math.inf
    cases = [
        (torch.randn(4, 10, generator=g) * 3, 3),  # the last block is ragged (10 = 3 + 3 + 3 + 1)
        (torch.randn(2, 3, 16, generator=g) * 3, 4),
        (torch.randn(7, generator=g) * 3, 1),
        (torch.randn(3, 6, generator=g) * 3, 8),  # one block holds the whole row
        (torch.arange(12.0) * 2, 5),  # the maximum grows in every block
        (torch.arange(12.0, 0.0, -1.0), 5),  # the maximum is in the first block
        (torch.randn(2, 8, generator=g) + 1000.0, 3),  # exp overflows without the maximum
        (torch.tensor([[0.5, 2.0, 1.0, -inf, -inf, -inf], [3.0, -inf, 1.0, 0.0, -inf, 2.0]]), 2),
    ]
    compare_with_reference(
        "online_softmax",
        _watched_online_softmax(student),
        lambda x, block_size: torch.softmax(x, dim=-1),
        [((x, block), {}) for x, block in cases],
        atol=1e-6,
        rtol=1e-5,
    )


# ------------------------------------------------------------------------ tiled_attention


def _watched_tiled_attention(student: Callable[..., torch.Tensor]):
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_k: int) -> torch.Tensor:
        with _Watch() as watch:
            out = student(q, k, v, block_k)
        tq, tk = q.shape[-2], k.shape[-2]
        if tk > block_k:
            full = [name for shape, name in watch.shapes if shape[-2:] == (tq, tk)]
            if full:
                raise AssertionError(
                    f"tiled_attention built the whole ({tq}, {tk}) score matrix (in a call of "
                    f"{full[0]}); compute scores one tile of block_k = {block_k} keys at a time"
                )
            widest, name = watch.widest_softmax
            if widest > block_k:
                raise AssertionError(
                    f"tiled_attention ran {name} over {widest} keys at once (block_k = "
                    f"{block_k}); keep a running maximum, sum and accumulator instead"
                )
        return out

    return run


@exercise_check
def check_tiled_attention(
    student: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor],
) -> None:
    """Lab 06-1: ``tiled_attention(q, k, v, block_k)`` = softmax(q k^T / sqrt(D)) v for
    q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv), one tile of ``block_k`` keys at a time."""
    check_callable("tiled_attention", student)
    g = torch.Generator().manual_seed(62)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    # (q shape, k shape, v shape, block_k, scale of q); Tq differs from D and Dv throughout.
    specs = [
        ((5, 8), (12, 8), (12, 6), 4, 1.0),
        ((2, 3, 7, 16), (2, 3, 20, 16), (2, 3, 20, 10), 6, 1.0),  # ragged last tile
        ((3, 4), (9, 4), (9, 5), 2, 6.0),  # large scores: the maximum moves between tiles
        ((3, 4), (6, 4), (6, 5), 1, 1.0),  # one key per tile
        ((2, 6), (5, 6), (5, 3), 8, 1.0),  # one tile holds every key
        ((1, 16), (33, 16), (33, 16), 8, 2.0),  # a single query
    ]
    cases = []
    for sq, sk, sv, block, scale in specs:
        cases.append(((randn(*sq, scale=scale), randn(*sk), randn(*sv), block), {}))
    # Keys that grow along the sequence: every new tile raises the running maximum.
    q = torch.ones(2, 4) * 3
    k = torch.linspace(-2, 2, 10)[:, None].expand(10, 4).contiguous()
    cases.append(((q, k, randn(10, 3), 3), {}))
    compare_with_reference(
        "tiled_attention",
        _watched_tiled_attention(student),
        lambda q, k, v, block_k: F.scaled_dot_product_attention(q, k, v),
        cases,
        atol=1e-5,
        rtol=1e-4,
    )
