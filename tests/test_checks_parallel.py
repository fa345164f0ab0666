"""Tests for checks.parallel: the Lab 06-8 checks pass correct answers, fail blanks and
known mistakes with the right hint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmfoundations import checks


def good_ring(n_bytes, world_size):
    return 2 * (world_size - 1) / world_size * n_bytes


def good_zero(n_params, world_size, stage):
    weights, grads, optim = 2 * n_params, 2 * n_params, 12 * n_params
    if stage >= 1:
        optim /= world_size
    if stage >= 2:
        grads /= world_size
    if stage >= 3:
        weights /= world_size
    return weights + grads + optim


def test_ring_check_passes_correct_answers(capsys):
    checks.check_ring_all_reduce_bytes(good_ring)
    assert "✔ ring_bytes: all 7 cases" in capsys.readouterr().out
    # step by step: 2 (W - 1) steps of one chunk; and a tensor result
    checks.check_ring_all_reduce_bytes(lambda s, w: sum(s / w for _ in range(2 * (w - 1))))
    checks.check_ring_all_reduce_bytes(lambda s, w: torch.tensor(good_ring(s, w), dtype=torch.float64))
    checks.check_ring_all_reduce_bytes(lambda s, w: np.float64(good_ring(s, w)))
    checks.check_ring_all_reduce_bytes(lambda s, w: np.int64(2 * (w - 1) * s) / w)
    checks.check_zero_bytes_per_rank(lambda p, w, s: np.int64(round(good_zero(p, w, s))))  # once refused


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda s, w: (w - 1) / w * s, "reduce-scatter half"),
        (lambda s, w: 2 * (w - 1) * s, "not the whole tensor"),
        (lambda s, w: 2.0 * s, "never sends its own chunk"),
        (lambda s, w: float(s), "count both phases"),
        (lambda s, w: "1000", "must return a number"),
    ],
)
def test_ring_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="ring_bytes") as err:
        checks.check_ring_all_reduce_bytes(wrong)
    assert hint in str(err.value)


def test_zero_check_passes_correct_answers(capsys):
    checks.check_zero_bytes_per_rank(good_zero)
    assert "✔ zero_bytes: all 8 cases" in capsys.readouterr().out
    # per parameter, the shards of each stage in a list (an integer Psi times a float)
    def per_param(p, w, s):
        return p * sum(b / (w if s >= level else 1) for b, level in ((2, 3), (2, 2), (12, 1)))

    checks.check_zero_bytes_per_rank(per_param)


def _staged(p, w, s, wb=2, gb=2, k=12, shift=0):
    s += shift
    return wb * p / (w if s >= 3 else 1) + gb * p / (w if s >= 2 else 1) + k * p / (w if s >= 1 else 1)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda p, w, s: _staged(p, w, s, shift=1), "off by one"),
        (lambda p, w, s: 16 * p / (w if s >= 1 else 1), "stage 1 shards only the optimizer state"),
        (lambda p, w, s: _staged(p, w, s, k=0), "optimizer state is missing"),
        (lambda p, w, s: _staged(p, w, s, gb=4), "fp16"),
        (lambda p, w, s: round(_staged(p, w, s) / 1e9, 3), "return bytes, not gigabytes"),
        (lambda p, w, s: _staged(p, w, s) / 2**30, "return bytes, not GiB"),
        (lambda p, w, s: 0.0, None),  # nothing like the GB mistake: no hint
        (lambda p, w, s: [1.0], "must return a number"),
    ],
)
def test_zero_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="zero_bytes") as err:
        checks.check_zero_bytes_per_rank(wrong)
    assert hint in str(err.value) if hint else "Hint" not in str(err.value)


@pytest.mark.parametrize("check", [checks.check_ring_all_reduce_bytes, checks.check_zero_bytes_per_rank])
def test_blank_answers_are_not_attempted(check):
    def blank(*args):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError, match="not attempted yet"):
        check(blank)


# ---------------------------------------------- from a review of the graders (hand-written)


def test_calling_the_reference_is_refused():
    from llmfoundations.inference import parallel_costs as pc

    for check, student in (
        (checks.check_ring_all_reduce_bytes, lambda s, w: pc.ring_all_reduce_bytes(s, w)),
        (checks.check_ring_all_reduce_bytes, pc.ring_all_reduce_bytes),
        (checks.check_zero_bytes_per_rank, lambda p, w, s: pc.zero_bytes_per_rank(p, w, s)),
    ):
        with pytest.raises(AssertionError, match="the function this exercise rebuilds"):
            check(student)


def test_float32_and_0d_array_answers_pass_and_near_misses_fail(capsys):
    checks.check_zero_bytes_per_rank(lambda p, w, s: np.float32(good_zero(p, w, s)))
    checks.check_zero_bytes_per_rank(lambda p, w, s: 2 * torch.tensor(p) / 2 * good_zero(1, w, s))
    checks.check_ring_all_reduce_bytes(lambda s, w: np.array(good_ring(s, w)))
    checks.check_ring_all_reduce_bytes(lambda s, w: np.float32(good_ring(s, w)))
    assert capsys.readouterr().out.count("✔") == 4
    for check, near in (
        (checks.check_ring_all_reduce_bytes, lambda s, w: good_ring(s, w) * (1 + 1e-5)),
        (checks.check_zero_bytes_per_rank, lambda p, w, s: good_zero(p, w, s) * (1 + 1e-5)),
    ):
        with pytest.raises(AssertionError):
            check(near)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda s, w: good_ring(s, w) if w > 1 else float(s), "with W = 1 there is no other rank"),
        (lambda p, w, s: good_zero(p, w, s) if s else 16 * p / w, None),  # shards at stage 0
        (lambda p, w, s: good_zero(p, max(w - 1, 1), s), None),  # W - 1: 7e-4 off at W = 64
    ],
)
def test_single_case_mistakes_are_caught(wrong, hint):
    check = checks.check_ring_all_reduce_bytes if wrong.__code__.co_argcount == 2 else checks.check_zero_bytes_per_rank
    with pytest.raises(AssertionError) as err:
        check(wrong)
    if hint is not None:
        assert hint in str(err.value)


def test_the_guard_restores_the_profiler_and_reports_a_call_before_an_error():
    """The check's profile hook is removed after each call (a profiler or debugger the
    student runs keeps working), and calling the reference and then failing reports the call."""
    import sys

    from llmfoundations.inference import parallel_costs as pc

    def mine(frame, event, arg):
        return None

    def calls_then_fails(s, w):
        pc.ring_all_reduce_bytes(s, w)
        raise ZeroDivisionError

    sys.setprofile(mine)
    try:
        with pytest.raises(AssertionError, match="ring_bytes calls ring_all_reduce_bytes"):
            checks.check_ring_all_reduce_bytes(calls_then_fails)
        assert sys.getprofile() is mine
        checks.check_ring_all_reduce_bytes(good_ring)
        assert sys.getprofile() is mine
    finally:
        sys.setprofile(None)


# ------------------------------------- from a mutation review of the graders


def test_one_element_arrays_and_tensors_are_numbers_and_a_bool_is_not(capsys):
    """Lab 06-7's graders take a one-element NumPy array; these refused it (and took a
    one-element tensor), so the two labs disagreed."""
    checks.check_ring_all_reduce_bytes(lambda s, w: torch.tensor([good_ring(s, w)]))
    checks.check_ring_all_reduce_bytes(lambda s, w: np.array([good_ring(s, w)]))
    checks.check_zero_bytes_per_rank(lambda p, w, s: np.array([[good_zero(p, w, s)]]))
    assert capsys.readouterr().out.count("✔") == 3
    with pytest.raises(AssertionError, match="must return a number, got bool"):
        checks.check_ring_all_reduce_bytes(lambda s, w: w > 1)
    with pytest.raises(AssertionError, match="must return a number, got ndarray"):
        checks.check_ring_all_reduce_bytes(lambda s, w: np.array([good_ring(s, w)] * 2))


@pytest.mark.parametrize(
    "rounded",
    [lambda s, w: 2 * (w - 1) * (s // w), lambda s, w: 2 * (w - 1) * s // w],
    ids=["chunk rounded down", "floor division"],
)
def test_a_chunk_rounded_to_whole_bytes_is_refused_with_a_hint(rounded):
    """Every case once divided evenly, so rounding the chunk (S // W) passed."""
    with pytest.raises(AssertionError, match="Hint: keep the fraction"):
        checks.check_ring_all_reduce_bytes(rounded)
