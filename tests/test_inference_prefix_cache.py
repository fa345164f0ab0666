"""Tests of inference/prefix_cache.py: vLLM's worked examples reproduced block for block,
logits with a cached prefix == logits without, and the radix tree against brute force."""

from __future__ import annotations

import doctest

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.generate import generate
from llmfoundations.inference import prefix_cache
from llmfoundations.inference.paged_kv import BlockAllocator, OutOfBlocks, PagedKVCache
from llmfoundations.inference.prefix_cache import (
    CachingBlockAllocator,
    PrefixCache,
    RadixCache,
    block_hash,
    block_hashes,
    prefill,
)
from llmfoundations.models import DecoderLM, ModelConfig

V = 53
TOL = dict(atol=1e-5, rtol=1e-5)  # fp32: the same keys, attention over a different split


def _model(seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    config = ModelConfig.llama(V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    return DecoderLM(config).eval()


def _manager(num_blocks: int, block_size: int, salt: str | None = None) -> PrefixCache:
    kv = PagedKVCache(1, num_blocks, block_size, 1, 1, allocator=CachingBlockAllocator(num_blocks))
    return PrefixCache(kv, salt=salt)


def _compute(cache: PrefixCache, seq: int, tokens: list[int], n: int) -> None:
    """Stand-in for a forward pass: write ``n`` positions of KV, then commit the tokens."""
    kv = cache.kv
    for layer in range(kv.n_layers):
        kv.append(layer, seq, torch.zeros(1, n, 1), torch.zeros(1, n, 1))
    cache.commit(seq, tokens)


def test_doctests():
    result = doctest.testmod(prefix_cache, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- hashing


def test_block_hash_is_chained_deterministic_and_salted():
    # A fixed digest: the same in every process (Python's str hash would not be).
    assert block_hash(None, [1, 2, 3]).hex()[:16] == "f58c5677d7510738"
    assert block_hash(None, [1, 2, 3], "tenant").hex()[:16] == "9cd4f68c096959a7"
    a, b = block_hashes([1, 2, 3, 4, 5, 6, 7], 3)
    assert b == block_hash(a, [4, 5, 6]) != block_hash(None, [4, 5, 6])
    # equal blocks after different prefixes get different names
    assert block_hashes([9, 9, 1, 2], 2)[1] != block_hashes([8, 8, 1, 2], 2)[1]
    assert block_hashes([1, 2], 3) == []
    assert block_hashes([1, 2, 3], 3, "x")[0] == block_hash(None, [1, 2, 3], "x")


# ----------------------------------------------------------------------------- vLLM's worked examples


def test_vllm_worked_example_block_for_block():
    """vllm-project/vllm docs/design/prefix_caching.md, section "Example": block size 4,
    10 blocks; the block tables, free queues, hits and the one eviction of Times 1-7."""
    cache = _manager(num_blocks=10, block_size=4)
    alloc = cache.allocator
    # Time 1: request 0, 15 prompt tokens: 4 blocks, 3 full and cached, the 4th holds 3.
    req0 = list(range(100, 115))
    s0, hit = cache.add_sequence(req0)
    _compute(cache, s0, req0, 15)
    assert hit == 0 and cache.kv.block_table(s0) == [0, 1, 2, 3]
    assert alloc.cached_blocks == [0, 1, 2]
    # Times 2-3: decoding fills block 3 (cached) and needs a new block, 4.
    tokens0 = req0 + [115]
    _compute(cache, s0, tokens0, 1)
    assert alloc.cached_blocks == [0, 1, 2, 3]
    tokens0 = tokens0 + [116]
    _compute(cache, s0, tokens0, 1)
    assert cache.kv.block_table(s0) == [0, 1, 2, 3, 4] and alloc.cached_blocks == [0, 1, 2, 3]
    # Time 4: request 1, 14 tokens, the first 10 as request 0's: only 2 blocks (8 tokens) hit.
    req1 = req0[:10] + [200, 201, 202, 203]
    s1, hit = cache.add_sequence(req1)
    assert hit == 8 and cache.kv.block_table(s1) == [0, 1]
    _compute(cache, s1, req1, 6)
    assert cache.kv.block_table(s1) == [0, 1, 5, 6]
    # Time 5: request 0 finishes: blocks 4, 3, 2 join the queue (reverse order); 0 and 1
    # are still used by request 1.
    cache.free_sequence(s0)
    assert alloc.free_queue == [7, 8, 9, 4, 3, 2]
    # Time 6: request 1 finishes.
    cache.free_sequence(s1)
    assert alloc.free_queue == [7, 8, 9, 4, 3, 2, 6, 5, 1, 0]
    # Time 7: request 2, 29 tokens, the first 12 as request 0's: blocks 0, 1, 2 hit and are
    # touched off the queue; the new blocks are 7, 8, 9, 4 and 3 (evicted).
    req2 = req0[:12] + list(range(300, 317))
    s2, hit = cache.add_sequence(req2)
    assert hit == 12 and alloc.free_queue == [7, 8, 9, 4, 3, 6, 5]
    assert alloc.evictions == 0
    _compute(cache, s2, req2, 17)
    assert cache.kv.block_table(s2) == [0, 1, 2, 7, 8, 9, 4, 3]
    assert alloc.evictions == 1
    # Request 2's 7 full blocks are cached; block 3 (its partial tail) lost its old hash.
    assert alloc.cached_blocks == [0, 1, 2, 4, 5, 7, 8, 9]
    stats = cache.stats
    assert (stats.requests, stats.queried_tokens, stats.hit_tokens, stats.evictions) == (
        3, 15 + 14 + 29, 8 + 12, 1
    )


def test_vllm_duplicated_blocks_example():
    """The same doc, "Duplicated blocks": block size 4, prompt ABCDEF, outputs G H I; the
    same request again caches a second block for E-H (block 3 beside block 1)."""
    cache = _manager(num_blocks=8, block_size=4)
    alloc = cache.allocator
    a, b, c, d, e, f, g, h, i = range(10, 19)
    prompt = [a, b, c, d, e, f]
    s1, _ = cache.add_sequence(prompt)
    _compute(cache, s1, prompt, 6)
    _compute(cache, s1, prompt + [g], 1)  # Time 0
    assert cache.kv.block_table(s1) == [0, 1] and alloc.cached_blocks == [0]
    _compute(cache, s1, prompt + [g, h], 1)  # Time 1
    assert alloc.cached_blocks == [0, 1]
    _compute(cache, s1, prompt + [g, h, i], 1)  # Time 2
    assert cache.kv.block_table(s1) == [0, 1, 2] and alloc.cached_blocks == [0, 1]
    s2, hit = cache.add_sequence(prompt)
    assert hit == 4
    _compute(cache, s2, prompt, 2)
    _compute(cache, s2, prompt + [g], 1)  # Time 0
    assert cache.kv.block_table(s2) == [0, 3] and alloc.cached_blocks == [0, 1]
    _compute(cache, s2, prompt + [g, h], 1)  # Time 1
    assert alloc.cached_blocks == [0, 1, 3] and alloc.hashes[1] == alloc.hashes[3]


def test_the_last_token_is_always_recomputed():
    cache = _manager(num_blocks=8, block_size=4)
    tokens = list(range(8))
    s, _ = cache.add_sequence(tokens)
    _compute(cache, s, tokens, 8)
    assert cache.match(tokens).num_tokens == 4  # both blocks cached, but 7 tokens usable
    assert cache.match(tokens + [8]).num_tokens == 8
    assert cache.match(tokens[:5]).num_tokens == 4
    assert cache.match(tokens[:4]).num_tokens == 0
    assert cache.match([]).num_tokens == 0


def test_freed_blocks_stay_cached_until_a_new_block_is_needed():
    cache = _manager(num_blocks=3, block_size=2)
    s, _ = cache.add_sequence([1, 2, 3, 4, 5])
    _compute(cache, s, [1, 2, 3, 4, 5], 5)
    cache.free_sequence(s)
    assert cache.allocator.num_free == 3 and cache.allocator.cached_blocks == [0, 1]
    assert cache.match([1, 2, 3, 4, 9]).blocks == [0, 1]
    s, hit = cache.add_sequence([7, 7, 7])  # needs 2 blocks: block 2, then 1 (evicted)
    _compute(cache, s, [7, 7, 7], 3)
    assert hit == 0 and cache.kv.block_table(s) == [2, 1] and cache.allocator.evictions == 1
    assert cache.match([1, 2, 3, 4, 9]).blocks == [0]  # block 0 survived
    with pytest.raises(OutOfBlocks):
        cache.kv.reserve(s, 5)


# ----------------------------------------------------------------------------- with a model


def test_logits_with_a_cached_prefix_equal_logits_without():
    model = _model()
    g = torch.Generator().manual_seed(5)
    system = torch.randint(0, V, (13,), generator=g).tolist()
    users = [torch.randint(0, V, (n,), generator=g).tolist() for n in (4, 6, 3)]
    cache = PrefixCache.for_model(model, num_blocks=24, block_size=4)
    hits = []
    for user in users:
        tokens = system + user
        out = prefill(model, cache, tokens)
        hits.append(out.num_cached_tokens)
        with torch.no_grad():
            full = model(torch.tensor([tokens])).logits  # (1, T, V)
        torch.testing.assert_close(out.logits, full[:, out.num_cached_tokens :], **TOL)
        cache.free_sequence(out.seq_id)
    assert hits == [0, 12, 12]  # 13 shared tokens: 3 whole blocks of 4
    # The whole prompt cached: its last block is recomputed, the logits still agree.
    tokens = system + users[0]
    out = prefill(model, cache, tokens)
    assert out.num_cached_tokens == 16
    with torch.no_grad():
        full = model(torch.tensor([tokens])).logits
    torch.testing.assert_close(out.logits, full[:, 16:], **TOL)
    # A server's prefill: the last position's logits only, the same row.
    cache.free_sequence(out.seq_id)
    last = prefill(model, cache, system + users[1], logits_to_keep=1)
    assert last.logits.shape == (1, 1, V) and last.num_cached_tokens == 16
    with torch.no_grad():
        full = model(torch.tensor([system + users[1]])).logits
    torch.testing.assert_close(last.logits, full[:, -1:], **TOL)


def test_greedy_decoding_on_a_cached_prefix_equals_generate():
    model = _model(1)
    g = torch.Generator().manual_seed(6)
    shared = torch.randint(0, V, (10,), generator=g).tolist()
    cache = PrefixCache.for_model(model, num_blocks=20, block_size=3)
    for suffix in ([1, 2], [3, 4, 5]):
        prompt = shared + suffix
        ref = generate(model, [prompt], 8)[0].tolist()
        out = prefill(model, cache, prompt)
        tokens = list(prompt)
        view = cache.kv.view(out.seq_id)
        token = int(out.logits[0, -1].argmax())
        with torch.no_grad():
            for _ in range(7):
                tokens.append(token)
                logits = model(torch.tensor([[token]]), kv_cache=view).logits
                cache.commit(out.seq_id, tokens)
                token = int(logits[0, -1].argmax())
        assert tokens + [token] == ref
    assert cache.stats.hit_tokens == 9


def test_radix_cache_with_a_model_reuses_a_prefix_at_token_granularity():
    model = _model(2)
    g = torch.Generator().manual_seed(7)
    shared = torch.randint(0, V, (7,), generator=g).tolist()
    kv = PagedKVCache.for_model(model, num_blocks=40, block_size=1)
    tree = RadixCache(kv.allocator)
    hits = []
    for suffix in ([1, 2, 3], [4, 5]):
        tokens = shared + suffix
        found = tree.match_prefix(tokens[:-1])  # the last token is always computed
        tree.lock(found.node)
        seq = kv.add_sequence(prefix_blocks=found.blocks)
        with torch.no_grad():
            logits = model(torch.tensor([tokens[found.length :]]), kv_cache=kv.view(seq)).logits
            full = model(torch.tensor([tokens])).logits
        torch.testing.assert_close(logits, full[:, found.length :], **TOL)
        hits.append(found.length)
        tree.insert(tokens, kv.block_table(seq))
        tree.unlock(found.node)
        kv.free_sequence(seq)
    assert hits == [0, 7]
    assert kv.num_used_blocks == tree.num_tokens == 7 + 3 + 2
    assert tree.evict(100) and kv.num_used_blocks == 0 and tree.num_tokens == 0


# ----------------------------------------------------------------------------- the radix tree


def _lcp(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


token_lists = st.lists(st.integers(0, 2), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(inserted=st.lists(token_lists, min_size=1, max_size=6), queries=st.lists(token_lists, max_size=6))
def test_radix_match_is_the_longest_common_prefix_with_any_inserted_sequence(inserted, queries):
    alloc = BlockAllocator(64)
    tree = RadixCache(alloc)
    slot_of: dict[tuple[int, ...], int] = {}  # the first slot stored for each prefix
    for k, seq in enumerate(inserted):
        slots = alloc.allocate(len(seq))
        already = tree.insert(seq, slots)
        assert already == max((_lcp(seq, s) for s in inserted[:k]), default=0)
        for i in range(already, len(seq)):
            slot_of[tuple(seq[: i + 1])] = slots[i]
        alloc.free(slots)  # the caller's reference; the tree keeps its own
    for query in queries + inserted:
        found = tree.match_prefix(query)
        assert found.length == max(_lcp(query, s) for s in inserted)
        assert found.blocks == [slot_of[tuple(query[: i + 1])] for i in range(found.length)]
    assert tree.num_tokens == len(slot_of) == alloc.num_used
    assert sorted(map(tuple, tree.sequences())) == sorted(
        {tuple(s) for s in inserted if not any(t[: len(s)] == s and len(t) > len(s) for t in inserted)}
    )


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("imue"), token_lists, st.integers(0, 6)), max_size=25))
def test_radix_random_traces_keep_counts_consistent(ops):
    """Random insert / match+lock / unlock / evict: lock counts never go negative, every
    slot's reference count is (tree holds it) + (requests hold it), evicted slots are
    never in the tree or held, and only unlocked leaves are evicted."""
    alloc = BlockAllocator(200)
    tree = RadixCache(alloc)
    held = []  # (node, slots) of requests that matched and locked
    for op, tokens, n in ops:
        if op == "i":
            slots = alloc.allocate(len(tokens))
            tree.insert(tokens, slots)
            alloc.free(slots)
        elif op == "m":
            found = tree.match_prefix(tokens)
            tree.lock(found.node)
            alloc.share(found.blocks)
            held.append((found.node, found.blocks))
        elif op == "u" and held:
            node, slots = held.pop(n % len(held))
            tree.unlock(node)
            alloc.free(slots)
        elif op == "e":
            locked = {b for _, slots in held for b in slots}
            evicted = tree.evict(n)
            assert not locked & set(evicted)
        in_tree, stack = set(), [tree.root]
        while stack:
            node = stack.pop()
            assert node.lock_ref >= 0
            assert not in_tree & set(node.value)  # each slot stored once
            in_tree |= set(node.value)
            stack.extend(node.children.values())
        assert tree._stored == in_tree  # the set insert checks new slots against
        held_count = {}
        for _, slots in held:
            for b in slots:
                held_count[b] = held_count.get(b, 0) + 1
        for b in range(alloc.num_blocks):
            assert alloc.ref_counts[b] == (b in in_tree) + held_count.get(b, 0) >= 0
    for node, slots in held:
        tree.unlock(node)
        alloc.free(slots)
    assert tree.root.lock_ref == 1
    with pytest.raises(ValueError, match="negative"):
        tree.unlock(tree.root)
    tree.evict(10**6)
    assert tree.num_tokens == 0 and alloc.num_free == alloc.num_blocks


def test_radix_eviction_is_lru_over_unlocked_leaves_and_splits_at_the_match():
    alloc = BlockAllocator(16)
    tree = RadixCache(alloc)
    for seq in ([1, 2, 3, 4], [1, 2, 5], [6, 7]):
        slots = alloc.allocate(len(seq))
        tree.insert(seq, slots)
        alloc.free(slots)
    # slots: [1,2,3,4] -> 0..3; [5] -> 6 (1, 2 were already stored); [6, 7] -> 7, 8
    found = tree.match_prefix([1, 2, 3, 9])  # ends inside [3, 4]: the node is split
    assert found.blocks == [0, 1, 2] and found.node.key == [3]
    assert sorted(map(tuple, tree.sequences())) == [(1, 2, 3, 4), (1, 2, 5), (6, 7)]
    tree.lock(found.node)
    tree.match_prefix([6, 7])
    # The leaf [4], split off by the match, keeps its old access time: it goes first.
    assert tree.evict(1) == [3]
    assert tree.evict(2) == [6, 7, 8]  # [5], then [6, 7] (used last)
    assert tree.evict(5) == []  # the rest is locked
    tree.unlock(found.node)
    assert tree.evict(5) == [2, 0, 1] and tree.num_tokens == 0
    assert alloc.num_free == 16 and tree.evictions == 1 + 3 + 3


def test_radix_lock_and_unlock_refuse_an_evicted_node():
    alloc = BlockAllocator(8)
    tree = RadixCache(alloc)
    alloc.allocate(4)
    assert (tree.insert([1, 2, 3], [0, 1, 2]), tree.insert([1, 2, 4], [0, 1, 3])) == (0, 2)
    old = tree.match_prefix([1, 2, 3])  # ends at the leaf [3]
    tree.match_prefix([1, 2, 4])  # [4] used last: [3] goes first
    assert tree.evict(1) == [2] and old.node.parent is None
    for call in (tree.lock, tree.unlock):
        with pytest.raises(ValueError, match="was it evicted"):
            call(old.node)
    shared = tree.match_prefix([1, 2]).node
    assert shared.lock_ref == 0  # nothing pinned [1, 2]: it can still be evicted
    assert tree.evict(3) == [3, 0, 1] and shared.parent is None  # a parent evicted in turn
    with pytest.raises(ValueError, match="was it evicted"):
        tree.lock(shared)
    assert tree.root.lock_ref == 1 and tree.num_tokens == 0


def test_radix_insert_refuses_repeated_or_already_stored_slots():
    alloc = BlockAllocator(8)
    tree = RadixCache(alloc)
    alloc.allocate(5)
    with pytest.raises(ValueError, match=r"blocks must give each new token its own slot.*\[0\]"):
        tree.insert([1, 2], [0, 0])
    assert tree.num_tokens == 0 and alloc.ref_counts[0] == 1  # nothing stored or shared
    assert tree.insert([1, 2], [0, 1]) == 0
    with pytest.raises(ValueError, match=r"blocks holds slot\(s\) \[1\].*already stores"):
        tree.insert([5], [1])  # slot 1 holds token 2 of [1, 2]
    with pytest.raises(ValueError, match=r"\[2\] more than once"):
        tree.insert([1, 2, 3, 4], [0, 1, 2, 2])  # the new tokens 3 and 4 share slot 2
    with pytest.raises(ValueError, match=r"\[3\] more than once"):
        tree.insert([1, 9], [3, 3])  # the caller's copy of token 1 and the new token 9
    assert tree.sequences() == [[1, 2]] and alloc.ref_counts[:4] == [2, 2, 1, 1]
    # The prefix the tree already stores may come with the tree's own slots (or others).
    assert tree.insert([1, 2, 3], [0, 1, 2]) == 2 and tree.insert([1, 4], [3, 4]) == 1
    assert tree.match_prefix([1, 2, 3]).blocks == [0, 1, 2]
    assert tree.match_prefix([1, 4]).blocks == [0, 4]
    # An evicted slot may be stored again.
    assert tree.evict(1) == [2]
    assert tree.insert([7], [2]) == 0 and tree.match_prefix([7]).blocks == [2]


@settings(max_examples=30, deadline=None)
@given(
    block_size=st.integers(1, 4),
    inserted=st.lists(st.lists(st.integers(0, 1), min_size=1, max_size=10), min_size=1, max_size=5),
    query=st.lists(st.integers(0, 1), min_size=1, max_size=10),
)
def test_radix_and_block_hashing_agree_on_whole_blocks(block_size, inserted, query):
    hashed = CachingBlockAllocator(200)
    tree = RadixCache(BlockAllocator(200))
    for seq in inserted:
        hashes = block_hashes(seq, block_size)
        blocks = hashed.allocate(len(hashes))
        for b, h in zip(blocks, hashes, strict=True):
            hashed.cache_block(b, h)
        slots = tree.allocator.allocate(len(seq))
        tree.insert(seq, slots)
    n_blocks = len(hashed.lookup(block_hashes(query, block_size)))
    assert n_blocks * block_size == tree.match_prefix(query).length // block_size * block_size


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs():
    with pytest.raises(TypeError, match="CachingBlockAllocator"):
        PrefixCache(PagedKVCache(1, 4, 2, 1, 1))
    with pytest.raises(TypeError, match="PagedKVCache"):
        PrefixCache(object())
    cache = _manager(4, 2)
    with pytest.raises(TypeError, match="salt"):
        PrefixCache(cache.kv, salt=3)
    with pytest.raises(ValueError, match="at least one token"):
        cache.add_sequence([])
    with pytest.raises(TypeError, match="ints"):
        cache.match([1.0])
    with pytest.raises(ValueError, match=">= 0"):
        cache.match([-1])
    with pytest.raises(TypeError, match="sequence of token ids"):
        cache.match("abc")
    s, _ = cache.add_sequence([1, 2, 3])
    with pytest.raises(ValueError, match="3 cached positions|0 cached positions"):
        cache.commit(s, [1, 2, 3])
    _compute(cache, s, [1, 2, 3], 3)
    with pytest.raises(ValueError, match="extend"):
        cache.commit(s, [3, 2, 1])
    alloc = cache.allocator
    with pytest.raises(ValueError, match="free and not cached"):
        alloc.share([3])
    with pytest.raises(ValueError, match="only an owned block"):
        alloc.cache_block(3, b"h")
    with pytest.raises(ValueError, match="another hash"):
        alloc.cache_block(0, b"other")
    with pytest.raises(TypeError, match="bytes"):
        alloc.cache_block(0, "h")
    with pytest.raises(TypeError, match="PrefixCache"):
        prefill(_model(), cache.kv, [1])
    with pytest.raises(ValueError, match="logits_to_keep must be >= 0, got -1"):
        prefill(_model(), cache, [1], logits_to_keep=-1)
    tree = RadixCache(BlockAllocator(4))
    with pytest.raises(ValueError, match="one slot per token"):
        tree.insert([1, 2], [0])
    with pytest.raises(TypeError, match="RadixNode"):
        tree.lock("root")
    other = RadixCache(BlockAllocator(4))
    with pytest.raises(ValueError, match="does not belong"):
        tree.lock(other.root)
    with pytest.raises(TypeError, match="BlockAllocator"):
        RadixCache(None)
    with pytest.raises(ValueError, match="num_tokens"):
        tree.evict(-1)


# ----------------------------------------------------------------------------- contracts (mutation review)


# the salt goes into the first block's hash only, in match and in commit
def test_salted_prefix_cache_hits_every_block_and_salts_only_the_first():
    a, b = block_hashes(list(range(6)), 3, "t")
    assert b == block_hash(a, [3, 4, 5])
    cache = _manager(8, 2, salt="t")
    tokens = list(range(7))
    s, _ = cache.add_sequence(tokens)
    _compute(cache, s, tokens, 7)
    assert cache.add_sequence(tokens)[1] == 6  # 3 whole blocks of the 6 usable tokens
    other = PrefixCache(cache.kv, salt="u")
    assert other.match(tokens).num_tokens == 0


# lookup returns the first block cached under a hash
def test_lookup_returns_the_first_of_duplicated_blocks():
    alloc = CachingBlockAllocator(4)
    a = alloc.allocate(3)
    alloc.cache_block(a[0], b"x")
    alloc.cache_block(a[2], b"y")
    alloc.cache_block(a[1], b"y")
    assert alloc.lookup([b"x", b"y"]) == [0, 2]


# lookup stops at the first hash that is not cached
def test_lookup_stops_at_the_first_miss():
    alloc = CachingBlockAllocator(2)
    (b,) = alloc.allocate(1)
    alloc.cache_block(b, b"x")
    assert alloc.lookup([b"missing", b"x"]) == []


# commit after a hit must refuse tokens that disagree with the cached prefix
def test_commit_after_a_hit_refuses_a_different_prefix():
    cache = _manager(8, 2)
    tokens = [1, 2, 3, 4, 5]
    s, _ = cache.add_sequence(tokens)
    _compute(cache, s, tokens, 5)
    t, hit = cache.add_sequence(tokens)
    assert hit == 4
    cache.kv.append(0, t, torch.zeros(1, 1, 1), torch.zeros(1, 1, 1))
    with pytest.raises(ValueError, match="extend"):
        cache.commit(t, [9, 9, 3, 4, 5])


# prefill keeps logits_to_keep positions, not always 1
def test_prefill_keeps_the_asked_number_of_logits():
    model = _model()
    cache = PrefixCache.for_model(model, num_blocks=8, block_size=4)
    tokens = list(range(1, 8))
    out = prefill(model, cache, tokens, logits_to_keep=3)
    with torch.no_grad():
        full = model(torch.tensor([tokens])).logits
    assert out.logits.shape == (1, 3, V)
    torch.testing.assert_close(out.logits, full[:, -3:], **TOL)


# eviction never takes a locked node, even one its eviction left without children
def test_evict_keeps_a_locked_node_left_childless():
    alloc = BlockAllocator(4)
    tree = RadixCache(alloc)
    slots = alloc.allocate(3)
    tree.insert([1, 2, 3], slots)
    alloc.free(slots)
    found = tree.match_prefix([1, 2])  # splits [1, 2, 3]; [1, 2] keeps child [3]
    tree.lock(found.node)
    assert tree.evict(10) == [2]
    assert tree.match_prefix([1, 2]).blocks == [0, 1] and alloc.ref_counts[:2] == [1, 1]


# ------------------------------------- from a mutation review (each kills a surviving mutant)


def test_a_split_keeps_the_lock_of_the_node_it_cuts():
    """A match that splits a locked node: the new upper node is on the locked path and holds
    its lock (with 0, ``unlock`` raised and the request could never release its path)."""
    alloc = BlockAllocator(8)
    tree = RadixCache(alloc)
    slots = alloc.allocate(4)
    tree.insert([1, 2, 3, 4], slots)
    alloc.free(slots)
    held = tree.match_prefix([1, 2, 3, 4]).node
    tree.lock(held)
    upper = tree.match_prefix([1, 2]).node  # splits [1, 2, 3, 4] into [1, 2] -> [3, 4]
    assert upper.key == [1, 2] and held.parent is upper
    assert upper.lock_ref == 1
    assert tree.evict(10) == []  # everything is on the locked path
    tree.unlock(held)
    assert tree.evict(10) == [2, 3, 0, 1] and alloc.num_free == 8


def test_insert_after_a_mismatch_inside_a_node_stores_one_slot_per_token():
    """The walk stops at a mismatch inside a node: it does not go on into the node's children
    (here [7] under [1, 2, 5]), which made ``insert`` miscount the stored prefix and build a
    leaf of 2 tokens with 1 slot."""
    alloc = BlockAllocator(16)
    tree = RadixCache(alloc)
    a = alloc.allocate(4)
    assert tree.insert([1, 2, 5], a[:3]) == 0
    assert tree.insert([1, 2, 5, 7], a) == 3  # root -> [1, 2, 5] -> [7]
    b = alloc.allocate(3)
    assert tree.insert([1, 7, 8], b) == 1  # [1] shared; [7, 8] new
    m = tree.match_prefix([1, 7, 8])
    assert m.length == 3 and m.blocks == [a[0], b[1], b[2]]
    assert alloc.ref_counts[b[1]] == 2 and alloc.ref_counts[b[2]] == 2  # caller + tree
    assert alloc.ref_counts[b[0]] == 1  # a duplicate of a stored token: not taken


def test_a_prompt_chunk_committed_after_a_hit_is_accepted():
    """After a hit, only the cached tokens count as committed: a chunked prefill then commits
    the prompt chunk by chunk (recording the whole prompt refused the first chunk)."""
    cache = _manager(16, 2)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    seq, _ = cache.add_sequence(prompt)
    cache.kv.append(0, seq, torch.zeros(1, 9, 1), torch.zeros(1, 9, 1))
    cache.commit(seq, prompt)
    cache.free_sequence(seq)
    seq2, hit = cache.add_sequence([1, 2, 3, 4, 9, 9, 9, 9, 9])
    assert hit == 4  # 2 blocks cached
    cache.kv.append(0, seq2, torch.zeros(1, 2, 1), torch.zeros(1, 2, 1))  # a chunk of 2 tokens
    cache.commit(seq2, [1, 2, 3, 4, 9, 9])
    assert cache.match([1, 2, 3, 4, 9, 9, 0]).num_tokens == 6  # the chunk's block is cached
