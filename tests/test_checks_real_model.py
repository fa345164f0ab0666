"""The checks of the real-model labs (02-5, 01-7, 06-2) grade: right answers pass, plausible
wrong answers and blanks fail.

The references inside the checks are held against independent ones: a ChatML string
written out by hand, the ``gguf`` package's own dequantizer, explicit index formulas for
the row permutation, Python loops for the head rankings, the package's ``KVCache`` for
the cache size, and a token-by-token loop for attention with a cache.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations import checks
from llmfoundations.checks import real_model
from llmfoundations.kv_cache import KVCache
from llmfoundations.pretrained import DEFAULT_SYSTEM_PROMPT, qk_rows_to_interleaved

# ---------------------------------------------------------------------------- chatml


def good_chatml(messages):
    turns = list(messages)
    if turns[0]["role"] != "system":
        turns = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, *turns]
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns)
    return text + "<|im_start|>assistant\n"


def test_chatml_reference_is_the_documented_string():
    want = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )
    assert good_chatml([{"role": "user", "content": "Hi!"}]) == want


def test_chatml_check_passes_a_correct_answer(capsys):
    checks.check_chatml(good_chatml)
    assert "✔ chatml: all 5 cases" in capsys.readouterr().out


def _no_default_system(messages):
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + "<|im_start|>assistant\n"


def _always_default_system(messages):
    turns = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, *messages]
    return _no_default_system(turns)


def _mutates_input(messages):
    if messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": DEFAULT_SYSTEM_PROMPT})
    return _no_default_system(messages)


@pytest.mark.parametrize(
    "wrong",
    [
        _no_default_system,
        _always_default_system,
        _mutates_input,
        lambda m: good_chatml(m).replace("<|im_end|>\n", "<|im_end|>"),  # no newline
        lambda m: good_chatml(m).removesuffix("<|im_start|>assistant\n"),  # no cue to answer
        lambda m: good_chatml(m).encode(),  # bytes, not str
    ],
)
def test_chatml_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="chatml, case"):
        checks.check_chatml(wrong)


# ---------------------------------------------------------------------- unpermute_qk


def loop_unpermute(weight, n_heads):
    """Row by row from the definition: GGUF row 2i -> i, row 2i+1 -> i + D/2 in each head."""
    d = weight.shape[0] // n_heads
    out = torch.empty_like(weight)
    for h in range(n_heads):
        for i in range(d // 2):
            out[h * d + i] = weight[h * d + 2 * i]
            out[h * d + d // 2 + i] = weight[h * d + 2 * i + 1]
    return out


@pytest.mark.parametrize("n_heads, head_dim", [(1, 4), (2, 8), (3, 16)])
def test_unpermute_reference_matches_the_index_formula(n_heads, head_dim):
    w = torch.randn(n_heads * head_dim, 5)
    torch.testing.assert_close(
        loop_unpermute(w, n_heads), real_model.qk_rows_to_split_half(w, n_heads), atol=0, rtol=0
    )


def test_unpermute_check_passes_correct_answers(capsys):
    checks.check_unpermute_qk(loop_unpermute)
    checks.check_unpermute_qk(
        lambda w, n: rearrange(w, "(h half two) c -> (h two half) c", h=n, two=2)
    )
    assert capsys.readouterr().out.count("✔ unpermute_qk") == 2


@pytest.mark.parametrize(
    "wrong",
    [
        qk_rows_to_interleaved,  # the converter's own direction
        lambda w, n: loop_unpermute(w, 1),  # all heads as one
        lambda w, n: w,  # nothing undone
        lambda w, n: loop_unpermute(w, n)[:, :-1],  # wrong shape
    ],
)
def test_unpermute_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="unpermute_qk, case"):
        checks.check_unpermute_qk(wrong)


# ------------------------------------------------------------------- dequantize_q4_1


def good_dequantize(block):
    d = np.frombuffer(block[0:2], np.float16)[0].astype(np.float32)
    m = np.frombuffer(block[2:4], np.float16)[0].astype(np.float32)
    low = [b & 15 for b in block[4:]]
    high = [b >> 4 for b in block[4:]]
    return torch.tensor([d * q + m for q in low + high], dtype=torch.float32)


def test_dequantize_reference_matches_the_gguf_package():
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 64)).astype(np.float32)  # 3 rows of 2 blocks
    packed = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q4_1)  # (3, 40) uint8
    want = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q4_1)  # (3, 64)
    for row in range(3):
        for blk in range(2):
            block = packed[row, blk * 20 : (blk + 1) * 20].tobytes()
            got = real_model.reference_dequantize_q4_1(block)
            torch.testing.assert_close(
                got, torch.from_numpy(want[row, blk * 32 : (blk + 1) * 32]), atol=0, rtol=0
            )


def test_dequantize_reference_rejects_a_wrong_block_size():
    with pytest.raises(ValueError, match="20 bytes"):
        real_model.reference_dequantize_q4_1(b"\x00" * 18)


def test_dequantize_check_passes_a_correct_answer(capsys):
    checks.check_dequantize_q4_1(good_dequantize)
    checks.check_dequantize_q4_1(lambda b: good_dequantize(b).numpy())  # NumPy is fine too
    assert capsys.readouterr().out.count("✔ dequantize_q4_1") == 2


def _interleaved_nibbles(block):
    d, m = np.frombuffer(block[:4], np.float16).astype(np.float32)
    q = [v for b in block[4:] for v in (b & 15, b >> 4)]
    return torch.tensor([d * v + m for v in q], dtype=torch.float32)


def _swapped_scale_and_min(block):
    return good_dequantize(block[2:4] + block[0:2] + block[4:])


def _high_nibbles_first(block):
    swapped = bytes(((b & 15) << 4) | (b >> 4) for b in block[4:])
    return good_dequantize(block[:4] + swapped)


@pytest.mark.parametrize(
    "wrong",
    [
        _interleaved_nibbles,
        _swapped_scale_and_min,
        _high_nibbles_first,
        lambda b: good_dequantize(b) - float(np.frombuffer(b[2:4], np.float16)[0]),  # no m
        lambda b: good_dequantize(b)[:16],  # half the block
    ],
)
def test_dequantize_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="dequantize_q4_1, case"):
        checks.check_dequantize_q4_1(wrong)


# --------------------------------------------------------------- top_attending_heads


def loop_top_heads(attn, query_idx, key_idx, k=10):
    keys = [key_idx] if isinstance(key_idx, int) else key_idx
    scored = []
    for layer in range(attn.shape[0]):
        for head in range(attn.shape[1]):
            weight = sum(float(attn[layer, head, query_idx, j]) for j in keys)
            scored.append((layer, head, weight))
    scored.sort(key=lambda x: -x[2])
    return scored[:k]


@settings(max_examples=25, deadline=None)
@given(
    n_layers=st.integers(1, 5),
    n_heads=st.integers(1, 6),
    t=st.integers(3, 7),  # keys 0 and 1 of >= 3: no ties
    k=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_top_heads_reference_matches_a_loop(n_layers, n_heads, t, k, seed):
    g = torch.Generator().manual_seed(seed)
    attn = real_model._random_attention(g, n_layers, n_heads, t, causal=False)
    keys = [0, 1]
    got = real_model.reference_top_attending_heads(attn, t - 1, keys, k)
    want = loop_top_heads(attn, t - 1, keys, k)
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in want]
    assert all(math.isclose(x[2], y[2], abs_tol=1e-6) for x, y in zip(got, want, strict=True))
    assert len(got) == min(k, n_layers * n_heads)


def test_top_heads_check_passes_a_correct_answer(capsys):
    checks.check_top_attending_heads(loop_top_heads)
    assert "✔ top_attending_heads: all 4 cases" in capsys.readouterr().out


def _transposed(attn, query_idx, key_idx, k=10):  # key -> query instead of query -> key
    keys = [key_idx] if isinstance(key_idx, int) else key_idx
    return loop_top_heads(attn.transpose(-2, -1), keys[0], query_idx, k)


def _layer_head_mixed_up(attn, query_idx, key_idx, k=10):
    keys = [key_idx] if isinstance(key_idx, int) else key_idx
    w = attn[:, :, query_idx, keys].sum(-1).flatten()
    top = w.topk(k)
    n_layers = attn.shape[0]
    return [
        (i // n_layers, i % n_layers, v)
        for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


def _max_over_keys(attn, query_idx, key_idx, k=10):
    keys = [key_idx] if isinstance(key_idx, int) else key_idx
    w = attn[:, :, query_idx, keys].amax(-1)
    top = w.flatten().topk(k)
    h = attn.shape[1]
    return [
        (i // h, i % h, v) for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


@pytest.mark.parametrize(
    "wrong",
    [
        _transposed,
        _layer_head_mixed_up,
        _max_over_keys,
        lambda a, q, key, k=10: loop_top_heads(a, q, key, k)[::-1],  # smallest first
        lambda a, q, key, k=10: loop_top_heads(a, q, key, k + 1),  # one too many
        lambda a, q, key, k=10: [(layer, head) for layer, head, _ in loop_top_heads(a, q, key, k)],
    ],
)
def test_top_heads_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="top_attending_heads, case"):
        checks.check_top_attending_heads(wrong)


# ------------------------------------------------------------- previous_token_scores


def loop_previous_token(attn):
    n_layers, n_heads, t, _ = attn.shape
    out = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            out[layer, head] = sum(attn[layer, head, i, i - 1] for i in range(1, t)) / (t - 1)
    return out


def test_previous_token_reference_matches_a_loop():
    g = torch.Generator().manual_seed(3)
    attn = real_model._random_attention(g, 3, 4, 6)
    torch.testing.assert_close(
        real_model.reference_previous_token_scores(attn),
        loop_previous_token(attn),
        atol=1e-6,
        rtol=1e-6,
    )


def test_previous_token_check_passes_a_correct_answer(capsys):
    checks.check_previous_token_scores(loop_previous_token)
    assert "✔ previous_token_scores" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong",
    [
        lambda a: torch.diagonal(a, offset=0, dim1=-2, dim2=-1).mean(-1),  # itself
        lambda a: torch.diagonal(a, offset=1, dim1=-2, dim2=-1).mean(-1),  # the next token
        lambda a: F.pad(torch.diagonal(a, offset=-1, dim1=-2, dim2=-1), (1, 0)).mean(-1),  # /T
        lambda a: torch.diagonal(a, offset=-1, dim1=-2, dim2=-1).mean(-1).T,  # (H, L)
    ],
)
def test_previous_token_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="previous_token_scores, case"):
        checks.check_previous_token_scores(wrong)


# -------------------------------------------------------------------- kv_cache_bytes


def good_kv_bytes(n_layers, batch_size, n_kv_heads, head_dim, seq_len, bytes_per_value):
    return 2 * n_layers * batch_size * n_kv_heads * head_dim * seq_len * bytes_per_value


def test_kv_bytes_reference_matches_the_allocated_cache():
    cache = KVCache(
        n_layers=3, batch_size=2, n_kv_heads=3, head_dim=8, max_len=10, dtype=torch.float16
    )
    assert real_model._reference_kv_cache_bytes(3, 2, 3, 8, 10, 2) == cache.memory_bytes()
    assert real_model._reference_kv_cache_bytes(32, 1, 32, 128, 4096, 2) == 2 * 2**30


def test_kv_bytes_check_passes_a_correct_answer(capsys):
    checks.check_kv_cache_bytes(good_kv_bytes)
    checks.check_kv_cache_bytes(lambda *a: float(good_kv_bytes(*a)))  # 2.0 GiB as a float is fine
    assert capsys.readouterr().out.count("✔ kv_cache_bytes") == 2


@pytest.mark.parametrize(
    "wrong",
    [
        lambda *a: good_kv_bytes(*a) // 2,  # keys only
        lambda n_l, b, h, d, t, nb: 2 * n_l * b * h * d * t,  # bytes per value forgotten
        lambda n_l, b, h, d, t, nb: 2 * n_l * h * d * t * nb,  # batch forgotten
    ],
)
def test_kv_bytes_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="kv_cache_bytes, case"):
        checks.check_kv_cache_bytes(wrong)


# ----------------------------------------------------------------- attend_with_cache


def loop_attend_with_cache(q, k_cache, v_cache, k_new, v_new):
    """One new token at a time: token i sees the cache and the new tokens up to i."""
    outs = []
    for i in range(q.shape[-2]):
        k = torch.cat([k_cache, k_new[..., : i + 1, :]], dim=-2)
        v = torch.cat([v_cache, v_new[..., : i + 1, :]], dim=-2)
        scores = q[..., i : i + 1, :] @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        outs.append(torch.softmax(scores, dim=-1) @ v)
    return torch.cat(outs, dim=-2)


@settings(max_examples=25, deadline=None)
@given(p=st.integers(0, 6), tn=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_attend_with_cache_reference_matches_the_full_sequence(p, tn, seed):
    """cached == uncached: the new rows equal the last rows of causal attention over all."""
    g = torch.Generator().manual_seed(seed)
    q_all, k_all, v_all = (torch.randn(2, 3, p + tn, 8, generator=g) for _ in range(3))
    full = F.scaled_dot_product_attention(q_all, k_all, v_all, is_causal=True)
    got = real_model.reference_attend_with_cache(
        q_all[..., p:, :],
        k_all[..., :p, :],
        v_all[..., :p, :],
        k_all[..., p:, :],
        v_all[..., p:, :],
    )
    torch.testing.assert_close(got, full[..., p:, :], atol=1e-5, rtol=1e-5)


def test_attend_with_cache_check_passes_a_correct_answer(capsys):
    checks.check_attend_with_cache(loop_attend_with_cache)
    assert "✔ attend_with_cache: all 4 cases" in capsys.readouterr().out


def _no_mask(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_cache, k_new], -2), torch.cat([v_cache, v_new], -2)
    return F.scaled_dot_product_attention(q, k, v)


def _top_left_mask(q, k_cache, v_cache, k_new, v_new):
    k, v = torch.cat([k_cache, k_new], -2), torch.cat([v_cache, v_new], -2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # aligned with key 0


def _cache_ignored(q, k_cache, v_cache, k_new, v_new):
    return F.scaled_dot_product_attention(q, k_new, v_new, is_causal=True)


@pytest.mark.parametrize("wrong", [_no_mask, _top_left_mask, _cache_ignored])
def test_attend_with_cache_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="attend_with_cache, case"):
        checks.check_attend_with_cache(wrong)
