"""Weights pre-packed for oneDNN or MKL: the same products as ``F.linear``, in eager and compiled code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.inference import prepack as prepack_module
from llmfoundations.inference.prepack import (
    LIBRARIES,
    PackedLinear,
    available_libraries,
    check_prepack_available,
    choose_library,
    pack_weight,
    packed_linear,
    prepack_linears,
)
from llmfoundations.models import DecoderLM, ModelConfig

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN"
)
_MKL = pytest.mark.skipif(not torch._C.has_mkl, reason="this PyTorch build has no MKL")
_LIBRARIES = ["onednn", pytest.param("mkl", marks=_MKL)]


@pytest.mark.parametrize("library", _LIBRARIES)
@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 9),
    n=st.integers(1, 70),
    k=st.integers(1, 70),
    hint=st.integers(1, 16),
    lead=st.lists(st.integers(1, 3), max_size=2),
    seed=st.integers(0, 1000),
)
def test_property_packed_product_equals_f_linear(library, rows, n, k, hint, lead, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g)
    x = torch.randn(*lead, rows, k, generator=g)
    packed = pack_weight(w, hint, library)  # any rows work, not only `hint` rows
    assert packed.library == library and packed.shape == w.shape
    torch.testing.assert_close(packed_linear(x, packed), F.linear(x, w), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(packed_linear(x, packed, b), F.linear(x, w, b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("library", _LIBRARIES)
def test_non_contiguous_input(library):
    w, x = torch.randn(6, 5), torch.randn(5, 4).T  # (4, 5), transposed view
    packed = pack_weight(w, 4, library)
    torch.testing.assert_close(packed_linear(x, packed), x @ w.T, rtol=1e-5, atol=1e-5)


def test_auto_picks_an_available_library_once_per_shape(monkeypatch):
    monkeypatch.setattr(prepack_module, "_CHOICES", {})
    lib = choose_library(48, 16, 2)
    assert lib in available_libraries() and lib in LIBRARIES
    assert prepack_module._CHOICES == {(48, 16, 2, torch.get_num_threads()): lib}

    def no_clock():
        raise AssertionError("timed again")

    monkeypatch.setattr(prepack_module, "perf_counter", no_clock)  # remembered, not re-timed
    assert choose_library(48, 16, 2) == lib
    assert pack_weight(torch.randn(48, 16), 2).library == lib
    monkeypatch.undo()
    if len(available_libraries()) == 2:  # both really timed: the choice is not a constant
        monkeypatch.setattr(prepack_module, "_CHOICES", {})
        monkeypatch.setattr(prepack_module, "perf_counter", _clock_favouring("mkl"))
        assert choose_library(48, 16, 2) == "mkl"
        monkeypatch.setattr(prepack_module, "_CHOICES", {})
        monkeypatch.setattr(prepack_module, "perf_counter", _clock_favouring("onednn"))
        assert choose_library(48, 16, 2) == "onednn"


def _clock_favouring(library):
    """A fake clock under which products of ``library`` take 1 s and the other's 2 s: the
    libraries are timed interleaved, onednn first, start and stop read once per product."""
    ticks = {"t": 0.0, "calls": 0}
    order = list(LIBRARIES)

    def clock():
        n = ticks["calls"]
        ticks["calls"] += 1
        if n % 2 == 1:  # a stop: advance by this product's duration
            lib = order[(n // 2) % 2]
            ticks["t"] += 1.0 if lib == library else 2.0
        return ticks["t"]

    return clock


@pytest.mark.parametrize("library", _LIBRARIES)
def test_prepacked_model_gives_the_same_logits_and_keeps_ties(library):
    torch.manual_seed(0)
    config = ModelConfig.llama(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    model = DecoderLM(config).eval()
    ids = torch.randint(0, 61, (3, 7))
    with torch.no_grad():
        expected = model(ids).logits
        linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        assert prepack_linears(model, rows=3, library=library) == {library: linears}
        assert linears > 0
        assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
        assert model.lm_head.weight is model.embed.weight  # still tied
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("library", _LIBRARIES)
def test_compiled_call_equals_eager(library):
    layer = torch.nn.Linear(16, 24).requires_grad_(False)
    packed = PackedLinear.from_linear(layer, rows=2, library=library)
    assert f"packed for {library} (2 rows)" in repr(packed)

    def f(x):
        return torch.relu(packed(x)) * 2

    x = torch.randn(2, 1, 16)
    with torch.no_grad():
        compiled = torch.compile(f, fullgraph=True, dynamic=False)
        torch.testing.assert_close(compiled(x), torch.relu(layer(x)) * 2, rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="weight"):
        pack_weight(torch.randn(3, 4, 5))
    with pytest.raises(TypeError, match="weight"):
        pack_weight(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="rows"):
        pack_weight(torch.randn(3, 4), rows=0)
    with pytest.raises(TypeError, match="linear"):
        PackedLinear.from_linear(torch.nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="bias must have 3"):
        PackedLinear(torch.randn(3, 4), torch.randn(2))
    layer = PackedLinear.from_linear(torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"float32 \(\.\.\., 4\)"):
        layer(torch.randn(2, 5))
    with pytest.raises(ValueError, match="float32"):
        layer(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="model"):
        prepack_linears("not a model")
    with pytest.raises(RuntimeError, match="torch.no_grad"):  # else weights get no gradient
        layer(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="x requires grad"):
        packed_linear(torch.randn(2, 4, requires_grad=True), pack_weight(torch.randn(3, 4)))
    with pytest.raises(ValueError, match="library must be one of"):
        pack_weight(torch.randn(3, 4), library="openblas")
    with pytest.raises(ValueError, match="library must be one of"):
        prepack_linears(torch.nn.Linear(4, 3), library="cuda")
    with pytest.raises(ValueError, match="rows"):
        choose_library(3, 4, 0)


@pytest.mark.parametrize("library", _LIBRARIES)
def test_packed_linear_checks_what_the_library_would_not(library):
    # MKL's packed product checks no shape: a too-short x or bias would be read past its end.
    packed = pack_weight(torch.randn(6, 5), 2, library)
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"x must have 5 features .* got shape \(2, 4\)"):
        packed_linear(torch.randn(2, 4), packed)
    with pytest.raises(ValueError, match=r"x must have 5 features .* got shape \(2, 7\)"):
        packed_linear(torch.randn(2, 7), packed)
    with pytest.raises(ValueError, match="bias must have 6 entries, got 4"):
        packed_linear(x, packed, torch.randn(4))
    with pytest.raises(ValueError, match=r"bias must have 1 dimensions, got shape \(2, 6\)"):
        packed_linear(x, packed, torch.randn(2, 6))
    with pytest.raises(TypeError, match="x"):
        packed_linear(x.double(), packed)
    with pytest.raises(TypeError, match="bias"):
        packed_linear(x, packed, torch.randn(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="x"):
        packed_linear(torch.randn(0, 5), packed)


@pytest.mark.parametrize("library", _LIBRARIES)
def test_a_weight_changed_after_packing_is_refused(library):
    # MKL's packed copy would give the old product for `rows` rows and the new one (its
    # fallback reads the original) for any other count: a silent mix of two weights.
    layer = torch.nn.Linear(5, 6)
    packed = PackedLinear.from_linear(layer, rows=2, library=library)
    lone = pack_weight(layer.weight.t().contiguous().t(), 2, library)  # a non-contiguous source
    x = torch.randn(2, 5)
    with torch.no_grad():
        packed(x), packed_linear(x, lone)  # fine before
        layer.weight.mul_(2)
        with pytest.raises(ValueError, match="changed in place after it was packed"):
            packed(x)
        with pytest.raises(ValueError, match="changed in place after it was packed"):
            packed(torch.randn(3, 5))
        packed_linear(x, lone)  # its source is a copy, which did not change
        again = PackedLinear.from_linear(layer, rows=2, library=library)
        torch.testing.assert_close(again(x), layer(x), rtol=1e-5, atol=1e-5)
    layer.load_state_dict({"weight": torch.zeros(6, 5), "bias": torch.zeros(6)})
    with torch.no_grad(), pytest.raises(ValueError, match="pack it again"):
        again(x)


def test_a_build_without_the_library_is_told_so(monkeypatch):
    monkeypatch.setattr(prepack_module, "available_libraries", lambda: ("onednn",))
    with pytest.raises(RuntimeError, match="'mkl' are not available.*available: \\['onednn'\\]"):
        pack_weight(torch.randn(3, 4), library="mkl")
    monkeypatch.setattr(prepack_module, "_CHOICES", {})
    assert choose_library(3, 4, 1) == "onednn"  # the only one: nothing to time
    monkeypatch.setattr(prepack_module, "available_libraries", lambda: ())
    with pytest.raises(RuntimeError, match="'auto' are not available"):
        check_prepack_available("auto")


def test_doctests():
    import doctest

    from llmfoundations.inference import fast_decode, prepack

    for module in (prepack, fast_decode):
        assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("library", _LIBRARIES)
def test_serving_engine_on_a_prepacked_model_gives_the_same_tokens(library):
    # benchmarks/serving.py runs the continuous-batching engine on a prepack_linears model.
    from llmfoundations.inference.batching import Engine, SchedulerConfig

    torch.manual_seed(1)
    config = ModelConfig.llama(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    model = DecoderLM(config).eval()
    packed = DecoderLM(config).eval()
    packed.load_state_dict(model.state_dict())
    prepack_linears(packed, rows=3, library=library)
    runs = []
    for m in (model, packed):
        engine = Engine(m, num_blocks=20, block_size=4, config=SchedulerConfig(token_budget=6, max_running=3), fast=True)
        for n, new in ((5, 4), (9, 3), (2, 6)):
            engine.add_request(list(range(1, n + 1)), max_new_tokens=new)
        runs.append(engine.run())
    assert runs[0] == runs[1]
