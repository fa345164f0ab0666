"""Serving SmolLM2-135M on a fixed arrival trace: static batching, our continuous
batching, and transformers' continuous batching (the engine behind ``generate_batch``).

The trace (fixed in this file, the same on every machine): 16 chat requests, prompts of
32-190 tokens (chat template with SmolLM2's default system prompt), answers of 8-48
tokens, arriving at fixed times over 3 s. No request stops early (no end-of-sequence
token), so every server produces exactly the tokens asked for. Three servers, greedy,
float32, the same GGUF weights:

- **static**: when idle, take every request that has arrived (at most ``--max-batch``),
  run the course's ``generate`` on the left-padded batch until its longest answer is
  done, repeat (with logits for the last position only, as both engines compute them:
  otherwise its prefill would also compute 49152-way logits for every prompt position,
  and the comparison would credit batching with that saving). Each token is timed by ``generate``'s streamer, so a short answer counts
  as done when its last token comes, not when the batch ends; requests that arrive
  meanwhile wait for the whole batch;
- **ours, continuous**: ``inference.batching.Engine(fast=True)`` (paged cache in blocks of 16,
  at most ``--max-batch`` requests at once, token budget ``--budget``): a request joins
  at the next step and leaves when done; tokens timed as the engine emits them;
- **transformers, continuous**: ``transformers``' ``ContinuousBatchingManager``, the
  engine that ``model.generate_batch`` runs (paged cache, one packed forward pass per
  step for every scheduled token). ``generate_batch`` itself takes every prompt at once
  and one ``max_new_tokens`` for all, so the trace drives the manager it opens
  (``continuous_batching_context_manager``, then ``add_request`` at each arrival, with
  the request's own ``max_new_tokens``). Same limits: pages of 16 tokens, the same
  number of blocks, ``--max-batch`` requests and ``--budget`` tokens per step; prefix
  sharing off (ours has none). Its tokens are timed by ``record_timestamps=True``.

Every server runs on the wall clock: the driver sleeps until the next arrival when the
server is idle. The servers run in turn, ``--rounds`` times, in one order and then in the
reverse one (so every pair runs both ways round equally often). Each table row is the
server's median round by makespan (the lower middle one of an even number); each ratio is
the median over rounds of the ratio between two servers within one round (they ran seconds
apart), with the lowest and highest round, and a verdict ("ahead", "behind") is given only
when every round agrees. Metrics, per server: throughput = new tokens /
(last token - first arrival); time to first token (TTFT) = first token - arrival; per-token
latency = the gaps between a request's consecutive tokens, pooled over requests (p50,
p95); end-to-end latency = last token - arrival. KV memory: what each server allocates,
and the peak it holds (blocks in use times bytes per block: ours, the block allocator's
own high-water mark, ``peak_used``, which also sees a step that allocates before it frees;
transformers, read every 5 ms by a side thread from its cache, in one extra
untimed pass over the trace, so that the timed rounds carry no such thread), beside a contiguous cache
of ``--max-batch`` rows of the longest request (prompt + answer), which is what a
server without paging would reserve. Tokens: each request's tokens are compared with
the course's ``generate`` run on that request alone; a server that gives any other token
stops the script before it writes a results file.

    python benchmarks/serving.py                 # writes benchmarks/results/serving.md
    python benchmarks/serving.py --rounds 2 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from _machine import command, compare, cpu_name, fmt_ratio, paired, percentile, publish
from transformers import GenerationConfig

try:
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
except ImportError:  # the package's floor (transformers>=4.45) predates it
    raise SystemExit(
        f"benchmarks/serving.py drives transformers' continuous batching through "
        f"ContinuousBatchingConfig, which transformers {transformers.__version__} lacks: "
        "upgrade transformers (5.25 made the committed table)"
    ) from None

from llmfoundations import pretrained
from llmfoundations.generate import generate
from llmfoundations.inference.batching import Engine, SchedulerConfig, _head_sees
from llmfoundations.inference.prepack import prepack_linears
from llmfoundations.kv_cache import kv_cache_bytes

RESULTS = Path(__file__).resolve().parent / "results" / "serving.md"
BLOCK = 16  # tokens per block (page) in both paged caches
PACKED = "ours, continuous, packed weights"  # Engine(fast=True) on a prepack_linears model
HF_PACKED = "transformers, continuous, packed weights"  # its model through prepack_linears
SERVERS = ["static", "ours", "ours-packed", "transformers", "transformers-packed"]
REQUIRED = ("static", "ours", "transformers")  # the report compares these three

# (arrival s, max_new_tokens, question): fixed; prompts are the chat template around them.
PARAGRAPH = (
    "The Transformer replaced recurrence with attention: every token looks at every "
    "earlier token at once, so training runs in parallel over the whole sequence. "
    "Decoding is still sequential, one token per step, and each step must read all the "
    "weights and the keys and values of every earlier token, which is why servers batch "
    "many requests together and keep those keys and values in a cache."
)
TRACE: list[tuple[float, int, str]] = [
    (0.00, 32, "What is the capital of France?"),
    (0.00, 16, "Hi!"),
    (0.15, 48, "Write a haiku about the sea."),
    (0.30, 8, "What is 12 + 7?"),
    (0.45, 24, f"Summarise this paragraph in one sentence:\n\n{PARAGRAPH}"),
    (0.60, 40, "Explain in one sentence why the sky is blue."),
    (0.80, 12, "Translate 'good morning' into French and Spanish."),
    (1.00, 48, "Give me three tips for learning to play the guitar, each in one short sentence."),
    (1.20, 20, "Name two planets of the solar system and say which one is larger."),
    (1.40, 36, f"List three key ideas of this text:\n\n{PARAGRAPH} {PARAGRAPH}"),
    (1.60, 8, "Is 17 a prime number?"),
    (1.90, 28, "Write a short greeting for a birthday card."),
    (2.20, 44, "What does a compiler do? Answer in two sentences."),
    (2.50, 16, "Spell the word 'banana' backwards."),
    (2.75, 32, f"Answer briefly: why do servers batch requests?\n\n{PARAGRAPH}"),
    (3.00, 12, "Say goodbye in Italian."),
]


@dataclass
class Request:
    arrival: float
    prompt: list[int]
    max_new: int


@dataclass
class Run:
    """One server's pass over the trace: per request, its token times and tokens."""

    times: dict[int, list[float]] = field(default_factory=dict)  # seconds since the start
    tokens: dict[int, list[int]] = field(default_factory=dict)
    steps: int = 0  # forward steps (static: generate steps; continuous: engine steps)
    decode_only_steps: int = 0  # ours: engine steps that prefilled nothing
    kv_allocated: int = 0  # bytes reserved (peak over the run)
    kv_peak_used: int = 0  # bytes holding written positions or handed-out blocks (peak)


def make_requests(tokenizer) -> list[Request]:
    out = []
    for arrival, max_new, question in TRACE:
        text = pretrained.apply_chat_template([{"role": "user", "content": question}])
        out.append(Request(arrival, tokenizer.encode(text), max_new))
    return out


def position_bytes(model) -> int:
    """KV bytes of one position of one sequence (all layers, keys and values)."""
    c = model.config
    return kv_cache_bytes(c.n_layers, 1, c.kv_heads, c.head_dim, 1, torch.float32)


def wait_until(t0: float, when: float) -> None:
    delay = t0 + when - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


# ----------------------------------------------------------------------------- servers


def run_static(model, requests: list[Request], max_batch: int) -> Run:
    run, pending = Run(), list(range(len(requests)))
    per_position = position_bytes(model)
    t0 = time.perf_counter()
    while pending:
        wait_until(t0, requests[pending[0]].arrival)
        now = time.perf_counter() - t0
        batch = [i for i in pending if requests[i].arrival <= now][:max_batch]
        pending = [i for i in pending if i not in batch]
        width = max(len(requests[i].prompt) for i in batch)
        steps: list[float] = []
        with _head_sees(model, slice(-1, None)):  # logits of the last position only
            out = generate(
                model,
                [requests[i].prompt for i in batch],
                max(requests[i].max_new for i in batch),
                pad_token_id=pretrained.PAD_ID,
                streamer=lambda _tokens, steps=steps: steps.append(time.perf_counter() - t0),
            )
        for row, i in enumerate(batch):
            n = requests[i].max_new
            run.times[i] = steps[:n]
            run.tokens[i] = out[row, width : width + n].tolist()
        run.steps += len(steps)
        # generate reserves (B, width + longest answer) positions; the real ones at the end:
        reserved = len(batch) * (width + len(steps)) * per_position
        used = sum(len(requests[i].prompt) + requests[i].max_new for i in batch) * per_position
        run.kv_allocated = max(run.kv_allocated, reserved)
        run.kv_peak_used = max(run.kv_peak_used, used)
    return run


def num_blocks_for(requests: list[Request], max_batch: int) -> int:
    """A pool that holds the ``max_batch`` longest requests at once (admission never waits
    for memory, only for a slot)."""
    need = sorted((-(-(len(r.prompt) + r.max_new) // BLOCK) for r in requests), reverse=True)
    return sum(need[:max_batch])


def run_ours(model, requests: list[Request], max_batch: int, budget: int) -> Run:
    engine = Engine(
        model,
        num_blocks=num_blocks_for(requests, max_batch),
        block_size=BLOCK,
        config=SchedulerConfig(token_budget=budget, max_running=max_batch),
        fast=True,
    )
    cache = engine.cache
    run, ids, nxt = Run(), {}, 0
    run.kv_allocated = cache.memory_bytes()
    t0 = time.perf_counter()
    while nxt < len(requests) or engine.has_work:
        if not engine.has_work:
            wait_until(t0, requests[nxt].arrival)
        now = time.perf_counter() - t0
        while nxt < len(requests) and requests[nxt].arrival <= now:
            ids[engine.add_request(requests[nxt].prompt, requests[nxt].max_new)] = nxt
            nxt += 1
        events = engine.step()
        stamp = time.perf_counter() - t0
        run.steps += 1
        run.decode_only_steps += not engine.last_plan.prefill
        for e in events:
            i = ids[e.request_id]
            run.times.setdefault(i, []).append(stamp)
            run.tokens.setdefault(i, []).append(e.token)
    run.kv_peak_used = cache.allocator.peak_used * cache.bytes_per_block()
    return run


def run_transformers(
    hf, requests: list[Request], max_batch: int, budget: int, sample_memory: bool = False
) -> Run:
    """transformers' engine on the trace; ``sample_memory``: also read its cache's use
    every 5 ms from a side thread (an untimed pass: the thread competes for the cores)."""
    config = GenerationConfig(
        max_new_tokens=max(r.max_new for r in requests),
        do_sample=False,
        eos_token_id=-1,  # never stop early: as many tokens as asked
        pad_token_id=pretrained.PAD_ID,
    )
    cb_config = ContinuousBatchingConfig(
        page_size=BLOCK,
        num_blocks=num_blocks_for(requests, max_batch),
        max_batch_tokens=budget,
        max_requests_per_batch=max_batch,
        allow_block_sharing=False,  # no prefix caching: ours has none in the engine
    )
    run, names, results = Run(), {}, {}
    with hf.continuous_batching_context_manager(
        generation_config=config, continuous_batching_config=cb_config, block=True, timeout=10
    ) as manager:
        t0 = time.perf_counter()
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_hf_cache, args=(manager, run, stop), daemon=True)
        if sample_memory:
            sampler.start()
        for i, r in enumerate(requests):
            wait_until(t0, r.arrival)
            name = manager.add_request(
                r.prompt,
                request_id=f"r{i}",
                max_new_tokens=r.max_new,
                record_timestamps=True,
                eos_token_id=-1,
            )
            names[name] = i
        while len(results) < len(requests):
            result = manager.get_result(timeout=1)
            if result is not None and result.is_finished():
                results[names[result.request_id]] = result
            elif result is None and not manager.is_running():
                raise RuntimeError("transformers' generation thread stopped")
        stop.set()
        if sample_memory:
            sampler.join()
        try:  # transformers internals (5.x): the table shows n/a if they move
            tensor = manager.batch_processor.cache.cache_tensor
            run.kv_allocated = tensor.numel() * tensor.element_size()
        except AttributeError:
            run.kv_allocated = 0
    for i, result in results.items():
        if result.error is not None:
            raise RuntimeError(f"request {i}: {result.error}")
        run.tokens[i] = list(result.generated_tokens)
        run.times[i] = [t - t0 for t in result.timestamps]
    # Steps that produced a token: its timestamps are per token, those of one step lie
    # within a millisecond, steps tens of milliseconds apart. Prefill-only steps unseen.
    stamps = sorted(t for times in run.times.values() for t in times)
    run.steps = 1 + sum(b - a > 0.005 for a, b in zip(stamps, stamps[1:], strict=False))
    return run


def _sample_hf_cache(manager, run: Run, stop: threading.Event) -> None:
    """Peak bytes of transformers' cache in use, sampled every 5 ms (a side thread)."""
    while not stop.wait(0.005):
        processor = manager.batch_processor
        if processor is None:
            continue
        try:  # transformers internals (5.x): the table shows n/a if they move
            cache = processor.cache
            free = cache.compute_free_capacity(relative=False)
            total = cache.num_sectors * cache.bytes_per_sector
        except AttributeError:
            run.kv_peak_used = 0
            return
        run.kv_peak_used = max(run.kv_peak_used, total - free)


# ----------------------------------------------------------------------------- report


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f}" if nbytes else "n/a"


def summarize(requests: list[Request], run: Run) -> dict[str, float]:
    n = range(len(requests))
    end = max(t[-1] for t in run.times.values())
    gaps = [b - a for i in n for a, b in zip(run.times[i], run.times[i][1:], strict=False)]
    ttft = [run.times[i][0] - requests[i].arrival for i in n]
    e2e = [run.times[i][-1] - requests[i].arrival for i in n]
    return {
        "makespan": end,
        "throughput": sum(r.max_new for r in requests) / (end - requests[0].arrival),
        "ttft_mean": statistics.mean(ttft),
        "ttft_p95": percentile(ttft, 0.95),
        "tpot_p50": percentile(gaps, 0.50),
        "tpot_p95": percentile(gaps, 0.95),
        "e2e_mean": statistics.mean(e2e),
        "steps": run.steps,
    }


def machine() -> str:
    return (
        f"CPU: {cpu_name()}, {os.cpu_count()} cores visible, torch threads "
        f"{torch.get_num_threads()}; Python {platform.python_version()}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}; "
        f"{platform.system()} {platform.release()}"
    )


def server_ratio(
    rounds: dict[str, list[dict[str, float]]], a: str, b: str, key: str
) -> tuple[float, float, float]:
    """Server ``a``'s ``key`` over server ``b``'s, paired within rounds (median, low, high)."""
    return paired([x[key] for x in rounds[a]], [x[key] for x in rounds[b]])


def report(
    requests: list[Request],
    shown: dict[str, tuple[dict[str, float], Run]],
    rounds: dict[str, list[dict[str, float]]],
    same: dict[str, tuple[int, int]],
    args: argparse.Namespace,
    contiguous: int,
    load: str,
    model_layers: int,
) -> str:
    mib = 2**20
    prompt_lens = [len(r.prompt) for r in requests]
    total = sum(r.max_new for r in requests)
    hf = shown["transformers, continuous"][0]

    def ratio(a: str, b: str, key: str = "throughput") -> tuple[float, float, float]:
        return server_ratio(rounds, a, b, key)

    T, O, S = "transformers, continuous", "ours, continuous", "static"
    lines = [
        "# Serving SmolLM2-135M on an arrival trace: static vs continuous batching vs transformers",
        "",
        f"SmolLM2-135M-Instruct, float32, greedy, from the same GGUF file. Trace (fixed in "
        f"`benchmarks/serving.py`): {len(requests)} chat requests arriving over "
        f"{requests[-1].arrival:g} s, prompts of {min(prompt_lens)}-{max(prompt_lens)} "
        f"tokens, answers of {min(r.max_new for r in requests)}-"
        f"{max(r.max_new for r in requests)} tokens ({total} new tokens in all), no early "
        f"stop. At most {args.max_batch} requests at once in every server; token budget "
        f"{args.budget} per step and blocks of {BLOCK} in both continuous servers. "
        f"Wall clock, {args.rounds} rounds (the servers in turn, the order reversed every other "
        "round). Each row: the server's median round by makespan (of an even number of "
        "rounds, the lower middle one). Ratios: the median over "
        "rounds of the ratio within a round (lowest-highest).",
        "",
        "| server | makespan (s) | tokens/s | throughput / transformers | mean TTFT (s) | p95 TTFT (s) "
        "| p50 per-token (ms) | p95 per-token (ms) | mean latency (s) | steps "
        "| KV allocated (MiB) | KV peak used (MiB) | same tokens as solo `generate` |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (s, run) in shown.items():
        ok, n = same[name]
        lines.append(
            f"| {name} | {s['makespan']:.2f} | {s['throughput']:.1f} | "
            f"{fmt_ratio(ratio(name, T))} | {s['ttft_mean']:.2f} | "
            f"{s['ttft_p95']:.2f} | {1e3 * s['tpot_p50']:.0f} | {1e3 * s['tpot_p95']:.0f} | "
            f"{s['e2e_mean']:.2f} | {s['steps']} | {_mib(run.kv_allocated)} | "
            f"{_mib(run.kv_peak_used)} | {ok}/{n} |"
        )
    static, ours = shown["static"][0], shown["ours, continuous"][0]
    over_static = ratio(O, S)
    beats = compare(over_static, "beats", "does not beat", "is level with")
    ttft_static = ratio(O, S, "ttft_mean")
    span = requests[-1].arrival - requests[0].arrival
    ceiling = total / span if span > 0 else float("inf")
    over_hf = ratio(O, T)
    verdict = compare(
        over_hf,
        "ahead of transformers on throughput in every round",
        "behind transformers on throughput in every round",
        "ahead of transformers on throughput in some rounds and behind in others",
    )
    decode_only = shown["ours, continuous"][1].decode_only_steps
    decode_static = ratio(O, S, "tpot_p50")  # our decode steps against generate's
    dearer_than_static = decode_static[1] > 1  # in every round
    decode_hf = ratio(O, T, "tpot_p50")
    lines += [
        "",
        f"Contiguous cache of the longest request for {args.max_batch} rows "
        f"({max(len(r.prompt) + r.max_new for r in requests)} positions each): "
        f"{contiguous / mib:.1f} MiB.",
        "",
        "Columns. Per-token latency: the gaps between a request's consecutive tokens, pooled "
        "over all requests. Steps: static, `generate` steps; ours, engine steps (each is one "
        "forward pass: the batched decode rows, or, in a step that prefills, its decode "
        "rows and prefill chunks packed together); transformers, steps that "
        "produced a token, counted from its per-token timestamps (`generate_batch` and its "
        "manager return tokens when a request ends, not as a stream, but "
        "`record_timestamps=True` stamps each token when its step makes it, so TTFT and "
        "per-token latency are measured for it too). KV allocated: static, the largest "
        "`KVCache` one `generate` call reserved (rows x (longest prompt + longest answer) of "
        "its batch); ours and transformers, the block pool (both sized for the "
        f"{args.max_batch} longest requests; transformers rounds it up to its own "
        "sectors). KV peak used: static, the prompt and answer positions of its largest "
        "batch (padding and the positions written after a short answer ended not counted); "
        "paged, blocks handed out (ours, the allocator's high-water mark; transformers', "
        "read every 5 ms by a side thread in one extra, untimed pass over the trace).",
        "",
        f"Reading. Continuous batching {beats} static batching here: "
        f"{fmt_ratio(over_static)}x the throughput and "
        + (
            f"{fmt_ratio(ratio(S, O, 'ttft_mean'), 1)}x lower mean TTFT"
            if ttft_static[2] < 1
            else f"{fmt_ratio(ttft_static)}x the mean TTFT"
        )
        + "; a request "
        "that arrives while a static batch runs waits for the whole batch, and a static "
        "row keeps its slot after its answer is done. "
        + (
            "The trace's arrivals bound every "
            f"server: the last request arrives at {requests[-1].arrival:g} s, so no server "
            f"exceeds {ceiling:.0f} tokens/s ({total} tokens over that time), and ratios between "
            "servers near that bound understate the difference in their speed. "
            if span > 0
            else ""
        )
        + "(Static's `generate` computes logits "
        "for the last position only here, as both engines do; when its prefill also "
        "computed them for every prompt position, at commit 759b6cc on an older AMD EPYC "
        "(model not recorded), the same trace gave 1.84x and 4.9x.) Our engine is "
        f"{verdict} ({fmt_ratio(over_hf)}x)"
        + f" and its mean TTFT is {fmt_ratio(ratio(O, T, 'ttft_mean'))}x transformers'. "
        "Its decode steps "
        + ("cost more than" if dearer_than_static
           else "cost less than" if decode_static[2] < 1 else "cost about as much as")
        + f" a `generate` step (p50 per-token {fmt_ratio(decode_static)}x static's; "
        f"{1e3 * ours['tpot_p50']:.0f} ms against {1e3 * static['tpot_p50']:.0f} ms in the "
        f"median rounds, static batches of up to "
        f"{args.max_batch} rows; a decode pass over a contiguous `KVCache` costs about what "
        "a `generate` step does)"
        + (": its view" if dearer_than_static else ", though its view")
        + " copies every row's keys and values out of the "
        "pool into a padded batch (one `index_select` per pool and layer) where `generate` "
        "writes into a preallocated cache. Prefills: `Engine(fast=True)` runs a step that "
        "prefills as one forward pass, as transformers does: the decoding rows' last tokens "
        "and every prefill chunk of the step packed into one row (`PagedKVCache.packed_view`:"
        " each sequence's cached keys, then the new tokens' keys, under a block mask), so the"
        " weights are read once per step. Before that change (commit 0dddf5c) it ran one "
        "batched decode pass plus one pass per prefill chunk, and a step that admitted k "
        "prompts read the weights k + 1 times. Profile of that engine on this trace (on the "
        "older AMD EPYC of the earlier runs; plain "
        "model, one run, a timer around each forward pass; the machine was slower that hour: "
        "25.5 tokens/s against transformers' 32.6): its 58 decode-only steps took 10.3 s "
        "(median 185 ms) and its 12 steps with prefill chunks 6.3 s, where a pass over a "
        "chunk of 32-47 tokens cost 180-290 ms, as much as the pass of 7 decode rows beside "
        "it (180-295 ms): on 2 cores a pass costs mostly its weight multiplications, nearly "
        "whatever the number of tokens. Python planning outside the passes took under 1 ms "
        "per step; in a decode step (torch.profiler) matrix multiplications took 67%, "
        "attention 6%, the pool's `index_select` 3%, and a decode pass over a contiguous "
        "cache of the same 8 rows took 183 ms against 192-209 ms for the engine's step. "
        "Every request's TTFT was later than under transformers: the first step (two prompts"
        " in two passes) took 0.39 s against 0.30 s, and each later admission added a pass. "
        "Packed, the same 12 steps took 4.9 s in one run (7 decodes and a 44-token chunk: "
        "325 ms in one pass against 401 ms in two). Decode-only steps stay left-padded: "
        "packing them under a dense mask (no varlen kernel here) scores every query against "
        f"every row's keys; one layer's attention for {args.max_batch} decode rows of "
        f"{args.attn_keys} keys costs {args.attn[0]:.2f} ms padded per row and "
        f"{args.attn[1]:.2f} ms packed with a block mask (x{model_layers} layers per step). "
        "The packed prefill pass pays that dense attention too (each chunk's queries scored "
        "against every running row's keys); the step times above include it. "
        + (
            f"What is left is in the decode-only steps ({decode_only} of our {ours['steps']})"
            if decode_hf[1] > 1
            else f"{'Most' if 2 * decode_only > ours['steps'] else 'Some'} of our steps only "
            f"decode ({decode_only} of {ours['steps']}), and "
            + ("ours are the quicker there" if decode_hf[2] < 1
               else "there the two are level")  # fmt: skip
        )
        + f": p50 per-token {fmt_ratio(decode_hf)}x transformers' ("
        f"{1e3 * ours['tpot_p50']:.0f} ms against {1e3 * hf['tpot_p50']:.0f} "
        "ms in the median rounds). Grouped-query attention (9 query heads share 3 key/value heads in SmolLM2): the "
        "course's attention copied each row's cached keys and values three times over in "
        "every layer before calling SDPA, about 8 MiB per layer and 240 MiB per step for 8 "
        "rows of 226 positions, half as many bytes as the weights; on the CPU it now lets "
        "SDPA share the heads itself (`enable_gqa`, the same result to the bit). Before that "
        "change (results of commit f39d69e, two rounds, the older AMD EPYC) ours reached 0.92x transformers' "
        "throughput, and 0.87x engine against engine on packed models. What remains of our "
        "decode step beside the matrix multiplications: the pool's `index_select`, the "
        "padding mask and the copies around them (transformers' decode step was not "
        "profiled here). "
        "Earlier changes behind `Engine(fast=True)` (the default engine keeps the readable "
        "reference path): a *planned* paged view (one `index_copy_` and "
        "one `index_select` per pool and layer, slots computed once per pass, instead of "
        "gathering and padding each row's blocks in every layer; the row-by-row gather "
        "stays as the reference), and logits for the last position only (a prefill chunk "
        "of T tokens computed T rows of 49152-way logits). Before those (this script at "
        "commit 3a405f8, one round, the older AMD EPYC): ours 23.2 tokens/s vs transformers 30.3 "
        "(0.77x), mean TTFT 3.85 vs 2.34 s; indicative only, as the shared machine's speed "
        "varied between runs (static took 24.6 s then). Memory: both paged caches hold only written positions (plus the "
        "partly filled last block); at its peak ours held "
        f"{shown['ours, continuous'][1].kv_peak_used / contiguous:.2f} of the contiguous "
        f"reservation for {args.max_batch} rows of the longest request (the peak depends on "
        "how many requests overlap, so on the server's speed); static `generate` reserves every "
        "row up to the longest prompt plus the longest answer of its batch.",
        *packed_reading(rounds),
        "",
        f"Machine: {machine()}; 1-minute load average {load}.",
        "",
        f"Command: `{command('serving.py')}`",
    ]
    return "\n".join(lines) + "\n"


def packed_reading(rounds: dict[str, list[dict[str, float]]]) -> list[str]:
    """The paragraph on the rows whose models multiply from oneDNN-packed weights."""
    if PACKED not in rounds:
        return []

    def ratio(a: str, b: str, key: str = "throughput") -> str:
        return fmt_ratio(server_ratio(rounds, a, b, key))

    T, O = "transformers, continuous", "ours, continuous"
    text = (
        "Packed weights. The rows marked *packed weights* run the same engines on models "
        "whose `nn.Linear` layers multiply from weights packed once for oneDNN "
        "(`inference.prepack.prepack_linears`) instead of `F.linear`'s MKL call, the change "
        "that made the single-stream decoder fast (`results/generation.md`). Our engine on "
        f"the packed model: {ratio(PACKED, O)}x its own throughput on the plain model, "
        f"{ratio(PACKED, T)}x transformers' as shipped, mean TTFT "
        f"{ratio(PACKED, T, 'ttft_mean')}x transformers'."
    )
    if HF_PACKED in rounds:
        text += (
            " Given the same packed model, transformers' engine reaches "
            f"{ratio(HF_PACKED, T)}x its plain throughput; engine against engine on equal "
            f"models, ours is {ratio(PACKED, HF_PACKED)}x transformers' throughput and "
            f"{ratio(PACKED, HF_PACKED, 'ttft_mean')}x its mean TTFT."
        )
    return ["", text]


def attention_costs(model, rows: int, keys: int, repeats: int = 30) -> tuple[float, float]:
    """Milliseconds of one layer's decode attention for ``rows`` rows of ``keys`` cached
    positions each: padded per row (B, H, 1, D) x (B, H, keys, D), as our engine runs it,
    vs packed into one row with a block mask, (1, H, B, D) x (1, H, B * keys, D), as a
    single packed pass over every scheduled token runs it."""
    c = model.config
    g = torch.Generator().manual_seed(0)
    h, d = c.n_heads, c.head_dim

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    q, k, v = randn(rows, h, 1, d), randn(rows, h, keys, d), randn(rows, h, keys, d)
    pad = torch.ones(rows, 1, 1, keys, dtype=torch.bool)
    qp, kp, vp = randn(1, h, rows, d), randn(1, h, rows * keys, d), randn(1, h, rows * keys, d)
    block = torch.block_diag(*[torch.ones(1, keys, dtype=torch.bool)] * rows)[None, None]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    best = []
    for args in ((q, k, v, pad), (qp, kp, vp, block)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            sdpa(*args[:3], attn_mask=args[3])
            times.append(time.perf_counter() - start)
        best.append(1e3 * min(times))
    return best[0], best[1]


def load_transformers():
    path = pretrained.smollm2_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--budget", type=int, default=256, help="tokens per continuous step")
    parser.add_argument(
        "--rounds", type=int, default=6, help="even: each pair runs in both orders equally often"
    )
    parser.add_argument("--requests", type=int, default=len(TRACE), help="first N of the trace")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=SERVERS,
        default=SERVERS,
        help="the report compares static, ours and transformers: they are always run",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.servers = [k for k in SERVERS if k in args.servers or k in REQUIRED]
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    load_start = os.getloadavg()[0]

    ours, tokenizer = pretrained.load_smollm2()
    packed = None
    if "ours-packed" in args.servers:  # the same weights, multiplied through oneDNN-packed copies
        packed, _ = pretrained.load_smollm2()
        prepack_linears(packed, rows=args.max_batch, library="onednn")
    hf = load_transformers() if "transformers" in args.servers else None
    hf_packed = None
    if "transformers-packed" in args.servers:  # the same change applied to transformers' model
        hf_packed = load_transformers()
        prepack_linears(hf_packed, rows=args.max_batch, library="onednn")
    requests = make_requests(tokenizer)[: args.requests]
    servers: dict[str, Callable[[list[Request]], Run]] = {
        "static": lambda reqs: run_static(ours, reqs, args.max_batch),
        "ours, continuous": lambda reqs: run_ours(ours, reqs, args.max_batch, args.budget),
        PACKED: lambda reqs: run_ours(packed, reqs, args.max_batch, args.budget),
        "transformers, continuous": lambda reqs: run_transformers(
            hf, reqs, args.max_batch, args.budget
        ),
        HF_PACKED: lambda reqs: run_transformers(hf_packed, reqs, args.max_batch, args.budget),
    }
    keys = {
        "static": "static",
        "ours": "ours, continuous",
        "ours-packed": PACKED,
        "transformers-packed": HF_PACKED,
        "transformers": "transformers, continuous",
    }
    servers = {keys[k]: servers[keys[k]] for k in args.servers}

    with torch.inference_mode():
        solo = [
            generate(ours, [r.prompt], r.max_new)[0, len(r.prompt) :].tolist() for r in requests
        ]
    warm = [Request(0.0, r.prompt[:20], 2) for r in requests[:3]]
    for serve in servers.values():  # first calls allocate and pick kernels
        serve(warm)

    rounds: dict[str, list[tuple[dict[str, float], Run]]] = {name: [] for name in servers}
    same: dict[str, tuple[int, int]] = {}
    names = list(servers)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]  # every pair, both ways round
        for name in order:
            run = servers[name](requests)
            stats = summarize(requests, run)
            ok = sum(run.tokens[i] == solo[i] for i in range(len(requests)))
            same[name] = (min(ok, same.get(name, (ok, 0))[0]), len(requests))
            print(
                f"round {r + 1}: {name}: {stats['throughput']:.1f} tokens/s, makespan "
                f"{stats['makespan']:.2f} s, same tokens {ok}/{len(requests)}",
                flush=True,
            )
            rounds[name].append((stats, run))
    shown = {k: sorted(rs, key=lambda sr: sr[0]["makespan"])[(len(rs) - 1) // 2]
             for k, rs in rounds.items()}  # the median round (the lower middle of an even count)
    hf_models = {"transformers, continuous": hf, HF_PACKED: hf_packed}
    for name, model in hf_models.items():  # memory, in an untimed pass (a sampling thread)
        if name in shown:
            sampled = run_transformers(model, requests, args.max_batch, args.budget, True)
            shown[name][1].kv_peak_used = sampled.kv_peak_used
    longest = max(len(r.prompt) + r.max_new for r in requests)
    contiguous = args.max_batch * longest * position_bytes(ours)
    load = f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    args.attn_keys = longest
    args.attn = attention_costs(ours, args.max_batch, longest)
    stats = {k: [st for st, _ in rs] for k, rs in rounds.items()}
    text = report(requests, shown, stats, same, args, contiguous, load, ours.config.n_layers)
    wrong = [f"{name} ({ok}/{n})" for name, (ok, n) in same.items() if ok < n]
    mismatch = "other tokens than solo generate from " + ", ".join(wrong) if wrong else ""
    publish(text.splitlines(), args.out, write=not args.no_write, mismatch=mismatch)


if __name__ == "__main__":
    main()
