"""Checks for lab 03-4 (parameter-efficient fine-tuning compared).

- ``peft_trainable_parameters``: the number of trained numbers of full fine-tuning, LoRA,
  QLoRA, bottleneck adapters and prompt tuning on a Llama-style decoder, as a formula.
  Known mistakes: every LoRA layer counted as square (``2 C r``), the LoRA update counted
  as ``C r``, QLoRA counted differently from LoRA, the adapters' biases left out, one
  adapter per block instead of two, an untied output layer in full fine-tuning, the soft
  prompt sized by the vocabulary.
- ``bottleneck_adapter``: ``h + W_up GELU(W_down h + b_down) + b_up``. Known mistakes:
  the inner residual left out, ReLU or the tanh GELU instead of the exact GELU, the
  activation after the up-projection, ``b_up`` left out.

The references are formulas checked (in ``tests/test_checks_peft.py``) against the
parameters that ``apply_lora``, ``apply_qlora``, ``apply_adapters`` and ``SoftPrompt``
actually create, and ``finetuning.adapters.BottleneckAdapter`` itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from llmfoundations.finetuning.adapters import BottleneckAdapter

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_peft_trainable_parameters", "check_bottleneck_adapter"]

METHODS = ("full", "lora", "qlora", "adapters", "prompt")


# ----------------------------------------------------------------- trainable parameters


def _reference_trainable(method, vocab_size, d_model, n_layers, d_ff, kv_dim, r=8, bottleneck=64,
                         n_virtual=20, *, square=False, half=False, untied=False,
                         no_bias=False, one_adapter=False, prompt_vocab=False) -> int:
    c, f, k = d_model, d_ff, kv_dim
    if method == "full":
        per_block = 2 * c * c + 2 * c * k + 3 * c * f + 2 * c
        return (2 if untied else 1) * vocab_size * c + n_layers * per_block + c
    if method in ("lora", "qlora"):
        if square:
            return n_layers * 7 * r * 2 * c
        per_block = 2 * (c + c) + 2 * (c + k) + 2 * (c + f) + (f + c)
        if half:
            per_block = 7 * c
        return n_layers * r * per_block
    if method == "adapters":
        per_adapter = 2 * c * bottleneck + (0 if no_bias else bottleneck + c)
        return (1 if one_adapter else 2) * n_layers * per_adapter
    if method == "prompt":
        return n_virtual * (vocab_size if prompt_vocab else c)
    raise ValueError(f"unknown method {method!r}")


def _wrong(**mistake):
    return lambda *args, **kwargs: _reference_trainable(*args, **kwargs, **mistake)


def _qlora_as_lora_fraction(method, *args, **kwargs):
    if method == "qlora":  # a common slip: QLoRA's 4-bit weights counted as "half" the adapters
        return _reference_trainable("lora", *args, **kwargs) // 2
    return _reference_trainable(method, *args, **kwargs)


_SHAPES = [
    # (vocab_size, d_model, n_layers, d_ff, kv_dim): the lab's model, SmolLM2-135M, others
    (16, 64, 2, 176, 32),
    (49_152, 576, 30, 1_536, 192),
    (100, 48, 3, 128, 48),
    (1_000, 128, 4, 344, 64),
]


@exercise_check
def check_peft_trainable_parameters(student: Callable[..., int]) -> None:
    """Lab 03-4: ``peft_trainable_parameters(method, vocab_size, d_model, n_layers, d_ff,
    kv_dim, r=8, bottleneck=64, n_virtual=20)`` -> int."""
    check_callable("peft_trainable_parameters", student)

    def as_int(*args, **kwargs):
        got = student(*args, **kwargs)
        if isinstance(got, Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if isinstance(got, bool) or not isinstance(got, int):
            raise AssertionError(
                f"peft_trainable_parameters must return an int, got {type(got).__name__}"
            )
        return got

    as_int.__name__ = "peft_trainable_parameters"
    cases = []
    for shape in _SHAPES:
        for method in METHODS:
            cases.append(((method, *shape), {}))
    cases += [
        (("lora", 16, 64, 2, 176, 32), {"r": 4}),
        (("adapters", 16, 64, 2, 176, 32), {"bottleneck": 16}),
        (("prompt", 16, 64, 2, 176, 32), {"n_virtual": 8}),
    ]
    hints = [
        (_wrong(square=True), "LoRA: not every layer is C x C; r * (d_in + d_out) per layer, "
         "with k_proj and v_proj mapping C to kv_dim and the feed-forward layers C to F and back"),
        (_wrong(half=True), "LoRA trains both A (r x d_in) and B (d_out x r): r * (d_in + d_out)"),
        (_qlora_as_lora_fraction, "QLoRA trains exactly the same adapters as LoRA; only the frozen "
         "weights are stored in 4 bits"),
        (_wrong(no_bias=True), "each adapter also trains its two biases, b_down (M) and b_up (C)"),
        (_wrong(one_adapter=True), "there are two adapters per block: after the attention and "
         "after the feed-forward network"),
        (_wrong(untied=True), "the embeddings are tied: the output layer is the embedding matrix, "
         "counted once"),
        (_wrong(prompt_vocab=True), "a soft prompt is n_virtual vectors of width d_model, not of the "
         "vocabulary size"),
    ]
    compare_with_reference("peft_trainable_parameters", as_int, _reference_trainable, cases,
                           hints=hints)


# -------------------------------------------------------------------------- the adapter


def _reference_adapter(h, w_down, b_down, w_up, b_up):
    return h + F.gelu(h @ w_down.T + b_down) @ w_up.T + b_up


def _no_residual(h, w_down, b_down, w_up, b_up):
    return F.gelu(h @ w_down.T + b_down) @ w_up.T + b_up


def _relu(h, w_down, b_down, w_up, b_up):
    return h + F.relu(h @ w_down.T + b_down) @ w_up.T + b_up


def _tanh_gelu(h, w_down, b_down, w_up, b_up):
    return h + F.gelu(h @ w_down.T + b_down, approximate="tanh") @ w_up.T + b_up


def _activation_last(h, w_down, b_down, w_up, b_up):
    return h + F.gelu((h @ w_down.T + b_down) @ w_up.T + b_up)


def _no_up_bias(h, w_down, b_down, w_up, b_up):
    return h + F.gelu(h @ w_down.T + b_down) @ w_up.T


def _adapter_case(seed: int, shape: tuple[int, ...], c: int, m: int, zero_up: bool = False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*shape, c, generator=g) * 2  # (..., C)
    w_down = torch.randn(m, c, generator=g) / c**0.5
    b_down = torch.randn(m, generator=g)
    w_up = torch.zeros(c, m) if zero_up else torch.randn(c, m, generator=g)
    b_up = torch.zeros(c) if zero_up else torch.randn(c, generator=g)
    return (h, w_down, b_down, w_up, b_up), {}


def _module_agrees(case) -> bool:
    """The reference equals ``BottleneckAdapter`` holding the same weights."""
    (h, w_down, b_down, w_up, b_up), _ = case
    c, m = w_up.shape
    adapter = BottleneckAdapter(c, m)
    with torch.no_grad():
        adapter.down.weight.copy_(w_down)
        adapter.down.bias.copy_(b_down)
        adapter.up.weight.copy_(w_up)
        adapter.up.bias.copy_(b_up)
        return torch.allclose(adapter(h), _reference_adapter(h, w_down, b_down, w_up, b_up),
                              atol=1e-5, rtol=1e-5)


@exercise_check
def check_bottleneck_adapter(student: Callable[..., Tensor]) -> None:
    """Lab 03-4: ``bottleneck_adapter(h, w_down, b_down, w_up, b_up)`` -> (..., C)."""
    check_callable("bottleneck_adapter", student)
    cases = [
        _adapter_case(0, (5,), 8, 3),
        _adapter_case(1, (2, 4), 16, 4),
        _adapter_case(2, (2, 3), 12, 5, zero_up=True),  # the initialisation: the identity
        _adapter_case(3, (1, 6), 32, 8),
    ]
    if not all(_module_agrees(case) for case in cases):  # pragma: no cover - a course bug
        raise RuntimeError("the reference adapter disagrees with BottleneckAdapter")
    hints = [
        (_no_residual, "the adapter adds its input back: h + W_up f(W_down h + b_down) + b_up "
         "(with W_up = 0 it must return h)"),
        (_relu, "use the GELU (F.gelu), not ReLU"),
        (_tanh_gelu, "use the exact GELU, F.gelu(x), not approximate='tanh'"),
        (_activation_last, "the non-linearity sits in the bottleneck, between W_down and W_up"),
        (_no_up_bias, "add the up-projection's bias b_up too"),
    ]
    compare_with_reference("bottleneck_adapter", student, _reference_adapter, cases,
                           atol=1e-5, rtol=1e-5, hints=hints)
