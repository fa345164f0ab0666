"""A small scaling-law grid: train decoders of 5 sizes on 5 token budgets, record held-out loss.

Every run is a GPT-style ``DecoderLM`` (``ModelConfig.gpt``) trained from scratch on
character-level synthetic stories (``data.story_corpus``) with ``train.train_lm``, its
cosine schedule matched to the run's length (as Hoffmann et al., 2022, insist:
https://arxiv.org/abs/2203.15556), then scored on held-out stories with
``train.evaluate``. For each run the result records

- ``N``: non-embedding parameters (``num_parameters(exclude_embeddings=True)``, the
  scaling-law convention; with tied embeddings the output layer is not counted either),
- ``D``: training tokens (steps x batch size x sequence length). Windows start at random
  offsets of a 1.1M-character text, so even the largest budget (1.05M tokens) is about
  one epoch: little repetition, but not strictly fresh data,
- ``L``: held-out cross-entropy in nats per character,
- ``C = 6 N D``: the usual estimate of training FLOPs,

plus the machine (platform, CPU, CPU count, torch version and threads) and the run times.
Lab 02-4 loads ``benchmarks/results/scaling_grid.json``, fits
``scaling.fit_scaling_law`` to it and re-runs two cells with the same recipe.

One recipe for every run (stored in the JSON under ``"recipe"``): training text
``story_corpus(train_chars, seed=0)``, held-out text ``story_corpus(val_chars, seed=1)``,
a ``CharTokenizer`` built on both, ``torch.manual_seed(seed)`` right before the model is
built, ``TrainConfig(steps, batch_size, seq_len, lr, warmup_steps=max(1, steps // 10),
seed=seed)``.

Left out: learning-rate tuning per size (one ``lr`` for all, which favours no size in
particular but is optimal for none), several seeds per cell, IsoFLOP profiles, and any
size where a 2-core CPU would need more than a few minutes.

    python benchmarks/scaling_grid.py            # ~10 min on one core; writes results/
    python benchmarks/scaling_grid.py --quick    # 2 x 2 grid, a few seconds, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from _machine import cpu_name

from llmfoundations import data, models, train

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class GridRecipe:
    """Everything that decides a run's result besides its size and token budget."""

    train_chars: int = 1_100_000
    val_chars: int = 32_000
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 5e-3
    seed: int = 0
    # (d_model, n_layers, n_heads) of each model size, smallest first
    sizes: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(16, 1, 2), (24, 2, 2), (32, 3, 4), (48, 3, 4), (64, 4, 4)]
    )
    # training tokens of each budget (whole batches: multiples of batch_size * seq_len)
    tokens: list[int] = field(
        default_factory=lambda: [65_536, 131_072, 262_144, 524_288, 1_048_576]
    )


def load_texts(recipe: GridRecipe) -> tuple[data.CharTokenizer, torch.Tensor, torch.Tensor]:
    """The tokenizer and the training / held-out token streams of the recipe."""
    train_text = data.story_corpus(recipe.train_chars, seed=0)
    val_text = data.story_corpus(recipe.val_chars, seed=1)
    tokenizer = data.CharTokenizer(train_text + val_text)
    train_ids = torch.tensor(tokenizer.encode(train_text))  # (train_chars,)
    val_ids = torch.tensor(tokenizer.encode(val_text))  # (val_chars,)
    return tokenizer, train_ids, val_ids


def run_cell(
    recipe: GridRecipe,
    size: tuple[int, int, int],
    tokens: int,
    vocab_size: int,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
) -> dict:
    """Train one model of ``size`` on ``tokens`` tokens and score it on ``val_ids``."""
    d_model, n_layers, n_heads = size
    steps = tokens // (recipe.batch_size * recipe.seq_len)
    config = models.ModelConfig.gpt(
        vocab_size, d_model, n_layers, n_heads, max_seq_len=recipe.seq_len
    )
    torch.manual_seed(recipe.seed)
    model = models.DecoderLM(config)
    train_config = train.TrainConfig(
        steps=steps,
        batch_size=recipe.batch_size,
        seq_len=recipe.seq_len,
        lr=recipe.lr,
        warmup_steps=max(1, steps // 10),
        seed=recipe.seed,
    )
    start = time.perf_counter()
    history = train.train_lm(model, train_ids, train_config, progress=False)
    seconds = time.perf_counter() - start
    val_loss = train.evaluate(model, data.sequential_batches(val_ids, 64, recipe.seq_len))
    n = model.num_parameters(exclude_embeddings=True)
    d = steps * recipe.batch_size * recipe.seq_len
    return {
        "d_model": d_model,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "N": n,
        "N_total": model.num_parameters(),
        "D": d,
        "steps": steps,
        "L": round(val_loss, 5),
        "train_loss_last": round(history.loss[-1], 5),
        "C": 6.0 * n * d,
        "seconds": round(seconds, 2),
    }


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = round(os.getloadavg()[0], 1)
    return info


def markdown(result: dict) -> str:
    recipe = result["recipe"]
    runs = result["runs"]
    budgets = sorted({r["D"] for r in runs})
    sizes = sorted({r["N"] for r in runs})
    loss = {(r["N"], r["D"]): r["L"] for r in runs}
    head = "| N (non-embedding) | " + " | ".join(f"D = {d:,}" for d in budgets) + " |"
    rule = "| ---: | " + " | ".join("---:" for _ in budgets) + " |"
    rows = [f"| {n:,} | " + " | ".join(f"{loss[n, d]:.3f}" for d in budgets) + " |" for n in sizes]
    m = result["machine"]
    return "\n".join(
        [
            "# Scaling grid: held-out loss of small decoders",
            "",
            f"{len(sizes)} model sizes x {len(budgets)} token budgets, GPT-style `DecoderLM`, "
            "character-level synthetic stories, one seed. Held-out cross-entropy in nats per "
            f"character (`train.evaluate` on {recipe['val_chars']:,} characters of unseen "
            f"stories). Batch {recipe['batch_size']} x {recipe['seq_len']} characters, "
            f"AdamW at lr {recipe['lr']} with a cosine schedule matched to each run's length.",
            "",
            head,
            rule,
            *rows,
            "",
            f"Total run time: {result['total_seconds']:.0f} s. Machine: {m['cpu']}, "
            f"{m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']}, "
            f"Python {m['python']}, {m['platform']}"
            + (
                f", load average at start {m['load_average_at_start']}."
                if "load_average_at_start" in m
                else "."
            ),
            "",
            "Command: `python benchmarks/scaling_grid.py`; the numbers are in "
            "`scaling_grid.json`. Lab 02-4 fits the Chinchilla law to them.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 x 2 grid, writes nothing")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: these models are too small to gain from more, and "
        "one thread does not slow down when other programs share the cores)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = GridRecipe()
    if args.quick:
        recipe.sizes, recipe.tokens = recipe.sizes[:2], recipe.tokens[:2]
    info = machine()
    start = time.perf_counter()
    tokenizer, train_ids, val_ids = load_texts(recipe)
    runs = []
    for size in recipe.sizes:
        for tokens in recipe.tokens:
            run = run_cell(recipe, size, tokens, tokenizer.vocab_size, train_ids, val_ids)
            runs.append(run)
            print(
                f"N={run['N']:>7,}  D={run['D']:>9,}  L={run['L']:.4f}  ({run['seconds']:.1f} s)",
                flush=True,
            )
    result = {
        "description": "Held-out loss of small GPT-style decoders over a grid of sizes and "
        "token budgets (benchmarks/scaling_grid.py).",
        "recipe": asdict(recipe),
        "vocab_size": tokenizer.vocab_size,
        "runs": runs,
        "machine": info,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    print(f"total {result['total_seconds']:.0f} s")
    if args.quick:
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scaling_grid.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "scaling_grid.md").write_text(markdown(result))
    print(f"wrote {RESULTS / 'scaling_grid.json'} and scaling_grid.md")


if __name__ == "__main__":
    main()
