"""Tests of llmfoundations.inference.flash (tiled reference) and llmfoundations.inference.flash_triton (kernels).

Independent references: torch's scaled_dot_product_attention (forward, and its
autograd for dq, dk, dv), torch.softmax / torch.logsumexp, and gradcheck's
finite differences. Without a GPU the Triton kernels run in Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1), so those cases use short sequences.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from einops import repeat
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from llmfoundations.inference.flash import (
    attention_traffic,
    flash_attention,
    flash_attention_reference,
    flash_backward_reference,
    flash_forward_reference,
    online_softmax,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(shape_q, shape_kv, dtype=torch.float32, device="cpu", seed=0):
    """Random q, k, v (leaf tensors that require grad) and an upstream gradient."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(shape_q, generator=gen, dtype=torch.float32)
    k = torch.randn(shape_kv, generator=gen, dtype=torch.float32)
    v = torch.randn(shape_kv, generator=gen, dtype=torch.float32)
    grad = torch.randn(shape_q[:-1] + shape_kv[-1:], generator=gen, dtype=torch.float32)
    q, k, v = (t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v))
    return q, k, v, grad.to(device=device, dtype=dtype)


def _kernel_module():
    """flash_triton, or skip: no Triton here, or an interpreter that cannot run the kernels."""
    flash_triton = pytest.importorskip("llmfoundations.inference.flash_triton")
    problem = flash_triton.interpreter_problem() if flash_triton.INTERPRET else None
    if problem:
        pytest.skip(problem)
    return flash_triton


def _run(fn, q, k, v, grad, **kwargs):
    """(out, dq, dk, dv) of fn, through autograd."""
    out = fn(q, k, v, **kwargs)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out, dq, dk, dv


def _sdpa(q, k, v, grad, *, dtype=None, is_causal=False, scale=None, gqa=False):
    """SDPA's (out, dq, dk, dv) on copies of q, k, v, optionally in another dtype."""
    copies = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (q, k, v)]
    out = F.scaled_dot_product_attention(
        *copies, is_causal=is_causal, scale=scale, enable_gqa=gqa
    )
    grads = torch.autograd.grad(out, copies, grad.to(out.dtype))
    return (out, *grads)


def _max_errors(actual, expected):
    pairs = zip(actual, expected, strict=True)
    return [(a.double() - e.double()).abs().max().item() for a, e in pairs]


# ----------------------------------------------------------------------------
# The online softmax
# ----------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 3),
    cols=st.integers(1, 40),
    block=st.integers(1, 50),
    spread=st.sampled_from([1.0, 30.0, 300.0]),
)
def test_online_softmax_matches_softmax(rows, cols, block, spread):
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(cols)) * spread
    torch.testing.assert_close(online_softmax(x, block), torch.softmax(x, -1), atol=1e-6, rtol=1e-5)


def test_online_softmax_survives_large_scores():
    # exp(1000) overflows; the running maximum keeps every exponent <= 0.
    x = torch.tensor([[1000.0, 999.0, 1001.0, -5.0]])
    out = online_softmax(x, 1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.softmax(x, -1), atol=1e-7, rtol=1e-6)


# ----------------------------------------------------------------------------
# The PyTorch reference against SDPA
# ----------------------------------------------------------------------------
SHAPES = [  # (leading dims, Tq, Tk, D)
    ((1, 1), 1, 1, 8),
    ((2, 3), 17, 17, 16),
    ((1, 2), 100, 100, 32),
    ((2, 2), 33, 70, 16),
    ((1, 2), 70, 33, 16),
]


@pytest.mark.parametrize("lead,tq,tk,d", SHAPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("blocks", [(16, 16), (7, 32), (64, 64)])
def test_reference_matches_sdpa_fp32(lead, tq, tk, d, is_causal, blocks):
    q, k, v, grad = _inputs((*lead, tq, d), (*lead, tk, d), seed=tq * tk + d)
    got = _run(flash_attention_reference, q, k, v, grad, is_causal=is_causal,
               block_q=blocks[0], block_k=blocks[1])
    want = _sdpa(q, k, v, grad, is_causal=is_causal)
    for name, a, e in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(
    "dtype,atol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)]
)
@pytest.mark.parametrize("is_causal", [False, True])
def test_reference_matches_sdpa_half(dtype, atol, is_causal):
    # Against SDPA in float32 on the same rounded inputs: what is left is the
    # rounding of the outputs and of the tiles' inputs, a few units of the dtype's eps.
    q, k, v, grad = _inputs((2, 2, 50, 32), (2, 2, 45, 32), dtype=dtype)
    got = _run(flash_attention_reference, q, k, v, grad, is_causal=is_causal,
               block_q=16, block_k=16)
    want = _sdpa(q, k, v, grad, dtype=torch.float32, is_causal=is_causal)
    for a, e in zip(got, want, strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), e, atol=atol, rtol=atol)


def test_reference_causal_is_aligned_top_left():
    # Pin the alignment with an explicit mask: query i sees keys j <= i, for Tq < Tk and Tq > Tk.
    for tq, tk in ((5, 12), (12, 5)):
        q, k, v, grad = _inputs((1, 1, tq, 8), (1, 1, tk, 8))
        keep = torch.ones(tq, tk, dtype=torch.bool).tril()
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        got = flash_attention_reference(q, k, v, is_causal=True, block_q=4, block_k=3)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("lead", [(), (3,), (2, 2, 2)])
def test_reference_takes_any_leading_dims(lead):
    q, k, v, grad = _inputs((*lead, 9, 8), (*lead, 11, 8))
    got = _run(flash_attention_reference, q, k, v, grad, is_causal=True, block_q=4, block_k=4)
    want = _sdpa(q, k, v, grad, is_causal=True)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_reference_value_dim_may_differ():
    q, k, _, _ = _inputs((2, 10, 8), (2, 7, 8))
    v = torch.randn(2, 7, 5, requires_grad=True)
    grad = torch.randn(2, 10, 5)
    got = _run(flash_attention_reference, q, k, v, grad, block_q=4, block_k=4)
    want = _sdpa(q, k, v, grad)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_reference_custom_scale():
    q, k, v, grad = _inputs((1, 2, 20, 16), (1, 2, 20, 16))
    got = _run(flash_attention_reference, q, k, v, grad, scale=0.05, block_q=8, block_k=8)
    want = _sdpa(q, k, v, grad, scale=0.05)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_reference_gradcheck_float64():
    # Finite differences check the hand-written backward without trusting SDPA.
    q, k, v, _ = _inputs((1, 2, 6, 4), (1, 2, 5, 4), dtype=torch.float64)
    for is_causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda q, k, v, c=is_causal: flash_attention_reference(
                q, k, v, is_causal=c, block_q=4, block_k=2
            ),
            (q, k, v),
        )


def test_reference_lse_is_the_log_sum_exp_of_the_scores():
    q, k, v, _ = _inputs((2, 3, 21, 8), (2, 3, 13, 8))
    scale = 0.3
    out, lse = flash_forward_reference(q, k, v, is_causal=True, scale=scale, block_q=5, block_k=4)
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(
        torch.ones(21, 13, dtype=torch.bool).triu(1), -math.inf
    )
    assert lse.shape == out.shape[:-1] and lse.dtype == torch.float32
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1), atol=1e-5, rtol=1e-6)


def test_reference_backward_function_matches_autograd():
    q, k, v, grad = _inputs((1, 2, 30, 8), (1, 2, 30, 8))
    with torch.no_grad():
        out, lse = flash_forward_reference(q, k, v, is_causal=True, block_q=8, block_k=16)
        got = flash_backward_reference(q, k, v, out, lse, grad, is_causal=True,
                                       block_q=16, block_k=8)  # other tiles: same result
    want = _sdpa(q, k, v, grad, is_causal=True)[1:]
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    lead=st.sampled_from([(1,), (2,), (1, 2), (2, 3)]),
    tq=st.integers(1, 40),
    tk=st.integers(1, 40),
    d=st.sampled_from([1, 4, 8, 16]),
    block_q=st.integers(1, 48),
    block_k=st.integers(1, 48),
    is_causal=st.booleans(),
)
def test_reference_matches_sdpa_property(lead, tq, tk, d, block_q, block_k, is_causal):
    q, k, v, grad = _inputs((*lead, tq, d), (*lead, tk, d), seed=tq + 41 * tk)
    got = _run(flash_attention_reference, q, k, v, grad, is_causal=is_causal,
               block_q=block_q, block_k=block_k)
    want = _sdpa(q, k, v, grad, is_causal=is_causal)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, atol=2e-5, rtol=2e-5)


@settings(max_examples=20, deadline=None)
@given(t=st.integers(2, 30), cut=st.integers(1, 29), is_future=st.booleans())
def test_reference_causal_outputs_ignore_future_keys(t, cut, is_future):
    # Changing keys/values at positions >= cut leaves the outputs before cut unchanged.
    cut = min(cut, t - 1)
    q, k, v, _ = _inputs((1, 2, t, 8), (1, 2, t, 8))
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[..., cut:, :] += 3.0
    v2[..., cut:, :] -= 2.0
    with torch.no_grad():
        a = flash_attention_reference(q, k, v, is_causal=True, block_q=4, block_k=3)
        b = flash_attention_reference(q, k2, v2, is_causal=True, block_q=4, block_k=3)
    torch.testing.assert_close(a[..., :cut, :], b[..., :cut, :], atol=0, rtol=0)


# ----------------------------------------------------------------------------
# What the reference keeps in memory
# ----------------------------------------------------------------------------
class _LargestTensor(TorchFunctionMode):
    """Records the largest tensor any torch function returns while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return result


def _saved_by(fn):
    """Every tensor autograd saves while ``fn()`` runs, and fn's result."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return saved, out


def _check_saved(saved, out, q, k, v):
    tq, tk = q.shape[-2], k.shape[-2]
    assert len(saved) == 5  # q, k, v, out, lse
    biggest_input = max(t.numel() for t in (q, k, v, out))
    for t in saved:
        assert t.numel() <= biggest_input, f"saved tensor of shape {tuple(t.shape)}"
        assert t.shape[-2:] != (tq, tk), f"saved a Tq x Tk tensor {tuple(t.shape)}"
    lse = saved[-1]
    assert lse.shape == out.shape[:-1] and lse.dtype == torch.float32
    assert out.grad_fn.saved_tensors[-1].shape == out.shape[:-1]


def test_reference_saves_lse_not_scores():
    q, k, v, _ = _inputs((2, 3, 64, 8), (2, 3, 80, 8))
    saved, out = _saved_by(lambda: flash_attention_reference(q, k, v, block_q=16, block_k=16))
    _check_saved(saved, out, q, k, v)
    assert type(out.grad_fn).__name__ == "_FlashAttentionReferenceBackward"  # no copy after it


def test_reference_never_builds_the_score_matrix():
    # Forward and backward: no intermediate is larger than one input or a tile per head.
    lead, t, d, bq, bk = (2,), 96, 8, 16, 16
    q, k, v, grad = _inputs((*lead, t, d), (*lead, t, d))
    limit = 2 * t * d  # = 1536 elements; the (T, T) scores would be 2 * 96 * 96 = 18432
    with torch.no_grad(), _LargestTensor() as mode:
        out, lse = flash_forward_reference(q, k, v, is_causal=True, block_q=bq, block_k=bk)
        flash_backward_reference(q, k, v, out, lse, grad, is_causal=True, block_q=bq, block_k=bk)
    assert 2 * bq * bk <= mode.largest <= limit


# ----------------------------------------------------------------------------
# Bytes moved
# ----------------------------------------------------------------------------
def test_attention_traffic_counts():
    # Tq = Tk = 256, D = 64, fp16, tiles of 128 queries: 2 tiles each read all of K and V.
    t = attention_traffic(256, 64, block_q=128)
    compulsory = 4 * 256 * 64 * 2
    assert t.compulsory_bytes == compulsory
    assert t.naive_bytes == compulsory + 4 * 256 * 256 * 2
    assert t.flash_bytes == (2 * 256 * 64 + 2 * 2 * 256 * 64) * 2 + 4 * 256
    assert t.flops == 4 * 256 * 256 * 64
    assert t.score_matrix_bytes == 256 * 256 * 2
    causal = attention_traffic(256, 64, block_q=128, is_causal=True)
    assert causal.flops == t.flops / 2 and causal.flash_bytes < t.flash_bytes
    assert causal.naive_bytes == t.naive_bytes  # the naive way still writes the whole matrix
    assert attention_traffic(256, 64, batch_heads=6).naive_bytes == 6 * t.naive_bytes


@settings(max_examples=30, deadline=None)
@given(t=st.integers(1, 5000), d=st.sampled_from([32, 64, 128]), bq=st.sampled_from([64, 128]))
def test_attention_traffic_flash_moves_less_once_tiles_are_wide(t, d, bq):
    traffic = attention_traffic(t, d, block_q=bq)
    assert traffic.compulsory_bytes <= traffic.flash_bytes
    if bq >= d:  # k and v re-read T / bq times cost 4 T^2 D / bq <= 4 T^2 bytes of scores
        assert traffic.flash_bytes <= traffic.naive_bytes + 4 * t


# ----------------------------------------------------------------------------
# Error paths
# ----------------------------------------------------------------------------
def _qkv(shape_q=(1, 2, 8, 16), shape_kv=None, dtype=torch.float32):
    shape_kv = shape_kv or shape_q
    return torch.randn(shape_q, dtype=dtype), torch.randn(shape_kv, dtype=dtype), torch.randn(
        shape_kv, dtype=dtype
    )


@pytest.mark.parametrize("fn", [flash_attention_reference, flash_attention])
def test_errors_common(fn):
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        fn(q.tolist(), k, v)
    with pytest.raises(TypeError, match="k must be a floating-point"):
        fn(q, k.to(torch.int32), v)
    with pytest.raises(TypeError, match="share one dtype"):
        fn(q, k, v.double())
    with pytest.raises(ValueError, match="same device"):
        fn(q, k.to("meta"), v)
    with pytest.raises(ValueError, match="q must not be empty"):
        fn(q[:, :, :0], k, v)
    with pytest.raises(ValueError, match="k and v must agree"):
        fn(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="head dimension"):
        fn(q, k[..., :8], v[..., :8])
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        fn(q, k, v, is_causal=1)
    with pytest.raises(ValueError, match="scale must be > 0"):
        fn(q, k, v, scale=0.0)
    with pytest.raises(ValueError, match="scale must be finite"):
        fn(q, k, v, scale=math.inf)


def test_errors_reference_only():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="same leading dimensions"):
        flash_attention_reference(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match="block_q must be > 0"):
        flash_attention_reference(q, k, v, block_q=0)
    with pytest.raises(TypeError, match="block_k must be an int"):
        flash_attention_reference(q, k, v, block_k=16.0)
    with pytest.raises(ValueError, match="lse must have shape"):
        flash_backward_reference(q, k, v, q, q, q)
    with pytest.raises(ValueError, match="block_size must be > 0"):
        online_softmax(q, 0)
    with pytest.raises(ValueError, match="kv_len must be > 0"):
        attention_traffic(8, 8, kv_len=0)


def test_errors_kernel_only(monkeypatch):
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="dtype float16, bfloat16, float32"):
        flash_attention(*(t.double() for t in (q, k, v)))
    for d in (8, 256):
        with pytest.raises(ValueError, match=f"head dimension D must be in .* got D = {d}"):
            flash_attention(*_qkv((1, 2, 8, d)))
    with pytest.raises(ValueError, match=r"must be \(B, H, T, D\)"):
        flash_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="must divide the heads of q"):
        flash_attention(*_qkv((1, 3, 8, 16), (1, 2, 8, 16)))
    with pytest.raises(ValueError, match="same batch size"):
        flash_attention(*_qkv((1, 2, 8, 16), (2, 2, 8, 16)))
    with pytest.raises(ValueError, match="v must have the head dimension of q"):
        flash_attention(q, k, torch.randn(1, 2, 8, 32))
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        flash_attention(*(t.to("meta") for t in (q, k, v)))


def test_interpreter_problem_names_the_versions_that_fail(monkeypatch):
    flash_triton = pytest.importorskip("llmfoundations.inference.flash_triton")
    problem = flash_triton.interpreter_problem("3.6.0", "2.4.6")
    assert "3.6.0" in problem and "2.4.6" in problem and "numpy<2.4" in problem
    for triton_version, numpy_version in (("3.7.0", "2.4.6"), ("3.6.0", "2.3.5"), ("3.9.0", "2.5.0"),
                                          ("3.10.1", "2.4.0"), ("3.2.0", "1.26.4")):
        assert flash_triton.interpreter_problem(triton_version, numpy_version) is None
    if flash_triton.INTERPRET:  # the launch says so, instead of Triton's own TypeError
        monkeypatch.setattr(flash_triton, "interpreter_problem", lambda: "Triton 3.6 cannot: use 3.7")
        q, k, v = _qkv()
        with pytest.raises(RuntimeError, match="Triton 3.6 cannot: use 3.7"):
            flash_attention(q, k, v)


def test_error_cpu_without_interpreter(monkeypatch):
    flash_triton = pytest.importorskip("llmfoundations.inference.flash_triton")
    monkeypatch.setattr(flash_triton, "INTERPRET", False)
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1.*flash_attention_reference"):
        flash_attention(q, k, v)


# ----------------------------------------------------------------------------
# The Triton kernels (interpreter on CPU, compiled on a GPU)
# ----------------------------------------------------------------------------
KERNEL_CASES = [  # (B, H, Hkv, Tq, Tk, D, is_causal, dtype)
    (1, 2, 2, 1, 1, 16, False, torch.float32),
    (1, 2, 2, 1, 1, 16, True, torch.float32),
    (2, 2, 2, 100, 100, 32, False, torch.float32),
    (2, 2, 2, 100, 100, 32, True, torch.float32),
    (1, 2, 2, 33, 33, 64, True, torch.float32),
    (1, 2, 2, 33, 100, 32, False, torch.float32),  # Tq < Tk
    (1, 2, 2, 100, 33, 32, True, torch.float32),  # Tq > Tk, causal top-left
    (1, 2, 2, 47, 80, 32, True, torch.float32),  # Tq < Tk, causal top-left
    (1, 2, 2, 50, 50, 48, True, torch.float32),  # head dim padded to 64
    (1, 4, 2, 100, 100, 32, True, torch.float16),  # grouped-query
    (1, 4, 1, 64, 70, 16, False, torch.float16),  # multi-query
    (1, 2, 2, 65, 65, 32, False, torch.float16),
]
TOLERANCES = {torch.float32: 2e-5, torch.float16: 4e-3}


def _kernel_case(b, h, h_kv, tq, tk, d, dtype, seed=0):
    return _inputs((b, h, tq, d), (b, h_kv, tk, d), dtype=dtype, device=DEVICE, seed=seed)


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernel_matches_sdpa(case):
    _kernel_module()
    b, h, h_kv, tq, tk, d, is_causal, dtype = case
    q, k, v, grad = _kernel_case(b, h, h_kv, tq, tk, d, dtype, seed=tq + tk)
    got = _run(flash_attention, q, k, v, grad, is_causal=is_causal)
    want = _sdpa(q, k, v, grad, dtype=torch.float32, is_causal=is_causal, gqa=h != h_kv)
    tol = TOLERANCES[dtype]
    for name, a, e in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert a.dtype == dtype and a.shape == e.shape
        torch.testing.assert_close(a.float(), e, atol=tol, rtol=tol,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("is_causal", [False, True])
def test_kernel_bfloat16_upcast_path(is_causal):
    # The interpreter's bf16 dot is wrong, so the kernels upcast tiles there, and its
    # float32 -> bf16 conversion truncates instead of rounding to nearest (up to one
    # unit in the last place, about twice SDPA's error). Hold the kernel to SDPA's
    # own bf16 error (both against float32) with that margin.
    _kernel_module()
    q, k, v, grad = _kernel_case(1, 2, 2, 65, 65, 32, torch.bfloat16)
    got = _run(flash_attention, q, k, v, grad, is_causal=is_causal)
    exact = _sdpa(q, k, v, grad, dtype=torch.float32, is_causal=is_causal)
    sdpa_bf16 = _sdpa(q, k, v, grad, is_causal=is_causal)
    for ours, theirs in zip(_max_errors(got, exact), _max_errors(sdpa_bf16, exact), strict=True):
        assert ours <= 2 * theirs + 4e-3, (ours, theirs)


@pytest.mark.parametrize("blocks", [(16, 32), (32, 16)])
def test_kernel_uneven_tiles(monkeypatch, blocks):
    # Tile sizes that differ between the two loops exercise every masked/unmasked split.
    flash_triton = _kernel_module()
    if not flash_triton.INTERPRET:
        pytest.skip("tile sizes are autotuned on the GPU")
    monkeypatch.setattr(flash_triton, "INTERPRET_BLOCKS",
                        {"fwd": blocks, "bwd_dkdv": blocks, "bwd_dq": blocks})
    for tq, tk in ((70, 70), (40, 75), (75, 40)):
        q, k, v, grad = _kernel_case(1, 2, 1, tq, tk, 16, torch.float32, seed=tq)
        got = _run(flash_attention, q, k, v, grad, is_causal=True)
        want = _sdpa(q, k, v, grad, is_causal=True, gqa=True)
        for a, e in zip(got, want, strict=True):
            torch.testing.assert_close(a, e, atol=2e-5, rtol=2e-5)


def test_kernel_strided_and_noncontiguous_inputs():
    _kernel_module()
    # q from a (B, T, H, D) projection viewed as (B, H, T, D): strided, last dim contiguous.
    q_bthd = torch.randn(1, 40, 2, 16, device=DEVICE)
    q = q_bthd.transpose(1, 2).requires_grad_()
    # k with a non-unit stride along D: copied inside.
    k = torch.randn(1, 2, 16, 40, device=DEVICE).transpose(-1, -2).requires_grad_()
    v = torch.randn(1, 2, 40, 16, device=DEVICE, requires_grad=True)
    grad = torch.randn(1, 2, 40, 16, device=DEVICE).transpose(0, 1).contiguous().transpose(0, 1)
    got = _run(flash_attention, q, k, v, grad, is_causal=True)
    want = _sdpa(q, k, v, grad, is_causal=True)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, atol=2e-5, rtol=2e-5)


def test_kernel_saves_lse_not_scores():
    _kernel_module()
    q, k, v, _ = _kernel_case(1, 4, 2, 48, 64, 16, torch.float32)
    saved, out = _saved_by(lambda: flash_attention(q, k, v, is_causal=True))
    _check_saved(saved, out, q, k, v)
    assert type(out.grad_fn).__name__ == "FlashAttentionTritonBackward"  # no copy after it


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(
    tq=st.integers(1, 80),
    tk=st.integers(1, 80),
    d=st.sampled_from([16, 24, 32]),
    group=st.sampled_from([1, 2]),
    is_causal=st.booleans(),
)
def test_kernel_matches_reference_property(tq, tk, d, group, is_causal):
    _kernel_module()
    q, k, v, grad = _kernel_case(1, 2, 2 // group, tq, tk, d, torch.float32, seed=tq * tk)
    got = _run(flash_attention, q, k, v, grad, is_causal=is_causal)
    # The reference has no grouped heads: repeat k and v; autograd sums the group's gradients.
    k_full, v_full = (repeat(t, "b hkv t d -> b (hkv g) t d", g=group) for t in (k, v))
    out = flash_attention_reference(q, k_full, v_full, is_causal=is_causal, block_q=16, block_k=16)
    want = (out, *torch.autograd.grad(out, (q, k, v), grad))
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, atol=2e-5, rtol=2e-5)


# ----------------------------------------------------------------------------
# GPU only: realistic sizes
# ----------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("t,d,h,h_kv", [(1024, 64, 8, 8), (4096, 128, 8, 2), (1000, 128, 4, 1),
                                        (4096, 64, 4, 4)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_kernel_gpu_large(dtype, t, d, h, h_kv, is_causal):
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bfloat16 needs compute capability 8.0")
    q, k, v, grad = _kernel_case(2, h, h_kv, t, t, d, dtype, seed=t + d)
    got = _run(flash_attention, q, k, v, grad, is_causal=is_causal)
    exact = _sdpa(q, k, v, grad, dtype=torch.float32, is_causal=is_causal, gqa=h != h_kv)
    sdpa_low = _sdpa(q, k, v, grad, is_causal=is_causal, gqa=h != h_kv)
    # Both low-precision results are held to float32 SDPA: ours may be at most a little
    # worse than SDPA's own rounding error.
    floor = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    for ours, theirs in zip(_max_errors(got, exact), _max_errors(sdpa_low, exact), strict=True):
        assert ours <= 2 * theirs + floor, (ours, theirs)


# ----------------------------------------------------------------------------
# The benchmark script parses and its timing core runs on the CPU
# ----------------------------------------------------------------------------
def _load_benchmark(repo_root):
    path = repo_root / "benchmarks" / "flash_attention.py"
    spec = importlib.util.spec_from_file_location("flash_attention_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_benchmark_help_and_cpu_timing(repo_root, capsys):
    bench = _load_benchmark(repo_root)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out
    case = bench.Case(dtype=torch.float32, head_dim=8, seq_len=16, batch=1, heads=2,
                      is_causal=True, mode="fwd+bwd")
    for impl in ("reference", "eager", "sdpa-math"):
        row = bench.measure(impl, case, device="cpu", warmup=1, repeats=2)
        assert row["status"] == "ok" and row["ms"] > 0 and row["tflops"] > 0, row
    table = bench.markdown([row], ["sdpa-math"])
    assert "| float32 | 8 | 16 | True | fwd+bwd |" in table


def test_benchmark_check_runs(repo_root, capsys):
    _kernel_module()
    bench = _load_benchmark(repo_root)
    device = DEVICE
    assert bench.check(device=device, shapes=[(1, 2, 1, 40, 16, True)])
    assert "FAILED" not in capsys.readouterr().out


def test_online_softmax_with_a_leading_block_of_minus_infinity():
    x = torch.tensor([[-math.inf, -math.inf, 1.0, 2.0], [0.5, -math.inf, -math.inf, 3.0]])
    torch.testing.assert_close(online_softmax(x, block_size=2), torch.softmax(x, -1), atol=1e-7, rtol=0)


# ----------------------------------------------------------------------------- autotune pruning


@pytest.mark.parametrize("name", ["fwd", "bwd_dkdv", "bwd_dq"])
def test_pruner_keeps_a_subset_and_never_nothing(name):
    flash_triton = pytest.importorskip("llmfoundations.inference.flash_triton")
    for capability in [(7, 5), (8, 0), (8, 6), (9, 0)]:
        for element_size in (2, 4):
            for block_d in (16, 32, 64, 128):
                kept = flash_triton.kept_shapes(name, block_d, capability, element_size)
                assert kept and set(kept) <= set(flash_triton.AUTOTUNE_SHAPES[name])


def test_pruner_choices_measured_by_the_compile_stage():
    # Compiled for sm_75: the float32 D=128 dK/dV kernel needs 69,632 bytes of shared memory
    # with 32x32 tiles, over the T4's 64 KB; 32x16 takes 51,200 (.ci/compile_kernels.py).
    flash_triton = pytest.importorskip("llmfoundations.inference.flash_triton")
    assert flash_triton.kept_shapes("bwd_dkdv", 128, (7, 5), 4) == [(32, 16, 4, 2)]
    assert (32, 32, 4, 2) in flash_triton.kept_shapes("bwd_dkdv", 128, (7, 5), 2)
    # sm_80: float32 forward with D=128 and 64x64 tiles in 3 stages needs 180,480 bytes (> 163 KB)
    assert (64, 64, 4, 3) not in flash_triton.kept_shapes("fwd", 128, (8, 0), 4)
    assert (64, 64, 4, 3) in flash_triton.kept_shapes("fwd", 128, (9, 0), 4)
