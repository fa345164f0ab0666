"""Weights pre-packed for oneDNN's matrix multiply: a CPU speed-up for small-batch decoding.

A CPU matrix multiply does not read a row-major weight as it is stored: it copies it into
panels shaped for the vector registers ("packing") and multiplies those. ``F.linear`` on
an x86 build of PyTorch calls MKL's ``sgemm``, which packs the weight again at every call;
when the input has 1-8 rows, as in decoding, that repacking and MKL's choice of kernel cost
more than the arithmetic. oneDNN (the library behind ``torch.backends.mkldnn``) can pack a
weight once, ahead of time, into its own blocked layout and multiply from that at every
call. Inductor does this for frozen graphs too, but for float32 on x86 it packs for MKL.

Measured on an AMD EPYC with 2 threads (``benchmarks/results/matmul_packing.md``; the
end-to-end decoding numbers are in ``generation.md`` beside it): the 121 matrix multiplies
of one SmolLM2-135M decoding step take 65 ms through ``F.linear`` and 29 ms through oneDNN
with packed weights at 8 rows; at 1 row the two are close (24 vs 22 ms). On other CPUs the
gap differs: on an Intel Xeon (``matmul_packing_intel.md``) MKL's own packing, which inductor's
freezing uses, beat oneDNN's (20 vs 35 ms at 8 rows), and oneDNN's was slower than none at 1
row. Measure before relying on it.

- ``pack_weight(weight, rows)``: a float32 ``(N, K)`` weight in oneDNN's layout (an opaque
  ``torch._mkldnn`` tensor; ``rows`` is a hint of how many input rows to tune for);
- ``packed_linear(x, packed, bias)``: ``x @ W.T + b`` from a packed weight, through an
  operator of our own (``llmfoundations::onednn_linear``), so ``torch.compile`` calls it
  without tracing into oneDNN;
- ``PackedLinear``: an ``nn.Linear`` whose weight is packed; ``prepack_linears(model)``
  swaps every ``nn.Linear`` of a model for one.

Left out: gradients (inference only; the op has no backward), other dtypes than float32,
GPUs (cuBLAS needs no such step). The packed copy is a second copy of each weight.

>>> layer = torch.nn.Linear(8, 4)
>>> packed = PackedLinear.from_linear(layer)
>>> x = torch.randn(3, 8)
>>> with torch.no_grad():
...     torch.allclose(packed(x), layer(x), atol=1e-5)
True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validate import check_int, check_tensor

__all__ = ["PackedLinear", "check_prepack_available", "pack_weight", "packed_linear", "prepack_linears"]


def check_prepack_available() -> None:
    """Raise a ``RuntimeError`` if this PyTorch build has no oneDNN (it ships in the
    official x86 and ARM wheels)."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        raise RuntimeError("pre-packed weights need oneDNN (torch.backends.mkldnn), not available here")


def pack_weight(weight: Tensor, rows: int = 1) -> Tensor:
    """``weight`` (N, K), float32 on the CPU, copied into oneDNN's blocked layout.

    ``rows``: the number of input rows the multiply will mostly see (the batch size when
    decoding); any number of rows works, this only guides oneDNN's choice of kernel."""
    check_tensor("weight", weight, ndim=2, dtype=torch.float32, nonempty=True)
    check_int("rows", rows, minimum=1)
    if weight.device.type != "cpu":
        raise ValueError(f"weight must be on the CPU to be packed for oneDNN, got {weight.device}")
    check_prepack_available()
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows)


# An operator of our own wraps oneDNN's, so that torch.compile puts one opaque call in its
# graph (inductor cannot take the packed tensor as a graph input). It is declared through
# the plain operator registry rather than ``torch.library.custom_op``, whose Python wrapper
# cost about 30 microseconds per call here: 121 calls per decoding step.
_LIB = torch.library.Library("llmfoundations", "FRAGMENT")
_LIB.define("onednn_linear(Tensor x, Tensor packed, Tensor? bias) -> Tensor")


def _onednn_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


for _key in ("CPU", "MkldnnCPU"):  # the packed tensor's own dispatch key comes first
    _LIB.impl("onednn_linear", _onednn_linear, _key)


@torch.library.register_fake("llmfoundations::onednn_linear", lib=_LIB)
def _(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], packed.shape[0])  # (..., N)


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x`` (..., K) times a packed weight (N, K), plus ``bias`` (N,): (..., N).

    The shapes are checked by oneDNN; the caller keeps ``x`` float32. Inference only: an
    ``x`` that needs a gradient is refused (the product has no backward)."""
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("packed_linear is for inference: x requires grad (use torch.no_grad())")
    return torch.ops.llmfoundations.onednn_linear(x.contiguous(), packed, bias)


class PackedLinear(nn.Module):
    """``nn.Linear`` for inference with its weight pre-packed for oneDNN.

    ``weight`` and ``bias`` stay the original tensors (shared, not copied), so code that
    reads them still works; the forward pass multiplies by the packed copy."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, rows: int = 1) -> None:
        super().__init__()
        self.packed = pack_weight(weight, rows)  # (N, K), opaque layout
        self.weight = weight  # (N, K), the original
        self.bias = bias  # (N,) or None
        if bias is not None:
            check_tensor("bias", bias, ndim=1, dtype=torch.float32)
            if bias.shape[0] != weight.shape[0]:
                raise ValueError(f"bias must have {weight.shape[0]} entries, got {bias.shape[0]}")
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear, rows: int = 1) -> PackedLinear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias, rows)

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
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def prepack_linears(model: nn.Module, rows: int = 1) -> int:
    """Replace every ``nn.Linear`` inside ``model`` by a ``PackedLinear``, in place; return how
    many. For inference: the packed layers have no gradients. Tied weights stay tied (each
    ``PackedLinear`` keeps the original tensor as ``weight``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_int("rows", rows, minimum=1)
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear.from_linear(child, rows))
    return len(swaps)
