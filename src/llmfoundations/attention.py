"""Scaled dot-product attention, masks, and multi-head attention (MHA, GQA, MQA, cross).

Every token asks a question (its query ``q``), every token advertises what it holds (its key
``k``) and what it would hand over (its value ``v``). Attention scores every query against
every key, turns each row of scores into weights with a softmax, and returns the weighted sum
of the values (Vaswani et al., 2017, https://arxiv.org/abs/1706.03762)::

    Attention(Q, K, V) = softmax(Q K^T / sqrt(D) + mask) V

This module holds:

- ``scaled_dot_product_attention``: a readable reference with the semantics of
  ``torch.nn.functional.scaled_dot_product_attention`` (boolean or additive masks,
  ``is_causal``, ``scale``, ``dropout_p``);
- ``attention_weights``: the softmax weights alone, for heatmaps;
- ``causal_mask``: the causal mask for a query block that sits at the *end* of the keys,
  which is what decoding with a KV cache needs;
- ``MultiHeadAttention``: projections, heads, grouped-query and multi-query attention
  (Ainslie et al., 2023, https://arxiv.org/abs/2305.13245; Shazeer, 2019,
  https://arxiv.org/abs/1911.02150), RoPE, cross-attention, padding masks and a KV cache.

Two alignments of a causal mask. With ``Tq`` queries and ``Tk`` keys:

- ``is_causal=True`` (as in torch) is *top-left* aligned: query ``i`` sees keys ``j <= i``.
- ``causal_mask(Tq, Tk)`` is *bottom-right* aligned: the queries are the last ``Tq``
  positions, query ``i`` sits at absolute position ``Tk - Tq + i`` and sees every key up to
  there. This is the right mask when new tokens attend to a cache of earlier ones.

They agree when ``Tq == Tk``.

Fully-masked rows. A query that may attend to no key at all (a left-padding token in a causal
batch, say) gets zero weights and a zero output here, never NaN. PyTorch's math backend has
done the same since version 2.5 (it returned NaN before, see
https://github.com/pytorch/pytorch/issues/103963), but some fused GPU kernels have produced
NaN for such rows (https://github.com/huggingface/transformers/issues/38690), so the fused
path of ``MultiHeadAttention`` never hands torch an empty row.

Left out: attention sinks, sliding windows, soft-capping of scores, ALiBi, flash/tiled
attention (see ``inference/flash.py``), paged caches (see ``kv_cache.py``).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from llmfoundations._validate import (
    check_divisible,
    check_int,
    check_positive,
    check_probability,
    check_qkv,
    check_same_device,
    check_tensor,
)
from llmfoundations.positional import (
    _align_positions,
    _check_position_tensor,
    _rope_cos_sin,
    rotate_pairs,
)

__all__ = [
    "scaled_dot_product_attention",
    "attention_weights",
    "causal_mask",
    "KVCacheLike",
    "MultiHeadAttention",
]


# ---------------------------------------------------------------------------- functions


def causal_mask(
    t_q: int,
    t_k: int,
    offset: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Boolean causal mask ``(Tq, Tk)``; ``True`` where query ``i`` may attend to key ``j``.

    Query ``i`` sits at absolute position ``offset + i`` (keys at ``0 .. Tk-1``) and sees every
    key at a position ``<= offset + i``. The default ``offset = Tk - Tq`` aligns the queries
    with the *last* ``Tq`` keys (bottom-right), as when ``Tq`` new tokens attend to a KV cache
    holding ``Tk - Tq`` earlier ones. ``offset=0`` gives torch's ``is_causal`` (top-left).
    Rows whose position is negative see no key at all.

    >>> causal_mask(2, 4).int()
    tensor([[1, 1, 1, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    check_int("t_q", t_q, minimum=1)
    check_int("t_k", t_k, minimum=1)
    offset = t_k - t_q if offset is None else check_int("offset", offset)
    query_pos = torch.arange(t_q, device=device)[:, None] + offset  # (Tq, 1)
    key_pos = torch.arange(t_k, device=device)[None, :]  # (1, Tk)
    return key_pos <= query_pos  # (Tq, Tk)


def _scores_with_mask(
    q: Tensor, k: Tensor, mask: Tensor | None, is_causal: bool, scale: float | None
) -> Tensor:
    """Scaled scores ``(..., Tq, Tk)`` with forbidden entries set to ``-inf``.

    Half-precision inputs give float32 scores: in float16 a product ``q . k`` of large
    vectors overflows to ``inf`` (65504 is the largest float16), and the softmax of an
    ``inf`` row is NaN. torch's fused kernels accumulate in float32 too.
    """
    check_qkv(q, k, k)
    if mask is not None and is_causal:
        raise ValueError("pass either mask or is_causal=True, not both (as torch requires)")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    else:
        check_positive("scale", scale)
    t_q, t_k = q.shape[-2], k.shape[-2]
    if q.dtype in (torch.float16, torch.bfloat16):
        q, k = q.float(), k.float()
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Tq, Tk), float32 for half inputs
    if is_causal:
        mask = causal_mask(t_q, t_k, offset=0, device=q.device)  # top-left, like torch
    if mask is None:
        return scores
    check_tensor("mask", mask)
    check_same_device(q=q, mask=mask)
    try:
        torch.broadcast_shapes(mask.shape, scores.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the scores "
            f"(..., Tq, Tk) = {tuple(scores.shape)}"
        ) from None
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    if mask.is_floating_point():
        return scores + mask.to(scores.dtype)  # additive mask: 0 keeps, -inf removes
    raise TypeError(
        f"mask must be bool (True = may attend) or floating (additive), got {mask.dtype}"
    )


def _softmax_zero_empty_rows(scores: Tensor) -> Tensor:
    """Softmax over the last axis, written out; rows of only ``-inf`` give zeros, not NaN.

    Subtracting the row maximum keeps ``exp`` from overflowing. A row with no finite score
    has maximum ``-inf``; it is replaced by 0 so every ``exp`` is 0, and the denominator is
    clamped away from 0 so the row (and its gradient) stays 0. Half-precision scores are
    exponentiated in float32 and the weights returned in the scores' dtype.
    """
    work = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    row_max = work.amax(dim=-1, keepdim=True)  # (..., Tq, 1)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(work - row_max)  # (..., Tq, Tk), exactly 0 where the score is -inf
    denom = exp.sum(dim=-1, keepdim=True)  # >= 1 on rows with any allowed key
    weights = exp / denom.clamp_min(torch.finfo(work.dtype).tiny)
    return weights.to(scores.dtype)


def attention_weights(
    q: Tensor,
    k: Tensor,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """The attention probabilities ``softmax(q k^T * scale + mask)``, shape ``(..., Tq, Tk)``.

    Each row sums to 1 (or is all zeros if the mask leaves the query no key). Same arguments
    as ``scaled_dot_product_attention``; useful for heatmaps.
    """
    scores = _scores_with_mask(q, k, mask, is_causal, scale)  # float32 for half inputs
    return _softmax_zero_empty_rows(scores).to(q.dtype)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Readable attention with the semantics of torch's ``F.scaled_dot_product_attention``.

    Args:
        q: queries ``(..., Tq, D)``.
        k: keys ``(..., Tk, D)``.
        v: values ``(..., Tk, Dv)``. Leading dimensions broadcast like ``torch.matmul``.
        mask: broadcastable to ``(..., Tq, Tk)``; boolean (``True`` = may attend) or floating
            (added to the scores, ``-inf`` removes a key).
        is_causal: top-left causal mask (query ``i`` sees keys ``j <= i``, even if
            ``Tq != Tk``); not allowed together with ``mask``. For a bottom-right mask, pass
            ``mask=causal_mask(Tq, Tk)``.
        scale: multiplies the scores; default ``1 / sqrt(D)``.
        dropout_p: probability of zeroing each attention weight (the survivors are scaled by
            ``1 / (1 - dropout_p)``). Like torch, dropout is applied whenever ``dropout_p > 0``:
            pass 0 at evaluation time.

    Returns ``(..., Tq, Dv)``. Rows with no allowed key return zeros (see the module docstring).

    >>> q = k = v = torch.eye(2)[None]
    >>> scaled_dot_product_attention(q, k, v, is_causal=True)
    tensor([[[1.0000, 0.0000],
             [0.3302, 0.6698]]])
    """
    check_qkv(q, k, v)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a number, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    weights = attention_weights(q, k, mask=mask, is_causal=is_causal, scale=scale)  # (..., Tq, Tk)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    return weights @ v  # (..., Tq, Dv)


# --------------------------------------------------------------------------- the module


@runtime_checkable
class KVCacheLike(Protocol):
    """What ``MultiHeadAttention`` needs from a per-layer KV cache.

    - ``length``: how many positions are stored before this call (an ``int`` attribute or
      property);
    - ``update(k, v)``: append the new keys and values, each ``(B, Hkv, T_new, D)`` with RoPE
      already applied, and return everything stored so far, each ``(B, Hkv, T_total, D)``.

    ``kv_cache.KVCache().layers[i]`` is one; see ``kv_cache.py``.
    """

    length: int

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]: ...


def _cache_length(cache: object) -> int:
    length = getattr(cache, "length", None)
    if isinstance(length, bool) or not isinstance(length, int):
        raise TypeError(
            f"kv_cache must have an int `length` (positions stored so far), got "
            f"{type(cache).__name__} with length {length!r}"
        )
    return length


_TORCH_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


def _native_gqa(q: Tensor) -> bool:
    """Whether to let ``F.scaled_dot_product_attention(enable_gqa=True)`` share key/value heads.

    Only on the CPU (torch >= 2.5): there it returns the repeated-heads result to the bit and
    saves copying the keys and values H / Hkv times, which for a long cache costs more than the
    attention itself. On a GPU torch documents ``enable_gqa`` for its flash and math backends
    only, so a masked call could fall back to the slow math backend: there the copy stays.
    """
    return _TORCH_HAS_GQA and q.device.type == "cpu"


class MultiHeadAttention(nn.Module):
    """Multi-head attention with grouped-query / multi-query variants, RoPE and a KV cache.

    Args:
        d_model: model width ``C``.
        n_heads: number of query heads ``H``; the head size is ``D = C // H``.
        n_kv_heads: number of key/value heads ``Hkv`` (default ``H``). ``Hkv < H`` is
            grouped-query attention: each group of ``H // Hkv`` query heads shares one key/value
            head; ``Hkv == 1`` is multi-query attention. Fewer KV heads shrink the KV cache.
        bias: biases on the four projections (GPT-2 and BERT have them, Llama does not).
        causal: self-attention only looks backwards (decoders). Ignored for cross-attention.
        rope_theta: apply RoPE with this base to queries and keys; ``None`` = no RoPE.
        rope_interleaved: RoPE pair layout (see ``positional.apply_rope``).
        dropout: dropout on the attention weights while training.
        fused: ``True`` calls ``torch.nn.functional.scaled_dot_product_attention`` (same maths,
            faster); ``False`` runs this module's readable ``scaled_dot_product_attention``.
            ``forward_with_weights`` always uses the readable path.

    Submodules: ``q_proj`` (C -> H*D), ``k_proj`` (C -> Hkv*D), ``v_proj`` (C -> Hkv*D),
    ``o_proj`` (H*D -> C), all plain ``nn.Linear``. Query head ``h`` uses key/value head
    ``h // (H // Hkv)`` (the layout of Hugging Face's ``repeat_kv``).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        *,
        bias: bool = False,
        causal: bool = True,
        rope_theta: float | None = None,
        rope_interleaved: bool = False,
        dropout: float = 0.0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        check_int("d_model", d_model, minimum=1)
        check_int("n_heads", n_heads, minimum=1)
        check_divisible("d_model", d_model, "n_heads", n_heads)
        n_kv_heads = (
            n_heads if n_kv_heads is None else check_int("n_kv_heads", n_kv_heads, minimum=1)
        )
        check_divisible("n_heads", n_heads, "n_kv_heads", n_kv_heads)
        head_dim = d_model // n_heads
        if rope_theta is not None:
            check_positive("rope_theta", rope_theta)
            if head_dim % 2:
                raise ValueError(
                    f"RoPE needs an even head size, got d_model // n_heads = {head_dim}"
                )
        check_probability("dropout", dropout, low_open=False)
        if dropout >= 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")

        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.causal = causal
        self.rope_theta = rope_theta
        self.rope_interleaved = rope_interleaved
        self.dropout = dropout
        self.fused = fused
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)

    def extra_repr(self) -> str:
        rope = "none" if self.rope_theta is None else f"theta={self.rope_theta:g}"
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"causal={self.causal}, rope={rope}, fused={self.fused}"
        )

    # ---------------------------------------------------------------------------- masks

    def _build_mask(
        self,
        attn_mask: Tensor | None,
        b: int,
        t_q: int,
        t_k: int,
        causal: bool,
        device: torch.device,
    ) -> Tensor | None:
        """Combine the causal mask and ``attn_mask`` into one bool mask ``(B|1, H|1, Tq, Tk)``."""
        mask = None
        if causal and t_q > 1:  # a single query (decoding after a cache) sees every key anyway
            mask = causal_mask(t_q, t_k, device=device)[None, None]  # (1, 1, Tq, Tk), bottom-right
        if attn_mask is None:
            return mask
        check_tensor("attn_mask", attn_mask, ndim=(2, 3, 4))
        if attn_mask.device != device:
            raise ValueError(f"attn_mask is on {attn_mask.device}, but x is on {device}")
        if attn_mask.ndim == 2:  # key padding mask (B, Tk): 1 = real token, 0 = padding
            if attn_mask.is_floating_point() or attn_mask.is_complex():
                raise TypeError(
                    f"a 2-D attn_mask is a key padding mask and must be bool or integer, "
                    f"got {attn_mask.dtype}"
                )
            if tuple(attn_mask.shape) != (b, t_k):
                raise ValueError(
                    f"a 2-D attn_mask is a key padding mask of shape (B, Tk) = {(b, t_k)}, "
                    f"got {tuple(attn_mask.shape)} (with a KV cache it must cover all "
                    f"cached and new positions)"
                )
            extra = rearrange(attn_mask != 0, "b k -> b 1 1 k")  # (B, 1, 1, Tk)
        else:  # full mask (B, Tq, Tk) or (B|1, H|1, Tq, Tk)
            if attn_mask.dtype != torch.bool:
                raise TypeError(f"a 3-D or 4-D attn_mask must be bool, got {attn_mask.dtype}")
            extra = attn_mask[:, None] if attn_mask.ndim == 3 else attn_mask
            try:
                torch.broadcast_shapes(extra.shape, (b, self.n_heads, t_q, t_k))
            except RuntimeError:
                raise ValueError(
                    f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                    f"(B, H, Tq, Tk) = {(b, self.n_heads, t_q, t_k)}"
                ) from None
        return extra if mask is None else mask & extra

    # ----------------------------------------------------------------- attention itself

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        need_weights: bool,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``q`` (B, H, Tq, D), ``k``/``v`` (B, Hkv, Tk, D) -> (B, H, Tq, D) and the weights."""
        groups = self.n_heads // self.n_kv_heads
        p = self.dropout if self.training else 0.0
        if groups > 1 and self.fused and not need_weights and p == 0 and _native_gqa(q):
            # torch shares each key/value head with its query heads itself, without the copy
            # below; on the CPU the result is the same to the bit.
            return self._fused(q, k, v, mask, is_causal, p, enable_gqa=True), None
        k = repeat(k, "b g s d -> b (g r) s d", r=groups)  # (B, H, Tk, D)
        v = repeat(v, "b g s d -> b (g r) s d", r=groups)  # (B, H, Tk, D)
        if need_weights or not self.fused:
            weights = attention_weights(q, k, mask=mask, is_causal=is_causal)  # (B, H, Tq, Tk)
            dropped = F.dropout(weights, p=p, training=True) if p > 0 else weights
            return dropped @ v, weights
        return self._fused(q, k, v, mask, is_causal, p), None

    @staticmethod
    def _fused(
        q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, p: float,
        **gqa: bool,
    ) -> Tensor:
        """torch's fused attention, (B, H, Tq, D). ``gqa`` is ``enable_gqa=True`` or empty:
        torch < 2.5 has no such argument, not even ``enable_gqa=False``."""
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, dropout_p=p, **gqa)
        # Never hand torch a row with no allowed key: let such rows see everything, then
        # zero their output, which is what the reference returns for them.
        has_key = mask.any(dim=-1, keepdim=True)  # (B|1, H|1, Tq, 1)
        safe = mask | ~has_key
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, dropout_p=p, **gqa)
        return out.masked_fill(~has_key, 0.0)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        positions: Tensor | None = None,
        kv_cache: KVCacheLike | None = None,
    ) -> Tensor:
        """Attend from ``x`` to itself (self-attention) or to ``context`` (cross-attention).

        Args:
            x: ``(B, T, C)``, the tokens that ask (queries).
            context: ``(B, S, C)`` for cross-attention: keys and values come from it, with no
                causal mask and no RoPE (the encoder output in an encoder-decoder).
            attn_mask: either a key padding mask ``(B, Tk)`` (bool or int, 1 / ``True`` = real
                token), combined with the causal mask; or a full boolean mask ``(B, Tq, Tk)``
                or ``(B|1, H|1, Tq, Tk)`` (``True`` = may attend), also combined with it. A 2-D
                mask is always read as a padding mask. With a KV cache, ``Tk`` counts the
                cached positions too.
            positions: absolute positions for RoPE, ``(T,)`` or ``(B, T)``. Default
                ``offset + arange(T)``, ``offset`` being the cache length before this call.
            kv_cache: a per-layer cache (see ``KVCacheLike``). New keys and values (after RoPE)
                are appended and attention runs over all stored positions, with a causal mask
                aligned bottom-right. Self-attention only.

        Returns ``(B, T, C)``. :meth:`forward_with_weights` also returns the weights.
        """
        out, _ = self._forward(x, context, attn_mask, positions, kv_cache, need_weights=False)
        return out

    def forward_with_weights(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        positions: Tensor | None = None,
        kv_cache: KVCacheLike | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward`, plus the attention weights ``(B, H, Tq, Tk)`` (before dropout).

        Always takes the readable path (the weights are materialised), so it is slower
        and uses more memory than ``forward``. Calling it directly bypasses the module's
        forward hooks.
        """
        out, weights = self._forward(x, context, attn_mask, positions, kv_cache, need_weights=True)
        assert weights is not None
        return out, weights

    def _forward(
        self,
        x: Tensor,
        context: Tensor | None,
        attn_mask: Tensor | None,
        positions: Tensor | None,
        kv_cache: KVCacheLike | None,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Shared body of :meth:`forward` and :meth:`forward_with_weights` (checks included)."""
        check_tensor("x", x, ndim=3, floating=True, nonempty=True)
        b, t, c = x.shape
        if c != self.d_model:
            raise ValueError(
                f"x must have last dimension d_model={self.d_model}, got {tuple(x.shape)}"
            )
        weight = getattr(self.q_proj, "weight", None)  # absent when wrapped (LoRA, QLoRA)
        mixed = isinstance(weight, Tensor) and weight.is_floating_point() and x.dtype != weight.dtype
        if mixed and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"x has dtype {x.dtype} but the layer's weights are {weight.dtype}: convert one "
                "(e.g. layer.to(x.dtype)) or use torch.autocast"
            )
        cross = context is not None
        if cross:
            check_tensor("context", context, ndim=3, floating=True, nonempty=True)
            check_same_device(x=x, context=context)
            if context.shape[0] != b or context.shape[2] != c:
                raise ValueError(
                    f"context must be (B, S, C) = ({b}, S, {c}), got {tuple(context.shape)}"
                )
            if kv_cache is not None:
                raise ValueError("kv_cache is supported for self-attention only, not with context")
        source = context if cross else x

        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.n_heads)  # (B, H, T, D)
        kv_heads = "b s (g d) -> b g s d"
        k = rearrange(self.k_proj(source), kv_heads, g=self.n_kv_heads)  # (B, Hkv, S, D)
        v = rearrange(self.v_proj(source), kv_heads, g=self.n_kv_heads)  # (B, Hkv, S, D)

        past = _cache_length(kv_cache) if kv_cache is not None else 0
        if self.rope_theta is not None and not cross:
            # positional.apply_rope for q and k, with the angles computed once. The positions'
            # values are not inspected (that would stall a GPU in every layer): a model checks
            # them once at its entry, and a negative position simply rotates backwards.
            if positions is None:
                positions = torch.arange(past, past + t, device=x.device)  # (T,)
            aligned = _align_positions(_check_position_tensor(positions), q)  # (T,) or (B, 1, T)
            cos, sin = _rope_cos_sin(aligned.to(x.device), self.head_dim, self.rope_theta)  # (..., T, D/2)
            q = rotate_pairs(q, cos, sin, self.rope_interleaved)
            k = rotate_pairs(k, cos, sin, self.rope_interleaved)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, Hkv, past + T, D)

        t_k = k.shape[-2]
        causal = self.causal and not cross
        if causal and attn_mask is None and t == t_k and self.fused and not need_weights:
            # Plain causal self-attention: torch's causal kernel needs no mask tensor.
            out, weights = self._attend(q, k, v, None, need_weights, is_causal=True)
        else:
            mask = self._build_mask(attn_mask, b, t, t_k, causal, x.device)  # (B|1, H|1, T, Tk)
            out, weights = self._attend(q, k, v, mask, need_weights)  # (B, H, T, D)
        out = self.o_proj(rearrange(out, "b h t d -> b t (h d)"))  # (B, T, C)
        return out, weights
