"""FastGreedyDecoder: the same logits and tokens as the readable ``generate``."""

from __future__ import annotations

import copy
import dataclasses
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.generate import generate_output
from llmfoundations.inference import prepack
from llmfoundations.inference.fast_decode import FastGreedyDecoder, check_fast_decodable
from llmfoundations.models import DecoderLM, ModelConfig


def _model(seed: int = 0, **overrides) -> DecoderLM:
    # init_std 0.5, not the default 0.02: a tiny model initialised with 0.02 only repeats the
    # last prompt token, so any decoder that does the same (with RoPE or attention broken)
    # would agree with it token for token.
    torch.manual_seed(seed)
    config = ModelConfig.llama(vocab_size=97, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2)
    return DecoderLM(dataclasses.replace(config, **{"init_std": 0.5, **overrides})).eval()


def _assert_not_trivial(out, prompts: list[list[int]]) -> None:
    """The reference continues with more than the last prompt token repeated."""
    rows = [out.new_tokens[i, : out.num_new_tokens[i]].tolist() for i in range(len(prompts))]
    assert any(set(row) - {p[-1]} for row, p in zip(rows, prompts, strict=True)), rows


def _prompts(seed: int, lengths: list[int]) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 97, (n,), generator=g).tolist() for n in lengths]


def test_every_step_logits_equal_the_models_own():
    model = _model()
    prompts = _prompts(1, [5, 2, 7])
    ref = generate_output(model, prompts, 6, output_logits=True)
    decoder = FastGreedyDecoder(model, 3, 16)
    seen = []

    def record(token):
        seen.append(token.clone())

    out = decoder.generate(prompts, 6, streamer=record)
    assert torch.equal(out.sequences, ref.sequences)
    assert torch.equal(out.attention_mask, ref.attention_mask)
    assert torch.equal(torch.stack(seen, dim=1), ref.new_tokens)
    # The logits of every step, recomputed by feeding the reference's tokens step by step.
    decoder.valid.zero_()
    ids, mask = ref.sequences, ref.attention_mask
    t = ref.prompt_length
    decoder.valid[:, :t] = mask[:, :t].bool()
    positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
    with torch.no_grad():
        logits = decoder._forward(ids[:, :t], decoder.columns[:t], positions[:, :t])
        torch.testing.assert_close(logits, ref.logits[:, 0], rtol=1e-5, atol=1e-5)
        for step in range(1, ref.steps):
            col = decoder.columns[t + step - 1 : t + step]
            logits = decoder._decode_step(ids[:, t + step - 1 : t + step], col, positions[:, col])
            torch.testing.assert_close(logits, ref.logits[:, step], rtol=1e-5, atol=1e-5)


_ONEDNN = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN")
_MKL = pytest.mark.skipif(not torch._C.has_mkl, reason="no MKL")
_LIBRARIES = [pytest.param("onednn", marks=_ONEDNN), pytest.param("mkl", marks=_MKL)]


@pytest.mark.parametrize("library", [None, *_LIBRARIES])  # None: not packed
@pytest.mark.parametrize("kv_heads", [1, 2, 6])  # multi-query, grouped-query, multi-head
def test_greedy_tokens_equal_generate_with_stops(kv_heads, library):
    model = _model(seed=kv_heads, n_kv_heads=kv_heads)
    prompts = _prompts(kv_heads, [4, 9, 1, 6])
    free = generate_output(model, prompts, 10).new_tokens  # (4, 10)
    stops = [int(free[0, 3]), int(free[2, 5])]  # rows 0 and 2 stop early (at the latest)
    ref = generate_output(model, prompts, 10, stop_token_ids=stops, pad_token_id=2)
    _assert_not_trivial(ref, prompts)
    assert ref.stopped[0] and ref.stopped[2] and ref.num_new_tokens[0] <= 4
    packing = {"prepack": True, "library": library} if library else {}
    out = FastGreedyDecoder(model, 4, 19, **packing).generate(
        prompts, 10, stop_token_ids=stops, pad_token_id=2
    )
    for field in ("sequences", "attention_mask", "num_new_tokens", "stopped"):
        assert torch.equal(getattr(out, field), getattr(ref, field)), field


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 8), min_size=1, max_size=3),
    n=st.integers(0, 6),
    seed=st.integers(0, 10_000),
)
def test_property_equals_generate_and_is_reusable(lengths, n, seed):
    model = _model(seed % 3)
    decoder = FastGreedyDecoder(model, len(lengths), 14)
    for offset in range(2):  # a second call on the same decoder starts from a clean cache
        prompts = _prompts(seed + offset, lengths)
        ref = generate_output(model, prompts, n)
        out = decoder.generate(prompts, n)
        assert torch.equal(out.sequences, ref.sequences)
        assert out.steps == ref.steps == n


def test_interleaved_rope_layout():
    model = _model(rope_interleaved=True)
    prompts = _prompts(4, [3, 6])
    ref = generate_output(model, prompts, 5)
    _assert_not_trivial(ref, prompts)
    assert torch.equal(
        FastGreedyDecoder(model, 2, 11).generate(prompts, 5).sequences, ref.sequences
    )


@pytest.mark.slow
def test_compiled_and_frozen_step_gives_the_same_tokens():
    from torch._dynamo.utils import counters

    model = _model()
    prompts = _prompts(7, [5, 2])
    ref = generate_output(model, prompts, 8)
    _assert_not_trivial(ref, prompts)
    plain = FastGreedyDecoder(model, 2, 13, compile=True)
    assert torch.equal(plain.generate(prompts, 8).sequences, ref.sequences)
    # The frozen decoder gets its own graph: a plain compiled step of the same shapes is
    # not reused for it (it once was, when freezing was a patched global setting).
    graphs = counters["stats"]["unique_graphs"]
    decoder = FastGreedyDecoder(model, 2, 13, compile=True, freeze=True)
    assert decoder.compile_seconds > 0
    assert counters["stats"]["unique_graphs"] == graphs + 1
    assert torch.equal(decoder.generate(prompts, 8).sequences, ref.sequences)
    # Compiled once, at construction: generating does not compile again (it once did, as
    # the warm-up call passed positions with other strides than `generate`).
    assert counters["stats"]["unique_graphs"] == graphs + 1


@pytest.mark.parametrize("library", _LIBRARIES)
def test_prepacked_logits_equal_plain_ones_eager_and_compiled(library):
    model = _model(seed=3)
    prompts = _prompts(8, [6, 3])
    plain = FastGreedyDecoder(model, 2, 13)
    packed = FastGreedyDecoder(model, 2, 13, prepack=True, library=library)
    assert packed.head_packed is not None and len(packed.layers[0].packed) == 4
    assert packed.libraries == dict.fromkeys(("qkv", "o", "gate_up", "down", "head"), library)
    for decoder in (plain, packed):
        decoder.valid[:, :2] = True
    token, col, pos = torch.tensor([[5], [6]]), plain.columns[2:3], torch.tensor([[2], [2]])
    with torch.no_grad():
        expected = plain._decode_step(token, col, pos)
        torch.testing.assert_close(packed._decode_step(token, col, pos), expected, rtol=1e-5, atol=1e-5)
    ref = generate_output(model, prompts, 7)
    _assert_not_trivial(ref, prompts)
    compiled = FastGreedyDecoder(model, 2, 13, prepack=True, library=library, compile=True)
    assert torch.equal(compiled.generate(prompts, 7).sequences, ref.sequences)


@_ONEDNN
def test_auto_library_packs_each_weight_for_an_available_library():
    from llmfoundations.inference.prepack import available_libraries

    model = _model(seed=4)
    prompts = _prompts(9, [5, 1])
    decoder = FastGreedyDecoder(model, 2, 12, prepack=True)  # library="auto"
    assert set(decoder.libraries) == {"qkv", "o", "gate_up", "down", "head"}
    assert set(decoder.libraries.values()) <= set(available_libraries())
    for layer in decoder.layers:  # same shapes, same choice in every layer
        assert {n: p.library for n, p in layer.packed.items()} == {
            n: lib for n, lib in decoder.libraries.items() if n != "head"
        }
    assert torch.equal(decoder.generate(prompts, 6).sequences, generate_output(model, prompts, 6).sequences)
    assert FastGreedyDecoder(model, 2, 12).libraries == {}  # not packed


def test_rejects_models_and_arguments_it_cannot_run():
    with pytest.raises(TypeError, match="DecoderLM"):
        check_fast_decodable(torch.nn.Linear(2, 2))
    gpt = DecoderLM(ModelConfig.gpt(vocab_size=50, d_model=32, n_layers=1, n_heads=4))
    with pytest.raises(ValueError, match="positional"):
        FastGreedyDecoder(gpt, 1, 8)
    with pytest.raises(ValueError, match="bias"):
        FastGreedyDecoder(_model(bias=True), 1, 8)
    model = _model()
    with pytest.raises(ValueError, match="max_seq_len"):
        FastGreedyDecoder(model, 1, model.config.max_seq_len + 1)
    with pytest.raises(ValueError, match="batch_size"):
        FastGreedyDecoder(model, 0, 8)
    with pytest.raises(ValueError, match="freeze=True needs compile=True"):
        FastGreedyDecoder(model, 1, 8, freeze=True)
    with pytest.raises(ValueError, match="choose one"):
        FastGreedyDecoder(model, 1, 8, compile=True, freeze=True, prepack=True)
    with pytest.raises(ValueError, match="prepack=True needs float32"):
        FastGreedyDecoder(_model().double(), 1, 8, prepack=True)
    with pytest.raises(TypeError, match="prepack"):
        FastGreedyDecoder(model, 1, 8, prepack=1)
    with pytest.raises(ValueError, match="library must be one of"):
        FastGreedyDecoder(model, 1, 8, prepack=True, library="cublas")
    with pytest.raises(ValueError, match="library='mkl' needs prepack=True"):
        FastGreedyDecoder(model, 1, 8, library="mkl")
    with pytest.raises(TypeError, match="compile"):
        FastGreedyDecoder(model, 1, 8, compile="yes")
    decoder = FastGreedyDecoder(model, 2, 8)
    with pytest.raises(ValueError, match="batch_size=2 rows"):
        decoder.generate([[1, 2, 3]], 2)
    with pytest.raises(ValueError, match="max_length=8"):
        decoder.generate([[1, 2, 3], [4, 5]], 6)
    with pytest.raises(ValueError, match="vocab_size"):
        decoder.generate([[1, 2, 300], [4, 5]], 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoder.generate([[1, 2], [4, 5]], -1)
    with pytest.raises(TypeError, match="streamer"):
        decoder.generate([[1, 2], [4, 5]], 1, streamer=3)


def test_bad_logits_and_changed_weights_raise_as_generate_does():
    model = _model()
    decoder = FastGreedyDecoder(model, 2, 8)
    prompts = [[1, 2, 3], [4, 5]]
    decoder.generate(prompts, 2)
    with torch.no_grad():
        model.norm.weight.fill_(float("nan"))  # shared with the decoder: NaN logits
    with pytest.raises(ValueError, match="changed in place"):
        decoder.generate(prompts, 2)
    with pytest.raises(ValueError, match="NaN"):  # the readable path says the same
        generate_output(model, prompts, 2)
    with pytest.raises(ValueError, match="step 0 hold NaN"):
        FastGreedyDecoder(model, 2, 8).generate(prompts, 2)
    with pytest.raises(ValueError, match="step 0 hold NaN"):
        FastGreedyDecoder(model, 2, 8).generate(prompts, 1)  # the last step is checked too
    fresh = _model()
    decoder = FastGreedyDecoder(fresh, 2, 8)
    fresh.load_state_dict(_model(seed=1).state_dict())  # the layer copies would go stale
    with pytest.raises(ValueError, match="build a new FastGreedyDecoder"):
        decoder.generate(prompts, 2)
    expected = generate_output(fresh, prompts, 3)
    got = FastGreedyDecoder(fresh, 2, 8).generate(prompts, 3)
    assert torch.equal(got.sequences, expected.sequences)
    # A copy of a decoder still runs (its own tensors' counters restart), and the decoder
    # does not keep the model alive.
    decoder = FastGreedyDecoder(fresh, 2, 8)
    assert torch.equal(copy.deepcopy(decoder).generate(prompts, 3).sequences, expected.sequences)
    alive = weakref.ref(fresh)
    del fresh
    gc.collect()
    assert alive() is None
    assert torch.equal(decoder.generate(prompts, 3).sequences, expected.sequences)


def test_replaced_weights_are_stale_too():
    model = _model()
    prompts = [[1, 2, 3], [4, 5]]
    decoder = FastGreedyDecoder(model, 2, 8)
    other = _model(seed=1).state_dict()
    model.load_state_dict(other, assign=True)  # new Parameter objects, no in-place write
    with pytest.raises(ValueError, match="replaced"):  # once gave the old model's tokens
        decoder.generate(prompts, 2)
    decoder = FastGreedyDecoder(model, 2, 8)
    model.double()
    with pytest.raises(ValueError, match="build a new FastGreedyDecoder"):
        decoder.generate(prompts, 2)
    # torch can swap parameters in place (the same objects, new contents): a decoder must not
    # stop that (weak references to the parameters once did), and it sees the change
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model = _model()
        decoder = FastGreedyDecoder(model, 2, 8)
        model.double()  # raised "Couldn't swap Embedding.weight"
        with pytest.raises(ValueError, match="build a new FastGreedyDecoder"):
            decoder.generate(prompts, 2)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)


def test_layers_that_do_more_than_their_weight_are_refused():
    from llmfoundations.finetuning.lora import apply_lora
    from llmfoundations.inference.prepack import prepack_linears
    from llmfoundations.inference.quantization import prepare_qat, quantize_model

    qat = _model()
    prepare_qat(qat, bits=4)  # an nn.Linear subclass that fake-quantizes: once decoded silently
    with pytest.raises(TypeError, match=r"blocks\.0\.attn\.q_proj is a QATLinear"):
        FastGreedyDecoder(qat, 1, 8)
    lora = _model()
    apply_lora(lora, ["v_proj"], r=2, alpha=4.0)
    with pytest.raises(TypeError, match=r"blocks\.0\.attn\.v_proj is a LoRALinear"):
        FastGreedyDecoder(lora, 1, 8)
    quantized = _model()
    quantize_model(quantized, bits=8)
    with pytest.raises(TypeError, match="QuantizedLinear"):
        FastGreedyDecoder(quantized, 1, 8)
    # packed linears compute exactly F.linear(x, weight): accepted, same tokens
    packed, prompts = _model(), _prompts(5, [3, 5])
    expected = generate_output(packed, prompts, 4)
    prepack_linears(packed, rows=2, library="onednn" if torch.backends.mkldnn.is_available() else "mkl")
    got = FastGreedyDecoder(packed, 2, 10).generate(prompts, 4)
    assert torch.equal(got.sequences, expected.sequences)


def test_attention_without_native_gqa_repeats_the_heads(monkeypatch):
    # torch < 2.5 has no enable_gqa: the decoder must repeat key/value heads itself.
    import llmfoundations.inference.fast_decode as fd

    model = _model()
    prompts = _prompts(3, [4, 6])
    expected = generate_output(model, prompts, 5)
    _assert_not_trivial(expected, prompts)
    monkeypatch.setattr(fd, "_TORCH_HAS_GQA", False)
    got = FastGreedyDecoder(model, 2, 12).generate(prompts, 5)
    assert torch.equal(got.sequences, expected.sequences)


@pytest.mark.slow
def test_compiled_step_writes_the_cache_in_place():
    # A write into a slice of one (L, B, Hkv, T_max, D) cache made inductor copy each layer's
    # cache at every step; with one buffer per layer, no cache-sized buffer is allocated.
    from torch._inductor.utils import run_and_get_code

    model = _model()
    decoder = FastGreedyDecoder(model, 2, 13)
    b, g, t, d = decoder.layers[0].k_cache.shape
    token = torch.tensor([[5], [6]])
    col = decoder.columns[3:4]
    with torch.no_grad():
        expected = decoder._decode_step(token, col, col.expand(2, 1))
        compiled = torch.compile(decoder._decode_step, fullgraph=True, dynamic=False)
        logits, codes = run_and_get_code(compiled, token, col, col.expand(2, 1))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert f"empty_strided_cpu(({b}, {g}, {t}, {d})," not in "".join(codes)


# ----------------------------------------------------------------------------- contracts (mutation review)


def test_no_query_row_is_fully_masked(monkeypatch):
    # A padding query reads itself: a fully masked row gives NaN on torch < 2.5 (0 on newer
    # torch, which hides the bug), and NaN keys/values poison every later layer.
    sdpa = F.scaled_dot_product_attention

    def checked(q, k, v, attn_mask=None, **kw):
        assert attn_mask.any(dim=-1).all(), "a query row is fully masked"
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", checked)
    FastGreedyDecoder(_model(), 2, 10).generate([[5, 6, 7, 8], [9]], 3)  # row 1 left-padded


@pytest.mark.parametrize("library", ["onednn", "mkl"])
def test_weights_are_packed_for_the_batch_size(library):
    if library not in prepack.available_libraries():
        pytest.skip(f"no {library}")
    decoder = FastGreedyDecoder(_model(), 3, 10, prepack=True, library=library)
    # MKL uses its packed copy only for exactly `rows` rows: packed for 1, a batch of 3
    # would silently multiply by the plain weight every step.
    for layer in decoder.layers:
        assert {n: p.rows for n, p in layer.packed.items()} == dict.fromkeys(("qkv", "o", "gate_up", "down"), 3)
    assert decoder.head_packed.rows == 3


def test_plus_inf_logits_are_refused_not_decoded():
    # isfinite, not only isnan: a +inf logit (or a row of only -inf) has no sensible argmax.
    model = _model()
    with torch.no_grad():
        w = model.lm_head.weight
        w[0, 0], w[1, 0] = float("inf"), float("-inf")  # one of tokens 0/1 gets +inf, the other -inf
    with pytest.raises(ValueError, match=r"step 0 hold NaN or \+inf"):
        FastGreedyDecoder(model, 2, 8).generate([[5, 6, 7], [8, 9, 10]], 1)  # equal lengths: no padding token


def test_float64_model_decodes_like_generate():
    # The cache takes the weights' dtype (and device); a float32 cache breaks other dtypes.
    model = _model().double()
    prompts = [[5, 6, 7], [8, 9]]
    got = FastGreedyDecoder(model, 2, 8).generate(prompts, 3)
    assert torch.equal(got.sequences, generate_output(model, prompts, 3).sequences)


def test_untied_head_is_read():
    # Every other test model ties lm_head to embed, so reading the wrong one goes unseen.
    model = _model(tie_embeddings=False)
    assert model.lm_head.weight is not model.embed.weight
    prompts = [[5, 6, 7], [8, 9]]
    ref = generate_output(model, prompts, 4)
    decoder = FastGreedyDecoder(model, 2, 8)
    assert torch.equal(decoder.generate(prompts, 4).sequences, ref.sequences)


def test_stops_when_every_row_has_stopped():
    # Only some rows stop in the existing tests: decoding on after all stopped went unseen.
    model, prompts = _model(), [[5, 6, 7], [8, 9]]
    free = generate_output(model, prompts, 6).new_tokens
    stops = [int(free[0, 1]), int(free[1, 1])]
    ref = generate_output(model, prompts, 6, stop_token_ids=stops)
    assert bool(ref.stopped.all()) and ref.steps <= 2
    seen = []
    out = FastGreedyDecoder(model, 2, 10).generate(prompts, 6, stop_token_ids=stops, streamer=seen.append)
    assert torch.equal(out.sequences, ref.sequences) and out.steps == ref.steps == len(seen)


def test_libraries_reports_what_each_weight_is_packed_for(monkeypatch):
    if len(prepack.available_libraries()) < 2:
        pytest.skip("needs both libraries")
    # "auto" chooses per shape: make the head's choice differ from the layers'
    monkeypatch.setattr(prepack, "_CHOICES", {})
    for n, k in ((48 + 2 * 16, 48), (48, 48), (2 * 128, 48), (48, 128)):
        prepack._CHOICES[(n, k, 2, torch.get_num_threads())] = "mkl"
    prepack._CHOICES[(97, 48, 2, torch.get_num_threads())] = "onednn"
    decoder = FastGreedyDecoder(_model(), 2, 8, prepack=True)
    assert decoder.head_packed.library == "onednn"
    assert decoder.libraries["head"] == decoder.head_packed.library
    for layer in decoder.layers:
        assert all(decoder.libraries[n] == p.library for n, p in layer.packed.items())


# ------------------------------------- from a mutation review (each kills a surviving mutant)


@pytest.mark.parametrize("rope_theta", [10000.0, 100.0])
def test_every_norm_weight_and_rope_theta_are_read(rope_theta):
    """RMSNorm weights start at 1 and the other tests' models share one ``rope_theta``, so a
    decoder using the first norm's weights for the second, or a fixed theta, agreed with them
    (SmolLM2: trained norms, theta 1e5). Here every norm has its own weights."""
    model = _model(rope_theta=rope_theta)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.2, 2.0)
    prompts = _prompts(7, [4, 2])
    ref = generate_output(model, prompts, 6, output_logits=True)
    _assert_not_trivial(ref, prompts)
    decoder = FastGreedyDecoder(model, 2, 12)
    assert torch.equal(decoder.generate(prompts, 6).sequences, ref.sequences)
    decoder.valid.zero_()
    t = ref.prompt_length
    decoder.valid[:, :t] = ref.attention_mask[:, :t].bool()
    positions = (ref.attention_mask.cumsum(dim=1) - 1).clamp_min(0)
    with torch.no_grad():
        logits = decoder._forward(ref.sequences[:, :t], decoder.columns[:t], positions[:, :t])
    torch.testing.assert_close(logits, ref.logits[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "field, value",
    [("scale_embeddings", True), ("norm", "layernorm"), ("residual", False), ("ffn", "gelu"),
     ("norm_position", "post")],
)  # fmt: skip
def test_every_option_the_decoder_does_not_compute_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        FastGreedyDecoder(_model(**{field: value}), 1, 8)


@pytest.mark.parametrize(
    "target", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
)
def test_an_adapter_on_any_linear_is_refused(target):
    """The decoder copies plain weights: an adapter anywhere (each projection, an untied
    head) would be dropped without a word."""
    from llmfoundations.finetuning.lora import apply_lora

    model = _model(tie_embeddings=False)
    apply_lora(model, [target], r=2, alpha=4.0)
    with pytest.raises(TypeError, match=f"{target} is a LoRALinear"):
        FastGreedyDecoder(model, 1, 8)


def test_a_decoder_may_cover_the_models_whole_context():
    model = _model(max_seq_len=16)
    prompts = _prompts(3, [3, 2])
    got = FastGreedyDecoder(model, 2, 16).generate(prompts, 13)
    assert torch.equal(got.sequences, generate_output(model, prompts, 13).sequences)
