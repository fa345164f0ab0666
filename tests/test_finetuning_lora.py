"""Tests of finetuning/lora.py: the LoRA layer, against peft, and its invariants."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from llmfoundations.finetuning.lora import (
    LoRALinear,
    apply_lora,
    load_lora_state_dict,
    lora_layers,
    lora_scaling,
    lora_state_dict,
)
from llmfoundations.models import DecoderLM, ModelConfig

V = 50


def _tiny_llama(seed: int = 0, **overrides) -> DecoderLM:
    torch.manual_seed(seed)
    config = ModelConfig.llama(V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, **overrides)
    return DecoderLM(config).eval()


def _randomise_adapters(model_or_layer: nn.Module, seed: int = 1, std: float = 0.02) -> None:
    """B = 0 hides every bug; give B (and A) realistic non-zero values."""
    generator = torch.Generator().manual_seed(seed)
    layers = (
        [model_or_layer]
        if isinstance(model_or_layer, LoRALinear)
        else lora_layers(model_or_layer).values()
    )
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.copy_(std * torch.randn(layer.lora_B.shape, generator=generator))


class _Holder(nn.Module):
    """One linear layer inside a module, so peft can target it by name."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.proj = linear

    def forward(self, x):
        return self.proj(x)


def _peft_twin(ours: LoRALinear, base: nn.Linear):
    """peft's lora.Linear over a copy of ``base`` holding exactly our A and B."""
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(
        r=ours.r,
        lora_alpha=ours.alpha,
        target_modules=["proj"],
        init_lora_weights=False,
        use_rslora=ours.rslora,
    )
    layer = peft.get_peft_model(_Holder(copy.deepcopy(base)), config).base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
    return layer


# ----------------------------------------------------------------------------- the layer


def test_scaling_standard_and_rslora():
    assert lora_scaling(8, 16) == 2.0
    assert lora_scaling(16, 16, rslora=True) == 4.0
    layer = LoRALinear(nn.Linear(12, 10), r=4, alpha=8, rslora=True)
    assert layer.scaling == 4.0 and "rslora=True" in repr(layer)


def test_init_a_like_nn_linear_b_zero_and_shapes():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 48), r=8, alpha=16)
    assert layer.lora_A.shape == (8, 64) and layer.lora_B.shape == (48, 8)
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / 64**0.5  # kaiming_uniform_(a=sqrt(5)) on fan_in = 64, as nn.Linear
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.9 * bound
    assert not any(p.requires_grad for p in layer.base.parameters())
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


@settings(max_examples=25, deadline=None)
@given(
    c_in=st.integers(1, 12),
    c_out=st.integers(1, 12),
    r=st.integers(1, 12),
    alpha=st.floats(0.5, 64),
    rslora=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_b_zero_is_the_identity(c_in, c_out, r, alpha, rslora, bias, seed):
    r = min(r, c_in, c_out)
    torch.manual_seed(seed)
    base = nn.Linear(c_in, c_out, bias=bias)
    layer = LoRALinear(base, r, alpha, rslora=rslora)
    x = torch.randn(3, 2, c_in)
    assert torch.equal(layer(x), base(x))
    assert torch.count_nonzero(layer.delta_weight()) == 0


@settings(max_examples=25, deadline=None)
@given(
    c_in=st.integers(2, 24),
    c_out=st.integers(2, 24),
    r=st.integers(1, 8),
    rslora=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_merge_then_unmerge_is_the_identity(c_in, c_out, r, rslora, seed):
    r = min(r, c_in, c_out)
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(c_in, c_out), r, alpha=2 * r, rslora=rslora)
    _randomise_adapters(layer, seed=seed)
    w0 = layer.base.weight.detach().clone()
    x = torch.randn(4, c_in)
    unmerged = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.base.weight, w0 + layer.delta_weight(), atol=0, rtol=0)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5)


def test_trainable_parameters_are_r_times_in_plus_out():
    layer = LoRALinear(nn.Linear(576, 192), r=8, alpha=16)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert trainable == 8 * (576 + 192)


def test_dropout_touches_the_low_rank_path_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 16), r=4, alpha=8, dropout=0.5).train()
    x = torch.randn(8, 16)
    assert torch.equal(layer(x), layer.base(x))  # B = 0: dropout has nothing to drop
    _randomise_adapters(layer)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x), atol=0, rtol=0)  # no dropout in eval
    expected = layer.base(x) + x @ layer.delta_weight().T
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- vs peft


@pytest.mark.parametrize("rslora", [False, True])
def test_layer_equals_peft_lora_linear(rslora):
    torch.manual_seed(0)
    base = nn.Linear(96, 64)
    ours = LoRALinear(copy.deepcopy(base), r=8, alpha=16, rslora=rslora)
    _randomise_adapters(ours)
    theirs = _peft_twin(ours, base)
    assert theirs.scaling["default"] == ours.scaling
    x = torch.randn(3, 5, 96)
    w0 = base.weight.detach().clone()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(
            ours.delta_weight(), theirs.get_delta_weight("default"), atol=1e-6, rtol=0
        )
        ours.merge()
        theirs.merge(safe_merge=True)
        torch.testing.assert_close(ours.base.weight, theirs.base_layer.weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=0)
        ours.unmerge()
        theirs.unmerge()
        torch.testing.assert_close(ours.base.weight, w0, atol=1e-6, rtol=0)
        torch.testing.assert_close(theirs.base_layer.weight, w0, atol=1e-6, rtol=0)


def test_model_equals_peft_on_the_same_decoder():
    """peft accepts any nn.Module given target_modules: same targets, same A and B."""
    peft = pytest.importorskip("peft")
    model = _tiny_llama()
    reference = peft.get_peft_model(
        copy.deepcopy(model),
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj"],
            init_lora_weights=False,
        ),
    )
    names = apply_lora(model, ["q_proj", "v_proj", "down_proj"], r=4, alpha=8)
    assert len(names) == 6
    _randomise_adapters(model)
    theirs = dict(reference.named_parameters())
    with torch.no_grad():
        for key, value in lora_state_dict(model).items():
            layer, which = key.rsplit(".", 1)
            theirs[f"base_model.model.{layer}.{which}.default.weight"].copy_(value)
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-6, rtol=0)
    ours_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert ours_trainable == reference.get_nb_trainable_parameters()[0]
    assert ours_trainable == 2 * 4 * (32 + 32) + 2 * 4 * (32 + 16) + 2 * 4 * (
        model.config.ffn_dim + 32
    )


# ----------------------------------------------------------------------------- models


def test_apply_lora_freezes_everything_else_and_only_adapters_get_gradients():
    model = _tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], r=4, alpha=8)
    _randomise_adapters(model)
    ids = torch.randint(0, V, (2, 8))
    model.train()
    model(ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        is_adapter = name.endswith(("lora_A", "lora_B"))
        assert param.requires_grad == is_adapter, name
        assert (param.grad is not None) == is_adapter, name
        if is_adapter:
            assert param.grad.abs().sum() > 0, name
    # the frozen weights kept their values (moved under .base)
    for name, param in model.named_parameters():
        if not name.endswith(("lora_A", "lora_B")):
            assert torch.equal(param, before[name.replace(".base.", ".")]), name


def test_merged_model_gives_the_same_logits():
    model = _tiny_llama()
    apply_lora(model, ["q_proj", "v_proj", "up_proj"], r=4, alpha=8, rslora=True)
    _randomise_adapters(model, std=0.1)
    ids = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        unmerged = model(ids).logits
        for layer in lora_layers(model).values():
            layer.merge()
        torch.testing.assert_close(model(ids).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_state_dict_round_trip_into_a_fresh_model():
    model = _tiny_llama()
    apply_lora(model, ["q_proj", "v_proj"], r=2, alpha=4)
    _randomise_adapters(model, std=0.1)
    state = lora_state_dict(model)
    assert set(state) == {
        f"blocks.{i}.attn.{p}.lora_{m}"
        for i in range(2)
        for p in ("q_proj", "v_proj")
        for m in "AB"
    }
    # q_proj is 32 -> 32, v_proj 32 -> 16 (two key/value heads of 8)
    assert sum(v.numel() for v in state.values()) == 2 * 2 * ((32 + 32) + (32 + 16))
    fresh = _tiny_llama()
    apply_lora(fresh, ["q_proj", "v_proj"], r=2, alpha=4)
    ids = torch.randint(0, V, (1, 6))
    assert not torch.allclose(fresh(ids).logits, model(ids).logits)
    load_lora_state_dict(fresh, state)
    torch.testing.assert_close(fresh(ids).logits, model(ids).logits, atol=0, rtol=0)
    state["blocks.0.attn.q_proj.lora_A"].zero_()  # a copy: the model is not affected
    assert lora_layers(model)["blocks.0.attn.q_proj"].lora_A.abs().sum() > 0


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(r=0), ValueError, "r must be >= 1"),
        (dict(r=2.0), TypeError, "r must be an int"),
        (dict(r=True), TypeError, "r must be an int"),
        (dict(r=17), ValueError, r"r \(17\) must be <= min\(in_features, out_features\) = 16"),
        (dict(alpha=0), ValueError, "alpha must be > 0"),
        (dict(alpha="8"), TypeError, "alpha must be a number"),
        (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
        (dict(dropout=-0.1), ValueError, "dropout must be >= 0"),
        (dict(rslora=1), TypeError, "rslora must be a bool"),
    ],
)
def test_layer_argument_errors(kwargs, error, match):
    args = dict(r=4, alpha=8.0) | kwargs
    with pytest.raises(error, match=match):
        LoRALinear(nn.Linear(16, 24), **args)


def test_layer_base_and_dtype_errors():
    with pytest.raises(TypeError, match="base must be an nn.Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(4, 4, 1), r=2, alpha=4)
    layer = LoRALinear(nn.Linear(8, 8), r=2, alpha=4)
    with pytest.raises(
        TypeError, match="x must have the layer's dtype torch.float32, got torch.float64"
    ):
        layer(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must have the layer's dtype"):
        layer(torch.ones(2, 8, dtype=torch.long))
    half = LoRALinear(nn.Linear(8, 8).to(torch.bfloat16), r=2, alpha=4)
    assert half.lora_A.dtype == torch.bfloat16
    assert half.delta_weight().dtype == torch.float32  # computed in float32


def test_merge_state_errors_and_safe_merge():
    layer = LoRALinear(nn.Linear(8, 8), r=2, alpha=4)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    layer.unmerge()
    w0 = layer.base.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinity"):
        layer.merge()
    assert torch.equal(layer.base.weight, w0) and not layer.merged


def test_apply_lora_target_errors_change_nothing():
    model = _tiny_llama()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"no module named 'qproj'.*'q_proj'"):
        apply_lora(model, ["q_proj", "qproj"], r=2, alpha=4)
    with pytest.raises(TypeError, match="blocks.0.attn is a MultiHeadAttention, not an nn.Linear"):
        apply_lora(model, ["attn"], r=2, alpha=4)
    with pytest.raises(TypeError, match="target_modules must be a list or tuple"):
        apply_lora(model, "q_proj", r=2, alpha=4)
    with pytest.raises(ValueError, match="at least one"):
        apply_lora(model, [], r=2, alpha=4)
    with pytest.raises(TypeError, match=r"target_modules\[0\] must be a non-empty str"):
        apply_lora(model, [3], r=2, alpha=4)
    with pytest.raises(ValueError, match="lm_head.weight is tied to embed.weight"):
        apply_lora(model, ["lm_head"], r=2, alpha=4)
    with pytest.raises(ValueError, match=r"r \(20\) must be <= .* = 16 for blocks.0.attn.k_proj"):
        apply_lora(
            model, ["q_proj", "k_proj"], r=20, alpha=4
        )  # q_proj is 32 -> 32, k_proj 32 -> 16
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        apply_lora("model", ["q_proj"], r=2, alpha=4)
    assert all(p.requires_grad for p in model.parameters())  # nothing was frozen
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    apply_lora(model, ["q_proj"], r=2, alpha=4)
    with pytest.raises(TypeError, match="blocks.0.attn.q_proj already has a LoRA adapter"):
        apply_lora(model, ["q_proj"], r=2, alpha=4)


def test_state_dict_errors():
    model = _tiny_llama()
    with pytest.raises(ValueError, match="no LoRA layers; call apply_lora first"):
        lora_state_dict(model)
    apply_lora(model, ["q_proj"], r=2, alpha=4)
    state = lora_state_dict(model)
    with pytest.raises(TypeError, match="state must be a dict"):
        load_lora_state_dict(model, list(state.values()))
    with pytest.raises(ValueError, match=r"missing \['blocks.0.attn.q_proj.lora_A'\]"):
        load_lora_state_dict(
            model, {k: v for k, v in state.items() if not k.endswith("0.attn.q_proj.lora_A")}
        )
    with pytest.raises(ValueError, match="unexpected"):
        load_lora_state_dict(model, state | {"extra.lora_A": torch.zeros(1)})
    key = "blocks.1.attn.q_proj.lora_B"
    with pytest.raises(ValueError, match=r"has shape \(32, 3\), the model's is \(32, 2\)"):
        load_lora_state_dict(model, state | {key: torch.zeros(32, 3)})
    with pytest.raises(TypeError, match="must be a floating-point tensor, got torch.int64"):
        load_lora_state_dict(model, state | {key: torch.zeros(32, 2, dtype=torch.long)})
    lora_layers(model)["blocks.1.attn.q_proj"].merge()
    with pytest.raises(ValueError, match="blocks.1.attn.q_proj is merged"):
        load_lora_state_dict(model, state)
