"""Quantized SmolLM2: perplexity on a fixed text at float32, int8, int4 and GPTQ int4.

One process loads SmolLM2-135M-Instruct (``pretrained.load_smollm2``, float32) and, for each
setting, quantizes a fresh copy's 210 block linear layers with ``inference.quantization``
(the tied embedding / output matrix stays float32, as ``quantize_model`` skips it):

- **float32**: the weights as loaded. They are *not* the original bf16 weights: the course's
  file stores them as GGUF Q4_1 (blocks of 32, ``w = d * q + m``), dequantized at load, so
  every setting below quantizes weights that were 4-bit once already;
- **int8**: symmetric, per channel (round to nearest);
- **int4 g64 / g32**: symmetric and asymmetric groups of 64 or 32 (round to nearest);
- **GPTQ int4 g64**: asymmetric groups of 64, ``gptq_quantize`` with calibration inputs
  collected block by block, as in the paper: block ``i``'s linear layers see the outputs of
  blocks ``0..i-1`` already quantized (16 sequences of 128 tokens of the course's chapter 2
  prose; the evaluation text is not among them).

Perplexity is ``exp`` of the mean next-token cross-entropy over two fixed texts: an English
passage (``TEXT`` below, written for this benchmark, 325 tokens, one sequence) and 4 x 256
tokens of the course's chapter 4 pages (held out from calibration). "Top-1 same"
is the share of positions where the quantized model's most likely next token equals
float32's. "Linear bytes" counts the 210 layers' stored codes, scales and zero points.
"Weights unchanged" is the share of weights that a round trip gives back (to a relative
1e-5): how close each grid is to the file's own Q4_1 grid.

    python benchmarks/quantization.py            # writes benchmarks/results/quantization.md
    python benchmarks/quantization.py --no-write
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _machine import cpu_name

from llmfoundations import pretrained
from llmfoundations.inference.quantization import (
    QuantizedLinear,
    gptq_quantize,
    quantize_model,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quantization.md"
TEXT = """\
The lighthouse keeper's notebook survived the storm better than the lighthouse did. Its
pages record, in a small and careful hand, the weather of every morning for eleven years:
the direction of the wind, the height of the swell, the colour of the sky just before the
sun came up. Most entries are a single line. A few run to a page, usually when a ship had
come too close to the rocks or when the supply boat was late and the keeper began to worry
about the oil for the lamp.

Reading the notebook today, one is struck less by the storms than by the ordinary days. The
keeper noticed that the gulls left the island a few hours before the worst weather, that
fog tended to arrive on the third calm day in a row, and that the barometer on the kitchen
wall was always a little slow. None of this was written as science. It was written so that
the next morning would be a little less surprising than the last one, which is perhaps what
science was before it had a name.

When the lighthouse was automated, the notebook went to the town library, where it sat in
a drawer for decades. A retired teacher found it while looking for old maps. She typed up
every entry, compared the keeper's notes with the records of the nearest weather station,
and found that his simple rules predicted fog about as well as the station's instruments
did at the time. Her small booklet about him is still sold at the harbour, next to the
postcards and the tide tables.
"""
SETTINGS = [  # (label, bits, group_size, symmetric, gptq)
    ("float32 (Q4_1 dequantized)", None, None, None, False),
    ("int8 per channel", 8, None, True, False),
    ("int4 g64 symmetric", 4, 64, True, False),
    ("int4 g64 asymmetric", 4, 64, False, False),
    ("int4 g32 asymmetric", 4, 32, False, False),
    ("GPTQ int4 g64 asymmetric", 4, 64, False, True),
]


def chapter_windows(tokenizer, chapter: str, n_seq: int, seq_len: int) -> torch.Tensor:
    """``n_seq`` windows of ``seq_len`` tokens spread over a chapter's pages: (n_seq, seq_len)."""
    pages = sorted((ROOT / "chapters" / chapter).glob("*.md"))
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in pages)
    ids = torch.tensor(tokenizer.encode(text))
    stride = (len(ids) - seq_len) // n_seq
    return torch.stack([ids[i * stride : i * stride + seq_len] for i in range(n_seq)])


@torch.no_grad()
def perplexity_and_top1(model, ids: torch.Tensor, reference_top1: torch.Tensor | None):
    """``ids`` (B, T) -> perplexity over all B * (T - 1) predictions, the top-1 tokens, and
    the share of them equal to ``reference_top1``."""
    logits = model(ids).logits[:, :-1]  # (B, T-1, V)
    nll = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    top1 = logits.argmax(-1)  # (B, T-1)
    same = 1.0 if reference_top1 is None else (top1 == reference_top1).float().mean().item()
    return math.exp(nll.item()), top1, same


class _Stop(Exception):
    pass


@torch.no_grad()
def block_inputs(model, ids: torch.Tensor) -> torch.Tensor:
    """The hidden states entering block 0, (B, T, C): a pre-hook catches them and stops."""
    caught = []

    def catch(module, args, kwargs):
        caught.append(args[0])
        raise _Stop

    handle = model.blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        model(ids)
    except _Stop:
        pass
    finally:
        handle.remove()
    return caught[0]


def _record_inputs(linears: dict) -> tuple[dict, dict, list]:
    """Pre-hooks that add up ``X^T X`` (float64) and the row count of each layer's inputs."""
    sums = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in linears.items()}
    counts = dict.fromkeys(linears, 0)

    def hook(name):
        def record(module, args):
            rows = args[0].reshape(-1, args[0].shape[-1]).double()  # (N, Cin)
            sums[name] += rows.T @ rows
            counts[name] += rows.shape[0]
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    return sums, counts, handles


@torch.no_grad()
def gptq_model(model, calib: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> None:
    """GPTQ block by block, as in the paper: run the calibration hidden states through
    block ``i`` with hooks that accumulate each linear layer's ``X^T X``, quantize its 7
    layers, then run the block again (now quantized) to get block ``i + 1``'s inputs."""
    x = block_inputs(model, calib)  # (n, T, C)
    positions = torch.arange(calib.shape[1])

    def run(block, x):
        return torch.cat([block(x[s : s + 4], positions=positions) for s in range(0, len(x), 4)])

    for block in model.blocks:
        linears = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
        sums, counts, handles = _record_inputs(linears)
        run(block, x)
        for h in handles:
            h.remove()
        for name, linear in linears.items():
            hessian = 2 * sums[name] / counts[name]  # = gptq_hessian of all its inputs
            qw = gptq_quantize(linear.weight, hessian, bits, group_size, symmetric=symmetric)
            parent, _, child = name.rpartition(".")
            setattr(block.get_submodule(parent), child, QuantizedLinear(qw, linear.bias))
        x = run(block, x)  # what the next block sees: this block's quantized outputs


def linear_bytes(model) -> int:
    total = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            total += m.quantized_weight().nbytes
        elif isinstance(m, torch.nn.Linear) and m is not model.lm_head:
            total += m.weight.numel() * m.weight.element_size()
    return total


def same_as_loaded(model, original) -> float:
    """Share of the block linears' weights that quantizing leaves as loaded (to 1e-5)."""
    same = total = 0
    loaded = dict(original.named_modules())
    for name, m in model.named_modules():
        if isinstance(m, QuantizedLinear):
            w = loaded[name].weight
            same += int(torch.isclose(m.dequantized_weight(), w, rtol=1e-5, atol=1e-8).sum())
            total += w.numel()
    return same / total if total else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--calib-seqs", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    base, tokenizer = pretrained.load_smollm2()
    ids = torch.tensor([tokenizer.encode(TEXT)])  # (1, T)
    held_out = chapter_windows(tokenizer, "04-prompting-sampling", 4, 256)  # (4, 256)
    calib = chapter_windows(tokenizer, "02-evolution", args.calib_seqs, 128)
    rows, reference, reference_2 = [], None, None
    for label, bits, group_size, symmetric, gptq in SETTINGS:
        t0 = time.perf_counter()
        model = copy.deepcopy(base)
        if bits is not None and gptq:
            gptq_model(model, calib, bits, group_size, symmetric)
        elif bits is not None:
            quantize_model(model, bits, group_size, symmetric=symmetric)
        seconds = time.perf_counter() - t0
        ppl, top1, same = perplexity_and_top1(model, ids, reference)
        ppl_2, top1_2, same_2 = perplexity_and_top1(model, held_out, reference_2)
        if reference is None:
            reference, reference_2 = top1, top1_2
        grid = same_as_loaded(model, base) if bits is not None else 1.0
        rows.append((label, ppl, same, ppl_2, same_2, linear_bytes(model), grid, seconds))
        print(f"{label:28} ppl {ppl:7.3f} / {ppl_2:7.3f}  top-1 same {same:.3f} / {same_2:.3f}  "
              f"{linear_bytes(model) / 2**20:6.1f} MiB  unchanged {grid:.3f}  ({seconds:.0f} s)",
              flush=True)
        del model

    fp32, fp32_2 = rows[0][1], rows[0][3]
    lines = [
        "# Quantized SmolLM2-135M-Instruct: perplexity on a fixed text",
        "",
        f"`python benchmarks/quantization.py` on {cpu_name()} ({platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads), "
        f"{time.strftime('%Y-%m-%d')}. Texts: *story*, {ids.shape[1]} tokens (`TEXT` in the "
        f"script); *ch. 4*, {held_out.numel()} tokens of chapter 4's pages ({len(held_out)} "
        f"windows of {held_out.shape[1]}). GPTQ calibration: {len(calib)} x 128 tokens of "
        "chapter 2's pages. The float32 weights are the file's Q4_1 weights dequantized, so "
        "every row quantizes weights that were 4-bit already. Perplexities on a few hundred "
        "tokens move by several percent with the text: compare rows, not digits.",
        "",
        "| setting | perplexity: story | ch. 4 | vs float32: story | ch. 4 | top-1 same as float32: story | ch. 4 | block linears (MiB) | weights unchanged | time to quantize (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, ppl, same, ppl_2, same_2, nbytes, grid, seconds in rows:
        lines.append(
            f"| {label} | {ppl:.2f} | {ppl_2:.2f} | {ppl / fp32:.3f}x | {ppl_2 / fp32_2:.3f}x | "
            f"{same:.3f} | {same_2:.3f} | {nbytes / 2**20:.1f} | {grid:.3f} | {seconds:.0f} |"
        )
    lines += [
        "",
        "\"Weights unchanged\": the share of the 210 layers' weights that the round trip gives back "
        "(to a relative 1e-5; the loaded weights already lie on the Q4_1 grid: blocks of 32, "
        "float offset).",
        "",
        "GPTQ is calibrated on the course's own pages, so *ch. 4* is the in-domain text and "
        "*story* the out-of-domain one; GPTQ's advantage over round-to-nearest is measured "
        "per layer on its calibration inputs (tests/test_inference_quantization.py), and "
        "how much of it reaches a perplexity depends on how close the text is to them.",
    ]
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    if not args.no_write:
        RESULTS.write_text(report, encoding="utf-8")
        print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
