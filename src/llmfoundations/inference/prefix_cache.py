"""Reusing the KV cache of a shared prefix: vLLM's block hashing and SGLang's radix tree.

Many requests start alike: one system prompt for every user, earlier turns of a chat, a
few-shot preamble. The keys and values of a token depend only on the tokens up to it
(causal attention), so a prefix computed once can serve every request that starts with
it; only the rest of the prompt needs a forward pass, and the logits are unchanged.

**Block hashing** (vLLM's automatic prefix caching, ``docs/design/prefix_caching.md`` in
vllm-project/vllm). Only *full* blocks of the paged cache (``inference.paged_kv``) are
cached. Block ``j`` of a sequence is named by a hash that chains its parent's::

    h_j = hash(h_{j-1}, tokens[j*P : (j+1)*P])        (h_{-1} = None)

so equal hashes mean equal *prefixes*, not just equal blocks. A lookup hashes the prompt's
full blocks and walks them while the hash is known. Blocks carry reference counts; a block
whose count drops to 0 keeps its contents and hash and joins an LRU free queue (a
request's blocks join it last block first: the tail hashes the most tokens and is the
least likely to be shared, so it should be evicted first). A new block is taken from the
queue's head, and only then, if that block was cached, is it *evicted* (its hash
forgotten). A hit removes the block from the queue ("touch"). When the whole prompt is
cached, its last token is still computed, so that the model produces the logits of the
next token: the lookup is capped at ``len(tokens) - 1`` tokens (which can drop a whole
block).

Our hash is SHA-256 of the ``repr`` of ``(parent, tokens, extra)``. Python's ``hash`` would
be deterministic for a tuple of ints (an int hashes to itself modulo 2**61 - 1), but it
is salted per process for ``str`` and ``bytes`` (``PYTHONHASHSEED``), so a parent hash
kept as bytes or an ``extra`` string would hash differently in every process; it is also
only 64 bits and its collisions are easy to construct, which is why vLLM offers SHA-256
for multi-tenant servers.

**Radix tree** (SGLang's RadixAttention, Zheng et al., 2024,
https://arxiv.org/abs/2312.07104). The prefixes are edges of a tree over token ids;
each node holds a run of tokens and the KV slots that store them (one slot per token:
a paged cache with ``P = 1``). Matching walks down as far as the tokens agree, at token
granularity, and *splits* a node when the match ends inside it, so that the matched
prefix ends exactly at a node. A request locks the path of its match (``lock_ref`` on every
node up to the root); eviction frees the least recently used *leaves* whose
``lock_ref`` is 0, and a parent left without children may go next.

This module holds:

- ``block_hash``, ``block_hashes``: the chained hash of each full block;
- ``CachingBlockAllocator``: ``paged_kv.BlockAllocator`` whose free list is the LRU queue
  of cached blocks, with ``cache_block``, ``lookup``, and counts of evictions;
- ``PrefixCache``: the manager over a ``PagedKVCache``: ``match`` (longest cached prefix
  in whole blocks, the last-token rule applied), ``add_sequence`` (a new sequence that
  starts on the cached blocks), ``commit`` (cache the blocks that became full),
  ``free_sequence``, ``stats``; and ``prefill`` (run a model on the uncached rest);
- ``RadixNode``, ``RadixCache``: ``match_prefix``, ``insert``, ``lock`` / ``unlock``, ``evict``.

Differences from vLLM: one request per call (no scheduler), no ``extra`` keys besides a
salt argument, and our lookup returns the first of several blocks cached under one hash.
Like vLLM v1, a block computed twice (two requests with one prefix at the same time)
can be cached twice under one hash until one copy is evicted.

Left out: hashes of multimodal inputs and LoRA ids, partial-block reuse (vLLM caches
full blocks only), page sizes above 1 in the radix tree, eviction policies other than
LRU (SGLang also offers LFU, FIFO, priority), cache-aware scheduling of requests, and
offloading evicted blocks to CPU memory.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from llmfoundations._validate import check_int
from llmfoundations.inference.paged_kv import BlockAllocator, PagedKVCache, _check_block_ids

__all__ = [
    "block_hash",
    "block_hashes",
    "CachingBlockAllocator",
    "PrefixMatch",
    "PrefixCacheStats",
    "PrefixCache",
    "PrefillOutput",
    "prefill",
    "RadixNode",
    "RadixMatch",
    "RadixCache",
]


def _check_tokens(name: str, tokens: object) -> list[int]:
    if isinstance(tokens, Tensor):
        if tokens.ndim != 1 or tokens.is_floating_point():
            raise ValueError(f"{name} must be a 1-D integer tensor or a list of ints")
        return tokens.tolist()
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
        raise TypeError(f"{name} must be a sequence of token ids, got {type(tokens).__name__}")
    ids = list(tokens)
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int):
            raise TypeError(f"{name} must hold ints, got {type(t).__name__}")
        if t < 0:
            raise ValueError(f"{name} must hold token ids >= 0, got {t}")
    return ids


# ------------------------------------------------------------------------- block hashing


def block_hash(parent: bytes | None, tokens: Sequence[int], extra: str | None = None) -> bytes:
    """SHA-256 of ``(parent, tokens, extra)``: one block's name, chained to its prefix.

    ``extra`` (a salt: a tenant, a LoRA id) keeps caches apart; vLLM mixes it into the
    first block only, which is enough since every later hash contains that one.

    >>> block_hash(None, [1, 2]) == block_hash(None, (1, 2))
    True
    >>> block_hash(block_hash(None, [1, 2]), [3, 4]) == block_hash(None, [3, 4])
    False
    """
    payload = repr((parent, tuple(int(t) for t in tokens), extra)).encode()
    return hashlib.sha256(payload).digest()


def block_hashes(tokens: Sequence[int], block_size: int, extra: str | None = None) -> list[bytes]:
    """The chained hashes of every *full* block of ``tokens`` (a partial tail has none).

    >>> len(block_hashes(list(range(10)), 4))
    2
    """
    ids = _check_tokens("tokens", tokens)
    check_int("block_size", block_size, minimum=1)
    hashes: list[bytes] = []
    parent = None
    for start in range(0, len(ids) - block_size + 1, block_size):
        parent = block_hash(parent, ids[start : start + block_size], extra if not hashes else None)
        hashes.append(parent)
    return hashes


class CachingBlockAllocator(BlockAllocator):
    """A ``BlockAllocator`` that keeps freed blocks' contents until they are needed again.

    - the free list is an LRU queue (an ``OrderedDict``, vLLM's doubly linked list): a
      block whose last owner frees it goes to the tail with its hash kept; ``free``
      takes a sequence's blocks in table order and queues them last block first;
    - ``allocate`` pops the head; if that block is cached, it is evicted then
      (``evictions`` counts it);
    - ``share`` of a cached block with no owner "touches" it: off the queue, count 1;
    - ``cache_block(block, h)`` names a full block; ``lookup(hashes)`` returns the blocks
      of the longest prefix of ``hashes`` that is cached.

    >>> alloc = CachingBlockAllocator(3)
    >>> a = alloc.allocate(2); alloc.cache_block(a[0], b"x"); alloc.free(a)
    >>> alloc.lookup([b"x", b"y"]), alloc.allocate(3), alloc.evictions
    ([0], [2, 1, 0], 1)
    """

    def __init__(self, num_blocks: int) -> None:
        super().__init__(num_blocks)
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # LRU
        self.hashes: list[bytes | None] = [None] * num_blocks  # block id -> hash, if cached
        self._cached: dict[bytes, dict[int, None]] = {}  # hash -> block ids holding it
        self.evictions = 0

    def _pop_free(self) -> int:
        block, _ = self._free.popitem(last=False)  # the least recently used
        if self.hashes[block] is not None:
            self._evict(block)
        return block

    def _release(self, block: int) -> None:
        self._free[block] = None  # to the tail, contents and hash kept

    def _evict(self, block: int) -> None:
        h = self.hashes[block]
        assert h is not None
        del self._cached[h][block]
        if not self._cached[h]:
            del self._cached[h]
        self.hashes[block] = None
        self.evictions += 1

    def free(self, blocks: Iterable[int]) -> None:
        """Remove one owner from each block (given in table order; queued last first)."""
        super().free(list(reversed(list(blocks))))

    def share(self, blocks: Iterable[int]) -> None:
        """Add one owner to each block; a cached block with none is taken off the queue."""
        ids = _check_block_ids("blocks", blocks, self.num_blocks)
        for b in ids:
            if self.ref_counts[b] == 0 and self.hashes[b] is None:
                raise ValueError(f"block {b} is free and not cached: allocate it instead")
        for b in ids:
            if self.ref_counts[b] == 0:
                del self._free[b]  # touch: no longer evictable
            self.ref_counts[b] += 1
        self._note_peak()

    def cache_block(self, block: int, h: bytes) -> None:
        """Name an owned, full block by its hash, so that later requests can find it."""
        (block,) = _check_block_ids("block", [block], self.num_blocks)
        if not isinstance(h, bytes):
            raise TypeError(f"h must be bytes (see block_hash), got {type(h).__name__}")
        if self.ref_counts[block] == 0:
            raise ValueError(f"block {block} is free: only an owned block can be cached")
        if self.hashes[block] is not None:
            if self.hashes[block] != h:
                raise ValueError(f"block {block} is already cached under another hash")
            return
        self.hashes[block] = h
        self._cached.setdefault(h, {})[block] = None

    def lookup(self, hashes: Sequence[bytes]) -> list[int]:
        """Blocks of the longest prefix of ``hashes`` that is cached (nothing is touched)."""
        blocks = []
        for h in hashes:
            holders = self._cached.get(h)
            if not holders:
                break
            blocks.append(next(iter(holders)))
        return blocks

    @property
    def cached_blocks(self) -> list[int]:
        """Ids of the blocks that hold a hash now (owned or waiting in the queue)."""
        return [b for b, h in enumerate(self.hashes) if h is not None]

    @property
    def free_queue(self) -> list[int]:
        """The free queue, head (next to be handed out) first."""
        return list(self._free)


# ------------------------------------------------------------------------- the manager


@dataclass(frozen=True)
class PrefixMatch:
    """``blocks``: cached blocks of the longest reusable prefix; ``num_tokens``: the
    positions they hold (``len(blocks) * P``)."""

    blocks: list[int]
    num_tokens: int


@dataclass(frozen=True)
class PrefixCacheStats:
    """Counts since the cache was built: ``requests`` (sequences added), ``queried_tokens``
    (their prompt tokens), ``hit_tokens`` (of those, read from the cache), ``evictions``.
    ``hit_rate`` = hit / queried (0 before any request)."""

    requests: int
    queried_tokens: int
    hit_tokens: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class PrefixCache:
    """Automatic prefix caching over a ``PagedKVCache`` whose allocator caches blocks.

    Life of a request::

        seq, n_cached = cache.add_sequence(prompt)   # starts on the cached blocks
        model(prompt[n_cached:], kv_cache=cache.kv.view(seq))  # the rest of the prompt
        cache.commit(seq, prompt)                    # its full blocks become reusable
        ... decode: feed each new token, then commit(seq, all tokens fed so far)
        cache.free_sequence(seq)                     # blocks wait in the LRU queue

    (:func:`prefill` does the first three lines.) ``salt`` keeps this cache's hashes
    apart from another tenant's.

    >>> cache = PrefixCache(PagedKVCache(1, 8, 4, 1, 2, allocator=CachingBlockAllocator(8)))
    >>> cache.match(list(range(10))).num_tokens
    0
    """

    def __init__(self, kv: PagedKVCache, salt: str | None = None) -> None:
        if not isinstance(kv, PagedKVCache):
            raise TypeError(f"kv must be a PagedKVCache, got {type(kv).__name__}")
        if not isinstance(kv.allocator, CachingBlockAllocator):
            raise TypeError(
                "kv must be built with allocator=CachingBlockAllocator(num_blocks), got "
                f"{type(kv.allocator).__name__}"
            )
        if salt is not None and not isinstance(salt, str):
            raise TypeError(f"salt must be a str or None, got {type(salt).__name__}")
        self.kv, self.allocator, self.salt = kv, kv.allocator, salt
        self._tokens: dict[int, list[int]] = {}  # sequence -> token ids committed so far
        self._hashes: dict[int, list[bytes]] = {}  # sequence -> hashes of its full blocks
        self._requests = self._queried = self._hits = 0

    @classmethod
    def for_model(
        cls, model: nn.Module, num_blocks: int, block_size: int, salt: str | None = None
    ) -> PrefixCache:
        """A ``PagedKVCache`` shaped for ``model`` with a ``CachingBlockAllocator``."""
        kv = PagedKVCache.for_model(
            model, num_blocks, block_size, allocator=CachingBlockAllocator(num_blocks)
        )
        return cls(kv, salt)

    def match(self, tokens: Sequence[int]) -> PrefixMatch:
        """The longest cached prefix of ``tokens`` in whole blocks, at most
        ``len(tokens) - 1`` tokens (the last token is always computed). No side effects."""
        ids = _check_tokens("tokens", tokens)
        p = self.kv.block_size
        usable = max(len(ids) - 1, 0)  # recompute the last token, for its logits
        hashes = block_hashes(ids[: usable // p * p], p, self.salt)
        blocks = self.allocator.lookup(hashes)
        return PrefixMatch(blocks=blocks, num_tokens=len(blocks) * p)

    def add_sequence(self, tokens: Sequence[int]) -> tuple[int, int]:
        """A new sequence for the prompt ``tokens`` (at least one), starting on its cached
        prefix: returns ``(seq_id, num_cached_tokens)``; the caller computes the rest."""
        ids = _check_tokens("tokens", tokens)
        if not ids:
            raise ValueError("tokens must hold at least one token")
        found = self.match(ids)
        seq = self.kv.add_sequence(prefix_blocks=found.blocks)  # touches the hit blocks
        self._tokens[seq] = ids[: found.num_tokens]
        p = self.kv.block_size
        self._hashes[seq] = block_hashes(ids[: found.num_tokens], p, self.salt)
        self._requests += 1
        self._queried += len(ids)
        self._hits += found.num_tokens
        return seq, found.num_tokens

    def commit(self, seq_id: int, tokens: Sequence[int]) -> None:
        """Record that ``tokens`` (every token of the sequence so far, one per cached
        position) are in the cache, and cache each block that is now full."""
        ids = _check_tokens("tokens", tokens)
        length = self.kv.length(seq_id)  # checks the id
        if len(ids) != length:
            raise ValueError(
                f"tokens must hold the sequence's {length} cached positions, got {len(ids)}"
            )
        known = self._tokens[seq_id]
        if ids[: len(known)] != known:
            raise ValueError("tokens must extend the tokens committed before for this sequence")
        p, hashes, table = self.kv.block_size, self._hashes[seq_id], self.kv.block_table(seq_id)
        for j in range(len(hashes), length // p):
            parent = hashes[-1] if hashes else None
            h = block_hash(parent, ids[j * p : (j + 1) * p], self.salt if j == 0 else None)
            self.allocator.cache_block(table[j], h)
            hashes.append(h)
        self._tokens[seq_id] = ids

    def free_sequence(self, seq_id: int) -> None:
        """The sequence is done; its blocks join the LRU queue (cached ones stay findable)."""
        self.kv.free_sequence(seq_id)
        del self._tokens[seq_id], self._hashes[seq_id]

    @property
    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(self._requests, self._queried, self._hits, self.allocator.evictions)


@dataclass(frozen=True)
class PrefillOutput:
    """``seq_id``; ``num_cached_tokens`` read from the cache; ``logits`` (1, T - cached, V)
    of the positions that were computed (the last row predicts the next token), or of the
    last ``logits_to_keep`` of them."""

    seq_id: int
    num_cached_tokens: int
    logits: Tensor


@torch.no_grad()
def prefill(
    model: nn.Module, cache: PrefixCache, tokens: Sequence[int], *, logits_to_keep: int = 0
) -> PrefillOutput:
    """Add the prompt ``tokens`` as a sequence of ``cache``, run ``model`` on the part that
    is not cached, and commit its full blocks. ``logits_to_keep=1`` asks the model (a
    ``DecoderLM``, or a model with transformers' argument of that name) for the last
    position's logits only, all a server needs for the first new token; ``0`` (default)
    keeps every computed position's."""
    if not isinstance(cache, PrefixCache):
        raise TypeError(f"cache must be a PrefixCache, got {type(cache).__name__}")
    ids = _check_tokens("tokens", tokens)
    check_int("logits_to_keep", logits_to_keep, minimum=0)
    seq, n_cached = cache.add_sequence(ids)
    device = cache.kv.k_pools[0].device
    rest = torch.tensor([ids[n_cached:]], dtype=torch.long, device=device)  # (1, T - cached)
    keep = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}  # other models: as before
    logits = model(rest, kv_cache=cache.kv.view(seq), **keep).logits  # (1, T - cached or k, V)
    cache.commit(seq, ids)
    return PrefillOutput(seq, n_cached, logits)


# ------------------------------------------------------------------------- the radix tree


@dataclass(eq=False)
class RadixNode:
    """A run of tokens (``key``) and the KV slots that hold them (``value``, one per token).

    ``children`` maps the first token of each child's key to the child; ``lock_ref``
    counts the requests using this node or a descendant; ``last_access`` is the cache's
    clock at the last match or insert through it (for LRU eviction).
    """

    key: list[int]
    value: list[int]
    parent: RadixNode | None = None
    children: dict[int, RadixNode] = field(default_factory=dict)
    lock_ref: int = 0
    last_access: int = 0


@dataclass(frozen=True)
class RadixMatch:
    """``blocks``: the KV slots of the matched prefix; ``length`` = ``len(blocks)``;
    ``node``: where the match ends (exactly: a node is split if needed); lock it while
    the slots are in use."""

    blocks: list[int]
    length: int
    node: RadixNode


class RadixCache:
    """SGLang-style radix tree from token ids to KV slots (``P = 1`` blocks of a pool).

    The tree holds one reference (``allocator.share``) on every slot it stores and
    gives it up on eviction (``allocator.free``), so a slot is reused only when no
    sequence and no tree node hold it.

    >>> tree = RadixCache(BlockAllocator(8))
    >>> tree.allocator.allocate(5)
    [0, 1, 2, 3, 4]
    >>> tree.insert([7, 7, 1], [0, 1, 2]), tree.insert([7, 7, 2, 2], [0, 1, 3, 4])
    (0, 2)
    >>> m = tree.match_prefix([7, 7, 2, 9]); m.blocks, m.node.key
    ([0, 1, 3], [2])
    """

    def __init__(self, allocator: BlockAllocator) -> None:
        if not isinstance(allocator, BlockAllocator):
            raise TypeError(f"allocator must be a BlockAllocator, got {type(allocator).__name__}")
        self.allocator = allocator
        self.root = RadixNode(key=[], value=[])
        self.root.lock_ref = 1  # the root is never evicted
        self._clock = itertools.count(1)  # a logical clock: deterministic LRU order
        self.evictions = 0  # tokens evicted so far
        self._stored: set[int] = set()  # every slot in the tree (insert adds, evict removes)

    # -------------------------------------------------------------- walking the tree

    @staticmethod
    def _common(a: Sequence[int], b: Sequence[int]) -> int:
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    def _split(self, node: RadixNode, at: int) -> RadixNode:
        """Cut ``node``'s key after ``at`` tokens; return the new upper node (unchecked)."""
        assert node.parent is not None and 0 < at < len(node.key)
        upper = RadixNode(
            key=node.key[:at],
            value=node.value[:at],
            parent=node.parent,
            lock_ref=node.lock_ref,
            last_access=node.last_access,
        )
        node.parent.children[upper.key[0]] = upper
        node.key, node.value, node.parent = node.key[at:], node.value[at:], upper
        upper.children[node.key[0]] = node
        return upper

    def _match_length(self, ids: list[int]) -> int:
        """How many leading tokens of ``ids`` the tree stores (no split, no clock tick)."""
        node, i = self.root, 0
        while i < len(ids) and ids[i] in node.children:
            child = node.children[ids[i]]
            n = self._common(child.key, ids[i:])
            i += n
            if n < len(child.key):
                break
            node = child
        return i

    def _walk(self, ids: list[int]) -> tuple[RadixNode, int, list[int]]:
        """Descend as far as ``ids`` agree with the tree, splitting where the match stops
        inside a node: ``(node, matched length, matched slots)`` (unchecked)."""
        node, i, slots = self.root, 0, []
        now = next(self._clock)
        node.last_access = now
        while i < len(ids) and ids[i] in node.children:
            child = node.children[ids[i]]
            n = self._common(child.key, ids[i:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            slots += child.value
            node, i = child, i + n
        return node, i, slots

    def match_prefix(self, tokens: Sequence[int]) -> RadixMatch:
        """The longest prefix of ``tokens`` stored in the tree, at token granularity."""
        ids = _check_tokens("tokens", tokens)
        node, length, slots = self._walk(ids)
        return RadixMatch(blocks=slots, length=length, node=node)

    def insert(self, tokens: Sequence[int], blocks: Sequence[int]) -> int:
        """Store ``tokens`` with their KV slots ``blocks`` (one per token); return how many
        leading tokens were already stored (their slots in ``blocks`` are not taken: the
        tree keeps its own copies, and the caller frees its duplicates).

        Each slot the tree would newly store must appear once in ``blocks`` and not be
        stored in the tree already (for other tokens): ``ValueError`` otherwise, before
        anything changes."""
        ids = _check_tokens("tokens", tokens)
        slots = _check_block_ids("blocks", blocks, self.allocator.num_blocks)
        if len(slots) != len(ids):
            raise ValueError(
                f"blocks must hold one slot per token: {len(ids)} tokens, {len(slots)} slots"
            )
        n = self._match_length(ids)
        new = slots[n:]
        counts = Counter(slots)
        repeated = sorted({b for b in new if counts[b] > 1})
        if repeated:
            raise ValueError(
                f"blocks must give each new token its own slot, got slot(s) {repeated} more "
                "than once"
            )
        stored = sorted(self._stored.intersection(new))
        if stored:
            raise ValueError(
                f"blocks holds slot(s) {stored} for new tokens, but the tree already stores "
                "them for other tokens"
            )
        self.allocator.share(new)  # the tree becomes an owner of the new slots
        node, n, _ = self._walk(ids)
        if n < len(ids):
            self._stored.update(new)
            leaf = RadixNode(key=ids[n:], value=new, parent=node)
            leaf.last_access = node.last_access
            node.children[ids[n]] = leaf
        return n

    # -------------------------------------------------------------- locks and eviction

    def lock(self, node: RadixNode) -> None:
        """One more request uses the path root -> ``node``: none of it can be evicted."""
        self._check_node(node)
        while node is not None:
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: RadixNode) -> None:
        """Undo one :meth:`lock` (raises, changing nothing, if a count would go negative)."""
        self._check_node(node)
        path, n = [], node
        while n is not None:
            path.append(n)
            n = n.parent
        # The root holds one extra count of its own (it is never evicted).
        if any(n.lock_ref <= (1 if n is self.root else 0) for n in path):
            raise ValueError("unlock without a matching lock: a lock_ref would go negative")
        for n in path:
            n.lock_ref -= 1

    def _check_node(self, node: object) -> None:
        if not isinstance(node, RadixNode):
            raise TypeError(f"node must be a RadixNode, got {type(node).__name__}")
        top = node  # an evicted node has no parent (evict detaches it), so it fails here
        while top.parent is not None:
            top = top.parent
        if top is not self.root:
            raise ValueError("node does not belong to this tree (was it evicted?)")

    def evict(self, num_tokens: int) -> list[int]:
        """Evict least recently used unlocked leaves until ``num_tokens`` slots have left
        the tree (or nothing evictable is left); return the evicted slots.

        Each evicted slot loses the tree's reference (``allocator.free``); it returns to the
        free pool only if no one else still holds it, so ``allocator.num_free`` may grow by
        less than ``num_tokens``."""
        check_int("num_tokens", num_tokens, minimum=0)
        order = itertools.count()  # tie-breaker: never compare nodes
        heap = [(n.last_access, next(order), n) for n in self._leaves() if n.lock_ref == 0]
        heapq.heapify(heap)
        evicted: list[int] = []
        while len(evicted) < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            self.allocator.free(leaf.value)
            self._stored.difference_update(leaf.value)
            evicted += leaf.value
            del parent.children[leaf.key[0]]
            leaf.parent = None  # detached: lock / unlock refuse it (see _check_node)
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, next(order), parent))
        self.evictions += len(evicted)
        return evicted

    def _leaves(self) -> list[RadixNode]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif node is not self.root:
                out.append(node)
        return out

    def sequences(self) -> list[list[int]]:
        """The token ids of every root-to-leaf path (what the tree can match)."""
        out = []
        for leaf in self._leaves():
            key, n = [], leaf
            while n is not None:
                key = n.key + key
                n = n.parent
            out.append(key)
        return out

    @property
    def num_tokens(self) -> int:
        """Tokens (slots) stored in the tree."""
        total, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            total += len(node.key)
            stack.extend(node.children.values())
        return total
