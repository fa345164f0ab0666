"""The parts of a Transformer block: normalisation, feed-forward networks, residual wiring.

- ``layer_norm`` / ``LayerNorm`` (Ba et al., 2016, https://arxiv.org/abs/1607.06450): centre
  each token's vector, divide by its standard deviation, then scale and shift.
- ``rms_norm`` / ``RMSNorm`` (Zhang & Sennrich, 2019, https://arxiv.org/abs/1910.07467): only
  divide by the root mean square; no centring, no shift. Llama, Mistral, Gemma use it.
- ``FeedForward``: the position-wise network of the 2017 Transformer, ``down(act(up(x)))``
  with ReLU or GELU (Hendrycks & Gimpel, 2016, https://arxiv.org/abs/1606.08415).
- ``SwiGLU``: the gated variant of Shazeer, 2020 (https://arxiv.org/abs/2002.05202),
  ``down(silu(gate(x)) * up(x))``, used by Llama.
- ``TransformerBlock``: attention + feed-forward, each wrapped in a residual connection with
  a norm before (pre-norm, GPT-2 onwards) or after (post-norm, the 2017 paper and BERT).
  Switches for no residual and no norm exist for the ablation lab.

Left out: dropout inside the feed-forward network (only residual dropout is applied),
DeepNorm / sandwich norms, parallel attention + FFN blocks (GPT-J, PaLM), QK-norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmfoundations._pytree import pytree_dataclass
from llmfoundations._validate import check_choice, check_int, check_positive, check_tensor
from llmfoundations.attention import KVCacheLike, MultiHeadAttention

if TYPE_CHECKING:  # moe imports this module (its experts are SwiGLU / FeedForward)
    from llmfoundations.moe import MoEOutput

__all__ = [
    "layer_norm",
    "rms_norm",
    "LayerNorm",
    "RMSNorm",
    "make_norm",
    "FeedForward",
    "SwiGLU",
    "default_d_ff",
    "TransformerBlock",
    "BlockOutput",
    "NORMS",
    "FFNS",
]

# The options as types (for readers and type checkers) and as tuples (for the runtime checks).
Norm = Literal["layernorm", "rmsnorm", "none"]
FFN = Literal["swiglu", "gelu", "gelu_tanh", "relu", "moe"]
Activation = Literal["gelu", "gelu_tanh", "relu"]
NormPosition = Literal["pre", "post"]
NORMS: tuple[Norm, ...] = get_args(Norm)
FFNS: tuple[FFN, ...] = get_args(FFN)
_ACTIVATIONS: tuple[Activation, ...] = get_args(Activation)


def _check_features(name: str, x: object, d: int) -> Tensor:
    check_tensor(name, x, min_ndim=1, floating=True)
    if x.shape[-1] != d:
        raise ValueError(f"{name} must have last dimension {d}, got shape {tuple(x.shape)}")
    return x


# -------------------------------------------------------------------------------- norms


def _at_least_float32(x: Tensor) -> Tensor:
    """fp16 / bf16 -> float32 (their range and precision are too small for the statistics)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Readable LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    The variance is the biased one (divide by ``C``, not ``C - 1``), as in every
    Transformer implementation. Half-precision inputs are computed in float32 and cast back.
    """
    check_tensor("x", x, min_ndim=1, floating=True)
    xf = _at_least_float32(x)
    mean = xf.mean(dim=-1, keepdim=True)  # (..., 1)
    var = ((xf - mean) ** 2).mean(dim=-1, keepdim=True)  # (..., 1)
    y = (xf - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype)


def rms_norm(x: Tensor, weight: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Readable RMSNorm over the last axis: ``x / sqrt(mean(x^2) + eps) * weight``.

    As in Llama, half-precision inputs are normalised in float32, the result is cast back to
    ``x.dtype`` and only then multiplied by ``weight`` (so a bf16 model rounds in the same
    place).
    """
    check_tensor("x", x, min_ndim=1, floating=True)
    return _rms_norm(x, weight, eps)


def _rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    # The core of rms_norm, unchecked (RMSNorm.forward has checked x already).
    xf = _at_least_float32(x)
    inv_rms = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    y = (xf * inv_rms).to(x.dtype)
    return y if weight is None else weight * y


class LayerNorm(nn.Module):
    """LayerNorm with a learned scale ``weight`` and (optionally) shift ``bias``, both ``(C,)``.

    ``forward`` calls torch's fused ``F.layer_norm``; ``layer_norm`` above is the same maths
    written out (the tests hold the two together).
    """

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.d = check_int("d", d, minimum=1)
        check_positive("eps", eps, allow_zero=True)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        _check_features("x", x, self.d)
        return F.layer_norm(x, (self.d,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale ``weight`` ``(C,)``; see ``rms_norm`` (this is its forward)."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.d = check_int("d", d, minimum=1)
        check_positive("eps", eps, allow_zero=True)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        _check_features("x", x, self.d)
        return _rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}"


def make_norm(kind: Norm, d: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """``"layernorm"`` -> ``LayerNorm``, ``"rmsnorm"`` -> ``RMSNorm``, ``"none"`` -> identity."""
    check_choice("norm", kind, NORMS)
    if kind == "layernorm":
        return LayerNorm(d, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(d, eps=eps)
    return nn.Identity()


# ----------------------------------------------------------------------------- feed-forward


def default_d_ff(d_model: int, ffn: FFN) -> int:
    """Conventional hidden width: ``4 * d_model``, or about ``8/3 * d_model`` for gated FFNs.

    A gated FFN (SwiGLU, and the SwiGLU experts of MoE) has three matrices instead of two;
    ``8/3 * d_model`` (rounded up to a multiple of 8) keeps its parameter count close to that
    of a ``4 * d_model`` two-matrix FFN, as in Llama.
    """
    check_int("d_model", d_model, minimum=1)
    check_choice("ffn", ffn, FFNS)
    if ffn in ("swiglu", "moe"):
        return 8 * math.ceil(8 * d_model / 3 / 8)
    return 4 * d_model


class FeedForward(nn.Module):
    """Position-wise feed-forward network ``down_proj(act(up_proj(x)))``, (..., C) -> (..., C).

    ``activation``: ``"relu"`` (2017), ``"gelu"`` (exact, erf-based; BERT) or ``"gelu_tanh"``
    (the tanh approximation; GPT-2).
    """

    def __init__(
        self, d_model: int, d_ff: int, activation: Activation = "gelu", bias: bool = True
    ) -> None:
        super().__init__()
        check_int("d_model", d_model, minimum=1)
        check_int("d_ff", d_ff, minimum=1)
        check_choice("activation", activation, _ACTIVATIONS)
        self.d_model, self.d_ff, self.activation = d_model, d_ff, activation
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def act(self, h: Tensor) -> Tensor:
        if self.activation == "relu":
            return F.relu(h)
        return F.gelu(h, approximate="tanh" if self.activation == "gelu_tanh" else "none")

    def forward(self, x: Tensor) -> Tensor:
        _check_features("x", x, self.d_model)
        return self.down_proj(self.act(self.up_proj(x)))  # (..., F) -> (..., C)


class SwiGLU(nn.Module):
    """Gated feed-forward network ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (Llama names).

    The gate decides, feature by feature, how much of ``up_proj(x)`` passes through.
    """

    def __init__(self, d_model: int, d_ff: int, bias: bool = False) -> None:
        super().__init__()
        check_int("d_model", d_model, minimum=1)
        check_int("d_ff", d_ff, minimum=1)
        self.d_model, self.d_ff = d_model, d_ff
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        _check_features("x", x, self.d_model)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (..., C)


def _make_ffn(
    ffn: FFN,
    d_model: int,
    d_ff: int,
    bias: bool,
    n_experts: int,
    top_k: int,
    capacity_factor: float | None,
) -> nn.Module:
    if ffn == "swiglu":
        return SwiGLU(d_model, d_ff, bias=bias)
    if ffn == "moe":
        from llmfoundations.moe import MoELayer  # imported only when a block needs it

        return MoELayer(
            d_model,
            d_ff,
            n_experts,
            top_k,
            capacity_factor=capacity_factor,
            activation="swiglu",
            bias=bias,
        )
    return FeedForward(d_model, d_ff, activation=ffn, bias=bias)


# ---------------------------------------------------------------------------- the block


@pytree_dataclass
@dataclass(frozen=True)
class BlockOutput:
    """What :class:`TransformerBlock` returns.

    - ``hidden`` (B, T, C): the block's output, the input of the next block;
    - ``attn_weights`` (B, H, T, Tk): the self-attention weights, with ``need_weights=True``
      (else ``None``);
    - ``moe``: the :class:`llmfoundations.moe.MoEOutput` of a mixture-of-experts
      feed-forward (its losses and routing; else ``None``).
    """

    hidden: Tensor
    attn_weights: Tensor | None = None
    moe: MoEOutput | None = None


class TransformerBlock(nn.Module):
    """One Transformer layer: self-attention, optional cross-attention, feed-forward.

    With ``norm_position="pre"`` (GPT-2, Llama) each sub-layer ``f`` is used as
    ``x = x + f(norm(x))``: the residual stream is never normalised, so gradients reach
    early layers unchanged. With ``"post"`` (2017, BERT) it is ``x = norm(x + f(x))``.
    ``residual=False`` drops the ``x +`` (and ``norm="none"`` the norms) for ablations.

    Args:
        d_model, n_heads, n_kv_heads: see ``MultiHeadAttention``.
        d_ff: feed-forward width (default ``default_d_ff(d_model, ffn)``).
        norm: ``"rmsnorm"``, ``"layernorm"`` or ``"none"``.
        ffn: ``"swiglu"``, ``"gelu"``, ``"gelu_tanh"``, ``"relu"`` or ``"moe"`` (a
            ``llmfoundations.moe.MoELayer`` of SwiGLU experts; its output, losses
            included, comes back in ``BlockOutput.moe``).
        norm_position: ``"pre"`` or ``"post"``.
        residual: keep the residual connections.
        cross_attention: add a cross-attention sub-layer (decoder of an encoder-decoder).
        causal: causal self-attention (decoder) or bidirectional (encoder).
        rope_theta, rope_interleaved: RoPE in self-attention (``None`` = no RoPE).
        bias: biases in attention and feed-forward linears (and LayerNorm).
        eps: norm epsilon.
        dropout: dropout on attention weights and on each sub-layer's output.
        n_experts, top_k, capacity_factor: MoE settings (used when ``ffn="moe"``).
        fused_attention: see ``MultiHeadAttention(fused=...)``.

    Submodules: ``attn``, ``norm1``, ``ffn``, ``norm2`` and, with cross-attention,
    ``cross_attn`` and ``norm_cross``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        d_ff: int | None = None,
        *,
        norm: Norm = "rmsnorm",
        ffn: FFN = "swiglu",
        norm_position: NormPosition = "pre",
        residual: bool = True,
        cross_attention: bool = False,
        causal: bool = True,
        rope_theta: float | None = None,
        rope_interleaved: bool = False,
        bias: bool = False,
        eps: float = 1e-5,
        dropout: float = 0.0,
        n_experts: int = 8,
        top_k: int = 2,
        capacity_factor: float | None = None,
        fused_attention: bool = True,
    ) -> None:
        super().__init__()
        check_choice("norm", norm, NORMS)
        check_choice("ffn", ffn, FFNS)
        check_choice("norm_position", norm_position, ("pre", "post"))
        d_ff = default_d_ff(d_model, ffn) if d_ff is None else check_int("d_ff", d_ff, minimum=1)
        self.norm_position, self.residual = norm_position, residual
        attn_args = dict(bias=bias, dropout=dropout, fused=fused_attention)
        self.attn = MultiHeadAttention(
            d_model,
            n_heads,
            n_kv_heads,
            causal=causal,
            rope_theta=rope_theta,
            rope_interleaved=rope_interleaved,
            **attn_args,
        )
        self.norm1 = make_norm(norm, d_model, eps, bias)
        if cross_attention:
            self.cross_attn = MultiHeadAttention(
                d_model, n_heads, n_kv_heads, causal=False, **attn_args
            )
            self.norm_cross = make_norm(norm, d_model, eps, bias)
        else:
            self.cross_attn = self.norm_cross = None
        self.ffn = _make_ffn(ffn, d_model, d_ff, bias, n_experts, top_k, capacity_factor)
        self.norm2 = make_norm(norm, d_model, eps, bias)
        self.drop = nn.Dropout(dropout)

    def _residual(self, x: Tensor, norm: nn.Module, out: Tensor) -> Tensor:
        """Add a sub-layer's output ``out`` (computed from ``norm(x)`` for pre-norm) to ``x``."""
        out = self.drop(out)
        y = x + out if self.residual else out
        return norm(y) if self.norm_position == "post" else y

    def _inner(self, x: Tensor, norm: nn.Module) -> Tensor:
        """What a sub-layer reads: ``norm(x)`` for pre-norm, ``x`` itself for post-norm."""
        return norm(x) if self.norm_position == "pre" else x

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        positions: Tensor | None = None,
        kv_cache: KVCacheLike | None = None,
        need_weights: bool = False,
    ) -> BlockOutput:
        """``x`` (B, T, C) -> :class:`BlockOutput` (``.hidden`` is (B, T, C)).

        ``attn_mask``, ``positions`` and ``kv_cache`` go to self-attention (see
        ``MultiHeadAttention.forward``); ``context`` (B, S, C) and its padding mask
        ``context_mask`` (B, S) go to cross-attention. ``need_weights`` fills
        ``attn_weights`` with the self-attention weights (B, H, T, Tk).
        """
        check_tensor("x", x, ndim=3, floating=True)
        if (context is None) != (self.cross_attn is None):
            raise ValueError(
                "context must be given exactly when the block has cross-attention "
                f"(cross_attention={self.cross_attn is not None}, context given: "
                f"{context is not None})"
            )
        if not isinstance(need_weights, bool):
            raise TypeError(f"need_weights must be a bool, got {type(need_weights).__name__}")

        h = self._inner(x, self.norm1)
        attend = self.attn.forward_with_weights if need_weights else self.attn
        a = attend(h, attn_mask=attn_mask, positions=positions, kv_cache=kv_cache)
        a, weights = a if need_weights else (a, None)
        x = self._residual(x, self.norm1, a)
        if self.cross_attn is not None:
            h = self._inner(x, self.norm_cross)
            x = self._residual(x, self.norm_cross, self.cross_attn(h, context, attn_mask=context_mask))
        f = self.ffn(self._inner(x, self.norm2))  # a tensor, or a MoEOutput
        moe = None if isinstance(f, Tensor) else f
        x = self._residual(x, self.norm2, f if moe is None else moe.output)
        return BlockOutput(hidden=x, attn_weights=weights, moe=moe)
