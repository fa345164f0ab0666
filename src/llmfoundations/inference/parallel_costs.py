"""What each way of splitting a model costs: memory per rank, bytes sent, pipeline bubbles.

``inference.parallel`` shows that data, sharded, tensor and pipeline parallelism give the
numbers one process would; this module measures what they cost, as exact integers:

- ``count_communication`` records every collective and point-to-point call made through
  the Python API (``torch.distributed.<op>``: ``all_reduce``, ``send``, ``recv``,
  ``broadcast`` and the all-gathers and reduce-scatters of one tensor), with the bytes of
  its tensor;
- ``bytes_sent``: what one rank sends for such a log, collectives taken as rings;
- ``ring_all_reduce_bytes``: a ring all-reduce of ``S`` bytes sends ``2 (W - 1) / W * S`` per
  rank (a reduce-scatter then an all-gather, each ``W - 1`` steps of ``S / W``; Patarasuk &
  Yuan, 2009);
- ``zero_bytes_per_rank``: model-state memory per rank under ZeRO stages 0-3 with mixed
  precision Adam (Rajbhandari et al., 2020, https://arxiv.org/abs/1910.02054, section 3):
  ``2 + 2 + K`` bytes per parameter (fp16 weights, fp16 gradients, ``K = 12`` bytes of fp32
  master weights and two Adam moments), stage ``s`` dividing the first ``s`` of the
  optimizer state, gradients, weights by ``W``;
- ``bubble_fraction`` and ``gpipe_schedule``: the GPipe timeline of ``p`` stages and ``m``
  microbatches (Huang et al., 2019, https://arxiv.org/abs/1811.06965), idle a fraction
  ``(p - 1) / (m + p - 1)`` of the time;
- four workers for ``parallel.run_workers`` that run a method by hand and with the torch
  library side by side and return what Lab 06-8 compares and counts.

Left out: the latency term of communication (``W - 1`` or ``log W`` message start-ups),
bandwidth of real links, collectives the wrappers cannot see (DDP's reducer runs in C++, DTensor
calls functional collectives, and ``ScheduleGPipe`` sends through ``isend`` / ``irecv``
objects it holds; FSDP2 calls ``torch.distributed`` and is seen), activation
memory, and the 1F1B and interleaved schedules (the same bubble as GPipe for 1F1B, with fewer
activations held).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from llmfoundations._validate import check_int
from llmfoundations.attention import MultiHeadAttention
from llmfoundations.inference import parallel as par
from llmfoundations.layers import FeedForward, SwiGLU

__all__ = [
    "count_communication",
    "ring_all_reduce_bytes",
    "bytes_sent",
    "zero_bytes_per_rank",
    "bubble_fraction",
    "Slot",
    "gpipe_schedule",
    "tensor_bytes",
    "data_parallel_worker",
    "fsdp_adam_worker",
    "tensor_parallel_worker",
    "pipeline_worker",
]

_COUNTED = (
    "all_reduce",
    "send",
    "recv",
    "broadcast",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "all_gather_single",  # FSDP2's calls in torch 2.13
    "reduce_scatter_single",
)
# one tensor in, one out: the one handed over is the second parameter (all-gather's input
# shard; reduce-scatter's full input), logged under the older name
_TWO_TENSORS = {
    "all_gather_into_tensor": "all_gather_into_tensor",
    "reduce_scatter_tensor": "reduce_scatter_tensor",
    "all_gather_single": "all_gather_into_tensor",
    "reduce_scatter_single": "reduce_scatter_tensor",
}


def tensor_bytes(t: Tensor) -> int:
    """Bytes of a tensor's elements (a DTensor's local shard only)."""
    if hasattr(t, "to_local"):
        t = t.to_local()
    return t.numel() * t.element_size()


@contextlib.contextmanager
def count_communication() -> Iterator[list[tuple[str, int]]]:
    """Record ``(op, bytes)`` for each collective or point-to-point call made inside.

    It wraps the functions of ``torch.distributed`` for the duration, so it sees code that
    calls them as ``dist.all_reduce(...)``: the course's by-hand methods and FSDP2 do;
    DDP's C++ reducer, DTensor's functional collectives and ``ScheduleGPipe``'s
    ``isend`` / ``irecv`` operations do not. ``bytes`` is the size of the tensor handed to
    the call (for an all-gather, the input shard; for a reduce-scatter, the full input);
    ``all_gather_single`` and ``reduce_scatter_single`` are logged as
    ``all_gather_into_tensor`` and ``reduce_scatter_tensor``. What the backend sends on the
    wire depends on its algorithm.
    """
    log: list[tuple[str, int]] = []
    names = [n for n in _COUNTED if hasattr(dist, n)]  # older torch lacks the *_single ones
    originals = {name: getattr(dist, name) for name in names}

    def wrap(name: str, fn: Any) -> Any:
        signature = inspect.signature(fn)
        sent = list(signature.parameters)[1 if name in _TWO_TENSORS else 0]

        def counted(*args: Any, **kwargs: Any) -> Any:
            # bound by name: FSDP2 passes the tensors as keywords
            tensor = signature.bind(*args, **kwargs).arguments[sent]
            log.append((_TWO_TENSORS.get(name, name), tensor_bytes(tensor)))
            return fn(*args, **kwargs)

        return counted

    try:
        for name, fn in originals.items():
            setattr(dist, name, wrap(name, fn))
        yield log
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


def ring_all_reduce_bytes(n_bytes: int, world_size: int) -> float:
    """Bytes each rank sends in a ring all-reduce of ``n_bytes``: ``2 (W - 1) / W * n_bytes``.

    Reduce-scatter: ``W - 1`` steps, each passing one ``1/W`` chunk to the next rank; then an
    all-gather of the reduced chunks, ``W - 1`` steps more. Nearly ``2 n_bytes`` for any
    ``W``: the per-rank traffic does not grow with the number of ranks.
    """
    check_int("n_bytes", n_bytes, minimum=0)
    check_int("world_size", world_size, minimum=1)
    return 2 * (world_size - 1) / world_size * n_bytes


def bytes_sent(log: list[tuple[str, int]], world_size: int) -> float:
    """Bytes one rank sends for the calls ``count_communication`` logged, in the ring model:
    ``2 (W - 1) / W`` of an all-reduced tensor, ``W - 1`` times an all-gather's input shard
    (``(W - 1) / W`` of the whole), ``(W - 1) / W`` of a reduce-scatter's full input, a
    ``send``'s tensor; a ``recv`` sends nothing. A ``broadcast`` counts its tensor on every
    rank (its source's bytes: an upper bound for the others; the course's methods make none).
    """
    check_int("world_size", world_size, minimum=1)
    total = 0.0
    for op, n in log:
        if op == "all_reduce":
            total += ring_all_reduce_bytes(n, world_size)
        elif op in ("send", "broadcast"):
            total += n
        elif op == "all_gather_into_tensor":
            total += (world_size - 1) * n
        elif op == "reduce_scatter_tensor":
            total += (world_size - 1) / world_size * n
        elif op != "recv":
            raise ValueError(f"bytes_sent: unknown operation {op!r} in log")
    return total


def zero_bytes_per_rank(n_params: int, world_size: int, stage: int, k_optimizer: int = 12) -> float:
    """Model-state bytes per rank under ZeRO ``stage`` 0-3, mixed-precision Adam.

    Stage 0 (plain data parallel) holds ``(2 + 2 + K) Psi`` on every rank; stage 1 shards
    the optimizer state (``K Psi / W``), stage 2 the gradients too, stage 3 the fp16
    weights too (``(2 + 2 + K) Psi / W``). Activations and buffers are left out.
    """
    check_int("n_params", n_params, minimum=0)
    check_int("world_size", world_size, minimum=1)
    check_int("stage", stage, minimum=0)
    check_int("k_optimizer", k_optimizer, minimum=0)
    if stage > 3:
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage}")
    weights, grads, optim = 2.0 * n_params, 2.0 * n_params, float(k_optimizer * n_params)
    if stage >= 1:
        optim /= world_size
    if stage >= 2:
        grads /= world_size
    if stage >= 3:
        weights /= world_size
    return weights + grads + optim


def bubble_fraction(n_stages: int, n_microbatches: int) -> float:
    """Idle share of a GPipe step: ``(p - 1) / (m + p - 1)``, any forward/backward times."""
    check_int("n_stages", n_stages, minimum=1)
    check_int("n_microbatches", n_microbatches, minimum=1)
    return (n_stages - 1) / (n_microbatches + n_stages - 1)


@dataclass(frozen=True)
class Slot:
    """One stage working on one microbatch from ``start`` to ``end`` (time units)."""

    stage: int
    microbatch: int
    phase: str  # "forward" or "backward"
    start: int
    end: int


def gpipe_schedule(n_stages: int, n_microbatches: int, t_forward: int = 1, t_backward: int = 2) -> list[Slot]:
    """The GPipe timeline: all forwards, then all backwards in reverse microbatch order.

    Stage ``s`` runs microbatch ``j``'s forward as soon as it has finished ``j - 1`` and
    stage ``s - 1`` has sent ``j``; backwards start at the last stage once every forward is
    done and flow back the same way. Integer times, so the schedule is exact; its total
    length is ``(m + p - 1) (t_f + t_b)``.
    """
    check_int("n_stages", n_stages, minimum=1)
    check_int("n_microbatches", n_microbatches, minimum=1)
    check_int("t_forward", t_forward, minimum=1)
    check_int("t_backward", t_backward, minimum=1)
    p, m = n_stages, n_microbatches
    fwd_end = [[0] * m for _ in range(p)]
    slots = []
    for s in range(p):
        for j in range(m):
            ready = max(fwd_end[s - 1][j] if s else 0, fwd_end[s][j - 1] if j else 0)
            fwd_end[s][j] = ready + t_forward
            slots.append(Slot(s, j, "forward", ready, ready + t_forward))
    all_forward = fwd_end[p - 1][m - 1]
    bwd_end = [[0] * m for _ in range(p)]
    order = list(reversed(range(m)))
    for s in reversed(range(p)):
        for i, j in enumerate(order):
            after_next_stage = bwd_end[s + 1][j] if s < p - 1 else all_forward
            after_previous_mb = bwd_end[s][order[i - 1]] if i else 0
            ready = max(after_next_stage, after_previous_mb)
            bwd_end[s][j] = ready + t_backward
            slots.append(Slot(s, j, "backward", ready, ready + t_backward))
    return sorted(slots, key=lambda x: (x.start, x.stage))


# ------------------------------------------------------------- workers for Lab 06-8


def data_parallel_worker(rank: int, world_size: int, model: nn.Module, ids: Tensor) -> dict[str, Any]:
    """Worker: gradients by hand (with its all-reduces counted) and with DDP."""
    with count_communication() as log:
        by_hand = par.data_parallel_gradients(rank, world_size, copy.deepcopy(model), ids)
    ddp = par.ddp_gradients(rank, world_size, copy.deepcopy(model), ids)
    return {"by_hand": by_hand, "ddp": ddp, "comm": log}


def fsdp_adam_worker(rank: int, world_size: int, model: nn.Module, ids: Tensor, lr: float) -> dict[str, Any]:
    """Worker: one Adam step under FSDP2; the updated weights, what this rank stores and
    what it sent (``comm``, the step's collectives as ``count_communication`` logs them).

    Bytes are those of this rank's shards after the step: weights, gradients and Adam's
    two moments (``exp_avg``, ``exp_avg_sq``; the scalar step counts are left out).
    """
    from torch.distributed.device_mesh import init_device_mesh

    shard = par.shard_batch(ids, rank, world_size)  # equal shards: the mean of means is the mean
    mesh, fully_shard = init_device_mesh("cpu", (world_size,)), par.fully_shard_function()
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    with count_communication() as log:
        model(shard, labels=shard).loss.backward()
        optimizer.step()
    params = list(model.parameters())
    states = [optimizer.state[p][k] for p in params for k in ("exp_avg", "exp_avg_sq")]
    return {
        "params": {n: p.detach().full_tensor().clone() for n, p in model.named_parameters()},
        "param_bytes": sum(tensor_bytes(p.detach()) for p in params),
        "grad_bytes": sum(tensor_bytes(p.grad) for p in params if p.grad is not None),
        "optim_bytes": sum(tensor_bytes(s) for s in states),
        "comm": log,
    }


def tensor_parallel_worker(
    rank: int, world_size: int, mlp: FeedForward | SwiGLU, attn: MultiHeadAttention, x: Tensor
) -> dict[str, Any]:
    """Worker: the MLP and attention split by hand (communication counted) and the MLP by DTensor.

    Each by-hand result also carries ``param_bytes``, the bytes of this rank's weight slices
    (the size of their gradients).
    """
    out: dict[str, Any] = {}
    for name, worker, layer in (("mlp", par.tensor_parallel_mlp, mlp),
                                ("attn", par.tensor_parallel_attention, attn)):  # fmt: skip
        with count_communication() as log:
            result = worker(rank, world_size, copy.deepcopy(layer), x)
        result["comm"] = log
        result["param_bytes"] = sum(tensor_bytes(g) for g in result["grads"].values())
        out[name] = result
    dtensor = par.tensor_parallel_mlp_dtensor(rank, world_size, copy.deepcopy(mlp), x)
    if hasattr(dtensor["out"], "wait"):  # an AsyncCollectiveTensor: wait for the all-reduce
        dtensor["out"] = dtensor["out"].wait()
    out["mlp_dtensor"] = dtensor
    return out


def pipeline_worker(
    rank: int, world_size: int, stages: list[nn.Module], x: Tensor, y: Tensor, n_microbatches: int
) -> dict[str, Any]:
    """Worker: a GPipe step by hand (sends and receives counted) and with ``ScheduleGPipe``."""
    with count_communication() as log:
        by_hand = par.pipeline_by_hand(rank, world_size, copy.deepcopy(stages), x, y, n_microbatches)
    gpipe = par.pipeline_gpipe(rank, world_size, copy.deepcopy(stages), x, y, n_microbatches)
    return {"by_hand": by_hand, "gpipe": gpipe, "comm": log}
