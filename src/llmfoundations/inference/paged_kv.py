"""A KV cache in fixed-size blocks, read through a block table (vLLM's PagedAttention layout).

A contiguous cache (``llmfoundations.kv_cache.KVCache``) reserves ``max_len`` positions
per sequence before the first token is generated. A server does not know how long each
answer will be, so most of that reservation sits empty; Kwon et al. (2023,
https://arxiv.org/abs/2309.06180) found earlier systems keeping real token states in
only 20-38% of the KV memory they had reserved. PagedAttention borrows the operating
system's answer: cut the memory into fixed-size *blocks* (pages) of ``P`` tokens, give
each sequence a *block table* mapping its logical block ``j`` (positions ``j*P .. j*P +
P-1``) to any physical block of a shared pool, and hand out a new block only when the
last one is full. Position ``p`` of a sequence lives at::

    block = block_table[p // P],   offset = p % P

A sequence of ``T`` tokens holds ``ceil(T / P)`` blocks, so at most ``P - 1`` slots are
wasted per sequence (internal fragmentation), and no memory is reserved for tokens that
were never generated. The pool costs ``2 * n_layers * Np * P * Hkv * D * itemsize`` bytes.
Because blocks are named by id, two sequences can point at the same block: that is how
shared prefixes are stored once (``inference.prefix_cache``).

This module holds:

- ``OutOfBlocks``: raised when the pool cannot supply the blocks asked for (a scheduler
  catches it and waits or preempts);
- ``BlockAllocator``: pure-Python bookkeeping: a free list of block ids, ``allocate``,
  ``free``, and reference counts so that several owners (sequences, a prefix cache) can
  hold one block (``share``); a block returns to the free list when its count hits 0;
- ``PagedKVCache``: one pool of blocks per layer, ``(Np, P, Hkv, D)`` for keys and for
  values, plus per-sequence block tables and lengths: ``add_sequence``, ``reserve``,
  ``append`` (write new keys/values through the table), ``gather`` (the sequence's blocks
  as a dense ``(Hkv, T, D)``), ``free_sequence``, and the memory accounting;
- ``PagedKVView`` / ``PagedLayerView``: some sequences of the pool seen as a batch by
  ``models.DecoderLM(ids, kv_cache=view)``; each layer view is an
  ``attention.KVCacheLike`` (``update(k, v)`` and ``length``), like
  ``kv_cache.LayerKVCache``. A plain view reads row by row (the reference); a *planned*
  view (``cache.view(ids, num_new_tokens=n)``, for one forward pass) computes the slots
  once and reads all rows with one ``index_select`` per layer (what ``inference.batching``
  uses);
- ``PackedPagedKVView`` / ``PackedLayerView``: several sequences packed into one row for
  one forward pass, each with its own number of new tokens (a decode row beside prefill
  chunks), with a block mask and per-token positions (``cache.packed_view``);
- ``gather_blocks`` and ``paged_attention``: attention of each sequence's new queries
  over its cached keys, reading them through the block table (the readable reference).

Conventions: block tables and lengths are Python ints and lists held by the cache, so a
decoding step needs no device-to-host copy. Sequences are named by int ids that the cache
hands out. Every layer keeps its own length (as in ``KVCache``): during a forward pass
layer 0 has written the new tokens before layer 1 has; a sequence's ``length`` is the
minimum over layers. The cache is for inference, under ``torch.no_grad()``.

Left out: real paged-attention kernels read the blocks in place, inside the attention
kernel (vLLM's layout splits the head dimension for vectorised loads); here the blocks
are gathered into a dense copy and the course's attention runs on it, which costs a copy
of the keys and values per layer and step (one ``index_select`` in a planned view). Also left out: copy-on-write of a partly
filled shared block (beam search and parallel sampling in vLLM), swapping blocks to CPU
memory, sliding windows, and a scheduler (``inference.batching``).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor, nn

from llmfoundations._validate import check_int, check_same_device, check_tensor
from llmfoundations.attention import causal_mask, scaled_dot_product_attention
from llmfoundations.kv_cache import cache_shape_for

__all__ = [
    "OutOfBlocks",
    "BlockAllocator",
    "PagedKVCache",
    "PagedKVView",
    "PagedLayerView",
    "PackedPagedKVView",
    "PackedLayerView",
    "gather_blocks",
    "paged_attention",
]


class OutOfBlocks(RuntimeError):
    """The pool has fewer free blocks than were asked for (nothing was allocated)."""

    def __init__(self, needed: int, free: int) -> None:
        super().__init__(
            f"the block pool has {free} free block(s), {needed} needed: free a sequence, "
            "or build the cache with more blocks"
        )
        self.needed, self.free = needed, free


def _check_block_ids(name: str, blocks: object, num_blocks: int) -> list[int]:
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Iterable):
        raise TypeError(f"{name} must be a sequence of block ids, got {type(blocks).__name__}")
    ids = list(blocks)
    for b in ids:
        if isinstance(b, bool) or not isinstance(b, int):
            raise TypeError(f"{name} must hold ints, got {type(b).__name__}")
        if not 0 <= b < num_blocks:
            raise ValueError(f"{name} holds block {b}, outside the pool [0, {num_blocks})")
    return ids


class BlockAllocator:
    """A free list of block ids with reference counts.

    ``allocate(n)`` hands out ``n`` blocks from the head of the free list (count 1 each),
    ``share(blocks)`` adds an owner, ``free(blocks)`` removes one; a block whose count
    drops to 0 goes back to the tail of the free list. ``allocate`` is all-or-nothing:
    it raises ``OutOfBlocks`` without allocating anything when too few are free.
    ``peak_used`` is the most blocks owned at once since construction or ``reset_peak()``
    (as ``torch.cuda.max_memory_allocated``: reading ``num_used`` between steps misses a
    step that allocates before it frees).

    >>> alloc = BlockAllocator(4)
    >>> alloc.allocate(3), alloc.num_free
    ([0, 1, 2], 1)
    >>> alloc.free([1]); alloc.allocate(2)
    [3, 1]
    """

    def __init__(self, num_blocks: int) -> None:
        check_int("num_blocks", num_blocks, minimum=1)
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks  # block id -> number of owners
        self._free: deque[int] = deque(range(num_blocks))  # the next block to hand out first
        self.peak_used = 0

    @property
    def num_free(self) -> int:
        """Blocks that ``allocate`` can hand out now."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        """Blocks with at least one owner."""
        return sum(1 for c in self.ref_counts if c > 0)

    def allocate(self, n: int) -> list[int]:
        """``n`` fresh blocks, each with one owner; raises ``OutOfBlocks`` if too few are free."""
        check_int("n", n, minimum=0)
        if n > self.num_free:
            raise OutOfBlocks(n, self.num_free)
        blocks = [self._pop_free() for _ in range(n)]
        for b in blocks:
            self.ref_counts[b] = 1
        self._note_peak()
        return blocks

    def reset_peak(self) -> None:
        """Start ``peak_used`` again from the blocks owned now."""
        self.peak_used = 0
        self._note_peak()

    def _note_peak(self) -> None:
        # Every block with an owner is off the free list, and only those are.
        self.peak_used = max(self.peak_used, self.num_blocks - len(self._free))

    def share(self, blocks: Iterable[int]) -> None:
        """Add one owner to each block (each must be allocated)."""
        ids = _check_block_ids("blocks", blocks, self.num_blocks)
        for b in ids:
            if self.ref_counts[b] == 0:
                raise ValueError(f"block {b} is free: allocate it before sharing it")
        for b in ids:
            self.ref_counts[b] += 1

    def free(self, blocks: Iterable[int]) -> None:
        """Remove one owner from each block; blocks left with none return to the free list.

        Checked before anything changes: freeing a block more often than it is owned
        raises ``ValueError`` (a double free) and leaves every count as it was.
        """
        ids = _check_block_ids("blocks", blocks, self.num_blocks)
        for b, times in Counter(ids).items():
            if times > self.ref_counts[b]:
                raise ValueError(
                    f"block {b} has {self.ref_counts[b]} owner(s) and would be freed {times} "
                    "time(s) (a double free)"
                )
        for b in ids:
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self._release(b)

    # The two places where the free list is touched; prefix_cache.CachingBlockAllocator
    # overrides them to keep freed blocks' contents until they are needed again.
    def _pop_free(self) -> int:
        return self._free.popleft()

    def _release(self, block: int) -> None:
        self._free.append(block)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_blocks={self.num_blocks}, free={self.num_free})"


def _gather_blocks(pool: Tensor, block_table: Sequence[int], length: int) -> Tensor:
    """Unchecked core of :func:`gather_blocks`."""
    p = pool.shape[1]
    n = -(-length // p)  # blocks that hold positions 0 .. length-1
    index = torch.tensor(list(block_table[:n]), dtype=torch.long, device=pool.device)
    blocks = pool[index]  # (n, P, Hkv, D): the sequence's blocks, in logical order
    dense = blocks.flatten(0, 1)[:length]  # (T, Hkv, D)
    return dense.transpose(0, 1)  # (Hkv, T, D)


def gather_blocks(pool: Tensor, block_table: Sequence[int], length: int) -> Tensor:
    """The first ``length`` positions of a sequence, read from ``pool`` through its table.

    ``pool`` (Np, P, Hkv, D); ``block_table`` the sequence's physical block ids, logical
    order; returns a dense copy ``(Hkv, T, D)`` with ``T = length`` (``length`` = 0 gives
    an empty ``T``).

    >>> pool = torch.arange(6.0).reshape(3, 2, 1, 1)  # 3 blocks of 2 positions
    >>> gather_blocks(pool, [2, 0], 3).flatten().tolist()
    [4.0, 5.0, 0.0]
    """
    check_tensor("pool", pool, ndim=4)
    check_int("length", length, minimum=0)
    np_, p = pool.shape[:2]
    table = _check_block_ids("block_table", block_table, np_)
    if length > len(table) * p:
        raise ValueError(
            f"length {length} needs {-(-length // p)} blocks of {p}, the table has {len(table)}"
        )
    return _gather_blocks(pool, table, length)


def _check_pool_pair(k_pool: object, v_pool: object) -> None:
    check_tensor("k_pool", k_pool, ndim=4, floating=True, nonempty=True)
    check_tensor("v_pool", v_pool, ndim=4, floating=True, nonempty=True)
    assert isinstance(k_pool, Tensor) and isinstance(v_pool, Tensor)
    if k_pool.shape != v_pool.shape:
        raise ValueError(
            f"k_pool and v_pool must have one shape (Np, P, Hkv, D), got "
            f"{tuple(k_pool.shape)} and {tuple(v_pool.shape)}"
        )
    check_same_device(k_pool=k_pool, v_pool=v_pool)


def paged_attention(
    q: Tensor,
    k_pool: Tensor,
    v_pool: Tensor,
    block_tables: Sequence[Sequence[int]],
    lengths: Sequence[int],
    scale: float | None = None,
) -> Tensor:
    """Causal attention of each sequence's newest queries over its cached keys and values.

    Args:
        q: ``(B, H, Tq, D)``, the queries of each sequence's last ``Tq`` positions (RoPE
            applied), whose keys and values are already in the pools.
        k_pool, v_pool: ``(Np, P, Hkv, D)``, one layer's pools (``H % Hkv == 0``).
        block_tables: ``B`` block tables; ``lengths``: ``B`` cached lengths, each >= ``Tq``.
        scale: multiplies the scores; default ``1 / sqrt(D)``.

    Returns ``(B, H, Tq, D)``. The reference: each row's blocks are gathered into a dense
    ``(Hkv, T, D)`` copy, the KV heads repeated for grouped-query attention, and the
    course's ``attention.scaled_dot_product_attention`` runs with the bottom-right causal
    mask (query ``i`` sits at position ``T - Tq + i``). Rows may have different lengths.
    """
    check_tensor("q", q, ndim=4, floating=True, nonempty=True)
    _check_pool_pair(k_pool, v_pool)
    check_same_device(q=q, k_pool=k_pool)
    b, h, t_q, d = q.shape
    np_, p, hkv, d_pool = k_pool.shape
    if d != d_pool or h % hkv != 0:
        raise ValueError(
            f"q (B, H, Tq, D) = {tuple(q.shape)} must have the pools' D = {d_pool} and a "
            f"multiple of their Hkv = {hkv} heads"
        )
    if len(block_tables) != b or len(lengths) != b:
        raise ValueError(
            f"block_tables and lengths must have B = {b} entries, got {len(block_tables)} "
            f"and {len(lengths)}"
        )
    outs = []
    for row in range(b):
        length = check_int("lengths[i]", lengths[row], minimum=t_q)
        k = gather_blocks(k_pool, block_tables[row], length)  # (Hkv, T, D)
        v = gather_blocks(v_pool, block_tables[row], length)  # (Hkv, T, D)
        k = repeat(k, "g t d -> (g r) t d", r=h // hkv)  # (H, T, D)
        v = repeat(v, "g t d -> (g r) t d", r=h // hkv)  # (H, T, D)
        mask = causal_mask(t_q, length, device=q.device)  # (Tq, T)
        outs.append(scaled_dot_product_attention(q[row], k, v, mask=mask, scale=scale))
    return torch.stack(outs)  # (B, H, Tq, D)


class PagedKVCache:
    """Block pools for every layer, block tables and lengths for every sequence.

    Args:
        n_layers: attention layers (one ``(Np, P, Hkv, D)`` pool for keys and one for
            values each; a block id names the same block in every layer).
        num_blocks: ``Np``, blocks in the pool.
        block_size: ``P``, tokens per block (vLLM's default is 16).
        n_kv_heads, head_dim: ``Hkv`` and ``D``.
        allocator: the bookkeeping (default a fresh ``BlockAllocator(num_blocks)``;
            ``prefix_cache.CachingBlockAllocator`` keeps freed blocks for reuse).

    >>> cache = PagedKVCache(n_layers=1, num_blocks=4, block_size=2, n_kv_heads=1, head_dim=3)
    >>> seq = cache.add_sequence()
    >>> cache.append(0, seq, torch.ones(1, 3, 3), torch.ones(1, 3, 3))
    >>> cache.block_table(seq), cache.length(seq), cache.slots_wasted(seq)
    ([0, 1], 3, 1)
    """

    def __init__(
        self,
        n_layers: int,
        num_blocks: int,
        block_size: int,
        n_kv_heads: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        allocator: BlockAllocator | None = None,
    ) -> None:
        for name, value in (
            ("n_layers", n_layers),
            ("num_blocks", num_blocks),
            ("block_size", block_size),
            ("n_kv_heads", n_kv_heads),
            ("head_dim", head_dim),
        ):
            check_int(name, value, minimum=1)
        if allocator is None:
            allocator = BlockAllocator(num_blocks)
        if not isinstance(allocator, BlockAllocator):
            raise TypeError(f"allocator must be a BlockAllocator, got {type(allocator).__name__}")
        if allocator.num_blocks != num_blocks:
            raise ValueError(
                f"allocator manages {allocator.num_blocks} blocks, the pool has {num_blocks}"
            )
        dtype = torch.get_default_dtype() if dtype is None else dtype
        shape = (num_blocks, block_size, n_kv_heads, head_dim)
        self.k_pools = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v_pools = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.allocator = allocator
        self.n_layers, self.num_blocks, self.block_size = n_layers, num_blocks, block_size
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim
        self._tables: dict[int, list[int]] = {}  # sequence id -> physical block ids
        self._lengths: dict[int, list[int]] = {}  # sequence id -> positions written, per layer
        self._freed_full: set[int] = set()  # blocks full when freed, not handed out since
        self._next_id = 0

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        num_blocks: int,
        block_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        allocator: BlockAllocator | None = None,
    ) -> PagedKVCache:
        """A pool shaped for ``model`` (its ``config``'s ``n_layers``, ``n_kv_heads`` or
        ``n_heads``, ``d_model``), on the device and in the dtype of its parameters."""
        n_layers, n_kv_heads, head_dim, device, dtype = cache_shape_for(model, device, dtype)
        return cls(n_layers, num_blocks, block_size, n_kv_heads, head_dim, device, dtype, allocator)

    # ------------------------------------------------------------------ sequences

    @property
    def sequences(self) -> list[int]:
        """Ids of the sequences held now."""
        return list(self._tables)

    def _check_seq(self, seq_id: object) -> int:
        if isinstance(seq_id, bool) or not isinstance(seq_id, int):
            raise TypeError(f"seq_id must be an int, got {type(seq_id).__name__}")
        if seq_id not in self._tables:
            raise KeyError(f"no sequence {seq_id} in the cache (held: {self.sequences})")
        return seq_id

    def add_sequence(self, prefix_blocks: Sequence[int] = ()) -> int:
        """Start a sequence; return its id.

        ``prefix_blocks``: full blocks that already hold this sequence's first
        ``len(prefix_blocks) * P`` positions (a cached prefix). The sequence becomes one
        more owner of each (``allocator.share``) and its length starts there; its own
        tokens go into new blocks, so a shared block is never written. A block that is
        not full (all ``P`` positions written in every layer, by a sequence that holds it
        or held it when it was freed) is refused with ``ValueError``: the new sequence
        would claim positions nobody wrote, and see its owner's later writes.
        """
        blocks = _check_block_ids("prefix_blocks", prefix_blocks, self.num_blocks)
        if blocks:
            full = self._full_blocks()
            not_full = [b for b in blocks if b not in full]
            if not_full:
                raise ValueError(
                    f"prefix_blocks holds block(s) {not_full} that are not full: a shared "
                    f"block must hold all {self.block_size} positions in every layer"
                )
        self.allocator.share(blocks)
        seq_id = self._next_id
        self._next_id += 1
        self._tables[seq_id] = blocks
        self._lengths[seq_id] = [len(blocks) * self.block_size] * self.n_layers
        return seq_id

    def free_sequence(self, seq_id: int) -> None:
        """Forget a sequence; its blocks lose one owner (back to the free list at none)."""
        self._check_seq(seq_id)
        table, n_full = self._tables[seq_id], self.length(seq_id) // self.block_size
        self.allocator.free(table)
        self._freed_full.update(table[:n_full])  # a prefix cache may share these again
        del self._tables[seq_id], self._lengths[seq_id]

    def _full_blocks(self) -> set[int]:
        """Blocks whose ``P`` positions are written in every layer: the full blocks of the
        sequences held now, and those that were full when freed and not handed out since."""
        full = set(self._freed_full)
        for seq_id, table in self._tables.items():
            full.update(table[: self.length(seq_id) // self.block_size])
        return full

    def _allocate(self, n: int) -> list[int]:
        """``n`` fresh blocks from the allocator (their old contents will be overwritten)."""
        blocks = self.allocator.allocate(n)
        self._freed_full.difference_update(blocks)
        return blocks

    def block_table(self, seq_id: int) -> list[int]:
        """The sequence's physical block ids, in logical order (a copy)."""
        return list(self._tables[self._check_seq(seq_id)])

    def length(self, seq_id: int) -> int:
        """Positions every layer holds for the sequence."""
        return min(self._lengths[self._check_seq(seq_id)])

    def truncate(self, seq_id: int, length: int) -> None:
        """Forget the sequence's positions from ``length`` on, in every layer (an undo: a
        forward pass that failed part-way leaves some layers written further than others).
        The keys and values past ``length`` are overwritten by the next writes; the blocks
        stay in the table. ``length`` may not exceed :meth:`length`, nor reopen a block that
        another sequence also owns or that a prefix cache has named (a shared or cached
        block is never written again). Blocks past the new length stay reserved, so
        :meth:`slots_wasted` may then exceed ``P - 1``.

        >>> cache = PagedKVCache(n_layers=1, num_blocks=2, block_size=2, n_kv_heads=1, head_dim=1)
        >>> seq = cache.add_sequence()
        >>> cache.append(0, seq, torch.ones(1, 3, 1), torch.ones(1, 3, 1))
        >>> cache.truncate(seq, 1); cache.length(seq), cache.block_table(seq)
        (1, [0, 1])
        """
        check_int("length", length, minimum=0)
        if length > self.length(seq_id):
            raise ValueError(
                f"length={length} is past the {self.length(seq_id)} positions sequence "
                f"{seq_id} holds in every layer"
            )
        table = self._tables[seq_id]
        names = getattr(self.allocator, "hashes", None)  # prefix_cache.CachingBlockAllocator's
        kept = [
            b
            for b in table[length // self.block_size :]
            if self.allocator.ref_counts[b] > 1 or (names is not None and names[b] is not None)
        ]
        if kept:
            raise ValueError(
                f"length={length} would reopen block(s) {kept} that other sequences also own "
                "or a prefix cache has named: a shared or cached block is never written again"
            )
        self._lengths[seq_id] = [length] * self.n_layers

    def blocks_needed(self, seq_id: int, num_new_tokens: int) -> int:
        """New blocks that ``reserve(seq_id, num_new_tokens)`` would allocate."""
        check_int("num_new_tokens", num_new_tokens, minimum=0)
        end = max(self._lengths[self._check_seq(seq_id)]) + num_new_tokens
        return max(0, -(-end // self.block_size) - len(self._tables[seq_id]))

    def reserve(self, seq_id: int, num_new_tokens: int) -> None:
        """Allocate the blocks for ``num_new_tokens`` more positions now (all or nothing:
        ``OutOfBlocks`` before any compute, instead of in the middle of a forward pass).
        ``append`` allocates on demand, so calling this is optional."""
        self._reserve_rows([seq_id], [num_new_tokens])

    def _reserve_rows(self, seq_ids: Sequence[int], num_new_tokens: Sequence[int]) -> None:
        """:meth:`reserve` for several rows (a view's), all rows or none: ``OutOfBlocks`` (the
        rows' total) before any row gets a block."""
        needed = [self.blocks_needed(s, n) for s, n in zip(seq_ids, num_new_tokens, strict=True)]
        if sum(needed) > self.num_free_blocks:
            raise OutOfBlocks(sum(needed), self.num_free_blocks)
        for s, n in zip(seq_ids, needed, strict=True):
            self._tables[s].extend(self._allocate(n))

    def _grow(self, seq_id: int, end: int) -> None:
        """Make the table cover positions ``0 .. end-1`` (unchecked)."""
        missing = -(-end // self.block_size) - len(self._tables[seq_id])
        if missing > 0:
            self._tables[seq_id].extend(self._allocate(missing))

    # ------------------------------------------------------------------ keys and values

    def _slot_list(self, seq_id: int, start: int, end: int) -> list[int]:
        """Flat slots ``block * P + offset`` of positions ``start .. end-1`` (unchecked)."""
        table, p = self._tables[seq_id], self.block_size
        return [table[pos // p] * p + pos % p for pos in range(start, end)]

    def _slots(self, seq_id: int, start: int, end: int, device: torch.device) -> Tensor:
        """:meth:`_slot_list` as a long tensor ``(T_new,)``."""
        return torch.tensor(self._slot_list(seq_id, start, end), dtype=torch.long, device=device)

    def _append(self, layer: int, seq_id: int, k: Tensor, v: Tensor) -> None:
        """Unchecked core of :meth:`append`: ``k``, ``v`` (Hkv, T_new, D)."""
        start = self._lengths[seq_id][layer]
        end = start + k.shape[1]
        self._grow(seq_id, end)
        slots = self._slots(seq_id, start, end, k.device)  # (T_new,)
        flat = (-1, self.n_kv_heads, self.head_dim)
        self.k_pools[layer].view(flat)[slots] = k.transpose(0, 1)  # writes (T_new, Hkv, D)
        self.v_pools[layer].view(flat)[slots] = v.transpose(0, 1)
        self._lengths[seq_id][layer] = end

    def _check_kv(self, k: object, v: object, ndim: int) -> None:
        check_tensor("k", k, ndim=ndim, floating=True, nonempty=True)
        check_tensor("v", v, ndim=ndim, floating=True, nonempty=True)
        assert isinstance(k, Tensor) and isinstance(v, Tensor)
        check_same_device(k=k, v=v, pool=self.k_pools[0])
        hkv_axis = ndim - 3
        for name, t in (("k", k), ("v", v)):
            if t.shape[hkv_axis] != self.n_kv_heads or t.shape[-1] != self.head_dim:
                want = "(B, Hkv, T_new, D)" if ndim == 4 else "(Hkv, T_new, D)"
                raise ValueError(
                    f"{name} must be {want} with Hkv = {self.n_kv_heads} and D = "
                    f"{self.head_dim}, got {tuple(t.shape)}"
                )
        if k.shape != v.shape:
            raise ValueError(
                f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        if k.dtype != self.k_pools[0].dtype or v.dtype != self.k_pools[0].dtype:
            raise TypeError(
                f"k and v must have the pool's dtype {self.k_pools[0].dtype} (it would cast "
                f"them silently), got {k.dtype} and {v.dtype}"
            )

    def _check_layer(self, layer: object) -> int:
        check_int("layer", layer, minimum=0)
        assert isinstance(layer, int)
        if layer >= self.n_layers:
            raise ValueError(f"layer must be < n_layers={self.n_layers}, got {layer}")
        return layer

    def append(self, layer: int, seq_id: int, k: Tensor, v: Tensor) -> None:
        """Write ``k``, ``v`` (Hkv, T_new, D) after the ``T`` positions this layer holds for
        the sequence, through its block table (allocating blocks as positions need them)."""
        self._check_layer(layer)
        self._check_seq(seq_id)
        self._check_kv(k, v, ndim=3)
        self._append(layer, seq_id, k, v)

    def gather(self, layer: int, seq_id: int) -> tuple[Tensor, Tensor]:
        """The sequence's keys and values in this layer, as dense copies ``(Hkv, T, D)``."""
        self._check_layer(layer)
        self._check_seq(seq_id)
        length = self._lengths[seq_id][layer]
        table = self._tables[seq_id]
        return (
            _gather_blocks(self.k_pools[layer], table, length),
            _gather_blocks(self.v_pools[layer], table, length),
        )

    def view(self, seq_ids: int | Sequence[int], num_new_tokens: int | None = None) -> PagedKVView:
        """The sequences ``seq_ids`` (one id, or a list: the rows of a batch) as a
        ``kv_cache`` for ``DecoderLM``; see :class:`PagedKVView`.

        ``num_new_tokens``: the tokens every row brings in the *next* forward pass. Given,
        the view is *planned* for that one pass: the blocks for the new tokens are reserved
        now, for every row or none (``OutOfBlocks`` before any compute), and the slots to
        write and to read are computed once for all layers, so each layer writes with one
        ``index_copy_`` and reads every row with one ``index_select`` instead of gathering
        row by row.
        """
        ids = [seq_ids] if isinstance(seq_ids, int) and not isinstance(seq_ids, bool) else seq_ids
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) or not ids:
            raise ValueError(f"seq_ids must be an id or a non-empty list of ids, got {seq_ids!r}")
        for s in ids:
            self._check_seq(s)
        if len(set(ids)) != len(ids):
            raise ValueError(f"seq_ids must be distinct, got {list(ids)}")
        if num_new_tokens is not None:
            check_int("num_new_tokens", num_new_tokens, minimum=1)
            for s in ids:
                if len(set(self._lengths[s])) != 1:
                    raise ValueError(
                        f"sequence {s} is in the middle of a forward pass (its layers hold "
                        f"{self._lengths[s]} positions): a planned view starts between passes"
                    )
        return PagedKVView(self, list(ids), num_new_tokens)

    def packed_view(
        self, seq_ids: Sequence[int], num_new_tokens: Sequence[int]
    ) -> PackedPagedKVView:
        """Several sequences packed into *one* row, for one forward pass that feeds
        ``num_new_tokens[i]`` new tokens of sequence ``seq_ids[i]`` (any counts >= 1):
        a decode row and prefill chunks of different lengths share one pass, so the
        weights are read once. See :class:`PackedPagedKVView` (call the model with its
        ``attention_mask()`` and ``positions()``). Blocks are reserved here.
        """
        if isinstance(seq_ids, (str, bytes)) or not isinstance(seq_ids, Sequence) or not seq_ids:
            raise ValueError(f"seq_ids must be a non-empty list of ids, got {seq_ids!r}")
        if isinstance(num_new_tokens, (str, bytes)) or not isinstance(num_new_tokens, Sequence):
            raise TypeError(
                f"num_new_tokens must be a list of ints, got {type(num_new_tokens).__name__}"
            )
        if len(num_new_tokens) != len(seq_ids):
            raise ValueError(
                f"num_new_tokens must have one count per sequence ({len(seq_ids)}), got "
                f"{len(num_new_tokens)}"
            )
        for s in seq_ids:
            self._check_seq(s)
            if len(set(self._lengths[s])) != 1:
                raise ValueError(
                    f"sequence {s} is in the middle of a forward pass (its layers hold "
                    f"{self._lengths[s]} positions): a packed view starts between passes"
                )
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"seq_ids must be distinct, got {list(seq_ids)}")
        for n in num_new_tokens:
            check_int("num_new_tokens[i]", n, minimum=1)
        return PackedPagedKVView(self, list(seq_ids), list(num_new_tokens))

    # ------------------------------------------------------------------ accounting

    @property
    def num_free_blocks(self) -> int:
        """Blocks the allocator can hand out now."""
        return self.allocator.num_free

    @property
    def num_used_blocks(self) -> int:
        """Blocks with at least one owner."""
        return self.allocator.num_used

    def slots_wasted(self, seq_id: int) -> int:
        """Allocated but empty slots of the sequence: ``len(table) * P - length``, at most
        ``P - 1`` when blocks are allocated on demand (internal fragmentation)."""
        return len(self._tables[self._check_seq(seq_id)]) * self.block_size - self.length(seq_id)

    def bytes_per_block(self) -> int:
        """Bytes of one block over all layers, keys and values: ``2 * L * P * Hkv * D * size``."""
        itemsize = self.k_pools[0].element_size()
        return 2 * self.n_layers * self.block_size * self.n_kv_heads * self.head_dim * itemsize

    def memory_bytes(self) -> int:
        """Bytes allocated by the pools (every block, used or not)."""
        return self.num_blocks * self.bytes_per_block()

    def __repr__(self) -> str:
        return (
            f"PagedKVCache(n_layers={self.n_layers}, num_blocks={self.num_blocks}, "
            f"block_size={self.block_size}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, sequences={len(self._tables)}, "
            f"free_blocks={self.num_free_blocks})"
        )


def _write_then_read(
    cache: PagedKVCache, layer: int, write: Tensor, read: Tensor, k: Tensor, v: Tensor
) -> tuple[Tensor, Tensor]:
    """Write rows ``k``, ``v`` (N, Hkv, D) into the layer's pools at slots ``write`` (N,)
    with one ``index_copy_`` each, then read slots ``read`` (M,) with one ``index_select``
    each: ``(M, Hkv, D)`` keys and values."""
    flat = (-1, *k.shape[1:])
    out = []
    for pool, new in ((cache.k_pools[layer], k), (cache.v_pools[layer], v)):
        pool = pool.view(flat)
        pool.index_copy_(0, write, new)
        out.append(pool.index_select(0, read))
    return out[0], out[1]


class _PlannedSlots:
    """The slots of a planned pass, as lists (``_slot_lists``: write, read) computed when the
    view is built, made tensors once, when the first layer asks for them."""

    _slot_lists: tuple[list[int], list[int]]
    _slots: tuple[Tensor, Tensor] | None = None

    def _slot_tensors(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The write slots and the read slots, as long tensors on ``device``."""
        if self._slots is None:
            write, read = self._slot_lists
            self._slots = (
                torch.tensor(write, dtype=torch.long, device=device),
                torch.tensor(read, dtype=torch.long, device=device),
            )
        return self._slots


class PagedLayerView:
    """One layer of a :class:`PagedKVView`: an ``attention.KVCacheLike``.

    ``length`` is the longest row's cached length in this layer; ``update(k, v)`` with
    ``k``, ``v`` (B, Hkv, T_new, D) appends each row's new positions to its sequence and
    returns every row's keys and values ``(B, Hkv, length + T_new, D)``, shorter rows
    left-padded (mask them: :meth:`PagedKVView.padding_mask`).

    Two paths, same result. The reference (a plain view): row by row, write through the
    block table, gather the row's blocks into a dense copy, pad it with zeros, stack the
    rows. The planned path (a view built with ``num_new_tokens``): one ``index_copy_``
    writes every row's new positions at slots computed once per pass, and one
    ``index_select`` reads the ``(B, W)`` slots of all rows at once; a padding slot reads
    one of the row's own positions instead of a zero (the mask hides it either way).
    """

    def __init__(self, view: PagedKVView, layer: int) -> None:
        self.view, self.layer = view, layer
        self.cache, self.seq_ids = view.cache, view.seq_ids
        self._used = False

    @property
    def length(self) -> int:
        return max(self.cache._lengths[s][self.layer] for s in self.seq_ids)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k``, ``v`` (B, Hkv, T_new, D); return all keys and values (B, Hkv, T, D)."""
        cache = self.cache
        cache._check_kv(k, v, ndim=4)
        if k.shape[0] != len(self.seq_ids):
            raise ValueError(
                f"k and v must have B = {len(self.seq_ids)} rows (one per sequence of the "
                f"view), got {tuple(k.shape)}"
            )
        if self.view.num_new_tokens is not None:
            return self._update_planned(k, v)
        for row, seq_id in enumerate(self.seq_ids):
            cache._append(self.layer, seq_id, k[row], v[row])
        ks, vs = [], []
        for seq_id in self.seq_ids:
            k_row, v_row = cache.gather(self.layer, seq_id)  # (Hkv, T_row, D)
            ks.append(k_row)
            vs.append(v_row)
        width = max(t.shape[1] for t in ks)
        # Left padding (zeros), as generate pads prompts: the last positions line up.
        k_all = torch.stack([F.pad(t, (0, 0, width - t.shape[1], 0)) for t in ks])  # (B, Hkv, T, D)
        v_all = torch.stack([F.pad(t, (0, 0, width - t.shape[1], 0)) for t in vs])  # (B, Hkv, T, D)
        return k_all, v_all

    def _update_planned(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The planned path: one write and one read per pool, at the view's slots."""
        view, cache = self.view, self.cache
        b, hkv, t_new, d = k.shape
        if t_new != view.num_new_tokens:
            raise ValueError(
                f"this view was planned for {view.num_new_tokens} new token(s) per row, got "
                f"k of shape {tuple(k.shape)}"
            )
        if self._used:
            raise RuntimeError(
                "a planned view serves one forward pass: build a new view for the next one"
            )
        self._used = True
        write, read = view._slot_tensors(k.device)  # (B * T_new,), (B * W,)
        k_new, v_new = (t.transpose(1, 2).reshape(b * t_new, hkv, d) for t in (k, v))
        # (B * W, Hkv, D) each:
        k_all, v_all = _write_then_read(cache, self.layer, write, read, k_new, v_new)
        for seq_id in self.seq_ids:
            cache._lengths[seq_id][self.layer] += t_new
        width = read.numel() // b
        k_all = k_all.view(b, width, hkv, d).transpose(1, 2)  # (B, Hkv, W, D)
        v_all = v_all.view(b, width, hkv, d).transpose(1, 2)
        return k_all, v_all


class PagedKVView(_PlannedSlots):
    """Sequences of a :class:`PagedKVCache` as the rows of a batch, for ``DecoderLM``.

    It has what ``DecoderLM`` reads from a ``KVCache``: ``layers`` (one
    :class:`PagedLayerView` per layer), ``batch_size`` and ``length`` (the longest row's).
    With one sequence, or rows of equal length, ``model(ids, kv_cache=view)`` works as
    with a ``KVCache``. When the rows' lengths differ, every row must bring the same
    number ``T_new`` of real tokens and the call must pass
    ``attention_mask=view.padding_mask(T_new)``: shorter rows are left-padded in the
    attention (and the mask gives every token its own position).

    ``num_new_tokens`` (from ``PagedKVCache.view``): a *planned* view for one forward pass
    of that many new tokens per row; its blocks are reserved here and the slots are
    computed once, when the first layer asks for them.
    """

    def __init__(
        self, cache: PagedKVCache, seq_ids: list[int], num_new_tokens: int | None = None
    ) -> None:
        self.cache, self.seq_ids = cache, seq_ids
        self.num_new_tokens = num_new_tokens
        self.batch_size = len(seq_ids)
        if num_new_tokens is not None:
            lengths = [cache.length(s) for s in seq_ids]
            # OutOfBlocks now, not mid-pass, and before any row gets a block
            cache._reserve_rows(seq_ids, [num_new_tokens] * len(seq_ids))
            width = max(lengths) + num_new_tokens
            write: list[int] = []
            read: list[int] = []
            for s, length in zip(seq_ids, lengths, strict=True):
                total = length + num_new_tokens
                write += cache._slot_list(s, length, total)
                own = cache._slot_list(s, 0, total)
                read += own[:1] * (width - total) + own  # left padding reads position 0
            self._slot_lists = (write, read)
        self.layers = [PagedLayerView(self, i) for i in range(cache.n_layers)]

    @property
    def length(self) -> int:
        """Positions every layer holds, for the longest row."""
        return min(layer.length for layer in self.layers)

    def padding_mask(self, num_new_tokens: int, device: torch.device | str | None = None) -> Tensor:
        """``(B, length + T_new)`` long mask, 1 on real positions: row ``b`` holds its
        ``length_b`` cached and ``T_new`` new positions at the right, zeros before them."""
        check_int("num_new_tokens", num_new_tokens, minimum=1)
        width = self.length + num_new_tokens
        real = torch.tensor(
            [self.cache.length(s) + num_new_tokens for s in self.seq_ids], device=device
        )  # (B,)
        cols = torch.arange(width, device=device)  # (Tk,)
        return (cols[None, :] >= width - real[:, None]).long()  # (B, Tk)

    def __repr__(self) -> str:
        return f"PagedKVView(seq_ids={self.seq_ids}, length={self.length})"


class PackedLayerView:
    """One layer of a :class:`PackedPagedKVView`: an ``attention.KVCacheLike`` for a batch
    of one packed row. ``update(k, v)`` with ``k``, ``v`` (1, Hkv, T, D) (every
    sequence's new tokens, one after the other) writes them with one ``index_copy_`` per
    pool and returns ``(1, Hkv, K, D)``: every sequence's cached positions, then the new
    ones (one ``index_select`` per pool)."""

    def __init__(self, view: PackedPagedKVView, layer: int) -> None:
        self.view, self.layer, self.cache = view, layer, view.cache
        self._used = False

    @property
    def length(self) -> int:
        """Cached positions of all the packed sequences in this layer (their sum)."""
        return sum(self.cache._lengths[s][self.layer] for s in self.view.seq_ids)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k``, ``v`` (1, Hkv, T, D); return the packed keys and values (1, Hkv, K, D)."""
        view, cache = self.view, self.cache
        cache._check_kv(k, v, ndim=4)
        if k.shape[0] != 1 or k.shape[2] != view.num_tokens:
            raise ValueError(
                f"a packed view takes k and v of shape (1, Hkv, {view.num_tokens}, D), got "
                f"{tuple(k.shape)}"
            )
        if self._used:
            raise RuntimeError(
                "a packed view serves one forward pass: build a new view for the next one"
            )
        self._used = True
        write, read = view._slot_tensors(k.device)  # (T,), (K,)
        k_all, v_all = _write_then_read(
            cache, self.layer, write, read, k[0].transpose(0, 1), v[0].transpose(0, 1)
        )  # new rows (T, Hkv, D) in; (K, Hkv, D) each out
        for seq_id, n in zip(view.seq_ids, view.num_new_tokens, strict=True):
            cache._lengths[seq_id][self.layer] += n
        return k_all.transpose(0, 1)[None], v_all.transpose(0, 1)[None]  # (1, Hkv, K, D)


class PackedPagedKVView(_PlannedSlots):
    """Sequences of a :class:`PagedKVCache` packed into one row (batch size 1) for one
    forward pass, as vLLM flattens every scheduled token of a step.

    The pass feeds ``num_new_tokens[i]`` new tokens of ``seq_ids[i]``, the sequences'
    tokens one after the other: ``ids`` (1, T) with ``T = sum(num_new_tokens)``. Each
    layer attends over ``K`` keys: every sequence's cached positions (sequence by
    sequence), then the ``T`` new ones in the order of the queries. The new keys come
    last, so the model's bottom-right causal mask already keeps a query from the later
    new keys; :meth:`attention_mask` (1, 1, T, K) adds the block structure: a query sees
    only its own sequence's cached keys and its own sequence's new keys up to itself.
    :meth:`positions` (1, T) gives every token its position in its own sequence. Call
    ``model.forward_unchecked(ids, attention_mask=view.attention_mask(),
    positions=view.positions(), kv_cache=view)``; the logits of sequence ``i``'s last
    token are at :meth:`last_indices` ``[i]``.

    Without a varlen kernel the attention is dense: every query is scored against all
    ``K`` keys and the mask removes the other sequences' (``T x K`` scores instead of
    ``sum(n_i x (L_i + n_i))``); the linear layers, which dominate a step on a CPU, see
    the ``T`` tokens once.
    """

    def __init__(self, cache: PagedKVCache, seq_ids: list[int], num_new_tokens: list[int]) -> None:
        self.cache, self.seq_ids, self.num_new_tokens = cache, seq_ids, num_new_tokens
        self.batch_size = 1
        self.num_tokens = sum(num_new_tokens)
        self.cached = [cache.length(s) for s in seq_ids]  # before this pass
        # OutOfBlocks now, not mid-pass, and before any row gets a block
        cache._reserve_rows(seq_ids, num_new_tokens)
        read: list[int] = []
        write: list[int] = []
        for s, length, n in zip(seq_ids, self.cached, num_new_tokens, strict=True):
            read += cache._slot_list(s, 0, length)
            write += cache._slot_list(s, length, length + n)
        self._slot_lists = (write, read + write)  # write (T,), read (K,)
        self.layers = [PackedLayerView(self, i) for i in range(cache.n_layers)]

    @property
    def length(self) -> int:
        """Cached positions in the packed row (every layer), the sum over sequences."""
        return min(layer.length for layer in self.layers)

    def _query_rows(self, device: torch.device | str | None) -> tuple[Tensor, Tensor]:
        """Per new token: its sequence's index in the view and its index in its chunk (T,)."""
        counts = torch.tensor(self.num_new_tokens, device=device)  # (S,)
        rows = torch.repeat_interleave(torch.arange(len(self.seq_ids), device=device), counts)
        starts = torch.cumsum(counts, 0) - counts  # (S,)
        index = torch.arange(self.num_tokens, device=device) - starts[rows]  # (T,)
        return rows, index

    def positions(self, device: torch.device | str | None = None) -> Tensor:
        """``(1, T)``: each new token's position in its own sequence."""
        rows, index = self._query_rows(device)
        cached = torch.tensor(self.cached, device=device)  # (S,)
        return (cached[rows] + index)[None]

    def attention_mask(self, device: torch.device | str | None = None) -> Tensor:
        """``(1, 1, T, K)`` bool: query ``q`` of sequence ``i`` may see sequence ``i``'s
        cached keys and its new keys up to ``q``."""
        q_rows, q_index = self._query_rows(device)  # (T,), (T,)
        cached = torch.tensor(self.cached, device=device)  # (S,)
        seqs = torch.arange(len(self.seq_ids), device=device)
        k_rows = torch.cat([torch.repeat_interleave(seqs, cached), q_rows])  # (K,)
        k_index = torch.cat([torch.full((int(cached.sum()),), -1, device=device), q_index])  # (K,)
        same = k_rows[None, :] == q_rows[:, None]  # (T, K)
        return (same & (k_index[None, :] <= q_index[:, None]))[None, None]

    def last_indices(self) -> list[int]:
        """Index in the packed row of each sequence's last new token."""
        out, end = [], 0
        for n in self.num_new_tokens:
            end += n
            out.append(end - 1)
        return out

    def __repr__(self) -> str:
        return f"PackedPagedKVView(seq_ids={self.seq_ids}, num_new_tokens={self.num_new_tokens})"
