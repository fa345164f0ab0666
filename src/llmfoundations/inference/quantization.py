"""Integer weights: int8 and int4 with per-channel or per-group scales, GPTQ, and QAT.

A linear layer's weight ``W`` (Cout, Cin) is replaced by small integers ``c`` (codes) and,
for every *group* of ``g`` consecutive weights of a row, a float scale ``s`` and an integer
zero point ``z``:

    w ~= w_hat = (c - z) * s,    c = clamp(round(w / s) + z, 0, 2^b - 1)

with ``b`` = 8 or 4 bits. Rounding moves each weight by at most half a step, ``s / 2``, as
long as it lies inside the group's range. Two ways to choose the range:

- **symmetric**: ``s = max|w| / ((2^b - 1) / 2)`` and ``z = 2^(b-1)`` fixed (128 or 8), so
  0 is exact and ``q = c - z`` runs over [-128, 127] or [-8, 7]. Dividing by 127.5 (or 7.5),
  not 127 (or 7), is torchao's convention: ``w / s`` then lies in [-7.5, 7.5], so all 16
  codes -8..7 are used and every weight is still within half a step of one (the largest
  weight is rounded down to 7 by exactly half a step; the most negative one is a tie
  between -8 and -7), with steps 7 / 7.5 as wide as dividing by 7 would give.
- **asymmetric** (with a zero point): the range [min(w, 0), max(w, 0)] is cut into
  2^b - 1 steps, ``s = (max - min) / (2^b - 1)``, ``z = -round(min / s)``: a group whose
  weights are mostly positive does not waste half of its 16 levels. 0 stays exact because
  ``z`` is an integer and the range always contains 0.

``g`` = Cin (one scale per output row) is *per-channel* quantization, the usual choice for
int8; int4 needs smaller groups (32 to 128) because one large weight in a row would make the
step of the whole row coarse. Storage per weight: ``b + 32 / g`` bits (``+ 8 / g`` with a
zero point), e.g. 8.06 for int8 per-channel on a 576-wide row and 4.625 for asymmetric int4
in groups of 64, against 32 in float32. Two 4-bit codes share a byte, the first in the high
nibble (``pack_int4``), as ``finetuning.nf4`` and bitsandbytes store them.

**A real 4-bit format: the SmolLM2 file the course loads** (``llmfoundations.pretrained``).
Its linear layers are GGUF ``Q4_1`` (llama.cpp): blocks of 32 consecutive weights of a row
(groups of 32 along Cin, as here), each stored in 20 bytes: a float16 scale ``d``, a
float16 minimum ``m`` and 16 bytes of 4-bit codes (weight ``j`` in the low nibble of byte
``j`` and weight ``j + 16`` in the high nibble), decoded as ``w = d * q + m``. That is this
module's asymmetric int4 with ``g = 32``, except that the offset is a float (the block's
minimum) rather than an integer zero point: the grid starts exactly at the smallest weight,
and 0 is in general *not* on it. 5 bits per weight (4 + 2 * 16 / 32); its ``Q4_0`` sibling
drops ``m`` for a symmetric grid. The course dequantizes the file to float32 when it loads,
so "full precision" SmolLM2 in these labs is already Q4_1 rounded once (see
``benchmarks/quantization.py`` for what quantizing it again costs).

**GPTQ** (Frantar et al., 2022, https://arxiv.org/abs/2210.17323) quantizes with the
layer's *inputs* in mind. For calibration inputs ``X`` (N, Cin), rounding each weight to
the nearest level minimises ``|W - W_hat|`` but not the output error
``||X W^T - X W_hat^T||^2 = tr((W - W_hat) H (W - W_hat)^T) / 2`` with ``H = 2 X^T X`` (up to
the factor N: ``gptq_hessian`` averages). GPTQ quantizes the columns of ``W`` one at a
time and, after each, moves the columns not yet quantized to cancel the error it made (the
Optimal Brain Surgeon update, Hassibi & Stork, 1993): with ``Hinv`` the inverse of ``H``
restricted to the remaining columns ``F`` (column ``i`` first),

    delta W[:, F] = -((w_i - q_i) / Hinv[0, 0]) Hinv[0, :].

``gptq_quantize_reference`` is that loop, inverting ``H[F, F]`` afresh at every column.
``gptq_quantize`` gets every ``Hinv`` row at once from one Cholesky factor of ``H^-1`` and
updates the later columns in blocks of ``block_size`` (GPTQ's "lazy batch" updates), and
equals the reference. ``damp`` adds ``damp * mean(diag H)`` to the diagonal so that ``H``
can be inverted; a column whose input was always 0 gets weight 0 (it cannot change the
calibration outputs), as in the paper's code. Each step is optimal for the columns still
free, but the whole is greedy, so GPTQ is not *guaranteed* to beat rounding to nearest: it
can lose on a single row; summed over the rows of a real layer it wins clearly (the
tests check it over random layers of at least 16 rows).

**Quantization-aware training** (QAT) trains through the rounding: the forward pass uses
``w_hat`` (``fake_quantize``: quantize and dequantize at once), the backward pass treats the
rounding as the identity (the *straight-through estimator*, Bengio et al., 2013,
https://arxiv.org/abs/1308.3432): the gradient of ``w_hat`` is passed to ``w`` unchanged,
except where the weight was clipped to the end of the grid, where it is 0. The scales
follow the weights (they are recomputed in every forward pass and get no gradient).

This module holds:

- ``QuantizedWeight``: codes (int8 as uint8, or two int4 per byte), scales, zero points;
  ``quantize_weight(w, bits, group_size, symmetric=True)`` and ``dequantize_weight(qw)``;
  ``quant_params`` (the scales and zero points alone); ``pack_int4`` / ``unpack_int4``;
- ``QuantizedLinear``: a frozen linear layer that stores a ``QuantizedWeight`` and
  dequantizes it in every forward pass; ``quantize_model(model, bits, group_size)`` swaps a
  model's ``nn.Linear`` layers for it;
- ``gptq_hessian(x)``, ``gptq_quantize(weight, hessian, bits, group_size, block_size=128,
  damp=0.01)`` and the column-by-column ``gptq_quantize_reference``;
- ``fake_quantize`` (with the straight-through estimator), ``QATLinear`` and
  ``prepare_qat(model, bits, group_size)``; after training, ``quantize_model`` turns each
  ``QATLinear`` into the ``QuantizedLinear`` whose forward it imitated.

Conventions: codes are unsigned (``c`` in [0, 2^b - 1]) in uint8; a symmetric weight
stores no zero point (it is ``2^(b-1)``); scales are float32 and zero points uint8, one per
group, shaped (Cout, Ng). Everything is computed in float32 (GPTQ's updates in float64, its
rounding in float32) and dequantized weights come back in float32. ``w * (1 / s)`` is rounded, not ``w / s``, and a
scale is at least float32's smallest normal number (an all-zero group gets codes ``z``),
both as torchao does, so the results match torchao bit for bit (tested):
``Int8WeightOnlyConfig``'s dequantized weights, ``choose_qparams_affine`` /
``quantize_affine`` / ``dequantize_affine`` for int4 groups, and the forward pass and
weight gradient of its QAT ``FakeQuantizedLinear`` (symmetric int4 groups, int8 per
channel). Rounding is half-to-even (``torch.round``). GPTQ takes its groups' scales from
the weights as GPTQ has updated them when the group's first column is reached (the
column-by-column algorithm); the paper's code reads them from a copy that is up to one
block stale, so its result depends slightly on ``block_size`` and ours does not.

Skipped by ``quantize_model``: embeddings (``nn.Embedding``, not a linear layer: a lookup
that costs no multiplications), the output layer ``lm_head`` (the logits feel its error
directly, and in SmolLM2 it is the embedding matrix itself, tied, so quantizing it would
store a second copy; the course's GGUF file keeps it in 8 bits, ``Q8_0``, while its block
layers are ``Q4_1``), any layer whose weight another module shares, and mixture-of-experts
routers ``gate`` (tiny, and a rounding error there changes which experts run). Pass
``skip=()`` to quantize an untied head and the routers too.

Left out: computing with the codes without dequantizing them (int8 or int4 matrix kernels
such as ``torch._weight_int4pack_mm_for_cpu``: this module trades speed for a readable
forward pass, so it saves memory but is slower than float32; ``benchmarks/quantization.py``
runs the same codes through those kernels for comparison), activation quantization (W8A8,
SmoothQuant), GPTQ's act-order (quantizing columns by decreasing ``diag H``), the loop
that calibrates a whole model (``benchmarks/quantization.py`` has one: block by block,
each block's ``H`` from the outputs of the blocks before it, already quantized), AWQ, NF4
(see ``finetuning.nf4``), float8 and learned scales (LSQ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmfoundations._validate import check_bool, check_int, check_positive, check_tensor

__all__ = [
    "QuantizedWeight",
    "quant_params",
    "quantize_weight",
    "dequantize_weight",
    "pack_int4",
    "unpack_int4",
    "QuantizedLinear",
    "quantize_model",
    "gptq_hessian",
    "gptq_quantize",
    "gptq_quantize_reference",
    "fake_quantize",
    "QATLinear",
    "prepare_qat",
]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MIN_SCALE = torch.finfo(torch.float32).smallest_normal  # torchao's eps for float32 input
DEFAULT_SKIP = ("lm_head", "gate")


# ----------------------------------------------------------------------------- container


@dataclass(frozen=True)
class QuantizedWeight:
    """A (Cout, Cin) weight as integer codes plus per-group scales and zero points.

    - ``codes``: uint8; (Cout, Cin) for 8 bits, (Cout, Cin / 2) for 4 bits (two codes per
      byte, column ``2j`` in the high nibble, ``2j + 1`` in the low one);
    - ``scale``: float32 (Cout, Ng) with Ng = Cin / group_size;
    - ``zero_point``: uint8 (Cout, Ng), or ``None`` when symmetric (then it is ``2^(b-1)``);
    - ``bits`` (4 or 8), ``group_size``, ``shape`` = (Cout, Cin) and ``dtype`` of the
      original weight.

    ``dequantize_weight(qw)`` gives ``(c - z) * s`` back in float32.
    """

    codes: Tensor
    scale: Tensor
    zero_point: Tensor | None
    bits: int
    group_size: int
    shape: tuple[int, int]
    dtype: torch.dtype

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits!r}")
        c_out, c_in = self.shape
        check_tensor("codes", self.codes, ndim=2, dtype=torch.uint8)
        packed_cols = c_in // 2 if self.bits == 4 else c_in
        if tuple(self.codes.shape) != (c_out, packed_cols):
            raise ValueError(
                f"codes must have shape {(c_out, packed_cols)} for a {self.bits}-bit "
                f"{tuple(self.shape)} weight, got {tuple(self.codes.shape)}"
            )
        groups = (c_out, c_in // self.group_size)
        check_tensor("scale", self.scale, ndim=2, dtype=torch.float32)
        if c_in % self.group_size or tuple(self.scale.shape) != groups:
            raise ValueError(
                f"scale must have shape {groups} (group_size {self.group_size}), "
                f"got {tuple(self.scale.shape)}"
            )
        if self.zero_point is not None:
            check_tensor("zero_point", self.zero_point, ndim=2, dtype=torch.uint8)
            if tuple(self.zero_point.shape) != groups:
                raise ValueError(
                    f"zero_point must have shape {groups}, got {tuple(self.zero_point.shape)}"
                )

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes stored: codes, float32 scales and (asymmetric) uint8 zero points."""
        zeros = 0 if self.zero_point is None else self.zero_point.numel()
        return self.codes.numel() + 4 * self.scale.numel() + zeros

    @property
    def bits_per_parameter(self) -> float:
        """``8 * nbytes / numel``: e.g. 4.5 for symmetric int4 in groups of 64."""
        return 8 * self.nbytes / self.numel


# ----------------------------------------------------------------------------- cores
# Unchecked: their callers validate. ``w`` is float32 (Cout, Cin) with Cin % g == 0.


def _qmax(bits: int) -> int:
    return 2**bits - 1  # the largest code: 255 or 15


def _params_core(w: Tensor, bits: int, g: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Scale and zero point of every group of ``g`` columns -> ((Cout, Ng), (Cout, Ng)),
    both float32 (the zero point holds integers)."""
    groups = w.reshape(w.shape[0], -1, g)  # (Cout, Ng, g)
    lo = groups.amin(dim=-1).clamp(max=0.0)  # (Cout, Ng): the range always contains 0
    hi = groups.amax(dim=-1).clamp(min=0.0)  # (Cout, Ng)
    qmax = _qmax(bits)
    if symmetric:
        scale = (torch.maximum(-lo, hi) / (qmax / 2)).clamp(min=_MIN_SCALE)  # absmax / 127.5
        zero = torch.full_like(scale, float(2 ** (bits - 1)))  # 128 or 8
    else:
        scale = ((hi - lo) / qmax).clamp(min=_MIN_SCALE)
        zero = (-torch.round(lo / scale)).clamp(0, qmax)  # lo lands on code 0 (up to rounding)
    return scale, zero


def _expand(per_group: Tensor, g: int) -> Tensor:
    """(Cout, Ng) -> (Cout, Ng * g): each group's value repeated over its columns."""
    return per_group.repeat_interleave(g, dim=1)


def _codes_core(w: Tensor, scale: Tensor, zero: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Codes of ``w`` (same shape; ``scale`` and ``zero`` already expanded to it), as
    float32 integers, and a bool mask of the weights that were *not* clipped."""
    unclipped = torch.round(w * (1.0 / scale)) + zero  # reciprocal first, as torchao does
    codes = unclipped.clamp(0, _qmax(bits))
    return codes, unclipped == codes


def _quantize_core(w: Tensor, bits: int, g: int, symmetric: bool) -> QuantizedWeight:
    scale, zero = _params_core(w, bits, g, symmetric)
    codes, _ = _codes_core(w, _expand(scale, g), _expand(zero, g), bits)
    codes = codes.to(torch.uint8)  # (Cout, Cin)
    return QuantizedWeight(
        codes=_pack_core(codes) if bits == 4 else codes,
        scale=scale,
        zero_point=None if symmetric else zero.to(torch.uint8),
        bits=bits,
        group_size=g,
        shape=(w.shape[0], w.shape[1]),
        dtype=w.dtype,
    )


def _pack_core(codes: Tensor) -> Tensor:
    """(..., 2k) uint8 codes < 16 -> (..., k) uint8: column 2j in the high nibble."""
    return (codes[..., 0::2] << 4) | codes[..., 1::2]


def _unpack_core(packed: Tensor) -> Tensor:
    """(..., k) uint8 -> (..., 2k) uint8 codes."""
    high, low = packed >> 4, packed & 0x0F  # (..., k) each
    return torch.stack([high, low], dim=-1).flatten(-2)  # (..., 2k): high, low, high, ...


def _dequantize_core(qw: QuantizedWeight) -> Tensor:
    """``(c - z) * s`` -> float32 (Cout, Cin)."""
    codes = _unpack_core(qw.codes) if qw.bits == 4 else qw.codes  # (Cout, Cin) uint8
    g = qw.group_size
    if qw.zero_point is None:
        zero = torch.full_like(qw.scale, float(2 ** (qw.bits - 1)))  # (Cout, Ng)
    else:
        zero = qw.zero_point.float()
    return (codes.float() - _expand(zero, g)) * _expand(qw.scale, g)  # (Cout, Cin)


# ----------------------------------------------------------------------------- checks


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int (4 or 8), got {type(bits).__name__}")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    return bits


def _check_group_size(group_size: object, c_in: int, bits: int, what: str = "w") -> int:
    """``None`` -> Cin (per channel); otherwise a divisor of Cin, at least 2."""
    if bits == 4 and c_in % 2:
        raise ValueError(f"4-bit codes are packed two per byte: {what} needs an even Cin, got {c_in}")
    if group_size is None:
        return c_in
    check_int("group_size", group_size, minimum=2)
    if c_in % group_size:
        raise ValueError(
            f"group_size ({group_size}) must divide the in-features of {what} ({c_in})"
        )
    return group_size


def _check_weight(name: str, w: object) -> Tensor:
    check_tensor(name, w, ndim=2, dtype=_FLOAT_DTYPES, nonempty=True)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} must be finite: it holds NaN or infinity")
    return w


# ----------------------------------------------------------------------------- public API


def quant_params(
    w: Tensor, bits: int, group_size: int | None = None, *, symmetric: bool = True
) -> tuple[Tensor, Tensor | None]:
    """The scales and zero points ``quantize_weight`` would use: float32 (Cout, Ng) and
    uint8 (Cout, Ng), or ``None`` for the zero point when ``symmetric``.

    >>> s, z = quant_params(torch.tensor([[-1.0, 0.5, 2.0, 0.0]]), bits=4, symmetric=False)
    >>> s, z
    (tensor([[0.2000]]), tensor([[5]], dtype=torch.uint8))
    """
    _check_weight("w", w)
    bits = _check_bits(bits)
    g = _check_group_size(group_size, w.shape[1], bits)
    check_bool("symmetric", symmetric)
    scale, zero = _params_core(w.float(), bits, g, symmetric)
    return scale, (None if symmetric else zero.to(torch.uint8))


def quantize_weight(
    w: Tensor, bits: int, group_size: int | None = None, *, symmetric: bool = True
) -> QuantizedWeight:
    """Quantize a (Cout, Cin) weight (float32 / bfloat16 / float16) to int8 or int4.

    ``group_size=None`` is per channel (one scale per output row); otherwise every
    ``group_size`` consecutive weights of a row share a scale (and a zero point when not
    ``symmetric``). Computed in float32.

    >>> qw = quantize_weight(torch.tensor([[-0.75, -0.5, 0.25, 1.0]]), bits=4)
    >>> unpack_int4(qw.codes), qw.scale  # q = codes - 8: -6, -4, 2, 7; s = 1 / 7.5
    (tensor([[ 2,  4, 10, 15]], dtype=torch.uint8), tensor([[0.1333]]))
    """
    _check_weight("w", w)
    bits = _check_bits(bits)
    g = _check_group_size(group_size, w.shape[1], bits)
    check_bool("symmetric", symmetric)
    qw = _quantize_core(w.float(), bits, g, symmetric)
    return QuantizedWeight(qw.codes, qw.scale, qw.zero_point, bits, g, qw.shape, w.dtype)


def dequantize_weight(qw: QuantizedWeight) -> Tensor:
    """``(c - z) * s``: the float32 (Cout, Cin) weight that ``qw`` stands for."""
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"qw must be a QuantizedWeight, got {type(qw).__name__}")
    return _dequantize_core(qw)


def pack_int4(codes: Tensor) -> Tensor:
    """Two 4-bit codes per byte: uint8 (..., 2k) with values < 16 -> uint8 (..., k), the
    even column in the high nibble.

    >>> pack_int4(torch.tensor([1, 2, 15, 0], dtype=torch.uint8))
    tensor([ 18, 240], dtype=torch.uint8)
    """
    check_tensor("codes", codes, min_ndim=1, dtype=torch.uint8)
    if codes.shape[-1] % 2:
        raise ValueError(f"codes needs an even last dimension, got shape {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(f"codes must be < 16 to fit in 4 bits, got {int(codes.max())}")
    return _pack_core(codes)


def unpack_int4(packed: Tensor) -> Tensor:
    """The inverse of ``pack_int4``: uint8 (..., k) -> uint8 codes (..., 2k)."""
    check_tensor("packed", packed, min_ndim=1, dtype=torch.uint8)
    return _unpack_core(packed)


# ----------------------------------------------------------------------------- layers


class QuantizedLinear(nn.Module):
    """A frozen linear layer stored as a ``QuantizedWeight``, dequantized in every forward.

    ``QuantizedLinear(qw, bias)`` wraps a ``QuantizedWeight`` (e.g. from ``gptq_quantize``);
    ``QuantizedLinear.from_linear(linear, bits, group_size, symmetric=True)`` quantizes an
    ``nn.Linear`` (or a ``QATLinear``) by rounding to nearest. Buffers: ``codes``,
    ``scale``, ``zero_point`` (``None`` when symmetric) and ``bias`` (full precision).
    Forward: ``F.linear(x, dequantize(W).to(x.dtype), bias)``, the readable path: the
    weight is rebuilt in full precision for every call, so memory is saved between calls
    but not during one, and nothing is faster.
    """

    def __init__(self, weight: QuantizedWeight, bias: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(weight, QuantizedWeight):
            raise TypeError(f"weight must be a QuantizedWeight, got {type(weight).__name__}")
        self.out_features, self.in_features = weight.shape
        if bias is not None:
            check_tensor("bias", bias, ndim=1, dtype=_FLOAT_DTYPES)
            if bias.shape[0] != self.out_features:
                raise ValueError(
                    f"bias must have {self.out_features} elements, got {bias.shape[0]}"
                )
            bias = bias.detach().clone()
        self.bits, self.group_size, self.weight_dtype = weight.bits, weight.group_size, weight.dtype
        self.register_buffer("codes", weight.codes)
        self.register_buffer("scale", weight.scale)
        self.register_buffer("zero_point", weight.zero_point)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int,
        group_size: int | None = None,
        *,
        symmetric: bool = True,
    ) -> QuantizedLinear:
        """Round ``linear``'s weight to the nearest level (``quantize_weight``)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        qw = quantize_weight(linear.weight.detach(), bits, group_size, symmetric=symmetric)
        return cls(qw, linear.bias)

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, bits={self.bits}, group_size={self.group_size}, "
            f"symmetric={self.symmetric}"
        )

    def quantized_weight(self) -> QuantizedWeight:
        """The stored weight as a ``QuantizedWeight`` (views of the buffers)."""
        return QuantizedWeight(
            self.codes,
            self.scale.float(),  # float32 again if module.to(dtype) cast it (then rounded)
            self.zero_point,
            self.bits,
            self.group_size,
            (self.out_features, self.in_features),
            self.weight_dtype,
        )

    def dequantized_weight(self) -> Tensor:
        """(Cout, Cin) float32."""
        return _dequantize_core(self.quantized_weight())

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., Cin) -> (..., Cout)."""
        weight = self.dequantized_weight().to(x.dtype)  # (Cout, Cin), rebuilt on the fly
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _linears_to_swap(
    model: nn.Module, bits: int, group_size: int | None, skip: Sequence[str]
) -> list[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` of ``model`` (``QATLinear`` included) that is not named in
    ``skip`` (by its last part) and owns its weight alone; raises before any change if one
    of them cannot be quantized with these settings."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        raise TypeError(
            "model is itself an nn.Linear, which cannot be replaced in place: use "
            "QuantizedLinear.from_linear (or QATLinear.from_linear)"
        )
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise TypeError(f"skip must be a sequence of str (layer names), got {skip!r}")
    owners: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        owners[id(param)] = owners.get(id(param), 0) + 1
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.rsplit(".", 1)[-1] in skip:
            continue
        if owners[id(module.weight)] > 1:  # tied to an embedding or another layer
            continue
        check_tensor(f"{name}.weight", module.weight, dtype=_FLOAT_DTYPES)
        _check_group_size(group_size, module.in_features, bits, what=name)
        found.append((name, module))
    return found


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    bits: int,
    group_size: int | None = None,
    *,
    symmetric: bool = True,
    skip: Sequence[str] = DEFAULT_SKIP,
) -> list[str]:
    """Replace the linear layers of ``model`` by ``QuantizedLinear`` (round to nearest), in
    place; returns the replaced names in model order.

    Skipped: layers whose last name part is in ``skip`` (default ``("lm_head", "gate")``:
    the output layer and mixture-of-experts routers), layers whose weight is shared with
    another module (a tied head), and everything that is not an ``nn.Linear``
    (embeddings, norms). A ``QATLinear`` becomes the ``QuantizedLinear`` whose weights its
    forward pass used (same ``bits``, ``group_size`` and ``symmetric`` given). Raises
    before changing anything if ``group_size`` does not divide some layer's in-features.
    """
    bits = _check_bits(bits)
    check_bool("symmetric", symmetric)
    found = _linears_to_swap(model, bits, group_size, skip)
    for name, linear in found:
        _replace(
            model, name, QuantizedLinear.from_linear(linear, bits, group_size, symmetric=symmetric)
        )
    return [name for name, _ in found]


# ----------------------------------------------------------------------------- GPTQ


def gptq_hessian(x: Tensor) -> Tensor:
    """``H = 2 X^T X / N`` from a layer's calibration inputs ``x`` (..., Cin), flattened to
    N rows: float64 (Cin, Cin). (GPTQ's objective is ``tr(dW H dW^T) / 2`` up to the factor
    N, which changes nothing in ``gptq_quantize``: ``damp`` is relative to ``mean(diag H)``.)
    """
    check_tensor("x", x, min_ndim=2, dtype=_FLOAT_DTYPES, nonempty=True)
    rows = x.reshape(-1, x.shape[-1]).double()  # (N, Cin)
    return 2.0 * rows.T @ rows / rows.shape[0]  # (Cin, Cin)


def _check_gptq_args(
    weight: object, hessian: object, bits: object, group_size: object, damp: object,
    symmetric: object,
) -> tuple[int, int]:
    _check_weight("weight", weight)
    c_in = weight.shape[1]
    check_tensor("hessian", hessian, ndim=2, dtype=(torch.float32, torch.float64))
    if tuple(hessian.shape) != (c_in, c_in):
        raise ValueError(
            f"hessian must be (Cin, Cin) = {(c_in, c_in)} for weight {tuple(weight.shape)}, "
            f"got {tuple(hessian.shape)}"
        )
    if not bool(torch.isfinite(hessian).all()):
        raise ValueError("hessian must be finite: it holds NaN or infinity")
    bits = _check_bits(bits)
    g = _check_group_size(group_size, c_in, bits, what="weight")
    check_positive("damp", damp, allow_zero=True)
    check_bool("symmetric", symmetric)
    return bits, g


def _gptq_prepare(weight: Tensor, hessian: Tensor, damp: float) -> tuple[Tensor, Tensor]:
    """Unchecked: float64 copies of W (dead columns zeroed) and of H (damped; a dead
    column's diagonal set to 1)."""
    w = weight.double().clone()  # (Cout, Cin)
    h = hessian.double().clone()  # (Cin, Cin)
    dead = h.diagonal() == 0  # (Cin,): inputs that were always 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    return w, h


class _Grid:
    """Scales and zero points of the groups of one weight, filled in as GPTQ reaches each
    group (unchecked helper; float64, scales rounded to float32 first so that the codes are
    exactly those of the stored scales)."""

    def __init__(self, c_out: int, c_in: int, bits: int, g: int, symmetric: bool) -> None:
        self.bits, self.g, self.symmetric = bits, g, symmetric
        self.scale = torch.zeros(c_out, c_in // g, dtype=torch.float64)  # (Cout, Ng)
        self.zero = torch.zeros(c_out, c_in // g, dtype=torch.float64)  # (Cout, Ng)

    def set_group(self, j: int, w_group: Tensor) -> None:
        """Parameters of group ``j`` from its (current) weights (Cout, g)."""
        scale, zero = _params_core(w_group.float(), self.bits, self.g, self.symmetric)
        self.scale[:, j], self.zero[:, j] = scale[:, 0].double(), zero[:, 0].double()

    def quantize_column(self, i: int, w: Tensor) -> tuple[Tensor, Tensor]:
        """Column ``i``'s weights (Cout,) -> (codes, dequantized values), both float64."""
        j = i // self.g
        # rounded in float32, exactly as quantize_weight rounds (ties at +-7.5 steps)
        codes, _ = _codes_core(w.float(), self.scale[:, j].float(), self.zero[:, j].float(), self.bits)
        codes = codes.double()  # (Cout,)
        return codes, (codes - self.zero[:, j]) * self.scale[:, j]

    def result(self, codes: Tensor, dtype: torch.dtype) -> QuantizedWeight:
        codes = codes.to(torch.uint8)  # (Cout, Cin)
        return QuantizedWeight(
            codes=_pack_core(codes) if self.bits == 4 else codes,
            scale=self.scale.float(),
            zero_point=None if self.symmetric else self.zero.to(torch.uint8),
            bits=self.bits,
            group_size=self.g,
            shape=(codes.shape[0], codes.shape[1]),
            dtype=dtype,
        )


def gptq_quantize(
    weight: Tensor,
    hessian: Tensor,
    bits: int,
    group_size: int | None,
    block_size: int = 128,
    damp: float = 0.01,
    *,
    symmetric: bool = True,
) -> QuantizedWeight:
    """GPTQ: quantize ``weight`` (Cout, Cin) column by column, spreading each column's
    rounding error over the columns not yet quantized so that the outputs on the
    calibration inputs behind ``hessian`` (Cin, Cin; ``gptq_hessian``) change least.

    1. ``U``: the upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``. Its row
       ``i``, divided by ``U[i, i]``, is the OBS update direction of column ``i`` over the
       columns after it (``gptq_quantize_reference`` computes it by inverting).
    2. For each block of ``block_size`` columns: quantize column ``i`` (a new group's scale
       is set from the group's current weights when its first column comes up), then
       ``err = (w_i - q_i) / U[i, i]`` and ``W[:, i:] -= err U[i, i:]`` inside the block.
    3. After the block, the columns to its right get all of the block's updates in one
       matrix product, ``W[:, right] -= Err U[block, right]`` (lazy batch updates).

    ``block_size`` must be a multiple of ``group_size`` (or ``group_size`` is None or Cin:
    one group per row, its scale set from the whole row first). Computed in float64.
    """
    bits, g = _check_gptq_args(weight, hessian, bits, group_size, damp, symmetric)
    check_int("block_size", block_size, minimum=1)
    c_out, c_in = weight.shape
    if g != c_in and block_size % g:
        raise ValueError(
            f"block_size ({block_size}) must be a multiple of group_size ({g}), so that each "
            f"group's scale is set from weights that every earlier column has updated"
        )
    w, h = _gptq_prepare(weight, hessian, damp)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    grid = _Grid(c_out, c_in, bits, g, symmetric)
    codes = torch.zeros_like(w)  # (Cout, Cin)
    for start in range(0, c_in, block_size):
        end = min(start + block_size, c_in)
        block = w[:, start:end].clone()  # (Cout, Bk): this block's columns, kept up to date
        errors = torch.zeros_like(block)  # (Cout, Bk)
        u_block = u[start:end, start:end]  # (Bk, Bk)
        for k in range(end - start):
            i = start + k
            if i % g == 0:  # a new group starts: its columns are all in this block
                grid.set_group(i // g, block[:, k : k + g] if g != c_in else w)
            codes[:, i], q = grid.quantize_column(i, block[:, k])
            err = (block[:, k] - q) / u_block[k, k]  # (Cout,)
            block[:, k:] -= torch.outer(err, u_block[k, k:])  # (Cout, Bk - k)
            errors[:, k] = err
        w[:, end:] -= errors @ u[start:end, end:]  # (Cout, Cin - end): the lazy update
    return grid.result(codes, weight.dtype)


def gptq_quantize_reference(
    weight: Tensor,
    hessian: Tensor,
    bits: int,
    group_size: int | None,
    damp: float = 0.01,
    *,
    symmetric: bool = True,
) -> QuantizedWeight:
    """GPTQ as the plain Optimal Brain Surgeon loop, for reading and for tests: for each
    column ``i`` in turn, invert ``H`` restricted to the columns ``F = i, i+1, ...`` not yet
    quantized, quantize column ``i``, and move the columns of F by
    ``-(w_i - q_i) / Hinv[0, 0] * Hinv[0, :]``. O(Cin^4); ``gptq_quantize`` is equal and
    fast."""
    bits, g = _check_gptq_args(weight, hessian, bits, group_size, damp, symmetric)
    c_out, c_in = weight.shape
    w, h = _gptq_prepare(weight, hessian, damp)
    grid = _Grid(c_out, c_in, bits, g, symmetric)
    codes = torch.zeros_like(w)  # (Cout, Cin)
    for i in range(c_in):
        if i % g == 0:
            grid.set_group(i // g, w[:, i : i + g])  # the group's weights as updated so far
        codes[:, i], q = grid.quantize_column(i, w[:, i])
        h_inv = torch.linalg.inv(h[i:, i:])  # (Cin - i, Cin - i): the columns still free
        w[:, i:] -= torch.outer((w[:, i] - q) / h_inv[0, 0], h_inv[0])  # column i becomes q
    return grid.result(codes, weight.dtype)


# ----------------------------------------------------------------------------- QAT


class _FakeQuantizeSTE(torch.autograd.Function):
    """Forward: ``w_hat = (c - z) * s`` (scales from ``w``, treated as constants).
    Backward: the straight-through estimator, ``dL/dw = dL/dw_hat`` where ``w`` was not
    clipped, 0 where it was."""

    @staticmethod
    def forward(ctx, w: Tensor, bits: int, g: int, symmetric: bool) -> Tensor:
        w32 = w.float()
        scale, zero = _params_core(w32, bits, g, symmetric)
        scale, zero = _expand(scale, g), _expand(zero, g)  # (Cout, Cin) each
        codes, unclipped = _codes_core(w32, scale, zero, bits)
        ctx.save_for_backward(unclipped)
        return ((codes - zero) * scale).to(w.dtype)  # (Cout, Cin)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (unclipped,) = ctx.saved_tensors
        return grad * unclipped, None, None, None


def fake_quantize(
    w: Tensor, bits: int, group_size: int | None = None, *, symmetric: bool = True
) -> Tensor:
    """``dequantize_weight(quantize_weight(w, ...))`` in ``w``'s dtype, differentiable with
    the straight-through estimator: the gradient passes unchanged to every weight that
    was not clipped (with scales computed from ``w`` itself, only the most positive
    weight of a symmetric group is, by half a step)."""
    _check_weight("w", w)
    bits = _check_bits(bits)
    g = _check_group_size(group_size, w.shape[1], bits)
    check_bool("symmetric", symmetric)
    return _FakeQuantizeSTE.apply(w, bits, g, symmetric)


class QATLinear(nn.Linear):
    """An ``nn.Linear`` that trains with fake-quantized weights: forward is
    ``F.linear(x, fake_quantize(W), b)``; ``W`` and ``b`` stay in full precision and are
    trained. ``QATLinear.from_linear(linear, bits, group_size, symmetric=True)`` copies a
    layer; ``quantize_model`` later stores the weights it imitated."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        bits: int = 4,
        group_size: int | None = None,
        symmetric: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.bits = _check_bits(bits)
        self.group_size = _check_group_size(group_size, in_features, bits, what="the layer")
        check_bool("symmetric", symmetric)
        self.symmetric = symmetric

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int,
        group_size: int | None = None,
        *,
        symmetric: bool = True,
    ) -> QATLinear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            bits=bits,
            group_size=group_size,
            symmetric=symmetric,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        with torch.no_grad():
            new.weight.copy_(linear.weight)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        new.requires_grad_(linear.weight.requires_grad)
        return new

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, bits={self.bits}, group_size={self.group_size}, "
            f"symmetric={self.symmetric}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., Cin) -> (..., Cout)."""
        weight = _FakeQuantizeSTE.apply(self.weight, self.bits, self.group_size, self.symmetric)
        return F.linear(x, weight, self.bias)  # (..., Cout)


def prepare_qat(
    model: nn.Module,
    bits: int,
    group_size: int | None = None,
    *,
    symmetric: bool = True,
    skip: Sequence[str] = DEFAULT_SKIP,
) -> list[str]:
    """Replace the linear layers that ``quantize_model`` would quantize by ``QATLinear``
    (same skipping rules), in place; returns their names. Train, then call
    ``quantize_model(model, bits, group_size, symmetric=...)`` with the same settings."""
    bits = _check_bits(bits)
    check_bool("symmetric", symmetric)
    found = [
        (name, linear)
        for name, linear in _linears_to_swap(model, bits, group_size, skip)
        if not isinstance(linear, QATLinear)
    ]
    for name, linear in found:
        _replace(model, name, QATLinear.from_linear(linear, bits, group_size, symmetric=symmetric))
    return [name for name, _ in found]

