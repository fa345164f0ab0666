"""Let torch's pytree utilities see the tensors inside the package's output dataclasses.

Blocks and models here return dataclasses (:class:`~llmfoundations.layers.BlockOutput`,
:class:`~llmfoundations.models.LMOutput`, ...). To ``torch.utils._pytree`` an unregistered
dataclass is one opaque leaf, and some of torch finds a module's output tensors that way.
FSDP2 (``fully_shard``) in torch 2.11, the version Colab ships, hooks each sharded block's
backward on the tensors it finds in the block's output; finding none, it never gathers the
block's weights again for the backward, which then fails with "setStorage: ... out of bounds
for storage of size 0" (torch 2.13 also looks inside dataclasses). So the course registers
its output dataclasses: their fields flatten in declaration order, ``None`` stays
``None``, and unflattening rebuilds the same dataclass.

    >>> import torch
    >>> from torch.utils._pytree import tree_flatten, tree_unflatten
    >>> from llmfoundations.layers import BlockOutput
    >>> out = BlockOutput(hidden=torch.ones(1))
    >>> leaves, spec = tree_flatten(out)
    >>> leaves[0] is out.hidden
    True
    >>> tree_unflatten(leaves, spec)
    BlockOutput(hidden=tensor([1.]), attn_weights=None, moe=None)
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import torch.utils._pytree as pytree

T = TypeVar("T")


def pytree_dataclass(cls: type[T]) -> type[T]:
    """Class decorator: register dataclass ``cls`` as a pytree node (idempotent) and return it."""
    if cls in pytree.SUPPORTED_NODES:  # a module reloaded in a notebook registers again
        return cls
    names = [field.name for field in dataclasses.fields(cls)]
    pytree.register_pytree_node(
        cls,
        lambda obj: ([getattr(obj, name) for name in names], None),
        lambda values, _context: cls(**dict(zip(names, values, strict=True))),
        serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
    )
    return cls
