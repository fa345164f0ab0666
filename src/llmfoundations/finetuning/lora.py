"""LoRA: fine-tune a frozen linear layer through a trainable low-rank update.

Full fine-tuning changes every entry of a weight ``W`` (Cout, Cin). Hu et al. (2021,
https://arxiv.org/abs/2106.09685) keep ``W`` frozen and learn the change in factored form::

    W' = W + dW,    dW = s * B @ A,    A: (r, Cin),  B: (Cout, r),  s = alpha / r

so a layer trains ``r * (Cin + Cout)`` numbers instead of ``Cin * Cout`` (``r = 8`` on a
576 x 576 projection: 9,216 instead of 331,776). ``A`` starts like an ``nn.Linear``
weight (Kaiming-uniform) and ``B`` at zero, so ``dW = 0`` and the model is unchanged at
step 0. The forward pass never forms ``dW``::

    y = x @ W.T + s * (dropout(x) @ A.T) @ B.T

The scale ``s = alpha / r`` lets ``alpha`` stay put while ``r`` is swept. rsLoRA
(Kalajdzievski, 2023, https://arxiv.org/abs/2312.03732) argues that ``alpha / r`` shrinks
the update too fast as ``r`` grows, and uses ``s = alpha / sqrt(r)`` instead
(``rslora=True``).

After training, ``merge()`` writes ``W + dW`` into the base weight: the layer then costs
exactly what it cost before fine-tuning. ``unmerge()`` subtracts ``dW`` again; in float32
the round trip restores ``W`` to rounding error (tested to 1e-6). In bfloat16 each
addition rounds to 8 significant bits, so a merged bf16 model drifts from the unmerged
one (chapter 3's LoRA lab shows it).

This module holds:

- ``lora_scaling(r, alpha, rslora)``: the scale ``s``;
- ``LoRALinear(base, r, alpha, dropout=0.0, *, rslora=False)``: wraps a frozen
  ``nn.Linear``; ``delta_weight()``, ``merge()``, ``unmerge()``;
- ``apply_lora(model, target_modules, r, alpha)``: wraps the named linear layers of any
  of the course's models (``"q_proj"`` matches ``blocks.0.attn.q_proj`` and its siblings),
  freezes every other parameter, and returns the wrapped names;
- ``lora_layers(model)``, ``lora_state_dict(model)`` and ``load_lora_state_dict(model,
  state)``: the adapter alone, a few hundred kilobytes where the model is hundreds of
  megabytes.

Compared with peft's ``lora.Linear`` (tested equal: forward, ``dW``, merged weight and
unmerge, float32, 1e-6): one adapter per layer instead of a dict keyed by adapter name;
``lora_A`` and ``lora_B`` are parameters (peft: ``nn.Linear`` modules holding them);
``merge`` adds ``dW`` to ``W`` in float32 and rounds once (peft rounds ``dW`` to the
weight's dtype first, then adds); merging twice raises instead of warning; state-dict keys
are ``<layer>.lora_A`` (peft: ``base_model.model.<layer>.lora_A.default.weight``).

Left out: DoRA (Liu et al., 2024), LoRA on embeddings and convolutions, several adapters
on one layer and switching between them, training biases, other initialisations
(Gaussian, PiSSA, LoftQ), GPT-2's transposed ``Conv1D`` weights of transformers
(``fan_in_fan_out``), and merging into a quantized base (see ``nf4``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmfoundations._validate import check_int, check_positive

__all__ = [
    "lora_scaling",
    "LoRALinear",
    "apply_lora",
    "lora_layers",
    "lora_state_dict",
    "load_lora_state_dict",
]


def _check_lora_args(r: object, alpha: object, dropout: object, rslora: object) -> None:
    check_int("r", r, minimum=1)
    check_positive("alpha", alpha)
    check_positive("dropout", dropout, allow_zero=True)
    if dropout >= 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not isinstance(rslora, bool):
        raise TypeError(f"rslora must be a bool, got {type(rslora).__name__}")


def _check_rank(r: int, in_features: int, out_features: int, where: str) -> None:
    """``dW = B @ A`` has rank at most ``min(Cin, Cout)``: a larger ``r`` only adds weights."""
    if r > min(in_features, out_features):
        raise ValueError(
            f"r ({r}) must be <= min(in_features, out_features) = "
            f"{min(in_features, out_features)} for {where} ({in_features} -> {out_features}); "
            "a larger rank adds parameters but not rank"
        )


def lora_scaling(r: int, alpha: float, rslora: bool = False) -> float:
    """The scale of the update: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA.

    >>> lora_scaling(8, 16), lora_scaling(16, 16, rslora=True)
    (2.0, 4.0)
    """
    _check_lora_args(r, alpha, 0.0, rslora)
    return alpha / math.sqrt(r) if rslora else alpha / r


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``s * B @ A``.

    ``base``: the layer to adapt; its parameters are frozen (``requires_grad=False``) and
    kept as ``self.base``. ``lora_A`` (r, Cin) starts Kaiming-uniform like an
    ``nn.Linear`` weight, ``lora_B`` (Cout, r) at zero, both in the base weight's dtype
    and device. ``dropout`` applies to the input of the low-rank path only.

    Train it unmerged: while merged, the adapter is inside ``base.weight`` and ``lora_A``
    and ``lora_B`` get no gradient.

    >>> layer = LoRALinear(nn.Linear(16, 8), r=4, alpha=8)
    >>> x = torch.randn(2, 16)
    >>> torch.equal(layer(x), layer.base(x))  # B = 0: the layer is unchanged at first
    True
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        rslora: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        _check_lora_args(r, alpha, dropout, rslora)
        _check_rank(r, base.in_features, base.out_features, "base")
        weight = base.weight
        base.requires_grad_(False)
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.rslora = r, float(alpha), rslora
        self.scaling = lora_scaling(r, alpha, rslora)
        factory = dict(dtype=weight.dtype, device=weight.device)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))  # (r, Cin)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))  # (Cout, r)
        # A as nn.Linear initialises its weight, B = 0: dW = B @ A = 0 at step 0 (Hu et al.)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha:g}, scaling={self.scaling:.4g}, rslora={self.rslora}, "
            f"merged={self.merged}"
        )

    def delta_weight(self) -> Tensor:
        """``dW = s * B @ A`` (Cout, Cin), in float32 for 16-bit weights (else their dtype)."""
        dtype = torch.promote_types(self.lora_A.dtype, torch.float32)
        return (self.lora_B.to(dtype) @ self.lora_A.to(dtype)) * self.scaling  # (Cout, Cin)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., Cin) -> (..., Cout): ``base(x) + s * B(A(dropout(x)))`` (unmerged)."""
        if x.dtype != self.lora_A.dtype:  # metadata only: no device sync
            raise TypeError(
                f"x must have the layer's dtype {self.lora_A.dtype}, got {x.dtype} "
                "(convert the model or the input)"
            )
        result = self.base(x)  # (..., Cout)
        if self.merged:
            return result
        low_rank = F.linear(self.dropout(x), self.lora_A)  # (..., r)
        return result + F.linear(low_rank, self.lora_B) * self.scaling  # (..., Cout)

    @torch.no_grad()
    def merge(self) -> None:
        """Write ``W + dW`` into ``base.weight`` (added in float32, rounded once).

        Raises ``RuntimeError`` if already merged, and ``ValueError`` (leaving ``W``
        untouched) if the merged weight would hold NaN or infinity.
        """
        if self.merged:
            raise RuntimeError("this LoRALinear is already merged; unmerge() it first")
        self._write_weight(+1)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``dW`` from ``base.weight`` again (``RuntimeError`` if not merged)."""
        if not self.merged:
            raise RuntimeError("this LoRALinear is not merged; there is nothing to unmerge")
        self._write_weight(-1)
        self.merged = False

    def _write_weight(self, sign: int) -> None:
        weight = self.base.weight
        delta = self.delta_weight()  # (Cout, Cin), at least float32
        updated = weight.to(delta.dtype) + sign * delta
        if not torch.isfinite(updated).all():  # peft's safe_merge: check before writing
            raise ValueError(
                "merging would put NaN or infinity into the base weight; lora_A or lora_B "
                "holds non-finite values (the weight is unchanged)"
            )
        weight.copy_(updated)


# ------------------------------------------------------------------------------- models


def _check_targets(target_modules: object) -> tuple[str, ...]:
    if isinstance(target_modules, str) or not isinstance(target_modules, Sequence):
        raise TypeError(
            "target_modules must be a list or tuple of module names such as "
            f"['q_proj', 'v_proj'], got {type(target_modules).__name__}"
        )
    if not target_modules:
        raise ValueError("target_modules must name at least one module")
    for k, name in enumerate(target_modules):
        if not isinstance(name, str) or not name:
            raise TypeError(f"target_modules[{k}] must be a non-empty str, got {name!r}")
    return tuple(target_modules)


def _find_linears(model: nn.Module, target_modules: object) -> list[tuple[str, nn.Linear]]:
    """The modules named by ``target_modules`` (a full name or its last parts, as in peft:
    ``"q_proj"`` and ``"attn.q_proj"`` both match ``blocks.0.attn.q_proj``), in model
    order. Each must be a plain ``nn.Linear`` whose weight no other module shares."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    targets = _check_targets(target_modules)
    matched: dict[str, nn.Module] = {}
    hits = dict.fromkeys(targets, 0)
    for name, module in model.named_modules():
        for target in targets:
            if name == target or name.endswith("." + target):
                matched[name] = module
                hits[target] += 1
    missing = [t for t, n in hits.items() if n == 0]
    if missing:
        linears = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"target_modules: no module named {missing[0]!r} in the model; its linear layers "
            f"are called {linears}"
        )
    owners: dict[int, list[str]] = {}
    for pname, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(pname)
    found = []
    for name, module in matched.items():
        if isinstance(module, LoRALinear):
            raise TypeError(f"target_modules: {name} already has a LoRA adapter")
        if not isinstance(module, nn.Linear):
            raise TypeError(
                f"target_modules: {name} is a {type(module).__name__}, not an nn.Linear"
            )
        shared = [n for n in owners[id(module.weight)] if n != f"{name}.weight"]
        if shared:
            raise ValueError(
                f"target_modules: {name}.weight is tied to {shared[0]}; adapting it would "
                "change both (and merging would write into both), so leave it out"
            )
        found.append((name, module))
    return found


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _wrap_linears(
    model: nn.Module,
    found: list[tuple[str, nn.Linear]],
    make: Callable[[nn.Linear], nn.Module],
) -> list[str]:
    """Freeze every parameter of ``model``, then swap each found linear for ``make(linear)``
    (whose new parameters are the only trainable ones). Returns the swapped names."""
    model.requires_grad_(False)
    for name, linear in found:
        _replace(model, name, make(linear))
    return [name for name, _ in found]


def apply_lora(
    model: nn.Module,
    target_modules: Sequence[str],
    r: int,
    alpha: float,
    *,
    dropout: float = 0.0,
    rslora: bool = False,
) -> list[str]:
    """Give every linear layer named in ``target_modules`` a LoRA adapter; freeze the rest.

    The model is changed in place; the names of the wrapped layers are returned (in model
    order). Afterwards only the ``lora_A`` / ``lora_B`` parameters require gradients, so
    ``torch.optim.AdamW(p for p in model.parameters() if p.requires_grad)`` trains the
    adapters alone. Raises before changing anything if a target is missing, is not an
    ``nn.Linear``, already has an adapter, has a weight tied to another module (a tied
    ``lm_head``), or is narrower than ``r``.

    >>> from llmfoundations.models import DecoderLM, ModelConfig
    >>> model = DecoderLM(ModelConfig.llama(vocab_size=100, d_model=32, n_layers=2))
    >>> apply_lora(model, ["q_proj", "v_proj"], r=4, alpha=8)
    ['blocks.0.attn.q_proj', 'blocks.0.attn.v_proj', 'blocks.1.attn.q_proj', 'blocks.1.attn.v_proj']
    """
    _check_lora_args(r, alpha, dropout, rslora)
    found = _find_linears(model, target_modules)
    for name, linear in found:
        _check_rank(r, linear.in_features, linear.out_features, name)
    return _wrap_linears(
        model, found, lambda linear: LoRALinear(linear, r, alpha, dropout, rslora=rslora)
    )


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` (and ``QLoRALinear``) of ``model``, by module name."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers; call apply_lora first")
    params = {}
    for name, layer in layers.items():
        params[f"{name}.lora_A"] = layer.lora_A
        params[f"{name}.lora_B"] = layer.lora_B
    return params


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters alone: ``{"<layer>.lora_A": (r, Cin), "<layer>.lora_B": (Cout, r)}``,
    detached copies (save with ``safetensors.torch.save_file`` or ``torch.save``)."""
    return {k: p.detach().clone() for k, p in _adapter_parameters(model).items()}


def load_lora_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy adapters saved by ``lora_state_dict`` into a model prepared with the same
    ``apply_lora`` call (same targets and rank). Keys and shapes must match exactly; values
    are cast to each layer's dtype and device. The layers must be unmerged."""
    params = _adapter_parameters(model)
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict of tensors, got {type(state).__name__}")
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"state does not fit the model's LoRA layers: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]} (was it saved from the same apply_lora targets?)"
        )
    for key, param in params.items():
        value = state[key]
        if not isinstance(value, Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"state[{key!r}] must be a floating-point tensor, got {kind}")
        if value.shape != param.shape:
            raise ValueError(
                f"state[{key!r}] has shape {tuple(value.shape)}, the model's is "
                f"{tuple(param.shape)} (a different rank?)"
            )
    merged = [name for name, layer in lora_layers(model).items() if layer.merged]
    if merged:
        raise ValueError(f"model: {merged[0]} is merged; unmerge() it before loading adapters")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key])
