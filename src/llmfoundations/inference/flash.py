"""Flash attention: exact attention computed tile by tile, without the T x T matrix.

Attention is ``softmax(q @ k^T * scale) @ v``. Computed the plain way, the
(Tq, Tk) score matrix is written to memory, read back for the softmax, written
again and read once more for the product with ``v``: for long sequences that
traffic, not the arithmetic, sets the speed, and the matrix itself sets the
memory. FlashAttention (Dao et al. 2022, https://arxiv.org/abs/2205.14135;
FlashAttention-2, https://arxiv.org/abs/2307.08691) never forms it: it walks
over tiles of keys with an *online softmax* (Milakov & Gimelshein 2018,
https://arxiv.org/abs/1805.02867), keeping a running maximum ``m``, a running
sum ``l`` and a rescaled output accumulator per query row. The result is the
same attention, up to floating-point rounding.

This module holds

- :func:`online_softmax`: the streaming softmax on its own, one block at a time;
- :func:`flash_forward_reference` / :func:`flash_backward_reference`: the
  FlashAttention-2 forward and backward in plain PyTorch, written to be read;
- :func:`flash_attention_reference`: the two joined as a ``torch.autograd.Function``
  that saves q, k, v, the output and the log-sum-exp (one number per query row),
  never a (Tq, Tk) tensor;
- :func:`flash_attention`: the same algorithm as Triton kernels (forward and
  backward; in :mod:`llmfoundations.inference.flash_triton`), for CUDA tensors or, slowly,
  CPU tensors under ``TRITON_INTERPRET=1``;
- :func:`attention_traffic`: bytes moved and FLOPs of naive vs tiled attention.

Causal masking follows ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``:
the mask is aligned top-left, query ``i`` sees keys ``j <= i`` whatever Tq and Tk are.
Every query therefore sees key 0, so no row is ever fully masked; the code still
guards that case and would return zeros (log-sum-exp ``-inf``) rather than NaN.
Beware that decoding with a KV cache wants the *bottom-right* alignment (the last
query sees every key), which this module does not offer.

Left out: dropout, arbitrary attention masks and biases (ALiBi, padding masks,
sliding windows), bottom-right causal alignment, packed variable-length batches,
the split-K "flash-decoding" schedule for one query against a long cache, fp8,
and the Hopper-specific machinery of FlashAttention-3 (asynchronous tensor-core
instructions, the tensor memory accelerator, warp specialisation).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from llmfoundations._validate import check_bool, check_positive, check_qkv, check_tensor

__all__ = [
    "online_softmax",
    "flash_forward_reference",
    "flash_backward_reference",
    "flash_attention_reference",
    "flash_attention",
    "AttentionTraffic",
    "attention_traffic",
]

# dtypes the Triton kernels accept; the reference takes any floating dtype.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128


# ------------------------------ argument checks shared by the reference and the kernels
def _check_block(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    check_positive(name, value)


def _resolve_scale(scale: float | None, head_dim: int) -> float:
    """The softmax scale: ``1 / sqrt(D)`` unless given (then a finite number > 0)."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    check_positive("scale", scale)
    if math.isinf(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def _check_flash_qkv(q: object, k: object, v: object, *, grouped: bool) -> None:
    """``_validate.check_qkv``, and k, v agree on every dimension but the last.

    With ``grouped`` the tensors are (B, H, T, D) and k, v may have fewer heads
    (Hkv dividing H: grouped-query attention).
    """
    check_qkv(q, k, v)  # the rules of every attention; then the tiled kernels' own
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"k and v must agree on every dimension but the last, got k {tuple(k.shape)} "
            f"and v {tuple(v.shape)}"
        )
    if not grouped:
        if k.ndim != q.ndim or k.shape[:-2] != q.shape[:-2]:
            raise ValueError(
                f"q and k must have the same leading dimensions, got q {tuple(q.shape)} "
                f"and k {tuple(k.shape)}"
            )
        return
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(
            f"q, k and v must be (B, H, T, D), got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if v.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"v must have the head dimension of q, got v {tuple(v.shape)} and q {tuple(q.shape)}"
        )
    if k.shape[0] != q.shape[0]:
        raise ValueError(
            f"q and k must have the same batch size B, got q {tuple(q.shape)} "
            f"and k {tuple(k.shape)}"
        )
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads % kv_heads != 0:
        raise ValueError(
            f"the heads of k and v (Hkv = {kv_heads}) must divide the heads of q "
            f"(H = {heads}), got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )


# ------------------------------------------------------------ online softmax on its own
def online_softmax(x: Tensor, block_size: int) -> Tensor:
    """Softmax over the last dimension, reading ``x`` one block of columns at a time.

    One pass keeps, per row, the largest value seen so far ``m`` and the sum
    ``l`` of ``exp(x - m)`` over the columns seen so far; when a new block raises
    the maximum, the old sum is rescaled by ``exp(m_old - m_new)``. A second pass
    writes ``exp(x - m) / l``. Flash attention fuses that second pass into the
    product with ``v``, so it never needs it.

    >>> x = torch.tensor([[1.0, 3.0, 2.0, 5.0]])
    >>> torch.allclose(online_softmax(x, block_size=2), torch.softmax(x, -1))
    True
    """
    check_tensor("x", x, min_ndim=1, floating=True, nonempty=True)
    _check_block("block_size", block_size)
    m = torch.full(x.shape[:-1], -math.inf, dtype=x.dtype, device=x.device)  # (...,)
    l = torch.zeros_like(m)  # (...,)
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start : start + block_size]  # (..., block)
        m_new = torch.maximum(m, block.amax(dim=-1))
        # While a row has seen only -inf, m_new is -inf too: shift by 0 so exp gives 0, not NaN.
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        l = l * torch.exp(m - m_safe) + torch.exp(block - m_safe[..., None]).sum(dim=-1)
        m = m_new
    return torch.exp(x - m[..., None]) / l[..., None]


# ------------------------------------- the reference: FlashAttention-2 in plain PyTorch
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Tiles are computed in float32 (float64 stays float64), like the kernels' accumulators."""
    return torch.promote_types(dtype, torch.float32)


def _causal_tile_mask(
    q_start: int, q_end: int, k_start: int, k_end: int, device: torch.device
) -> Tensor:
    """(bq, bk) boolean tile, True where query i must NOT see key j (j > i, top-left)."""
    rows = torch.arange(q_start, q_end, device=device)  # (bq,)
    cols = torch.arange(k_start, k_end, device=device)  # (bk,)
    return cols[None, :] > rows[:, None]


def flash_forward_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[Tensor, Tensor]:
    """FlashAttention-2 forward, tile by tile; returns ``(out, lse)``.

    q: (..., Tq, D), k: (..., Tk, D), v: (..., Tk, Dv) with the same leading
    dimensions. ``out`` is (..., Tq, Dv) in q's dtype; ``lse`` is (..., Tq), the
    natural log-sum-exp of each query's scaled scores, in float32 (float64 for
    float64 inputs). Only (block_q, block_k) tiles of scores exist at any time.

    >>> q, k, v = torch.randn(3, 2, 5, 8).unbind(0)
    >>> out, lse = flash_forward_reference(q, k, v, block_q=2, block_k=3)
    >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    >>> torch.allclose(out, ref, atol=1e-6), tuple(lse.shape)
    (True, (2, 5))
    """
    _check_flash_qkv(q, k, v, grouped=False)
    check_bool("is_causal", is_causal)
    _check_block("block_q", block_q)
    _check_block("block_k", block_k)
    scale = _resolve_scale(scale, q.shape[-1])
    return _reference_forward(q, k, v, is_causal, scale, block_q, block_k)


def _reference_forward(q, k, v, is_causal, scale, block_q, block_k):
    tq, tk = q.shape[-2], k.shape[-2]
    cdt = _compute_dtype(q.dtype)
    out = torch.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype, device=q.device)  # (..., Tq, Dv)
    lse = torch.empty(q.shape[:-1], dtype=cdt, device=q.device)  # (..., Tq)

    for q0 in range(0, tq, block_q):  # outer loop: one tile of queries
        q1 = min(q0 + block_q, tq)
        q_tile = q[..., q0:q1, :].to(cdt)  # (..., bq, D)
        m = torch.full(q_tile.shape[:-1], -math.inf, dtype=cdt, device=q.device)  # (..., bq)
        l = torch.zeros_like(m)  # (..., bq)   sum of exp(score - m) so far
        acc = torch.zeros(q_tile.shape[:-1] + v.shape[-1:], dtype=cdt, device=q.device)
        # acc: (..., bq, Dv)   sum of exp(score - m) * v so far (not yet divided by l)

        # Causal: the tile's last query is q1 - 1, so keys from q1 on are never seen.
        k_stop = min(tk, q1) if is_causal else tk
        for k0 in range(0, k_stop, block_k):  # inner loop: one tile of keys
            k1 = min(k0 + block_k, k_stop)
            k_tile = k[..., k0:k1, :].to(cdt)  # (..., bk, D)
            v_tile = v[..., k0:k1, :].to(cdt)  # (..., bk, Dv)

            s = q_tile @ k_tile.transpose(-1, -2) * scale  # (..., bq, bk)
            if is_causal and k1 - 1 > q0:  # the tile reaches above the diagonal
                s = s.masked_fill(_causal_tile_mask(q0, q1, k0, k1, q.device), -math.inf)

            m_new = torch.maximum(m, s.amax(dim=-1))  # (..., bq)
            # A row with every score so far masked keeps m = -inf; subtract 0 instead
            # so that exp(-inf - 0) = 0 rather than exp(-inf + inf) = NaN.
            m_safe = m_new.masked_fill(m_new == -math.inf, 0.0)
            p = torch.exp(s - m_safe[..., None])  # (..., bq, bk) unnormalised probabilities
            alpha = torch.exp(m - m_safe)  # (..., bq) rescales what was summed under the old max
            l = alpha * l + p.sum(dim=-1)
            acc = alpha[..., None] * acc + p @ v_tile  # (..., bq, Dv)
            m = m_new

        l_safe = l.masked_fill(l == 0, 1.0)  # fully masked rows: acc is 0, so out is 0
        out[..., q0:q1, :] = (acc / l_safe[..., None]).to(q.dtype)
        lse[..., q0:q1] = m + torch.log(l)  # log sum_j exp(s_j) = m + log l
    return out, lse


def flash_backward_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    grad_out: Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[Tensor, Tensor, Tensor]:
    """FlashAttention-2 backward: gradients ``(dq, dk, dv)`` from the saved log-sum-exp.

    The probabilities are recomputed tile by tile, exactly: ``p = exp(s - lse)``
    needs no running maximum because ``lse`` already holds each row's final
    normaliser. With ``delta_i = sum_d dO[i, d] * O[i, d]`` (FlashAttention-2's
    ``D_i``, equal to ``sum_j P[i, j] * dP[i, j]``) the softmax backward is
    ``dS = P * (dP - delta)``. The outer loop runs over key tiles, accumulating
    their dK and dV; dQ is accumulated across that loop.

    Shapes as in :func:`flash_forward_reference`; ``grad_out`` is out's shape.
    """
    _check_flash_qkv(q, k, v, grouped=False)
    check_tensor("out", out, floating=True)
    check_tensor("grad_out", grad_out, floating=True)
    check_tensor("lse", lse, floating=True)
    want_out = q.shape[:-1] + v.shape[-1:]
    if out.shape != want_out or grad_out.shape != want_out:
        raise ValueError(
            f"out and grad_out must have shape {tuple(want_out)}, got out {tuple(out.shape)} "
            f"and grad_out {tuple(grad_out.shape)}"
        )
    if lse.shape != q.shape[:-1]:
        raise ValueError(f"lse must have shape {tuple(q.shape[:-1])}, got {tuple(lse.shape)}")
    check_bool("is_causal", is_causal)
    _check_block("block_q", block_q)
    _check_block("block_k", block_k)
    scale = _resolve_scale(scale, q.shape[-1])
    return _reference_backward(q, k, v, out, lse, grad_out, is_causal, scale, block_q, block_k)


def _reference_backward(q, k, v, out, lse, grad_out, is_causal, scale, block_q, block_k):
    tq, tk = q.shape[-2], k.shape[-2]
    cdt = _compute_dtype(q.dtype)
    lse = lse.to(cdt)
    delta = (grad_out.to(cdt) * out.to(cdt)).sum(dim=-1)  # (..., Tq)
    dq = torch.zeros(q.shape, dtype=cdt, device=q.device)  # (..., Tq, D)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)  # (..., Tk, D)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)  # (..., Tk, Dv)

    for k0 in range(0, tk, block_k):  # outer loop: one tile of keys
        k1 = min(k0 + block_k, tk)
        k_tile = k[..., k0:k1, :].to(cdt)  # (..., bk, D)
        v_tile = v[..., k0:k1, :].to(cdt)  # (..., bk, Dv)
        dk_tile = torch.zeros_like(k_tile)  # (..., bk, D)
        dv_tile = torch.zeros_like(v_tile)  # (..., bk, Dv)

        # Causal: queries before k0 never see these keys; start at the tile holding k0.
        q_start = (k0 // block_q) * block_q if is_causal else 0
        for q0 in range(q_start, tq, block_q):  # inner loop: one tile of queries
            q1 = min(q0 + block_q, tq)
            q_tile = q[..., q0:q1, :].to(cdt)  # (..., bq, D)
            do_tile = grad_out[..., q0:q1, :].to(cdt)  # (..., bq, Dv)

            s = q_tile @ k_tile.transpose(-1, -2) * scale  # (..., bq, bk)
            if is_causal and k1 - 1 > q0:
                s = s.masked_fill(_causal_tile_mask(q0, q1, k0, k1, q.device), -math.inf)
            p = torch.exp(s - lse[..., q0:q1, None])  # (..., bq, bk) the exact probabilities

            dv_tile += p.transpose(-1, -2) @ do_tile  # dV = P^T dO
            dp = do_tile @ v_tile.transpose(-1, -2)  # (..., bq, bk)  dP = dO V^T
            ds = p * (dp - delta[..., q0:q1, None])  # (..., bq, bk)  softmax backward
            dq[..., q0:q1, :] += (ds @ k_tile) * scale  # dQ = dS K * scale
            dk_tile += (ds.transpose(-1, -2) @ q_tile) * scale  # dK = dS^T Q * scale

        dk[..., k0:k1, :] = dk_tile.to(k.dtype)
        dv[..., k0:k1, :] = dv_tile.to(v.dtype)
    return dq.to(q.dtype), dk, dv


class _FlashAttentionReference(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, out and lse (..., Tq); nothing of size Tq x Tk."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, block_q, block_k):
        out, lse = _reference_forward(q, k, v, is_causal, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.config = (is_causal, scale, block_q, block_k)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _reference_backward(q, k, v, out, lse, grad_out, *ctx.config)
        return dq, dk, dv, None, None, None, None


def flash_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> Tensor:
    """Exact attention by FlashAttention-2's tiled algorithm, in plain PyTorch, differentiable.

    The drop-in equivalent of ``F.scaled_dot_product_attention(q, k, v,
    is_causal=is_causal, scale=scale)`` for (..., T, D) tensors of any leading
    dimensions (Tq may differ from Tk; causal is aligned top-left as in torch).
    Forward and backward never hold more than a (block_q, block_k) tile of scores;
    the backward recomputes them from the saved log-sum-exp. Any floating dtype:
    half-precision tiles are computed in float32. Python loops over tiles make
    it slow; it is here to be read and checked against.

    >>> q, k, v = torch.randn(3, 1, 2, 7, 4, requires_grad=True).unbind(0)
    >>> out = flash_attention_reference(q, k, v, is_causal=True, block_q=4, block_k=2)
    >>> out.shape, out.grad_fn.saved_tensors[-1].shape   # the log-sum-exp: (B, H, Tq)
    (torch.Size([1, 2, 7, 4]), torch.Size([1, 2, 7]))
    """
    _check_flash_qkv(q, k, v, grouped=False)
    check_bool("is_causal", is_causal)
    _check_block("block_q", block_q)
    _check_block("block_k", block_k)
    scale = _resolve_scale(scale, q.shape[-1])
    return _FlashAttentionReference.apply(q, k, v, is_causal, scale, block_q, block_k)


# ---- the Triton kernels (llmfoundations.inference.flash_triton), behind the same checks
def _interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter.

    Triton decides at the moment the kernels are defined (when
    ``llmfoundations.inference.flash_triton`` is imported), so once imported, its flag wins
    over the environment variable.
    """
    module = sys.modules.get("llmfoundations.inference.flash_triton")
    if module is not None:
        return bool(module.INTERPRET)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _check_kernel_inputs(q, k, v, is_causal, scale) -> float:
    """Check what the kernels accept (device last); return the resolved scale."""
    _check_flash_qkv(q, k, v, grouped=True)
    check_bool("is_causal", is_causal)
    scale = _resolve_scale(scale, q.shape[-1])
    if q.dtype not in KERNEL_DTYPES:
        want = ", ".join(str(d).replace("torch.", "") for d in KERNEL_DTYPES)
        raise TypeError(
            f"q, k and v must have dtype {want} for the Triton kernels, got "
            f"{str(q.dtype).replace('torch.', '')} (flash_attention_reference takes any float)"
        )
    head_dim = q.shape[-1]
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"q's head dimension D must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}] for the Triton "
            f"kernels, got D = {head_dim} (shape {tuple(q.shape)})"
        )
    device = q.device
    if device.type == "cpu":
        if not _interpreting():
            raise ValueError(
                "q is on the CPU, where the Triton kernels only run in Triton's interpreter: "
                "set TRITON_INTERPRET=1 before importing llmfoundations.inference.flash_triton, or use "
                "flash_attention_reference"
            )
    elif device.type != "cuda":
        raise ValueError(
            f"q must be a CUDA tensor (or a CPU tensor under TRITON_INTERPRET=1), got device "
            f"{device}; flash_attention_reference runs anywhere"
        )
    elif q.dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
        raise TypeError(
            "q has dtype bfloat16, which needs a GPU of compute capability 8.0 or newer "
            f"(got {torch.cuda.get_device_name(device)}); use float16"
        )
    return scale


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Flash attention with Triton kernels, forward and backward; SDPA's calling convention.

    q: (B, H, Tq, D), k and v: (B, Hkv, Tk, D) -> (B, H, Tq, D). Grouped-query
    attention when Hkv < H (Hkv must divide H; query head h reads key/value head
    ``h // (H // Hkv)``, as ``scaled_dot_product_attention(..., enable_gqa=True)``),
    without copying k and v. Any Tq and Tk (causal aligned top-left, as torch),
    head dimensions 16 to 128 (others than powers of two are padded inside the
    kernel), float16, bfloat16 (compute capability >= 8.0) and float32. Tensors
    may be strided views as long as the last dimension is contiguous (otherwise
    they are copied). Needs Triton and a CUDA tensor, or a CPU tensor with
    ``TRITON_INTERPRET=1`` set before the kernels are imported (slow; for tests).
    Saves q, k, v, the output and the log-sum-exp (B, H, Tq) for the backward.
    """
    scale = _check_kernel_inputs(q, k, v, is_causal, scale)
    try:
        from llmfoundations.inference import flash_triton
    except ImportError as error:  # Triton is an optional dependency (extra "gpu")
        raise ImportError(
            "flash_attention needs Triton (pip install triton); "
            "flash_attention_reference needs only PyTorch"
        ) from error
    if q.device.type == "cpu" and not flash_triton.INTERPRET:
        raise ValueError(
            "q is on the CPU but llmfoundations.inference.flash_triton was imported without "
            "TRITON_INTERPRET=1; use flash_attention_reference, or set the variable before "
            "the import"
        )
    return flash_triton.FlashAttentionTriton.apply(q, k, v, is_causal, scale)


# ---------------------------------------------------------- bytes moved: naive vs tiled
@dataclass(frozen=True)
class AttentionTraffic:
    """Memory traffic (bytes between HBM and the chip) and FLOPs of one attention forward.

    ``compulsory_bytes``: read q, k, v once and write the output, the floor for any
    method. ``naive_bytes``: that plus writing the (Tq, Tk) scores, reading them
    for the softmax, writing the probabilities and reading them for ``P @ V``.
    ``flash_bytes``: q read and output written once, k and v read once per query
    tile (the worst case, when no re-read is served by the L2 cache), plus the
    float32 log-sum-exp. ``score_matrix_bytes``: memory one (Tq, Tk) matrix needs
    per batch and head; naive attention holds at least one, flash attention none.
    ``flops`` follows the usual convention: 4 * Tq * Tk * D, halved when causal.
    """

    flops: float
    compulsory_bytes: int
    naive_bytes: int
    flash_bytes: int
    score_matrix_bytes: int

    @property
    def naive_intensity(self) -> float:
        """FLOPs per byte moved by naive attention."""
        return self.flops / self.naive_bytes

    @property
    def flash_intensity(self) -> float:
        """FLOPs per byte moved by flash attention (no L2 reuse assumed)."""
        return self.flops / self.flash_bytes


def attention_traffic(
    seq_len: int,
    head_dim: int,
    *,
    kv_len: int | None = None,
    batch_heads: int = 1,
    bytes_per_element: int = 2,
    block_q: int = 128,
    is_causal: bool = False,
) -> AttentionTraffic:
    """Count bytes moved and FLOPs of naive and tiled attention (see :class:`AttentionTraffic`).

    ``seq_len`` is Tq, ``kv_len`` is Tk (defaults to Tq), ``batch_heads`` is B * H.

    >>> t = attention_traffic(4096, 128)
    >>> [round(n / 2**20) for n in (t.naive_bytes, t.flash_bytes, t.compulsory_bytes)]  # MiB
    [132, 66, 4]
    """
    for name, value in (("seq_len", seq_len), ("head_dim", head_dim), ("batch_heads", batch_heads),
                        ("bytes_per_element", bytes_per_element), ("block_q", block_q)):
        _check_block(name, value)
    tk = seq_len if kv_len is None else kv_len
    _check_block("kv_len", tk)
    check_bool("is_causal", is_causal)
    tq, d, e = seq_len, head_dim, bytes_per_element

    compulsory = (2 * tq * d + 2 * tk * d) * e  # read q, k, v; write out
    naive = compulsory + 4 * tq * tk * e  # S written + read, P written + read
    kv_rows = 0  # rows of k (and of v) read, summed over the query tiles
    for q0 in range(0, tq, block_q):
        kv_rows += min(tk, q0 + block_q) if is_causal else tk
    flash = (2 * tq * d + 2 * kv_rows * d) * e + 4 * tq  # + float32 log-sum-exp
    flops = 4.0 * tq * tk * d * (0.5 if is_causal else 1.0)
    return AttentionTraffic(
        flops=flops * batch_heads,
        compulsory_bytes=compulsory * batch_heads,
        naive_bytes=naive * batch_heads,
        flash_bytes=flash * batch_heads,
        score_matrix_bytes=tq * tk * e * batch_heads,
    )
