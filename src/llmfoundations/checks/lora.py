"""Checks for Lab 03-2 (LoRA): the update ``s * B @ A``, the LoRA forward pass, and the count
of trainable parameters.

Each check runs the student's function next to a reference on fixed inputs and either
prints one line of success or raises ``AssertionError`` naming the failing case. The cases
are chosen so that the usual mistakes fail:

- ``lora_delta_weight``: no scale, ``alpha * r`` instead of ``alpha / r``, the rank read
  from the wrong axis (``B.shape[0]`` is ``Cout``), rsLoRA ignored or always on, ``A @ B``
  or the transposed product (``Cin != Cout`` in most cases, so a wrong orientation has the
  wrong shape);
- ``lora_forward``: the scale forgotten or applied to the frozen path too, the low-rank path
  left out, the weights used untransposed (a shape error, except in the one square case,
  which catches ``x @ W``);
- ``lora_parameter_count``: key and value projections counted at full width (grouped-query
  attention makes them ``Hkv * D`` wide), one block only, ``r * Cin * Cout`` or the full
  ``Cin * Cout`` per layer.

The references are ``LoRALinear`` of ``llmfoundations.finetuning.lora`` (itself tested
equal to peft's ``lora.Linear``) and a model built with ``apply_lora`` whose trainable
parameters are counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from llmfoundations.finetuning.lora import LoRALinear, apply_lora, lora_scaling
from llmfoundations.models import DecoderLM, ModelConfig

from .core import Case, check_callable, compare_with_reference, exercise_check

__all__ = ["check_lora_delta_weight", "check_lora_forward", "check_lora_parameter_count"]


def _randn(seed: int, *shape: int, scale: float = 1.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _layer(seed: int, c_in: int, c_out: int, r: int, alpha: float, rslora: bool) -> LoRALinear:
    """A ``LoRALinear`` with seeded ``W``, ``A`` and a non-zero ``B``."""
    with torch.random.fork_rng():  # leave the student's generator where it was
        torch.manual_seed(seed)
        layer = LoRALinear(nn.Linear(c_in, c_out, bias=False), r=r, alpha=alpha, rslora=rslora)
    with torch.no_grad():
        layer.lora_B.copy_(_randn(seed + 1000, c_out, r, scale=0.5))
    return layer


# ------------------------------------------------------------------------- delta weight


def _reference_delta_weight(
    A: Tensor, B: Tensor, alpha: float, rslora: bool = False
) -> Tensor:
    return (B @ A) * lora_scaling(A.shape[0], alpha, rslora)


def _delta_cases() -> list[Case]:
    # (seed, Cin, Cout, r, alpha, rslora); Cin != Cout except once, r differs from alpha
    specs = [
        (1, 12, 10, 4, 8.0, False),
        (2, 16, 24, 2, 16.0, False),
        (3, 10, 6, 1, 4.0, False),  # r = 1
        (4, 20, 12, 4, 8.0, True),
        (5, 9, 9, 9, 3.0, True),  # square, r = Cin: alpha / sqrt(9) = 1 != alpha / 9
        (6, 32, 16, 16, 16.0, True),
        (7, 14, 30, 3, 6.0, False),
    ]
    cases = []
    for seed, c_in, c_out, r, alpha, rslora in specs:
        A = _randn(seed, r, c_in)  # (r, Cin)
        B = _randn(seed + 100, c_out, r)  # (Cout, r)
        cases.append(((A, B, alpha), {"rslora": rslora}))
    return cases


def _delta_hints() -> list[tuple[Callable[..., Tensor], str]]:
    def scale(r: int, alpha: float, rslora: bool) -> float:
        return alpha / math.sqrt(r) if rslora else alpha / r

    return [
        (lambda A, B, alpha, rslora=False: B @ A,
         "you left out the scale s = alpha / r (or alpha / sqrt(r) with rsLoRA)"),
        (lambda A, B, alpha, rslora=False: (B @ A) * alpha,
         "the scale is alpha / r, not alpha: divide by the rank"),
        (lambda A, B, alpha, rslora=False: (B @ A) * alpha * A.shape[0],
         "the scale is alpha divided by r, not multiplied by it"),
        (lambda A, B, alpha, rslora=False: (B @ A) * scale(B.shape[0], alpha, rslora),
         "the rank r is A.shape[0] (A is (r, Cin)); B.shape[0] is Cout"),
        (lambda A, B, alpha, rslora=False: (B @ A) * alpha / A.shape[0],
         "with rslora=True the scale is alpha / sqrt(r), not alpha / r"),
        (lambda A, B, alpha, rslora=False: (B @ A) * alpha / math.sqrt(A.shape[0]),
         "alpha / sqrt(r) is rsLoRA's scale; without rslora it is alpha / r"),
    ]  # fmt: skip


@exercise_check
def check_lora_delta_weight(student: Callable[..., Tensor]) -> None:
    """Lab 03-2: ``lora_delta_weight(A, B, alpha, rslora=False)`` -> ``s * B @ A`` (Cout, Cin).

    ``A`` is (r, Cin), ``B`` (Cout, r); ``s = alpha / r``, or ``alpha / sqrt(r)`` with
    ``rslora=True``. Compared with ``LoRALinear.delta_weight`` on one case as well.
    """
    check_callable("lora_delta_weight", student)
    layer = _layer(11, 12, 20, 4, 8.0, rslora=False)
    cases = _delta_cases() + [
        ((layer.lora_A.detach(), layer.lora_B.detach(), layer.alpha), {"rslora": False})
    ]
    compare_with_reference(
        "lora_delta_weight",
        student,
        _reference_delta_weight,
        cases,
        atol=1e-5,
        rtol=1e-5,
        hints=_delta_hints(),
    )


# ------------------------------------------------------------------------------ forward


def _reference_forward(
    x: Tensor, W: Tensor, A: Tensor, B: Tensor, scaling: float
) -> Tensor:
    return x @ W.T + scaling * ((x @ A.T) @ B.T)


def _forward_cases() -> list[Case]:
    cases = []
    # (seed, input shape without Cin, Cin, Cout, r, alpha, rslora)
    specs = [
        (21, (5,), 12, 8, 4, 8.0, False),
        (22, (2, 7), 16, 24, 2, 16.0, False),
        (23, (3, 4), 10, 10, 5, 5.0, True),  # square: catches x @ W instead of x @ W.T
        (24, (2, 3, 6), 20, 12, 8, 32.0, True),
    ]
    for seed, lead, c_in, c_out, r, alpha, rslora in specs:
        layer = _layer(seed, c_in, c_out, r, alpha, rslora)
        x = _randn(seed + 7, *lead, c_in)
        args = (x, layer.base.weight.detach(), layer.lora_A.detach(), layer.lora_B.detach(),
                layer.scaling)  # fmt: skip
        cases.append((args, {}))
    return cases


@exercise_check
def check_lora_forward(student: Callable[..., Tensor]) -> None:
    """Lab 03-2: ``lora_forward(x, W, A, B, scaling)`` -> ``x W^T + s (x A^T) B^T``.

    ``x`` is (..., Cin), ``W`` (Cout, Cin), ``A`` (r, Cin), ``B`` (Cout, r); the result is
    (..., Cout). The reference is ``LoRALinear.forward``, checked equal on every case.
    """
    check_callable("lora_forward", student)
    cases = _forward_cases()
    hints = [
        (lambda x, W, A, B, s: x @ W.T + (x @ A.T) @ B.T,
         "you left out the scale: the low-rank path is multiplied by `scaling`"),
        (lambda x, W, A, B, s: s * (x @ W.T + (x @ A.T) @ B.T),
         "only the low-rank path is scaled; the frozen path x W^T is not"),
        (lambda x, W, A, B, s: x @ W.T,
         "that is the frozen layer alone; add the low-rank path s * B(A x)"),
    ]  # fmt: skip
    for i, (args, _) in enumerate(cases, start=1):  # the reference is the package's layer
        x, W, A, B, s = args
        with torch.random.fork_rng():
            layer = LoRALinear(nn.Linear(W.shape[1], W.shape[0], bias=False), r=A.shape[0], alpha=1.0)
        layer.scaling = s
        with torch.no_grad():
            layer.base.weight.copy_(W)
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
            assert torch.allclose(layer(x), _reference_forward(*args), atol=1e-5), f"case {i}"
    compare_with_reference(
        "lora_forward", student, _reference_forward, cases, atol=1e-5, rtol=1e-5, hints=hints
    )


# ---------------------------------------------------------------------- parameter count


_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _reference_parameter_count(
    d_model: int,
    n_heads: int,
    n_kv_heads: int,
    d_ff: int,
    n_layers: int,
    targets: Sequence[str],
    r: int,
) -> int:
    kv = d_model // n_heads * n_kv_heads
    shapes = {  # (Cin, Cout) of each linear layer of a Llama-style block
        "q_proj": (d_model, d_model),
        "k_proj": (d_model, kv),
        "v_proj": (d_model, kv),
        "o_proj": (d_model, d_model),
        "gate_proj": (d_model, d_ff),
        "up_proj": (d_model, d_ff),
        "down_proj": (d_ff, d_model),
    }
    return n_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


def _built_count(d_model, n_heads, n_kv_heads, d_ff, n_layers, targets, r) -> int:
    """Build the model, apply LoRA and count: what the reference formula must equal."""
    config = ModelConfig.llama(
        50, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
        d_ff=d_ff, max_seq_len=8,
    )  # fmt: skip
    with torch.random.fork_rng():
        model = DecoderLM(config)
        apply_lora(model, list(targets), r=r, alpha=1.0)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@exercise_check
def check_lora_parameter_count(student: Callable[..., int]) -> None:
    """Lab 03-2: ``lora_parameter_count(d_model, n_heads, n_kv_heads, d_ff, n_layers, targets, r)``.

    The number of trainable parameters after ``apply_lora(model, targets, r, alpha)`` on a
    Llama-style ``DecoderLM`` (grouped-query attention, SwiGLU). Includes SmolLM2-135M
    (576, 9, 3, 1536, 30): 460,800 for ``["q_proj", "v_proj"]`` at ``r = 8``.
    """
    check_callable("lora_parameter_count", student)
    smol = (576, 9, 3, 1536, 30)
    cases = [
        ((32, 4, 2, 64, 2, ("q_proj", "v_proj"), 4), {}),
        ((32, 4, 2, 64, 3, _LINEARS, 2), {}),
        ((48, 6, 3, 96, 1, ("k_proj", "down_proj"), 8), {}),
        ((64, 8, 8, 128, 2, ("o_proj", "gate_proj", "up_proj"), 1), {}),  # no GQA
        ((*smol, ("q_proj", "v_proj"), 8), {}),
        ((*smol, _LINEARS, 8), {}),
        ((*smol, ("q_proj", "k_proj", "v_proj", "o_proj"), 16), {}),
    ]
    for args, _ in cases[:4]:  # the formula is what apply_lora gives
        assert _reference_parameter_count(*args) == _built_count(*args), args

    def no_gqa(d, h, hkv, f, n, targets, r):
        return _reference_parameter_count(d, h, h, f, n, targets, r)

    def one_block(d, h, hkv, f, n, targets, r):
        return _reference_parameter_count(d, h, hkv, f, 1, targets, r)

    def product(d, h, hkv, f, n, targets, r):
        kv = d // h * hkv
        sizes = {"q_proj": d * d, "k_proj": d * kv, "v_proj": d * kv, "o_proj": d * d,
                 "gate_proj": d * f, "up_proj": d * f, "down_proj": f * d}  # fmt: skip
        return n * sum(r * sizes[t] for t in targets)

    def full(d, h, hkv, f, n, targets, r):
        return product(d, h, hkv, f, n, targets, 1)

    hints = [
        (no_gqa, "k_proj and v_proj are narrower: with grouped-query attention they map "
                 "d_model to n_kv_heads * (d_model // n_heads)"),
        (one_block, "every one of the n_layers blocks has its own adapters"),
        (product, "an adapter has r * (Cin + Cout) parameters, not r * Cin * Cout"),
        (full, "that is the full layer's Cin * Cout; LoRA trains r * (Cin + Cout)"),
    ]
    compare_with_reference(
        "lora_parameter_count",
        student,
        _reference_parameter_count,
        cases,
        hints=hints,
    )
