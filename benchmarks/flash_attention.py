"""Flash attention side by side: the course's Triton kernel, its PyTorch reference,
plain eager attention and every backend of torch's scaled_dot_product_attention.

    python benchmarks/flash_attention.py --out benchmarks/results/flash_attention_<gpu>.json
    python benchmarks/flash_attention.py --quick --check

Grid: B * T = 16k tokens, H = 2048 / D heads, D in {64, 128}, T in {1k, 4k, 16k},
causal and not, forward and forward+backward, float16 and bfloat16 (bfloat16
only on compute capability >= 8.0). FLOPs: 4 * B * H * T^2 * D for the forward,
halved when causal; the backward counts 2.5 times the forward, so fwd+bwd is 3.5
times. Memory: the peak allocated during one call minus what was allocated
before it (inputs excluded; outputs and gradients included). Times are medians
from triton.testing.do_bench (warm-up first; the Triton kernel is compiled and
autotuned before timing). Each SDPA backend is forced with
torch.nn.attention.sdpa_kernel; a backend that cannot run a case shows "n/a".
The first run on a machine spends a few minutes compiling Triton kernels.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout
from llmfoundations.inference.flash import flash_attention, flash_attention_reference  # noqa: E402

TOKENS, WIDTH = 16 * 1024, 2048  # B * T and H * D of every case
REFERENCE_MAX_T = 1024  # the reference loops over tiles in Python: too slow beyond this
IMPLS = ("triton", "reference", "eager", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SDPA_BACKENDS = {
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
    "sdpa-math": "MATH",
}


@dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    head_dim: int
    seq_len: int
    batch: int
    heads: int
    is_causal: bool
    mode: str  # "fwd" or "fwd+bwd"

    @property
    def flops(self) -> float:
        forward = 4.0 * self.batch * self.heads * self.seq_len**2 * self.head_dim
        forward *= 0.5 if self.is_causal else 1.0
        return forward * (3.5 if self.mode == "fwd+bwd" else 1.0)

    def label(self) -> dict:
        return {
            "dtype": str(self.dtype).replace("torch.", ""),
            "D": self.head_dim,
            "T": self.seq_len,
            "B": self.batch,
            "H": self.heads,
            "causal": self.is_causal,
            "mode": self.mode,
        }


def eager_attention(q, k, v, is_causal=False, mask=None):
    """Plain attention as a model's eager code writes it: matmul, softmax in float32, matmul."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    if is_causal:
        scores = scores.masked_fill(mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return probs @ v


def _attention_fn(impl: str, case: Case, device: str):
    """A function of (q, k, v) for ``impl``, or a string saying why it does not run."""
    if impl == "triton":
        return lambda q, k, v: flash_attention(q, k, v, is_causal=case.is_causal)
    if impl == "reference":
        if case.seq_len > REFERENCE_MAX_T:
            return f"skipped: Python loop over tiles, run only for T <= {REFERENCE_MAX_T}"
        return lambda q, k, v: flash_attention_reference(
            q, k, v, is_causal=case.is_causal, block_q=128, block_k=128
        )
    if impl == "eager":
        mask = None
        if case.is_causal:  # built once, as a model would
            t = case.seq_len
            mask = torch.ones(t, t, dtype=torch.bool, device=device).triu(1)
        return lambda q, k, v: eager_attention(q, k, v, case.is_causal, mask)
    if impl in SDPA_BACKENDS:
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=case.is_causal)
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def _sdpa_context(impl: str):
    if impl not in SDPA_BACKENDS:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[impl]))


def time_ms(fn, device: str, warmup_ms: float, rep_ms: float, grad_to_none=None) -> float:
    """Median milliseconds per call of ``fn``: do_bench on a GPU, a wall-clock loop on the CPU."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(
            fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, return_mode="median"
        )
    start, calls = time.perf_counter(), 0
    while (time.perf_counter() - start) * 1e3 < warmup_ms or calls == 0:
        fn()
        calls += 1
    times = []
    start = time.perf_counter()
    while (time.perf_counter() - start) * 1e3 < rep_ms or len(times) < 2:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(impl: str, case: Case, device: str = "cuda", warmup: float = 25,
            repeats: float = 100) -> dict:
    """Time one implementation on one case; return a row of the results table.

    ``warmup`` and ``repeats`` are milliseconds of warm-up and of timed calls.
    ``status`` is "ok", "OOM", "n/a" (backend unavailable), "error" (see ``detail``)
    or "skipped: ...".
    """
    row = {"impl": impl, **case.label(), "ms": None, "tflops": None, "peak_mib": None}
    fn = _attention_fn(impl, case, device)
    if isinstance(fn, str):
        return {**row, "status": fn}
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (case.batch, case.heads, case.seq_len, case.head_dim)
    backward = case.mode == "fwd+bwd"
    try:
        q, k, v = (
            torch.randn(shape, generator=gen, device=device, dtype=case.dtype)
            .requires_grad_(backward)
            for _ in range(3)
        )
        grad = torch.randn(shape, generator=gen, device=device, dtype=case.dtype)

        def call():
            out = fn(q, k, v)
            if backward:
                out.backward(grad)
            return out

        with _sdpa_context(impl):
            call()  # compile, autotune, or fail early
            if device == "cuda":
                for leaf in (q, k, v):
                    leaf.grad = None  # the gradients count as part of the call's memory
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                call()
                torch.cuda.synchronize()
                row["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
            leaves = [q, k, v] if backward else None
            ms = time_ms(call, device, warmup, repeats, grad_to_none=leaves)
    except torch.cuda.OutOfMemoryError:
        return {**row, "status": "OOM"}
    except Exception as error:  # SDPA: "No available kernel", or a backend refusing the case
        detail = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        if impl in SDPA_BACKENDS and isinstance(error, RuntimeError):
            return {**row, "status": "n/a", "detail": detail}
        print(f"{impl} failed on {case.label()}: {detail}", file=sys.stderr)
        return {**row, "status": "error", "detail": detail}  # keep the other results
    finally:
        q = k = v = grad = None
        if device == "cuda":
            torch.cuda.empty_cache()
    return {**row, "status": "ok", "ms": ms, "tflops": case.flops / (ms * 1e-3) / 1e12}


def cases(args) -> list[Case]:
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)
    dtypes = [DTYPES[d] for d in args.dtype]
    if capability < (8, 0):
        dtypes = [d for d in dtypes if d != torch.bfloat16]  # no bfloat16 before Ampere
    grid = []
    for dtype in dtypes:
        for head_dim in args.head_dim:
            for seq_len in args.seq_len:
                for is_causal in args.causal:
                    for mode in args.mode:
                        grid.append(Case(dtype, head_dim, seq_len, max(1, TOKENS // seq_len),
                                         WIDTH // head_dim, is_causal, mode))
    return grid


CHECK_SHAPES = [  # (B, H, Hkv, T, D, causal)
    (2, 8, 8, 1024, 64, False),
    (2, 8, 2, 1000, 128, True),
    (1, 4, 1, 333, 80, True),
]


def check(device: str = "cuda", shapes=CHECK_SHAPES) -> bool:
    """Forward and backward of the Triton kernel against SDPA in float32; True if all pass.

    The kernel's low-precision error may be at most twice SDPA's own (both measured
    against float32) plus a small floor.
    """
    dtypes = [torch.float16]
    if device == "cpu" or torch.cuda.get_device_capability() >= (8, 0):
        dtypes.append(torch.bfloat16)
    ok = True
    for dtype in dtypes:
        floor = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
        for b, h, h_kv, t, d, is_causal in shapes:
            gen = torch.Generator(device=device).manual_seed(t)
            q = torch.randn(b, h, t, d, generator=gen, device=device, dtype=dtype)
            k, v = (torch.randn(b, h_kv, t, d, generator=gen, device=device, dtype=dtype)
                    for _ in range(2))
            grad = torch.randn(b, h, t, d, generator=gen, device=device, dtype=dtype)
            results = {}
            for name, fn, cast in (
                ("triton", flash_attention, dtype),
                ("sdpa", F.scaled_dot_product_attention, dtype),
                ("exact", F.scaled_dot_product_attention, torch.float32),
            ):
                inputs = [x.detach().to(cast).requires_grad_() for x in (q, k, v)]
                kwargs = {"is_causal": is_causal}
                if fn is F.scaled_dot_product_attention:
                    kwargs["enable_gqa"] = h != h_kv
                out = fn(*inputs, **kwargs)
                results[name] = (out, *torch.autograd.grad(out, inputs, grad.to(cast)))
            for i, part in enumerate(("out", "dq", "dk", "dv")):
                ours = (results["triton"][i].float() - results["exact"][i]).abs().max().item()
                theirs = (results["sdpa"][i].float() - results["exact"][i]).abs().max().item()
                good = ours <= 2 * theirs + floor
                ok &= good
                print(f"check {str(dtype)[6:]:8} B={b} H={h} Hkv={h_kv} T={t} D={d} "
                      f"causal={is_causal!s:5} {part}: triton {ours:.2e}, sdpa {theirs:.2e}"
                      f" {'ok' if good else 'FAILED'}")
    return ok


def _cell(row: dict, key: str, fmt: str) -> str:
    if row["status"] != "ok":
        return "skipped" if row["status"].startswith("skipped") else row["status"]
    return "-" if row[key] is None else format(row[key], fmt)


def markdown(rows: list[dict], impls: list[str]) -> str:
    """Two tables, TFLOP/s and peak MiB, one line per case and one column per implementation."""
    keys = ("dtype", "D", "T", "causal", "mode")
    by_case: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        by_case.setdefault(tuple(row[k] for k in keys), {})[row["impl"]] = row
    lines = []
    for title, key, fmt in (("TFLOP/s", "tflops", ".0f"), ("peak MiB", "peak_mib", ".0f")):
        head = ["dtype", "D", "T", "causal", "mode", *impls]
        if key == "tflops":
            head.append("triton / sdpa-flash")
        lines += [f"\n{title}\n", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for case_key, impl_rows in by_case.items():
            cells = [str(c) for c in case_key]
            cells += [_cell(impl_rows[i], key, fmt) if i in impl_rows else "" for i in impls]
            if key == "tflops":
                ours, flash = impl_rows.get("triton"), impl_rows.get("sdpa-flash")
                ratio = ""
                if ours and flash and ours["status"] == flash["status"] == "ok":
                    ratio = f"{ours['tflops'] / flash['tflops']:.2f}"
                cells.append(ratio)
            lines.append("| " + " | ".join(cells) + " |")
    if any(r["status"].startswith("skipped") for r in rows):
        lines.append(f"\nskipped: the PyTorch reference runs only for T <= {REFERENCE_MAX_T}.")
    return "\n".join(lines)


def environment() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["capability"] = list(torch.cuda.get_device_capability())
    return info


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark flash attention (Triton) against its PyTorch reference, eager "
        "attention and every SDPA backend; prints markdown tables, writes JSON."
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true",
                        help="a small grid: D=128, T in {1k, 4k}, one dtype")
    parser.add_argument("--check", action="store_true",
                        help="first check the Triton kernel against SDPA on the GPU")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["fp16", "bf16"])
    parser.add_argument("--head-dim", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--seq-len", nargs="+", type=int, default=[1024, 4096, 16384])
    parser.add_argument("--causal", nargs="+", type=lambda s: s.lower() in ("1", "true", "yes"),
                        default=[False, True], metavar="BOOL")
    parser.add_argument("--mode", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd", "fwd+bwd"])
    parser.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--warmup-ms", type=float, default=25.0)
    parser.add_argument("--rep-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.head_dim, args.seq_len = [128], [1024, 4096]
        bf16_ok = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
        args.dtype = ["bf16" if bf16_ok else "fp16"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    env = environment()
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    if not torch.cuda.is_available():
        print("no CUDA GPU: this benchmark needs one (the tests cover correctness on the CPU)")
        return 1
    if args.check and not check():
        print("the Triton kernel disagrees with SDPA: not benchmarking")
        return 1
    rows = []
    start = time.perf_counter()
    for case in cases(args):
        case_rows = []
        for impl in args.impl:
            row = measure(impl, case, "cuda", args.warmup_ms, args.rep_ms)
            case_rows.append(row)
            shown = f"{row['tflops']:.0f} TFLOP/s" if row["status"] == "ok" else row["status"]
            print(f"[{time.perf_counter() - start:6.0f} s] {case.label()} {impl}: {shown}",
                  flush=True)
        flash = next((r for r in case_rows if r["impl"] == "sdpa-flash"), None)
        for row in case_rows:  # speed relative to SDPA's FlashAttention-2 backend
            if flash and row["status"] == flash["status"] == "ok":
                row["vs_sdpa_flash"] = row["tflops"] / flash["tflops"]
        rows += case_rows
        if args.out:  # after every case, so a run stopped early keeps what it measured
            write_json(args.out, env, rows)
    print(markdown(rows, args.impl))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def write_json(path: Path, env: dict, rows: list[dict]) -> None:
    conventions = {
        "flops": "4*B*H*T^2*D forward, halved when causal; fwd+bwd = 3.5 x forward",
        "peak_mib": "max_memory_allocated during one call minus memory allocated before it",
        "tokens": TOKENS,
        "heads_times_head_dim": WIDTH,
    }
    payload = {"environment": env, "conventions": conventions, "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
