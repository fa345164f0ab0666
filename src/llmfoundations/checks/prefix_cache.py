"""Checks for Lab 06-6 (prefix caching): chained block hashes and the hits of a trace.

Each check runs the student's function next to the course's reference
(``llmfoundations.inference.prefix_cache``) on fixed token lists and either prints one line
of success or raises ``AssertionError`` naming the failing case, with a hint where the
wrong result is a known mistake:

- ``chained_block_hashes(tokens, block_size)``: hashing each block on its own (no parent,
  so equal blocks after different prefixes collide), hashing the partial last block, and
  an off-by-one that drops the last full block when the tokens fill whole blocks;
- ``count_hits(prompts, block_size)``: forgetting that the last token is always computed
  (a prompt that is entirely cached still needs its last token's logits), matching at
  token granularity instead of whole blocks, and looking blocks up by their tokens alone
  (a block is reusable only after the same prefix).

The cases are fixed lists of ints; no random generator is touched.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from llmfoundations.inference.paged_kv import PagedKVCache
from llmfoundations.inference.prefix_cache import (
    CachingBlockAllocator,
    PrefixCache,
    block_hash,
    block_hashes,
)

from .core import _describe, check_callable, compare_with_reference, exercise_check, refuse_calling

__all__ = ["check_chained_block_hashes", "check_count_hits"]


def _tokens(seed: int, n: int, vocab: int = 50) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(vocab) for _ in range(n)]


def _as_list(name: str, got: object) -> list:
    if getattr(got, "ndim", None) == 1 and hasattr(got, "tolist"):  # 1-D NumPy array, tensor
        got = got.tolist()
    if not isinstance(got, (list, tuple)):
        raise AssertionError(f"{name} must return a list, got {type(got).__name__}")
    return list(got)


# --------------------------------------------------------------------------- hashes


_HASH_CASES = [
    ((list(range(10)), 4), {}),  # two full blocks and a partial tail of 2
    (([5, 5, 5, 5, 5, 5], 3), {}),  # two equal blocks: only the chain tells them apart
    (([1, 2, 3], 4), {}),  # no full block at all
    (([7, 1, 7, 1, 7, 1, 7], 2), {}),
    ((_tokens(1, 32), 16), {}),  # exactly two blocks
    (([3, 9, 3], 1), {}),
]


def _hash_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def unchained(tokens: list[int], p: int) -> list[bytes]:
        return [block_hash(None, tokens[s : s + p]) for s in range(0, len(tokens) - p + 1, p)]

    def with_tail(tokens: list[int], p: int) -> list[bytes]:
        out, parent = [], None
        for s in range(0, len(tokens), p):
            parent = block_hash(parent, tokens[s : s + p])
            out.append(parent)
        return out

    def off_by_one(tokens: list[int], p: int) -> list[bytes]:
        out, parent = [], None
        for s in range(0, len(tokens) - p, p):
            parent = block_hash(parent, tokens[s : s + p])
            out.append(parent)
        return out

    def as_hex(tokens: list[int], p: int) -> list[str]:  # right names, printed form
        out, parent = [], None
        for s in range(0, len(tokens) - p + 1, p):
            parent = block_hash(parent, tokens[s : s + p])
            out.append(parent.hex())
        return out

    return [
        (as_hex,
         "return the names as block_hash returns them (bytes); .hex() is only for printing"),
        (unchained,
         "each block must be hashed together with its parent's hash: block_hash(previous_hash, "
         "block) (None for the first block), so that equal hashes mean equal prefixes"),
        (with_tail,
         "only FULL blocks get a hash: drop the last block when it holds fewer than block_size "
         "tokens (it is still being filled, and vLLM caches full blocks only)"),
        (off_by_one,
         "the last full block is missing: when the tokens fill whole blocks, every block gets a "
         "hash (start offsets 0, P, 2P, ... while start + P <= len(tokens))"),
    ]  # fmt: skip


@exercise_check
def check_chained_block_hashes(student: Callable[[list[int], int], list[bytes]]) -> None:
    """Lab 06-6: ``chained_block_hashes(tokens, block_size)`` -> one hash per full block,
    ``h_j = block_hash(h_{j-1}, tokens[j*P:(j+1)*P])`` with ``h_{-1} = None``."""
    check_callable("chained_block_hashes", student)
    student = refuse_calling("chained_block_hashes", student, block_hashes, "chain block_hash yourself")

    def run(tokens: list[int], p: int) -> list:
        return _as_list("chained_block_hashes", student(list(tokens), p))

    compare_with_reference(
        "chained_block_hashes", run, lambda tokens, p: block_hashes(tokens, p), _HASH_CASES,
        hints=_hash_mistakes(),
    )  # fmt: skip


# ----------------------------------------------------------------------------- hits


def reference_count_hits(prompts: Sequence[Sequence[int]], block_size: int) -> list[int]:
    """Prompt tokens read from the cache, request by request, with ``PrefixCache``: an
    unbounded cache (a pool with room for every block), each request's full prompt blocks
    cached after its prefill, the request freed before the next one arrives."""
    total = sum(len(p) // block_size + 1 for p in prompts) + 1
    kv = PagedKVCache(1, total, block_size, 1, 1, allocator=CachingBlockAllocator(total))
    cache = PrefixCache(kv)
    hits = []
    for prompt in prompts:
        seq, n_cached = cache.add_sequence(list(prompt))
        n_new = len(prompt) - n_cached
        kv.append(0, seq, torch.zeros(1, n_new, 1), torch.zeros(1, n_new, 1))  # stands for a prefill
        cache.commit(seq, list(prompt))
        cache.free_sequence(seq)
        hits.append(n_cached)
    return hits


def _hit_cases() -> list[tuple[tuple, dict]]:
    system = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]  # 2.5 blocks of 4
    a, b = system + [1, 2, 3], system + [4, 5, 6, 7, 8]
    exact = list(range(30, 38))  # 8 tokens: 2 full blocks
    moved = system[4:8] + system[4:8] + [50, 51]  # system's block 1, but at the start
    chat1 = _tokens(2, 21)
    chat2 = chat1 + _tokens(3, 9)
    chat3 = chat2 + _tokens(4, 12)
    shared = _tokens(5, 40)
    turn1 = _tokens(9, 40)  # the lab's three chat turns of 40, 75 and 130 tokens
    turn2 = turn1 + _tokens(10, 35)
    turn3 = turn2 + _tokens(11, 55)
    return [
        (([a, b, a, exact, exact, moved], 4), {}),
        (([chat1, chat2, chat3], 2), {}),
        (([], 4), {}),
        (([shared + _tokens(6, 7), shared + _tokens(7, 30), shared[:33], _tokens(8, 20)], 16), {}),
        (([[4], [4], [4, 4], [4, 4, 4]], 1), {}),
        (([turn1, turn2, turn3], 16), {}),
        # block 1 of the third prompt was cached after another block 0 (same position and
        # tokens, other prefix); the fifth prompt extends the fourth by one token, which
        # fills no new block (a partial block is never reused)
        (([list(range(1, 10)), [60, 61, 62, 63, *range(10, 15)], [1, 2, 3, 4, *range(10, 14), 15, 16],
           [70, 71, 72, 73, 74], [70, 71, 72, 73, 74, 75]], 4), {}),
    ]


def _hit_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def walk(prompts: Sequence[Sequence[int]], p: int, last_rule: bool, chained: bool) -> list[int]:
        seen: set = set()
        out = []
        for prompt in prompts:
            ids = list(prompt)
            usable = len(ids) - 1 if last_rule else len(ids)
            usable = usable // p * p
            if chained:
                keys = block_hashes(ids[:usable], p)
            else:
                keys = [tuple(ids[s : s + p]) for s in range(0, usable, p)]
            n = 0
            for k in keys:
                if k not in seen:
                    break
                n += 1
            out.append(n * p)
            if chained:
                seen.update(block_hashes(ids, p))
            else:
                seen.update(tuple(ids[s : s + p]) for s in range(0, len(ids) - p + 1, p))
        return out

    def chained_hits(prompts: Sequence[Sequence[int]], p: int, cap_tokens: bool,
                     self_first: bool) -> list[int]:  # fmt: skip
        seen: set = set()
        out = []
        for prompt in prompts:
            ids = list(prompt)
            if self_first:  # the prompt's own blocks cached before it is looked up
                seen.update(block_hashes(ids, p))
            usable = len(ids) if cap_tokens else (len(ids) - 1) // p * p
            n = 0
            for k in block_hashes(ids[:usable], p):
                if k not in seen:
                    break
                n += 1
            out.append(min(n * p, len(ids) - 1) if cap_tokens else n * p)
            seen.update(block_hashes(ids, p))
        return out

    def token_level(prompts: Sequence[Sequence[int]], p: int) -> list[int]:
        out, earlier = [], []
        for prompt in prompts:
            best = 0
            for e in earlier:
                n = 0
                while n < min(len(e), len(prompt)) and e[n] == prompt[n]:
                    n += 1
                best = max(best, n)
            out.append(min(best, max(len(prompt) - 1, 0)))
            earlier.append(list(prompt))
        return out

    return [
        (lambda prompts, p: walk(prompts, p, last_rule=False, chained=True),
         "the last token of a prompt is always computed, even when all of it is cached (its "
         "logits give the first new token): match at most len(prompt) - 1 tokens, in whole blocks"),
        (token_level,
         "only whole blocks are cached: the hit is the number of matching FULL blocks times "
         "block_size, not the longest common prefix in tokens"),
        (lambda prompts, p: chained_hits(prompts, p, cap_tokens=True, self_first=False),
         "a hit is a whole number of blocks: cap the blocks you match, not the tokens, at "
         "(len(prompt) - 1) // block_size blocks"),
        (lambda prompts, p: chained_hits(prompts, p, cap_tokens=False, self_first=True),
         "look a prompt up before you cache its own blocks: a request cannot hit itself (or "
         "a cache was kept from an earlier run of the check: each call must start empty)"),
        (lambda prompts, p: walk(prompts, p, last_rule=True, chained=False),
         "a block is reused only after the same prefix: look blocks up by their chained hash, "
         "not by their tokens alone (equal tokens after a different start have different keys "
         "and values)"),
    ]  # fmt: skip


@exercise_check
def check_count_hits(student: Callable[[list[list[int]], int], list[int]]) -> None:
    """Lab 06-6: ``count_hits(prompts, block_size)`` -> for each prompt, in order, how many
    of its tokens are read from the cache (whole blocks, the last token always computed),
    when every earlier prompt's full blocks are cached and nothing is evicted."""
    check_callable("count_hits", student)

    def call(prompts: list[list[int]], p: int) -> list:
        got = _as_list("count_hits", student([list(x) for x in prompts], p))
        return [int(x) if hasattr(x, "__index__") and not isinstance(x, bool) else x for x in got]

    def run(prompts: list[list[int]], p: int) -> list:
        first, again = call(prompts, p), call(prompts, p)
        if again != first:
            raise AssertionError(
                f"count_hits({_describe(prompts)}, {p}) gave {first}, then {again} when called "
                "again with the same prompts: each call must "
                "start from an empty cache (no cache kept in a global or a default argument "
                "between calls)"
            )
        return first

    compare_with_reference(
        "count_hits", run, reference_count_hits, _hit_cases(), hints=_hit_mistakes(),
    )  # fmt: skip
