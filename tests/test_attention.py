"""Tests of attention.py against torch's SDPA, torch's MultiheadAttention and hand-written loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import repeat
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

from llmfoundations.attention import (
    KVCacheLike,
    MultiHeadAttention,
    attention_weights,
    causal_mask,
    scaled_dot_product_attention,
)
from llmfoundations.kv_cache import LayerKVCache

TOL = dict(atol=1e-5, rtol=1e-5)

# ----------------------------------------------------------------------------- causal_mask


@pytest.mark.parametrize("t_q, t_k", [(1, 1), (3, 3), (2, 5), (1, 7), (4, 6)])
def test_causal_mask_alignments_match_torch_bias(t_q, t_k):
    torch.testing.assert_close(causal_mask(t_q, t_k), causal_lower_right(t_q, t_k)._materialize())
    torch.testing.assert_close(
        causal_mask(t_q, t_k, offset=0), causal_upper_left(t_q, t_k)._materialize()
    )
    if t_q == t_k:  # the two alignments agree on square masks
        torch.testing.assert_close(causal_mask(t_q, t_k), causal_mask(t_q, t_k, offset=0))


def test_causal_mask_explicit_offset_and_empty_rows():
    mask = causal_mask(2, 4, offset=1)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    torch.testing.assert_close(mask, expected)
    assert not causal_mask(3, 2)[0].any()  # Tq > Tk: the first query sits at position -1


def test_causal_mask_errors():
    with pytest.raises(ValueError, match="t_q"):
        causal_mask(0, 3)
    with pytest.raises(TypeError, match="t_k"):
        causal_mask(2, 3.0)
    with pytest.raises(TypeError, match="offset"):
        causal_mask(2, 3, offset=1.5)


# ----------------------------------------------------------------------------- SDPA


@st.composite
def sdpa_case(draw):
    batch = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    t_q, t_k = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    d, d_v = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    kind = draw(st.sampled_from(["none", "bool", "bool_broadcast", "float", "causal"]))
    scale = draw(st.one_of(st.none(), st.floats(0.05, 2.0)))
    seed = draw(st.integers(0, 2**16))
    return batch, t_q, t_k, d, d_v, kind, scale, seed


def _make_inputs(batch, t_q, t_k, d, d_v, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, t_q, d, generator=gen, dtype=torch.float64)
    k = torch.randn(*batch, t_k, d, generator=gen, dtype=torch.float64)
    v = torch.randn(*batch, t_k, d_v, generator=gen, dtype=torch.float64)
    mask, is_causal = None, False
    if kind in ("bool", "bool_broadcast"):
        shape = (*batch, t_q, t_k) if kind == "bool" else (t_q, t_k)
        mask = torch.rand(shape, generator=gen) > 0.4
        mask[..., 0] = True  # every row keeps a key (empty rows are tested separately)
    elif kind == "float":
        mask = torch.randn(t_q, t_k, generator=gen, dtype=torch.float64)
    elif kind == "causal":
        is_causal = True  # top-left: query i sees keys j <= i, so no row is empty
    return q, k, v, mask, is_causal


@settings(max_examples=60, deadline=None)
@given(sdpa_case())
def test_sdpa_matches_torch(case):
    batch, t_q, t_k, d, d_v, kind, scale, seed = case
    q, k, v, mask, is_causal = _make_inputs(batch, t_q, t_k, d, d_v, kind, seed)
    ours = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)
    assert ours.shape == (*batch, t_q, d_v)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind", ["none", "bool", "float", "causal"])
def test_sdpa_gradients_match_torch(kind):
    q, k, v, mask, is_causal = _make_inputs([2, 3], 4, 6, 5, 3, kind, seed=7)
    grads = []
    for fn in (scaled_dot_product_attention, F.scaled_dot_product_attention):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        if fn is F.scaled_dot_product_attention:
            out = fn(qq, kk, vv, attn_mask=mask, is_causal=is_causal)
        else:
            out = fn(qq, kk, vv, mask=mask, is_causal=is_causal)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append((qq.grad, kk.grad, vv.grad))
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)


def test_sdpa_fully_masked_rows_are_zero_with_finite_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, requires_grad=True) for _ in range(3))
    mask = torch.ones(3, 3, dtype=torch.bool)
    mask[1] = False  # query 1 may attend to nothing
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.equal(out[:, 1], torch.zeros(2, 4))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    # torch >= 2.5 also returns zeros here (older versions and some GPU kernels gave NaN);
    # on the rows torch computes, the two agree
    ref = torch.nan_to_num(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), nan=0.0)
    torch.testing.assert_close(out, ref, **TOL)
    # an additive mask of -inf behaves the same
    additive = torch.zeros(3, 3).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=additive), out)


def test_attention_weights_are_softmax_rows():
    torch.manual_seed(1)
    q, k = torch.randn(2, 5, 8), torch.randn(2, 7, 8)
    w = attention_weights(q, k)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(w, expected, **TOL)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5), **TOL)
    causal = attention_weights(q, k[:, :5], is_causal=True)
    assert torch.equal(causal.triu(1), torch.zeros_like(causal))


def test_sdpa_low_precision_runs_softmax_in_float32():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 6, 8) for _ in range(3))
    out = scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True)
    assert out.dtype == torch.bfloat16
    ref = scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


def test_sdpa_dropout_is_dropout_of_the_weights():
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 4, 8) for _ in range(3))
    torch.manual_seed(10)
    out = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(10)
    expected = F.dropout(attention_weights(q, k), p=0.5, training=True) @ v
    torch.testing.assert_close(out, expected)


def test_sdpa_errors():
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    with pytest.raises(ValueError, match="not both"):
        scaled_dot_product_attention(
            q, k, v, mask=torch.ones(3, 5, dtype=torch.bool), is_causal=True
        )
    with pytest.raises(ValueError, match="last \\(head\\) dimension"):
        scaled_dot_product_attention(q, torch.randn(2, 5, 3), v)
    with pytest.raises(ValueError, match="number of keys"):
        scaled_dot_product_attention(q, k, torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match="mask of shape"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be bool"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(3, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        scaled_dot_product_attention([1.0], k, v)
    with pytest.raises(TypeError, match="floating"):
        scaled_dot_product_attention(q.long(), k, v)
    with pytest.raises(ValueError, match="dropout_p"):
        scaled_dot_product_attention(q, k, v, dropout_p=1.0)
    with pytest.raises(ValueError, match="scale"):
        scaled_dot_product_attention(q, k, v, scale=-1.0)


# ----------------------------------------------------------------------------- MHA


def _mha(*args, seed=0, **kwargs) -> MultiHeadAttention:
    torch.manual_seed(seed)
    mha = MultiHeadAttention(*args, **kwargs)
    with torch.no_grad():  # biases default to small uniform values; make them matter
        for p in mha.parameters():
            if p.ndim == 1:
                p.normal_(0.0, 0.5)
    return mha.eval()


def _per_head_loop(mha: MultiHeadAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """Multi-head attention written head by head with plain matrix products."""
    h, hkv, d = mha.n_heads, mha.n_kv_heads, mha.head_dim
    q_all, k_all, v_all = mha.q_proj(x), mha.k_proj(x), mha.v_proj(x)
    t = x.shape[1]
    heads = []
    for head in range(h):
        g = head // (h // hkv)
        q = q_all[..., head * d : (head + 1) * d]
        k = k_all[..., g * d : (g + 1) * d]
        v = v_all[..., g * d : (g + 1) * d]
        scores = q @ k.transpose(1, 2) / math.sqrt(d)
        if causal:
            scores = scores.masked_fill(torch.ones(t, t).triu(1).bool(), float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v)
    return mha.o_proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_mha_equals_per_head_loop(n_kv_heads, causal, fused):
    mha = _mha(32, 4, n_kv_heads, causal=causal, bias=True, fused=fused)
    x = torch.randn(3, 6, 32)
    torch.testing.assert_close(mha(x), _per_head_loop(mha, x, causal), **TOL)


@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_gqa_equals_mha_with_repeated_kv_heads(n_kv_heads):
    gqa = _mha(32, 4, n_kv_heads, rope_theta=10000.0)
    full = _mha(32, 4, 4, rope_theta=10000.0)
    r = 4 // n_kv_heads
    with torch.no_grad():
        full.q_proj.weight.copy_(gqa.q_proj.weight)
        full.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight  # (Hkv*D, C)
            getattr(full, name).weight.copy_(repeat(w, "(g d) c -> (g r d) c", g=n_kv_heads, r=r))
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(gqa(x), full(x), **TOL)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_native_gqa_path_equals_the_repeated_heads_to_the_bit(monkeypatch, masked, causal):
    """On the CPU the fused path lets SDPA share key/value heads (enable_gqa) instead of
    copying them; it must give what copying gives, exactly, or lab outputs would move."""
    import llmfoundations.attention as attention

    if not attention._native_gqa(torch.zeros(1)):
        pytest.skip("torch < 2.5: no enable_gqa")
    mha = _mha(48, 6, 2, causal=causal, rope_theta=10000.0).eval()
    x = torch.randn(3, 9, 48)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, :4] = False  # left padding: some rows see no key at all

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        """The whole sequence in one pass, and a cached step after 5 positions."""
        upto = (lambda t: {"attn_mask": mask[:, :t]}) if masked else (lambda t: {})
        cached = LayerKVCache(3, 2, 8, max_len=16)
        mha(x[:, :5], kv_cache=cached, **upto(5))
        return mha(x, **upto(9)), mha(x[:, 5:6], kv_cache=cached, **upto(6))

    native, step_native = run()
    monkeypatch.setattr(attention, "_native_gqa", lambda q: False)
    copied, step_copied = run()
    assert torch.equal(native, copied)
    assert torch.equal(step_native, step_copied)


@settings(max_examples=20, deadline=None)
@given(
    t=st.integers(2, 8),
    cut=st.integers(1, 7),
    n_kv=st.sampled_from([1, 2, 4]),
    rope=st.booleans(),
    seed=st.integers(0, 999),
)
def test_mha_is_causal(t, cut, n_kv, rope, seed):
    cut = min(cut, t - 1)
    mha = _mha(16, 4, n_kv, rope_theta=100.0 if rope else None, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, t, 16, generator=gen)
    changed = x.clone()
    changed[:, cut:] = torch.randn(2, t - cut, 16, generator=gen)
    torch.testing.assert_close(mha(x)[:, :cut], mha(changed)[:, :cut], **TOL)


@settings(max_examples=15, deadline=None)
@given(t=st.integers(1, 8), seed=st.integers(0, 999))
def test_mha_without_mask_and_rope_is_permutation_equivariant(t, seed):
    mha = _mha(16, 2, causal=False, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, t, 16, generator=gen)
    perm = torch.randperm(t, generator=gen)
    torch.testing.assert_close(mha(x[:, perm]), mha(x)[:, perm], **TOL)


@pytest.mark.parametrize("fused", [True, False])
def test_mha_matches_torch_multihead_attention(fused):
    torch.manual_seed(4)
    c, h = 24, 3
    ours = _mha(c, h, bias=True, causal=False, fused=fused)
    ref = torch.nn.MultiheadAttention(c, h, bias=True, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(
            torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
        )
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.o_proj.weight)
        ref.out_proj.bias.copy_(ours.o_proj.bias)
    x = torch.randn(2, 5, c)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expected, **TOL)
    # with torch's conventions inverted: True there means "may NOT attend"
    pad = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    mask = causal_mask(5, 5)
    expected, weights_ref = ref(
        x, x, x, key_padding_mask=pad == 0, attn_mask=~mask, average_attn_weights=False
    )
    ours.causal = True
    out, weights = ours.forward_with_weights(x, attn_mask=pad)
    torch.testing.assert_close(out, expected, **TOL)
    torch.testing.assert_close(weights, weights_ref, **TOL)


def test_forward_with_weights_shapes_and_rows():
    mha = _mha(16, 4, 2, rope_theta=10000.0)
    x = torch.randn(2, 5, 16)
    out, w = mha.forward_with_weights(x)
    assert out.shape == (2, 5, 16) and w.shape == (2, 4, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 5), **TOL)
    assert torch.equal(w.triu(1), torch.zeros_like(w))
    torch.testing.assert_close(out, mha(x), **TOL)


def test_cross_attention_shapes_and_padding():
    mha = _mha(16, 4, causal=True, rope_theta=10000.0)  # causal and RoPE ignored for cross
    x, context = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    out, w = mha.forward_with_weights(x, context)
    assert out.shape == (2, 3, 16) and w.shape == (2, 4, 3, 6)
    assert (w[:, :, 0] > 0).all()  # not causal: the first query sees every context position
    # padded context positions do not matter
    pad = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    changed = context.clone()
    changed[0, 4:] = 100.0
    torch.testing.assert_close(
        mha(x, context, attn_mask=pad)[0], mha(x, changed, attn_mask=pad)[0], **TOL
    )
    torch.testing.assert_close(
        mha(x[:1], context[:1, :4])[0], mha(x, context, attn_mask=pad)[0], **TOL
    )


@pytest.mark.parametrize("fused", [True, False])
def test_padding_mask_rows_equal_unpadded_rows(fused):
    """Left padding with per-row positions gives the same outputs as the short row alone."""
    mha = _mha(16, 4, 2, rope_theta=10000.0, fused=fused)
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    positions = torch.tensor([[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])
    out = mha(x, attn_mask=pad, positions=positions)
    torch.testing.assert_close(out[0, 2:], mha(x[:1, 2:])[0], **TOL)
    torch.testing.assert_close(out[1], mha(x[1:])[0], **TOL)
    assert torch.isfinite(out).all()


def test_full_boolean_masks():
    mha = _mha(16, 4)
    x = torch.randn(2, 5, 16)
    ones = torch.ones(2, 5, 5, dtype=torch.bool)
    torch.testing.assert_close(mha(x, attn_mask=ones), mha(x), **TOL)  # combined with causal
    only_self = torch.eye(5, dtype=torch.bool)[None, None]  # (1, 1, T, T)
    _, w = mha.forward_with_weights(x, attn_mask=only_self)
    torch.testing.assert_close(w, torch.eye(5).expand(2, 4, 5, 5))


class ListCache:
    """The smallest object that satisfies the cache protocol (concatenation, `length`)."""

    def __init__(self):
        self.k = self.v = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


@pytest.mark.parametrize("make_cache", ["list", "layer"])
@pytest.mark.parametrize("fused", [True, False])
def test_cache_path_equals_full_pass(make_cache, fused):
    mha = _mha(32, 4, 2, rope_theta=10000.0, fused=fused)
    x = torch.randn(2, 7, 32)
    full = mha(x)
    cache = ListCache() if make_cache == "list" else LayerKVCache(2, 2, 8, max_len=16)
    assert isinstance(cache, KVCacheLike)
    steps = [mha(x[:, :3], kv_cache=cache)]  # prefill a chunk of 3
    steps += [mha(x[:, t : t + 1], kv_cache=cache) for t in range(3, 7)]  # then one at a time
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_cache_with_left_padding():
    mha = _mha(16, 4, 2, rope_theta=10000.0)
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    positions = (pad.cumsum(-1) - 1).clamp_min(0)
    full = mha(x, attn_mask=pad, positions=positions)
    cache = ListCache()
    parts = [mha(x[:, :4], attn_mask=pad[:, :4], positions=positions[:, :4], kv_cache=cache)]
    for t in (4, 5):
        parts.append(
            mha(
                x[:, t : t + 1],
                attn_mask=pad[:, : t + 1],
                positions=positions[:, t : t + 1],
                kv_cache=cache,
            )
        )
    torch.testing.assert_close(torch.cat(parts, 1)[pad.bool()], full[pad.bool()], **TOL)


def test_fused_and_reference_agree_on_gradients():
    mha = _mha(16, 4, 2, rope_theta=10000.0)
    x = torch.randn(2, 5, 16)
    pad = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    grads = []
    for fused in (True, False):
        mha.fused = fused
        mha.zero_grad()
        mha(x, attn_mask=pad).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in mha.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_attention_dropout_only_in_training():
    mha = _mha(16, 4, dropout=0.5)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(mha(x), mha(x))  # eval: deterministic
    mha.train()
    torch.manual_seed(0)
    a = mha(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, mha(x))


def test_mha_errors():
    with pytest.raises(ValueError, match="d_model"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="n_heads"):
        MultiHeadAttention(32, 4, 3)
    with pytest.raises(ValueError, match="even head size"):
        MultiHeadAttention(12, 4, rope_theta=10000.0)
    with pytest.raises(ValueError, match="dropout"):
        MultiHeadAttention(16, 4, dropout=1.0)
    mha = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match="d_model=16"):
        mha(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="x must have 3"):
        mha(torch.randn(3, 16))
    with pytest.raises(ValueError, match="padding mask of shape"):
        mha(torch.randn(2, 3, 16), attn_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="padding mask"):
        mha(torch.randn(2, 3, 16), attn_mask=torch.ones(2, 3))
    with pytest.raises(TypeError, match="must be bool"):
        mha(torch.randn(2, 3, 16), attn_mask=torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="does not broadcast"):
        mha(torch.randn(2, 3, 16), attn_mask=torch.ones(2, 3, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="self-attention only"):
        mha(torch.randn(2, 3, 16), torch.randn(2, 4, 16), kv_cache=ListCache())
    with pytest.raises(ValueError, match="context must be"):
        mha(torch.randn(2, 3, 16), torch.randn(1, 4, 16))
    with pytest.raises(TypeError, match="kv_cache"):
        mha(torch.randn(2, 3, 16), kv_cache=object())


def test_rope_positions_are_given_one_way():
    # Issue 20: RoPE positions reach attention through `positions` only (the precomputed
    # `rope_cos_sin=` second way is gone); the default is cache length + arange(T).
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, n_kv_heads=2, rope_theta=10000.0).eval()
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(mha(x), mha(x, positions=torch.arange(6)), rtol=0, atol=0)
    with pytest.raises(TypeError, match="rope_cos_sin"):
        mha(x, rope_cos_sin=None)


# ----------------------------------------------------------------------------- large scores


def test_sdpa_half_precision_large_scores_do_not_overflow():
    # q . q reaches ~1e5 here, past float16's 65504: products must be taken in float32.
    torch.manual_seed(0)
    q = k = torch.randn(1, 2, 6, 64) * 40
    v = torch.randn(1, 2, 6, 64)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # float32
    for dtype in (torch.float16, torch.bfloat16):
        out = scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), is_causal=True)
        weights = attention_weights(q.to(dtype), k.to(dtype), is_causal=True)
        assert out.dtype == weights.dtype == dtype
        assert torch.isfinite(out).all() and torch.isfinite(weights).all()
        torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_mha_half_precision_large_activations_are_finite(fused):
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=64, n_heads=2, causal=True, fused=fused).half()
    with torch.no_grad():
        mha.q_proj.weight.mul_(100)
        mha.k_proj.weight.copy_(mha.q_proj.weight)  # q = k: scores q . q overflow float16
    x = torch.randn(1, 6, 64).half()
    out, weights = mha.forward_with_weights(x)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()


def test_softmax_subtracts_the_row_maximum():
    # exp(1000) overflows float32: without the max subtracted this gives NaN.
    q = torch.tensor([[[30.0, 0.0], [0.0, 30.0], [30.0, 30.0]]])
    k = torch.tensor([[[30.0, 0.0], [0.0, 30.0], [-30.0, 0.0]]])
    v = torch.randn(1, 3, 2)
    out = scaled_dot_product_attention(q, k, v, scale=1.0)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=1.0), **TOL)
    rows = attention_weights(q, k, scale=1.0)
    assert torch.isfinite(rows).all()
    torch.testing.assert_close(rows.sum(-1), torch.ones(1, 3), **TOL)


def test_mha_refuses_input_of_another_dtype_than_its_weights():
    mha = MultiHeadAttention(d_model=8, n_heads=2)
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the layer's weights are"):
        mha(torch.randn(1, 3, 8, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast mixes dtypes on purpose
        assert mha(torch.randn(1, 3, 8)).shape == (1, 3, 8)


def test_kv_cache_refuses_another_dtype():
    cache = LayerKVCache(batch_size=1, n_kv_heads=2, head_dim=4, max_len=8)
    with pytest.raises(TypeError, match="cache's dtype torch.float32"):
        cache.update(torch.randn(1, 2, 3, 4, dtype=torch.float64), torch.randn(1, 2, 3, 4, dtype=torch.float64))
