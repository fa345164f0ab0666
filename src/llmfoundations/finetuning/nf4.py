"""NF4: 4-bit NormalFloat weights, block-wise scales, double quantization, and QLoRA.

QLoRA (Dettmers et al., 2023, https://arxiv.org/abs/2305.14314) fine-tunes a model whose
frozen weights are stored in 4 bits, with LoRA adapters (``lora``) in 16 or 32 bits on top.
Three ideas make 4 bits enough:

1. **A code shaped like the weights.** Trained weights are roughly normal, so the 16 values
   of the code are quantiles of N(0, 1) scaled to [-1, 1], each covering a similar share
   of the weights: dense near 0, sparse in the tails. Sixteen values cannot be symmetric
   and still hold an exact zero, so there are 8 positive values, 7 negative ones and 0
   (``nf4_code_from_quantiles``; ``NF4_CODE`` is the table).
2. **Block-wise absmax scaling.** The flattened weight is cut into blocks of 64; each block
   is divided by its largest magnitude ``absmax`` (so it lies in [-1, 1]), each value is
   replaced by the index of the nearest code value, and two 4-bit indices are packed into
   one byte, the first in the high nibble. Dequantization is ``code[index] * absmax``. An
   outlier only spoils its own block.
3. **Double quantization.** One float32 ``absmax`` per 64 weights costs 32 / 64 = 0.5 bit
   per weight. QLoRA quantizes the absmax values themselves: their mean is subtracted,
   and the rest is stored in 8 bits per value with one float32 scale per block of 256
   (bitsandbytes' 8-bit *dynamic* code, ``dynamic_code``). That costs
   8 / 64 + 32 / (64 * 256) = 0.127 bit per weight (plus one float32 per tensor).

So a weight costs 4.5 bits in NF4 and about 4.127 with double quantization, against 16
in bfloat16 and 32 in float32 (``NF4Weight.bits_per_parameter`` counts it exactly).

This module holds:

- ``NF4_CODE``, ``nf4_code_from_quantiles(offset)``, ``dynamic_code()``: the two codes;
- ``quantize_nf4(w, block_size=64, *, double_quant=False)`` -> ``NF4Weight`` (packed
  uint8 codes, absmax per block, shape, dtype) and ``dequantize_nf4(q)``;
- ``quantize_absmax`` / ``dequantize_absmax``: double quantization on its own;
- ``NF4Linear``: a frozen linear layer stored in NF4, dequantized on the fly in forward;
- ``QLoRALinear`` and ``apply_qlora``: LoRA over an ``NF4Linear`` base.

Against bitsandbytes (its CPU kernels; tested): ``quantize_nf4`` gives bit for bit the
packed bytes and absmax of ``quantize_4bit(w, blocksize=64, quant_type="nf4")`` and
``dequantize_nf4`` the values of ``dequantize_4bit``; note that bitsandbytes' default
``quant_type`` is ``"fp4"``, another code. Double quantization picks the *nearest* 8-bit
code; bitsandbytes' CPU kernel finds it with an approximate search that, for a small
fraction of values lying very close to the middle between two codes, returns the
neighbour instead, so those absmax codes differ by one step (dequantizing bitsandbytes'
own codes is bit-exact). ``QLoRALinear``
equals peft's LoRA over ``bnb.nn.Linear4bit(quant_type="nf4")`` up to float32 rounding.

Left out: FP4 and other 4-bit codes, computing with packed weights without dequantizing
them (fused 4-bit matrix kernels), paged optimizers (QLoRA's third idea, for memory
spikes on a GPU), storing codes in other dtypes than uint8, quantizing embeddings, and
merging an adapter into a 4-bit weight (``QLoRALinear.to_linear`` merges in full
precision instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmfoundations._validate import check_int, check_tensor
from llmfoundations.finetuning.lora import (
    LoRALinear,
    _check_lora_args,
    _check_rank,
    _find_linears,
    _wrap_linears,
)

__all__ = [
    "NF4_CODE",
    "NF4_OFFSET",
    "nf4_code_from_quantiles",
    "dynamic_code",
    "QuantizedAbsmax",
    "NF4Weight",
    "quantize_nf4",
    "dequantize_nf4",
    "quantize_absmax",
    "dequantize_absmax",
    "NF4Linear",
    "QLoRALinear",
    "apply_qlora",
]

#: The 16 values of NF4 as bitsandbytes stores them (``get_4bit_type("nf4")``), which
#: ``nf4_code_from_quantiles()`` reproduces bit for bit.
NF4_CODE = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=torch.float32,
)
_ZERO_INDEX = 7  # NF4_CODE[7] == 0.0

#: The outermost probability whose normal quantile becomes +-1 (bitsandbytes'
#: ``create_normal_map(offset=0.9677083)``); it agrees to seven decimals with the mean of
#: 1 - 1/32 and 1 - 1/30.
NF4_OFFSET = 0.9677083

_BLOCK_SIZE_2 = 256  # absmax values per block in double quantization (bitsandbytes' choice)


def nf4_code_from_quantiles(offset: float = NF4_OFFSET) -> Tensor:
    """The 16 NF4 values from quantiles of the standard normal distribution.

    Take 8 probabilities evenly spaced from ``offset`` down to (not including) 0.5 and
    their quantiles ``Phi^-1(p)`` (positive); take 7 such probabilities for the negative
    side; add 0; sort; divide by the largest so the ends are -1 and 1. The steps and
    precisions follow bitsandbytes' ``create_normal_map`` (float32 probabilities, float64
    quantiles, float32 normalisation), so the result equals ``NF4_CODE`` bit for bit.
    ``offset`` < 1, because ``Phi^-1(1)`` is infinite.
    """
    if isinstance(offset, bool) or not isinstance(offset, float) or not 0.5 < offset < 1:
        raise ValueError(f"offset must be a float in (0.5, 1), got {offset!r}")
    p_pos = torch.linspace(offset, 0.5, 9)[:-1]  # (8,) float32
    p_neg = torch.linspace(offset, 0.5, 8)[:-1]  # (7,)
    quantiles = torch.cat(
        [
            torch.special.ndtri(p_pos.double()),  # 8 positive quantiles of N(0, 1)
            torch.zeros(1, dtype=torch.float64),  # an exact zero
            -torch.special.ndtri(p_neg.double()),  # 7 negative ones
        ]
    )
    values = quantiles.float().sort().values  # (16,)
    return values / values.max()


def dynamic_code() -> Tensor:
    """bitsandbytes' signed 8-bit *dynamic* code (256 values in [-1, 1]), as used by double
    quantization (Dettmers et al., 2022, https://arxiv.org/abs/2110.02861).

    A dynamic code spends its bits on orders of magnitude: for each decade
    ``10^-6 .. 10^0`` it holds ``2^i`` evenly spaced values (i = 0 for the smallest decade,
    6 for the largest) and their negatives, plus 0 and 1: 2 * 127 + 2 = 256 values, fine
    near 1 and still able to represent 1e-6. (The most negative value is -0.99297, not -1:
    the table is not symmetric.) Equal to bitsandbytes' ``create_dynamic_map()``.
    """
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0  # (2**i,) centres of [0.1, 1] cut in 2**i
        scale = 10 ** (i - 6)  # the decade
        values += (scale * means).tolist() + (-scale * means).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)  # (256,)


_DYNAMIC_CODE = dynamic_code()


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True)
class QuantizedAbsmax:
    """Block scales stored in 8 bits (double quantization).

    ``absmax ~= dynamic_code()[codes] * scale[block of 256] + offset``: ``codes`` (Nb,)
    uint8, ``scale`` (ceil(Nb / 256),) float32, ``offset`` a float32 scalar tensor (the
    mean absmax).
    """

    codes: Tensor
    scale: Tensor
    offset: Tensor
    block_size: int = _BLOCK_SIZE_2

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 4 * self.scale.numel() + 4


@dataclass(frozen=True)
class NF4Weight:
    """A tensor in NF4: what ``quantize_nf4`` returns and ``dequantize_nf4`` reads.

    - ``packed`` (ceil(N / 2),) uint8: two 4-bit code indices per byte, the first in the
      high nibble (an odd N is padded with the index of 0.0);
    - ``absmax`` (Nb,) float32, one per block, or a ``QuantizedAbsmax`` (double
      quantization);
    - ``shape`` and ``dtype`` of the original tensor; ``block_size``.
    """

    packed: Tensor
    absmax: Tensor | QuantizedAbsmax
    shape: tuple[int, ...]
    dtype: torch.dtype
    block_size: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def double_quant(self) -> bool:
        return isinstance(self.absmax, QuantizedAbsmax)

    @property
    def nbytes(self) -> int:
        """Bytes stored: packed codes + block scales (+ the double-quantization scales)."""
        scales = self.absmax.nbytes if self.double_quant else 4 * self.absmax.numel()
        return self.packed.numel() + scales

    @property
    def bits_per_parameter(self) -> float:
        """``8 * nbytes / numel``: 4.5 for blocks of 64, ~4.127 with double quantization."""
        return 8 * self.nbytes / self.numel


# -------------------------------------------------------------------------------- cores


def _blockwise_quantize(x: Tensor, code: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Unchecked core shared by the 4-bit and the 8-bit quantizer: float32 ``x`` (N,) ->
    (indices of the nearest code values (N,) int64, absmax (Nb,) float32).

    Each block is multiplied by the reciprocal of its absmax (as bitsandbytes does), clipped
    to [-1, 1], and rounded to the nearest code value; a value exactly half-way between
    two codes goes to the lower one. An all-zero block keeps absmax 0 and maps to 0.
    """
    n = x.numel()
    n_blocks = -(-n // block_size)
    padded = F.pad(x, (0, n_blocks * block_size - n))  # (Nb * block_size,)
    blocks = padded.view(n_blocks, block_size)  # (Nb, block_size)
    absmax = blocks.abs().amax(dim=1)  # (Nb,); the zero padding never exceeds it
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1)  # (Nb, block_size)
    midpoints = (code[:-1] + code[1:]) / 2  # (K-1,): the boundaries between nearest codes
    indices = torch.bucketize(scaled.reshape(-1)[:n], midpoints)  # (N,)
    return indices, absmax


def _blockwise_dequantize(indices: Tensor, absmax: Tensor, code: Tensor, block_size: int) -> Tensor:
    """Unchecked core: ``code[indices] * absmax`` block by block -> float32 (N,)."""
    n = indices.numel()
    values = code[indices.long()]  # (N,)
    n_blocks = absmax.numel()
    blocks = F.pad(values, (0, n_blocks * block_size - n)).view(n_blocks, block_size)
    return (blocks * absmax[:, None]).reshape(-1)[:n]  # (N,)


def _pack(indices: Tensor) -> Tensor:
    """(N,) 4-bit indices -> (ceil(N / 2),) uint8, element 2i in the high nibble."""
    if indices.numel() % 2:
        indices = F.pad(indices, (0, 1), value=_ZERO_INDEX)
    q = indices.to(torch.uint8)
    return (q[0::2] << 4) | q[1::2]


def _unpack(packed: Tensor, n: int) -> Tensor:
    """(ceil(N / 2),) uint8 -> (N,) int64 indices."""
    high, low = packed >> 4, packed & 0x0F
    return torch.stack([high, low], dim=1).reshape(-1)[:n].long()


def _dequantize_absmax(q: QuantizedAbsmax) -> Tensor:
    """Unchecked core of ``dequantize_absmax``: float32 (Nb,)."""
    return (
        _blockwise_dequantize(q.codes, q.scale, _DYNAMIC_CODE.to(q.scale.device), q.block_size)
        + q.offset
    )


def _dequantize_core(packed: Tensor, absmax: Tensor, n: int, block_size: int) -> Tensor:
    """Unchecked core of ``dequantize_nf4``: float32 (N,)."""
    return _blockwise_dequantize(_unpack(packed, n), absmax, NF4_CODE.to(absmax.device), block_size)


# --------------------------------------------------------------------------- public API


def _check_block_size(name: str, block_size: object) -> int:
    check_int(name, block_size, minimum=2)
    return block_size


def quantize_absmax(absmax: Tensor, block_size: int = _BLOCK_SIZE_2) -> QuantizedAbsmax:
    """Double quantization: subtract the mean, then 8-bit dynamic codes per block of 256.

    >>> q = quantize_absmax(torch.tensor([0.5, 1.0, 2.0]))
    >>> (dequantize_absmax(q) - torch.tensor([0.5, 1.0, 2.0])).abs().max() < 0.01
    tensor(True)
    """
    check_tensor("absmax", absmax, ndim=1, dtype=torch.float32, nonempty=True)
    block_size = _check_block_size("block_size", block_size)
    offset = absmax.mean()  # () float32
    codes, scale = _blockwise_quantize(absmax - offset, _DYNAMIC_CODE.to(absmax.device), block_size)
    return QuantizedAbsmax(
        codes=codes.to(torch.uint8), scale=scale, offset=offset, block_size=block_size
    )


def dequantize_absmax(q: QuantizedAbsmax) -> Tensor:
    """The float32 absmax values (Nb,) that ``q`` stands for."""
    if not isinstance(q, QuantizedAbsmax):
        raise TypeError(f"q must be a QuantizedAbsmax, got {type(q).__name__}")
    return _dequantize_absmax(q)


def quantize_nf4(w: Tensor, block_size: int = 64, *, double_quant: bool = False) -> NF4Weight:
    """Quantize ``w`` (any shape, float32 / bfloat16 / float16) to NF4, block by block.

    The tensor is flattened in row-major order and cut into blocks of ``block_size``
    (the last one may be shorter); computation is in float32. ``double_quant`` also
    quantizes the block scales (``quantize_absmax``).

    >>> q = quantize_nf4(torch.linspace(-1, 1, 8), block_size=4)
    >>> q.packed.tolist(), q.absmax.tolist()
    ([1, 53, 156, 239], [1.0, 1.0])
    """
    check_tensor("w", w, dtype=(torch.float32, torch.bfloat16, torch.float16), nonempty=True)
    block_size = _check_block_size("block_size", block_size)
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {type(double_quant).__name__}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("w must be finite: it holds NaN or infinity")
    indices, absmax = _blockwise_quantize(w.reshape(-1).float(), NF4_CODE.to(w.device), block_size)
    scales = quantize_absmax(absmax) if double_quant else absmax
    return NF4Weight(
        packed=_pack(indices),
        absmax=scales,
        shape=tuple(w.shape),
        dtype=w.dtype,
        block_size=block_size,
    )


def dequantize_nf4(q: NF4Weight) -> Tensor:
    """The tensor that ``q`` stands for: ``NF4_CODE[index] * absmax``, computed in
    float32, returned in ``q.shape`` and ``q.dtype``."""
    if not isinstance(q, NF4Weight):
        raise TypeError(f"q must be an NF4Weight, got {type(q).__name__}")
    absmax = _dequantize_absmax(q.absmax) if q.double_quant else q.absmax
    flat = _dequantize_core(q.packed, absmax, q.numel, q.block_size)  # (N,) float32
    return flat.reshape(q.shape).to(q.dtype)


# ------------------------------------------------------------------------------- layers


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is stored in NF4 and dequantized in every forward.

    Built from an ``nn.Linear`` (``NF4Linear(linear, block_size=64, double_quant=False)``);
    the full-precision weight is not kept. Buffers: ``packed`` and either ``absmax`` or
    ``absmax_codes`` / ``absmax_scale`` / ``absmax_offset``; the bias, if any, stays in
    full precision and frozen. Forward: ``x @ dequantize(W).T + bias`` in ``x``'s dtype.

    Keep the scales in float32: ``module.to(torch.bfloat16)`` casts every floating buffer,
    ``absmax`` included, which rounds the scales (bitsandbytes keeps them in float32).
    Cast the inputs and the adapters instead.
    """

    def __init__(self, linear: nn.Linear, block_size: int = 64, *, double_quant: bool = False) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        q = quantize_nf4(linear.weight.detach(), block_size, double_quant=double_quant)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block_size, self.weight_dtype = q.block_size, q.dtype
        self.register_buffer("packed", q.packed)
        dq = q.absmax if q.double_quant else None
        self.register_buffer("absmax", None if dq else q.absmax)
        self.register_buffer("absmax_codes", dq.codes if dq else None)
        self.register_buffer("absmax_scale", dq.scale if dq else None)
        self.register_buffer("absmax_offset", dq.offset if dq else None)
        bias = linear.bias
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        )

    @property
    def double_quant(self) -> bool:
        return self.absmax is None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, block_size={self.block_size}, "
            f"double_quant={self.double_quant}"
        )

    def quantized_weight(self) -> NF4Weight:
        """The weight as an ``NF4Weight`` (views of the buffers)."""
        if self.double_quant:
            absmax = QuantizedAbsmax(self.absmax_codes, self.absmax_scale, self.absmax_offset)
        else:
            absmax = self.absmax
        shape = (self.out_features, self.in_features)
        return NF4Weight(self.packed, absmax, shape, self.weight_dtype, self.block_size)

    def dequantized_weight(self) -> Tensor:
        """(Cout, Cin) in float32."""
        if self.double_quant:
            absmax = _dequantize_absmax(
                QuantizedAbsmax(self.absmax_codes, self.absmax_scale, self.absmax_offset)
            )
        else:
            absmax = self.absmax
        flat = _dequantize_core(
            self.packed, absmax, self.in_features * self.out_features, self.block_size
        )
        return flat.view(self.out_features, self.in_features)  # (Cout, Cin)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., Cin) -> (..., Cout)."""
        weight = self.dequantized_weight().to(x.dtype)  # (Cout, Cin): dequantized on the fly
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)


class QLoRALinear(LoRALinear):
    """LoRA over a frozen NF4 base: ``NF4Linear(base)(x) + s * B(A(dropout(x)))``.

    Takes the full-precision ``nn.Linear`` and quantizes it; ``lora_A`` and ``lora_B`` stay
    in the base's dtype (float32 or bfloat16) and are the only trainable parameters. The
    gradient flows through the dequantized weight to the input, never into the 4-bit
    codes. Merging is refused: ``W + dW`` would have to be quantized again, losing most of
    the update; ``to_linear()`` returns the merged layer in full precision instead.
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        rslora: bool = False,
        block_size: int = 64,
        double_quant: bool = False,
    ) -> None:
        super().__init__(base, r, alpha, dropout, rslora=rslora)
        self.base = NF4Linear(base, block_size, double_quant=double_quant)

    def merge(self) -> None:
        raise RuntimeError(
            "a QLoRALinear cannot merge into its 4-bit weight (W + dW would be quantized again); "
            "use to_linear() for a merged full-precision layer"
        )

    def unmerge(self) -> None:
        raise RuntimeError("a QLoRALinear is never merged")

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` with ``dequantize(W) + dW`` (float32 sum, in the adapter's
        dtype) and the bias: the fine-tuned layer, ready to deploy or re-quantize."""
        weight = self.base.dequantized_weight() + self.delta_weight()  # (Cout, Cin)
        dtype, device = self.lora_A.dtype, self.lora_A.device
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.base.bias is not None,
            dtype=dtype,
            device=device,
        )
        linear.weight.copy_(weight)
        if self.base.bias is not None:
            linear.bias.copy_(self.base.bias)
        return linear


def apply_qlora(
    model: nn.Module,
    target_modules: Sequence[str],
    r: int,
    alpha: float,
    *,
    dropout: float = 0.0,
    rslora: bool = False,
    block_size: int = 64,
    double_quant: bool = False,
) -> list[str]:
    """``apply_lora``, but each target's weight is quantized to NF4 first (``QLoRALinear``).

    QLoRA quantizes and adapts every linear layer of the blocks (pass all their names:
    ``["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]``).
    The model is changed in place; the wrapped names are returned; all other parameters
    are frozen. Raises before changing anything, as ``apply_lora`` does.
    """
    _check_lora_args(r, alpha, dropout, rslora)
    _check_block_size("block_size", block_size)
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {type(double_quant).__name__}")
    found = _find_linears(model, target_modules)
    for name, linear in found:
        _check_rank(r, linear.in_features, linear.out_features, name)
        check_tensor(
            f"{name}.weight", linear.weight, dtype=(torch.float32, torch.bfloat16, torch.float16)
        )
    return _wrap_linears(
        model,
        found,
        lambda linear: QLoRALinear(
            linear,
            r,
            alpha,
            dropout,
            rslora=rslora,
            block_size=block_size,
            double_quant=double_quant,
        ),
    )
