"""The Lab 06-6 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import pytest

from llmfoundations import checks
from llmfoundations.checks import prefix_cache as pc
from llmfoundations.inference.prefix_cache import block_hash


def good_chained_block_hashes(tokens, block_size):
    hashes, parent = [], None
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = block_hash(parent, tokens[start : start + block_size])
        hashes.append(parent)
    return hashes


def good_count_hits(prompts, block_size):
    cached, hits = set(), []
    for prompt in prompts:
        usable = (len(prompt) - 1) // block_size * block_size
        n = 0
        for h in good_chained_block_hashes(prompt[:usable], block_size):
            if h not in cached:
                break
            n += block_size
        hits.append(n)
        cached.update(good_chained_block_hashes(prompt, block_size))
    return hits


def test_chained_block_hashes_check_passes_a_correct_answer(capsys):
    checks.check_chained_block_hashes(good_chained_block_hashes)
    assert "✔ chained_block_hashes: all 6 cases" in capsys.readouterr().out


def test_chained_block_hashes_check_accepts_a_tuple(capsys):
    checks.check_chained_block_hashes(lambda t, p: tuple(good_chained_block_hashes(t, p)))
    assert "✔ chained_block_hashes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [(mistake, message[:30]) for mistake, message in pc._hash_mistakes()]
    + [
        (lambda t, p: good_chained_block_hashes(t, p)[::-1], None),
        (lambda t, p: {h: 0 for h in good_chained_block_hashes(t, p)}, "must return a list"),
    ],
)
def test_chained_block_hashes_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="chained_block_hashes") as err:
        checks.check_chained_block_hashes(wrong)
    if hint is not None:
        assert hint in str(err.value)
    else:
        assert "Hint:" not in str(err.value)


def test_each_hash_mistake_is_caught_by_its_own_case():
    # every known mistake differs from the reference on at least one case, and the hints
    # tell the mistakes apart (none reproduces another one on every case)
    cases = pc._HASH_CASES
    results = [[f(*a) for a, _ in cases] for f, _ in pc._hash_mistakes()]
    reference = [good_chained_block_hashes(*a) for a, _ in cases]
    assert all(r != reference for r in results)
    assert len({repr(r) for r in results}) == len(results)


def test_count_hits_reference_matches_the_set_walk():
    for args, _ in pc._hit_cases():
        assert pc.reference_count_hits(*args) == good_count_hits(*args)
    # the worked numbers of the first case: system prompt of 10 tokens, blocks of 4
    assert pc.reference_count_hits(*pc._hit_cases()[0][0]) == [0, 8, 12, 0, 4, 0]


def test_count_hits_check_passes_a_correct_answer(capsys):
    checks.check_count_hits(good_count_hits)
    assert "✔ count_hits: all 6 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [(mistake, message[:30]) for mistake, message in pc._hit_mistakes()]
    + [
        (lambda prompts, p: [0] * len(prompts), None),
        (lambda prompts, p: sum(good_count_hits(prompts, p)), "must return a list"),
    ],
)
def test_count_hits_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="count_hits") as err:
        checks.check_count_hits(wrong)
    if hint is not None:
        assert hint in str(err.value)

