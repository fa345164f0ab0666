"""Timed training steps of every parallel strategy, side by side (``benchmarks/parallelism.py``).

``inference.parallel`` checks one step of each way of splitting a model;
``inference.parallel_costs`` counts what it sends. This module runs *many* steps of each,
so they can be timed, on one model: ``mlp_stack``, ``L`` feed-forward blocks
``C -> F -> C`` trained on a mean squared error with Adam. Per strategy it reports the
time of each step, the loss, the bytes of model state each rank holds (weights,
gradients, Adam's two moments) and the communication the Python API saw, and it gathers
the trained weights whole, so that they can be compared with one process doing all the
work (``train_single``).

The strategies (``STRATEGIES``), on ``W`` ranks:

- ``ddp_by_hand``: every rank holds the whole model and ``1/W`` of the batch; gradients
  are averaged with ``parallel.average_gradients`` (one ``all_reduce`` per parameter);
- ``ddp``: the same with ``DistributedDataParallel`` (bucketed, overlapped with backward);
- ``fsdp2``: ``fully_shard`` on each block, then the whole stack: each rank stores ``1/W``
  of every weight, gradient and moment;
- ``tp_by_hand``: each block as a ``parallel.TensorParallelMLP`` (column- then row-parallel);
  every rank sees the whole batch;
- ``tp_dtensor``: the same split by ``parallelize_module`` (``ColwiseParallel`` /
  ``RowwiseParallel``);
- ``pipeline_by_hand``: rank ``r`` holds the ``r``-th ``L/W`` blocks;
  ``parallel.pipeline_by_hand`` (GPipe with ``send`` / ``recv``) over ``M`` microbatches;
- ``pipeline_gpipe``: the same with ``torch.distributed.pipelining``'s ``ScheduleGPipe``.

Every strategy computes the gradient of the same full-batch mean loss, so after the same
steps the weights agree with ``train_single``'s up to float32 rounding.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from llmfoundations._validate import check_divisible, check_int, check_tensor
from llmfoundations.inference import parallel as par
from llmfoundations.inference.parallel_costs import bytes_sent, count_communication, tensor_bytes
from llmfoundations.layers import FeedForward

__all__ = [
    "STRATEGIES",
    "mlp_stack",
    "state_bytes",
    "train_single",
    "timed_steps_worker",
]

STRATEGIES = (
    "ddp_by_hand",
    "ddp",
    "fsdp2",
    "tp_by_hand",
    "tp_dtensor",
    "pipeline_by_hand",
    "pipeline_gpipe",
)


def mlp_stack(d_model: int, d_ff: int, n_layers: int, seed: int = 0) -> nn.Sequential:
    """``n_layers`` ``FeedForward(d_model, d_ff)`` blocks in a row, (..., C) -> (..., C)."""
    check_int("d_model", d_model, minimum=1)
    check_int("d_ff", d_ff, minimum=1)
    check_int("n_layers", n_layers, minimum=1)
    check_int("seed", seed)
    torch.manual_seed(seed)
    return nn.Sequential(*[FeedForward(d_model, d_ff) for _ in range(n_layers)])


def state_bytes(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this process holds of ``module``'s weights, their gradients and the optimizer's
    tensor states (a DTensor counts its local shard; scalar step counts are left out)."""
    params = list(module.parameters())
    states = [
        s
        for p in params
        for s in optimizer.state.get(p, {}).values()
        if isinstance(s, Tensor) and s.ndim > 0
    ]
    return {
        "params": sum(tensor_bytes(p.detach()) for p in params),
        "grads": sum(tensor_bytes(p.grad) for p in params if p.grad is not None),
        "optim": sum(tensor_bytes(s) for s in states),
    }


def _check_stack(model: object) -> nn.Sequential:
    if not isinstance(model, nn.Sequential) or not all(isinstance(b, FeedForward) for b in model):
        raise TypeError(
            f"model must be an nn.Sequential of FeedForward blocks (see mlp_stack), got {model!r}"
        )
    return model


def _check_data(x: Tensor, y: Tensor, d_model: int) -> None:
    check_tensor("x", x, ndim=2, floating=True, nonempty=True)
    check_tensor("y", y, ndim=2, floating=True, nonempty=True)
    if x.shape != y.shape or x.shape[1] != d_model:
        raise ValueError(
            f"x and y must both be (B, {d_model}), got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def train_single(
    model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float = 1e-3
) -> dict[str, Any]:
    """One process, the whole batch: ``steps`` Adam steps on ``mse(model(x), y)``.

    Returns ``times`` (seconds per step), ``losses`` (before each update), ``params``
    (the trained weights) and ``bytes`` (``state_bytes`` after the last step).
    ``model`` is copied, not changed.
    """
    model = copy.deepcopy(_check_stack(model))
    _check_data(x, y, model[0].d_model)
    check_int("steps", steps, minimum=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    return {
        "times": times,
        "losses": losses,
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "bytes": state_bytes(model, optimizer),
    }


# --------------------------------------------------------------------- one strategy each


def _setup(
    strategy: str,
    rank: int,
    world_size: int,
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    n_microbatches: int,
) -> tuple[nn.Module, Callable[[], float | None]]:
    """Build this rank's module and a function that runs the forward and backward of one
    step (gradients in ``.grad``, synchronised as the strategy does) and returns the loss
    this rank sees (``None`` if it sees none)."""
    model = copy.deepcopy(model)
    xs, ys = par.shard_batch(x, rank, world_size), par.shard_batch(y, rank, world_size)

    if strategy == "ddp_by_hand":

        def step() -> float:
            loss = F.mse_loss(model(xs), ys)
            loss.backward()
            par.average_gradients(model)
            return float(loss.detach())

        return model, step

    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model)

        def step() -> float:
            loss = F.mse_loss(ddp(xs), ys)
            loss.backward()
            return float(loss.detach())

        return model, step

    if strategy == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh

        mesh, fully_shard = init_device_mesh("cpu", (world_size,)), par.fully_shard_function()
        for block in model:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)

        def step() -> float:
            loss = F.mse_loss(model(xs), ys)
            loss.backward()
            return float(loss.detach())

        return model, step

    if strategy in ("tp_by_hand", "tp_dtensor"):
        if strategy == "tp_by_hand":
            split: nn.Module = nn.Sequential(
                *[par.TensorParallelMLP(b, rank, world_size) for b in model]
            )
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor.parallel import (
                ColwiseParallel,
                RowwiseParallel,
                parallelize_module,
            )

            mesh = init_device_mesh("cpu", (world_size,))
            plan: dict[str, Any] = {}
            for i in range(len(model)):
                plan[f"{i}.up_proj"], plan[f"{i}.down_proj"] = ColwiseParallel(), RowwiseParallel()
            split = parallelize_module(model, mesh, plan)

        def step() -> float:
            out = split(x)  # (B, C) on every rank
            loss = F.mse_loss(out, y)
            loss.backward()
            return float(loss.detach())

        return split, step

    # pipelines: rank r holds blocks [r L/W, (r+1) L/W)
    per = len(model) // world_size
    stages = [nn.Sequential(*model[r * per : (r + 1) * per]) for r in range(world_size)]
    last = rank == world_size - 1
    if strategy == "pipeline_by_hand":

        def step() -> float | None:
            result = par.pipeline_by_hand(rank, world_size, stages, x, y, n_microbatches)
            return float(result["loss"].detach()) if last else None

        return stages[rank], step

    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    stage = PipelineStage(stages[rank], rank, world_size, torch.device("cpu"))
    schedule = ScheduleGPipe(stage, n_microbatches, loss_fn=F.mse_loss)

    def step() -> float | None:
        losses: list[Tensor] = []
        if rank == 0 and last:
            schedule.step(x, target=y, losses=losses)
        elif rank == 0:
            schedule.step(x)
        elif last:
            schedule.step(target=y, losses=losses)
        else:
            schedule.step()
        return float(torch.stack(losses).mean().detach()) if last else None

    return stages[rank], step


def _full_params(
    strategy: str, rank: int, world_size: int, module: nn.Module, n_layers: int
) -> dict[str, Tensor]:
    """The trained weights under ``mlp_stack``'s names: this rank's part (pipelines) or
    everything (gathered: a collective, every rank must call it)."""
    if strategy in ("ddp_by_hand", "ddp"):
        return {n: p.detach().clone() for n, p in module.named_parameters()}
    if strategy in ("fsdp2", "tp_dtensor"):
        return {n: p.detach().full_tensor().clone() for n, p in module.named_parameters()}
    if strategy.startswith("pipeline"):
        first = rank * (n_layers // world_size)
        out = {}
        for n, p in module.named_parameters():
            i, rest = n.split(".", 1)
            out[f"{first + int(i)}.{rest}"] = p.detach().clone()
        return out

    def gather(t: Tensor, dim: int) -> Tensor:
        parts = [torch.empty_like(t) for _ in range(world_size)]
        dist.all_gather(parts, t.detach().contiguous())
        return torch.cat(parts, dim=dim)

    out = {}
    for i, block in enumerate(module):  # TensorParallelMLP slices back into whole layers
        out[f"{i}.up_proj.weight"] = gather(block.up_proj.weight, 0)  # (F, C)
        out[f"{i}.up_proj.bias"] = gather(block.up_proj.bias, 0)  # (F,)
        out[f"{i}.down_proj.weight"] = gather(block.down_proj.weight, 1)  # (C, F)
        out[f"{i}.down_proj.bias"] = block.down_bias.detach().clone()  # (C,), held whole
    return out


def timed_steps_worker(
    rank: int,
    world_size: int,
    strategies: Sequence[str],
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    steps: int,
    warmup: int = 2,
    lr: float = 1e-3,
    n_microbatches: int = 4,
) -> dict[str, dict[str, Any]]:
    """Worker for ``parallel.run_workers``: ``warmup + steps`` Adam steps of each strategy.

    ``model``: an ``mlp_stack``; ``x``, ``y`` (B, C): the whole batch (each strategy takes
    its share). Strategies run one after the other, each on a fresh copy of ``model``.
    For each, this rank returns ``times`` (seconds of each of the last ``steps`` steps,
    every rank starting together after a barrier), ``losses`` (the loss this rank sees at
    every step, ``None`` where it sees none: a data-parallel rank sees its shard's), ``bytes``
    (``state_bytes`` after the last step), ``sent`` (bytes sent per step by the calls the
    Python API saw, see ``parallel_costs.count_communication``: it sees the by-hand
    strategies and FSDP2, not DDP, DTensor or ``ScheduleGPipe``) and ``params`` (the trained weights, gathered whole; a pipeline rank
    returns its own blocks).
    """
    if isinstance(strategies, str) or not isinstance(strategies, Sequence):
        raise TypeError(f"strategies must be a sequence of names, got {type(strategies).__name__}")
    for s in strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}; choose from {STRATEGIES}")
    model = _check_stack(model)
    _check_data(x, y, model[0].d_model)
    check_int("steps", steps, minimum=1)
    check_int("warmup", warmup, minimum=0)
    check_int("n_microbatches", n_microbatches, minimum=1)
    check_divisible("batch size", x.shape[0], "world_size", world_size)
    if any(s.startswith("pipeline") for s in strategies):
        check_divisible("n_layers", len(model), "world_size", world_size)
        check_divisible("batch size", x.shape[0], "n_microbatches", n_microbatches)
    if any(s.startswith("tp") for s in strategies):
        check_divisible("d_ff", model[0].d_ff, "world_size", world_size)

    results: dict[str, dict[str, Any]] = {}
    for strategy in strategies:
        module, forward_backward = _setup(strategy, rank, world_size, model, x, y, n_microbatches)
        optimizer = torch.optim.Adam(module.parameters(), lr=lr)
        times: list[float] = []
        losses: list[float | None] = []
        dist.barrier()
        with count_communication() as log:
            for i in range(warmup + steps):
                start = time.perf_counter()
                optimizer.zero_grad()
                losses.append(forward_backward())
                optimizer.step()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
        results[strategy] = {
            "times": times,
            "losses": losses,
            "bytes": state_bytes(module, optimizer),
            "sent": bytes_sent(log, world_size) / (warmup + steps),
            "params": _full_params(strategy, rank, world_size, module, len(model)),
        }
        dist.barrier()
    return results
