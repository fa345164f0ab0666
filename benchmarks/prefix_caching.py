"""Prefix caching: time to first token of a chat behind a long shared system prompt.

SmolLM2-135M-Instruct (float32, CPU) serves ``--users`` users (default 4) for ``--turns``
turns each (default 3). Every conversation starts with the same system prompt: a course
assistant's instructions and about ``--system-tokens`` tokens (default 600) of the course's
own text (paragraphs of ``chapters/06-inference/kv-caching.md``, frozen in
``benchmarks/data/prefix_caching_notes.md``: about 617 tokens, enough for the default). The requests come turn by
turn: turn 1 of users 0..3, then turn 2 of each, and so on; a turn's prompt is the whole
conversation so far (system prompt, earlier questions and answers) and the new question.
The answers are written in advance, so every run sees the same tokens.

Each request is served twice, one right after the other:

- **with the prefix cache**: ``inference.prefix_cache.prefill`` looks the prompt up in a
  ``PrefixCache`` (vLLM-style chained block hashes, blocks of 16 tokens), runs the model on
  the part that is not cached, and caches the new full blocks; after the first token, the
  answer's tokens are fed and committed as well (not timed), as a server that decodes them
  would, so the next turn finds them;
- **without**: one forward pass over the whole prompt, what a server without prefix
  caching computes.

Both ways, here and in transformers, compute the logits of the last position only
(``logits_to_keep=1``): the first token needs nothing else, and the ``(T - 1) x V`` logits of
the other positions would cost about a fifth of a 670-token prefill at this vocabulary
(49,152), only in the way without the cache.

Time to first token (TTFT) = prefill + picking the first token (greedy); the queue is empty.
Rounds run the whole trace again on a fresh cache (both ways warmed up first, on another
prompt). A row's TTFT is the median over its requests within a round; each TTFT column shows the
median of that over rounds, and each ratio is the median over rounds of the ratio within a
round (the two ways ran a second apart), with the lowest and highest round.
The check: the same first token, and the largest difference of the last position's logits;
a first token that differs stops the script before it writes a results file.

With ``--hf`` (on by default) transformers' own way is timed too, on its load of the same
GGUF file: the ``DynamicCache`` of the system prompt is computed once and a deep copy is
extended by each request ("Re-use prompt cache" in transformers' KV cache docs). It reuses
the system prompt only, not a user's earlier turns.

    python benchmarks/prefix_caching.py               # writes benchmarks/results/prefix_caching.md
    python benchmarks/prefix_caching.py --no-write --rounds 2 --no-hf   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _machine import command, compare, cpu_name, fmt_ratio, paired, publish

from llmfoundations.inference.prefix_cache import PrefixCache, prefill
from llmfoundations.pretrained import apply_chat_template, load_smollm2, smollm2_gguf_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "prefix_caching.md"
# The first paragraphs of chapters/06-inference/kv-caching.md, copied (2026-12-05) so that
# edits to the chapter do not change this benchmark's input.
SOURCE = Path(__file__).resolve().parent / "data" / "prefix_caching_notes.md"
BLOCK = 16

# (question, answer written in advance) per user and turn
CHATS = [
    [
        (
            "Why does a decode step read all the weights?",
            "Each step multiplies every weight matrix by one new vector.",
        ),
        ("So what limits it?", "Memory bandwidth: the weights are read once per token."),
        ("Does a batch help?", "Yes, the weights are read once and used for every row."),
    ],
    [
        (
            "What does the KV cache store?",
            "The keys and values of every earlier position, per layer.",
        ),
        ("How big is it for a long prompt?", "It grows linearly with the number of positions."),
        ("Can it be made smaller?", "Grouped-query attention shares keys and values across heads."),
    ],
    [
        (
            "Is prefill faster per token than decoding?",
            "Yes, a prompt runs as one matrix-matrix pass.",
        ),
        ("Why?", "The weights are read once for all positions of the prompt."),
        ("And the first token?", "It comes from the logits of the prompt's last position."),
    ],
    [
        ("What is time to first token?", "The wait in the queue plus the prefill of the prompt."),
        ("What makes it long?", "A long prompt: prefill work grows with its length."),
        ("How can a server shorten it?", "By reusing the cache of a prefix it has seen before."),
    ],
]


@dataclass
class Request:
    user: int
    turn: int
    prompt: list[int]  # token ids up to the generation prompt
    after: list[int]  # the same conversation with this turn's answer


def system_prompt(tokenizer, n_tokens: int) -> str:
    """Instructions and paragraphs of the course's text, until about ``n_tokens`` tokens."""
    text = SOURCE.read_text()
    paragraphs = [
        re.sub(r"\s+", " ", p).strip()
        for p in text.split("\n\n")
        if p.strip() and not p.lstrip().startswith(("#", "```", ":::", "|", "$$", "{", "(", ":"))
    ]
    prompt = (
        "You are the teaching assistant of a course on large language models. Answer in one "
        "or two sentences, using the course notes below.\n\nCourse notes:\n"
    )
    for p in paragraphs:
        if len(tokenizer.encode(prompt)) >= n_tokens:
            break
        prompt += "\n" + p
    return prompt


def build_trace(tokenizer, system: str, users: int, turns: int) -> list[Request]:
    """Requests turn by turn: turn 1 of every user, then turn 2, ..."""
    histories = [[{"role": "system", "content": system}] for _ in range(users)]
    trace = []
    for turn in range(turns):
        for user in range(users):
            question, answer = CHATS[user % len(CHATS)][turn % len(CHATS[0])]
            messages = histories[user]
            messages.append({"role": "user", "content": question})
            prompt = tokenizer.encode(apply_chat_template(messages, add_generation_prompt=True))
            messages.append({"role": "assistant", "content": answer})
            after = tokenizer.encode(apply_chat_template(messages, add_generation_prompt=False))
            if after[: len(prompt)] != prompt:
                raise RuntimeError("the answer does not extend the prompt's tokens")
            trace.append(Request(user, turn, prompt, after))
    return trace


def kind(r: Request) -> str:
    if r.turn == 0:
        return "first request (cold cache)" if r.user == 0 else "first turn, other users"
    return "later turns"


@torch.no_grad()
def serve_cached(model, cache: PrefixCache, r: Request) -> tuple[float, int, torch.Tensor, int]:
    """(TTFT s, first token, last-position logits, tokens read from the cache)."""
    start = time.perf_counter()
    out = prefill(model, cache, r.prompt, logits_to_keep=1)
    logits = out.logits[0, -1]  # (V,)
    token = int(logits.argmax())
    ttft = time.perf_counter() - start
    answer = torch.tensor([r.after[len(r.prompt) :]])  # (1, A): decoded, as it were
    model(answer, kv_cache=cache.kv.view(out.seq_id))
    cache.commit(out.seq_id, r.after)
    cache.free_sequence(out.seq_id)
    return ttft, token, logits, out.num_cached_tokens


@torch.no_grad()
def serve_plain(model, r: Request) -> tuple[float, int, torch.Tensor]:
    start = time.perf_counter()
    logits = model(torch.tensor([r.prompt]), logits_to_keep=1).logits[0, -1]  # (V,)
    token = int(logits.argmax())
    return time.perf_counter() - start, token, logits


def hf_runner(system_ids: list[int]):
    """transformers' model of the same GGUF file and a function timing its two ways."""
    from transformers import AutoModelForCausalLM, DynamicCache

    path = smollm2_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    hf.eval()
    # transformers 5.x names the argument `cache` (`past_key_values` is deprecated there);
    # the script needs a recent transformers anyway (DynamicCache(config=), logits_to_keep)
    arg = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    with torch.no_grad():
        base = DynamicCache(config=hf.config)
        hf(torch.tensor([system_ids]), use_cache=True, **{arg: base})

    @torch.no_grad()
    def reuse(prompt: list[int]) -> tuple[float, int]:
        start = time.perf_counter()
        cache = copy.deepcopy(base)
        rest = torch.tensor([prompt[len(system_ids) :]])  # (1, T - S)
        out = hf(rest, use_cache=True, logits_to_keep=1, **{arg: cache})
        token = int(out.logits[0, -1].argmax())
        return time.perf_counter() - start, token

    @torch.no_grad()
    def plain(prompt: list[int]) -> tuple[float, int]:
        start = time.perf_counter()
        out = hf(torch.tensor([prompt]), use_cache=False, logits_to_keep=1)
        token = int(out.logits[0, -1].argmax())
        return time.perf_counter() - start, token

    def run(prompt: list[int], plain_first: bool = False) -> tuple[float, float, int, int]:
        """(TTFT reusing the system prompt's cache, TTFT without, their first tokens)."""
        if plain_first:
            (t_plain, token_plain), (t_reuse, token_reuse) = plain(prompt), reuse(prompt)
        else:
            (t_reuse, token_reuse), (t_plain, token_plain) = reuse(prompt), plain(prompt)
        return t_reuse, t_plain, token_reuse, token_plain

    return run


def shared_prefix(trace: list[Request]) -> int:
    first = trace[0].prompt
    n = min(len(r.prompt) for r in trace)
    for r in trace[1:]:
        n = min(
            n, next((i for i, (a, b) in enumerate(zip(first, r.prompt, strict=False)) if a != b), n)
        )
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--system-tokens", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=6, help="even: both orders equally often")
    parser.add_argument("--hf", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.turns <= len(CHATS[0]):
        parser.error(f"--turns must be 1..{len(CHATS[0])}")
    if args.users < 1 or args.users * args.turns < 2:
        parser.error("--users x --turns must be at least 2 (the first request finds nothing)")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    model, tokenizer = load_smollm2()
    system = system_prompt(tokenizer, args.system_tokens)
    trace = build_trace(tokenizer, system, args.users, args.turns)
    shared = shared_prefix(trace)
    # warm-up, both ways, on another prompt (the system prompt's tokens reversed): the
    # one-off costs of the first passes, of the block pool and of the paged view
    warm = Request(0, 0, trace[0].prompt[::-1][:96], trace[0].prompt[::-1][:128])
    warm_cache = PrefixCache.for_model(model, num_blocks=16, block_size=BLOCK)
    for _ in range(2):  # the second one hits
        serve_cached(model, warm_cache, warm)
        serve_plain(model, warm)

    n = len(trace)
    t_with: list[list[float]] = []  # round -> request -> seconds
    t_without: list[list[float]] = []
    hits, same, gap = [0] * n, [True] * n, [0.0] * n
    evictions = 0
    for round_ in range(args.rounds):
        blocks = sum(-(-len(r.after) // BLOCK) for r in trace) + 16  # never evicts
        cache = PrefixCache.for_model(model, num_blocks=blocks, block_size=BLOCK)
        t_with.append([0.0] * n)
        t_without.append([0.0] * n)
        for i, r in enumerate(trace):  # the two ways in alternating order, round by round
            if round_ % 2:
                t_p, tok_p, log_p = serve_plain(model, r)
                t_c, tok_c, log_c, hit = serve_cached(model, cache, r)
            else:
                t_c, tok_c, log_c, hit = serve_cached(model, cache, r)
                t_p, tok_p, log_p = serve_plain(model, r)
            t_with[round_][i], t_without[round_][i] = t_c, t_p
            hits[i] = hit
            same[i] = same[i] and tok_c == tok_p
            gap[i] = max(gap[i], float((log_c - log_p).abs().max()))
        evictions = max(evictions, cache.stats.evictions)
        assert abs(cache.stats.hit_rate - sum(hits) / sum(len(r.prompt) for r in trace)) < 1e-12

    hf_with: list[list[float]] = []  # round -> request -> seconds
    hf_without: list[list[float]] = []
    hf_same = True
    if args.hf:
        run = hf_runner(trace[0].prompt[:shared])
        run(trace[0].prompt)  # warm-up
        for round_ in range(args.rounds):
            hf_with.append([0.0] * n)
            hf_without.append([0.0] * n)
            for i, r in enumerate(trace):
                t_reuse, t_plain, tok_reuse, tok_plain = run(r.prompt, plain_first=round_ % 2 == 1)
                hf_with[round_][i], hf_without[round_][i] = t_reuse, t_plain
                hf_same = hf_same and tok_reuse == tok_plain

    hf_version = ""
    if args.hf:
        import transformers

        hf_version = f", transformers {transformers.__version__}"
    kinds: dict[str, list[int]] = {}
    for i, r in enumerate(trace):
        kinds.setdefault(kind(r), []).append(i)

    lines = [
        "# Prefix caching: time to first token behind a shared system prompt",
        "",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}{hf_version}, Python {platform.python_version()}. Model: SmolLM2-135M-Instruct, "
        f"float32 (GGUF via `load_smollm2`). Trace: {args.users} users x {args.turns} turns "
        f"= {n} requests, turn by turn; shared prefix {shared} tokens (the system prompt: instructions and "
        f"paragraphs of `chapters/06-inference/kv-caching.md`, frozen in "
        f"`benchmarks/data/prefix_caching_notes.md`; SHA-256 of the system prompt "
        f"{hashlib.sha256(system.encode()).hexdigest()[:12]}); prompts "
        f"{min(len(r.prompt) for r in trace)}-{max(len(r.prompt) for r in trace)} tokens; "
        f"answers written in advance. Prefix cache: `inference.prefix_cache` (chained block "
        f"hashes, blocks of {BLOCK}, no evictions: {evictions}). {args.rounds} rounds, the "
        "way timed first alternating from round to round, both warmed up on another prompt. "
        f"Command: `{command('prefix_caching.py')}`.",
        "",
        "| requests | n | prompt tokens (mean) | read from cache (mean) | hit rate "
        "| TTFT without (ms) | TTFT with (ms) | ratio | same first token | max abs logit diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]

    def per_round(times: list[list[float]], idx: list[int]) -> list[float]:
        """Each round's median over the requests ``idx``."""
        return [statistics.median(t[i] for i in idx) for t in times]

    def row(label: str, idx: list[int]) -> str:
        prompt = sum(len(trace[i].prompt) for i in idx)
        hit = sum(hits[i] for i in idx)
        without, with_ = per_round(t_without, idx), per_round(t_with, idx)
        ok = all(same[i] for i in idx)
        return (
            f"| {label} | {len(idx)} | {prompt / len(idx):.0f} | {hit / len(idx):.0f} | "
            f"{100 * hit / prompt:.0f} % | {1e3 * statistics.median(without):.0f} | "
            f"{1e3 * statistics.median(with_):.0f} | {fmt_ratio(paired(without, with_))}x | "
            f"{'yes' if ok else 'NO'} | {max(gap[i] for i in idx):.1e} |"
        )

    for label, idx in kinds.items():
        lines.append(row(label, idx))
    lines.append(row("**all requests**", list(range(n))))
    total_without, total_with = [sum(t) for t in t_without], [sum(t) for t in t_with]
    lines += [
        "",
        "TTFT columns: per round, the median over the requests of the kind; the median over "
        "rounds. Ratio = without / with, the median over rounds of the ratio within a round "
        f"(lowest-highest). Summed over all {n} requests: "
        f"{statistics.median(total_without):.2f} s without, "
        f"{statistics.median(total_with):.2f} s with "
        f"({fmt_ratio(paired(total_without, total_with), 1)}x). Hit rate = tokens read "
        "from the cache / prompt tokens (the cache's own `stats.hit_rate` over the trace agrees).",
    ]
    if args.hf:
        lines += [
            "",
            "transformers (its own load of the same GGUF file, float32), reusing a `DynamicCache` "
            f"of the {shared}-token system prompt (a deep copy per request, timed) against a "
            "forward pass over the whole prompt:",
            "",
            "| requests | TTFT without (ms) | TTFT with the prompt cache (ms) | ratio |",
            "|---|---:|---:|---:|",
        ]
        for label, idx in kinds.items():
            w, c = per_round(hf_without, idx), per_round(hf_with, idx)
            label = label.replace("cold cache", "system prompt cached beforehand")
            lines.append(
                f"| {label} | {1e3 * statistics.median(w):.0f} | "
                f"{1e3 * statistics.median(c):.0f} | {fmt_ratio(paired(w, c), 1)}x |"
            )
        lines += [
            "",
            f"Same first token with and without its prompt cache: {'yes' if hf_same else 'NO'}.",
        ]
    later = [i for i in range(n) if trace[i].user or trace[i].turn]
    computed = statistics.mean(len(trace[i].prompt) - hits[i] for i in later)
    work = statistics.mean(len(trace[i].prompt) for i in later) / computed
    speed = paired(per_round(t_without, later), per_round(t_with, later))
    cold = paired(per_round(t_without, [0]), per_round(t_with, [0]))
    cold_words = compare(
        cold,
        "faster than a plain prefill in every round, which no extra work explains (a sign "
        "of noise in the timing)",
        "slower in every round, as it pays for the hashing, the writes into the block pool "
        "and attention through the paged view",
        "the rounds disagree on whether it was faster or slower than a plain prefill, so "
        "the hashing, the writes into the block pool and attention through the paged view "
        "cost less than the rounds' noise",
    )
    lines += [
        "",
        f"Reading: every request after the first reads the shared system prompt from the "
        f"cache (rounded down to whole blocks of {BLOCK}), and a later turn also reads its own "
        "earlier questions and answers, since they were committed when they were fed. Such a "
        f"request computes about {computed:.0f} positions instead of "
        f"{computed * work:.0f} ({work:.0f}x less work), and its first token comes "
        f"{fmt_ratio(speed, 1)}x sooner, with the same token and logits equal to float32 rounding. The "
        "time falls by less than the work: a prefill of a few dozen positions still reads "
        "all 135M weights once, and the course's reference paged view gathers the cached "
        "keys and values of every layer into a dense copy before attending over them. The "
        f"first request finds nothing (ratio {fmt_ratio(cold)}x): {cold_words}. Over "
        "the whole trace the gain is smaller than per later request because the cold "
        "request is counted too (the TTFTs summed over the trace, above; a median over all "
        "requests hardly sees one cold request); the more requests share the prefix, the "
        "closer it gets to "
        "the per-request ratio.",
    ]
    if args.hf:
        lines += [
            "",
            "transformers' prompt-cache copy reuses only the system prompt, computed before "
            "the trace starts (so even its first request finds it): a later turn recomputes "
            "the user's earlier turns, and each request pays for the deep copy of the "
            "system prompt's cache. The course's prefix cache reuses every shared prefix "
            "without copying (blocks are shared by reference counts), at the cost of "
            "bookkeeping (hashes, block tables) and of its unoptimized paged attention.",
        ]
    lines.append("")
    wrong = [i for i in range(n) if not same[i]]
    mismatch = f"requests {wrong} got another first token with the cache" if wrong else ""
    if args.hf and not hf_same:
        mismatch = (mismatch + "; " if mismatch else "") + "transformers' first tokens differ"
    publish(lines, args.out, write=not args.no_write, mismatch=mismatch)


if __name__ == "__main__":
    main()
