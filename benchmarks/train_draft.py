"""Distil a small draft for speculative decoding out of SmolLM2-135M-Instruct (a few minutes on a CPU).

The draft keeps a few of the target's 30 blocks (copied, then trained) and shares its
embeddings, final norm and head (frozen: the head is the tied embedding matrix, and the
draft must keep the target's vocabulary). Training is sequence-level distillation (Kim
and Rush, 2016, https://arxiv.org/abs/1606.07947) with soft targets: the target answers
a set of prompts greedily, and the draft learns, on the answer positions, Hinton's loss
``inference.distillation.kd_loss`` against the target's logits plus cross-entropy on the
target's greedy tokens (the argmax of its logits: what greedy speculative decoding asks
the draft to guess). About 4 minutes on 2 CPU cores: 1 to generate, 2.5 to train. The prompts are written here and differ from ``speculative.py``'s benchmark
prompts (same kinds of task: open questions and copy-heavy edits).

    python benchmarks/train_draft.py            # writes benchmarks/checkpoints/smollm2_draft.pt
    python benchmarks/speculative.py            # then uses it (a "trained draft" row)
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch
from speculative import DRAFT_CHECKPOINT, chat_ids, self_draft
from torch import nn

from llmfoundations import pretrained
from llmfoundations.generate import generate
from llmfoundations.inference.distillation import kd_loss

TOPICS = [
    "rainbows",
    "tides",
    "volcanoes",
    "photosynthesis",
    "the seasons",
    "thunder",
    "magnets",
    "bread rising",
    "ice floating",
    "the moon's phases",
    "echoes",
    "rust",
]
ACTIVITIES = [
    "running a first 5 km",
    "keeping houseplants alive",
    "writing a cover letter",
    "learning a new language",
    "cooking rice",
    "sleeping better",
    "saving money",
    "studying for an exam",
]
FUNCTIONS = [
    (
        "total",
        "def total(prices, tax):\n    result = 0\n    for p in prices:\n        result += p\n    return result * (1 + tax)",
    ),
    ("is_even", "def is_even(n):\n    return n % 2 == 0"),
    (
        "greet",
        'def greet(name, times):\n    for _ in range(times):\n        print("Hello, " + name)',
    ),
    (
        "last_word",
        "def last_word(sentence):\n    words = sentence.split()\n    return words[-1] if words else ''",
    ),
    ("scale", "def scale(values, factor):\n    return [v * factor for v in values]"),
    ("square", "def square(x):\n    return x * x"),
]
TEXTS = [
    "Our team meets evry Monday at ten. Please bring your notes and a list of questons.",
    "The garden was full of flowers in the sumer, and the children played there untill dark.",
    "She recieved the package on Tuesday and opened it imediately.",
    "The museum is closed on Sundys but open late on Thursdays untill nine.",
]


def training_prompts() -> list[str]:
    """Open questions and copy-heavy edits (none of them is a benchmark prompt)."""
    prompts = [f"Explain {t} in three sentences." for t in TOPICS]
    prompts += [f"Give me three tips for {a}." for a in ACTIVITIES]
    for name, code in FUNCTIONS:
        prompts.append(
            f"Add type hints to this Python function and return the full code:\n```python\n{code}\n```"
        )
        prompts.append(
            f"Rename the function `{name}` to `my_{name}` and return only the code:\n```python\n{code}\n```"
        )
    prompts += [
        f"Fix the spelling mistakes in this text and return only the corrected text:\n\n{t}"
        for t in TEXTS
    ]
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2, 3, 28, 29])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=150.0, help="training time budget")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the soft (KL) term")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-prompts", type=int, default=None, help="fewer prompts (a smoke test)"
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    target, tok = pretrained.load_smollm2()
    target.requires_grad_(False)
    draft = self_draft(target, args.layers)  # shared embeddings, norm, head (frozen)
    draft.blocks = nn.ModuleList([copy.deepcopy(target.blocks[i]) for i in args.layers])
    draft.blocks.requires_grad_(True)

    # 1. The target's greedy answers (batched, left-padded by generate).
    start = time.perf_counter()
    sequences: list[tuple[list[int], int]] = []  # (prompt + answer ids, prompt length)
    prompts = [chat_ids(tok, p) for p in training_prompts()][: args.max_prompts]
    for i in range(0, len(prompts), 8):
        batch = prompts[i : i + 8]
        out = generate(target, batch, args.new_tokens, stop_token_ids=pretrained.STOP_TOKEN_IDS)
        width = max(len(p) for p in batch)
        for p, row in zip(batch, out.tolist(), strict=True):
            answer = row[width:]
            for j, t in enumerate(answer):  # cut after the first stop token (the rest is pad)
                if t in pretrained.STOP_TOKEN_IDS:
                    answer = answer[: j + 1]
                    break
            sequences.append((p + answer, len(p)))
    gen_seconds = time.perf_counter() - start
    answer_tokens = sum(len(s) - n for s, n in sequences)
    print(f"{len(sequences)} answers, {answer_tokens} tokens, generated in {gen_seconds:.0f} s")

    # 2. The target's logits on the answer positions, once: (A_i, V) per answer.
    start = time.perf_counter()
    with torch.no_grad():
        teacher_logits = [
            target(torch.tensor([s])).logits[0, n - 1 : len(s) - 1] for s, n in sequences
        ]
    teacher_seconds = time.perf_counter() - start

    # 3. Distil on the answer positions until the time budget is spent.
    optimizer = torch.optim.AdamW(draft.blocks.parameters(), lr=args.lr, weight_decay=0.0)
    draft.train()
    step, start, order = 0, time.perf_counter(), []
    while time.perf_counter() - start < args.seconds:
        if not order:
            order = list(range(len(sequences)))
            rng.shuffle(order)
        chosen = [order.pop() for _ in range(min(args.batch_size, len(order)))]
        width = max(len(sequences[i][0]) for i in chosen)
        ids = torch.zeros(len(chosen), width, dtype=torch.long)  # (B, T) right-padded
        keep = torch.zeros(len(chosen), width, dtype=torch.bool)  # (B, T): answer positions
        for r, i in enumerate(chosen):
            s, n = sequences[i]
            ids[r, : len(s)] = torch.tensor(s)
            keep[r, n - 1 : len(s) - 1] = True  # position t predicts token t + 1
        student = draft(ids).logits[keep]  # (N, V); causal, so right padding changes nothing
        teacher = torch.cat([teacher_logits[i] for i in chosen])  # (N, V), same order
        labels = teacher.argmax(-1)  # (N,): the target's greedy tokens
        loss = kd_loss(student, teacher, args.temperature, args.alpha, labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 10 == 0:
            agree = (student.argmax(-1) == labels).float().mean()
            print(
                f"step {step:4d}  {time.perf_counter() - start:5.0f} s  loss {loss.item():.3f}  "
                f"argmax agreement {agree:.3f}"
            )
    train_seconds = time.perf_counter() - start

    DRAFT_CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "layers": list(args.layers),
            "blocks": draft.blocks.state_dict(),
            "steps": step,
            "train_seconds": train_seconds,
            "generate_seconds": gen_seconds,
            "teacher_seconds": teacher_seconds,
            "answer_tokens": answer_tokens,
            "prompts": len(sequences),
        },
        DRAFT_CHECKPOINT,
    )
    print(f"{step} steps in {train_seconds:.0f} s; wrote {DRAFT_CHECKPOINT}")


if __name__ == "__main__":
    main()
