"""Tests of models.py: configs, the three model families, and logits equal to transformers'."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.kv_cache import KVCache
from llmfoundations.models import (
    IGNORE_INDEX,
    DecoderLM,
    EncoderDecoder,
    EncoderMLM,
    LMOutput,
    ModelConfig,
)
from llmfoundations.positional import sinusoidal_encoding

TOL = dict(atol=1e-5, rtol=1e-5)
V = 61


def _model(config: ModelConfig, cls=DecoderLM, seed: int = 0):
    torch.manual_seed(seed)
    return cls(config).eval()


def _perturb(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Make norm scales and biases non-trivial so comparisons exercise them."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


SIZE = dict(d_model=32, n_layers=2, n_heads=4)
PRESETS = {
    "gpt": lambda **kw: ModelConfig.gpt(V, **(SIZE | dict(max_seq_len=32) | kw)),
    "llama": lambda **kw: ModelConfig.llama(V, **(SIZE | dict(n_kv_heads=2) | kw)),
    "original": lambda **kw: ModelConfig.original(V, **(SIZE | kw)),
}


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_resolution():
    config = ModelConfig(vocab_size=100)
    assert config.kv_heads == config.n_heads and config.n_kv_heads is None
    assert config.ffn_dim == 4 * config.d_model
    llama = ModelConfig.llama(100, d_model=48, n_heads=6, n_kv_heads=3)
    assert (llama.norm, llama.ffn, llama.positional, llama.bias) == (
        "rmsnorm",
        "swiglu",
        "rope",
        False,
    )
    assert llama.ffn_dim == 128 and llama.head_dim == 8 and llama.kv_heads == 3
    # resolved values follow dataclasses.replace
    assert dataclasses.replace(llama, ffn="gelu").ffn_dim == 4 * 48
    bert = ModelConfig.bert(100)
    assert bert.norm_position == "post" and bert.n_segments == 2
    original = ModelConfig.original(100)
    assert original.positional == "sinusoidal" and original.scale_embeddings
    assert ModelConfig.gpt(100, ffn="relu").ffn == "relu"  # presets accept overrides


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_model=30, n_heads=4), "d_model"),
        (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),
        (dict(ffn="tanh"), "ffn"),
        (dict(positional="alibi"), "positional"),
        (dict(norm="batchnorm"), "norm"),
        (dict(norm_position="sandwich"), "norm_position"),
        (dict(dropout=1.0), "dropout"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(d_model=24, n_heads=8, positional="rope"), "even head size"),
        (dict(ffn="moe", n_experts=2, top_k=3), "top_k"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(n_segments=-1), "n_segments"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**({"vocab_size": 10} | kwargs))


def test_config_type_errors():
    with pytest.raises(TypeError, match="d_model"):
        ModelConfig(vocab_size=10, d_model=32.0)
    with pytest.raises(TypeError, match="bias"):
        ModelConfig(vocab_size=10, bias=1)
    with pytest.raises(TypeError, match="config"):
        DecoderLM({"vocab_size": 10})


# ----------------------------------------------------------------------------- decoder


@pytest.mark.parametrize("preset", list(PRESETS))
def test_decoder_shapes_and_outputs(preset):
    model = _model(PRESETS[preset]())
    ids = torch.randint(0, V, (3, 9))
    out = model(ids, output_attentions=True)
    assert isinstance(out, LMOutput)
    assert out.logits.shape == (3, 9, V) and out.hidden_states.shape == (3, 9, 32)
    assert out.loss is None and out.aux_loss is None
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 4, 9, 9)
    torch.testing.assert_close(out.logits, model(ids).logits, **TOL)  # weights path == fused


@settings(max_examples=12, deadline=None)
@given(
    preset=st.sampled_from(list(PRESETS)),
    t=st.integers(2, 10),
    cut=st.integers(1, 9),
    seed=st.integers(0, 99),
)
def test_decoder_is_causal(preset, t, cut, seed):
    cut = min(cut, t - 1)
    model = _model(PRESETS[preset](), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2, t), generator=gen)
    changed = ids.clone()
    changed[:, cut:] = torch.randint(0, V, (2, t - cut), generator=gen)
    torch.testing.assert_close(model(ids).logits[:, :cut], model(changed).logits[:, :cut], **TOL)


def _closed_form_count(c: ModelConfig) -> int:
    """Parameter count of a DecoderLM written out from the architecture."""
    d, h, hkv, f, v, n = c.head_dim, c.n_heads, c.kv_heads, c.ffn_dim, c.vocab_size, c.n_layers
    b = int(c.bias)
    attention = c.d_model * (h * d) + 2 * c.d_model * (hkv * d) + (h * d) * c.d_model
    attention += b * (h * d + 2 * hkv * d + c.d_model)
    if c.ffn == "swiglu":
        ffn = 3 * c.d_model * f + b * (2 * f + c.d_model)
    else:
        ffn = 2 * c.d_model * f + b * (f + c.d_model)
    norm = {"layernorm": c.d_model * (1 + b), "rmsnorm": c.d_model, "none": 0}[c.norm]
    embeddings = v * c.d_model + (c.max_seq_len * c.d_model if c.positional == "learned" else 0)
    final_norm = norm if c.norm_position == "pre" else 0
    lm_head = 0 if c.tie_embeddings else v * c.d_model
    return embeddings + n * (attention + ffn + 2 * norm) + final_norm + lm_head


@pytest.mark.parametrize(
    "config",
    [
        PRESETS["gpt"](),
        PRESETS["llama"](),
        PRESETS["llama"](tie_embeddings=False, n_kv_heads=1, d_ff=40),
        PRESETS["original"](norm_position="pre"),
        ModelConfig(vocab_size=V, norm="none", ffn="relu", positional="none", bias=False),
    ],
)
def test_parameter_counts_closed_form(config):
    model = DecoderLM(config)
    unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert model.num_parameters() == unique == _closed_form_count(config)
    counts = model.parameter_counts()
    assert sum(counts.values()) == unique
    assert counts["lm_head"] == (0 if config.tie_embeddings else V * config.d_model)
    assert model.num_parameters(exclude_embeddings=True) == unique - counts["embeddings"]


def test_tied_embeddings_are_one_tensor():
    tied = _model(PRESETS["llama"]())
    assert tied.lm_head.weight is tied.embed.weight
    with torch.no_grad():
        tied.embed.weight[3] += 1.0
    torch.testing.assert_close(tied.lm_head.weight[3], tied.embed.weight[3])
    out = tied(torch.randint(0, V, (2, 5)))
    out.logits.sum().backward()
    assert tied.embed.weight.grad is tied.lm_head.weight.grad
    untied = _model(PRESETS["llama"](tie_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.embed.weight.data_ptr()


def test_loss_is_shifted_cross_entropy():
    model = _model(PRESETS["llama"]())
    ids = torch.randint(0, V, (2, 7))
    labels = ids.clone()
    labels[0, :3] = IGNORE_INDEX  # e.g. prompt tokens
    out = model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected, **TOL)
    # nothing to learn: 0, not NaN
    nothing = model(ids, labels=torch.full_like(ids, IGNORE_INDEX)).loss
    assert nothing.item() == 0.0


@pytest.mark.parametrize("preset", list(PRESETS))
def test_left_padded_batch_equals_rows_alone(preset):
    model = _perturb(_model(PRESETS[preset]()))
    long_row = torch.randint(0, V, (1, 8))
    short_row = torch.randint(0, V, (1, 5))
    pad_id = 0
    batch = torch.cat([long_row, torch.cat([torch.full((1, 3), pad_id), short_row], 1)])
    mask = torch.tensor([[1] * 8, [0, 0, 0] + [1] * 5])
    logits = model(batch, attention_mask=mask).logits
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[0], model(long_row).logits[0], **TOL)
    torch.testing.assert_close(logits[1, 3:], model(short_row).logits[0], **TOL)


def test_positions_default_and_explicit():
    model = _model(PRESETS["gpt"]())
    ids = torch.randint(0, V, (2, 6))
    default = model(ids).logits
    torch.testing.assert_close(model(ids, positions=torch.arange(6)).logits, default)
    torch.testing.assert_close(model(ids, positions=torch.arange(6).expand(2, 6)).logits, default)
    shifted = model(ids, positions=torch.arange(3, 9)).logits
    assert not torch.allclose(shifted, default)  # learned positions matter


def test_learned_positions_have_a_hard_limit_but_sinusoidal_extrapolates():
    gpt = _model(PRESETS["gpt"]())  # max_seq_len=32
    with pytest.raises(ValueError, match="max_seq_len=32"):
        gpt(torch.randint(0, V, (1, 33)))
    config = PRESETS["original"](max_seq_len=8)
    model = _model(config)
    ids = torch.randint(0, V, (1, 12))
    logits = model(ids).logits  # positions 8..11 come from the formula
    assert torch.isfinite(logits).all()
    emb = model.embed(ids) * config.d_model**0.5 + sinusoidal_encoding(12, config.d_model)
    torch.testing.assert_close(model._embed(model.embed(ids), torch.arange(12)), emb, **TOL)


def test_decoder_input_errors():
    model = _model(PRESETS["llama"]())
    ids = torch.randint(0, V, (2, 5))
    with pytest.raises(TypeError, match="input_ids"):
        model(ids.float())
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 3), V))
    with pytest.raises(ValueError, match="input_ids must have 2"):
        model(ids[0])
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="labels"):
        model(ids, labels=ids[:, :3])
    with pytest.raises(ValueError, match="labels"):
        model(ids, labels=torch.full_like(ids, V))
    with pytest.raises(ValueError, match="positions"):
        model(ids, positions=torch.arange(4))
    with pytest.raises(TypeError, match="kv_cache"):
        model(ids, kv_cache=[])


@pytest.mark.parametrize("preset", list(PRESETS))
def test_inputs_embeds_equal_the_looked_up_ids(preset):
    """``inputs_embeds=embed(ids)`` is the same forward pass: scale, positions and all."""
    model = _perturb(_model(PRESETS[preset]()))
    ids = torch.randint(0, V, (2, 7))
    labels = ids.clone()
    labels[:, :2] = IGNORE_INDEX
    mask = torch.tensor([[1] * 7, [0, 0] + [1] * 5])
    with torch.no_grad():
        by_ids = model(ids, attention_mask=mask, labels=labels)
        by_embeds = model(inputs_embeds=model.embed(ids), attention_mask=mask, labels=labels)
    torch.testing.assert_close(by_embeds.logits, by_ids.logits, atol=0, rtol=0)
    torch.testing.assert_close(by_embeds.loss, by_ids.loss, atol=0, rtol=0)


def test_inputs_embeds_prefill_then_ids_with_a_cache_equals_one_pass():
    from llmfoundations.kv_cache import KVCache

    model = _perturb(_model(PRESETS["llama"]()))
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache.for_model(model, 2, 9)
        first = model(inputs_embeds=model.embed(ids[:, :6]), kv_cache=cache).logits
        rest = model(ids[:, 6:], kv_cache=cache).logits
    torch.testing.assert_close(torch.cat([first, rest], 1), full, **TOL)


def test_inputs_embeds_receive_gradients():
    model = _model(PRESETS["gpt"]())
    embeds = torch.randn(1, 5, model.config.d_model, requires_grad=True)
    model(inputs_embeds=embeds).logits.sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0


def test_inputs_embeds_errors():
    model = _model(PRESETS["llama"]())
    ids = torch.randint(0, V, (2, 5))
    embeds = model.embed(ids)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds, got both"):
        model(ids, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="got neither"):
        model()
    with pytest.raises(ValueError, match="inputs_embeds must be"):
        model(inputs_embeds=embeds[..., :-1])
    with pytest.raises(ValueError, match="inputs_embeds must have 3"):
        model(inputs_embeds=embeds[0])
    with pytest.raises(TypeError, match="inputs_embeds"):
        model(inputs_embeds=ids[..., None].expand(2, 5, model.config.d_model))
    with pytest.raises(ValueError, match="labels"):
        model(inputs_embeds=embeds, labels=ids[:, :3])


def test_moe_decoder_reports_aux_loss():
    pytest.importorskip("llmfoundations.moe")
    config = PRESETS["llama"](ffn="moe", n_experts=4, top_k=2, d_ff=32)
    model = _model(config)
    ids = torch.randint(0, V, (2, 6))
    out = model(ids, labels=ids)
    assert out.aux_loss is not None and out.aux_loss.ndim == 0
    from llmfoundations.moe import load_balancing_loss

    assert len(out.moe) == config.n_layers
    expected = sum(load_balancing_loss(m.router_logits, 2) for m in out.moe)
    torch.testing.assert_close(out.aux_loss, expected)
    assert model(ids).moe is not None and _model(PRESETS["llama"]())(ids).moe is None
    (out.loss + 0.01 * out.aux_loss).backward()
    assert model.parameter_counts()["ffn"] > 0


# ----------------------------------------------------------------------------- vs transformers


@pytest.mark.parametrize("tie", [True, False])
def test_llama_logits_match_transformers(tie, hf_llama_copy):
    config = ModelConfig.llama(
        V,
        d_model=48,
        n_layers=2,
        n_heads=6,
        n_kv_heads=2,
        d_ff=80,
        rope_theta=500.0,
        tie_embeddings=tie,
    )
    ours = _perturb(_model(config))
    hf = hf_llama_copy(ours, attn_implementation="eager")
    ids = torch.randint(0, V, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)
        got = ours(ids, attention_mask=mask).logits
        ref = hf(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("keep", [1, 3, 11, 20])
def test_logits_to_keep_matches_transformers_and_the_full_logits(keep, hf_llama_copy):
    ours = _perturb(_model(ModelConfig.llama(V, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, d_ff=80)))
    hf = hf_llama_copy(ours, attn_implementation="eager")
    ids = torch.randint(0, V, (2, 11))
    with torch.no_grad():
        full = ours(ids).logits  # (2, 11, V)
        got = ours(ids, logits_to_keep=keep).logits  # (2, min(keep, 11), V)
        ref = hf(ids, logits_to_keep=keep).logits
    assert got.shape == (2, min(keep, 11), V)
    assert ours(ids, logits_to_keep=keep).hidden_states.shape == (2, 11, 48)  # all positions
    torch.testing.assert_close(got, full[:, -keep:], atol=1e-6, rtol=1e-5)  # fewer GEMM rows: rounding
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # with a cache: the last position of a continued sequence
    cache = KVCache.for_model(ours, 2, 11)
    with torch.no_grad():
        ours(ids[:, :6], kv_cache=cache, logits_to_keep=1)
        step = ours(ids[:, 6:], kv_cache=cache, logits_to_keep=1).logits  # (2, 1, V)
    torch.testing.assert_close(step, full[:, -1:], atol=1e-5, rtol=1e-5)


def test_logits_to_keep_errors():
    model = _model(PRESETS["llama"]())
    ids = torch.randint(0, V, (2, 5))
    with pytest.raises(ValueError, match="logits_to_keep must be >= 0, got -1"):
        model(ids, logits_to_keep=-1)
    with pytest.raises(TypeError, match="logits_to_keep must be an int, got float"):
        model(ids, logits_to_keep=1.0)
    with pytest.raises(ValueError, match="logits_to_keep=1 cannot be combined with labels"):
        model(ids, labels=ids, logits_to_keep=1)


def test_interleaved_rope_with_permuted_rows_equals_split_half():
    """The GGUF layout: q/k rows permuted per head + interleaved RoPE == split-half RoPE."""
    split = _perturb(_model(PRESETS["llama"]()))
    inter = DecoderLM(dataclasses.replace(split.config, rope_interleaved=True)).eval()
    inter.load_state_dict(split.state_dict())
    d = split.config.head_dim
    perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])  # split index -> interleaved
    inverse = torch.argsort(perm)
    with torch.no_grad():
        for block in inter.blocks:
            for name, heads in (
                ("q_proj", split.config.n_heads),
                ("k_proj", split.config.kv_heads),
            ):
                w = getattr(block.attn, name).weight
                w.copy_(w.reshape(heads, d, -1)[:, inverse].reshape(heads * d, -1))
    ids = torch.randint(0, V, (2, 9))
    torch.testing.assert_close(inter(ids).logits, split(ids).logits, **TOL)


def test_gpt2_logits_match_transformers():
    transformers = pytest.importorskip("transformers")
    config = ModelConfig.gpt(V, d_model=48, n_layers=2, n_heads=4, max_seq_len=32)
    ours = _perturb(_model(config))
    hf_config = transformers.GPT2Config(
        vocab_size=V,
        n_positions=config.max_seq_len,
        n_embd=config.d_model,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        n_inner=config.ffn_dim,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=config.norm_eps,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="eager",
    )
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    state = {
        "transformer.wte.weight": ours.embed.weight,
        "transformer.wpe.weight": ours.pos_embed.weight,
        "transformer.ln_f.weight": ours.norm.weight,
        "transformer.ln_f.bias": ours.norm.bias,
        "lm_head.weight": ours.lm_head.weight,
    }
    for i, block in enumerate(ours.blocks):
        prefix, attn = f"transformer.h.{i}.", block.attn
        # GPT-2 stores Conv1D weights as (in, out): transpose ours (out, in)
        qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        state[prefix + "attn.c_attn.weight"] = qkv.T
        state[prefix + "attn.c_attn.bias"] = torch.cat(
            [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        )
        state[prefix + "attn.c_proj.weight"] = attn.o_proj.weight.T
        state[prefix + "attn.c_proj.bias"] = attn.o_proj.bias
        state[prefix + "mlp.c_fc.weight"] = block.ffn.up_proj.weight.T
        state[prefix + "mlp.c_fc.bias"] = block.ffn.up_proj.bias
        state[prefix + "mlp.c_proj.weight"] = block.ffn.down_proj.weight.T
        state[prefix + "mlp.c_proj.bias"] = block.ffn.down_proj.bias
        for ours_name, hf_name in (("norm1", "ln_1"), ("norm2", "ln_2")):
            state[prefix + hf_name + ".weight"] = getattr(block, ours_name).weight
            state[prefix + hf_name + ".bias"] = getattr(block, ours_name).bias
    result = hf.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    assert not result.unexpected_keys
    assert all(".attn.bias" in k or "masked_bias" in k for k in result.missing_keys)  # buffers
    ids = torch.randint(0, V, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- encoder


def test_encoder_mlm_outputs_and_bidirectionality():
    config = ModelConfig.bert(V, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)
    model = _perturb(_model(config, EncoderMLM))
    ids = torch.randint(0, V, (2, 6))
    segments = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2)
    out = model(ids, segment_ids=segments)
    assert out.logits.shape == (2, 6, V) and out.pooled.shape == (2, 32)
    torch.testing.assert_close(out.pooled, out.hidden_states[:, 0])
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % V
    assert not torch.allclose(model(changed, segment_ids=segments).logits[:, 0], out.logits[:, 0])
    assert not torch.allclose(model(ids).logits, out.logits)  # segments matter
    assert model.mlm_head.decoder.weight is model.embed.weight


def test_encoder_mlm_loss_without_shift_and_padding():
    config = ModelConfig.bert(V, d_model=32, n_layers=1, n_heads=4, max_seq_len=16)
    model = _perturb(_model(config, EncoderMLM))
    ids = torch.randint(0, V, (2, 7))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 2] = ids[:, 2]
    labels[1, 5] = 7
    out = model(ids, labels=labels)
    expected = F.cross_entropy(out.logits.reshape(-1, V), labels.reshape(-1))
    torch.testing.assert_close(out.loss, expected, **TOL)
    # padding positions do not influence real ones
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]] * 2)
    changed = ids.clone()
    changed[:, 5:] = 1
    torch.testing.assert_close(
        model(ids, attention_mask=mask).logits[:, :5],
        model(changed, attention_mask=mask).logits[:, :5],
        **TOL,
    )
    torch.testing.assert_close(
        model(ids, attention_mask=mask).logits[:, :5], model(ids[:, :5]).logits, **TOL
    )


def test_encoder_counts_and_errors():
    config = ModelConfig.bert(V, d_model=32, n_layers=1, n_heads=4, max_seq_len=16)
    model = EncoderMLM(config)
    counts = model.parameter_counts()
    assert "mlm_head" in counts and "lm_head" not in counts
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, V, (2, 5))
    with pytest.raises(ValueError, match="segment_ids"):
        model(ids, segment_ids=torch.full_like(ids, 2))
    with pytest.raises(ValueError, match="n_segments=0"):
        EncoderMLM(dataclasses.replace(config, n_segments=0))(
            ids, segment_ids=torch.zeros_like(ids)
        )


# ----------------------------------------------------------------------------- encoder-decoder


def test_encoder_decoder_shapes_causality_and_loss():
    config = ModelConfig.original(V, d_model=32, n_layers=2, n_heads=4)
    model = _perturb(_model(config, EncoderDecoder))
    src, tgt = torch.randint(0, V, (2, 7)), torch.randint(0, V, (2, 5))
    out = model(src, tgt, labels=tgt)
    assert out.logits.shape == (2, 5, V)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), tgt[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected, **TOL)
    changed_tgt = tgt.clone()
    changed_tgt[:, 3:] = (tgt[:, 3:] + 1) % V
    torch.testing.assert_close(model(src, changed_tgt).logits[:, :3], out.logits[:, :3], **TOL)
    changed_src = src.clone()
    changed_src[:, -1] = (src[:, -1] + 1) % V
    assert not torch.allclose(model(changed_src, tgt).logits[:, 0], out.logits[:, 0])  # sees all
    # source padding is ignored
    src_mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    padded = src.clone()
    padded[0, 5:] = 3
    torch.testing.assert_close(
        model(src, tgt, src_mask=src_mask).logits[0],
        model(padded, tgt, src_mask=src_mask).logits[0],
        **TOL,
    )
    assert model.lm_head.weight is model.embed.weight
    assert sum(model.parameter_counts().values()) == model.num_parameters()


def test_greedy_decode_matches_manual_argmax_loop():
    config = ModelConfig.original(V, d_model=32, n_layers=1, n_heads=4, dropout=0.1)
    model = _perturb(_model(config, EncoderDecoder)).train()
    src = torch.randint(3, V, (3, 6))
    bos, eos = 1, 2
    out = model.greedy_decode(src, bos_id=bos, eos_id=eos, max_len=6)
    assert model.training  # mode restored
    assert out.shape[0] == 3 and out.shape[1] <= 7 and (out[:, 0] == bos).all()
    model.eval()
    seq = torch.full((3, 1), bos)
    for _ in range(out.shape[1] - 1):
        nxt = model(src, seq).logits[:, -1].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], 1)
    for row, ref in zip(out, seq, strict=True):
        ended = (ref == eos).nonzero()
        stop = int(ended[0]) + 1 if len(ended) else len(ref)
        assert torch.equal(row[:stop], ref[:stop])
        assert (row[stop:] == eos).all()  # finished rows are filled with eos


def test_greedy_decode_stops_when_every_row_ends():
    config = ModelConfig.original(V, d_model=32, n_layers=1, n_heads=4)
    model = _model(config, EncoderDecoder)
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(torch.zeros(V, 32))
        model.config = dataclasses.replace(config, tie_embeddings=False)
    # all-zero logits: argmax picks token 0, so make 0 the eos
    out = model.greedy_decode(torch.randint(0, V, (2, 4)), bos_id=1, eos_id=0, max_len=10)
    assert out.tolist() == [[1, 0], [1, 0]]
    with pytest.raises(ValueError, match="eos_id"):
        model.greedy_decode(torch.randint(0, V, (2, 4)), bos_id=1, eos_id=V, max_len=3)
    with pytest.raises(ValueError, match="max_len"):
        model.greedy_decode(torch.randint(0, V, (2, 4)), bos_id=1, eos_id=0, max_len=0)


def test_mixtral_preset_is_a_sparse_llama():
    pytest.importorskip("llmfoundations.moe")
    config = ModelConfig.mixtral(vocab_size=50)
    assert (config.ffn, config.n_experts, config.top_k) == ("moe", 8, 2)
    assert (config.norm, config.positional) == ("rmsnorm", "rope")
    model = DecoderLM(config)
    ids = torch.randint(0, 50, (2, 7))
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 7, 50)
    assert out.aux_loss is not None and out.aux_loss.requires_grad
    # 8 experts' weights exist, but each token runs only 2 of them
    block = model.blocks[0]
    assert len(block.ffn.experts) == 8
    assert int(out.moe[0].tokens_per_expert.sum()) == 2 * 2 * 7


def test_rope_models_refuse_positions_past_max_seq_len():
    # The review's case: a RoPE model with max_seq_len=8 ran 20 tokens silently.
    model = _model(ModelConfig.llama(vocab_size=50, max_seq_len=8, d_model=16, n_layers=1,
                                     n_heads=2))  # fmt: skip
    assert model(torch.randint(0, 50, (1, 8))).logits.shape == (1, 8, 50)
    with pytest.raises(ValueError, match="max_seq_len=8"):
        model(torch.randint(0, 50, (1, 20)))
    with pytest.raises(ValueError, match="max_seq_len=8"):
        model(torch.randint(0, 50, (1, 2)), positions=torch.tensor([3, 8]))
    longer = _model(ModelConfig.llama(vocab_size=50, max_seq_len=32, d_model=16, n_layers=1,
                                      n_heads=2))  # fmt: skip
    assert longer(torch.randint(0, 50, (1, 20))).logits.shape == (1, 20, 50)


def test_negative_positions_are_refused():
    model = _model(ModelConfig.llama(vocab_size=50, max_seq_len=8, d_model=16, n_layers=1,
                                     n_heads=2))  # fmt: skip
    with pytest.raises(ValueError, match="positions must be >= 0"):
        model(torch.randint(0, 50, (1, 3)), positions=torch.tensor([-1, 0, 1]))
    from llmfoundations.positional import apply_rope

    with pytest.raises(ValueError, match="positions must be >= 0"):
        apply_rope(torch.randn(1, 3, 4), torch.tensor([-2, 0, 1]))


def test_encoder_mlm_applies_embedding_dropout_after_the_layernorm_as_bert():
    config = dataclasses.replace(
        ModelConfig.bert(V, d_model=32, n_layers=1, n_heads=4, max_seq_len=16), dropout=0.5
    )
    model = _perturb(_model(config, EncoderMLM)).train()
    ids = torch.randint(0, V, (2, 6))
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    torch.manual_seed(3)
    model(ids)
    summed = model.embed(ids) + model.pos_embed(torch.arange(6))  # (B, T, C)
    torch.manual_seed(3)  # the embedding dropout is the first random draw of the forward pass
    expected = F.dropout(model.embed_norm(summed), p=0.5, training=True)
    torch.testing.assert_close(seen["x"], expected, **TOL)


def test_configs_are_frozen_and_replace_validates_again():
    import dataclasses

    from llmfoundations.sampling import SamplingConfig
    from llmfoundations.train import TrainConfig

    for config, field, bad in (
        (ModelConfig.llama(50), "n_heads", 3),
        (SamplingConfig(top_p=0.9), "top_p", 5.0),
        (TrainConfig(steps=10, warmup_steps=2), "lr", -1.0),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, field, bad)
        with pytest.raises(ValueError, match=field):
            dataclasses.replace(config, **{field: bad})


def test_an_expert_is_the_layers_feed_forward_network():
    from llmfoundations.layers import FeedForward, SwiGLU
    from llmfoundations.moe import Expert

    assert type(Expert(8, 16)) is SwiGLU
    assert type(Expert(8, 16, activation="relu")) is FeedForward
