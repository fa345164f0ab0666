"""Weights pre-packed once for a CPU matrix-multiply library: a speed-up for small-batch decoding.

A CPU matrix multiply does not read a row-major weight as it is stored: it copies it into
panels shaped for the vector registers ("packing") and multiplies those. ``F.linear`` on
an x86 build of PyTorch calls MKL's ``sgemm``, which packs the weight again at every call;
when the input has 1-8 rows, as in decoding, that repacking and the kernels MKL picks for
so few rows waste much of the time. Two libraries can instead pack a weight once, ahead of
time, and multiply from the packed copy at every call:

- ``"onednn"``: oneDNN (``torch.backends.mkldnn``; x86 and ARM wheels), its own blocked
  layout and kernels;
- ``"mkl"``: MKL's ``sgemm_pack`` (x86 builds only), what inductor's weight freezing emits
  for float32 linears. MKL uses the packed copy only when the input has exactly the number
  of rows it was packed for; other row counts (a prefill) multiply by the original weight.

Which one wins depends on the CPU and the shape (``benchmarks/results/matmul_packing.md``,
the 121 products of one SmolLM2-135M decoding step, 2 threads). On an AMD EPYC at 8 rows:
``F.linear`` 25 ms, MKL packed 29, oneDNN packed 8.4; at 1 row 11 / 9.9 / 7.4. On an Intel
Xeon (``matmul_packing_intel.md``) at 8 rows: 46 / 20 / 35; at 1 row 14 / 13 / 17 -- there
oneDNN's packing is slower than none at 1 row. (The two tables also differ in torch build,
2.13 CPU on the AMD machine and 2.11 CUDA on the Intel one, each with its own MKL and
oneDNN: CPU and libraries together make the ranking.) Hence ``library="auto"`` (the default):
time both libraries on a random matrix of the weight's shape with ``rows`` input rows, on
this machine, and keep the faster; the choice is remembered per shape, row count and
thread count.

- ``pack_weight(weight, rows, library)``: a float32 ``(N, K)`` weight packed: a
  ``PackedWeight`` (the library's opaque copy, the original, the row count);
- ``packed_linear(x, packed, bias)``: ``x @ W.T + b`` from a packed weight, through
  operators of our own (``llmfoundations::onednn_linear``, ``::mkl_linear``), so that
  ``torch.compile`` calls them without tracing into the library (``packed_linear_unchecked``:
  the same without the checks, for callers that made them once);
- ``PackedLinear``: an ``nn.Linear`` whose weight is packed; ``prepack_linears(model)``
  swaps every ``nn.Linear`` of a model for one;
- ``choose_library(n, k, rows)``: the timing behind ``"auto"``.

Left out: gradients (inference only; the ops have no backward), other dtypes than float32,
GPUs (cuBLAS needs no such step); not packing at all as a candidate of ``"auto"`` (it
compares the two libraries, and on a build with only one it takes that one untimed: measure
it against ``F.linear`` with ``benchmarks/matmul_packing.py``). The packed copy is a second
copy of each weight, taken once: change the weight afterwards and pack again (MKL's copy
would not follow, while its fallback for other row counts reads the original).
``packed_linear`` and ``PackedLinear`` refuse a weight changed in place since it was packed
(an optimizer step, ``load_state_dict``, ``weight.mul_``: PyTorch's version counter of the
tensor), in eager calls; writes through ``weight.data`` bypass that counter and are not seen.

>>> layer = torch.nn.Linear(8, 4)
>>> packed = PackedLinear.from_linear(layer, library="onednn")
>>> x = torch.randn(3, 8)
>>> with torch.no_grad():
...     torch.allclose(packed(x), layer(x), atol=1e-5)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic, perf_counter

import torch
from torch import Tensor, nn

from .._validate import check_choice, check_int, check_tensor

__all__ = [
    "LIBRARIES",
    "PackedLinear",
    "PackedWeight",
    "available_libraries",
    "check_prepack_available",
    "choose_library",
    "pack_weight",
    "packed_linear",
    "prepack_linears",
]

LIBRARIES = ("onednn", "mkl")


def available_libraries() -> tuple[str, ...]:
    """The packing libraries this PyTorch build has, of ``LIBRARIES``."""
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    return tuple(lib for lib, ok in zip(LIBRARIES, (onednn, torch._C.has_mkl), strict=True) if ok)


def check_prepack_available(library: str = "auto") -> None:
    """Raise a ``RuntimeError`` if this PyTorch build cannot pack for ``library``
    (``"auto"``: for either). oneDNN ships in the official x86 and ARM wheels, MKL in x86 ones."""
    check_choice("library", library, (*LIBRARIES, "auto"))
    have = available_libraries()
    if (library == "auto" and not have) or (library != "auto" and library not in have):
        raise RuntimeError(
            f"pre-packed weights for {library!r} are not available in this PyTorch build "
            f"(available: {list(have)})"
        )


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """A weight packed for ``library``: ``data`` is the library's opaque copy, ``weight``
    the original ``(N, K)`` made contiguous (the caller's tensor itself when it already
    is), ``rows`` the row count it was packed for, ``source`` the caller's tensor (detached)
    and ``version`` its version counter when packed (``None`` for an inference tensor)."""

    library: str
    data: Tensor
    weight: Tensor
    rows: int
    source: Tensor
    version: int | None

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape  # (N, K)

    @property
    def stale(self) -> bool:
        """The caller's weight was changed in place after packing (pack it again)."""
        return self.version is not None and tensor_version(self.source) != self.version


def tensor_version(t: Tensor) -> int | None:
    """PyTorch's count of in-place changes to ``t`` (``None`` for an inference tensor,
    which keeps none)."""
    return None if t.is_inference() else t._version


def check_not_stale(name: str, packed: PackedWeight) -> None:
    """Raise ``ValueError`` if ``packed``'s source weight changed after it was packed (in
    eager calls: a compiled graph cannot read version counters, and does not check)."""
    if not torch.compiler.is_compiling() and packed.stale:
        raise ValueError(
            f"{name} was changed in place after it was packed (the packed copy still holds "
            "the old values): pack it again"
        )


def pack_weight(weight: Tensor, rows: int = 1, library: str = "auto") -> PackedWeight:
    """``weight`` (N, K), float32 on the CPU, packed for ``library`` (see the module).

    ``rows``: the number of input rows the multiply will mostly see (the batch size when
    decoding). Any number of rows works; oneDNN tunes its kernel for ``rows``, MKL uses its
    packed copy only for exactly ``rows`` rows and the original weight otherwise."""
    check_tensor("weight", weight, ndim=2, dtype=torch.float32, nonempty=True)
    check_int("rows", rows, minimum=1)
    check_choice("library", library, (*LIBRARIES, "auto"))
    if weight.device.type != "cpu":
        raise ValueError(f"weight must be on the CPU to be packed, got {weight.device}")
    check_prepack_available(library)
    if library == "auto":
        library = choose_library(weight.shape[0], weight.shape[1], rows)
    source = weight.detach()  # shares the version counter of the caller's tensor
    w = source.contiguous()
    if library == "onednn":
        data = torch.ops.mkldnn._reorder_linear_weight(w, rows)
    else:
        data = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
    return PackedWeight(library, data, w, rows, source, tensor_version(source))


# Operators of our own wrap the libraries', so that torch.compile puts one opaque call in
# its graph (inductor cannot take a packed tensor as a graph input). They are declared
# through the plain operator registry rather than ``torch.library.custom_op``, whose Python
# wrapper cost about 30 microseconds per call here: 121 calls per decoding step.
_LIB = torch.library.Library("llmfoundations", "FRAGMENT")
_LIB.define("onednn_linear(Tensor x, Tensor packed, Tensor? bias) -> Tensor")
_LIB.define("mkl_linear(Tensor x, Tensor packed, Tensor weight, Tensor? bias, int rows) -> Tensor")


def _onednn_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _mkl_linear(x: Tensor, packed: Tensor, weight: Tensor, bias: Tensor | None, rows: int) -> Tensor:
    return torch.ops.mkl._mkl_linear(x, packed, weight, bias, rows)


for _key in ("CPU", "MkldnnCPU"):  # the packed tensor's own dispatch key comes first
    _LIB.impl("onednn_linear", _onednn_linear, _key)
    _LIB.impl("mkl_linear", _mkl_linear, _key)


@torch.library.register_fake("llmfoundations::onednn_linear", lib=_LIB)
def _(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], packed.shape[0])  # (..., N)


@torch.library.register_fake("llmfoundations::mkl_linear", lib=_LIB)
def _(x: Tensor, packed: Tensor, weight: Tensor, bias: Tensor | None, rows: int) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])  # (..., N)


def packed_linear(x: Tensor, packed: PackedWeight, bias: Tensor | None = None) -> Tensor:
    """``x`` (..., K) times a packed weight (N, K), plus ``bias`` (N,): (..., N).

    Inference only: an ``x`` that needs a gradient is refused (the product has no backward),
    and so is a weight changed in place since it was packed.
    The shapes are checked here, not left to the libraries: MKL's packed product checks
    none and would read past a too-short ``x`` or ``bias``."""
    n, k = packed.shape
    check_tensor("x", x, min_ndim=1, dtype=torch.float32, nonempty=True)
    if x.shape[-1] != k:
        raise ValueError(f"x must have {k} features in its last dimension, got shape {tuple(x.shape)}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtype=torch.float32)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have {n} entries, got {bias.shape[0]}")
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("packed_linear is for inference: x requires grad (use torch.no_grad())")
    check_not_stale("the weight", packed)
    return packed_linear_unchecked(x, packed, bias)


def packed_linear_unchecked(x: Tensor, packed: PackedWeight, bias: Tensor | None = None) -> Tensor:
    """``packed_linear`` without its checks, for callers that checked the shapes once
    (``FastGreedyDecoder``: 121 products per decoding step)."""
    x = x.contiguous()
    if packed.library == "onednn":
        return torch.ops.llmfoundations.onednn_linear(x, packed.data, bias)
    return torch.ops.llmfoundations.mkl_linear(x, packed.data, packed.weight, bias, packed.rows)


_CHOICES: dict[tuple[int, int, int, int], str] = {}  # (N, K, rows, threads) -> library


def choose_library(n: int, k: int, rows: int, *, calls: int = 15) -> str:
    """The faster packing library for an ``(n, k)`` weight and ``rows`` input rows, here.

    Packs a random matrix for each available library and times up to ``calls`` single
    products of each, interleaved (no more once half a second has gone, but at least
    ``min(calls, 3)``: large products need few); the best call of each decides (the minimum is the least
    noisy estimate on a shared machine). Remembered per shape, row count and thread count."""
    for name, value in (("n", n), ("k", k), ("rows", rows), ("calls", calls)):
        check_int(name, value, minimum=1)
    key = (n, k, rows, torch.get_num_threads())
    if key not in _CHOICES:
        have = available_libraries()
        if len(have) < 2:
            check_prepack_available("auto")
            _CHOICES[key] = have[0]
            return have[0]
        g = torch.Generator().manual_seed(0)
        w, x = torch.randn(n, k, generator=g), torch.randn(rows, k, generator=g)
        packs = {lib: pack_weight(w, rows, lib) for lib in have}
        best = dict.fromkeys(have, float("inf"))
        with torch.no_grad():
            for _ in range(2):  # warm-up
                for p in packs.values():
                    packed_linear_unchecked(x, p)
            deadline = monotonic() + 0.5
            for call in range(calls):
                if call >= 3 and monotonic() > deadline:
                    break
                for lib, p in packs.items():
                    start = perf_counter()
                    packed_linear_unchecked(x, p)
                    best[lib] = min(best[lib], perf_counter() - start)
        _CHOICES[key] = min(best, key=best.get)
    return _CHOICES[key]


class PackedLinear(nn.Module):
    """``nn.Linear`` for inference with its weight pre-packed (see the module).

    ``weight`` and ``bias`` stay the original tensors (shared, not copied), so code that
    reads them still works; the forward pass multiplies by the packed copy. ``library``
    says which library it is packed for (``"auto"`` resolved)."""

    def __init__(
        self, weight: Tensor, bias: Tensor | None = None, rows: int = 1, library: str = "auto"
    ) -> None:
        super().__init__()
        self.packed = pack_weight(weight, rows, library)
        self.library = self.packed.library
        self.weight = weight  # (N, K), the original
        self.bias = bias  # (N,) or None
        if bias is not None:
            check_tensor("bias", bias, ndim=1, dtype=torch.float32)
            if bias.shape[0] != weight.shape[0]:
                raise ValueError(f"bias must have {weight.shape[0]} entries, got {bias.shape[0]}")
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear, rows: int = 1, library: str = "auto") -> PackedLinear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias, rows, library)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features or x.dtype != torch.float32:
            raise ValueError(
                f"x must be float32 (..., {self.in_features}), got {x.dtype} {tuple(x.shape)}"
            )
        wants_grad = x.requires_grad or self.weight.requires_grad or (
            self.bias is not None and self.bias.requires_grad
        )
        if torch.is_grad_enabled() and wants_grad:  # the packed copy would get no gradient
            raise RuntimeError(
                "PackedLinear is for inference: call the model under torch.no_grad() or "
                "torch.inference_mode() (its packed weight has no gradient)"
            )
        bias = None if self.bias is None else self.bias.detach()
        return packed_linear(x, self.packed, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"packed for {self.library} ({self.packed.rows} rows)"
        )


def prepack_linears(model: nn.Module, rows: int = 1, library: str = "auto") -> dict[str, int]:
    """Replace every ``nn.Linear`` inside ``model`` by a ``PackedLinear``, in place; return how
    many went to each library (``{"onednn": 3, "mkl": 2}``). For inference: the packed layers
    have no gradients. Tied weights stay tied (each keeps the original tensor as ``weight``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_int("rows", rows, minimum=1)
    check_choice("library", library, (*LIBRARIES, "auto"))
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    counts: dict[str, int] = {}
    for parent, name, child in swaps:
        packed = PackedLinear.from_linear(child, rows, library)
        setattr(parent, name, packed)
        counts[packed.library] = counts.get(packed.library, 0) + 1
    return counts
