"""The Lab 06-7 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations import checks
from llmfoundations.checks.paged_kv import _blocks_reference, _static_reference
from llmfoundations.inference.paged_kv import PagedKVCache


def good_blocks(length, num_new, block_size):
    return math.ceil((length + num_new) / block_size) - math.ceil(length / block_size)


def good_waste(prompt_lens, answer_lens):
    return (
        sum(max(prompt_lens) - p for p in prompt_lens),
        sum(max(answer_lens) - n for n in answer_lens),
    )


# ------------------------------------------------------------------ blocks to allocate


def test_blocks_check_passes_correct_answers(capsys):
    checks.check_blocks_to_allocate(good_blocks)
    assert "✔ blocks_to_allocate: all 12 cases" in capsys.readouterr().out
    # a loop that writes one token at a time, as decoding does; a float result; a tensor
    def by_tokens(length, num_new, block_size):
        new = 0
        for pos in range(length, length + num_new):
            new += pos % block_size == 0
        return new

    checks.check_blocks_to_allocate(by_tokens)
    checks.check_blocks_to_allocate(lambda t, n, p: float(good_blocks(t, n, p)))
    checks.check_blocks_to_allocate(lambda t, n, p: torch.tensor(good_blocks(t, n, p)))
    checks.check_blocks_to_allocate(lambda t, n, p: np.int64(good_blocks(t, n, p)))  # once refused
    checks.check_blocks_to_allocate(lambda t, n, p: np.float32(good_blocks(t, n, p)))


def free_slots_mod(length, num_new, block_size):
    """A common wrong answer: the last block's free slots as block_size - length % block_size."""
    free = block_size - length % block_size  # block_size when the last block is full (or absent)
    return max(0, math.ceil((num_new - free) / block_size))


def free_slots_mod_but_empty(length, num_new, block_size):
    """The same mistake with the empty sequence handled: wrong on full last blocks only."""
    if length == 0:
        return math.ceil(num_new / block_size)
    return free_slots_mod(length, num_new, block_size)


@pytest.mark.parametrize("wrong", [free_slots_mod, free_slots_mod_but_empty])
def test_blocks_check_names_the_full_last_block_mistake(wrong):
    # It reproduces rounding down on an empty sequence (the first case), so the order of the
    # hints decides: it must not be told to round up.
    with pytest.raises(AssertionError, match="blocks_to_allocate") as err:
        checks.check_blocks_to_allocate(wrong)
    assert "a full last block has no free slot" in str(err.value)
    assert "round up" not in str(err.value)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda t, n, p: (t + n) // p - t // p, "round up"),
        (lambda t, n, p: math.ceil(n / p), "last block may still have room"),
        (lambda t, n, p: math.ceil((t + n) / p), "subtract"),
        (lambda t, n, p: good_blocks(t, n, p) + 1, "blocks_to_allocate"),
        (lambda t, n, p: str(good_blocks(t, n, p)), "must return an int"),
        (lambda t, n, p: 0.5, "must return an int"),
        (lambda t, n, p: good_blocks(t, n, p) > 0, "must return an int"),
        (lambda t, n, p: np.bool_(good_blocks(t, n, p) > 0), "must return an int"),
        (lambda t, n, p: torch.tensor([good_blocks(t, n, p)] * 2), "must return an int"),
    ],
)
def test_blocks_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="blocks_to_allocate") as err:
        checks.check_blocks_to_allocate(wrong)
    assert hint in str(err.value)


@settings(max_examples=60, deadline=None)
@given(length=st.integers(0, 70), num_new=st.integers(0, 40), block_size=st.integers(1, 17))
def test_blocks_reference_is_the_ceiling_difference_and_what_append_allocates(length, num_new, block_size):
    expected = good_blocks(length, num_new, block_size)
    assert _blocks_reference(length, num_new, block_size) == expected
    # and what the cache really allocates when the tokens are written
    cache = PagedKVCache(n_layers=1, num_blocks=200, block_size=block_size, n_kv_heads=1, head_dim=1)
    seq = cache.add_sequence()
    if length:
        cache.append(0, seq, torch.zeros(1, length, 1), torch.zeros(1, length, 1))
    before = len(cache.block_table(seq))
    if num_new:
        cache.append(0, seq, torch.zeros(1, num_new, 1), torch.zeros(1, num_new, 1))
    assert len(cache.block_table(seq)) - before == expected


# ------------------------------------------------------------------------ static waste


def test_waste_check_passes_correct_answers(capsys):
    checks.check_static_waste(good_waste)
    assert "✔ static_waste: all 6 cases" in capsys.readouterr().out
    checks.check_static_waste(lambda p, a: list(good_waste(p, a)))  # a list is accepted
    checks.check_static_waste(lambda p, a: tuple(np.array(good_waste(p, a))))  # NumPy ints
    checks.check_static_waste(lambda p, a: np.array(good_waste(p, a)))  # a 1-D NumPy array
    checks.check_static_waste(lambda p, a: np.array(good_waste(p, a), dtype=np.float64))  # whole floats
    checks.check_static_waste(lambda p, a: [np.int32(x) for x in good_waste(p, a)])
    checks.check_static_waste(lambda p, a: torch.tensor(good_waste(p, a)))  # a 1-D tensor


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda p, a: good_waste(p, a)[::-1], "in this order"),
        (lambda p, a: (len(p) * max(p), len(a) * max(a)), "count only the wasted"),
        (lambda p, a: (good_waste(p, a)[0], sum(max(a) - n - 1 for n in a)), "busy for n steps"),
        (lambda p, a: (good_waste(p, a)[0], sum(max(a) - n + 1 for n in a)), "busy for n steps"),
        (lambda p, a: sum(good_waste(p, a)), "tuple of two ints"),
        (lambda p, a: tuple(x + 0.5 for x in good_waste(p, a)), "tuple of two ints"),
        (lambda p, a: (*good_waste(p, a), 0), "tuple of two ints"),
        (lambda p, a: np.array([*good_waste(p, a), 0]), "tuple of two ints"),  # wrong length
        (lambda p, a: np.array(good_waste(p, a))[:1], "tuple of two ints"),
        (lambda p, a: np.array(good_waste(p, a)).reshape(2, 1), "tuple of two ints"),  # 2-D
        (lambda p, a: np.array(good_waste(p, a)) > 0, "tuple of two ints"),  # NumPy bools
        (lambda p, a: (True, good_waste(p, a)[1]), "tuple of two ints"),
        (lambda p, a: [False, True], "tuple of two ints"),
        (lambda p, a: None, "tuple of two ints"),
        (lambda p, a: dict(enumerate(good_waste(p, a))), "tuple of two ints"),  # {0: pad, 1: idle}
        (lambda p, a: (None, good_waste(p, a)[1]), "tuple of two ints"),
        (lambda p, a: "ab", "tuple of two ints"),
        (lambda p, a: np.int64(good_waste(p, a)[0]), "tuple of two ints"),  # a NumPy scalar
        (lambda p, a: (0, good_waste(p, a)[1]), "static_waste"),
    ],
)
def test_waste_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="static_waste") as err:
        checks.check_static_waste(wrong)
    assert hint in str(err.value)


def _simulate_static(prompt_lens, answer_lens):
    """A step-by-step count: pad the prompts, then run every row for the longest answer."""
    width, pad = max(prompt_lens), 0
    for p in prompt_lens:
        while p < width:
            p, pad = p + 1, pad + 1
    idle = 0
    for step in range(max(answer_lens)):
        idle += sum(1 for n in answer_lens if step >= n)  # rows whose answer has ended
    return pad, idle


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(1, 60), st.integers(1, 40)), min_size=1, max_size=8))
def test_static_reference_matches_a_step_by_step_count(rows):
    prompt_lens, answer_lens = [p for p, _ in rows], [a for _, a in rows]
    assert _static_reference(prompt_lens, answer_lens) == _simulate_static(prompt_lens, answer_lens)


# ---------------------------------------------- from a review of the graders (hand-written)


@pytest.mark.parametrize(
    "wrap", [lambda x: np.array(float(x)), lambda x: np.array([x]), lambda x: np.array([float(x)])]
)
def test_blocks_check_takes_one_element_numpy_arrays(wrap, capsys):
    checks.check_blocks_to_allocate(lambda t, n, p: wrap(good_blocks(t, n, p)))
    assert "✔ blocks_to_allocate" in capsys.readouterr().out


def test_blocks_check_refuses_arrays_of_several_elements_with_a_message():
    with pytest.raises(AssertionError, match="blocks_to_allocate"):
        checks.check_blocks_to_allocate(lambda t, n, p: np.array([good_blocks(t, n, p)] * 2))


@pytest.mark.parametrize("length, num_new, block_size, expected", [(1, 1, 4, 0), (1, 3, 4, 0), (1, 4, 4, 1)])
def test_blocks_reference_on_a_one_token_sequence(length, num_new, block_size, expected):
    assert _blocks_reference(length, num_new, block_size) == expected


def test_a_student_that_empties_its_input_leaves_the_waste_cases_alone(capsys):
    from llmfoundations.checks import paged_kv as pk

    def consuming(prompt_lens, answer_lens):
        out = good_waste(prompt_lens, answer_lens)
        prompt_lens.clear()
        answer_lens.clear()
        return out

    before = repr(pk._WASTE_CASES)
    checks.check_static_waste(consuming)
    checks.check_static_waste(consuming)  # a cell run twice
    assert repr(pk._WASTE_CASES) == before and capsys.readouterr().out.count("✔") == 2


def test_c_style_truncation_gives_an_empty_sequence_no_block_and_is_refused():
    """(From a mutation review of the graders: only two cases expose it.) ``int()`` truncates
    towards zero, so int(-1 / P) == 0 and an empty sequence gets no block."""
    with pytest.raises(AssertionError, match="blocks_to_allocate"):
        checks.check_blocks_to_allocate(lambda t, n, p: int((t + n - 1) / p) - int((t - 1) / p))
