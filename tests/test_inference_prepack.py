"""Weights pre-packed for oneDNN: the same products as ``F.linear``, in eager and compiled code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.inference.prepack import (
    PackedLinear,
    pack_weight,
    packed_linear,
    prepack_linears,
)
from llmfoundations.models import DecoderLM, ModelConfig

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN"
)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 9),
    n=st.integers(1, 70),
    k=st.integers(1, 70),
    hint=st.integers(1, 16),
    lead=st.lists(st.integers(1, 3), max_size=2),
    seed=st.integers(0, 1000),
)
def test_property_packed_product_equals_f_linear(rows, n, k, hint, lead, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g)
    x = torch.randn(*lead, rows, k, generator=g)
    packed = pack_weight(w, hint)  # the hint tunes, it does not restrict the rows
    torch.testing.assert_close(packed_linear(x, packed), F.linear(x, w), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(packed_linear(x, packed, b), F.linear(x, w, b), rtol=1e-5, atol=1e-4)


def test_non_contiguous_input():
    w, x = torch.randn(6, 5), torch.randn(5, 4).T  # (4, 5), transposed view
    torch.testing.assert_close(packed_linear(x, pack_weight(w)), x @ w.T, rtol=1e-5, atol=1e-5)


def test_prepacked_model_gives_the_same_logits_and_keeps_ties():
    torch.manual_seed(0)
    config = ModelConfig.llama(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    model = DecoderLM(config).eval()
    ids = torch.randint(0, 61, (3, 7))
    with torch.no_grad():
        expected = model(ids).logits
        linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        assert prepack_linears(model, rows=3) == linears > 0
        assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
        assert model.lm_head.weight is model.embed.weight  # still tied
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_compiled_call_equals_eager():
    layer = torch.nn.Linear(16, 24).requires_grad_(False)
    packed = PackedLinear.from_linear(layer, rows=2)

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


def test_doctests():
    import doctest

    from llmfoundations.inference import fast_decode, prepack

    for module in (prepack, fast_decode):
        assert doctest.testmod(module).failed == 0


def test_serving_engine_on_a_prepacked_model_gives_the_same_tokens():
    # benchmarks/serving.py runs the continuous-batching engine on a prepack_linears model.
    from llmfoundations.inference.batching import Engine, SchedulerConfig

    torch.manual_seed(1)
    config = ModelConfig.llama(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    model = DecoderLM(config).eval()
    packed = DecoderLM(config).eval()
    packed.load_state_dict(model.state_dict())
    prepack_linears(packed, rows=3)
    runs = []
    for m in (model, packed):
        engine = Engine(m, num_blocks=20, block_size=4, config=SchedulerConfig(token_budget=6, max_running=3), fast=True)
        for n, new in ((5, 4), (9, 3), (2, 6)):
            engine.add_request(list(range(1, n + 1)), max_new_tokens=new)
        runs.append(engine.run())
    assert runs[0] == runs[1]
