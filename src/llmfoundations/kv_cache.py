"""A contiguous key/value cache for fast autoregressive decoding.

When a decoder generates token ``t``, the keys and values of tokens ``0 .. t-1`` are the same
as at the previous step (causal attention never lets earlier tokens see later ones). Keeping
them, instead of recomputing the whole prefix, turns each decoding step from a pass over
``t`` tokens into a pass over one token. The price is memory that grows linearly with the
sequence: every layer stores one key and one value vector per KV head and per position::

    bytes = 2 (K and V) * n_layers * B * Hkv * T * D * bytes_per_element

For Llama-2-7B (32 layers, 32 KV heads of size 128, fp16) that is 0.5 MiB per token, 2 GiB for
one 4096-token sequence; grouped-query attention divides it by ``H / Hkv``
(``kv_cache_bytes`` computes it).

``KVCache`` preallocates ``max_len`` positions per layer and writes new entries in place;
``cache.layers[i]`` is the per-layer object that ``attention.MultiHeadAttention`` talks to
(``update(k, v)`` and ``length``). All rows of a batch share one length: a left-padded
batch stores its padding too and masks it with the attention mask.

The cache is meant for inference, under ``torch.no_grad()``: writing tensors that require
gradients into the buffers would make them part of the autograd graph.

Left out: paged/block caches and prefix sharing (``inference.paged_kv``,
``inference.prefix_cache``), sliding-window or quantised caches, per-row lengths.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from llmfoundations._validate import check_int, check_same_device, check_tensor

__all__ = ["LayerKVCache", "KVCache", "kv_cache_bytes"]


def kv_cache_bytes(
    n_layers: int,
    batch_size: int,
    n_kv_heads: int,
    head_dim: int,
    seq_len: int,
    dtype: torch.dtype = torch.float16,
) -> int:
    """Bytes needed to cache keys and values: ``2 * n_layers * B * Hkv * T * D * itemsize``.

    >>> kv_cache_bytes(32, 1, 32, 128, 4096) / 2**30  # Llama-2-7B, one 4k sequence, fp16
    2.0
    """
    for name, value in (
        ("n_layers", n_layers),
        ("batch_size", batch_size),
        ("n_kv_heads", n_kv_heads),
        ("head_dim", head_dim),
    ):
        check_int(name, value, minimum=1)
    check_int("seq_len", seq_len, minimum=0)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * n_layers * batch_size * n_kv_heads * seq_len * head_dim * itemsize


class LayerKVCache:
    """Keys and values of one attention layer: two buffers ``(B, Hkv, max_len, D)``.

    ``length`` positions are filled; ``update(k, v)`` writes ``T_new`` more after them and
    returns views of everything filled so far.
    """

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        for name, value in (
            ("batch_size", batch_size),
            ("n_kv_heads", n_kv_heads),
            ("head_dim", head_dim),
            ("max_len", max_len),
        ):
            check_int(name, value, minimum=1)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (B, Hkv, max_len, D)
        self.v = torch.zeros(shape, device=device, dtype=dtype)  # (B, Hkv, max_len, D)
        self.max_len = max_len
        self.length = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k``, ``v`` (B, Hkv, T_new, D); return all keys and values (B, Hkv, T, D)."""
        check_tensor("k", k, ndim=4, floating=True, nonempty=True)
        check_tensor("v", v, ndim=4, floating=True, nonempty=True)
        check_same_device(k=k, v=v, cache=self.k)
        want = (self.k.shape[0], self.k.shape[1], self.k.shape[3])
        for name, t in (("k", k), ("v", v)):
            if (t.shape[0], t.shape[1], t.shape[3]) != want:
                raise ValueError(
                    f"{name} must be (B, Hkv, T_new, D) with (B, Hkv, D) = {want}, "
                    f"got {tuple(t.shape)}"
                )
        if k.shape[2] != v.shape[2]:
            raise ValueError(
                f"k and v must add as many positions, got {k.shape[2]} and {v.shape[2]}"
            )
        if k.dtype != self.k.dtype or v.dtype != self.v.dtype:
            raise TypeError(
                f"k and v must have the cache's dtype {self.k.dtype} (it would cast them "
                f"silently), got {k.dtype} and {v.dtype}"
            )
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(
                f"the cache holds max_len={self.max_len} positions; it has {self.length} and "
                f"{k.shape[2]} more were added"
            )
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """Per-layer caches for a whole model, preallocated and contiguous.

    >>> cache = KVCache(n_layers=2, batch_size=1, n_kv_heads=2, head_dim=4, max_len=8)
    >>> k_all, v_all = cache.layers[0].update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
    >>> tuple(k_all.shape), cache.layers[0].length
    ((1, 2, 3, 4), 3)
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_int("n_layers", n_layers, minimum=1)
        self.layers = [
            LayerKVCache(batch_size, n_kv_heads, head_dim, max_len, device=device, dtype=dtype)
            for _ in range(n_layers)
        ]
        self.n_layers, self.batch_size, self.n_kv_heads = n_layers, batch_size, n_kv_heads
        self.head_dim, self.max_len = head_dim, max_len

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """A cache shaped for ``model`` (anything with a ``config`` holding ``n_layers``,
        ``n_kv_heads`` or ``n_heads``, ``d_model`` and ``n_heads``, like ``models.DecoderLM``).
        Device and dtype default to those of the model's parameters."""
        n_layers, n_kv_heads, head_dim, device, dtype = cache_shape_for(model, device, dtype)
        return cls(n_layers, batch_size, n_kv_heads, head_dim, max_len, device, dtype)

    @property
    def length(self) -> int:
        """Positions stored by every layer (the prefix a new forward pass continues)."""
        return min(layer.length for layer in self.layers)

    def reset(self) -> None:
        """Forget everything (the buffers are kept and overwritten later)."""
        for layer in self.layers:
            layer.length = 0

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` positions (e.g. to drop rejected speculative tokens)."""
        check_int("length", length, minimum=0)
        if length > self.length:
            raise ValueError(f"length must be <= the cached length {self.length}, got {length}")
        for layer in self.layers:
            layer.length = length

    def reorder(self, index: Tensor) -> None:
        """Reorder (or duplicate) the batch rows: row ``i`` becomes old row ``index[i]``.

        ``index`` has ``batch_size`` entries (beam search keeps the surviving beams this way).
        """
        check_tensor("index", index, ndim=1, dtype=(torch.int64, torch.int32))
        if index.numel() != self.batch_size:
            raise ValueError(
                f"index must have batch_size={self.batch_size} entries, got {index.numel()}"
            )
        for layer in self.layers:
            idx = index.to(layer.k.device)
            layer.k.copy_(layer.k.index_select(0, idx))
            layer.v.copy_(layer.v.index_select(0, idx))

    def memory_bytes(self) -> int:
        """Bytes allocated by the buffers (all ``max_len`` positions, used or not)."""
        return sum(layer.k.nbytes + layer.v.nbytes for layer in self.layers)

    def __repr__(self) -> str:
        return (
            f"KVCache(n_layers={self.n_layers}, batch_size={self.batch_size}, "
            f"n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
            f"length={self.length}/{self.max_len})"
        )


def cache_shape_for(
    model: nn.Module, device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[int, int, int, torch.device | str | None, torch.dtype | None]:
    """``(n_layers, Hkv, D, device, dtype)`` of a cache for ``model`` (anything with a
    ``config`` like ``models.DecoderLM``'s); device and dtype default to its parameters'."""
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"model must have a `config`, got {type(model).__name__}")
    param = next(model.parameters(), None)
    device = device if device is not None else (param.device if param is not None else None)
    dtype = dtype if dtype is not None else (param.dtype if param is not None else None)
    n_kv_heads = getattr(config, "n_kv_heads", None) or config.n_heads
    return config.n_layers, n_kv_heads, config.d_model // config.n_heads, device, dtype
