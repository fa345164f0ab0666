"""Tests of kv_cache.py: the buffers themselves, and cached decoding == full forward passes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.kv_cache import KVCache, LayerKVCache, kv_cache_bytes
from llmfoundations.models import DecoderLM, ModelConfig

TOL = dict(atol=1e-5, rtol=1e-5)
V = 53

CONFIGS = {
    "llama": ModelConfig.llama(V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2),
    "mqa": ModelConfig.llama(
        V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=1, rope_interleaved=True
    ),
    "gpt": ModelConfig.gpt(V, d_model=32, n_layers=2, n_heads=4, max_seq_len=32),
    "sinusoidal": ModelConfig.original(V, d_model=32, n_layers=2, n_heads=4, norm_position="pre"),
}


def _model(name: str, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    model = DecoderLM(CONFIGS[name]).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


# ----------------------------------------------------------------------------- buffers


def test_layer_cache_appends_and_returns_everything():
    cache = LayerKVCache(batch_size=2, n_kv_heads=3, head_dim=4, max_len=10)
    k1, v1 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    k2, v2 = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
    cache.update(k1, v1)
    k_all, v_all = cache.update(k2, v2)
    assert cache.length == 5
    torch.testing.assert_close(k_all, torch.cat([k1, k2], dim=2))
    torch.testing.assert_close(v_all, torch.cat([v1, v2], dim=2))


def test_layer_cache_errors():
    cache = LayerKVCache(2, 3, 4, max_len=5)
    with pytest.raises(ValueError, match="max_len=5"):
        cache.update(torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4))
    with pytest.raises(ValueError, match="k must be"):
        cache.update(torch.randn(2, 2, 1, 4), torch.randn(2, 3, 1, 4))
    with pytest.raises(ValueError, match="as many positions"):
        cache.update(torch.randn(2, 3, 1, 4), torch.randn(2, 3, 2, 4))
    with pytest.raises(ValueError, match="v must have 4"):
        cache.update(torch.randn(2, 3, 1, 4), torch.randn(3, 1, 4))
    with pytest.raises(ValueError, match="max_len"):
        LayerKVCache(2, 3, 4, max_len=0)
    assert cache.length == 0  # failed updates leave it untouched


def test_memory_formula():
    # Llama-2-7B (32 layers, 32 KV heads of 128, fp16), one 4096-token sequence: 2 GiB
    assert kv_cache_bytes(32, 1, 32, 128, 4096) == 2 * 2**30
    assert kv_cache_bytes(32, 1, 8, 128, 4096) == 2**29  # GQA with 8 KV heads: a quarter
    cache = KVCache(3, 2, 2, 8, max_len=16, dtype=torch.float32)
    assert (
        cache.memory_bytes()
        == kv_cache_bytes(3, 2, 2, 8, 16, torch.float32)
        == 2 * 3 * 2 * 2 * 16 * 8 * 4
    )
    assert kv_cache_bytes(1, 1, 1, 1, 0) == 0


def test_for_model_reset_crop_reorder():
    model = _model("llama")
    cache = KVCache.for_model(model, batch_size=2, max_len=12)
    assert len(cache.layers) == 2 and cache.n_kv_heads == 2 and cache.head_dim == 8
    assert cache.layers[0].k.dtype == torch.float32
    ids = torch.randint(0, V, (2, 5))
    model(ids, kv_cache=cache)
    assert cache.length == 5 and "length=5/12" in repr(cache)
    cache.crop(3)
    assert cache.length == 3
    torch.testing.assert_close(
        model(ids[:, 3:], kv_cache=cache).logits, model(ids).logits[:, 3:], **TOL
    )  # cropping = forgetting the last positions
    swapped = KVCache.for_model(model, batch_size=2, max_len=12)
    model(ids, kv_cache=swapped)
    swapped.reorder(torch.tensor([1, 0]))
    nxt = torch.randint(0, V, (2, 1))
    a = model(nxt.flip(0), kv_cache=swapped).logits
    b = model(torch.cat([ids.flip(0), nxt.flip(0)], 1)).logits[:, -1:]
    torch.testing.assert_close(a, b, **TOL)
    cache.reset()
    assert cache.length == 0
    with pytest.raises(ValueError, match="length"):
        cache.crop(1)
    with pytest.raises(ValueError, match="batch_size=2"):
        cache.reorder(torch.tensor([0]))
    with pytest.raises(TypeError, match="config"):
        KVCache.for_model(torch.nn.Linear(2, 2), 1, 4)


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("name", list(CONFIGS))
def test_token_by_token_equals_full_forward_at_every_step(name):
    model = _model(name)
    ids = torch.randint(0, V, (2, 10))
    cache = KVCache.for_model(model, batch_size=2, max_len=10)
    with torch.no_grad():
        for t in range(10):
            step = model(ids[:, t : t + 1], kv_cache=cache).logits[:, 0]  # (B, V)
            full = model(ids[:, : t + 1]).logits[:, -1]
            torch.testing.assert_close(step, full, **TOL)
    assert cache.length == 10


@settings(max_examples=10, deadline=None)
@given(chunks=st.lists(st.integers(1, 4), min_size=1, max_size=5), seed=st.integers(0, 99))
def test_chunked_prefill_then_steps(chunks, seed):
    model = _model("llama", seed=seed % 3)
    total = sum(chunks)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2, total), generator=gen)
    cache = KVCache.for_model(model, batch_size=2, max_len=total)
    with torch.no_grad():
        full = model(ids).logits
        start, parts = 0, []
        for size in chunks:
            parts.append(model(ids[:, start : start + size], kv_cache=cache).logits)
            start += size
    torch.testing.assert_close(torch.cat(parts, 1), full, **TOL)


@pytest.mark.parametrize("name", ["llama", "gpt"])
def test_left_padded_batch_with_cache(name):
    model = _model(name)
    prompts = [torch.randint(0, V, (6,)), torch.randint(0, V, (3,))]
    width = 6
    ids = torch.stack(
        [torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts]
    )
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    cont = torch.randint(0, V, (2, 4))  # tokens appended one at a time after the prompt
    cache = KVCache.for_model(model, batch_size=2, max_len=width + 4)
    with torch.no_grad():
        logits = [model(ids, attention_mask=mask, kv_cache=cache).logits[:, -1]]
        for t in range(4):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
            logits.append(
                model(cont[:, t : t + 1], attention_mask=mask, kv_cache=cache).logits[:, -1]
            )
        # each row alone, unpadded, without a cache
        for row, prompt in enumerate(prompts):
            seq = torch.cat([prompt, cont[row]])[None]
            alone = model(seq).logits[0, len(prompt) - 1 :]  # prediction after each step
            torch.testing.assert_close(torch.stack([step[row] for step in logits]), alone, **TOL)


def test_cache_overflow_and_mismatch_through_the_model():
    model = _model("llama")
    cache = KVCache.for_model(model, batch_size=1, max_len=4)
    model(torch.randint(0, V, (1, 4)), kv_cache=cache)
    with pytest.raises(ValueError, match="max_len=4"):
        model(torch.randint(0, V, (1, 1)), kv_cache=cache)
    with pytest.raises(ValueError, match="batch_size"):
        model(torch.randint(0, V, (2, 1)), kv_cache=KVCache.for_model(model, 1, 4))
    with pytest.raises(ValueError, match="attention_mask"):  # must cover cached + new positions
        cache.reset()
        model(torch.randint(0, V, (1, 2)), kv_cache=cache)
        model(
            torch.randint(0, V, (1, 1)),
            attention_mask=torch.ones(1, 1, dtype=torch.long),
            kv_cache=cache,
        )
