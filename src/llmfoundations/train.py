"""Training-loop pieces for language models: loss, optimizer, schedule, clipping, checkpoints.

A language model is trained to predict token ``t + 1`` from tokens ``0..t``. The loop
below is the standard recipe of GPT-style models, written out so each step is visible:

- ``lm_loss``: mean cross-entropy of the next-token predictions (positions whose target is
  ``ignore_index`` are skipped, e.g. padding or the prompt part of a chat example).
- ``make_optimizer``: AdamW (Loshchilov & Hutter, 2019, https://arxiv.org/abs/1711.05101)
  with weight decay only on matrices (weights of linear layers and embeddings, anything
  with >= 2 dimensions); biases and normalization gains are not decayed, because
  shrinking them toward zero does not limit the model's capacity, it only shifts it.
- ``cosine_schedule`` / ``make_scheduler``: linear warm-up, then a cosine decay to
  ``min_lr_ratio`` of the peak learning rate.
- ``clip_gradients``: rescale all gradients together when their global norm is too big.
- ``save_checkpoint`` / ``load_checkpoint``: ``torch.save`` of plain state dicts, loaded
  back with ``torch.load(weights_only=True)`` (no arbitrary code runs on load).
- ``train_lm``: the loop itself, returning a ``History`` of plain lists for plotting.
- ``evaluate`` / ``perplexity``: token-weighted loss on held-out batches and its exp.

Left out: mixed precision and gradient scaling, gradient accumulation, distributed data
parallelism, resuming a schedule mid-run, early stopping, and logging to external
services. The loop runs on one device and keeps everything in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from tqdm.auto import tqdm

from llmfoundations._validate import (
    check_choice,
    check_int,
    check_positive,
    check_same_device,
    check_tensor,
)

__all__ = [
    "lm_loss",
    "cosine_schedule",
    "make_scheduler",
    "make_optimizer",
    "clip_gradients",
    "save_checkpoint",
    "load_checkpoint",
    "TrainConfig",
    "History",
    "train_lm",
    "evaluate",
    "perplexity",
]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_CHECKPOINT_FORMAT = "llmfoundations.checkpoint"



# --------------------------------------------------------------------------------- loss


def lm_loss(
    logits: Tensor, targets: Tensor, ignore_index: int = -100, reduction: str = "mean"
) -> Tensor:
    """Next-token cross-entropy: ``logits`` (B, T, V) against ``targets`` (B, T).

    ``targets[b, t]`` is the token that should follow position ``t`` (the batch makers
    in ``llmfoundations.data`` already shift by one). With ``reduction="mean"`` the loss
    is averaged over the positions whose target is not ``ignore_index``; ``"sum"`` adds
    them up (``evaluate`` uses it to weight batches by their token count). Raises if every
    target is ignored, rather than returning NaN.

    >>> lm_loss(torch.zeros(1, 2, 4), torch.tensor([[1, 3]]))  # uniform over 4 -> ln 4
    tensor(1.3863)
    """
    check_tensor("logits", logits, ndim=3, floating=True, nonempty=True)
    check_tensor("targets", targets, ndim=2, dtype=_INT_DTYPES)
    check_same_device(logits=logits, targets=targets)
    check_choice("reduction", reduction, ("mean", "sum"))
    if logits.shape[:2] != targets.shape:
        raise ValueError(
            f"logits (B, T, V) and targets (B, T) must agree on B and T, got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if reduction == "mean" and not bool((targets != ignore_index).any()):
        raise ValueError(f"targets: every position equals ignore_index={ignore_index}")
    return F.cross_entropy(
        rearrange(logits, "b t v -> (b t) v").float(),
        rearrange(targets, "b t -> (b t)").long(),
        ignore_index=ignore_index,
        reduction=reduction,
    )


# ------------------------------------------------------------------- optimizer/schedule


def cosine_schedule(
    step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1
) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up, then cosine decay.

    - ``step < warmup_steps``: ``(step + 1) / warmup_steps`` (so step 0 already moves);
    - then, with ``p = (step - warmup_steps) / (total_steps - warmup_steps)``:
      ``min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * p)) / 2``, from 1 down to
      ``min_lr_ratio`` at ``step == total_steps``;
    - after ``total_steps``: ``min_lr_ratio``.

    >>> [round(cosine_schedule(s, 2, 10), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.55, 0.1]
    """
    check_int("step", step, minimum=0)
    check_int("warmup_steps", warmup_steps, minimum=0)
    check_int("total_steps", total_steps, minimum=1)
    if warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})"
        )
    if isinstance(min_lr_ratio, bool) or not isinstance(min_lr_ratio, (int, float)):
        raise TypeError(f"min_lr_ratio must be a number, got {type(min_lr_ratio).__name__}")
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= total_steps:
        return float(min_lr_ratio)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that multiplies each group's learning rate by ``cosine_schedule``.

    Call ``scheduler.step()`` after every ``optimizer.step()``.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch Optimizer, got {type(optimizer).__name__}")
    cosine_schedule(0, warmup_steps, total_steps, min_lr_ratio)  # validates the arguments
    schedule = partial(
        cosine_schedule,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        min_lr_ratio=min_lr_ratio,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW with two parameter groups: decay for >= 2-D parameters, none for the rest.

    Matrices (linear weights, embedding tables) are decayed; vectors (biases, LayerNorm /
    RMSNorm gains) are not. Frozen parameters (``requires_grad=False``) are left out, so
    the same call serves fine-tuning. Group 0 is the decayed group.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_positive("lr", lr)
    check_positive("weight_decay", weight_decay, allow_zero=True)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (all have requires_grad=False)")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def clip_gradients(parameters: nn.Module | Iterable[Tensor], max_norm: float | None) -> float:
    """Scale all gradients by one factor so their global L2 norm is at most ``max_norm``.

    Returns the norm *before* clipping (worth plotting: spikes announce instabilities).
    ``max_norm=None`` only measures. Uses ``torch.nn.utils.clip_grad_norm_``.
    """
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    grads = [p for p in parameters if p.grad is not None]
    if max_norm is None:
        max_norm = math.inf
    else:
        check_positive("max_norm", max_norm)
    if not grads:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))


# -------------------------------------------------------------------------- checkpoints


def _plain(config: object) -> Any:
    if config is None or isinstance(config, dict):
        return config
    if is_dataclass(config) and not isinstance(config, type):
        return asdict(config)
    raise TypeError(f"config must be a dataclass instance, a dict or None, got {type(config)}")


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    config: object = None,
    extra: dict | None = None,
) -> None:
    """Save model (and optimizer) state, the step, and a config to one file.

    The file holds only tensors and plain Python values (a dataclass ``config`` is stored
    with ``dataclasses.asdict``), so ``load_checkpoint`` can read it with
    ``torch.load(weights_only=True)``. Shared (tied) weights stay shared.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_int("step", step, minimum=0)
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict or None, got {type(extra).__name__}")
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "version": 1,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "config": _plain(config),
        "extra": extra,
    }
    torch.save(payload, Path(path))


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> dict:
    """Load a ``save_checkpoint`` file into ``model`` (and ``optimizer``), in place.

    Returns ``{"step": ..., "config": ..., "extra": ...}``. Loading uses
    ``weights_only=True``: a file that needs arbitrary pickled objects is refused.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"path: {path} is not a checkpoint written by save_checkpoint")
    model.load_state_dict(payload["model"], strict=strict)
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise ValueError(f"optimizer: the checkpoint {path} holds no optimizer state")
        optimizer.load_state_dict(payload["optimizer"])
    return {"step": payload["step"], "config": payload["config"], "extra": payload["extra"]}


# ----------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of ``train_lm`` (frozen: ``dataclasses.replace(config, steps=200)``).

    ``batch_size``, ``seq_len`` and ``seed`` also shape the random windows when
    ``train_lm`` is given a token stream. ``grad_clip=None`` measures the gradient norm
    without clipping. ``eval_every=0`` evaluates only once, after the last step.
    ``aux_loss_coef`` multiplies a model's auxiliary loss (a mixture of experts'
    load-balancing loss, summed over its MoE layers) before it is added to the
    language-model loss; 0.01 is the Switch Transformer's coefficient.
    """

    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    eval_every: int = 0
    betas: tuple[float, float] = (0.9, 0.95)
    seed: int = 0
    aux_loss_coef: float = 0.01

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "eval_every"):
            check_int(name, getattr(self, name), minimum=0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__}")
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("aux_loss_coef", self.aux_loss_coef, allow_zero=True)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        cosine_schedule(0, self.warmup_steps, self.steps, self.min_lr_ratio)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class History:
    """What ``train_lm`` recorded, as plain lists (one entry per step unless noted).

    ``loss`` is the language-modelling loss; ``aux_loss`` (only for models that return one,
    e.g. a mixture of experts' load-balancing loss) was added to it for the update.
    ``eval_step``/``eval_loss`` hold one entry per evaluation.
    """

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    aux_loss: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)


def _unpack(output: object) -> tuple[Tensor, Tensor | None]:
    """Logits and optional auxiliary loss from a model output (a tensor or ``.logits``)."""
    if isinstance(output, Tensor):
        return output, None
    logits = getattr(output, "logits", None)
    if not isinstance(logits, Tensor):
        raise TypeError(
            "model(x) must return a logits tensor or an object with a .logits tensor, "
            f"got {type(output).__name__}"
        )
    return logits, getattr(output, "aux_loss", None)


def _batch_source(data: object, config: TrainConfig) -> Callable[[], tuple[Tensor, Tensor]]:
    """Turn ``data`` (token stream, batch function or iterable of batches) into a getter."""
    from llmfoundations.data import batches  # local import: data does not need train

    if isinstance(data, Tensor) or (isinstance(data, list) and data and isinstance(data[0], int)):
        it: Iterator = batches(data, config.batch_size, config.seq_len, seed=config.seed)
        return lambda: next(it)
    if callable(data):
        return data
    if isinstance(data, Iterable):
        it = iter(data)

        def get() -> tuple[Tensor, Tensor]:
            try:
                return next(it)
            except StopIteration:
                raise ValueError(
                    f"data ran out of batches before config.steps={config.steps}"
                ) from None

        return get
    raise TypeError(
        "data must be a 1-D tensor (or list) of token ids, a function returning (x, y), "
        f"or an iterable of (x, y) batches; got {type(data).__name__}"
    )


def train_lm(
    model: nn.Module,
    data: Tensor | list[int] | Callable[[], tuple[Tensor, Tensor]] | Iterable,
    config: TrainConfig,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    eval_fn: Callable[[nn.Module], float] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> History:
    """Train ``model`` for ``config.steps`` steps of next-token prediction.

    ``data`` is one of: a 1-D tensor (or list) of token ids, cut into random windows with
    ``data.batches(config.batch_size, config.seq_len, config.seed)``; a function that
    returns a batch ``(x, y)``; or an iterable of batches. ``model(x)`` may return the
    logits (B, T, V) or an object with ``.logits`` and optionally ``.aux_loss`` (added to
    the loss times ``config.aux_loss_coef``; ``History.aux_loss`` records it unscaled). ``loss_fn(logits, y)`` replaces ``lm_loss``. ``eval_fn(model)`` returns a
    float; it runs in eval mode without gradients every ``config.eval_every`` steps and
    after the last step. ``optimizer`` defaults to ``make_optimizer`` (AdamW, decay on
    >= 2-D parameters); the schedule is ``make_scheduler`` from step 0. ``device``
    defaults to where the model's parameters are; batches are moved there.

    Seeds torch's global generator with ``config.seed`` first (dropout, sampling), so a
    run is repeatable. Raises ``FloatingPointError`` as soon as the loss is not finite.
    Returns with the model in eval mode (ready to generate).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    torch.manual_seed(config.seed)
    if device is None:
        device = next(model.parameters()).device
    model.to(device)
    model.train()
    if optimizer is None:
        optimizer = make_optimizer(model, config.lr, config.weight_decay, config.betas)
    scheduler = make_scheduler(optimizer, config.warmup_steps, config.steps, config.min_lr_ratio)
    next_batch = _batch_source(data, config)
    compute_loss = loss_fn if loss_fn is not None else lm_loss
    history = History()

    bar = tqdm(range(config.steps), desc="training", disable=not progress)
    for step in bar:
        x, y = next_batch()
        x, y = x.to(device), y.to(device)  # (B, T) each
        logits, aux_loss = _unpack(model(x))  # (B, T, V)
        loss = compute_loss(logits, y)
        total = loss if aux_loss is None else loss + config.aux_loss_coef * aux_loss
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"loss became {total.item()} at step {step}; try a lower lr or grad_clip"
            )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = clip_gradients(model, config.grad_clip)
        history.lr.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()

        history.step.append(step)
        history.loss.append(loss.item())
        history.grad_norm.append(grad_norm)
        if aux_loss is not None:
            history.aux_loss.append(
                float(aux_loss.detach()) if isinstance(aux_loss, Tensor) else float(aux_loss)
            )
        last = step == config.steps - 1
        due = config.eval_every > 0 and (step + 1) % config.eval_every == 0
        if eval_fn is not None and (last or due):
            model.eval()
            with torch.no_grad():
                history.eval_loss.append(float(eval_fn(model)))
            model.train()
            history.eval_step.append(step)
        if progress and (step % 10 == 0 or last):
            bar.set_postfix(loss=f"{history.loss[-1]:.3f}")
    model.eval()
    return history


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    ignore_index: int = -100,
) -> float:
    """Mean next-token loss over ``batches``, weighted by the number of scored tokens.

    Batches of different sizes (the short last batch of ``data.sequential_batches``) or
    with ignored positions count by tokens, not by batch. Runs in eval mode and restores
    the previous mode. ``max_batches`` caps an endless iterator (``data.batches``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if max_batches is not None:
        check_int("max_batches", max_batches, minimum=1)
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i, (x, y) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            logits, _ = _unpack(model(x))
            total += lm_loss(logits, y, ignore_index, reduction="sum").item()
            count += int((y != ignore_index).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("batches: no token was scored (empty, or every target ignored)")
    return total / count


def perplexity(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    **kwargs: Any,
) -> float:
    """``exp(evaluate(model, batches))``: the effective number of equally likely next tokens.

    A model that spreads its probability uniformly over ``V`` tokens has perplexity ``V``.
    """
    return math.exp(evaluate(model, batches, **kwargs))
