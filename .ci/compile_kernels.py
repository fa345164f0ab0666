"""Compile the flash-attention Triton kernels for GPUs that are not here, and check they fit.

    python .ci/compile_kernels.py            # every config the pruner keeps (CI)
    python .ci/compile_kernels.py --all      # every autotuning config, kept or not
    python .ci/compile_kernels.py --out benchmarks/results/triton_compile.md

Triton compiles for a chosen target without a GPU (``triton.compile`` with a
``GPUTarget``; ``ptxas`` ships in the triton wheel). For sm_75 (T4), sm_80 (A100) and
sm_90 (H100/H200), each dtype the architecture runs, head dimensions 64 and 128, causal
and not, it compiles every autotuning config that ``inference.flash_triton.kept_shapes`` keeps,
reads the shared memory Triton allocates and the registers and spills from the cubin
(``cuobjdump -res-usage``), prints a table, and exits 1 if a kept config fails to
compile or needs more shared memory than the architecture gives one block.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for real, not for the interpreter
# A fresh cache, so every run compiles (a warm ~/.triton/cache would answer in seconds).
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-compile-check-")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from llmfoundations.inference import flash_triton as ft  # noqa: E402

# Shared memory one block may use (bytes, opt-in maximum) and the dtypes each runs.
ARCHS = {
    75: ("T4", 64 * 1024, ("fp16", "fp32")),  # no bf16 before Ampere
    80: ("A100", 163 * 1024, ("fp16", "bf16", "fp32")),
    90: ("H100/H200", 227 * 1024, ("fp16", "bf16", "fp32")),
}
ELEMENT_SIZE = {"fp16": 2, "bf16": 2, "fp32": 4}
POINTERS = {"Q", "K", "V", "O", "DO", "DK", "DV", "DQ"}
FLOAT32_POINTERS = {"LSE", "DELTA"}
SCALARS = {"qk_scale", "sm_scale"}


def source(name: str, dtype: str, constexprs: dict) -> ASTSource:
    """What the launcher passes, as types: tensors 16-byte aligned, strides multiples of 16."""
    kernel = ft._KERNELS[name][0] if name in ft._KERNELS else ft._bwd_preprocess_kernel
    signature, attrs = {}, {}
    for i, arg in enumerate(kernel.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in POINTERS or arg in FLOAT32_POINTERS:
            signature[arg] = "*fp32" if arg in FLOAT32_POINTERS else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif arg.startswith("stride_"):
            signature[arg] = "i32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[arg] = "fp32" if arg in SCALARS else "i32"
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack bytes per thread) read from the cubin.

    A large stack means registers spilled to local memory: slow, but correct."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    regs = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    return int(regs.group(1)) if regs else -1, int(stack.group(1)) if stack else -1


def compile_one(job: tuple) -> dict:
    name, arch, dtype, head_dim, causal, shape = job
    first, second, warps, stages = shape
    tile_names = ft._KERNELS[name][1]
    constexprs = dict(
        IS_CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        UPCAST=False, DOT_PRECISION="ieee" if dtype == "fp32" else "tf32",
        **dict(zip(tile_names, (first, second), strict=True)),
    )
    target = GPUTarget("cuda", arch, 32)
    options = triton.compiler.make_backend(target).parse_options(
        {"num_warps": warps, "num_stages": stages})
    row = dict(kernel=name, arch=arch, dtype=dtype, D=head_dim, causal=causal, tiles=f"{first}x{second}",
               warps=warps, stages=stages)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = triton.compile(source(name, dtype, constexprs), target=target,
                                      options=options.__dict__)
        regs, spill = resource_usage(compiled.asm["cubin"])
        row.update(shared=compiled.metadata.shared, regs=regs, spill=spill, error="")
    except Exception as err:  # a config that does not compile is reported, not raised
        row.update(shared=-1, regs=-1, spill=-1, error=f"{type(err).__name__}: {str(err)[:200]}")
    row["seconds"] = time.perf_counter() - started
    return row


def jobs(all_configs: bool, causal_values=(False, True), only_dtypes=None) -> list[tuple]:
    out = []
    for arch, (_, _, dtypes) in ARCHS.items():
        for dtype in dtypes:
            if only_dtypes and dtype not in only_dtypes:
                continue
            for head_dim in (64, 128):
                for name in ft._KERNELS:
                    shapes = ft.AUTOTUNE_SHAPES[name] if all_configs else ft.kept_shapes(
                        name, head_dim, (arch // 10, arch % 10), ELEMENT_SIZE[dtype])
                    for causal in causal_values:
                        out += [(name, arch, dtype, head_dim, causal, shape) for shape in shapes]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="every autotuning config, not only the kept ones")
    parser.add_argument("--causal-only", action="store_true", help="skip the non-causal variants")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(ELEMENT_SIZE), help="only these dtypes")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    todo = jobs(args.all, (True,) if args.causal_only else (False, True), args.dtypes)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(compile_one, todo))
    failures = []
    lines = [
        f"Triton {triton.__version__}: {len(rows)} compilations in {time.perf_counter() - started:.0f} s "
        f"({'every autotuning config' if args.all else 'the configs the pruner keeps'}).",
        "",
        "| arch | kernel | dtype | D | causal | tiles | warps | stages | shared bytes | limit | registers | stack bytes | |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        gpu, limit, _ = ARCHS[r["arch"]]
        kept = args.all is False or tuple(int(x) for x in r["tiles"].split("x")) + (r["warps"], r["stages"]) in ft.kept_shapes(
            r["kernel"], r["D"], (r["arch"] // 10, r["arch"] % 10), ELEMENT_SIZE[r["dtype"]])
        if r["error"]:
            verdict = "does not compile: " + r["error"]
        elif r["shared"] > limit:
            verdict = "over the shared-memory limit"
        else:
            verdict = "ok"
        if verdict != "ok" and kept:
            failures.append(r)
        mark = verdict if kept else f"{verdict} (pruned)"
        lines.append(
            f"| sm_{r['arch']} ({gpu}) | {r['kernel']} | {r['dtype']} | {r['D']} | {r['causal']} | {r['tiles']} "
            f"| {r['warps']} | {r['stages']} | {r['shared']} | {limit} | {r['regs']} | {r['spill']} | {mark} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    for r in failures:
        print(f"FAIL: kept config does not fit: {r}")
    print(f"{len(rows)} compiled, {len(failures)} kept config(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
