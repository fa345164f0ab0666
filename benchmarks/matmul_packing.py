"""The matrix multiplies of one SmolLM2-135M decoding step, by CPU library and weight layout.

A decoding step multiplies 1-8 rows by every weight matrix: per block q/k/v stacked
(960 x 576), the output projection (576 x 576), gate/up stacked (3072 x 576) and down
(576 x 1536), 30 blocks, then the 49152 x 576 output head: 121 products. Each is timed,
float32, in three ways side by side:

- ``F.linear``: the row-major weight handed to the BLAS (MKL on x86 builds), which packs it
  into its own panels at every call;
- MKL, pre-packed: ``mkl._mkl_linear`` from a weight packed once by
  ``mkl._mkl_reorder_linear_weight``, what inductor's freezing emits for float32 on x86
  (here through ``inference.prepack``, ``library="mkl"``);
- oneDNN, pre-packed: ``inference.prepack.packed_linear`` from a weight packed once for
  oneDNN (``library="onednn"``).

The last column is the library that ``library="auto"`` (what ``FastGreedyDecoder(prepack=True)``
and ``prepack_linears`` use by default) picks for the shape from its own short timing, and
the step total under it is the time of those picks, read from this table.

Random weights and inputs (the speed does not depend on the values); each product is
checked against ``F.linear`` first. Best of ``--repeats`` rounds of ``--iters`` calls. The
weights of one step (513 MiB) do not fit in any cache, but a single product's weight
does, except the head's: products timed one at a time read their weight from cache, so
the per-step sum is a lower bound of the time they take inside a real step.

    python benchmarks/matmul_packing.py       # writes benchmarks/results/matmul_packing.md
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _machine import cpu_name, publish

from llmfoundations.inference.prepack import (
    available_libraries,
    choose_library,
    pack_weight,
    packed_linear,
)

RESULTS = Path(__file__).resolve().parent / "results" / "matmul_packing.md"
# name: (out features N, in features K, products per step)
SHAPES = {
    "q/k/v stacked": (960, 576, 30),
    "attention output": (576, 576, 30),
    "gate/up stacked": (3072, 576, 30),
    "down": (576, 1536, 30),
    "output head": (49152, 576, 1),
}


def best_ms(fn, iters: int, repeats: int) -> float:
    """Best mean milliseconds per call over ``repeats`` rounds of ``iters`` calls."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - start) / iters)
    return best * 1e3


NAMES = {"mkl": "MKL, pre-packed", "onednn": "oneDNN, pre-packed"}


def time_shape(n: int, k: int, rows: int, iters: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g) / k**0.5  # (N, K)
    x = torch.randn(rows, k, generator=g)  # (M, K)
    have = available_libraries()
    calls = {"F.linear": lambda: F.linear(x, w)}
    for lib in ("mkl", "onednn"):
        packed = pack_weight(w, rows, lib) if lib in have else None
        calls[NAMES[lib]] = None if packed is None else (lambda p=packed: packed_linear(x, p))
    expected = F.linear(x, w)
    live = {name: fn for name, fn in calls.items() if fn is not None}
    for fn in live.values():
        torch.testing.assert_close(fn(), expected, rtol=1e-4, atol=1e-4)
    heavy = n * k > 10_000_000  # the head: fewer calls
    out = {name: float("inf") for name in live}
    for _ in range(repeats):  # the ways interleaved: one round of each, then the next round
        for name, fn in live.items():
            out[name] = min(out[name], best_ms(fn, max(5, iters // 20) if heavy else iters, 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "# The matrix multiplies of one SmolLM2-135M decoding step: F.linear vs pre-packed weights",
        "",
        "Float32, milliseconds per product (best of "
        f"{args.repeats} rounds), and per step (x products per step). Written by "
        "`benchmarks/matmul_packing.py`; every product checked against `F.linear` first.",
        "",
    ]
    for rows in args.rows:
        totals: dict[str, float] = {}
        table = []
        for label, (n, k, count) in SHAPES.items():
            ms = time_shape(n, k, rows, args.iters, args.repeats)
            for name, value in ms.items():
                totals[name] = totals.get(name, 0.0) + value * count
            table.append((label, n, k, count, ms))
        names = list(table[0][4])
        picks = {label: choose_library(n, k, rows) for label, n, k, _, _ in table}
        totals["auto"] = sum(ms[NAMES[picks[label]]] * count for label, _, _, count, ms in table)
        lines += [
            f"## {rows} row{'s' if rows > 1 else ''} per product",
            "",
            "| product | N x K | per step | "
            + " | ".join(f"{n} (ms)" for n in names)
            + " | `auto` picks |",
            "| --- | --- | ---: | " + " | ".join("---:" for _ in names) + " | --- |",
        ]
        for label, n, k, count, ms in table:
            cells = " | ".join(f"{ms[name]:.3f}" for name in names)
            lines.append(f"| {label} | {n} x {k} | {count} | {cells} | {picks[label]} |")
        cells = " | ".join(f"**{totals[name]:.1f}**" for name in names)
        lines.append(f"| **one step** | | 121 | {cells} | **{totals['auto']:.1f}** |")
        base = totals["F.linear"]
        ratios = ", ".join(f"{name} {base / totals[name]:.2f}x" for name in [*names[1:], "auto"])
        lines += ["", f"Speed-up over `F.linear` per step: {ratios}.", ""]
    lines += [
        f"Machine: CPU: {cpu_name()}, torch threads {torch.get_num_threads()}; Python "
        f"{platform.python_version()}, torch {torch.__version__} (MKL "
        f"{'yes' if torch._C.has_mkl else 'no'}, oneDNN "
        f"{'yes' if torch.backends.mkldnn.is_available() else 'no'}).",
        "",
        f"Command: `python benchmarks/matmul_packing.py{_flags(args)}`",
    ]
    publish(lines, RESULTS, write=not args.no_write)


def _flags(args: argparse.Namespace) -> str:
    """The flags that differ from their defaults, as typed (``--threads 1``)."""
    given = {"--rows": " ".join(map(str, args.rows)), "--iters": args.iters,
             "--repeats": args.repeats, "--threads": args.threads}  # fmt: skip
    defaults = {"--rows": "1 8", "--iters": 200, "--repeats": 10, "--threads": 2}
    return "".join(f" {k} {v}" for k, v in given.items() if v != defaults[k])


if __name__ == "__main__":
    main()
