"""The Lab 06-6 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import os
import re

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


def good_count_hits(prompts, block_size, cached=None, *, lookup_only=False, self_first=False):
    """``cached``: the set of block names to start from (a fresh one by default). Two
    mistakes for the tests: ``lookup_only`` caches only the blocks looked up (not every full
    block), ``self_first`` caches a prompt's blocks before looking it up."""
    cached, hits = set() if cached is None else cached, []
    for prompt in prompts:
        usable = (len(prompt) - 1) // block_size * block_size
        if self_first:
            cached.update(good_chained_block_hashes(prompt, block_size))
        n = 0
        for h in good_chained_block_hashes(prompt[:usable], block_size):
            if h not in cached:
                break
            n += block_size
        hits.append(n)
        cached.update(good_chained_block_hashes(prompt[:usable] if lookup_only else prompt, block_size))
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
    assert "✔ count_hits: all 7 cases" in capsys.readouterr().out


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



# ---------------------------------------------- from a review of the graders (hand-written)


def _hits_keyed(prompts, p, key, partial=False, last_rule=True):
    """count_hits variants written apart from the module's own mistakes: ``key(prompt, s,
    p)`` names the block starting at ``s``; ``partial`` also caches and reuses a partial last
    block; without ``last_rule`` a whole prompt may be read from the cache."""
    cached, hits = set(), []
    for prompt in prompts:
        limit = len(prompt) - 1 if last_rule else len(prompt)
        n = 0
        for s in range(0, limit if partial else limit // p * p, p):
            if key(prompt, s, p) not in cached:
                break
            n += min(p, limit - s)
        hits.append(n)
        ends = range(0, len(prompt) if partial else len(prompt) - p + 1, p)
        cached.update(key(prompt, s, p) for s in ends)
    return hits


def _chained_key(prompt, s, p):
    return tuple(prompt[: s + p])  # the whole prefix names a block, as a chained hash does


@pytest.mark.parametrize(
    "key, partial, last_rule, hint",
    [
        (lambda pr, s, p: tuple(pr[s : s + p]), False, True, "a block is reused only after the"),
        (lambda pr, s, p: (s, tuple(pr[s : s + p])), False, True, None),  # position + tokens
        (_chained_key, True, True, None),  # partial blocks cached and reused
        (_chained_key, False, False, "the last token of a prompt is always"),
    ],
)
def test_count_hits_rejects_lookups_that_are_not_whole_chained_blocks(key, partial, last_rule, hint):
    cases = pc._hit_cases()
    right = [_hits_keyed(*args, key=_chained_key) for args, _ in cases]
    assert right == [pc.reference_count_hits(*args) for args, _ in cases]  # the harness is right
    with pytest.raises(AssertionError, match="count_hits") as err:
        checks.check_count_hits(lambda prompts, p: _hits_keyed(prompts, p, key, partial, last_rule))
    if hint is not None:
        assert hint in str(err.value)


def test_the_check_sees_a_block_cached_after_another_prefix_and_a_one_token_extension():
    # the case added for the two false acceptances above: [0, 0, 4, 0, 4]
    args = pc._hit_cases()[-1][0]
    assert pc.reference_count_hits(*args) == [0, 0, 4, 0, 4]


def test_calling_block_hashes_is_refused_in_any_spelling():
    from llmfoundations.inference import prefix_cache as cache_module
    from llmfoundations.inference.prefix_cache import block_hashes as bh

    for student in (
        cache_module.block_hashes,  # the function itself
        lambda t, p: cache_module.block_hashes(t, p),  # an attribute
        lambda t, p: bh(t, p),  # an alias
        lambda t, p: [h for h in (lambda: bh(t, p))()],  # inside a nested function
    ):
        with pytest.raises(AssertionError, match="block_hashes, the function this exercise rebuilds.*chain block_hash yourself"):
            checks.check_chained_block_hashes(student)


def test_count_hits_accepts_arrays_and_the_hex_mistake_gets_a_hint(capsys):
    np = pytest.importorskip("numpy")
    import torch

    checks.check_count_hits(lambda prompts, p: np.array(good_count_hits(prompts, p)))
    checks.check_count_hits(lambda prompts, p: torch.tensor(good_count_hits(prompts, p)))
    assert capsys.readouterr().out.count("✔ count_hits") == 2
    with pytest.raises(AssertionError, match=r"Hint: return the names as block_hash returns"):
        checks.check_chained_block_hashes(
            lambda t, p: [h.hex() for h in good_chained_block_hashes(t, p)]
        )


def test_a_student_that_empties_its_input_leaves_the_cases_alone(capsys):
    def consuming_hashes(tokens, p):
        names = good_chained_block_hashes(tokens, p)
        tokens.clear()
        return names

    def consuming_hits(prompts, p):
        hits = good_count_hits(prompts, p)
        for prompt in prompts:
            prompt.clear()
        return hits

    before = repr(pc._HASH_CASES)
    for _ in range(2):  # a cell run twice
        checks.check_chained_block_hashes(consuming_hashes)
        checks.check_count_hits(consuming_hits)
    assert repr(pc._HASH_CASES) == before
    assert capsys.readouterr().out.count("✔") == 4


def test_count_hits_refuses_a_cache_kept_between_calls():
    """A cache in a default argument or a global passes every case once (the cases share no
    tokens at one block size) but answers the lab's question differently when run again."""

    def with_default(prompts, block_size, cached=set()):  # noqa: B006 (the mistake tested)
        return good_count_hits(prompts, block_size, cached)

    with pytest.raises(AssertionError, match=r"count_hits\(\[\[.*\) gave .*, then .* when called again"):
        checks.check_count_hits(with_default)


def test_wrong_hashes_are_reported_by_block_not_as_raw_bytes():
    def off_by_one(tokens, block_size):  # the last block's hash wrong
        hashes = good_chained_block_hashes(tokens, block_size)
        return hashes[:-1] + [block_hash(None, tokens[:block_size])] if len(hashes) > 1 else hashes

    with pytest.raises(AssertionError) as err:
        checks.check_chained_block_hashes(off_by_one)
    message = str(err.value)
    assert re.search(r"agrees?, hash \d+ differs: expected [0-9a-f]{12}…", message) and "\\x" not in message

    def one_short(tokens, block_size):
        return good_chained_block_hashes(tokens, block_size)[:-1]

    with pytest.raises(AssertionError, match=r"hashes \(one per full block\), got \d+; the first \d+ agree"):
        checks.check_chained_block_hashes(one_short)


def test_an_attribute_named_like_the_reference_is_no_call_and_a_helper_call_is_seen(capsys):
    """The guard reads calls, not names: an answer keeping its hashes in an object's
    ``block_hashes`` attribute passes (it was refused when the check read attribute names),
    and one reaching the reference through a helper defined outside it fails."""
    import types

    from llmfoundations.inference import prefix_cache as cache_module
    from llmfoundations.inference.prefix_cache import block_hash

    def with_attribute(tokens, p):
        box = types.SimpleNamespace(block_hashes=[])
        for start in range(0, len(tokens) - p + 1, p):
            parent = box.block_hashes[-1] if box.block_hashes else None
            box.block_hashes.append(block_hash(parent, tokens[start : start + p]))
        return box.block_hashes

    checks.check_chained_block_hashes(with_attribute)
    assert "✔" in capsys.readouterr().out

    def helper(tokens, p):
        return cache_module.block_hashes(tokens, p)

    with pytest.raises(AssertionError, match="chained_block_hashes calls block_hashes"):
        checks.check_chained_block_hashes(lambda t, p: helper(t, p))


# ------------------------------------- from a mutation review of the graders
# Each wrong answer is written here, apart from the module's own list of mistakes (the hint
# tests above take their answers from that list, so an edited mistake edited the answer too).


def _hash_off_by_one(tokens, p):  # start + P < len: drops the last block of a whole-block list
    hashes = good_chained_block_hashes(tokens, p)
    return hashes[:-1] if len(tokens) % p == 0 else hashes


def _hash_unchained(tokens, p):  # every block on its own
    return [block_hash(None, tokens[i * p : (i + 1) * p]) for i in range(len(tokens) // p)]


def _hash_with_tail(tokens, p):  # the partial last block hashed too
    hashes = good_chained_block_hashes(tokens, p)
    tail = tokens[len(hashes) * p :]
    return hashes + [block_hash(hashes[-1] if hashes else None, tail)] if tail else hashes


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_hash_off_by_one, "Hint: the last full block is missing"),
        (_hash_unchained, "Hint: each block must be hashed together with its parent's hash"),
        (_hash_with_tail, "Hint: only FULL blocks get a hash"),
    ],
)
def test_hash_hints_fire_for_mistakes_written_apart(wrong, hint):
    with pytest.raises(AssertionError) as err:
        checks.check_chained_block_hashes(wrong)
    assert hint in str(err.value)


def test_a_parent_that_is_the_previous_blocks_own_hash_is_refused():
    """Right for two blocks, wrong from the third (equal names no longer mean equal
    prefixes): only the cases of three or more full blocks see it."""

    def wrong(tokens, p):
        out = []
        for s in range(0, len(tokens) - p + 1, p):
            parent = block_hash(None, tokens[s - p : s]) if s else None
            out.append(block_hash(parent, tokens[s : s + p]))
        return out

    with pytest.raises(AssertionError, match="chained_block_hashes"):
        checks.check_chained_block_hashes(wrong)


def test_a_call_of_block_hashes_on_a_branch_the_cases_never_reach_is_refused():
    from llmfoundations.inference.prefix_cache import block_hashes

    def with_fallback(tokens, p):
        if len(tokens) > 10_000:  # a "fast path" the check's cases never reach
            return block_hashes(tokens, p)
        return good_chained_block_hashes(tokens, p)

    with pytest.raises(AssertionError, match="calls block_hashes"):
        checks.check_chained_block_hashes(with_fallback)


def test_a_token_level_longest_common_prefix_gets_the_whole_blocks_hint():
    def token_prefix(prompts, p):  # the longest common prefix in tokens, last token computed
        return [
            min(max((len(os.path.commonprefix([e, q])) for e in prompts[:i]), default=0),
                max(len(q) - 1, 0))
            for i, q in enumerate(prompts)
        ]  # fmt: skip

    with pytest.raises(AssertionError) as err:
        checks.check_count_hits(token_prefix)
    assert "Hint: only whole blocks are cached" in str(err.value)


def test_caching_a_prompt_before_its_lookup_gets_its_hint():
    with pytest.raises(AssertionError) as err:
        checks.check_count_hits(lambda prompts, p: good_count_hits(prompts, p, self_first=True))
    assert "Hint: look a prompt up before you cache its own blocks" in str(err.value)


def test_caching_only_the_looked_up_blocks_is_refused():
    """Caching only the (len - 1) // P blocks looked up, not every full block: a prompt of
    whole blocks then loses its last block for the next request (only the chat case, P = 2,
    and the P = 1 case see it)."""
    with pytest.raises(AssertionError, match="count_hits"):
        checks.check_count_hits(lambda prompts, p: good_count_hits(prompts, p, lookup_only=True))
