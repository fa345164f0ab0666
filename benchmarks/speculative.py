"""Speculative decoding on SmolLM2-135M-Instruct with drafts cut out of the model itself.

Target: ``pretrained.load_smollm2()`` (30 layers, float32). Drafts share its weights
(self-speculative decoding: Zhang et al., 2023, https://arxiv.org/abs/2309.08168; Elhoushi
et al., LayerSkip, 2024): the same embeddings, final norm and head, with only some of the
30 blocks. No draft here was trained to be one, which is the point of the table: the
acceptance rate decides everything, and an untrained shortcut through the network
agrees with the full model rarely. (A distilled student, chapter 6's distillation lab,
is the draft to try next.) The target drafting for itself shows the ceiling of
tokens per target pass (``γ + 1``) and what the drafting costs when it is free of errors.

Every run is greedy, ``γ = num_draft_tokens``, and is checked token for token against
plain ``generate`` of the target (the output must be the same). Times are the best of
``--rounds`` interleaved rounds (the machine is shared); tokens/s count new tokens over the
whole call (prefill included) summed over the prompts.

    python benchmarks/speculative.py               # writes benchmarks/results/speculative.md
    python benchmarks/speculative.py --no-write    # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import torch
from _machine import cpu_name
from torch import nn

from llmfoundations import pretrained
from llmfoundations.generate import generate
from llmfoundations.inference.speculative import speculative_generate
from llmfoundations.models import DecoderLM

RESULTS = Path(__file__).resolve().parent / "results" / "speculative.md"
QUESTIONS = [
    "Explain in three sentences why the sky is blue.",
    "Give me three tips for learning to play the guitar.",
]


def self_draft(model: DecoderLM, layers: list[int]) -> DecoderLM:
    """A DecoderLM that runs only ``layers`` of ``model`` (shared modules, no copy)."""
    draft = DecoderLM.__new__(DecoderLM)
    nn.Module.__init__(draft)
    draft.config = dataclasses.replace(model.config, n_layers=len(layers))
    for name, module in model.named_children():
        if name != "blocks":
            setattr(draft, name, module)  # embeddings, final norm, head
    draft.blocks = nn.ModuleList([model.blocks[i] for i in layers])
    return draft.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--gamma", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    target, tok = pretrained.load_smollm2()
    n = target.config.n_layers
    drafts = {
        "the target itself (30 layers)": target,
        "first 10 layers": self_draft(target, list(range(10))),
        "first 15 + last 6 layers (21)": self_draft(target, [*range(15), *range(n - 6, n)]),
        "all but 2 middle layers (28)": self_draft(target, [i for i in range(n) if i not in (14, 15)]),
    }
    prompts = [
        tok.encode(
            pretrained.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True
            )
        )
        for q in QUESTIONS
    ]
    references = [generate(target, [p], args.new_tokens) for p in prompts]

    best = {"plain generate": float("inf")} | {name: float("inf") for name in drafts}
    stats: dict[str, tuple[int, int, int, int, bool]] = {}
    for _ in range(args.rounds):
        start = time.perf_counter()
        for p in prompts:
            generate(target, [p], args.new_tokens)
        best["plain generate"] = min(best["plain generate"], time.perf_counter() - start)
        for name, draft in drafts.items():
            proposed = accepted = forwards = new = 0
            same = True
            start = time.perf_counter()
            for p, ref in zip(prompts, references, strict=True):
                out = speculative_generate(target, draft, p, args.new_tokens, args.gamma)
                proposed += out.num_proposed
                accepted += out.num_accepted
                forwards += out.num_target_forwards
                new += out.num_new_tokens
                same = same and torch.equal(out.sequences, ref)
            best[name] = min(best[name], time.perf_counter() - start)
            stats[name] = (proposed, accepted, forwards, new, same)

    total = args.new_tokens * len(prompts)
    lines = [
        "# Speculative decoding on SmolLM2-135M (greedy, self-speculative drafts)",
        "",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}. "
        f"{len(prompts)} chat prompts x {args.new_tokens} new tokens, γ = {args.gamma}, "
        f"best of {args.rounds} rounds. Command: `python benchmarks/speculative.py`.",
        "",
        "| draft | acceptance rate | tokens per target pass | tokens/s | speed-up | same output |",
        "|---|---:|---:|---:|---:|:---:|",
        f"| none (plain generate) | - | 1.00 | {total / best['plain generate']:.1f} | 1.00x | - |",
    ]
    for name in drafts:
        proposed, accepted, forwards, new, same = stats[name]
        rate = accepted / proposed if proposed else 0.0
        lines.append(
            f"| {name} | {rate:.3f} | {new / forwards:.2f} | {new / best[name]:.1f} | "
            f"{best['plain generate'] / best[name]:.2f}x | {'yes' if same else 'NO'} |"
        )
    lines += [
        "",
        "Reading: the output is the target's own greedy output in every row (the check). "
        "Untrained drafts cut from the model are accepted too rarely to pay for their passes; "
        "the target as its own draft accepts everything and yields γ + 1 tokens per target "
        "pass, yet costs more than plain decoding, since every token still goes through all "
        "30 layers once in the draft. A speed-up needs a draft that is both cheap and usually "
        "right (a round yields (1 - α^(γ+1)) / (1 - α) tokens on average, Leviathan et "
        "al., eq. 1).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
