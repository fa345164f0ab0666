"""The chapter-1 checks grade: right answers pass, plausible wrong ones and blanks fail.

The references inside the checks are also held against independent ones: ``str.replace``
for merging, ``collections.Counter`` for pair counts, a hand-worked BPE example, einops
for repeating heads, and complex-number rotation for RoPE.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from einops import repeat
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations import checks
from llmfoundations.checks import chapter1

# Blank answers and non-functions are tested for every check in tests/test_checks.py.


# ------------------------------------------------------------------ 01-1 tokenization


def good_count_pairs(ids):
    return Counter(zip(ids, ids[1:], strict=False))


def good_merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def good_train_bpe(ids, n_merges, first_id=256):
    ids, merges = list(ids), {}
    for k in range(n_merges):
        counts = good_count_pairs(ids)
        if not counts:
            break
        pair = max(counts, key=counts.get)  # first inserted among ties
        merges[pair] = first_id + k
        ids = good_merge(ids, pair, first_id + k)
    return merges


def test_count_pairs_check_passes_a_correct_answer(capsys):
    checks.check_count_pairs(good_count_pairs)
    assert "✔ count_pairs: all 8 cases" in capsys.readouterr().out


def _count_non_overlapping(ids):
    counts, i = {}, 0
    while i + 1 < len(ids):
        p = (ids[i], ids[i + 1])
        counts[p] = counts.get(p, 0) + 1
        i += 2 if p[0] == p[1] else 1
    return counts


@pytest.mark.parametrize(
    "wrong",
    [
        lambda ids: dict.fromkeys(zip(ids, ids[1:], strict=False), 1),  # presence, not counts
        lambda ids: Counter(zip(ids[:-1], ids[1:-1], strict=False)),  # drops the last pair
        _count_non_overlapping,  # "a a a" counted once
        lambda ids: Counter(ids),  # counts tokens, not pairs
        lambda ids: list(Counter(zip(ids, ids[1:], strict=False)).items()),  # not a dict
    ],
)
def test_count_pairs_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="count_pairs"):
        checks.check_count_pairs(wrong)


def test_merge_check_passes_a_correct_answer(capsys):
    checks.check_merge(good_merge)
    checks.check_merge(lambda ids, pair, new_id: tuple(good_merge(ids, pair, new_id)))
    assert capsys.readouterr().out.count("✔ merge: all 10 cases") == 2


def _merge_overlapping(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 1  # steps over only one: "a a a" -> X X
            if i + 1 >= len(ids):
                i += 1
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_right_to_left(ids, pair, new_id):
    return good_merge(ids[::-1], pair[::-1], new_id)[::-1]


def _merge_in_place(ids, pair, new_id):
    i = 0
    while i + 1 < len(ids):
        if (ids[i], ids[i + 1]) == tuple(pair):
            ids[i : i + 2] = [new_id]
        i += 1
    return ids


@pytest.mark.parametrize(
    "wrong",
    [
        _merge_overlapping,
        _merge_right_to_left,
        _merge_in_place,
        lambda ids, pair, new_id: [new_id if t == pair[0] else t for t in ids if t != pair[1]],
        lambda ids, pair, new_id: "".join(map(str, good_merge(ids, pair, new_id))),  # not a list
    ],
)
def test_merge_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="merge"):
        checks.check_merge(wrong)


def test_merge_check_says_when_the_input_was_changed():
    with pytest.raises(AssertionError, match="changed its input list"):
        checks.check_merge(_merge_in_place)


def test_train_bpe_check_passes_a_correct_answer(capsys):
    checks.check_train_bpe(good_train_bpe)
    assert "✔ train_bpe: all 6 cases" in capsys.readouterr().out


def _train_bpe_greatest_tie(ids, n_merges, first_id=256):
    ids, merges = list(ids), {}
    for k in range(n_merges):
        counts = good_count_pairs(ids)
        if not counts:
            break
        pair = max(counts, key=lambda p: (counts[p], p))
        merges[pair] = first_id + k
        ids = good_merge(ids, pair, first_id + k)
    return merges


def _train_bpe_ignores_first_id(ids, n_merges, first_id=256):
    return good_train_bpe(ids, n_merges)


def _train_bpe_overlapping_merge(ids, n_merges, first_id=256):
    ids, merges = list(ids), {}
    for k in range(n_merges):
        counts = good_count_pairs(ids)
        if not counts:
            break
        pair = max(counts, key=counts.get)
        merges[pair] = first_id + k
        ids = _merge_overlapping(ids, pair, first_id + k)
    return merges


def _train_bpe_never_merges(ids, n_merges, first_id=256):
    counts = good_count_pairs(ids)  # ranks the pairs once, never recounts
    ranked = sorted(counts, key=counts.get, reverse=True)[:n_merges]
    return {p: first_id + k for k, p in enumerate(ranked)}


@pytest.mark.parametrize(
    "wrong",
    [
        _train_bpe_greatest_tie,
        _train_bpe_ignores_first_id,
        _train_bpe_overlapping_merge,
        _train_bpe_never_merges,
    ],
)
def test_train_bpe_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="train_bpe"):
        checks.check_train_bpe(wrong)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=30))
def test_reference_count_pairs_matches_counter(ids):
    assert chapter1.reference_count_pairs(ids) == Counter(zip(ids, ids[1:], strict=False))
    assert sum(chapter1.reference_count_pairs(ids).values()) == max(len(ids) - 1, 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=30), st.integers(0, 3), st.integers(0, 3))
def test_reference_merge_matches_str_replace(ids, a, b):
    # str.replace scans left to right and never overlaps: an independent reference.
    as_text = "".join(chr(65 + i) for i in ids)
    expected = [ord(c) - 65 for c in as_text.replace(chr(65 + a) + chr(65 + b), chr(65 + 9))]
    assert chapter1.reference_merge(ids, (a, b), 9) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=25), st.integers(0, 8))
def test_reference_train_bpe_replays_to_a_shorter_sequence(ids, n_merges):
    merges = chapter1.reference_train_bpe(ids, n_merges)
    assert list(merges.values()) == list(range(256, 256 + len(merges)))
    replayed = list(ids)
    for pair, new_id in merges.items():  # every learned merge shortens the replay
        shorter = chapter1.reference_merge(replayed, pair, new_id)
        assert len(shorter) < len(replayed)
        replayed = shorter
    # it stops early only when no pair is left
    assert len(merges) == n_merges or len(replayed) < 2


def test_reference_train_bpe_on_a_worked_example():
    # "aaabdaaabac": (a, a) occurs 4 times (overlaps count) and is merged first into Z:
    # "Z a b d Z a b a c". Now (Z, a) and (a, b) tie at 2; (Z, a) is seen first -> Y:
    # "Y b d Y b a c". Then (Y, b) occurs twice -> X: "X d X a c".
    a, b = ord("a"), ord("b")
    assert chapter1.reference_train_bpe(list(b"aaabdaaabac"), 3) == {
        (a, a): 256,
        (256, a): 257,
        (257, b): 258,
    }


# ------------------------------------------------------------------ 01-2 attention


def good_attention(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v


def good_causal_attention(q, k, v):
    t = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = torch.ones(t, t, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def test_attention_check_passes_correct_answers(capsys):
    checks.check_attention(good_attention)
    checks.check_attention(lambda q, k, v: torch.einsum(
        "...qk,...kd->...qd", (torch.einsum("...qd,...kd->...qk", q, k) / q.shape[-1] ** 0.5)
        .softmax(-1), v))  # fmt: skip
    assert capsys.readouterr().out.count("✔ attention: all 4 cases") == 2


def test_attention_checks_refuse_the_fused_kernel_the_lab_rules_out():
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    for shortcut in (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), lambda q, k, v: sdpa(q, k, v)):
        with pytest.raises(AssertionError, match="attention, case 1 of 4.*calls scaled_dot_product_attention, "
                           "which this exercise asks you not to use"):
            checks.check_attention(shortcut)
    with pytest.raises(AssertionError, match="causal_attention, case 1 of 5.*calls scaled_dot_product_attention"):
        checks.check_causal_attention(lambda q, k, v: sdpa(q, k, v, is_causal=True))


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v, "not scaled"),
        (lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(v.shape[-1]), -1) @ v,
         "the \\*value\\* size"),
        (lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], -1) @ v, "divided by D;"),
        (lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-2) @ v,
         "over the queries"),
        (lambda q, k, v: (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])) @ v, "straight into @ v"),
    ],
)
def test_attention_check_names_the_common_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=f"\nHint: .*{hint}"):
        checks.check_attention(wrong)


@pytest.mark.parametrize(
    "wrong",
    [
        lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v,  # no scale
        lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(v.shape[-1]), -1) @ v,
        lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], -1) @ v,  # / D
        lambda q, k, v: torch.softmax(  # softmax over the queries
            q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-2
        )
        @ v,
        lambda q, k, v: (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])) @ v,  # no softmax
    ],
)
def test_attention_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="attention, case"):
        checks.check_attention(wrong)


def test_causal_attention_check_passes_a_correct_answer(capsys):
    checks.check_causal_attention(good_causal_attention)
    assert "✔ causal_attention: all 5 cases" in capsys.readouterr().out


def _causal_hides_diagonal(q, k, v):
    t = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = torch.ones(t, t, dtype=torch.bool).tril(-1)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def _causal_looks_forward(q, k, v):
    t = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = torch.ones(t, t, dtype=torch.bool).triu()
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def _causal_mask_after_softmax(q, k, v):
    t = q.shape[-2]
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return (weights * torch.ones(t, t).tril()) @ v  # rows no longer sum to 1


@pytest.mark.parametrize(
    "wrong",
    [_causal_hides_diagonal, _causal_looks_forward, _causal_mask_after_softmax, good_attention],
)
def test_causal_attention_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="causal_attention, case"):
        checks.check_causal_attention(wrong)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_causal_hides_diagonal, "hides the diagonal"),
        (_causal_looks_forward, "points the wrong way"),
        (_causal_mask_after_softmax, "after the softmax"),
        (good_attention, "there is no mask"),
    ],
)
def test_causal_attention_check_names_the_common_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=f"\nHint: .*{hint}"):
        checks.check_causal_attention(wrong)


def test_repeat_kv_check_passes_correct_answers(capsys):
    checks.check_repeat_kv(lambda k, n_rep: repeat(k, "b g t d -> b (g r) t d", r=n_rep))
    checks.check_repeat_kv(
        lambda k, n_rep: k[:, :, None].expand(-1, -1, n_rep, -1, -1).flatten(1, 2)
    )
    assert capsys.readouterr().out.count("✔ repeat_kv: all 5 cases") == 2


@pytest.mark.parametrize(
    "wrong",
    [
        lambda k, n_rep: k.repeat(1, n_rep, 1, 1),  # tiles: head h reads h % Hkv
        lambda k, n_rep: repeat(k, "b g t d -> b (r g) t d", r=n_rep),  # same mistake
        lambda k, n_rep: torch.repeat_interleave(k, n_rep, dim=2),  # repeats positions
        lambda k, n_rep: k,  # forgets to repeat
    ],
)
def test_repeat_kv_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="repeat_kv, case"):
        checks.check_repeat_kv(wrong)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda k, n_rep: k.repeat(1, n_rep, 1, 1), "tiled"),
        (lambda k, n_rep: repeat(k, "b g t d -> b (r g) t d", r=n_rep), "tiled"),
        (lambda k, n_rep: torch.repeat_interleave(k, n_rep, dim=2), "positions are repeated"),
        (lambda k, n_rep: k, "unchanged"),
    ],
)
def test_repeat_kv_check_names_the_common_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=f"\nHint: .*{hint}"):
        checks.check_repeat_kv(wrong)


def test_repeat_kv_reference_has_the_layout_of_multi_head_attention():
    # MultiHeadAttention (and Hugging Face's repeat_kv) use einops' "(g r)" grouping.
    k = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(
        chapter1._reference_repeat_kv(k, 4),
        repeat(k, "b g s d -> b (g r) s d", r=4),
        atol=0.0,
        rtol=0.0,
    )


# ------------------------------------------------------------------ 01-3 positions


def good_sinusoidal(n_positions, d_model):
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (T, 1)
    i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (C/2,) = 2i
    angle = pos / 10000.0 ** (i / d_model)  # (T, C/2)
    pe = torch.zeros(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.float()


def test_sinusoidal_check_passes_a_correct_answer(capsys):
    checks.check_sinusoidal(good_sinusoidal)
    assert "✔ sinusoidal: all 5 cases" in capsys.readouterr().out


def _sinusoidal_swapped(n_positions, d_model):
    pe = good_sinusoidal(n_positions, d_model)
    return torch.stack((pe[:, 1::2], pe[:, 0::2]), dim=-1).flatten(1)


def _sinusoidal_exponent_i(n_positions, d_model):
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    i = torch.arange(d_model // 2, dtype=torch.float64)
    angle = pos / 10000.0 ** (i / d_model)  # i / d instead of 2i / d
    return torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(1).float()


def _sinusoidal_concatenated(n_positions, d_model):
    pe = good_sinusoidal(n_positions, d_model)
    return torch.cat((pe[:, 0::2], pe[:, 1::2]), dim=-1)  # [sin ... | cos ...] layout


def _sinusoidal_column_exponent(n_positions, d_model):
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    col = torch.arange(d_model, dtype=torch.float64)
    angle = pos / 10000.0 ** (col / d_model)  # each column its own speed
    return torch.where(col % 2 == 0, angle.sin(), angle.cos()).float()


@pytest.mark.parametrize(
    "wrong",
    [
        _sinusoidal_swapped,
        _sinusoidal_exponent_i,
        _sinusoidal_concatenated,
        _sinusoidal_column_exponent,
    ],
)
def test_sinusoidal_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="sinusoidal, case"):
        checks.check_sinusoidal(wrong)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_sinusoidal_swapped, "swapped"),
        (_sinusoidal_exponent_i, "exponent is i / d_model"),
        (_sinusoidal_concatenated, "concatenated"),
    ],
)
def test_sinusoidal_check_names_the_common_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=f"\nHint: .*{hint}"):
        checks.check_sinusoidal(wrong)


def test_a_wrong_answer_with_no_known_mistake_gets_no_hint():
    with pytest.raises(AssertionError) as info:
        checks.check_sinusoidal(_sinusoidal_column_exponent)
    assert "Hint:" not in str(info.value)


def _rope_complex(x, positions, theta=10000.0):
    """Independent RoPE: pairs (2i, 2i+1) as complex numbers times e^{i p w_i}."""
    d = x.shape[-1]
    w = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (D/2,)
    angle = positions.to(torch.float64)[:, None] * w  # (T, D/2)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).flatten(-2).float()


def good_rope_interleaved(x, positions, theta=10000.0):
    d = x.shape[-1]
    w = theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    angle = positions.float()[:, None] * w  # (T, D/2)
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * angle.cos() - b * angle.sin()
    out[..., 1::2] = a * angle.sin() + b * angle.cos()
    return out


def test_rope_check_passes_correct_answers(capsys):
    checks.check_rope_interleaved(good_rope_interleaved)
    checks.check_rope_interleaved(_rope_complex)
    assert capsys.readouterr().out.count("✔ rope_interleaved: all 6 cases") == 2


def _rope_split_half(x, positions, theta=10000.0):
    from llmfoundations.positional import apply_rope

    return apply_rope(x, positions, theta, interleaved=False)


def _rope_backwards(x, positions, theta=10000.0):
    return good_rope_interleaved(x, -positions, theta)


def _rope_wrong_speeds(x, positions, theta=10000.0):
    d = x.shape[-1]
    w = theta ** (-torch.arange(d // 2, dtype=torch.float32) / d)  # i / D, not 2i / D
    angle = positions.float()[:, None] * w
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * angle.cos() - b * angle.sin()
    out[..., 1::2] = a * angle.sin() + b * angle.cos()
    return out


@pytest.mark.parametrize(
    "wrong",
    [
        _rope_split_half,
        _rope_backwards,
        _rope_wrong_speeds,
        lambda x, positions, theta=10000.0: good_rope_interleaved(x, positions),  # ignores theta
    ],
)
def test_rope_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="rope_interleaved, case"):
        checks.check_rope_interleaved(wrong)
