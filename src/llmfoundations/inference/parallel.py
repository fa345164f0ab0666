"""Data, sharded-data, tensor and pipeline parallelism on ``torch.distributed``, on CPU.

When one device is not enough, the work is split across ``W`` processes ("ranks") that
talk through *collectives* (Li et al., 2020, https://arxiv.org/abs/2006.15704; Shoeybi et
al., 2019, https://arxiv.org/abs/1909.08053; Huang et al., 2019,
https://arxiv.org/abs/1811.06965; Zhao et al., 2023, https://arxiv.org/abs/2304.11277).
Each way of splitting is checked against one process doing all of the work:

- **data parallel**: every rank holds the whole model and a ``1/W`` shard of the batch;
  after ``backward`` the gradients are averaged with one ``all_reduce``. Equal shards and
  a mean loss make the average *equal* to the full-batch gradient.
  ``data_parallel_gradients`` does it by hand, ``ddp_gradients`` with
  ``DistributedDataParallel`` (which overlaps the reduction with ``backward`` in buckets).
- **sharded data parallel** (ZeRO-3 / FSDP): as above, but each rank *stores* only ``1/W``
  of every parameter, gradient and optimizer state, gathering a layer's weights just
  before it runs. ``fsdp_step`` uses FSDP2's ``fully_shard``.
- **tensor parallel** (Megatron-LM): one layer's matrices are split. An MLP splits its
  first linear by output columns and its second by input rows, so each rank computes
  ``down_r(act(up_r(x)))`` and one ``all_reduce`` sums the partial outputs;
  attention splits its heads the same way. ``TensorParallelMLP`` and
  ``TensorParallelAttention`` do it by hand; ``tensor_parallel_mlp_dtensor`` and
  ``tensor_parallel_attention_dtensor`` with ``torch.distributed.tensor.parallel``
  (``ColwiseParallel`` / ``RowwiseParallel``).
- **pipeline parallel** (GPipe): rank ``r`` holds the ``r``-th group of layers; the batch
  is cut into microbatches that flow forward rank to rank and whose gradients flow back.
  ``pipeline_by_hand`` uses ``send`` / ``recv``; ``pipeline_gpipe`` the
  ``torch.distributed.pipelining`` ``ScheduleGPipe``.

Running workers. ``run_workers(fn, world_size, *args)`` starts ``world_size`` processes,
joins them into a gloo process group on 127.0.0.1 and returns each rank's
``fn(rank, world_size, *args)``. It *spawns* fresh interpreters, which import ``fn`` by
name: a function defined in a notebook cell, in ``__main__`` or as a lambda cannot be
found there (``Can't get attribute 'f' on <module '__main__'>``, jupyter/notebook#6258),
so ``run_workers`` refuses it up front; put workers in a module.

The same worker functions run under ``torchrun``, which is what one moves to on several
machines (one ``torchrun`` on each node, each with ``--nnodes N --rdzv-backend c10d
--rdzv-endpoint host:port``; the default ``static`` rendezvous needs a distinct
``--node-rank`` per node instead)::

    torchrun --standalone --nproc-per-node 2 -m llmfoundations.inference.parallel data
    torchrun --standalone --nproc-per-node 2 -m llmfoundations.inference.parallel all

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``main``
reads them, runs the named demo (``data``, ``fsdp``, ``tensor``, ``pipeline`` or ``all``)
and rank 0 prints the largest difference from a one-process run of the same numbers
(``--standalone``: a rendezvous on a free local port, for one machine; any number of
processes per node works).

Left out: GPUs and NCCL (``backend="nccl"``, ``torch.cuda.set_device(LOCAL_RANK)`` in each
process, and the models and batches moved to that device; see ``main``),
sequence/context parallelism, expert parallelism, ZeRO-1/2, mixed precision and gradient
bucketing by hand, interleaved and 1F1B pipeline schedules, activation checkpointing, and
fault tolerance (``torchrun --max-restarts``).
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from llmfoundations._validate import check_divisible, check_int, check_tensor
from llmfoundations.attention import MultiHeadAttention
from llmfoundations.layers import FeedForward, SwiGLU
from llmfoundations.positional import apply_rope

__all__ = [
    "run_workers",
    "shard_batch",
    "average_gradients",
    "data_parallel_gradients",
    "ddp_gradients",
    "fsdp_step",
    "TensorParallelMLP",
    "TensorParallelAttention",
    "tensor_parallel_mlp",
    "tensor_parallel_attention",
    "tensor_parallel_mlp_dtensor",
    "tensor_parallel_attention_dtensor",
    "fully_shard_function",
    "pipeline_by_hand",
    "pipeline_gpipe",
    "DEMOS",
    "main",
]

# ------------------------------------------------------------------------ running workers


def _check_importable(fn: object) -> None:
    """Raise unless a spawned process can import ``fn`` by its module and name."""
    if not callable(fn):
        raise TypeError(f"fn must be a function, got {type(fn).__name__}")
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if module is None or qualname is None:
        raise TypeError(f"fn must be a module-level function, got {fn!r}")
    trap = (
        "run_workers spawns fresh Python processes that import fn by name, so fn must be a "
        "module-level function of an importable module (a .py file in a package). A function "
        "defined in a notebook cell, in a script run as __main__, a lambda or a nested "
        "function cannot be found there. Move it into a module and import it."
    )
    if module == "__main__":
        raise ValueError(f"fn {qualname!r} is defined in __main__ (a notebook or script). {trap}")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise ValueError(f"fn {qualname!r} is a lambda or a nested function. {trap}")
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        raise ValueError(f"fn {module}.{qualname} cannot be imported. {trap}") from None
    if found is not fn:
        raise ValueError(f"{module}.{qualname} is not fn (it was redefined?). {trap}")


def _worker_entry(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    args: tuple[Any, ...],
    port: int,
    out_dir: str,
    timeout_s: float,
) -> None:
    """What each spawned process runs: join the group, call ``fn``, save its result."""
    torch.set_num_threads(1)  # W ranks share the machine's cores
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=timeout_s))
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        # The time tells the parent which rank failed first: the others often fail only
        # afterwards, in a collective whose peer has gone away.
        (Path(out_dir) / f"rank{rank}.err").write_text(f"{time.time()!r}\n{traceback.format_exc()}")
        raise
    finally:
        dist.destroy_process_group()


def _first_failure(out_dir: Path, rank: int, message: str) -> tuple[int, str]:
    """The rank whose error file is the oldest and its traceback (else ``rank``, ``message``)."""
    failures = []
    for path in out_dir.glob("rank*.err"):
        when, _, trace = path.read_text().partition("\n")
        failures.append((float(when), int(path.stem.removeprefix("rank")), trace))
    if not failures:
        return rank, message
    _, first, trace = min(failures)
    return first, trace


def run_workers(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120.0
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes; return the results.

    Each process runs one thread, joins a gloo process group whose rendezvous is a
    ``TCPStore`` served by this process on a free port of 127.0.0.1 (the OS picks it, so
    runs side by side never collide), and saves ``fn``'s return value (anything
    ``torch.save`` takes), which comes back as ``results[rank]``.

    Raises ``RuntimeError`` with the rank's traceback if a worker fails (the others are
    stopped), ``TimeoutError`` after ``timeout`` seconds. ``fn`` must be importable by name
    (see the module docstring); ``args`` are pickled.

    Real launchers (``torchrun``, SLURM) add what this leaves out: several nodes, restarts
    on failure, and one process per GPU with ``backend="nccl"``.
    """
    check_int("world_size", world_size, minimum=1)
    _check_importable(fn)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not (0 < timeout < float("inf")):  # also refuses nan
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    import torch.multiprocessing as mp

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    with tempfile.TemporaryDirectory(prefix="llmf-parallel-") as out_dir:
        context = mp.start_processes(
            _worker_entry,
            args=(fn, world_size, args, store.port, out_dir, float(timeout)),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"run_workers: {fn.__qualname__} on {world_size} ranks did not finish "
                        f"within timeout={timeout} s (a rank waiting in a collective that "
                        "another rank never reaches hangs like this)"
                    )
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
            rank, trace = _first_failure(Path(out_dir), err.error_index, str(err))
            raise RuntimeError(
                f"rank {rank} of {world_size} failed in {fn.__qualname__} (the first rank to "
                f"fail; the others were stopped):\n{trace}"
            ) from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join()
        # (weights_only=False: not a checkpoint from elsewhere but what this call's own workers
        # saved, in a directory only this user can open; ``fn`` may return any object.)
        return [
            torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False)
            for r in range(world_size)
        ]


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (0 and 1 outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# -------------------------------------------------------------------------- data parallel


def shard_batch(x: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s contiguous ``1/world_size`` of the batch (dim 0), (B, ...) -> (B/W, ...).

    Equal shards are what make averaged gradients equal the full-batch gradient; a real
    ``DistributedSampler`` pads or drops the remainder instead of refusing it.
    """
    check_tensor("x", x, min_ndim=1)
    check_int("world_size", world_size, minimum=1)
    check_int("rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size ({world_size}), got {rank}")
    check_divisible("batch size", x.shape[0], "world_size", world_size)
    return x.chunk(world_size)[rank]


def average_gradients(model: nn.Module) -> None:
    """Replace every ``.grad`` by its mean over ranks: one ``all_reduce`` per parameter.

    DDP does the same, but in ~25 MB buckets launched while ``backward`` is still running,
    so communication hides behind computation. Outside a process group there is one rank,
    whose gradients are already their mean: nothing to do.
    """
    _, world_size = _rank_and_world()
    if not dist.is_initialized():
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)  # (same shape as p)
            p.grad /= world_size


def _lm_loss(model: nn.Module, ids: Tensor) -> Tensor:
    """Mean next-token loss of a course ``DecoderLM`` on ``ids`` (B, T)."""
    return model(ids, labels=ids).loss


def _grads(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def data_parallel_gradients(
    rank: int, world_size: int, model: nn.Module, ids: Tensor
) -> dict[str, Tensor]:
    """Worker: gradients of the LM loss by data parallelism written by hand.

    Each rank runs forward and backward on its shard of ``ids`` (B, T), then
    ``average_gradients``. Every rank ends with the full-batch gradients.
    """
    loss = _lm_loss(model, shard_batch(ids, rank, world_size))
    loss.backward()
    average_gradients(model)
    return _grads(model)


def ddp_gradients(
    rank: int, world_size: int, model: nn.Module, ids: Tensor
) -> dict[str, Tensor]:
    """Worker: the same gradients with ``torch.nn.parallel.DistributedDataParallel``.

    DDP broadcasts rank 0's weights at construction and averages gradients in buckets
    during ``backward``.
    """
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model)
    loss = _lm_loss(ddp, shard_batch(ids, rank, world_size))
    loss.backward()
    return _grads(model)


def fully_shard_function() -> Callable[..., Any]:
    """FSDP2's ``fully_shard``: public in ``torch.distributed.fsdp`` from torch 2.6, in
    ``torch.distributed._composable.fsdp`` in 2.4 and 2.5 (the course's floor)."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def fsdp_step(
    rank: int, world_size: int, model: nn.Module, ids: Tensor, lr: float = 0.1
) -> dict[str, Tensor]:
    """Worker: one SGD step with FSDP2 (``fully_shard``); returns the updated full weights.

    ``fully_shard`` on each block and then on the root turns every parameter into a DTensor
    sharded on dim 0 (each rank stores ``1/W`` of its rows); a block's weights are
    all-gathered just before it runs and freed after, and gradients are reduce-scattered
    (averaged), so each rank updates only its own rows. ``full_tensor()`` gathers them back
    for the comparison. Left out: mixed precision, CPU offload, prefetching.
    """
    from torch.distributed.device_mesh import init_device_mesh

    fully_shard = fully_shard_function()
    mesh = init_device_mesh("cpu", (world_size,))
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss = _lm_loss(model, shard_batch(ids, rank, world_size))
    loss.backward()
    optimizer.step()
    return {n: p.detach().full_tensor().clone() for n, p in model.named_parameters()}


# ------------------------------------------------------------------------ tensor parallel


class _CopyToTensorParallel(torch.autograd.Function):
    """Megatron's ``f``: identity forward; backward sums the input gradient over ranks.

    Every rank uses the same ``x`` but only for its slice of the layer, so each holds a
    partial ``dL/dx``; the true one is their sum.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        if dist.is_initialized():
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class _ReduceFromTensorParallel(torch.autograd.Function):
    """Megatron's ``g``: forward sums partial outputs over ranks; identity backward."""

    @staticmethod
    def forward(ctx: Any, partial: Tensor) -> Tensor:
        out = partial.clone()
        if dist.is_initialized():
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


def _slice_linear(
    linear: nn.Linear, rows: slice | None = None, cols: slice | None = None, bias: bool = True
) -> nn.Linear:
    """A new ``nn.Linear`` holding a copy of ``linear.weight[rows, cols]`` (and its bias rows)."""
    weight = linear.weight.detach()[rows or slice(None), cols or slice(None)]  # (out', in')
    keep_bias = bias and linear.bias is not None
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=keep_bias)
    with torch.no_grad():
        out.weight.copy_(weight)
        if keep_bias:
            out.bias.copy_(linear.bias.detach()[rows or slice(None)])
    return out


def _check_features(x: Tensor, d_model: int, ndim: int | None = None) -> None:
    """``x`` a non-empty float tensor (``ndim`` dimensions if given) of ``d_model`` features."""
    check_tensor("x", x, ndim=ndim, min_ndim=1, floating=True, nonempty=True)
    if x.shape[-1] != d_model:
        raise ValueError(f"x must have d_model = {d_model} features (last dimension), got shape {tuple(x.shape)}")


def _check_head_split(attn: object, rank: int, world_size: int) -> None:
    """``attn`` a ``MultiHeadAttention`` whose heads split evenly over ``world_size`` ranks,
    without dropout (each rank would drop its own heads' weights at random: not what one
    process does)."""
    if not isinstance(attn, MultiHeadAttention):
        raise TypeError(f"attn must be a MultiHeadAttention, got {type(attn).__name__}")
    _check_rank(rank, world_size)
    check_divisible("n_heads", attn.n_heads, "world_size", world_size)
    check_divisible("n_kv_heads", attn.n_kv_heads, "world_size", world_size)
    if attn.dropout > 0:
        raise ValueError(
            f"tensor-parallel attention applies no attention dropout, got attn.dropout = "
            f"{attn.dropout} (build the MultiHeadAttention with dropout=0)"
        )


def _check_rank(rank: int, world_size: int) -> None:
    check_int("world_size", world_size, minimum=1)
    check_int("rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size ({world_size}), got {rank}")


class TensorParallelMLP(nn.Module):
    """Rank ``rank``'s share of a ``FeedForward`` or ``SwiGLU``: column- then row-parallel.

    ``up_proj`` (and ``gate_proj``) keep the output features ``[r F/W, (r+1) F/W)``, which
    the elementwise activation acts on independently; ``down_proj`` keeps the matching
    input columns, so its output is a *partial sum*: one ``all_reduce`` adds the ranks' parts
    (then the bias, held whole by every rank). Backward needs one more ``all_reduce``, for
    ``dL/dx``. Each rank stores ``1/W`` of the weights.
    """

    def __init__(self, mlp: FeedForward | SwiGLU, rank: int, world_size: int) -> None:
        super().__init__()
        if not isinstance(mlp, (FeedForward, SwiGLU)):
            raise TypeError(f"mlp must be a FeedForward or SwiGLU, got {type(mlp).__name__}")
        _check_rank(rank, world_size)
        check_divisible("d_ff", mlp.d_ff, "world_size", world_size)
        per = mlp.d_ff // world_size
        cols = slice(rank * per, (rank + 1) * per)
        self.d_model, self.rank, self.world_size = mlp.d_model, rank, world_size
        self.activation = getattr(mlp, "activation", "swiglu")
        self.up_proj = _slice_linear(mlp.up_proj, rows=cols)  # C -> F/W
        self.gate_proj = _slice_linear(mlp.gate_proj, rows=cols) if isinstance(mlp, SwiGLU) else None
        self.down_proj = _slice_linear(mlp.down_proj, cols=cols, bias=False)  # F/W -> C
        down_bias = mlp.down_proj.bias
        self.down_bias = None if down_bias is None else nn.Parameter(down_bias.detach().clone())

    def _hidden(self, x: Tensor) -> Tensor:
        if self.gate_proj is not None:
            return F.silu(self.gate_proj(x)) * self.up_proj(x)
        h = self.up_proj(x)  # (..., F/W)
        if self.activation == "relu":
            return F.relu(h)
        return F.gelu(h, approximate="tanh" if self.activation == "gelu_tanh" else "none")

    def forward(self, x: Tensor) -> Tensor:
        _check_features(x, self.d_model)
        x = _CopyToTensorParallel.apply(x)
        partial = self.down_proj(self._hidden(x))  # (..., C), this rank's share of the sum
        out = _ReduceFromTensorParallel.apply(partial)  # (..., C)
        return out if self.down_bias is None else out + self.down_bias


class TensorParallelAttention(nn.Module):
    """Rank ``rank``'s heads of a causal self-attention ``MultiHeadAttention``.

    Heads are independent, so ``q/k/v_proj`` keep the rows of heads ``[r H/W, (r+1) H/W)``
    (and the matching key/value heads under grouped-query attention), and ``o_proj`` keeps
    the matching input columns: again one ``all_reduce`` of partial outputs. Needs ``H``
    and ``Hkv`` divisible by ``W``. Plain causal self-attention only (no padding mask, no
    KV cache, no cross-attention, no dropout).
    """

    def __init__(self, attn: MultiHeadAttention, rank: int, world_size: int) -> None:
        super().__init__()
        _check_head_split(attn, rank, world_size)
        d = attn.head_dim
        self.n_heads, self.n_kv_heads = attn.n_heads // world_size, attn.n_kv_heads // world_size
        self.d_model, self.head_dim, self.causal = attn.d_model, d, attn.causal
        self.rope_theta, self.rope_interleaved = attn.rope_theta, attn.rope_interleaved
        q_rows = slice(rank * self.n_heads * d, (rank + 1) * self.n_heads * d)
        kv_rows = slice(rank * self.n_kv_heads * d, (rank + 1) * self.n_kv_heads * d)
        self.q_proj = _slice_linear(attn.q_proj, rows=q_rows)  # C -> H/W * D
        self.k_proj = _slice_linear(attn.k_proj, rows=kv_rows)  # C -> Hkv/W * D
        self.v_proj = _slice_linear(attn.v_proj, rows=kv_rows)
        self.o_proj = _slice_linear(attn.o_proj, cols=q_rows, bias=False)  # H/W * D -> C
        o_bias = attn.o_proj.bias
        self.o_bias = None if o_bias is None else nn.Parameter(o_bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        _check_features(x, self.d_model, ndim=3)
        x = _CopyToTensorParallel.apply(x)
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.n_heads)  # (B, H/W, T, D)
        k = rearrange(self.k_proj(x), "b t (g d) -> b g t d", g=self.n_kv_heads)  # (B, Hkv/W, T, D)
        v = rearrange(self.v_proj(x), "b t (g d) -> b g t d", g=self.n_kv_heads)
        if self.rope_theta is not None:
            positions = torch.arange(x.shape[1], device=x.device)  # (T,)
            q = apply_rope(q, positions, self.rope_theta, self.rope_interleaved)
            k = apply_rope(k, positions, self.rope_theta, self.rope_interleaved)
        groups = self.n_heads // self.n_kv_heads
        k = repeat(k, "b g t d -> b (g r) t d", r=groups)  # (B, H/W, T, D)
        v = repeat(v, "b g t d -> b (g r) t d", r=groups)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H/W, T, D)
        partial = self.o_proj(rearrange(out, "b h t d -> b t (h d)"))  # (B, T, C)
        out = _ReduceFromTensorParallel.apply(partial)
        return out if self.o_bias is None else out + self.o_bias


def _run_tensor_parallel(layer: nn.Module, x: Tensor) -> dict[str, Any]:
    x = x.detach().clone().requires_grad_(True)
    out = layer(x)
    out.square().sum().backward()  # any scalar of the output will do
    return {"out": out.detach(), "x_grad": x.grad.detach(), "grads": _grads(layer)}


def tensor_parallel_mlp(
    rank: int, world_size: int, mlp: FeedForward | SwiGLU, x: Tensor
) -> dict[str, Any]:
    """Worker: output, ``dL/dx`` and this rank's weight-slice gradients of a
    ``TensorParallelMLP``, for ``L = sum(out ** 2)``."""
    return _run_tensor_parallel(TensorParallelMLP(mlp, rank, world_size), x)


def tensor_parallel_attention(
    rank: int, world_size: int, attn: MultiHeadAttention, x: Tensor
) -> dict[str, Any]:
    """Worker: the same for a ``TensorParallelAttention``."""
    return _run_tensor_parallel(TensorParallelAttention(attn, rank, world_size), x)


def tensor_parallel_mlp_dtensor(
    rank: int, world_size: int, mlp: FeedForward | SwiGLU, x: Tensor
) -> dict[str, Any]:
    """Worker: the MLP split by ``torch.distributed.tensor.parallel``.

    ``ColwiseParallel`` shards ``up_proj`` (and ``gate_proj``) by rows of the weight,
    ``RowwiseParallel`` shards ``down_proj`` by columns and all-reduces its output. The
    weights become DTensors; ``grads`` are gathered whole with ``full_tensor()``.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    _check_rank(rank, world_size)
    check_divisible("d_ff", mlp.d_ff, "world_size", world_size)
    mesh = init_device_mesh("cpu", (world_size,))
    plan: dict[str, Any] = {"up_proj": ColwiseParallel(), "down_proj": RowwiseParallel()}
    if isinstance(mlp, SwiGLU):
        plan["gate_proj"] = ColwiseParallel()
    parallelize_module(mlp, mesh, plan)
    return _run_dtensor(mlp, x)


def tensor_parallel_attention_dtensor(
    rank: int, world_size: int, attn: MultiHeadAttention, x: Tensor
) -> dict[str, Any]:
    """Worker: a ``MultiHeadAttention`` split by heads with ``torch.distributed.tensor.parallel``.

    ``ColwiseParallel`` on ``q/k/v_proj`` gives each rank the rows of its heads (as
    ``TensorParallelAttention`` slices them), ``RowwiseParallel`` on ``o_proj`` the matching
    columns and an all-reduce of its output. The layer's own ``forward`` then runs on
    ``H / W`` local heads, so its head counts are set to the local ones (torchtitan does
    the same to Llama's attention). ``attn`` is changed in place.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    _check_head_split(attn, rank, world_size)
    mesh = init_device_mesh("cpu", (world_size,))
    plan = {f"{n}_proj": ColwiseParallel() for n in "qkv"} | {"o_proj": RowwiseParallel()}
    parallelize_module(attn, mesh, plan)
    attn.n_heads, attn.n_kv_heads = attn.n_heads // world_size, attn.n_kv_heads // world_size
    return _run_dtensor(attn, x)


def _run_dtensor(layer: nn.Module, x: Tensor) -> dict[str, Any]:
    result = _run_tensor_parallel(layer, x)
    if hasattr(result["out"], "wait"):  # an AsyncCollectiveTensor: wait for the all-reduce
        result["out"] = result["out"].wait()
    result["grads"] = {n: g.full_tensor() for n, g in result["grads"].items()}
    return result


# ---------------------------------------------------------------------- pipeline parallel


def _check_pipeline(
    stages: Sequence[nn.Module], world_size: int, x: Tensor, y: Tensor, n_microbatches: int
) -> None:
    if len(stages) != world_size:
        raise ValueError(f"need one stage per rank: {world_size} ranks, got {len(stages)} stages")
    check_tensor("x", x, min_ndim=1, nonempty=True)  # token ids, for a first stage that embeds
    check_tensor("y", y, min_ndim=1, floating=True, nonempty=True)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have x's batch size {x.shape[0]}, got shape {tuple(y.shape)}")
    check_int("n_microbatches", n_microbatches, minimum=1)
    check_divisible("batch size", x.shape[0], "n_microbatches", n_microbatches)


def _mse(out: Tensor, target: Tensor) -> Tensor:
    """``F.mse_loss`` without broadcasting: a ``y`` of another shape than the last stage's
    output would otherwise give a wrong loss with only a warning."""
    if out.shape != target.shape:
        raise ValueError(
            f"y's microbatches must have the last stage's output shape {tuple(out.shape)}, "
            f"got {tuple(target.shape)}"
        )
    return F.mse_loss(out, target)


def pipeline_by_hand(
    rank: int,
    world_size: int,
    stages: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    n_microbatches: int,
) -> dict[str, Any]:
    """Worker: a GPipe step written with ``send`` / ``recv``; rank ``r`` runs ``stages[r]``.

    All microbatches go forward (each rank keeps its inputs and outputs), then all go
    backward in reverse order: the last rank starts from ``mse(out, y_m) / M``, every rank
    sends ``dL/d input`` back to the previous one. Gradients accumulate over the ``M``
    microbatches into those of the mean loss on the whole batch. Every stage here keeps its
    input's shape, so a receiver knows the buffer size; real schedules send shapes first,
    and 1F1B interleaves forwards and backwards to hold fewer activations.

    Returns ``loss`` (on the last rank; ``None`` elsewhere) and this stage's ``grads``.
    """
    _check_pipeline(stages, world_size, x, y, n_microbatches)
    stage = stages[rank]
    first, last = rank == 0, rank == world_size - 1
    xs, ys = x.chunk(n_microbatches), y.chunk(n_microbatches)  # M x (B/M, ...)
    inputs: list[Tensor] = []
    outputs: list[Tensor] = []
    for m in range(n_microbatches):  # forward, microbatch after microbatch
        if first:
            inp = xs[m]
        else:
            inp = torch.empty_like(xs[m])
            dist.recv(inp, src=rank - 1)
            inp.requires_grad_(True)
        out = stage(inp)
        if not last:
            dist.send(out.detach(), dst=rank + 1)
        inputs.append(inp)
        outputs.append(out)
    total = torch.zeros(())
    for m in reversed(range(n_microbatches)):  # backward
        if last:
            loss = _mse(outputs[m], ys[m]) / n_microbatches
            loss.backward()
            total += loss.detach()
        else:
            grad = torch.empty_like(outputs[m])
            dist.recv(grad, src=rank + 1)
            outputs[m].backward(grad)
        if not first:
            dist.send(inputs[m].grad, dst=rank - 1)
    return {"loss": total if last else None, "grads": _grads(stage)}


def pipeline_gpipe(
    rank: int,
    world_size: int,
    stages: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    n_microbatches: int,
) -> dict[str, Any]:
    """Worker: the same step with ``torch.distributed.pipelining``'s ``ScheduleGPipe``.

    ``PipelineStage`` wraps this rank's module (it infers the shapes it exchanges);
    the schedule splits the batch, runs the microbatches and, with ``scale_grads=True``,
    divides the accumulated gradients by ``M``: the gradient of the mean loss.
    """
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    _check_pipeline(stages, world_size, x, y, n_microbatches)
    stage = PipelineStage(stages[rank], rank, world_size, torch.device("cpu"))
    schedule = ScheduleGPipe(stage, n_microbatches, loss_fn=_mse)
    first, last = rank == 0, rank == world_size - 1
    losses: list[Tensor] = []
    if first and last:
        schedule.step(x, target=y, losses=losses)
    elif first:
        schedule.step(x)
    elif last:
        schedule.step(target=y, losses=losses)
    else:
        schedule.step()
    loss = torch.stack(losses).mean().detach() if last else None
    return {"loss": loss, "grads": _grads(stages[rank])}


# ------------------------------------------------------------------ demos for torchrun


def _tiny_lm(world_size: int) -> tuple[nn.Module, Tensor]:
    """A tiny GPT and a batch that every rank can take an equal share of: 4 rows, or the
    least multiple of 4 that ``world_size`` divides (8 ranks: 8 rows; 3 ranks: 12)."""
    from llmfoundations.models import DecoderLM, ModelConfig

    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.gpt(vocab_size=32, d_model=16, n_layers=2, n_heads=2))
    ids = torch.randint(0, 32, (math.lcm(4, world_size), 8))  # (B, T)
    return model, ids


def _max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    if a.keys() != b.keys():
        raise RuntimeError(f"different parameters: {sorted(a)} vs {sorted(b)}")
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def demo_data(rank: int, world_size: int) -> dict[str, float]:
    """Data parallel by hand and with DDP vs one process on the whole batch."""
    model, ids = _tiny_lm(world_size)
    reference = copy.deepcopy(model)
    _lm_loss(reference, ids).backward()
    expected = _grads(reference)
    by_hand = data_parallel_gradients(rank, world_size, copy.deepcopy(model), ids)
    ddp = ddp_gradients(rank, world_size, copy.deepcopy(model), ids)
    return {"data_by_hand": _max_diff(by_hand, expected), "ddp": _max_diff(ddp, expected)}


def demo_fsdp(rank: int, world_size: int) -> dict[str, float]:
    """FSDP2, one SGD step, vs one process."""
    model, ids = _tiny_lm(world_size)
    reference = copy.deepcopy(model)
    _lm_loss(reference, ids).backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    expected = {n: p.detach() for n, p in reference.named_parameters()}
    return {"fsdp": _max_diff(fsdp_step(rank, world_size, model, ids, 0.1), expected)}


def demo_tensor(rank: int, world_size: int) -> dict[str, float]:
    """The column/row-parallel MLP and head-split attention, by hand and with DTensor, vs
    the whole layers: the largest difference of outputs and ``dL/dx``."""
    torch.manual_seed(0)
    mlp, x_mlp = FeedForward(8, 16 * world_size), torch.randn(2, 3, 8)
    d = 4 * world_size  # two heads of size 2 per rank, for any number of ranks
    attn, x_attn = MultiHeadAttention(d, n_heads=2 * world_size, rope_theta=10000.0), torch.randn(2, 3, d)
    results: dict[str, float] = {}
    for name, layer, split, x in (
        ("tensor", mlp, tensor_parallel_mlp, x_mlp),
        ("tensor_attn", attn, tensor_parallel_attention, x_attn),
        ("dtensor", mlp, tensor_parallel_mlp_dtensor, x_mlp),
        ("dtensor_attn", attn, tensor_parallel_attention_dtensor, x_attn),
    ):
        whole = _run_tensor_parallel(copy.deepcopy(layer), x)
        got = split(rank, world_size, copy.deepcopy(layer), x)
        results[name] = max(
            float((got[k] - whole[k]).abs().max()) for k in ("out", "x_grad")
        )
    return results


def demo_pipeline(rank: int, world_size: int) -> dict[str, float]:
    """GPipe by hand and with ``ScheduleGPipe`` vs one process: this rank's stage gradients."""
    torch.manual_seed(0)
    stages = [FeedForward(8, 16) for _ in range(world_size)]
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    whole = nn.Sequential(*stages)
    F.mse_loss(whole(x), y).backward()
    expected = {n.split(".", 1)[1]: g for n, g in _grads(whole).items() if n.startswith(f"{rank}.")}
    results = {}
    for name, step in (("pipeline", pipeline_by_hand), ("gpipe", pipeline_gpipe)):
        got = step(rank, world_size, copy.deepcopy(stages), x, y, n_microbatches=2)
        results[name] = _max_diff(got["grads"], expected)
    return results


def demo_all(rank: int, world_size: int) -> dict[str, float]:
    """Every demo, one after the other."""
    results: dict[str, float] = {}
    for name in ("data", "fsdp", "tensor", "pipeline"):
        results |= DEMOS[name](rank, world_size)
    return results


DEMOS: dict[str, Callable[[int, int], dict[str, float]]] = {
    "data": demo_data,
    "fsdp": demo_fsdp,
    "tensor": demo_tensor,
    "pipeline": demo_pipeline,
    "all": demo_all,
}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def _rendezvous_from_env() -> tuple[int, int, bool]:
    """``(rank, world_size, launched)`` from the variables ``torchrun`` sets, checked: a
    missing ``MASTER_ADDR`` / ``MASTER_PORT`` or a rank outside the world would otherwise
    end in torch's own error or a silent wait for ranks that never come."""
    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must be in 0 .. WORLD_SIZE - 1 = {world_size - 1}, got {rank}")
    launched = "MASTER_ADDR" in os.environ or world_size > 1
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if launched and missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} and RANK={rank} are set but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not: launch with `torchrun "
            "--standalone --nproc-per-node 2 -m llmfoundations.inference.parallel DEMO`, or "
            "unset WORLD_SIZE and RANK to run one rank"
        )
    return rank, world_size, launched


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``torchrun ... -m llmfoundations.inference.parallel DEMO``.

    Reads ``RANK`` and ``WORLD_SIZE`` (and, through ``init_method="env://"``,
    ``MASTER_ADDR`` / ``MASTER_PORT``) as ``torchrun`` sets them; rank 0 prints one line
    ``name max_abs_diff`` per check (the other ranks, on every node, print nothing).
    Without ``torchrun`` it runs as a single rank (on an in-process store, so it opens no
    port). A rank that waits more than 5 minutes for the others gives up with an error.
    Gloo on the CPU only: on GPUs one would pass ``"nccl"``, call
    ``torch.cuda.set_device(LOCAL_RANK)`` and move the models and batches to that device.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llmfoundations.inference.parallel")
    parser.add_argument("demo", choices=sorted(DEMOS))
    demo = parser.parse_args(argv).demo
    rank, world_size, launched = _rendezvous_from_env()
    torch.set_num_threads(1)
    if launched:  # a launcher set the rendezvous
        dist.init_process_group(
            "gloo", init_method="env://", rank=rank, world_size=world_size,
            timeout=timedelta(minutes=5),
        )  # fmt: skip
    else:  # one rank on its own: an in-process store, no port to collide with another run
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        results = DEMOS[demo](rank, world_size)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        for name, diff in results.items():
            print(f"{name} {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
