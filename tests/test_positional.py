"""Tests of positional.py: sinusoidal table, learned positions, RoPE (both layouts)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.positional import (
    LearnedPositionalEmbedding,
    apply_rope,
    rope_angles,
    rope_frequencies,
    sinusoidal_encoding,
)

# ----------------------------------------------------------------------------- sinusoidal


@pytest.mark.parametrize("d_model", [4, 6, 7, 16])
@pytest.mark.parametrize("base", [10000.0, 100.0])
def test_sinusoidal_matches_formula_computed_with_math(d_model, base):
    n = 11
    table = sinusoidal_encoding(n, d_model, base)
    assert table.shape == (n, d_model) and table.dtype == torch.float32
    expected = torch.empty(n, d_model, dtype=torch.float64)
    for pos in range(n):
        for dim in range(d_model):
            i = dim // 2
            angle = pos / base ** (2 * i / d_model)
            expected[pos, dim] = math.sin(angle) if dim % 2 == 0 else math.cos(angle)
    torch.testing.assert_close(table.double(), expected, atol=1e-7, rtol=0)


def test_sinusoidal_first_row_and_dtype():
    table = sinusoidal_encoding(5, 8, dtype=torch.float64)
    assert table.dtype == torch.float64
    # position 0: sin(0) = 0 on even columns, cos(0) = 1 on odd columns
    torch.testing.assert_close(
        table[0], torch.tensor([0.0, 1, 0, 1, 0, 1, 0, 1], dtype=torch.float64)
    )


def test_sinusoidal_errors():
    with pytest.raises(ValueError, match="n_positions"):
        sinusoidal_encoding(0, 8)
    with pytest.raises(TypeError, match="d_model"):
        sinusoidal_encoding(4, 8.0)
    with pytest.raises(ValueError, match="base"):
        sinusoidal_encoding(4, 8, base=-1.0)


# ----------------------------------------------------------------------------- learned


def test_learned_positional_embedding_shapes_and_lookup():
    torch.manual_seed(0)
    emb = LearnedPositionalEmbedding(10, 6)
    assert emb.weight.shape == (10, 6)
    out = emb(torch.arange(4))
    assert out.shape == (4, 6)
    torch.testing.assert_close(out, emb.weight[:4])
    rows = torch.tensor([[0, 1, 2], [5, 6, 7]])
    out = emb(rows)
    assert out.shape == (2, 3, 6)
    torch.testing.assert_close(out[1, 2], emb.weight[7])


def test_learned_positional_embedding_errors():
    emb = LearnedPositionalEmbedding(4, 2)
    with pytest.raises(ValueError, match="max_positions=4"):
        emb(torch.arange(5))
    with pytest.raises(ValueError, match="positions"):
        emb(torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="integer"):
        emb(torch.arange(3).float())
    with pytest.raises(ValueError, match="max_positions"):
        LearnedPositionalEmbedding(0, 2)


# ----------------------------------------------------------------------------- RoPE


def test_rope_frequencies_values():
    freq = rope_frequencies(8, theta=100.0)
    expected = torch.tensor([100.0 ** (-2 * i / 8) for i in range(4)])
    torch.testing.assert_close(freq, expected, atol=0, rtol=1e-6)
    with pytest.raises(ValueError, match="even"):
        rope_frequencies(7)
    with pytest.raises(ValueError, match="theta"):
        rope_frequencies(8, theta=0.0)


def _rope_by_hand(x: torch.Tensor, positions: list[int], theta: float, interleaved: bool):
    """Rotate each pair with an explicit 2x2 matrix, element by element, in float64."""
    t, d = x.shape
    out = torch.empty(t, d, dtype=torch.float64)
    for row, pos in enumerate(positions):
        for i in range(d // 2):
            angle = pos * theta ** (-2 * i / d)
            rot = torch.tensor(
                [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                dtype=torch.float64,
            )
            a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + d // 2)
            pair = torch.stack([x[row, a], x[row, b]]).double()
            out[row, a], out[row, b] = rot @ pair
    return out


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_equals_pairwise_rotation(interleaved):
    torch.manual_seed(1)
    x = torch.randn(5, 8)
    positions = [0, 1, 2, 7, 30]
    got = apply_rope(x, torch.tensor(positions), theta=50.0, interleaved=interleaved)
    expected = _rope_by_hand(x, positions, 50.0, interleaved)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_rope_position_zero_is_identity():
    x = torch.randn(2, 3, 4, 8)
    torch.testing.assert_close(apply_rope(x, torch.zeros(4, dtype=torch.long)), x)


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(0, 200),
    n=st.integers(0, 200),
    shift=st.integers(0, 500),
    interleaved=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_rope_dot_product_depends_only_on_distance(m, n, shift, interleaved, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 16, generator=gen, dtype=torch.float64)

    def score(pq, pk):
        rq = apply_rope(q, torch.tensor([pq]), interleaved=interleaved)
        rk = apply_rope(k, torch.tensor([pk]), interleaved=interleaved)
        return (rq * rk).sum()

    # rotation is done in float32, so compare with a float32-sized tolerance
    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=2e-4, rtol=1e-4)


@settings(max_examples=25, deadline=None)
@given(
    d_half=st.integers(1, 16),
    t=st.integers(1, 6),
    interleaved=st.booleans(),
    seed=st.integers(0, 999),
)
def test_rope_preserves_norm(d_half, t, interleaved, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, t, 2 * d_half, generator=gen)
    positions = torch.randint(0, 10_000, (t,), generator=gen)
    y = apply_rope(x, positions, interleaved=interleaved)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-4, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(d_half=st.integers(1, 12), seed=st.integers(0, 999))
def test_interleaved_equals_split_half_after_permutation(d_half, seed):
    gen = torch.Generator().manual_seed(seed)
    d = 2 * d_half
    x = torch.randn(2, 3, 5, d, generator=gen)
    positions = torch.randint(0, 1000, (5,), generator=gen)
    # interleaved pair (2i, 2i+1) becomes split-half pair (i, i + D/2) under this permutation
    perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])
    inter = apply_rope(x, positions, interleaved=True)
    split = apply_rope(x[..., perm], positions, interleaved=False)
    torch.testing.assert_close(split, inter[..., perm], atol=1e-6, rtol=0)


def test_rope_matches_transformers_llama():
    modeling = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    torch.manual_seed(2)
    b, h, t, d, theta = 2, 3, 7, 16, 500.0
    config = LlamaConfig(
        hidden_size=h * d,
        num_attention_heads=h,
        head_dim=d,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    rotary = modeling.LlamaRotaryEmbedding(config)
    q, k = torch.randn(b, h, t, d), torch.randn(b, h, t, d)
    position_ids = torch.tensor(
        [[0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 2, 3, 4]]
    )  # 2nd row left-padded
    cos, sin = rotary(q, position_ids)
    q_ref, k_ref = modeling.apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(apply_rope(q, position_ids, theta), q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply_rope(k, position_ids, theta), k_ref, atol=1e-5, rtol=1e-5)


def test_rope_accepted_position_shapes():
    torch.manual_seed(3)
    b, h, t, d = 2, 3, 4, 8
    x = torch.randn(b, h, t, d)
    rows = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])
    # reference: each batch row on its own with (T,) positions
    expected = torch.stack([apply_rope(x[i], rows[i]) for i in range(b)])
    torch.testing.assert_close(apply_rope(x, rows), expected)  # (B, T)
    torch.testing.assert_close(apply_rope(x, rows[:, None]), expected)  # (B, 1, T)
    shared = torch.arange(t)
    torch.testing.assert_close(apply_rope(x, shared), apply_rope(x, shared.expand(b, t)))  # (T,)
    # (B, T, D) activations with (B, T) positions
    x3 = torch.randn(b, t, d)
    expected3 = torch.stack([apply_rope(x3[i], rows[i]) for i in range(b)])
    torch.testing.assert_close(apply_rope(x3, rows), expected3)


def test_rope_float_positions_interpolate():
    # linear position interpolation: positions divided by a factor are rotated by the same
    # 2x2 matrices at fractional angles
    torch.manual_seed(4)
    x = torch.randn(7, 8)
    positions = [0.0, 0.5, 1.0, 1.5, 2.0, 7.25, 100.5]
    got = apply_rope(x, torch.tensor(positions))
    expected = _rope_by_hand(x, positions, 10000.0, interleaved=False)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(rope_angles(torch.tensor([1.5]), 8)[0], 1.5 * rope_frequencies(8))


def test_rope_keeps_low_precision_dtype():
    x = torch.randn(2, 5, 8)
    y = apply_rope(x.bfloat16(), torch.arange(5))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), apply_rope(x, torch.arange(5)), atol=3e-2, rtol=1e-2)


def test_rope_errors():
    x = torch.randn(2, 3, 4, 8)
    with pytest.raises(ValueError, match="even"):
        apply_rope(torch.randn(4, 7), torch.arange(4))
    with pytest.raises(ValueError, match="sequence length"):
        apply_rope(x, torch.arange(5))
    with pytest.raises(ValueError, match="broadcast"):
        apply_rope(x, torch.zeros(3, 4, dtype=torch.long))  # batch 3 for x with batch 2
    with pytest.raises(ValueError, match="broadcast"):
        apply_rope(torch.randn(4, 8), torch.zeros(2, 4, dtype=torch.long))  # would grow x
    with pytest.raises(TypeError, match="positions"):
        apply_rope(x, torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="x"):
        apply_rope(torch.ones(4, 8, dtype=torch.long), torch.arange(4))
    with pytest.raises(TypeError, match="interleaved"):
        apply_rope(x, torch.arange(4), interleaved="yes")


@pytest.mark.parametrize("interleaved", [False, True])
def test_precomputed_angles_rotate_exactly_like_apply_rope(interleaved):
    from llmfoundations.positional import rope_cos_sin, rotate_pairs

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 8, generator=g)  # (B, H, T, D)
    positions = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]])  # (B, T), second row left-padded
    cos, sin = rope_cos_sin(positions[:, None], 8, 500.0)  # (B, 1, T, D/2) each
    expected = apply_rope(x, positions, 500.0, interleaved)
    torch.testing.assert_close(rotate_pairs(x, cos, sin, interleaved), expected, rtol=0, atol=0)
