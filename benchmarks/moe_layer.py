"""Speed of the batched MoE layer against a dense FFN and against the per-token loop.

Three ways to spend a token's feed-forward compute, measured side by side:

- **dense FFN**: one SwiGLU feed-forward network with ``d_ff = top_k * d_ff_expert``,
  i.e. the same number of *active* parameters per token as the MoE layer;
- **MoE, batched**: ``llmfoundations.moe.MoELayer`` (sort token-slots by expert, run
  every expert once on its slice, scatter-add back);
- **MoE, per-token loop**: ``llmfoundations.moe.moe_reference``, the readable loop
  (timed on fewer tokens, reported per token).

Timing: forward, and forward + backward of ``mean(y**2)``; best of several interleaved
rounds after warm-up (see ``best_times``).

    python benchmarks/moe_layer.py                 # CPU, writes benchmarks/results/moe_layer.md
    python benchmarks/moe_layer.py --device cuda   # GPU (adds a section to the same file)
    python benchmarks/moe_layer.py --threads 1     # steadier on a busy, shared machine
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _machine import cpu_name
from torch import nn

from llmfoundations.moe import Expert, MoELayer, moe_reference

RESULTS = Path(__file__).resolve().parent / "results" / "moe_layer.md"


def machine(device: str) -> str:
    parts = [
        f"CPU: {cpu_name()}, {os.cpu_count()} cores visible, "
        f"torch threads: {torch.get_num_threads()}",
        f"torch {torch.__version__}, Python {platform.python_version()}",
    ]
    if hasattr(os, "getloadavg"):
        parts.append(f"load average at start {os.getloadavg()[0]:.1f}")
    if device == "cuda":
        parts.insert(0, f"GPU: {torch.cuda.get_device_name()}")
    return "; ".join(parts)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_step(fn: Callable[[], torch.Tensor], params: list[torch.Tensor],
              backward: bool) -> Callable[[], None]:
    """One forward (+ backward of ``mean(y**2)``) call, gradients cleared first."""
    def step() -> None:
        for p in params:
            p.grad = None
        if backward:
            fn().square().mean().backward()
        else:
            with torch.no_grad():
                fn()

    return step


def best_times(steps: list[Callable[[], None]], device: str, repeats: int) -> list[float]:
    """Best-of-``repeats`` seconds of every step, measured in interleaved rounds.

    Interleaving (a, b, c, a, b, c, ...) exposes every step to the same background load,
    and the minimum is the run least disturbed by it: on a shared machine the ratios
    are then far steadier than with medians of back-to-back runs.
    """
    for step in steps:  # warm-up (allocator, thread pool, lazy init)
        step()
    best = [float("inf")] * len(steps)
    for _ in range(repeats):
        for i, step in enumerate(steps):
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_case(d_model: int, d_ff: int, n_experts: int, top_k: int, n_tokens: int,
             naive_tokens: int, device: str, dtype: torch.dtype, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    moe = MoELayer(d_model, d_ff, n_experts, top_k).to(device, dtype)
    dense = Expert(d_model, top_k * d_ff).to(device, dtype)
    x = torch.randn(n_tokens, d_model, device=device, dtype=dtype, requires_grad=True)
    x_naive = x[:naive_tokens].detach().requires_grad_(True)
    load = moe(x.detach()).tokens_per_expert.float()
    balance = f"{int(load.min())}-{int(load.max())}"

    cases = [
        ("dense FFN (same active params)", lambda: dense(x), dense, n_tokens),
        ("MoE, batched dispatch", lambda: moe(x).output, moe, n_tokens),
        ("MoE, per-token loop", lambda: moe_reference(moe, x_naive), moe, naive_tokens),
    ]
    steps = []
    for _, fn, module, _ in cases:
        params = [*module.parameters(), x, x_naive]
        steps += [make_step(fn, params, backward=False), make_step(fn, params, backward=True)]
    seconds = best_times(steps, device, repeats)
    rows = []
    for i, (name, _, module, tokens) in enumerate(cases):
        fwd, both = seconds[2 * i], seconds[2 * i + 1]
        rows.append(dict(name=name, tokens=tokens, fwd=tokens / fwd, both=tokens / both,
                         params=n_params(module)))
    active = n_params(moe.gate) + top_k * n_params(moe.experts[0])
    for row in rows:
        row["active"] = n_params(dense) if row["name"].startswith("dense") else active
    rows[1]["balance"] = rows[2]["balance"] = balance
    return rows


def table(rows: list[dict], d_model: int, d_ff: int, n_experts: int, top_k: int) -> str:
    dense_both = rows[0]["both"]
    batched_both = rows[1]["both"]
    lines = [
        f"d_model={d_model}, d_ff per expert={d_ff}, {n_experts} experts, top-{top_k} "
        f"(dense d_ff={top_k * d_ff}); slots per expert in the timed batch: "
        f"{rows[1]['balance']}",
        "",
        "| layer | tokens | params (total / active) | fwd tok/s | fwd+bwd tok/s "
        "| fwd+bwd vs dense | batched is faster by |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        speedup = batched_both / row["both"]
        lines.append(
            f"| {row['name']} | {row['tokens']} | {row['params'] / 1e6:.2f}M / "
            f"{row['active'] / 1e6:.2f}M | {row['fwd']:,.0f} | {row['both']:,.0f} | "
            f"{row['both'] / dense_both:.2f}x | "
            f"{'-' if row is rows[1] else f'{speedup:.1f}x'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--d-model", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--d-ff", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--naive-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="markdown file to write (its section for this device is replaced)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is available")
    dtype = getattr(torch, args.dtype)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    threads = "" if args.device == "cuda" else f", torch threads: {torch.get_num_threads()}"
    sections = [
        f"## {args.device.upper()} ({args.dtype}{threads})",
        "",
        machine(args.device),
        "",
        f"Command: `python benchmarks/moe_layer.py --device {args.device} --dtype {args.dtype} "
        f"--tokens {args.tokens}"
        + (f" --threads {args.threads}`" if args.threads is not None else "`"),
    ]
    for d_model in args.d_model:
        rows = run_case(d_model, args.d_ff, args.experts, args.top_k, args.tokens,
                        args.naive_tokens, args.device, dtype, args.repeats)
        sections += ["", table(rows, d_model, args.d_ff, args.experts, args.top_k)]
    section = "\n".join(sections) + "\n"
    print(section)
    if args.no_write:
        return
    write_section(args.out, section)
    print(f"wrote {args.out}")


HEADER = """# MoE layer: batched dispatch vs dense FFN vs per-token loop

Written by `benchmarks/moe_layer.py`. Forward, and forward + backward of `mean(y**2)`;
best of interleaved rounds after warm-up; tokens per second (higher is better). The
dense FFN is one SwiGLU network with the MoE layer's *active* parameters per token
(`d_ff = top_k * d_ff_expert`), so both do about the same arithmetic per token; the MoE
layer holds `n_experts / top_k` times more expert parameters. The per-token loop is
`moe_reference`, timed on fewer tokens. The load average is the machine's at the start:
above the core count, other work shared the CPU, absolute speeds drop and the ratios
(measured in interleaved rounds) are the numbers to read.
"""


def write_section(path: Path, section: str) -> None:
    """Replace the section with this heading (device, dtype, threads), keep the others."""
    kept: dict[str, str] = {}
    if path.exists():
        for chunk in path.read_text().split("\n## ")[1:]:
            kept["## " + chunk.split("\n", 1)[0]] = "## " + chunk.rstrip() + "\n"
    kept[section.split("\n", 1)[0]] = section
    body = "\n".join(kept[k] for k in sorted(kept))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "\n" + body)


if __name__ == "__main__":
    main()
