"""The Lab 06-1 checks grade: right answers pass, plausible wrong ones and blanks fail.

The references inside the checks are held against independent ones: the byte count
written out as a formula, and the course's flash-attention reference (which must also
pass the "no whole row at once" watch, since it is the algorithm the exercises ask for).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations import checks
from llmfoundations.checks import flash as flash_checks
from llmfoundations.inference.flash import flash_forward_reference
from llmfoundations.inference.flash import online_softmax as package_online_softmax

# Blank answers and non-functions are tested for every check in tests/test_checks.py.


# ---------------------------------------------------------------- naive_attention_bytes


def good_naive_attention_bytes(seq_len, head_dim, dtype_bytes):
    qkvo = 4 * seq_len * head_dim  # read Q, K, V; write O
    scores = 4 * seq_len * seq_len  # write S, read S, write P, read P
    return (qkvo + scores) * dtype_bytes


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 100_000), st.integers(1, 256), st.sampled_from([1, 2, 4, 8])
)
def test_the_byte_reference_is_the_formula(seq_len, head_dim, dtype_bytes):
    expected = good_naive_attention_bytes(seq_len, head_dim, dtype_bytes)
    assert flash_checks._reference_naive_attention_bytes(seq_len, head_dim, dtype_bytes) == expected


def test_naive_attention_bytes_check_passes_a_correct_answer(capsys):
    checks.check_naive_attention_bytes(good_naive_attention_bytes)
    checks.check_naive_attention_bytes(lambda t, d, e: float(good_naive_attention_bytes(t, d, e)))
    assert capsys.readouterr().out.count("✔ naive_attention_bytes: all 7 cases") == 2


@pytest.mark.parametrize(
    "wrong",
    [
        lambda t, d, e: (4 * t * d + t * t) * e,  # the score matrix counted once
        lambda t, d, e: (4 * t * d + 2 * t * t) * e,  # S written and read, P forgotten
        lambda t, d, e: 4 * t * t * e,  # Q, K, V and O forgotten
        lambda t, d, e: (4 * t * d + 4 * d * d) * e,  # T and D swapped
        lambda t, d, e: (4 * t * d + 4 * t * t) * e * 8,  # bits
        lambda t, d, e: (4 * t * d + 4 * t * t) * e / 2**20,  # MiB
        lambda t, d, e: 4 * t * d + 4 * t * t,  # the dtype forgotten
    ],
)
def test_naive_attention_bytes_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="naive_attention_bytes, case"):
        checks.check_naive_attention_bytes(wrong)


# ------------------------------------------------------------------------ online_softmax


def good_online_softmax(x, block_size):
    m = torch.full(x.shape[:-1], -math.inf)  # (...,)
    l = torch.zeros(x.shape[:-1])
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start : start + block_size]
        m_new = torch.max(m, block.max(dim=-1).values)  # binary max: no reduction of a row
        l = l * torch.exp(m - m_new) + torch.exp(block - m_new[..., None]).sum(-1)
        m = m_new
    return torch.exp(x - m[..., None]) / l[..., None]


def _blocks(x, block_size):
    return [x[..., s : s + block_size] for s in range(0, x.shape[-1], block_size)]


def no_rescale(x, block_size):
    m = torch.full(x.shape[:-1], -math.inf)
    l = torch.zeros(x.shape[:-1])
    for block in _blocks(x, block_size):
        m = torch.maximum(m, block.amax(-1))
        l = l + torch.exp(block - m[..., None]).sum(-1)  # old terms keep their old maximum
    return torch.exp(x - m[..., None]) / l[..., None]


def rescale_the_wrong_way(x, block_size):
    m = torch.full(x.shape[:-1], -1e4)  # finite start, so only the direction is wrong
    l = torch.zeros(x.shape[:-1])
    for block in _blocks(x, block_size):
        m_new = torch.maximum(m, block.amax(-1))
        l = l * torch.exp(m_new - m) + torch.exp(block - m_new[..., None]).sum(-1)
        m = m_new
    return torch.exp(x - m[..., None]) / l[..., None]


def no_maximum(x, block_size):
    l = torch.zeros(x.shape[:-1])
    for block in _blocks(x, block_size):
        l = l + torch.exp(block).sum(-1)
    return torch.exp(x) / l[..., None]


def drops_the_ragged_block(x, block_size):
    m = torch.full(x.shape[:-1], -math.inf)
    l = torch.zeros(x.shape[:-1])
    for start in range(0, x.shape[-1] - block_size + 1, block_size):  # full blocks only
        block = x[..., start : start + block_size]
        m_new = torch.maximum(m, block.amax(-1))
        l = l * torch.exp(m - m_new) + torch.exp(block - m_new[..., None]).sum(-1)
        m = m_new
    return torch.exp(x - m[..., None]) / l[..., None]


def two_pass(x, block_size):
    m = x.amax(dim=-1, keepdim=True)  # the whole row at once
    l = sum(torch.exp(b - m).sum(-1, keepdim=True) for b in _blocks(x, block_size))
    return torch.exp(x - m) / l


def test_online_softmax_check_passes_correct_answers(capsys):
    checks.check_online_softmax(good_online_softmax)
    checks.check_online_softmax(package_online_softmax)
    assert capsys.readouterr().out.count("✔ online_softmax: all 8 cases") == 2


@pytest.mark.parametrize(
    "wrong", [no_rescale, rescale_the_wrong_way, no_maximum, drops_the_ragged_block]
)
def test_online_softmax_check_rejects_wrong_values(wrong):
    with pytest.raises(AssertionError, match="online_softmax, case"):
        checks.check_online_softmax(wrong)


@pytest.mark.parametrize(
    "whole_row",
    [
        lambda x, b: torch.softmax(x, dim=-1),
        lambda x, b: F.softmax(x, -1),
        lambda x, b: x.softmax(-1),
        lambda x, b: torch.exp(x - torch.logsumexp(x, -1, keepdim=True)),
        two_pass,
    ],
)
def test_online_softmax_check_rejects_reading_the_whole_row(whole_row):
    with pytest.raises(AssertionError, match="one block at a time"):
        checks.check_online_softmax(whole_row)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 50), st.integers(0, 2**16))
def test_the_watch_lets_the_package_online_softmax_through(rows, cols, block_size, seed):
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 5
    got = flash_checks._watched_online_softmax(package_online_softmax)(x, block_size)
    torch.testing.assert_close(got, torch.softmax(x, -1), atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------- tiled_attention


def good_tiled_attention(q, k, v, block_k):
    scale = 1.0 / math.sqrt(q.shape[-1])
    m = torch.full(q.shape[:-1], -math.inf)  # (..., Tq)
    l = torch.zeros(q.shape[:-1])
    acc = torch.zeros(*q.shape[:-1], v.shape[-1])  # (..., Tq, Dv)
    for start in range(0, k.shape[-2], block_k):
        k_tile, v_tile = k[..., start : start + block_k, :], v[..., start : start + block_k, :]
        s = q @ k_tile.transpose(-2, -1) * scale  # (..., Tq, bk)
        m_new = torch.maximum(m, s.amax(-1))
        p = torch.exp(s - m_new[..., None])
        alpha = torch.exp(m - m_new)
        l = alpha * l + p.sum(-1)
        acc = alpha[..., None] * acc + p @ v_tile
        m = m_new
    return acc / l[..., None]


def _tiled(q, k, v, block_k, *, scale=None, rescale_acc=True, rescale_l=True):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    m = torch.full(q.shape[:-1], -math.inf)
    l = torch.zeros(q.shape[:-1])
    acc = torch.zeros(*q.shape[:-1], v.shape[-1])
    for start in range(0, k.shape[-2], block_k):
        s = q @ k[..., start : start + block_k, :].transpose(-2, -1) * scale
        m_new = torch.maximum(m, s.amax(-1))
        p = torch.exp(s - m_new[..., None])
        alpha = torch.exp(m - m_new)
        l = (alpha if rescale_l else 1.0) * l + p.sum(-1)
        acc = (alpha[..., None] if rescale_acc else 1.0) * acc + p @ v[..., start : start + block_k, :]
        m = m_new
    return acc / l[..., None]


def each_tile_on_its_own(q, k, v, block_k):
    scale = 1.0 / math.sqrt(q.shape[-1])
    outs = []
    for start in range(0, k.shape[-2], block_k):
        s = q @ k[..., start : start + block_k, :].transpose(-2, -1) * scale
        outs.append(torch.softmax(s, -1) @ v[..., start : start + block_k, :])
    return sum(outs) / len(outs)


def test_tiled_attention_check_passes_correct_answers(capsys):
    checks.check_tiled_attention(good_tiled_attention)
    checks.check_tiled_attention(  # the course's FlashAttention-2 forward, as another answer
        lambda q, k, v, block_k: flash_forward_reference(q, k, v, block_q=2, block_k=block_k)[0]
    )
    assert capsys.readouterr().out.count("✔ tiled_attention: all 7 cases") == 2


@pytest.mark.parametrize(
    "wrong",
    [
        lambda q, k, v, b: _tiled(q, k, v, b, scale=1.0),  # no 1/sqrt(D)
        lambda q, k, v, b: _tiled(q, k, v, b, scale=1.0 / math.sqrt(v.shape[-1])),  # sqrt(Dv)
        lambda q, k, v, b: _tiled(q, k, v, b, rescale_acc=False),
        lambda q, k, v, b: _tiled(q, k, v, b, rescale_l=False),
        each_tile_on_its_own,
    ],
)
def test_tiled_attention_check_rejects_wrong_values(wrong):
    with pytest.raises(AssertionError, match="tiled_attention, case"):
        checks.check_tiled_attention(wrong)


def test_tiled_attention_check_rejects_the_whole_score_matrix():
    def whole(q, k, v, block_k):
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v

    with pytest.raises(AssertionError, match=r"whole \(5, 12\) score matrix"):
        checks.check_tiled_attention(whole)


def test_tiled_attention_check_rejects_a_fused_call_over_every_key():
    with pytest.raises(AssertionError, match="scaled_dot_product_attention over 12 keys"):
        checks.check_tiled_attention(lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v))
