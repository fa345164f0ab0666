"""Tests of inference/paged_kv.py: the allocator, writes and reads through block tables,
attention through the pool == attention through the contiguous KVCache, decoding through
the paged cache == generate, and exact memory accounting."""

from __future__ import annotations

import doctest
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention
from llmfoundations.generate import generate
from llmfoundations.inference import paged_kv
from llmfoundations.inference.paged_kv import (
    BlockAllocator,
    OutOfBlocks,
    PagedKVCache,
    gather_blocks,
    paged_attention,
)
from llmfoundations.kv_cache import KVCache, LayerKVCache
from llmfoundations.models import DecoderLM, ModelConfig

TOL = dict(atol=1e-6, rtol=1e-6)  # fp32, the same arithmetic on the same keys
V = 53

CONFIGS = {
    "llama": ModelConfig.llama(V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2),
    "mqa": ModelConfig.llama(V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=1),
    "gpt": ModelConfig.gpt(V, d_model=32, n_layers=2, n_heads=4, max_seq_len=64),
}


def _model(name: str, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(CONFIGS[name]).eval()


def _assert_same_contents(cache, seqs, ref_cache, ref_seqs) -> None:
    """Each sequence holds the same length and, in every layer, the same keys and values."""
    for seq, ref_seq in zip(seqs, ref_seqs, strict=True):
        assert cache.length(seq) == ref_cache.length(ref_seq)
        for layer in range(ref_cache.n_layers):
            for kv, ref_kv in zip(
                cache.gather(layer, seq), ref_cache.gather(layer, ref_seq), strict=True
            ):
                torch.testing.assert_close(kv, ref_kv, **TOL)


def _greedy_paged(model, cache, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding, one sequence, every forward pass through the paged cache."""
    seq = cache.add_sequence()
    view = cache.view(seq)
    ids, feed = list(prompt), torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            logits = model(feed, kv_cache=view).logits  # (1, T_new, V)
            token = int(logits[0, -1].argmax())
            ids.append(token)
            feed = torch.tensor([[token]])
    return ids


def test_doctests():
    result = doctest.testmod(paged_kv, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- allocator


def test_allocator_hands_out_from_the_head_and_takes_back_at_the_tail():
    alloc = BlockAllocator(5)
    assert alloc.allocate(3) == [0, 1, 2]
    assert (alloc.num_free, alloc.num_used) == (2, 3)
    alloc.free([1, 0])
    assert alloc.allocate(4) == [3, 4, 1, 0]
    assert alloc.num_free == 0 and alloc.ref_counts == [1] * 5


def test_allocator_out_of_blocks_is_all_or_nothing():
    alloc = BlockAllocator(3)
    alloc.allocate(2)
    with pytest.raises(OutOfBlocks, match="1 free block") as err:
        alloc.allocate(2)
    assert (err.value.needed, err.value.free) == (2, 1)
    assert alloc.num_free == 1 and alloc.ref_counts == [1, 1, 0]
    assert alloc.allocate(0) == []


def test_allocator_shared_block_returns_after_its_last_owner():
    alloc = BlockAllocator(2)
    (b,) = alloc.allocate(1)
    alloc.share([b])
    alloc.free([b])
    assert alloc.ref_counts[b] == 1 and alloc.num_free == 1
    alloc.free([b])
    assert alloc.ref_counts[b] == 0 and alloc.num_free == 2


@pytest.mark.parametrize("caching", [False, True])
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_allocator_peak_is_the_most_blocks_owned_at_once(caching, seed):
    from llmfoundations.inference.prefix_cache import CachingBlockAllocator

    alloc = CachingBlockAllocator(8) if caching else BlockAllocator(8)
    rng, owned, most = random.Random(seed), [], 0
    for step in range(30):
        op = rng.choice(["allocate", "free", "share", "reset"])
        if op == "allocate" and alloc.num_free:
            blocks = alloc.allocate(rng.randint(1, alloc.num_free))
            owned += blocks
            if caching:  # cached blocks stay findable after their owner frees them
                for b in blocks:
                    alloc.cache_block(b, f"{seed}-{step}-{b}".encode())
        elif op == "free" and owned:
            alloc.free([owned.pop(rng.randrange(len(owned)))])
        elif op == "share":
            cached = [b for b in range(8) if caching and alloc.hashes[b] is not None]
            pool = owned + cached
            if pool:
                b = rng.choice(pool)
                alloc.share([b])
                owned.append(b)
        elif op == "reset":
            alloc.reset_peak()
            most = 0
        most = max(most, alloc.num_used)  # brute force: owners counted after every call
        assert alloc.peak_used == most


def test_allocator_bad_inputs():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockAllocator(0)
    alloc = BlockAllocator(3)
    blocks = alloc.allocate(1)
    with pytest.raises(ValueError, match="double free"):
        alloc.free(blocks + blocks)
    assert alloc.ref_counts[0] == 1  # nothing changed
    with pytest.raises(ValueError, match="double free"):
        alloc.free([1])
    with pytest.raises(ValueError, match="is free"):
        alloc.share([2])
    with pytest.raises(ValueError, match="outside the pool"):
        alloc.free([3])
    with pytest.raises(TypeError, match="ints"):
        alloc.free([0.0])
    with pytest.raises(TypeError, match="sequence of block ids"):
        alloc.free(0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        alloc.allocate(-1)
    assert "free=2" in repr(alloc)


# ----------------------------------------------------------------------------- reads and writes


def test_gather_blocks_reads_through_the_table():
    pool = torch.arange(12.0).reshape(4, 3, 1, 1)  # 4 blocks of 3 positions
    out = gather_blocks(pool, [3, 1], 5)
    assert out.shape == (1, 5, 1)
    assert out.flatten().tolist() == [9.0, 10.0, 11.0, 3.0, 4.0]
    assert gather_blocks(pool, [], 0).shape == (1, 0, 1)
    with pytest.raises(ValueError, match="needs 2 blocks"):
        gather_blocks(pool, [3], 4)
    with pytest.raises(ValueError, match="outside the pool"):
        gather_blocks(pool, [4], 1)


@settings(max_examples=30, deadline=None)
@given(
    block_size=st.integers(1, 6),
    chunks=st.lists(st.lists(st.integers(1, 7), min_size=1, max_size=4), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_paged_contents_equal_the_contiguous_cache(block_size, chunks, seed):
    """Several sequences written in interleaved chunks (so their blocks are scattered over
    the pool): gathering each one's blocks gives exactly the contiguous KVCache's buffers."""
    g = torch.Generator().manual_seed(seed)
    hkv, d = 2, 3
    total = sum(-(-sum(c) // block_size) for c in chunks)
    cache = PagedKVCache(2, total, block_size, hkv, d)
    seqs = [cache.add_sequence() for _ in chunks]
    dense = [LayerKVCache(1, hkv, d, max_len=sum(c)) for c in chunks]
    order = [(i, n) for i, c in enumerate(chunks) for n in c]
    random.Random(seed).shuffle(order)  # chunks of one sequence keep their order below
    pending = [list(c) for c in chunks]
    for i, _ in order:
        n = pending[i].pop(0)
        k, v = torch.randn(hkv, n, d, generator=g), torch.randn(hkv, n, d, generator=g)
        for layer in range(2):
            cache.append(layer, seqs[i], k + layer, v - layer)
        dense[i].update(k[None], v[None])
    for i, seq in enumerate(seqs):
        for layer in range(2):
            k, v = cache.gather(layer, seq)
            assert torch.equal(k, dense[i].k[0] + layer) and torch.equal(v, dense[i].v[0] - layer)
        assert cache.length(seq) == sum(chunks[i])
        assert cache.slots_wasted(seq) == len(cache.block_table(seq)) * block_size - sum(chunks[i])
        assert 0 <= cache.slots_wasted(seq) <= block_size - 1
    assert cache.num_free_blocks == 0  # blocks were allocated on demand, exactly


@settings(max_examples=30, deadline=None)
@given(
    block_size=st.integers(1, 5),
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    t_q=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 2**16),
)
def test_paged_attention_equals_attention_over_the_dense_cache(
    block_size, lengths, t_q, groups, seed
):
    g = torch.Generator().manual_seed(seed)
    hkv, d = 2, 4
    h = hkv * groups
    lengths = [max(n, t_q) for n in lengths]
    cache = PagedKVCache(1, sum(-(-n // block_size) for n in lengths) + 2, block_size, hkv, d)
    cache.allocator.allocate(2)  # the sequences do not start at block 0
    seqs, outs_ref = [], []
    q = torch.randn(len(lengths), h, t_q, d, generator=g)
    for row, n in enumerate(lengths):
        k, v = torch.randn(hkv, n, d, generator=g), torch.randn(hkv, n, d, generator=g)
        seq = cache.add_sequence()
        cache.append(0, seq, k, v)
        seqs.append(seq)
        dense = KVCache(1, 1, hkv, d, max_len=n)
        k_all, v_all = dense.layers[0].update(k[None], v[None])  # (1, Hkv, T, D)
        k_all = k_all[0].repeat_interleave(groups, dim=0)  # (H, T, D)
        v_all = v_all[0].repeat_interleave(groups, dim=0)
        ref = scaled_dot_product_attention(q[row], k_all, v_all, mask=causal_mask(t_q, n))
        outs_ref.append(ref)
    out = paged_attention(
        q, cache.k_pools[0], cache.v_pools[0], [cache.block_table(s) for s in seqs], lengths
    )
    torch.testing.assert_close(out, torch.stack(outs_ref), **TOL)


@settings(max_examples=20, deadline=None)
@given(
    block_size=st.integers(1, 5),
    chunks=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_attention_layer_through_the_paged_view_equals_through_kvcache(block_size, chunks, seed):
    """MultiHeadAttention (GQA, RoPE) fed chunk by chunk: the paged view's layer and
    KVCache's layer give the same outputs."""
    torch.manual_seed(seed)
    layer = MultiHeadAttention(16, 4, n_kv_heads=2, rope_theta=10_000.0).eval()
    x = torch.randn(1, sum(chunks), 16)
    paged = PagedKVCache(1, -(-sum(chunks) // block_size), block_size, 2, 4)
    view = paged.view(paged.add_sequence())
    dense = KVCache(1, 1, 2, 4, max_len=sum(chunks))
    start = 0
    with torch.no_grad():
        for n in chunks:
            part = x[:, start : start + n]
            out_paged = layer(part, kv_cache=view.layers[0])
            out_dense = layer(part, kv_cache=dense.layers[0])
            torch.testing.assert_close(out_paged, out_dense, **TOL)
            start += n
    assert view.length == dense.length == sum(chunks)


# ----------------------------------------------------------------------------- a model


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("block_size", [1, 3, 4])
def test_greedy_decoding_through_the_paged_cache_equals_generate(name, block_size):
    model = _model(name)
    prompt = torch.randint(0, V, (9,), generator=torch.Generator().manual_seed(1)).tolist()
    ref = generate(model, [prompt], 12)[0].tolist()
    cache = PagedKVCache.for_model(model, num_blocks=-(-21 // block_size), block_size=block_size)
    assert _greedy_paged(model, cache, prompt, 12) == ref
    assert cache.num_used_blocks == -(-20 // block_size)  # 9 + 11 positions fed (not the last)


def test_logits_through_the_paged_cache_equal_a_full_forward_pass():
    model = _model("llama")
    ids = torch.randint(0, V, (1, 14), generator=torch.Generator().manual_seed(2))
    cache = PagedKVCache.for_model(model, num_blocks=5, block_size=3)
    view = cache.view(cache.add_sequence())
    with torch.no_grad():
        full = model(ids).logits
        parts = [model(ids[:, a:b], kv_cache=view).logits for a, b in ((0, 5), (5, 6), (6, 14))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_ragged_batch_decoding_equals_each_sequence_alone():
    """Sequences prefilled alone (different prompt lengths), then decoded together as one
    batch through a view with its padding mask: the same tokens as each one alone."""
    model = _model("llama")
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (3, 8, 5)]
    refs = [generate(model, [p], 6)[0].tolist() for p in prompts]
    cache = PagedKVCache.for_model(model, num_blocks=16, block_size=2)  # 4 + 7 + 5 blocks
    seqs, last = [], []
    with torch.no_grad():
        for p in prompts:
            seq = cache.add_sequence()
            logits = model(torch.tensor([p]), kv_cache=cache.view(seq)).logits
            seqs.append(seq)
            last.append(int(logits[0, -1].argmax()))
        view = cache.view(seqs)
        outs = [p + [t] for p, t in zip(prompts, last, strict=True)]
        for _ in range(5):
            feed = torch.tensor(last)[:, None]  # (B, 1)
            logits = model(feed, kv_cache=view, attention_mask=view.padding_mask(1)).logits
            last = logits[:, -1].argmax(-1).tolist()
            for out, t in zip(outs, last, strict=True):
                out.append(t)
    assert outs == refs


@pytest.mark.parametrize("name", ["llama", "mqa", "gpt"])
@pytest.mark.parametrize("block_size", [1, 3, 4])
def test_planned_views_equal_the_reference_views(name, block_size):
    """Ragged prefills, then ragged passes of 1 and 2 new tokens per row: a planned view
    (one index_copy_ / index_select per layer) gives the reference view's logits and
    leaves the same block tables, lengths and pool contents."""
    model = _model(name)
    g = torch.Generator().manual_seed(block_size)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (3, 8, 1)]
    feeds = [torch.randint(0, V, (3, t), generator=g) for t in (1, 2, 1, 3)]

    def run(planned: bool) -> tuple[list[torch.Tensor], PagedKVCache, list[int]]:
        cache = PagedKVCache.for_model(model, num_blocks=40, block_size=block_size)
        seqs, outs = [cache.add_sequence() for _ in prompts], []
        with torch.no_grad():
            for seq, p in zip(seqs, prompts, strict=True):
                view = cache.view(seq, num_new_tokens=len(p) if planned else None)
                outs.append(model(torch.tensor([p]), kv_cache=view).logits)
            for feed in feeds:
                view = cache.view(seqs, num_new_tokens=feed.shape[1] if planned else None)
                mask = view.padding_mask(feed.shape[1])
                outs.append(model(feed, kv_cache=view, attention_mask=mask).logits)
        return outs, cache, seqs

    ref, ref_cache, seqs = run(planned=False)
    fast, fast_cache, _ = run(planned=True)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    for seq in seqs:
        assert fast_cache.block_table(seq) == ref_cache.block_table(seq)
    _assert_same_contents(fast_cache, seqs, ref_cache, seqs)


def test_planned_view_reserves_up_front_and_serves_one_pass():
    model = _model("llama")
    cache = PagedKVCache.for_model(model, num_blocks=3, block_size=2)
    seq = cache.add_sequence()
    view = cache.view(seq, num_new_tokens=3)
    assert len(cache.block_table(seq)) == 2 and cache.length(seq) == 0  # reserved, not written
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=view)
        with pytest.raises(RuntimeError, match="one forward pass"):
            model(torch.zeros(1, 3, dtype=torch.long), kv_cache=view)
    with pytest.raises(OutOfBlocks):  # 3 + 4 positions need 4 blocks: before any compute
        cache.view(seq, num_new_tokens=4)
    first = cache.add_sequence()
    with pytest.raises(OutOfBlocks, match="1 free block"):  # first fits, seq's 3 + 2 do not
        cache.view([first, seq], num_new_tokens=2)
    # All rows or none: the row that fit got no block either.
    assert cache.block_table(first) == [] and cache.block_table(seq) == [0, 1]
    assert cache.num_free_blocks == 1 and cache.slots_wasted(first) == 0
    cache.free_sequence(first)
    with pytest.raises(ValueError, match="planned for 1 new token"):
        cache.view(seq, num_new_tokens=1).layers[0].update(
            torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8)
        )
    with pytest.raises(ValueError, match="num_new_tokens"):
        cache.view(seq, num_new_tokens=0)
    other = cache.add_sequence()
    cache.append(0, other, torch.zeros(2, 1, 8), torch.zeros(2, 1, 8))  # layer 0 only
    with pytest.raises(ValueError, match="middle of a forward pass"):
        cache.view(other, num_new_tokens=1)


def test_padding_mask_marks_each_rows_positions():
    cache = PagedKVCache(1, 8, 2, 1, 2)
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.append(0, a, torch.zeros(1, 3, 2), torch.zeros(1, 3, 2))
    cache.append(0, b, torch.zeros(1, 1, 2), torch.zeros(1, 1, 2))
    view = cache.view([a, b])
    assert (view.length, view.batch_size) == (3, 2)
    assert view.padding_mask(2).tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    with pytest.raises(ValueError, match="num_new_tokens"):
        view.padding_mask(0)


# ----------------------------------------------------------------------------- accounting


def test_memory_accounting_is_exact_and_freeing_returns_blocks():
    model = _model("llama")
    p = 4
    cache = PagedKVCache.for_model(model, num_blocks=10, block_size=p)
    lengths = {}
    for n in (1, 4, 5, 11):
        seq = cache.add_sequence()
        with torch.no_grad():
            model(torch.zeros(1, n, dtype=torch.long), kv_cache=cache.view(seq))
        lengths[seq] = n
    assert cache.num_used_blocks == sum(-(-n // p) for n in lengths.values()) == 1 + 1 + 2 + 3
    assert [cache.slots_wasted(s) for s in lengths] == [3, 0, 3, 1]
    assert cache.num_free_blocks == 10 - 7
    # bytes: 2 (K, V) * 2 layers * P * Hkv * D * 4 bytes (fp32)
    assert cache.bytes_per_block() == 2 * 2 * p * 2 * 8 * 4
    assert cache.memory_bytes() == sum(t.nbytes for t in cache.k_pools + cache.v_pools)
    for seq in list(lengths):
        cache.free_sequence(seq)
    assert cache.num_free_blocks == 10 and cache.num_used_blocks == 0 and cache.sequences == []


def test_reserve_allocates_ahead_all_or_nothing():
    cache = PagedKVCache(1, 3, 2, 1, 2)
    seq = cache.add_sequence()
    assert cache.blocks_needed(seq, 5) == 3
    cache.reserve(seq, 3)
    assert cache.block_table(seq) == [0, 1] and cache.length(seq) == 0
    cache.append(0, seq, torch.ones(1, 3, 2), torch.ones(1, 3, 2))
    assert cache.block_table(seq) == [0, 1]  # already there
    with pytest.raises(OutOfBlocks):
        cache.reserve(seq, 4)  # needs 2 more blocks, 1 is free
    assert cache.block_table(seq) == [0, 1] and cache.num_free_blocks == 1


def test_prefix_blocks_are_shared_and_never_written():
    cache = PagedKVCache(1, 4, 2, 1, 1)
    a = cache.add_sequence()
    cache.append(0, a, torch.arange(4.0).reshape(1, 4, 1), torch.zeros(1, 4, 1))
    b = cache.add_sequence(prefix_blocks=cache.block_table(a))
    assert cache.length(b) == 4 and cache.allocator.ref_counts[:2] == [2, 2]
    cache.append(0, b, torch.full((1, 1, 1), 9.0), torch.zeros(1, 1, 1))
    assert cache.block_table(b) == [0, 1, 2]
    assert cache.gather(0, a)[0].flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert cache.gather(0, b)[0].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 9.0]
    cache.free_sequence(a)
    assert cache.allocator.ref_counts[:3] == [1, 1, 1] and cache.num_free_blocks == 1


def test_truncate_forgets_positions_in_every_layer_and_never_reopens_a_shared_block():
    """The undo of a pass that failed part-way: layers written to different lengths go
    back to one length; the next writes land where the forgotten ones were."""
    cache = PagedKVCache(2, 6, 2, 1, 1)
    a = cache.add_sequence()
    for layer in (0, 1):
        cache.append(layer, a, torch.arange(4.0).reshape(1, 4, 1), torch.zeros(1, 4, 1))
    cache.append(0, a, torch.full((1, 1, 1), 7.0), torch.zeros(1, 1, 1))  # layer 1 not reached
    with pytest.raises(ValueError, match="past the 4 positions"):
        cache.truncate(a, 5)
    cache.truncate(a, 3)
    assert cache._lengths[a] == [3, 3] and cache.block_table(a) == [0, 1, 2]
    cache.append(0, a, torch.full((1, 1, 1), 9.0), torch.zeros(1, 1, 1))
    assert cache.gather(0, a)[0].flatten().tolist() == [0.0, 1.0, 2.0, 9.0]
    b = cache.add_sequence(prefix_blocks=[0])  # block 0 shared by a and b
    cache.append(0, b, torch.ones(1, 1, 1), torch.ones(1, 1, 1))
    for seq, length in ((a, 1), (b, 1), (b, 0)):
        with pytest.raises(ValueError, match=r"reopen block\(s\) \[0\] that other"):
            cache.truncate(seq, length)
    cache.truncate(b, 2)  # its own block 3 only
    assert cache.length(b) == 2 and cache.gather(0, b)[0].flatten().tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="length"):
        cache.truncate(a, -1)
    with pytest.raises(KeyError):
        cache.truncate(99, 0)


def test_truncate_never_reopens_a_block_a_prefix_cache_has_named():
    """A committed block with one owner: reopening it would let new writes change what its
    name promises to every later lookup."""
    from llmfoundations.inference.prefix_cache import CachingBlockAllocator

    alloc = CachingBlockAllocator(4)
    cache = PagedKVCache(1, 4, 2, 1, 1, allocator=alloc)
    a = cache.add_sequence()
    cache.append(0, a, torch.ones(1, 3, 1), torch.ones(1, 3, 1))
    alloc.cache_block(cache.block_table(a)[0], b"name")
    with pytest.raises(ValueError, match=r"reopen block\(s\) \[0\] .* a prefix cache has named"):
        cache.truncate(a, 1)
    cache.truncate(a, 2)  # the unnamed partial block only
    assert cache.length(a) == 2


def test_prefix_blocks_must_be_full():
    """A block that is not full in every layer cannot be shared: the new sequence would
    claim positions nobody wrote and see its owner's later writes (a silent wrong answer)."""
    cache = PagedKVCache(2, 8, 4, 1, 1)
    a = cache.add_sequence()
    cache.append(0, a, torch.ones(1, 6, 1), torch.ones(1, 6, 1))
    cache.append(1, a, torch.ones(1, 3, 1), torch.ones(1, 3, 1))  # layer 1 is behind
    with pytest.raises(ValueError, match=r"block\(s\) \[0\] that are not full"):
        cache.add_sequence(prefix_blocks=cache.block_table(a)[:1])
    cache.append(1, a, torch.ones(1, 3, 1), torch.ones(1, 3, 1))  # 6 positions everywhere
    with pytest.raises(ValueError, match=r"\[1\] that are not full"):
        cache.add_sequence(prefix_blocks=cache.block_table(a))
    assert cache.allocator.ref_counts[:2] == [1, 1]  # nothing shared by the refusals
    b = cache.add_sequence(prefix_blocks=cache.block_table(a)[:1])
    cache.free_sequence(a)  # block 0 stays full (b holds it); block 1 goes back, half written
    c = cache.add_sequence(prefix_blocks=[0])
    cache.free_sequence(b), cache.free_sequence(c)  # block 0 was full when freed
    with pytest.raises(ValueError, match="is free"):  # full, but free: the allocator refuses
        cache.add_sequence(prefix_blocks=[0])
    d = cache.add_sequence()
    cache.reserve(d, 4 * 8)  # hands out every block, 0 included: none is full now
    with pytest.raises(ValueError, match="not full"):
        cache.add_sequence(prefix_blocks=[0])


def test_running_out_of_blocks_mid_sequence_raises():
    model = _model("llama")
    cache = PagedKVCache.for_model(model, num_blocks=2, block_size=2)
    view = cache.view(cache.add_sequence())
    with torch.no_grad(), pytest.raises(OutOfBlocks, match="needed"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=view)


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs():
    with pytest.raises(ValueError, match="block_size"):
        PagedKVCache(1, 4, 0, 1, 2)
    with pytest.raises(ValueError, match="manages 3 blocks"):
        PagedKVCache(1, 4, 2, 1, 2, allocator=BlockAllocator(3))
    with pytest.raises(TypeError, match="allocator"):
        PagedKVCache(1, 4, 2, 1, 2, allocator=object())
    with pytest.raises(TypeError, match="config"):
        PagedKVCache.for_model(torch.nn.Linear(2, 2), 4, 2)
    cache = PagedKVCache(2, 4, 2, 2, 3)
    seq = cache.add_sequence()
    k = torch.zeros(2, 1, 3)
    with pytest.raises(KeyError, match="no sequence 7"):
        cache.append(0, 7, k, k)
    with pytest.raises(TypeError, match="seq_id"):
        cache.length("0")
    with pytest.raises(ValueError, match="layer must be < n_layers=2"):
        cache.append(2, seq, k, k)
    with pytest.raises(ValueError, match=r"\(Hkv, T_new, D\) with Hkv = 2"):
        cache.append(0, seq, torch.zeros(1, 1, 3), torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match="one shape"):
        cache.append(0, seq, k, torch.zeros(2, 2, 3))
    with pytest.raises(TypeError, match="dtype"):
        cache.append(0, seq, k.double(), k.double())
    with pytest.raises(ValueError, match="must not be empty"):
        cache.append(0, seq, torch.zeros(2, 0, 3), torch.zeros(2, 0, 3))
    with pytest.raises(ValueError, match="distinct"):
        cache.view([seq, seq])
    with pytest.raises(ValueError, match="non-empty"):
        cache.view([])
    with pytest.raises(ValueError, match="B = 1 rows"):
        cache.view(seq).layers[0].update(torch.zeros(2, 2, 1, 3), torch.zeros(2, 2, 1, 3))
    with pytest.raises(ValueError, match="lengths"):
        paged_attention(torch.zeros(1, 2, 1, 3), cache.k_pools[0], cache.v_pools[0], [[0]], [])
    with pytest.raises(ValueError, match="lengths\\[i\\] must be >= 2"):
        paged_attention(torch.zeros(1, 2, 2, 3), cache.k_pools[0], cache.v_pools[0], [[0]], [1])
    with pytest.raises(ValueError, match="multiple of their Hkv"):
        paged_attention(torch.zeros(1, 3, 1, 3), cache.k_pools[0], cache.v_pools[0], [[0]], [1])
    cache.free_sequence(seq)
    with pytest.raises(KeyError):
        cache.free_sequence(seq)


def test_decoder_refuses_an_object_that_is_not_a_cache():
    model = _model("llama")
    with pytest.raises(TypeError, match="layers, batch_size and length"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=object())
    cache = PagedKVCache.for_model(model, num_blocks=4, block_size=2)
    view = cache.view(cache.add_sequence())
    with pytest.raises(ValueError, match="batch_size=2"):
        model(torch.zeros(2, 2, dtype=torch.long), kv_cache=view)


# ----------------------------------------------------------------------------- the real model


@pytest.mark.slow
@pytest.mark.model
def test_smollm2_greedy_through_the_paged_cache_equals_generate(smollm2_path):
    pretrained = pytest.importorskip("llmfoundations.pretrained")
    model, tokenizer = pretrained.load_smollm2(path=smollm2_path)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.encode(pretrained.apply_chat_template(chat))
    ref = generate(model, [prompt], 16)[0].tolist()
    cache = PagedKVCache.for_model(model, num_blocks=-(-(len(prompt) + 16) // 16), block_size=16)
    assert _greedy_paged(model, cache, prompt, 16) == ref


@pytest.mark.parametrize("name", ["llama", "mqa", "gpt"])
@pytest.mark.parametrize("block_size", [1, 3, 4])
def test_packed_view_equals_each_sequence_through_the_reference_view(name, block_size):
    """Sequences with different cached lengths (0 included) and different numbers of new
    tokens, packed into one row: each sequence's logits equal its own pass through a
    plain view, and the pool ends up with the same keys and values."""
    model = _model(name)
    g = torch.Generator().manual_seed(block_size)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (3, 8, 1, 0)]
    feeds = [torch.randint(0, V, (n,), generator=g).tolist() for n in (1, 4, 2, 5)]

    def prefill(cache: PagedKVCache) -> list[int]:
        seqs = [cache.add_sequence() for _ in prompts]
        with torch.no_grad():
            for seq, p in zip(seqs, prompts, strict=True):
                if p:
                    model(torch.tensor([p]), kv_cache=cache.view(seq))
        return seqs

    ref_cache = PagedKVCache.for_model(model, num_blocks=40, block_size=block_size)
    ref_seqs = prefill(ref_cache)
    with torch.no_grad():
        refs = [
            model(torch.tensor([f]), kv_cache=ref_cache.view(s)).logits[0]
            for s, f in zip(ref_seqs, feeds, strict=True)
        ]  # each (n_i, V)
    cache = PagedKVCache.for_model(model, num_blocks=40, block_size=block_size)
    seqs = prefill(cache)
    view = cache.packed_view(seqs, [len(f) for f in feeds])
    ids = torch.tensor([[t for f in feeds for t in f]])  # (1, T)
    with torch.no_grad():
        out = model.forward_unchecked(
            ids, attention_mask=view.attention_mask(), positions=view.positions(), kv_cache=view
        ).logits[0]  # (T, V)
    torch.testing.assert_close(out, torch.cat(refs), **TOL)
    assert view.last_indices() == [0, 4, 6, 11]
    _assert_same_contents(cache, seqs, ref_cache, ref_seqs)


def test_packed_view_mask_positions_and_refusals():
    model = _model("llama")
    cache = PagedKVCache.for_model(model, num_blocks=6, block_size=2)
    a, b = cache.add_sequence(), cache.add_sequence()
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache.view(a))
    view = cache.packed_view([a, b], [1, 2])
    assert view.positions().tolist() == [[3, 0, 1]]
    # keys: a's 3 cached, then the new ones: a's 1, b's 2
    assert view.attention_mask()[0, 0].int().tolist() == [
        [1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1, 1],
    ]
    assert cache.length(a) == 3 and len(cache.block_table(a)) == 2  # reserved, not written
    with pytest.raises(ValueError, match=r"\(1, Hkv, 3, D\)"):
        view.layers[0].update(torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8))
    with torch.no_grad():
        kw = dict(attention_mask=view.attention_mask(), positions=view.positions())
        model.forward_unchecked(torch.tensor([[4, 5, 6]]), kv_cache=view, **kw)
        with pytest.raises(RuntimeError, match="one forward pass"):
            model.forward_unchecked(torch.tensor([[4, 5, 6]]), kv_cache=view, **kw)
    tables, free = [cache.block_table(s) for s in (a, b)], cache.num_free_blocks
    with pytest.raises(OutOfBlocks, match="3 free block"):  # a's 1 more block fits, b's 5 do not
        cache.packed_view([a, b], [1, 9])
    # All rows or none: a, which fit, got no block either.
    assert [cache.block_table(s) for s in (a, b)] == tables and cache.num_free_blocks == free == 3
    with pytest.raises(ValueError, match="one count per sequence"):
        cache.packed_view([a, b], [1])
    with pytest.raises(ValueError, match="num_new_tokens"):
        cache.packed_view([a], [0])
    with pytest.raises(ValueError, match="distinct"):
        cache.packed_view([a, a], [1, 1])
    with pytest.raises(ValueError, match="non-empty"):
        cache.packed_view([], [])
    with pytest.raises(TypeError, match="list of ints"):
        cache.packed_view([a], 1)
    with pytest.raises(KeyError):
        cache.packed_view([99], [1])
    cache.append(0, b, torch.zeros(2, 1, 8), torch.zeros(2, 1, 8))  # layer 0 only
    with pytest.raises(ValueError, match="middle of a forward pass"):
        cache.packed_view([b], [1])


# ----------------------------------------------------------------------------- contracts (mutation review)


# free_sequence counts a partly written last block as full
def test_a_partial_block_freed_by_its_sequence_is_not_full():
    cache = PagedKVCache(1, 4, 4, 1, 1)
    a = cache.add_sequence()
    cache.append(0, a, torch.ones(1, 6, 1), torch.ones(1, 6, 1))  # blocks [0, 1], 1 half written
    cache.allocator.share([1])  # another owner (a radix tree, say) keeps block 1 alive
    cache.free_sequence(a)
    with pytest.raises(ValueError, match=r"\[1\] that are not full"):
        cache.add_sequence(prefix_blocks=[1])


# blocks_needed must count from the layer that is furthest ahead
def test_blocks_needed_counts_from_the_furthest_layer():
    cache = PagedKVCache(2, 8, 4, 1, 1)
    s = cache.add_sequence()
    cache.append(0, s, torch.ones(1, 6, 1), torch.ones(1, 6, 1))  # layer 0: 6, layer 1: 0
    assert cache.blocks_needed(s, 3) == 1  # layer 0 writes positions 6..8: a 3rd block


# block_table returns a copy
def test_block_table_is_a_copy():
    cache = PagedKVCache(1, 4, 2, 1, 1)
    s = cache.add_sequence()
    cache.reserve(s, 3)
    cache.block_table(s).append(3)
    assert cache.block_table(s) == [0, 1]


# a view's length is what every layer holds (the minimum over layers)
def test_view_length_is_the_minimum_over_layers():
    cache = PagedKVCache(2, 4, 2, 1, 1)
    s = cache.add_sequence()
    cache.append(0, s, torch.ones(1, 3, 1), torch.ones(1, 3, 1))  # layer 1 still at 0
    view = cache.view(s)
    assert (view.layers[0].length, view.layers[1].length, view.length) == (3, 0, 0)


# a packed view's length is the sum of its sequences' cached positions
def test_packed_view_length_is_the_sum_of_cached_lengths():
    cache = PagedKVCache(1, 8, 2, 1, 1)
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.append(0, a, torch.ones(1, 3, 1), torch.ones(1, 3, 1))
    cache.append(0, b, torch.ones(1, 2, 1), torch.ones(1, 2, 1))
    assert cache.packed_view([a, b], [1, 1]).length == 5


# ------------------------------------- from a mutation review (each kills a surviving mutant)


def test_a_block_full_in_one_layer_only_is_not_full_when_freed():
    """A sequence freed after a pass that stopped between layers (layer 0 filled block 0,
    layer 1 wrote half of it) leaves the block not full: offering it as a cached prefix is
    refused (counted from the furthest layer, a new sequence read layer 1's unwritten slots)."""
    cache = PagedKVCache(2, 4, 4, 1, 1)
    a = cache.add_sequence()
    cache.append(0, a, torch.ones(1, 4, 1), torch.ones(1, 4, 1))
    cache.append(1, a, torch.ones(1, 2, 1), torch.ones(1, 2, 1))
    cache.allocator.share([0])  # another owner keeps block 0 alive
    cache.free_sequence(a)
    with pytest.raises(ValueError, match=r"\[0\] that are not full"):
        cache.add_sequence(prefix_blocks=[0])
