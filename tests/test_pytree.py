"""The output dataclasses are pytree nodes (what FSDP2 before torch 2.13 needs to hook a
block's backward; see ``llmfoundations._pytree``)."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from llmfoundations import _pytree
from llmfoundations.layers import BlockOutput
from llmfoundations.models import DecoderLM, EncoderMLM, ModelConfig
from llmfoundations.moe import MoEOutput, Routing


def _tiny(**overrides) -> ModelConfig:
    return ModelConfig.gpt(vocab_size=16, d_model=16, n_layers=1, n_heads=2, **overrides)


@pytest.mark.parametrize("kind", ["lm", "lm_moe", "mlm"])
def test_model_outputs_flatten_to_their_tensors_and_back(kind):
    torch.manual_seed(0)
    ids = torch.randint(0, 16, (2, 5))
    if kind == "mlm":
        out = EncoderMLM(_tiny())(ids, labels=ids)
    else:
        config = _tiny(ffn="moe", n_experts=2, top_k=1) if kind == "lm_moe" else _tiny()
        out = DecoderLM(config)(ids, labels=ids, output_attentions=True)
    leaves, spec = tree_flatten(out)
    assert leaves and all(x is None or isinstance(x, (torch.Tensor, int, float)) for x in leaves)
    assert any(x is out.logits for x in leaves) and any(x is out.loss for x in leaves)
    if kind == "lm_moe":  # nested: MoEOutput, then its Routing
        assert any(x is out.moe[0].routing.experts for x in leaves)
    rebuilt = tree_unflatten(leaves, spec)
    assert type(rebuilt) is type(out) and rebuilt.logits is out.logits
    doubled = tree_map(lambda x: 2 * x if isinstance(x, torch.Tensor) else x, out)
    torch.testing.assert_close(doubled.logits, 2 * out.logits, rtol=0, atol=0)


def test_block_output_keeps_none_and_types():
    hidden = torch.ones(1, 2, 3)
    leaves, spec = tree_flatten(BlockOutput(hidden=hidden))
    assert leaves[0] is hidden and all(x is None for x in leaves[1:])
    rebuilt = tree_unflatten([hidden + 1, *leaves[1:]], spec)
    assert isinstance(rebuilt, BlockOutput) and rebuilt.attn_weights is None and rebuilt.moe is None
    torch.testing.assert_close(rebuilt.hidden, hidden + 1, rtol=0, atol=0)


def test_registration_is_idempotent():
    for cls in (BlockOutput, MoEOutput, Routing):
        assert _pytree.pytree_dataclass(cls) is cls  # registering again is a no-op, not an error


def test_doctests():
    assert doctest.testmod(_pytree).failed == 0
