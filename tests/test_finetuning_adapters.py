"""Tests of finetuning/adapters.py: bottleneck adapters after attention and feed-forward."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from llmfoundations.finetuning.adapters import AdaptedLinear, BottleneckAdapter, apply_adapters
from llmfoundations.models import DecoderLM, EncoderMLM, ModelConfig

V = 50
SIZE = dict(d_model=32, n_layers=2, n_heads=4)


def _model(preset: str = "llama", cls=DecoderLM, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return cls(getattr(ModelConfig, preset)(V, **(SIZE | overrides))).eval()


def _randomise_up_projections(model: nn.Module, std: float = 0.05) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BottleneckAdapter):
                module.up.weight.normal_(0, std)
                module.up.bias.normal_(0, std)


@settings(max_examples=20, deadline=None)
@given(
    d=st.integers(1, 24),
    m=st.integers(1, 24),
    activation=st.sampled_from(["gelu", "relu"]),
    seed=st.integers(0, 2**16),
)
def test_adapter_is_the_identity_at_initialisation(d, m, activation, seed):
    m = min(m, d)
    torch.manual_seed(seed)
    adapter = BottleneckAdapter(d, m, activation)
    h = torch.randn(3, 4, d)
    assert torch.equal(adapter(h), h)


def test_adapter_formula_and_parameter_count():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(16, 4, "relu")
    _randomise_up_projections(adapter)
    h = torch.randn(5, 16)
    expected = h + F.relu(h @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T
    torch.testing.assert_close(adapter(h), expected + adapter.up.bias)
    assert sum(p.numel() for p in adapter.parameters()) == 2 * 16 * 4 + 4 + 16


def test_adapted_linear_applies_the_adapter_to_the_layers_output():
    torch.manual_seed(0)
    base = nn.Linear(24, 16)
    layer = AdaptedLinear(copy.deepcopy(base), bottleneck=4)
    _randomise_up_projections(layer)
    x = torch.randn(3, 24)
    torch.testing.assert_close(layer(x), layer.adapter(base(x)), atol=0, rtol=0)
    assert not any(p.requires_grad for p in layer.base.parameters())


@pytest.mark.parametrize("preset", ["llama", "gpt"])
def test_apply_adapters_keeps_the_model_and_trains_only_adapters(preset):
    model = _model(preset)
    reference = copy.deepcopy(model)
    names = apply_adapters(model, bottleneck=8)
    assert names == [
        f"blocks.{i}.{part}" for i in range(2) for part in ("attn.o_proj", "ffn.down_proj")
    ]
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)  # W_up = 0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 4 * (2 * 32 * 8 + 8 + 32)  # 2 blocks x 2 adapters
    _randomise_up_projections(model)
    model.train()
    model(ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        is_adapter = ".adapter." in name
        assert param.requires_grad == is_adapter, name
        assert (param.grad is not None) == is_adapter, name
    with torch.no_grad():
        assert not torch.allclose(model.eval()(ids).logits, reference(ids).logits)


def test_sublayers_and_norms_as_in_houlsby():
    model = _model("bert", cls=EncoderMLM)  # BERT: post-norm LayerNorms with biases
    names = apply_adapters(model, bottleneck=4, sublayers=("ffn",), train_norms=True)
    assert names == ["blocks.0.ffn.down_proj", "blocks.1.ffn.down_proj"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"blocks.0.norm1.weight", "blocks.0.norm1.bias", "embed_norm.weight"} <= trainable
    assert not any("attn" in n for n in trainable)
    assert all(".adapter." in n or "norm" in n for n in trainable)


def test_errors():
    with pytest.raises(ValueError, match=r"bottleneck \(M = 40\) must be <= d_model \(32\)"):
        BottleneckAdapter(32, 40)
    with pytest.raises(ValueError, match="bottleneck must be >= 1"):
        BottleneckAdapter(32, 0)
    with pytest.raises(ValueError, match="activation must be one of"):
        BottleneckAdapter(32, 4, "tanh")
    with pytest.raises(TypeError, match="base must be an nn.Linear"):
        AdaptedLinear(nn.Identity(), 4)
    layer = AdaptedLinear(nn.Linear(8, 8), 2)
    with pytest.raises(TypeError, match="x must have the layer's dtype torch.float32"):
        layer(torch.randn(2, 8, dtype=torch.float64))
    model = _model()
    with pytest.raises(ValueError, match=r"sublayers\[0\] must be one of \('attn', 'ffn'\)"):
        apply_adapters(model, 4, sublayers=("mlp",))
    with pytest.raises(TypeError, match="sublayers must be a non-empty tuple"):
        apply_adapters(model, 4, sublayers="attn")
    with pytest.raises(TypeError, match="train_norms must be a bool"):
        apply_adapters(model, 4, train_norms="yes")
    with pytest.raises(ValueError, match="no TransformerBlock"):
        apply_adapters(nn.Linear(4, 4), 2)
    with pytest.raises(ValueError, match=r"bottleneck \(M = 64\) must be <= d_model \(32\)"):
        apply_adapters(model, 64)
    moe = _model(ffn="moe", n_experts=4, top_k=2, d_ff=16)
    with pytest.raises(ValueError, match="feed-forward of blocks.0 is a MoELayer"):
        apply_adapters(moe, 4)
    assert len(apply_adapters(moe, 4, sublayers=("attn",))) == 2
    assert all(p.requires_grad for p in model.parameters())  # nothing changed so far
    apply_adapters(model, 4)
    with pytest.raises(TypeError, match="blocks.0.attn.o_proj already has an adapter"):
        apply_adapters(model, 4)
