"""Parallel training strategies on 2 CPU ranks: time per step, model state per rank, traffic.

One model, ``inference.parallel_timing.mlp_stack``: ``--layers`` feed-forward blocks
``C -> F -> C`` (default 4 blocks, C = 384, F = 1536, 4.7M parameters), trained with Adam
on a mean squared error over a batch of ``--batch`` rows (default 64). Each strategy of
``parallel_timing.STRATEGIES`` runs ``--warmup`` + ``--steps`` steps on 2 gloo ranks of
one thread each (``parallel.run_workers``, one spawn per round running every strategy in
turn); one process running the whole batch is timed with 1 and with 2 threads.

Reported per strategy:

- time per step: per step the slower rank's time, then the median over the ``--steps``
  timed steps; the median of ``--rounds`` rounds, with their range. The strategies run one
  after another in the same two processes, so the order turns by one each round (the
  first one of a process runs slower): each takes each place once in 7 rounds;
- model state per rank: bytes of the weights, gradients and Adam's two moments that the
  rank holds after the last step (computed from its tensors; a DTensor counts its shard);
- bytes sent per rank per step: from the formulas (``parallel_costs.ring_all_reduce_bytes``
  for all-reduces; all-gathers and reduce-scatters as rings; point-to-point sends), and
  counted where the code calls ``torch.distributed`` from Python
  (``parallel_costs.count_communication``: the by-hand strategies and FSDP2; DDP's reducer
  runs in C++, DTensor calls functional collectives and ``ScheduleGPipe`` sends through
  ``isend`` / ``irecv`` objects, which it cannot see);
- the check: the largest difference of the trained weights and of the per-step losses
  from one process doing the same steps.

    python benchmarks/parallelism.py               # writes benchmarks/results/parallelism.md
    python benchmarks/parallelism.py --no-write --rounds 1 --steps 3   # a quick look
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from _machine import cpu_name, publish

from llmfoundations.inference.parallel import run_workers
from llmfoundations.inference.parallel_costs import bubble_fraction, ring_all_reduce_bytes
from llmfoundations.inference.parallel_timing import (
    STRATEGIES,
    mlp_stack,
    timed_steps_worker,
    train_single,
)

RESULTS = Path(__file__).resolve().parent / "results" / "parallelism.md"
# the strategies whose collectives count_communication sees (see its docstring)
COUNTED = ("ddp_by_hand", "fsdp2", "tp_by_hand", "pipeline_by_hand")
WORLD = 2
LABELS = {
    "ddp_by_hand": "data parallel by hand (all-reduce per tensor)",
    "ddp": "DDP (`DistributedDataParallel`)",
    "fsdp2": "FSDP2 (`fully_shard`)",
    "tp_by_hand": "tensor parallel by hand (`TensorParallelMLP`)",
    "tp_dtensor": "tensor parallel, DTensor (`ColwiseParallel` / `RowwiseParallel`)",
    "pipeline_by_hand": "pipeline by hand (GPipe, send / recv)",
    "pipeline_gpipe": "pipeline, `ScheduleGPipe`",
}


def formula_bytes(strategy: str, weight_bytes: int, act_bytes: int, n_layers: int) -> float:
    """Bytes one rank sends in one step (W = 2), from the algorithms' definitions.

    ``weight_bytes``: the whole model's weights (= its gradients); ``act_bytes``: one
    (B, C) activation of the whole batch.
    """
    w = WORLD
    if strategy in ("ddp_by_hand", "ddp"):  # one ring all-reduce of every gradient
        return ring_all_reduce_bytes(weight_bytes, w)
    if strategy == "fsdp2":  # all-gather weights (forward, again in backward), reduce-scatter grads
        return 3 * (w - 1) / w * weight_bytes
    if strategy.startswith(
        "tp"
    ):  # forward: 1 all-reduce per block; backward: 1 per block but the first
        return (2 * n_layers - 1) * ring_all_reduce_bytes(act_bytes, w)
    return float(act_bytes)  # rank 0 sends activations forward, rank 1 gradients back


def _range(low_high: tuple[float, float]) -> str:
    return f"{1e3 * low_high[0]:.1f}-{1e3 * low_high[1]:.1f}"


def reading(
    best: dict[str, float],
    rounds: dict[str, list[float]],
    args: argparse.Namespace,
    weight_bytes: int,
) -> list[str]:
    """The honest reading, with this run's numbers (``best``: the median round's time;
    ``rounds``: every round's, in order)."""
    b = best

    bubble = bubble_fraction(WORLD, args.microbatches)
    fastest = min(STRATEGIES, key=lambda s: b[s])
    return [
        "Reading: two ranks on one 2-core CPU show the *overheads* of each strategy, not the "
        "speed-ups of a cluster. The ranks share the two cores and one memory bus that one "
        "process with 2 threads also uses, and their messages are memory copies through "
        "the loopback device, so the fair baseline is one process with 2 threads; on GPUs "
        "each rank would bring its own device and the links would be NVLink or InfiniBand. "
        f"Here the fastest strategy is {LABELS[fastest]} at "
        f"{b['single2'] / b[fastest]:.2f}x the 2-thread process; it was the faster of the "
        f"two in {sum(s < t for s, t in zip(rounds[fastest], rounds['single2'], strict=True))} "
        f"of the {len(rounds[fastest])} rounds.",
        "",
        "- **Data parallel** sends the whole gradient every step "
        f"({weight_bytes / 1e6:.0f} MB through a ring), however small the batch: on this "
        "model that traffic is "
        f"large beside the compute. DDP's step takes {b['ddp'] / b['ddp_by_hand']:.2f}x "
        "the by-hand step's time: it reduces gradients in buckets while backward is still "
        "running, instead of one all-reduce per tensor after it.",
        "- **FSDP2** halves the model state per rank (the ZeRO-3 saving) and pays for it in "
        "traffic, 1.5x data parallel's (weights gathered in forward and again in backward, "
        "gradients reduce-scattered), on the critical path of every block: "
        f"{b['fsdp2'] / b['ddp']:.2f}x DDP's step time. It is the strategy for models "
        "whose state does not fit on one device, not for speed.",
        "- **Tensor parallel** sends activations, not weights: two all-reduces of a "
        f"{args.batch} x {args.d_model} activation per block, far less than a gradient here "
        "(the batch is small). Each rank also computes half of every matrix product. The "
        f"DTensor version takes {b['tp_dtensor'] / b['tp_by_hand']:.2f}x the by-hand "
        "time: most likely the per-operation dispatch of DTensor, which weighs on matrices this small.",
        "- **Pipeline** sends least (one activation forward, one gradient back) but each "
        f"rank idles part of the step: GPipe's bubble with {WORLD} stages and "
        f"{args.microbatches} microbatches is {100 * bubble:.0f} % "
        "(`parallel_costs.bubble_fraction`), and microbatches of "
        f"{args.batch // args.microbatches} rows use the cores less well than the whole "
        f"batch. `ScheduleGPipe` takes {b['pipeline_gpipe'] / b['pipeline_by_hand']:.2f}x "
        "the by-hand time.",
        "",
        "Timings on a shared 2-core machine move between rounds (the column *rounds*) and "
        "between runs; the byte counts, the state per rank and the agreement with one "
        "process do not.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=384)
    parser.add_argument("--d-ff", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=len(STRATEGIES))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    argv = shlex.join(a for a in sys.argv[1:] if a != "--no-write")

    model = mlp_stack(args.d_model, args.d_ff, args.layers)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.d_model, generator=g)  # (B, C)
    y = torch.randn(args.batch, args.d_model, generator=g)
    total = args.warmup + args.steps
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes, act_bytes = 4 * n_params, 4 * args.batch * args.d_model

    threads = torch.get_num_threads()
    single: dict[str, dict] = {}
    rounds: dict[str, list[float]] = {}  # name -> each round's median step time (s)
    runs: dict[str, list[list[dict]]] = {}  # strategy -> each round's per-rank results
    start = time.perf_counter()
    for r in range(args.rounds):  # interleaved: one process, then every strategy
        for n in (1, 2):
            torch.set_num_threads(n)
            single[f"single{n}"] = out = train_single(model, x, y, total, args.lr)
            rounds.setdefault(f"single{n}", []).append(
                statistics.median(out["times"][args.warmup :])
            )
        torch.set_num_threads(threads)
        turn = r % len(STRATEGIES)  # the first strategy of a process runs slower
        order = [*STRATEGIES[turn:], *STRATEGIES[:turn]]
        ranks = run_workers(
            timed_steps_worker, WORLD, order, model, x, y, args.steps, args.warmup,
            args.lr, args.microbatches, timeout=600,
        )  # fmt: skip
        for s in STRATEGIES:
            per_step = [max(rank[s]["times"][i] for rank in ranks) for i in range(args.steps)]
            rounds.setdefault(s, []).append(statistics.median(per_step))
            runs.setdefault(s, []).append([rank[s] for rank in ranks])
    elapsed = time.perf_counter() - start
    best = {name: statistics.median(ts) for name, ts in rounds.items()}  # (the median round)
    spread = {name: (min(ts), max(ts)) for name, ts in rounds.items()}

    reference = single["single1"]
    ref_bytes = sum(reference["bytes"].values())
    lines = [
        "# Parallel training strategies on 2 CPU ranks",
        "",
        f"Machine: {cpu_name()}, torch {torch.__version__}, Python "
        f"{platform.python_version()}; {WORLD} gloo ranks of 1 torch thread each on "
        f"127.0.0.1 (`parallel.run_workers`). Model: `mlp_stack({args.d_model}, {args.d_ff}, "
        f"{args.layers})`, {n_params / 1e6:.2f}M parameters ({weight_bytes / 1e6:.1f} MB in "
        f"float32), Adam (lr {args.lr:g}), mean squared error on a batch of {args.batch} x "
        f"{args.d_model}; pipelines: {args.layers // WORLD} blocks per rank, "
        f"{args.microbatches} microbatches. Time: per step the slower rank, median of "
        f"{args.steps} steps after {args.warmup} warm-up steps; the median of {args.rounds} "
        "rounds, with the fastest and slowest round (one process and the strategies "
        "interleaved; the strategies' order turned by one each round, as the first one a "
        f"process runs is slower; {elapsed:.0f} s in all). "
        f"Command: `python benchmarks/parallelism.py{' ' + argv if argv else ''}`.",
        "",
        "| strategy | ms per step | rounds (ms) | vs 1 process, 1 thread | vs 1 process, 2 threads "
        "| weights + grads + Adam per rank (MB) | of one process | sent per rank per step, "
        "formula (MB) | counted (MB) | max abs weight diff | max abs loss diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("single1", "single2"):
        t = best[name]
        lines.append(
            f"| one process, {name[-1]} thread{'s' if name == 'single2' else ''} | "
            f"{1e3 * t:.1f} | {_range(spread[name])} | {best['single1'] / t:.2f}x | "
            f"{best['single2'] / t:.2f}x | {ref_bytes / 1e6:.1f} | 100 % | 0 | - | - | - |"
        )
    far: list[str] = []  # strategies whose weights or losses left one process's
    for s in STRATEGIES:
        w_diff = l_diff = 0.0
        for ranks in runs[s]:  # every round's training is checked
            params = {k: v for r in ranks for k, v in r["params"].items()}
            assert params.keys() == reference["params"].keys(), s
            w_diff = max(
                w_diff, *(float((params[k] - v).abs().max()) for k, v in reference["params"].items())
            )
            seen = [[r["losses"][i] for r in ranks if r["losses"][i] is not None] for i in range(total)]
            losses = [sum(v) / len(v) for v in seen]  # equal data shards: the mean is the full loss
            l_diff = max(
                l_diff, *(abs(a - b) for a, b in zip(losses, reference["losses"], strict=True))
            )
        if not (w_diff < 1e-4 and l_diff < 1e-4):
            far.append(f"{s} (weights {w_diff:.1e}, losses {l_diff:.1e})")
        ranks, t = runs[s][-1], best[s]
        held = max(sum(r["bytes"].values()) for r in ranks)
        counted = max(r["sent"] for r in ranks)
        counted_text = f"{counted / 1e6:.2f}" if s in COUNTED else "not visible"
        lines.append(
            f"| {LABELS[s]} | {1e3 * t:.1f} | {_range(spread[s])} | {best['single1'] / t:.2f}x | "
            f"{best['single2'] / t:.2f}x | {held / 1e6:.1f} | {100 * held / ref_bytes:.0f} % | "
            f"{formula_bytes(s, weight_bytes, act_bytes, args.layers) / 1e6:.2f} | "
            f"{counted_text} | {w_diff:.1e} | {l_diff:.1e} |"
        )
    lines += [
        "",
        f"Check: after {total} Adam steps, in every round, every strategy's weights and "
        "per-step losses agree with one process's to float32 rounding: "
        f"{'NO: ' + ', '.join(far) if far else 'yes'} (1e-4; the largest difference over "
        "the rounds is shown). "
        "A ratio above 1x is faster than one process. Model state: the rank holding the most "
        "(the tensor-parallel ranks both hold the second linear's bias whole). Bytes sent "
        "per rank: a ring for all-reduces (`2 (W - 1) / W` of the tensor), all-gathers and "
        "reduce-scatters (`(W - 1) / W` of the whole), the tensor itself for a send; FSDP2's "
        "formula has every block all-gathered again in backward. Counted: the calls the code "
        "makes through `torch.distributed` (the by-hand strategies and FSDP2), in the same "
        "ring model; `not visible`: DDP's reducer (C++), DTensor (functional collectives) "
        "and `ScheduleGPipe` (`isend` / `irecv` objects) bypass what the count wraps. Peak "
        "memory (RSS) is not shown: every strategy runs in the same two processes one after "
        "the other, and their RSS is mostly the torch runtime.",
        "",
        *reading(best, rounds, args, weight_bytes),
        "",
    ]
    publish(lines, RESULTS, write=not args.no_write,
            mismatch="not equal to one process: " + ", ".join(far) if far else "")


if __name__ == "__main__":
    main()
