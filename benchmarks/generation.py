"""Decoding speed and memory: the course's ``generate`` with and without a KV cache, beside
Hugging Face ``transformers``' ``generate``.

One process loads SmolLM2-135M-Instruct twice from the same GGUF file, both in float32:

- **ours**: ``pretrained.load_smollm2()`` -> ``DecoderLM``, run by ``generate.generate``
  (greedy, no stop tokens) with ``use_cache=True`` and with ``use_cache=False`` (a full
  forward pass over the whole sequence at every step);
- **transformers**: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``, run by its
  ``generate`` (greedy, ``use_cache=True``, no end-of-sequence token, so it never stops early).
- **ours, fast**: ``inference.fast_decode.FastGreedyDecoder`` (``--fast`` picks the
  variants): a static cache; ``torch.compile`` of the decoding step; inductor's weight
  freezing; weights packed once (``prepack=True``; ``--library``: oneDNN, MKL, or ``auto``,
  the default, which times both per weight shape here and keeps the faster), eager and
  compiled;
- **transformers, packed weights**: transformers' model with every ``nn.Linear`` swapped by
  ``inference.prepack.prepack_linears`` (same ``--library``; one copy per batch size), to
  separate what the matrix-multiply library gives from what the rest of the fast path gives.

Every run generates 128 new tokens after chat-formatted prompts: batch 1, and batch 8
(prompts of different lengths, left-padded, same ids and mask for both). The runs are
interleaved over several rounds and the best round is kept (the machine is shared and
noisy). Timing comes from a streamer that notes the time at every step:

- *time to first token*: the prefill pass over the prompt and the first choice;
- *decode tokens/s*: ``B * 127`` tokens over the time from the first to the last step;
- *end-to-end tokens/s*: ``B * 128`` over the whole call.

Memory: the KV cache's bytes (``2 * layers * B * Hkv * T * D * 4``), the growth of the
process's peak resident memory during one call (Linux: the peak is reset through
``/proc/self/clear_refs`` before each call and read from ``VmHWM`` after it), and what an
implementation holds from before the call (the resident memory its construction added:
the fast decoders' preallocated caches and weight copies, packed copies).

    python benchmarks/generation.py            # writes benchmarks/results/generation.md
    python benchmarks/generation.py --rounds 1 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from _machine import cpu_name, publish
from _machine import fmt_ratio as fmt_paired
from _machine import paired as paired_ratios

from llmfoundations import pretrained
from llmfoundations.generate import generate
from llmfoundations.inference.fast_decode import FastGreedyDecoder
from llmfoundations.inference.prepack import available_libraries, prepack_linears
from llmfoundations.kv_cache import kv_cache_bytes
from llmfoundations.models import DecoderLM, ModelConfig

RESULTS = Path(__file__).resolve().parent / "results" / "generation.md"
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence why the sky is blue.",
    "Give me three tips for learning to play the guitar, each in one short sentence.",
    "What is 12 + 7?",
    "Translate 'good morning' into French and Spanish.",
    "Name two planets of the solar system and say which one is larger, and by roughly how much.",
    "Hi!",
]


# ----------------------------------------------------------------------------- measuring


class StepClock:
    """Notes the time of every generation step; works as our ``streamer`` and as a
    ``transformers`` streamer (whose first ``put`` is the prompt, not a new token)."""

    def __init__(self, hf: bool = False) -> None:
        self.times: list[float] = []
        self._skip_prompt = hf

    def __call__(self, tokens) -> None:  # ours: once per step
        self.times.append(time.perf_counter())

    def put(self, value) -> None:  # transformers: the prompt, then once per step
        if self._skip_prompt:
            self._skip_prompt = False
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def reset_peak_memory() -> int | None:
    """Return freed memory to the OS, reset the peak RSS, return the current RSS (KiB);
    ``None`` where this is not possible (not Linux)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except OSError:
        return None


def peak_growth_mib(rss_before: int | None) -> float | None:
    return None if rss_before is None else (_status_kib("VmHWM") - rss_before) / 1024


def rss_growth_mib(rss_before: int | None) -> float | None:
    """Resident memory now (after collecting garbage) minus ``rss_before``, in MiB."""
    if rss_before is None:
        return None
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return (_status_kib("VmRSS") - rss_before) / 1024


@dataclass
class Case:
    name: str
    batch: int
    run: object  # () -> (sequences, StepClock)
    kv_bytes: int | None
    new_tokens: int
    times: list[tuple[float, float, float]] = field(default_factory=list)  # (ttft, decode, total)
    peak_mib: float | None = None
    sequences: torch.Tensor | None = None
    compile_s: float | None = None  # FastGreedyDecoder(compile=True): one-off compile time
    held_mib: float | None = None  # resident memory its construction added (kept between calls)
    setup_s: float | None = None  # construction time (packing and choose_library, or compile)
    libraries: str = ""  # packed weights: which library each weight went to

    def measure(self) -> None:
        before = reset_peak_memory()
        start = time.perf_counter()
        sequences, clock = self.run()
        total = time.perf_counter() - start
        if len(clock.times) != self.new_tokens:  # one stamp per generated token, or the
            raise RuntimeError(  # rates below would be wrong
                f"{self.name}, batch {self.batch}: {len(clock.times)} steps timed, "
                f"{self.new_tokens} expected"
            )
        growth = peak_growth_mib(before)
        if growth is not None:
            self.peak_mib = max(self.peak_mib or 0.0, growth)
        first, last = clock.times[0], clock.times[-1]
        self.times.append((first - start, last - first, total))
        self.sequences = sequences

    def rates(self) -> list[dict[str, float]]:
        """Per round: time to first token (s), decode and end-to-end tokens/s."""
        n, b = self.new_tokens, self.batch
        return [{"ttft": t[0], "decode": b * (n - 1) / t[1], "total": b * n / t[2]}
                for t in self.times]

    def best(self) -> dict[str, float]:
        rates = self.rates()
        return {"ttft": min(r["ttft"] for r in rates), "decode": max(r["decode"] for r in rates),
                "total": max(r["total"] for r in rates)}


def paired(case: Case, other: Case, key: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of ``case``'s rate / ``other``'s in the same round
    (the two ran minutes apart at most, so drift of the machine between rounds cancels)."""
    return paired_ratios([a[key] for a in case.rates()], [b[key] for b in other.rates()])


def token_checks(cases: list[Case]) -> dict[tuple[str, int], bool]:
    """Whether the outputs that should be equal are, keyed by (case, batch): ours with the
    cache against transformers', ours without the cache and every fast path against ours
    with the cache."""
    seqs = {(c.name, c.batch): c.sequences for c in cases}
    against = {("ours, KV cache", b): ("transformers, KV cache", b) for b in (1, 8)}
    against[("ours, no cache", 1)] = ("ours, KV cache", 1)
    against |= {(c.name, c.batch): ("ours, KV cache", c.batch) for c in cases
                if c.name in (*FAST_NAMES.values(), HF_PACKED)}
    return {key: torch.equal(seqs[key], seqs[other]) for key, other in against.items()}


def mismatches(cases: list[Case]) -> list[str]:
    """The ``token_checks`` that failed, named."""
    return [f"{name}, batch {b}" for (name, b), ok in token_checks(cases).items() if not ok]


# ----------------------------------------------------------------------------- set-up


def load_transformers() -> torch.nn.Module:
    path = pretrained.smollm2_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def prompts(tokenizer, n: int) -> list[list[int]]:
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS[:n]]
    return [tokenizer.encode(pretrained.apply_chat_template(c)) for c in chats]


def make_cases(
    ours, hf, tokenizer, new_tokens: int, fast_modes=(), hf_packed=None, library="auto"
) -> list[Case]:
    config = ours.config
    cases = []
    for batch in (1, 8):
        rows = prompts(tokenizer, batch)
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pretrained.PAD_ID] * (width - len(r)) + r for r in rows])  # (B, T)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])  # (B, T)
        cache = kv_cache_bytes(
            config.n_layers,
            batch,
            config.kv_heads,
            config.head_dim,
            width + new_tokens,
            torch.float32,
        )

        def ours_run(use_cache: bool, ids=ids, mask=mask):
            clock = StepClock()
            out = generate(
                ours,
                ids,
                new_tokens,
                attention_mask=mask,
                use_cache=use_cache,
                pad_token_id=pretrained.PAD_ID,
                streamer=clock,
            )
            return out, clock

        def hf_run(ids=ids, mask=mask, hf=hf):
            clock = StepClock(hf=True)
            with torch.inference_mode():
                out = hf.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    use_cache=True,
                    eos_token_id=None,
                    pad_token_id=pretrained.PAD_ID,
                    streamer=clock,
                )
            return out, clock

        cases.append(Case("ours, KV cache", batch, lambda f=ours_run: f(True), cache, new_tokens))
        if batch == 1:
            cases.append(
                Case("ours, no cache", batch, lambda f=ours_run: f(False), None, new_tokens)
            )
        cases.append(Case("transformers, KV cache", batch, hf_run, cache, new_tokens))
        if hf_packed is not None:  # the same library change applied to transformers' model
            model, counts, held, setup_s = hf_packed[batch]
            run = lambda f=hf_run, m=model: f(hf=m)  # noqa: E731
            chosen = ", ".join(f"{n} linears {lib}" for lib, n in sorted(counts.items()))
            cases.append(
                Case(HF_PACKED, batch, run, cache, new_tokens, libraries=chosen, held_mib=held,
                     setup_s=setup_s)
            )
        for mode in fast_modes:
            before, start = reset_peak_memory(), time.perf_counter()
            decoder = FastGreedyDecoder(
                ours,
                batch,
                width + new_tokens,
                compile=mode in ("compile", "freeze", "prepack-compile"),
                freeze=mode == "freeze",
                prepack=mode.startswith("prepack"),
                library=library,
            )
            setup_s, held = time.perf_counter() - start, rss_growth_mib(before)

            def fast_run(decoder=decoder, ids=ids, mask=mask):
                clock = StepClock()
                out = decoder.generate(
                    ids,
                    new_tokens,
                    attention_mask=mask,
                    pad_token_id=pretrained.PAD_ID,
                    streamer=clock,
                )
                return out.sequences, clock

            case = Case(FAST_NAMES[mode], batch, fast_run, cache, new_tokens, held_mib=held,
                        setup_s=setup_s)
            case.compile_s = decoder.compile_seconds if decoder.compile_seconds else None
            case.libraries = ", ".join(f"{w} {lib}" for w, lib in decoder.libraries.items())
            cases.append(case)
    return cases


HF_PACKED = "transformers, packed weights"
FAST_NAMES = {
    "static": "ours, fast: static cache",
    "compile": "ours, fast + torch.compile",
    "freeze": "ours, fast + compile + freezing",
    "prepack": "ours, fast + packed weights",
    "prepack-compile": "ours, fast + packed weights + compile",
}


def absorb_one_off_costs(ours) -> None:
    """Build and run throwaway decoders (a full-size plain one, small compiled ones, small
    packed ones for each library, eager and compiled, and a small model through
    ``prepack_linears``), so that the process's one-off costs (allocator arenas, the libraries' first
    calls, inductor's first compile) do not land in the "held from set-up" and set-up
    columns of whichever case is built first."""
    tiny = DecoderLM(
        ModelConfig.llama(vocab_size=64, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2)
    ).eval()
    decoders = [FastGreedyDecoder(ours, 1, 16), FastGreedyDecoder(tiny, 1, 8, compile=True)]
    for library in available_libraries():  # each library's first packing and compile
        decoders.append(FastGreedyDecoder(tiny, 1, 8, prepack=True, library=library))
        decoders.append(
            FastGreedyDecoder(tiny, 1, 8, compile=True, prepack=True, library=library)
        )
        packed = copy.deepcopy(tiny)
        prepack_linears(packed, rows=1, library=library)
        with torch.no_grad():
            packed(torch.tensor([[1, 2, 3]]))
    for decoder in decoders:
        decoder.generate([[1, 2, 3]], 2)
    del decoders
    gc.collect()


def read_bandwidth_gbs(mib: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth of reading a large tensor (a sum: bytes read / best time), in GB/s:
    what a decoding step does with the weights."""
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        src.sum()
        best = min(best, time.perf_counter() - start)
    return src.numel() * 4 / best / 1e9


def copy_bandwidth_gbs(mib: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth of a large tensor copy (read + write bytes / best time), in GB/s."""
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


# ----------------------------------------------------------------------------- report


def machine(load: str | None) -> str:
    parts = [
        f"CPU: {cpu_name()}, {os.cpu_count()} cores visible, torch threads "
        f"{torch.get_num_threads()}",
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"{platform.system()} {platform.release()}",
    ]
    if load is not None:
        parts.append(f"1-minute load average {load}")
    return "; ".join(parts)


def report(
    cases: list[Case],
    new_tokens: int,
    rounds: int,
    load: str | None,
    weight_mib: float,
    bandwidth: list[tuple[float, float]],
    library: str = "auto",
    argv: str = "",
) -> str:
    """The results page. ``bandwidth``: (read, copy) in GB/s, one pair per measurement;
    ``argv``: the command's flags."""
    # A bound takes the best the memory did: other work on the machine only lowers a reading.
    read_gbs = max(b[0] for b in bandwidth)
    copy_gbs = max(b[1] for b in bandwidth)
    read_range = f"{min(b[0] for b in bandwidth):.1f}-{max(b[0] for b in bandwidth):.1f}"
    copy_range = f"{min(b[1] for b in bandwidth):.1f}-{max(b[1] for b in bandwidth):.1f}"
    bound = read_gbs * 1e9 / (weight_mib * 2**20)  # steps/s if a step only read the weights
    copy_bound = copy_gbs * 1e9 / (weight_mib * 2**20)  # the same at the copy bandwidth
    best = {(c.name, c.batch): c.best() for c in cases}
    by_key = {(c.name, c.batch): c for c in cases}
    lines = [
        "# Decoding with and without a KV cache, a fast path, and transformers' `generate`",
        "",
        f"SmolLM2-135M-Instruct (float32, from the same GGUF file), greedy, {new_tokens} new "
        f"tokens after chat-formatted prompts, no early stop; {rounds} interleaved rounds. "
        "Times and rates: the best round. Ratios: the median over rounds of the ratio within "
        "a round (both sides ran minutes apart at most), with the lowest and highest round "
        "in brackets. Written by `benchmarks/generation.py`.",
        "",
        "| implementation | batch | time to first token (s) | decode tokens/s | "
        "end-to-end tokens/s | decode / transformers (range) | KV cache (MiB) | "
        "peak RSS growth (MiB) | held from set-up (MiB) | set-up (s) | compile (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in cases:
        b = best[(c.name, c.batch)]
        vs_hf = fmt_paired(paired(c, by_key[("transformers, KV cache", c.batch)], "decode"))
        kv = "" if c.kv_bytes is None else f"{c.kv_bytes / 2**20:.1f}"
        peak = "n/a" if c.peak_mib is None else f"{c.peak_mib:.0f}"
        compiled = "" if c.compile_s is None else f"{c.compile_s:.0f}"
        held = "" if c.held_mib is None else f"{c.held_mib:.0f}"
        setup = "" if c.setup_s is None else f"{c.setup_s:.1f}"
        lines.append(
            f"| {c.name} | {c.batch} | {b['ttft']:.2f} | {b['decode']:.1f} | "
            f"{b['total']:.1f} | {vs_hf} | {kv} | {peak} | "
            f"{held} | {setup} | {compiled} |"
        )
    ours1, hf1 = by_key[("ours, KV cache", 1)], by_key[("transformers, KV cache", 1)]
    slow1 = by_key[("ours, no cache", 1)]
    ours8, hf8 = by_key[("ours, KV cache", 8)], by_key[("transformers, KV cache", 8)]
    ok = token_checks(cases)
    same = {batch: ok[("ours, KV cache", batch)] for batch in (1, 8)}
    cached_equal = ok[("ours, no cache", 1)]
    fast_same = [
        f"{name}, batch {b}: {'yes' if equal else 'NO'}"
        for (name, b), equal in ok.items()
        if name in (*FAST_NAMES.values(), HF_PACKED)
    ]
    lines += [
        "",
        "Ratios of decode tokens/s, median over rounds (lowest-highest), and of end-to-end "
        "tokens/s (median):",
        "",
        f"- ours with cache / transformers, batch 1: **{fmt_paired(paired(ours1, hf1, 'decode'))}**"
        f"; end-to-end {paired(ours1, hf1, 'total')[0]:.2f}",
        f"- ours with cache / transformers, batch 8: **{fmt_paired(paired(ours8, hf8, 'decode'))}**"
        f"; end-to-end {paired(ours8, hf8, 'total')[0]:.2f}",
        "- ours with cache / without cache, batch 1: "
        f"**{fmt_paired(paired(ours1, slow1, 'decode'), 1)}**; end-to-end "
        f"{paired(ours1, slow1, 'total')[0]:.1f} (both compute the logits of the last "
        "position only)",
        "",
        "Same tokens as transformers: "
        f"batch 1 {'yes' if same[1] else 'NO'}, batch 8 {'yes' if same[8] else 'NO'}; "
        f"with and without the cache: {'yes' if cached_equal else 'NO'}."
        + (f" Fast paths, same tokens as ours: {'; '.join(fast_same)}." if fast_same else ""),
        "",
        f"Packed weights (`library={library!r}`), the library each weight went to: "
        + "; ".join(f"{c.name}, batch {c.batch}: {c.libraries}" for c in cases if c.libraries)
        + ".",
        "",
        "The fast paths are `inference.fast_decode.FastGreedyDecoder`: a static "
        "(preallocated) cache written in place, stacked q/k/v and gate/up weights, SDPA "
        "with `enable_gqa`, checks once per call; optionally `torch.compile` of the decoding "
        "step (compiled once per batch size, before timing; its compile time is in the last "
        "column, and in the set-up time beside it: a compile into an empty inductor cache, "
        "a new temporary folder per run, after the process's first compile of a throwaway "
        "model; with inductor's caches already holding the graphs it takes a fraction of "
        "that) and inductor's weight freezing (which packs float32 weights for MKL); or "
        "every matrix multiply from weights packed once for oneDNN or MKL "
        "(`inference.prepack`; `auto` times both for each weight shape and batch size on "
        "this machine and keeps the faster), eager or compiled. The row *transformers, "
        "packed weights* is transformers' own model with every `nn.Linear` swapped by "
        "`prepack_linears`: how much of the gain is the matrix-multiply library, which "
        "any model can use. Reading the weights bounds a step, roughly: "
        f"{weight_mib:.0f} MiB of float32 weights per step at the read bandwidth measured "
        f"here (a sum over a 256 MiB tensor, the highest of {len(bandwidth)} measurements, one "
        f"before the rounds and one in each: {read_gbs:.1f} GB/s; they ranged over "
        f"{read_range}) allows at most about "
        f"{bound:.0f} steps/s, i.e. {bound:.0f} tokens/s at batch 1 and {8 * bound:.0f} at "
        f"batch 8; at the copy bandwidth ({copy_gbs:.1f} GB/s, ranging over {copy_range}; "
        "read + write bytes of a copy) "
        f"{copy_bound:.0f} steps/s (activations, the "
        "cache and the logits add bytes; caches hold part of the weights between steps).",
        "",
        "Peak RSS growth is how far the process's peak resident memory rose above its "
        "resident memory before the call (the 513 MiB of weights of each model are not "
        "counted): the cache plus activations, the logits, and allocator slack. Without a "
        "cache, each step recomputes the whole sequence's activations and logits instead. "
        "The fast decoders allocate their cache when built, not in the call, and hold "
        "weight copies (stacked q/k/v and gate/up; packed copies): that is the column *held "
        "from set-up*, the resident memory their construction added (for *transformers, "
        "packed weights*, what `prepack_linears` added); their peak growth is the rest. "
        "Set-up: the construction's time (compiling; packing; `auto`'s timing of both "
        "libraries, paid by the first decoder that packs a shape for a batch size, as the "
        "choice is remembered). Throwaway decoders are built and run first, so that the "
        "process's one-off costs are in neither column.",
        "",
        f"Machine: {machine(load)}.",
        "",
        f"Command: `python benchmarks/generation.py{' ' + argv if argv else ''}`",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--fast",
        nargs="*",
        choices=list(FAST_NAMES),
        default=list(FAST_NAMES),
        help="FastGreedyDecoder variants to time (compiling each takes a minute or more)",
    )
    parser.add_argument(
        "--no-hf-packed",
        dest="hf_packed",
        action="store_false",
        help="skip the row of transformers' model with prepack_linears applied",
    )
    parser.add_argument(
        "--library",
        choices=["auto", "onednn", "mkl"],
        default="auto",
        help="packing library of the packed-weight rows (auto: time both per shape, here)",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Compile times into an empty cache: inductor keeps compiled graphs on disk between
    # processes (by default under the temporary directory), and a warm cache makes a compile
    # several times faster, so timings would depend on what ran before.
    inductor_cache = None
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        inductor_cache = tempfile.mkdtemp(prefix="generation-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache
    # Every compiled decoder adds a graph for the same code (its decoding step); dynamo
    # allows 8 per code object by default, and this script builds up to 10.
    torch._dynamo.config.recompile_limit = 32
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    ours, tokenizer = pretrained.load_smollm2()
    hf = load_transformers()
    absorb_one_off_costs(ours)
    hf_packed = None
    if args.hf_packed:  # one copy per batch size: the packing is tuned for its row count
        hf_packed = {}
        for b in (1, 8):
            model = load_transformers()
            before, start = reset_peak_memory(), time.perf_counter()
            counts = prepack_linears(model, rows=b, library=args.library)
            setup_s, held = time.perf_counter() - start, rss_growth_mib(before)
            hf_packed[b] = (model, counts, held, setup_s)
    weight_mib = sum(p.numel() * p.element_size() for p in ours.parameters()) / 2**20
    # (read, copy) GB/s, before the rounds and in each: it moves with the machine's load
    bandwidth = [(read_bandwidth_gbs(), copy_bandwidth_gbs())]
    cases = make_cases(
        ours, hf, tokenizer, args.new_tokens, args.fast, hf_packed, args.library
    )
    warm = make_cases(ours, hf, tokenizer, 4)  # first calls allocate and pick kernels
    for case in warm:
        case.measure()
    fast = [c for c in cases if c.name in (*FAST_NAMES.values(), HF_PACKED)]
    for case in fast:  # the fast paths' own first call
        case.measure()
        case.times.clear()
    by_key = {(c.name, c.batch): c for c in cases}
    pairs = [(by_key[("ours, KV cache", b)], by_key[("transformers, KV cache", b)]) for b in (1, 8)]
    timed = [c for pair in pairs for c in pair] + fast
    for r in range(args.rounds):
        bandwidth.append((read_bandwidth_gbs(), copy_bandwidth_gbs()))
        # Every case once per round, in reverse order every other round, so that over two
        # rounds each sees the machine early and late alike; the long uncached run last.
        order = timed if r % 2 == 0 else timed[::-1]
        for case in [*order, by_key[("ours, no cache", 1)]]:
            case.measure()
            print(
                f"round {r + 1}: {case.name}, batch {case.batch}: "
                f"{case.batch * args.new_tokens / case.times[-1][2]:.1f} tokens/s",
                flush=True,
            )
        # Write after every round, so that an interrupted run still leaves a table.
        load = None
        if load_start is not None:
            load = f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        text = report(
            cases, args.new_tokens, r + 1, load, weight_mib, bandwidth, args.library,
            shlex.join(sys.argv[1:]),
        )
        wrong = mismatches(cases)
        if not args.no_write and not wrong:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
    if inductor_cache is not None:
        shutil.rmtree(inductor_cache, ignore_errors=True)
    publish(text.splitlines(), args.out, not args.no_write,
            mismatch="different tokens: " + "; ".join(wrong) if wrong else "")


if __name__ == "__main__":
    main()
