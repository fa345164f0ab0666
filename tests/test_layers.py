"""Tests of layers.py: norms, feed-forward networks and the Transformer block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.kv_cache import LayerKVCache
from llmfoundations.layers import (
    FeedForward,
    LayerNorm,
    RMSNorm,
    SwiGLU,
    TransformerBlock,
    default_d_ff,
    layer_norm,
    make_norm,
    rms_norm,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (norm scales and biases included) non-trivial values."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(
                torch.randn_like(p) * (0.3 if p.ndim > 1 else 1.0) + (1.0 if p.ndim == 1 else 0)
            )
    return module.eval()


# ----------------------------------------------------------------------------- norms


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_matches_torch(bias):
    norm = _randomize(LayerNorm(12, eps=1e-6, bias=bias))
    ref = torch.nn.LayerNorm(12, eps=1e-6, bias=bias)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(3, 5, 12) * 4 + 2
    torch.testing.assert_close(norm(x), ref(x), **TOL)
    torch.testing.assert_close(layer_norm(x, norm.weight, norm.bias, 1e-6), ref(x), **TOL)


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(2, 32),
    shift=st.floats(-50, 50),
    scale=st.floats(0.1, 20),
    seed=st.integers(0, 999),
)
def test_layer_norm_output_has_zero_mean_unit_variance(d, shift, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, d, generator=gen, dtype=torch.float64) * scale + shift
    y = layer_norm(x, None, None, eps=0.0)
    torch.testing.assert_close(y.mean(-1), torch.zeros(4, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(
        y.var(-1, unbiased=False), torch.ones(4, dtype=torch.float64), atol=1e-9, rtol=0
    )


def test_rms_norm_matches_llama_and_torch():
    modeling = pytest.importorskip("transformers.models.llama.modeling_llama")
    norm = _randomize(RMSNorm(16, eps=1e-5))
    ref = modeling.LlamaRMSNorm(16, eps=1e-5)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(2, 7, 16) * 3
    torch.testing.assert_close(norm(x), ref(x), **TOL)
    torch_norm = torch.nn.RMSNorm(16, eps=1e-5)
    torch_norm.load_state_dict(norm.state_dict())
    torch.testing.assert_close(norm(x), torch_norm(x), **TOL)
    # bf16 activations: same float32 computation and the same rounding point as Llama
    xb = x.bfloat16()
    torch.testing.assert_close(norm(xb), ref(xb), atol=0, rtol=0)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 32), factor=st.floats(0.01, 100), seed=st.integers(0, 999))
def test_rms_norm_is_scale_invariant_with_unit_rms(d, factor, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, d, generator=gen, dtype=torch.float64) + 0.1
    y = rms_norm(x, None, eps=0.0)
    torch.testing.assert_close(y.pow(2).mean(-1).sqrt(), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(rms_norm(factor * x, None, eps=0.0), y)


def test_make_norm_and_norm_errors():
    assert isinstance(make_norm("layernorm", 4), LayerNorm)
    assert isinstance(make_norm("rmsnorm", 4), RMSNorm)
    assert isinstance(make_norm("none", 4), torch.nn.Identity)
    with pytest.raises(ValueError, match="norm"):
        make_norm("batchnorm", 4)
    with pytest.raises(ValueError, match="last dimension 4"):
        RMSNorm(4)(torch.randn(2, 5))
    with pytest.raises(TypeError, match="floating"):
        LayerNorm(4)(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="eps"):
        RMSNorm(4, eps=-1e-5)


# ----------------------------------------------------------------------------- FFNs


@pytest.mark.parametrize(
    "activation, fn",
    [
        ("relu", torch.relu),
        ("gelu", lambda h: 0.5 * h * (1 + torch.erf(h / 2**0.5))),
        (
            "gelu_tanh",
            lambda h: 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h**3))),
        ),
    ],
)
def test_feed_forward_matches_formula(activation, fn):
    ffn = _randomize(FeedForward(8, 32, activation=activation))
    x = torch.randn(2, 3, 8)
    expected = (
        fn(x @ ffn.up_proj.weight.T + ffn.up_proj.bias)
    ) @ ffn.down_proj.weight.T + ffn.down_proj.bias
    torch.testing.assert_close(ffn(x), expected, **TOL)


def test_gelu_tanh_matches_gpt2_activation():
    activations = pytest.importorskip("transformers.activations")
    ffn = FeedForward(4, 4, activation="gelu_tanh")
    h = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(ffn.act(h), activations.ACT2FN["gelu_new"](h), **TOL)


def test_swiglu_matches_llama_mlp():
    modeling = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    ours = _randomize(SwiGLU(16, 40))
    ref = modeling.LlamaMLP(
        LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=2, mlp_bias=False)
    )
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(x), ref(x), **TOL)


def test_default_d_ff():
    assert default_d_ff(64, "gelu") == 256
    assert default_d_ff(64, "swiglu") == 176  # 8/3 * 64 = 170.7, rounded up to a multiple of 8
    assert default_d_ff(576, "swiglu") == 1536  # SmolLM2-135M's width
    with pytest.raises(ValueError, match="ffn"):
        default_d_ff(64, "tanh")


def test_ffn_errors():
    with pytest.raises(ValueError, match="activation"):
        FeedForward(4, 8, activation="swish")
    with pytest.raises(ValueError, match="d_ff"):
        SwiGLU(4, 0)
    with pytest.raises(ValueError, match="last dimension 4"):
        SwiGLU(4, 8)(torch.randn(2, 3))


# ----------------------------------------------------------------------------- block


def _block(**kwargs) -> TransformerBlock:
    args = dict(d_model=16, n_heads=4, n_kv_heads=2, d_ff=24) | kwargs
    return _randomize(TransformerBlock(**args), seed=1)


def test_block_submodule_names():
    block = TransformerBlock(16, 4, cross_attention=True, norm="layernorm", ffn="gelu")
    names = {name for name, _ in block.named_children()}
    assert {"attn", "norm1", "cross_attn", "norm_cross", "ffn", "norm2"} <= names
    assert isinstance(block.ffn, FeedForward) and block.ffn.d_ff == 64
    assert isinstance(TransformerBlock(16, 4).ffn, SwiGLU)


@pytest.mark.parametrize("residual", [True, False])
def test_pre_norm_wiring(residual):
    block = _block(norm_position="pre", residual=residual, rope_theta=100.0)
    x = torch.randn(2, 5, 16)
    h = block.attn(block.norm1(x)) + (x if residual else 0)
    expected = block.ffn(block.norm2(h)) + (h if residual else 0)
    torch.testing.assert_close(block(x).hidden, expected, **TOL)


@pytest.mark.parametrize("residual", [True, False])
def test_post_norm_wiring(residual):
    block = _block(norm_position="post", norm="layernorm", ffn="relu", bias=True, residual=residual)
    x = torch.randn(2, 5, 16)
    h = block.norm1(block.attn(x) + (x if residual else 0))
    expected = block.norm2(block.ffn(h) + (h if residual else 0))
    torch.testing.assert_close(block(x).hidden, expected, **TOL)


def test_no_norm_block_is_plain_residual_sum():
    block = _block(norm="none")
    x = torch.randn(2, 5, 16)
    h = x + block.attn(x)
    torch.testing.assert_close(block(x).hidden, h + block.ffn(h), **TOL)


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_cross_attention_block_wiring(norm_position):
    block = _block(cross_attention=True, norm_position=norm_position)
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    ctx_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    if norm_position == "pre":
        h = x + block.attn(block.norm1(x))
        h = h + block.cross_attn(block.norm_cross(h), ctx, attn_mask=ctx_mask)
        expected = h + block.ffn(block.norm2(h))
    else:
        h = block.norm1(x + block.attn(x))
        h = block.norm_cross(h + block.cross_attn(h, ctx, attn_mask=ctx_mask))
        expected = block.norm2(h + block.ffn(h))
    torch.testing.assert_close(block(x, ctx, context_mask=ctx_mask).hidden, expected, **TOL)


def test_block_passes_mask_positions_cache_and_weights():
    block = _block(rope_theta=10000.0)
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    positions = (pad.cumsum(-1) - 1).clamp_min(0)
    out = block(x, attn_mask=pad, positions=positions, need_weights=True)
    full, weights = out.hidden, out.attn_weights
    assert block(x, attn_mask=pad, positions=positions).attn_weights is None
    assert weights.shape == (2, 4, 6, 6)
    assert torch.equal(weights[0, :, 1:, 0], torch.zeros(4, 5))  # nobody attends to padding
    cache = LayerKVCache(2, 2, 4, max_len=8)
    first = block(x[:, :4], attn_mask=pad[:, :4], positions=positions[:, :4], kv_cache=cache).hidden
    rest = block(x[:, 4:], attn_mask=pad, positions=positions[:, 4:], kv_cache=cache).hidden
    torch.testing.assert_close(torch.cat([first, rest], 1)[pad.bool()], full[pad.bool()], **TOL)


def test_block_dropout_only_in_training():
    block = _block(dropout=0.3)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(block(x).hidden, block(x).hidden)
    block.train()
    torch.manual_seed(0)
    a = block(x).hidden
    torch.manual_seed(1)
    assert not torch.allclose(a, block(x).hidden)


def test_block_with_moe_feed_forward():
    moe = pytest.importorskip("llmfoundations.moe")
    block = TransformerBlock(16, 4, ffn="moe", d_ff=32, n_experts=4, top_k=2)
    assert isinstance(block.ffn, moe.MoELayer)
    x = torch.randn(2, 5, 16)
    out = block(x)
    assert out.hidden.shape == (2, 5, 16) and isinstance(out.moe, moe.MoEOutput)
    assert out.moe.aux_loss.ndim == 0 and torch.isfinite(out.moe.aux_loss)
    h = x + block.attn(block.norm1(x))
    torch.testing.assert_close(out.hidden, h + block.ffn(block.norm2(h)).output, **TOL)
    assert not any(isinstance(v, torch.Tensor) for v in vars(block.ffn).values())  # no state
    assert _block().forward(x).moe is None  # a dense block


def test_block_errors():
    with pytest.raises(ValueError, match="norm_position"):
        TransformerBlock(16, 4, norm_position="middle")
    with pytest.raises(ValueError, match="ffn"):
        TransformerBlock(16, 4, ffn="mlp")
    with pytest.raises(ValueError, match="norm"):
        TransformerBlock(16, 4, norm="batchnorm")
    block = TransformerBlock(16, 4)
    with pytest.raises(ValueError, match="context must be given exactly"):
        block(torch.randn(2, 3, 16), torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="context must be given exactly"):
        TransformerBlock(16, 4, cross_attention=True)(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="x must have 3"):
        block(torch.randn(3, 16))


def test_swiglu_relu_gelu_blocks_are_trainable():
    for ffn in ("swiglu", "gelu", "relu", "gelu_tanh"):
        block = TransformerBlock(16, 4, ffn=ffn)
        block(torch.randn(2, 3, 16)).hidden.sum().backward()
        assert all(p.grad is not None for p in block.parameters())


def test_layer_norm_reference_low_precision():
    x = torch.randn(4, 8).bfloat16()
    w, b = torch.ones(8), torch.zeros(8)
    out = layer_norm(x, w, b)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(
        out.float(), F.layer_norm(x.float(), (8,), w, b), atol=2e-2, rtol=2e-2
    )
