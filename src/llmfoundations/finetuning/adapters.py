"""Bottleneck adapters: small trainable networks inserted into every block of a frozen model.

Houlsby et al. (2019, https://arxiv.org/abs/1902.00751) fine-tune a frozen BERT by adding
two small modules to every transformer layer and training only those. An adapter maps
the hidden state ``h`` (C) down to a bottleneck of ``M`` << C numbers, applies a
non-linearity, maps back up, and adds its input::

    adapter(h) = h + W_up f(W_down h + b_down) + b_up,   W_down: (M, C),  W_up: (C, M)

One adapter sits on the output of the attention sub-layer (after its output projection
``o_proj``) and one on the output of the feed-forward network (after ``down_proj``), in
both cases before the block adds the residual. ``W_up`` and ``b_up`` start at zero, so
every adapter is the identity and the model is unchanged at step 0 (the paper draws them
near zero; zero is the exact limit, as LoRA's ``B``). Each adapter trains
``2 * C * M + M + C`` numbers.

Adapters versus LoRA: an adapter is a non-linear function applied *after* a layer, so it
cannot be folded into the layer's weight. It stays in the model at inference, two extra
small matrix products per sub-layer that must wait for the sub-layer's output.

This module holds:

- ``BottleneckAdapter(d_model, bottleneck, activation="gelu")``: the module above;
- ``AdaptedLinear(base, bottleneck, activation)``: a frozen ``nn.Linear`` followed by an
  adapter on its output;
- ``apply_adapters(model, bottleneck, ...)``: wraps ``attn.o_proj`` and ``ffn.down_proj``
  of every ``TransformerBlock`` of a course model, freezes everything else (except the
  norms with ``train_norms=True``, which the paper also trains), returns the names.

Left out: adapters after cross-attention (encoder-decoder) and after a mixture of experts
(``apply_adapters`` refuses a MoE feed-forward), parallel adapters (He et al., 2022),
AdapterFusion and adapter stacking, and removing adapters again (keep a copy of the base
model instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor, nn

from llmfoundations._validate import check_choice, check_int
from llmfoundations.finetuning.lora import _replace
from llmfoundations.layers import FeedForward, LayerNorm, RMSNorm, SwiGLU, TransformerBlock

__all__ = ["Activation", "Sublayer", "BottleneckAdapter", "AdaptedLinear", "apply_adapters"]

Activation = Literal["gelu", "relu"]
Sublayer = Literal["attn", "ffn"]


class BottleneckAdapter(nn.Module):
    """``h + up(f(down(h)))``: (..., C) -> (..., C), the identity at initialisation.

    ``down`` (C -> M) is initialised as any ``nn.Linear``; ``up`` (M -> C) is all zeros.

    >>> import torch
    >>> adapter = BottleneckAdapter(16, 4)
    >>> h = torch.randn(2, 16)
    >>> torch.equal(adapter(h), h)
    True
    """

    def __init__(self, d_model: int, bottleneck: int, activation: Activation = "gelu") -> None:
        super().__init__()
        check_int("d_model", d_model, minimum=1)
        check_int("bottleneck", bottleneck, minimum=1)
        if bottleneck > d_model:
            raise ValueError(
                f"bottleneck (M = {bottleneck}) must be <= d_model ({d_model}); a wider "
                "layer is not a bottleneck"
            )
        check_choice("activation", activation, get_args(Activation))
        self.activation = activation
        self.down = nn.Linear(d_model, bottleneck)  # (M, C)
        self.up = nn.Linear(bottleneck, d_model)  # (C, M)
        nn.init.zeros_(self.up.weight)  # the adapter starts as the identity
        nn.init.zeros_(self.up.bias)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"

    def forward(self, h: Tensor) -> Tensor:
        z = self.down(h)  # (..., M)
        z = F.gelu(z) if self.activation == "gelu" else F.relu(z)
        return h + self.up(z)  # (..., C)


class AdaptedLinear(nn.Module):
    """A frozen ``nn.Linear`` whose output goes through a ``BottleneckAdapter``.

    The adapter is created in the base weight's dtype and device; the base's parameters
    are frozen. (Cin) -> (Cout), with the adapter working on Cout.
    """

    def __init__(self, base: nn.Linear, bottleneck: int, activation: Activation = "gelu") -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        adapter = BottleneckAdapter(base.out_features, bottleneck, activation)
        base.requires_grad_(False)
        self.base = base
        self.adapter = adapter.to(dtype=base.weight.dtype, device=base.weight.device)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., Cin) -> (..., Cout)."""
        if x.dtype != self.base.weight.dtype:  # metadata only: no device sync
            raise TypeError(
                f"x must have the layer's dtype {self.base.weight.dtype}, got {x.dtype}"
            )
        return self.adapter(self.base(x))


def _check_sublayers(sublayers: object) -> tuple[str, ...]:
    if isinstance(sublayers, str) or not isinstance(sublayers, Sequence) or not sublayers:
        raise TypeError(
            f"sublayers must be a non-empty tuple such as ('attn', 'ffn'), got {sublayers!r}"
        )
    for k, sublayer in enumerate(sublayers):
        check_choice(f"sublayers[{k}]", sublayer, get_args(Sublayer))
    return tuple(dict.fromkeys(sublayers))


def apply_adapters(
    model: nn.Module,
    bottleneck: int,
    *,
    activation: Activation = "gelu",
    sublayers: Sequence[Sublayer] = ("attn", "ffn"),
    train_norms: bool = False,
) -> list[str]:
    """Put a bottleneck adapter after the attention and feed-forward of every block.

    Wraps ``<block>.attn.o_proj`` (``"attn"`` in ``sublayers``) and
    ``<block>.ffn.down_proj`` (``"ffn"``) of every ``TransformerBlock`` in ``model`` with
    an ``AdaptedLinear``, freezes all other parameters (norm scales and biases stay
    trainable with ``train_norms=True``, as in Houlsby et al.), and returns the wrapped
    names. Raises before changing anything if the model has no ``TransformerBlock``, a
    feed-forward is a mixture of experts, or adapters are already there.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_int("bottleneck", bottleneck, minimum=1)
    check_choice("activation", activation, get_args(Activation))
    chosen = _check_sublayers(sublayers)
    if not isinstance(train_norms, bool):
        raise TypeError(f"train_norms must be a bool, got {type(train_norms).__name__}")
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, TransformerBlock)]
    if not blocks:
        raise ValueError("model has no TransformerBlock to put adapters in")
    found: list[tuple[str, nn.Linear]] = []
    for name, block in blocks:
        if "attn" in chosen:
            found.append((f"{name}.attn.o_proj", block.attn.o_proj))
        if "ffn" in chosen:
            if not isinstance(block.ffn, (FeedForward, SwiGLU)):
                raise ValueError(
                    f"sublayers: the feed-forward of {name} is a {type(block.ffn).__name__}; "
                    "adapters after a mixture of experts are not supported (use "
                    "sublayers=('attn',))"
                )
            found.append((f"{name}.ffn.down_proj", block.ffn.down_proj))
    for name, module in found:
        if isinstance(module, AdaptedLinear):
            raise TypeError(f"{name} already has an adapter")
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name} is a {type(module).__name__}, not an nn.Linear")
        if bottleneck > module.out_features:
            raise ValueError(
                f"bottleneck (M = {bottleneck}) must be <= d_model ({module.out_features})"
            )
    model.requires_grad_(False)
    if train_norms:
        for module in model.modules():
            if isinstance(module, (LayerNorm, RMSNorm, nn.LayerNorm)):
                module.requires_grad_(True)
    for name, linear in found:
        _replace(model, name, AdaptedLinear(linear, bottleneck, activation))
    return [name for name, _ in found]
