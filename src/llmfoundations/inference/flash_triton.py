"""Flash attention as Triton kernels: the GPU version of :mod:`llmfoundations.inference.flash`.

The same FlashAttention-2 algorithm (https://arxiv.org/abs/2307.08691) as the
PyTorch reference ``flash_attention_reference``, with one Triton *program* per
tile where the reference has one loop iteration:

- forward: one program per (query tile, batch, head) walks over the key tiles
  with the online softmax and writes the output tile and its log-sum-exp;
- backward, in three kernels and without atomics: a preprocessing pass computes
  ``delta = rowsum(dO * O)``; one kernel per key tile accumulates its dK and dV
  over all query tiles (and, with grouped-query attention, over all query heads
  that share the key/value head); one kernel per query tile accumulates its dQ
  over all key tiles.

Each loop over tiles is split into tiles that need no mask (fully inside the
sequence and, when causal, fully below the diagonal) and the few that do (the
diagonal and the ragged end), so the masking arithmetic runs only where needed.
Causal tiles above the diagonal are never visited.

Head dimensions that are not a power of two are padded to one inside the kernel
by masked loads. On the GPU the tile sizes, warps and pipeline stages are
autotuned per head dimension, dtype, causal flag and length (rounded up to a
power of two so varying lengths do not retune every call).

Triton decides when this module is imported whether the kernels are compiled
for the GPU or run in its CPU interpreter (``TRITON_INTERPRET=1``, slow, for
tests). The interpreter's ``tl.dot`` is wrong on bfloat16, so when interpreting,
bfloat16 tiles are upcast to float32 before every dot product; its float32 to
bfloat16 conversion also truncates rather than rounds, so interpreted bfloat16
outputs may be one unit in the last place off (the GPU rounds to nearest).

Left out, beside what :mod:`llmfoundations.inference.flash` leaves out: Hopper's
asynchronous warpgroup MMA and tensor-memory-accelerator loads (FlashAttention-3),
fp8, and persistent kernels. The dK/dV kernel runs one program per key tile of
each *key/value* head, so with multi-query attention, a small batch and a short
sequence it has few programs to spread over the GPU (the alternative, per-query-
head partial sums added afterwards, costs H / Hkv times the memory of dK and dV).
float32 inputs are accepted and exact (no tf32) but not fast.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "INTERPRET",
    "INTERPRET_BLOCKS",
    "AUTOTUNE_SHAPES",
    "kept_shapes",
    "interpreter_problem",
    "FlashAttentionTriton",
    "triton_forward",
    "triton_backward",
]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def interpreter_problem(triton_version: str | None = None, numpy_version: str | None = None) -> str | None:
    """Why Triton's CPU interpreter cannot run these kernels here, or ``None`` if it can.

    Triton 3.6 and older hand the interpreter's scalars (kernel arguments, loop bounds) to
    ``int()`` as one-element NumPy arrays, which NumPy 2.4 turned from a deprecation warning
    into an error ("only 0-dimensional arrays can be converted to Python scalars"). Seen with
    torch 2.11's Triton 3.6; Triton 3.7 and NumPy 2.3 each work. Compiled kernels on a GPU
    are not affected.
    """
    import numpy

    tv, nv = triton_version or triton.__version__, numpy_version or numpy.__version__
    if _major_minor(tv) <= (3, 6) and _major_minor(nv) >= (2, 4):
        return (f"Triton {tv}'s CPU interpreter cannot run with NumPy {nv}: use Triton >= 3.7 "
                f"or NumPy < 2.4 (pip install 'numpy<2.4') to run the kernels on the CPU")
    return None


# Tile sizes used in the interpreter, where autotuning would be pointless. Tests
# may change them to put several tiles into a short sequence.
INTERPRET_BLOCKS = {"fwd": (32, 32), "bwd_dkdv": (32, 32), "bwd_dq": (32, 32)}

# exp(x) = exp2(x * LOG2E): exp2 is the hardware instruction. Globals that kernels
# read must be tl.constexpr.
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


# ------------------------------------------------------------------------------ forward
@triton.jit
def _fwd_key_loop(
    acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt,
    offs_m, offs_d, lo, hi, Tk, qk_scale,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Online softmax over key tiles [lo, hi) for one query tile; scores in log2 units."""
    d_ok = offs_d[None, :] < HEAD_DIM  # (1, BLOCK_D) padding of the head dimension
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        if MASKED:
            kv_mask = (offs_n[:, None] < Tk) & d_ok
        else:
            kv_mask = d_ok
        k = tl.load(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASKED:
            keep = offs_n[None, :] < Tk
            if IS_CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(keep, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))  # (BLOCK_M,)
        # Never -inf with top-left causal masking (every row sees key 0 in its
        # first tile); kept so that a fully masked row would give 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)  # (BLOCK_M,) rescales the old sum and accumulator
        p = tl.exp2(s - m_safe[:, None])  # (BLOCK_M, BLOCK_N)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _flash_fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    H, GROUP, Tq, Tk, qk_scale, LEN_BUCKET,
    IS_CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # LEN_BUCKET (max(Tq, Tk) rounded up to a power of two) is unused here: it
    # only keys the autotuner. A 1-D grid: query tiles of one (batch, head) are
    # neighbours, so their re-reads of the same K and V tiles tend to hit in L2.
    num_m = tl.cdiv(Tq, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % num_m
    if IS_CAUSAL:  # heaviest tiles (last queries see most keys) first: a shorter tail
        pid_m = num_m - 1 - pid_m
    pid_bh = pid // num_m
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    h_kv = h // GROUP  # grouped-query attention: a head index map, no copy of K and V

    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    o_base = O + b * stride_ob + h * stride_oh

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    q_mask = (offs_m[:, None] < Tq) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(s - m)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # running sum of exp2(s - m) * v

    # Key tiles [0, n_full) need no mask; [n_full, hi) hold the causal diagonal
    # and the ragged end of the keys. Causal: keys past the tile's last query
    # (start_m + BLOCK_M - 1) are never visited.
    if IS_CAUSAL:
        hi = tl.minimum(Tk, start_m + BLOCK_M)
        n_full = tl.minimum((start_m + 1) // BLOCK_N * BLOCK_N, Tk // BLOCK_N * BLOCK_N)
    else:
        hi = Tk
        n_full = Tk // BLOCK_N * BLOCK_N
    acc, m_i, l_i = _fwd_key_loop(
        acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, 0, n_full, Tk,
        qk_scale, False, IS_CAUSAL, BLOCK_N, HEAD_DIM, UPCAST, DOT_PRECISION,
    )
    acc, m_i, l_i = _fwd_key_loop(
        acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, n_full, hi, Tk,
        qk_scale, True, IS_CAUSAL, BLOCK_N, HEAD_DIM, UPCAST, DOT_PRECISION,
    )

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(o_base + offs_m[:, None] * stride_ot + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=q_mask)
    lse = (m_i + tl.log2(l_i)) * LN2  # natural log-sum-exp, (BLOCK_M,)
    tl.store(LSE + pid_bh * Tq + offs_m, lse, mask=offs_m < Tq)


# ----------------------------------------------------------------------------- backward
@triton.jit
def _bwd_preprocess_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_ot,
    stride_db, stride_dh, stride_dt,
    H, Tq,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta = rowsum(dO * O), (B, H, Tq) in float32: FlashAttention-2's D_i."""
    num_m = tl.cdiv(Tq, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % num_m
    pid_bh = pid // num_m
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < Tq) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
                mask=mask, other=0.0)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dt + offs_d[None, :],
                 mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh * Tq + offs_m, delta, mask=offs_m < Tq)


@triton.jit
def _bwd_dkdv_query_loop(
    dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
    offs_n, offs_d, lo, hi, Tq, Tk, qk_scale,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Add the query tiles [lo, hi) to one key tile's dK and dV, in transposed form.

    Working with (BLOCK_N, BLOCK_M) tiles (keys down, queries across) makes
    dV = P^T dO and dK = dS^T Q plain products, with no transposes of P.
    Keys past Tk need no mask: they are zero, and their rows of dK and dV are
    never stored.
    """
    d_ok = offs_d[None, :] < HEAD_DIM
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        if MASKED:
            row_ok = offs_m < Tq
            qo_mask = row_ok[:, None] & d_ok
        else:
            qo_mask = d_ok
        q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=qo_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dot + offs_d[None, :], mask=qo_mask,
                     other=0.0)
        if MASKED:
            lse = tl.load(lse_base + offs_m, mask=row_ok, other=0.0) * LOG2E
            delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        else:
            lse = tl.load(lse_base + offs_m) * LOG2E
            delta = tl.load(delta_base + offs_m)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)

        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(s_t - lse[None, :])  # exact probabilities, transposed
        if MASKED:
            keep = (offs_m[None, :] < Tq) & (offs_n[:, None] < Tk)
            if IS_CAUSAL:
                keep = keep & (offs_n[:, None] <= offs_m[None, :])
            p_t = tl.where(keep, p_t, 0.0)

        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # dV += P^T dO
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (dO V^T)^T
        ds_t = p_t * (dp_t - delta[None, :])  # softmax backward
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)  # dK += dS^T Q
    return dk, dv


@triton.jit
def _flash_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt,
    stride_dvb, stride_dvh, stride_dvt,
    H, H_KV, GROUP, Tq, Tk, qk_scale, sm_scale, LEN_BUCKET,
    IS_CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    num_n = tl.cdiv(Tk, BLOCK_N)
    pid = tl.program_id(0)
    pid_n = pid % num_n
    pid_bh = pid // num_n  # over B * Hkv: one program owns a key/value head's tile
    b = (pid_bh // H_KV).to(tl.int64)
    h_kv = pid_bh % H_KV

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < Tk) & (offs_d[None, :] < HEAD_DIM)
    k_ptrs = K + b * stride_kb + h_kv * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = V + b * stride_vb + h_kv * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :]
    k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
    v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    # Query tiles: [lo, diag_end) cross the causal diagonal (masked), [diag_end, tail)
    # are full and below it (no mask), [tail, Tq) is the ragged end (masked).
    # Causal: queries before start_n never see this tile, so start at its tile.
    q_tiles_end = tl.cdiv(Tq, BLOCK_M) * BLOCK_M
    if IS_CAUSAL:
        lo = start_n // BLOCK_M * BLOCK_M
        diag_end = tl.cdiv(start_n + BLOCK_N - 1, BLOCK_M) * BLOCK_M
        diag_end = tl.maximum(lo, tl.minimum(diag_end, q_tiles_end))
    else:
        lo = 0
        diag_end = 0
    tail = tl.maximum(diag_end, Tq // BLOCK_M * BLOCK_M)

    # Grouped-query attention: every query head of the group adds to the same dK, dV.
    for g in range(0, GROUP):
        h = h_kv * GROUP + g
        bh = b * H + h
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        lse_base = LSE + bh * Tq
        delta_base = DELTA + bh * Tq
        dk, dv = _bwd_dkdv_query_loop(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
            offs_n, offs_d, lo, diag_end, Tq, Tk, qk_scale,
            True, IS_CAUSAL, BLOCK_M, HEAD_DIM, UPCAST, DOT_PRECISION,
        )
        dk, dv = _bwd_dkdv_query_loop(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
            offs_n, offs_d, diag_end, tail, Tq, Tk, qk_scale,
            False, IS_CAUSAL, BLOCK_M, HEAD_DIM, UPCAST, DOT_PRECISION,
        )
        dk, dv = _bwd_dkdv_query_loop(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
            offs_n, offs_d, tail, Tq, Tq, Tk, qk_scale,
            True, IS_CAUSAL, BLOCK_M, HEAD_DIM, UPCAST, DOT_PRECISION,
        )

    dk = dk * sm_scale  # s = scale * q.k, so dK = scale * dS^T Q
    tl.store(DK + b * stride_dkb + h_kv * stride_dkh + offs_n[:, None] * stride_dkt
             + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b * stride_dvb + h_kv * stride_dvh + offs_n[:, None] * stride_dvt
             + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq_key_loop(
    dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt,
    offs_m, offs_d, lo, hi, Tk,
    qk_scale,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Add the key tiles [lo, hi) to one query tile's dQ."""
    d_ok = offs_d[None, :] < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASKED:
            kv_mask = (offs_n[:, None] < Tk) & d_ok
        else:
            kv_mask = d_ok
        k = tl.load(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.exp2(s - lse[:, None])
        if MASKED:
            keep = offs_n[None, :] < Tk
            if IS_CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)  # dQ += dS K
    return dq


@triton.jit
def _flash_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt,
    H, GROUP, Tq, Tk, qk_scale, sm_scale, LEN_BUCKET,
    IS_CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    num_m = tl.cdiv(Tq, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % num_m
    if IS_CAUSAL:
        pid_m = num_m - 1 - pid_m
    pid_bh = pid // num_m
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    h_kv = h // GROUP

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Tq
    mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                mask=mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot
                 + offs_d[None, :], mask=mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + pid_bh * Tq + offs_m, mask=row_ok, other=0.0) * LOG2E
    delta = tl.load(DELTA + pid_bh * Tq + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    if IS_CAUSAL:  # the same split as the forward
        hi = tl.minimum(Tk, start_m + BLOCK_M)
        n_full = tl.minimum((start_m + 1) // BLOCK_N * BLOCK_N, Tk // BLOCK_N * BLOCK_N)
    else:
        hi = Tk
        n_full = Tk // BLOCK_N * BLOCK_N
    dq = _bwd_dq_key_loop(
        dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, 0, n_full,
        Tk, qk_scale, False, IS_CAUSAL, BLOCK_N, HEAD_DIM, UPCAST, DOT_PRECISION,
    )
    dq = _bwd_dq_key_loop(
        dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, n_full, hi,
        Tk, qk_scale, True, IS_CAUSAL, BLOCK_N, HEAD_DIM, UPCAST, DOT_PRECISION,
    )
    dq = dq * sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- autotuning (GPU only)
#: Autotuning choices per kernel: (first tile, second tile, num_warps, num_stages), where the
#: first tile is the one a program owns (queries for fwd and dQ, keys for dK/dV).
AUTOTUNE_SHAPES = {
    "fwd": [(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (64, 32, 4, 2),
            (32, 32, 4, 2)],
    "bwd_dkdv": [(128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2),
                 (32, 16, 4, 2)],
    "bwd_dq": [(128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2),
               (32, 16, 4, 2)],
}


def kept_shapes(name: str, block_d: int, capability: tuple[int, int], element_size: int) -> list[tuple]:
    """The autotuning choices of kernel ``name`` worth trying on a GPU of this compute capability.

    Two 128-wide tiles with a 128-wide head dimension need more registers than a
    block has. A T4 (sm_75) has 64 KB of shared memory per block and, since
    Triton 3.3, no tensor-core path for ``tl.dot`` (its products run on plain
    FMA units, in registers), so only small tiles fit there; 32 x 32 tiles are
    kept for it alone (and 32 x 16 for float32 with D = 128, whose backward
    tiles need more than 64 KB otherwise). On Ampere and Hopper the product of the
    two tiles, the head dimension and the element size is capped (float32 tiles take
    twice the bytes), and float32 configs with three pipeline stages are capped again
    on sm_8x, whose 163 KB of shared memory per block they overflow (the H100's 227 KB
    holds them). Triton's autotuner also skips any config that fails for lack of
    resources; pruning saves that compile time. ``.ci/compile_kernels.py`` compiles
    every kept choice for sm_75, sm_80 and sm_90 without a GPU and fails if one does
    not compile or needs more shared memory than the architecture gives a block
    (its table, every config included: ``benchmarks/results/triton_compile.md``).
    """
    before_ampere = tuple(capability) < (8, 0)
    kept = []
    for shape in AUTOTUNE_SHAPES[name]:
        first, second, _, stages = shape
        tile_bytes = first * second * block_d * element_size
        if before_ampere:
            fits = max(first, second) <= 64 and (first + second) * block_d * element_size <= 64 * 128 * 2
        else:
            fits = min(first, second) >= 32 and max(first, second) >= 64
            fits = fits and tile_bytes <= 128 * 64 * 128 * 2
            if element_size == 4 and stages >= 3 and tuple(capability) < (9, 0):
                fits = fits and tile_bytes <= 64 * 64 * 64 * 4
        if fits:
            kept.append(shape)
    return kept or AUTOTUNE_SHAPES[name][-1:]


def _pruner(name: str):
    """Triton's ``early_config_prune`` hook for kernel ``name``: keep what :func:`kept_shapes` keeps."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        shapes = kept_shapes(name, args["BLOCK_D"], torch.cuda.get_device_capability(),
                             args["Q"].element_size())
        kept = [c for c in configs
                if (*c.kwargs.values(), c.num_warps, c.num_stages) in shapes]
        return kept or configs[-1:]

    return prune


def _autotuned(name: str):
    """Autotune kernel ``name`` over its (tile, tile, num_warps, num_stages) choices."""
    kernel, tile_names = _KERNELS[name]
    configs = [
        triton.Config(dict(zip(tile_names, (a, b), strict=True)), num_warps=w, num_stages=s)
        for a, b, w, s in AUTOTUNE_SHAPES[name]
    ]
    return triton.autotune(
        configs=configs,
        key=["LEN_BUCKET", "HEAD_DIM", "IS_CAUSAL"],  # tensor dtypes are added by Triton
        prune_configs_by={"early_config_prune": _pruner(name)},
    )(kernel)


# Each kernel with the names of its two tile sizes (first = the tile the program owns).
_KERNELS = {
    "fwd": (_flash_fwd_kernel, ("BLOCK_M", "BLOCK_N")),
    "bwd_dkdv": (_flash_bwd_dkdv_kernel, ("BLOCK_N", "BLOCK_M")),
    "bwd_dq": (_flash_bwd_dq_kernel, ("BLOCK_M", "BLOCK_N")),
}
_TUNED = {} if INTERPRET else {name: _autotuned(name) for name in _KERNELS}


# ---------------------------------------------------------------------------- launchers
def _last_dim_contiguous(x: Tensor) -> Tensor:
    """The kernels take any strides except along D, which must be 1."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _flags(x: Tensor) -> dict:
    head_dim = x.shape[-1]
    return dict(
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        UPCAST=INTERPRET and x.dtype == torch.bfloat16,
        # float32 inputs: true float32 products (tensor cores would round to tf32).
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
    )


def _launch(name: str, grid_size, args: tuple, kwargs: dict) -> None:
    """Run kernel ``name``: autotuned on the GPU, with fixed tiles when interpreting.

    ``grid_size(tiles)`` gives the number of programs for a choice of tile sizes.
    """
    kernel, tile_names = _KERNELS[name]
    if INTERPRET:
        problem = interpreter_problem()
        if problem:
            raise RuntimeError(problem)
        tiles = dict(zip(tile_names, INTERPRET_BLOCKS[name], strict=True))
        kernel[(grid_size(tiles),)](*args, **kwargs, **tiles)
    else:
        _TUNED[name][lambda meta: (grid_size(meta),)](*args, **kwargs)


def _on_device_of(x: Tensor):
    """Launch on x's GPU (Triton launches on the current device), or do nothing on the CPU."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _strides(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def triton_forward(
    q: Tensor, k: Tensor, v: Tensor, is_causal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    """Forward kernel: (out (B, H, Tq, D), lse (B, H, Tq) float32). Inputs already checked."""
    batch, heads, tq, _ = q.shape
    kv_heads, tk = k.shape[1], k.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (B, H, Tq, D)
    lse = torch.empty((batch, heads, tq), dtype=torch.float32, device=q.device)  # (B, H, Tq)
    args = (
        q, k, v, out, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        heads, heads // kv_heads, tq, tk, scale * LOG2E.value, triton.next_power_of_2(max(tq, tk)),
    )
    _launch(
        "fwd",
        lambda t: triton.cdiv(tq, t["BLOCK_M"]) * batch * heads,
        args, dict(IS_CAUSAL=is_causal, **_flags(q)),
    )
    return out, lse


def triton_backward(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    grad_out: Tensor, is_causal: bool, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward kernels: (dq, dk, dv) shaped like (q, k, v)."""
    batch, heads, tq, head_dim = q.shape
    kv_heads, tk = k.shape[1], k.shape[2]
    grad_out = _last_dim_contiguous(grad_out)
    flags = dict(IS_CAUSAL=is_causal, **_flags(q))
    bucket = triton.next_power_of_2(max(tq, tk))

    delta = torch.empty_like(lse)  # (B, H, Tq) float32
    pre_block = 64
    _bwd_preprocess_kernel[(triton.cdiv(tq, pre_block) * batch * heads,)](
        out, grad_out, delta, *_strides(out), *_strides(grad_out), heads, tq,
        HEAD_DIM=head_dim, BLOCK_D=flags["BLOCK_D"], BLOCK_M=pre_block,
    )

    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    _launch(
        "bwd_dkdv",
        lambda t: triton.cdiv(tk, t["BLOCK_N"]) * batch * kv_heads,
        (q, k, v, grad_out, lse, delta, dk, dv, *_strides(q), *_strides(k), *_strides(v),
         *_strides(grad_out), *_strides(dk), *_strides(dv),
         heads, kv_heads, heads // kv_heads, tq, tk, scale * LOG2E.value, scale, bucket),
        flags,
    )
    _launch(
        "bwd_dq",
        lambda t: triton.cdiv(tq, t["BLOCK_M"]) * batch * heads,
        (q, k, v, grad_out, lse, delta, dq, *_strides(q), *_strides(k), *_strides(v),
         *_strides(grad_out), *_strides(dq),
         heads, heads // kv_heads, tq, tk, scale * LOG2E.value, scale, bucket),
        flags,
    )
    return dq, dk, dv


class FlashAttentionTriton(torch.autograd.Function):
    """Autograd wrapper of the kernels: saves q, k, v, out and lse (B, H, Tq), no Tq x Tk tensor.

    Called through :func:`llmfoundations.inference.flash.flash_attention`, which checks the inputs.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        with _on_device_of(q):
            out, lse = triton_forward(q, k, v, is_causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.is_causal, ctx.scale = is_causal, scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        with _on_device_of(q):
            dq, dk, dv = triton_backward(q, k, v, out, lse, grad_out, ctx.is_causal, ctx.scale)
        return dq, dk, dv, None, None
