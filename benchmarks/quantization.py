"""Quantized SmolLM2: quality, size and decoding speed at float32, bfloat16, int8, int4, NF4
and GPTQ int4.

One process loads SmolLM2-135M-Instruct (``pretrained.load_smollm2``, float32) and builds one
model per setting. Every setting but bfloat16 replaces the 210 block linear layers only
(the tied embedding / output matrix stays float32, as ``quantize_model`` skips it):

- **float32**: the weights as loaded. They are *not* the original bf16 weights: the course's
  file stores them as GGUF Q4_1 (blocks of 32, ``w = d * q + m``), dequantized at load, so
  every setting below quantizes weights that were 4-bit once already;
- **bfloat16**: the whole model cast with ``model.to(torch.bfloat16)`` (embedding and head
  included) and *computed* in bfloat16: the matrix products take bf16 inputs and weights;
  the norms, the rotary embedding and the softmax upcast to float32 inside, as the course's
  layers do;
- **int8**: symmetric, per channel (round to nearest); **int4 g64 / g32**: symmetric and
  asymmetric groups (round to nearest), all ``inference.quantization.QuantizedLinear``;
- **NF4**: ``finetuning.nf4.NF4Linear``, blocks of 64, without and with double quantization;
- **GPTQ int4 g64**: asymmetric groups of 64, ``gptq_quantize`` with calibration inputs
  collected block by block, as in the paper: block ``i``'s linear layers see the outputs of
  blocks ``0..i-1`` already quantized (16 sequences of 128 tokens of the course's chapter 2
  prose; the evaluation texts are not among them);
- **two fused paths** (this script's ``Int8PackLinear`` and ``Int4PackLinear``): the same
  int8 and int4 g32 asymmetric codes, multiplied by torch's CPU weight-only kernels
  ``torch._weight_int8pack_mm`` and ``torch._weight_int4pack_mm_for_cpu``, which read the
  packed integers directly instead of rebuilding a float32 weight. On this CPU they are
  fast only with bfloat16 activations, so these layers round their input to bf16 and give
  float32 back (int4: the scales and offsets are stored in bf16 too). Each is checked
  against ``F.linear`` with the dequantized weight (the table reports the largest error).

The dequantizing layers (``QuantizedLinear``, ``NF4Linear``) rebuild each float32 weight
in every forward pass, so they save memory but cost time.

Quality. Perplexity is ``exp`` of the mean next-token cross-entropy over two fixed texts:
an English passage (``TEXT`` below, written for this benchmark, 325 tokens, one sequence)
and 4 x 256 tokens of the course's chapter 4 pages (held out from calibration). "Top-1
same" is the share of positions where the model's most likely next token equals
float32's. "Greedy prefix" is agreement in generation: three chat prompts (``PROMPTS``)
are continued greedily by 32 new tokens (one batch of 3, left-padded, stopping at the end
of the turn; a stopped row counts as padding, so two answers that end identically agree
to the end); for each prompt, the number of new tokens equal to float32's before the first
difference; the table shows the three numbers (32 = identical). "Weights unchanged" is
the share of block weights that the round trip gives back (to a relative 1e-5): how close
each grid is to the file's own Q4_1 grid.

Size. "Block linears": bytes of the 210 layers' stored codes, scales and zero points (or
weights). "In memory": bytes of all parameters and buffers of the model as run (shared
tensors once). "On disk": the size of ``safetensors.torch.save_model`` of the model (its
state dict: codes, scales, zero points as they are stored; the tied matrix once), written
to a temporary folder.

Speed. Greedy ``generate`` with the KV cache, batch 1, 32 new tokens after the first
prompt, no early stop; decode tokens/s = 31 / (time from the first to the last step),
best of 2 rounds interleaved over the settings.

    python benchmarks/quantization.py            # writes benchmarks/results/quantization.md
    python benchmarks/quantization.py --no-write
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from _machine import cpu_name
from torch import Tensor, nn

from llmfoundations import pretrained
from llmfoundations.finetuning.nf4 import NF4Linear
from llmfoundations.generate import generate
from llmfoundations.inference.quantization import (
    QuantizedLinear,
    gptq_quantize,
    quantize_model,
    unpack_int4,
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
PROMPTS = [
    "Explain in two sentences why the sky is blue.",
    "Write a short story about a robot who learns to paint.",
    "Give me three tips for learning to play the guitar.",
]
NEW_TOKENS = 32
ROUNDS = 2


# ----------------------------------------------------------------------------- fused layers


class Int8PackLinear(nn.Module):
    """The codes of a symmetric per-channel int8 ``QuantizedLinear``, multiplied by
    ``torch._weight_int8pack_mm`` (int8 weights read directly, float32 accumulation).

    ``y = (bf16(x) @ q^T) * s + b`` with ``q = codes - 128`` (int8, (Cout, Cin)) and the
    float32 scales ``s`` (Cout,) applied to the output, so the weights are exactly the
    int8 row's; the input and the kernel's output are rounded to bfloat16 (the kernel is
    vectorized for bf16 on this CPU, not for float32)."""

    def __init__(self, layer: QuantizedLinear) -> None:
        super().__init__()
        if layer.bits != 8 or not layer.symmetric or layer.group_size != layer.in_features:
            raise ValueError("Int8PackLinear needs symmetric int8 per channel")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.register_buffer("weight", (layer.codes.to(torch.int16) - 128).to(torch.int8))
        self.register_buffer("scale", layer.scale[:, 0].contiguous())  # (Cout,) float32
        self.register_buffer("ones", torch.ones(self.out_features, dtype=torch.bfloat16))
        self.register_buffer("bias", layer.bias)

    def dequantized_weight(self) -> Tensor:
        return self.weight.float() * self.scale[:, None]  # (Cout, Cin)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, Cin)
        y = torch._weight_int8pack_mm(flat, self.weight, self.ones).float() * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)  # (..., Cout)


class Int4PackLinear(nn.Module):
    """The codes of a grouped int4 ``QuantizedLinear``, multiplied by
    ``torch._weight_int4pack_mm_for_cpu`` (packed 4-bit weights read directly).

    The kernel decodes ``w = (c - 8) * s + m`` per group, so a zero point ``z`` becomes the
    float offset ``m = (8 - z) * s``; scales and offsets are stored as bf16 pairs
    (Ng, Cout, 2), as the kernel wants them in the input's dtype, and the input is rounded
    to bf16 (fast on this CPU; float32 is not)."""

    def __init__(self, layer: QuantizedLinear) -> None:
        super().__init__()
        if layer.bits != 4:
            raise ValueError("Int4PackLinear needs int4 codes")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.group_size = layer.group_size
        codes = unpack_int4(layer.codes).to(torch.int32)  # (Cout, Cin)
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(codes, 2))
        scale = layer.scale.float()  # (Cout, Ng)
        zero = torch.full_like(scale, 8.0) if layer.symmetric else layer.zero_point.float()
        pairs = torch.stack([scale, (8 - zero) * scale], dim=-1)  # (Cout, Ng, 2)
        self.register_buffer("scales_and_zeros", pairs.transpose(0, 1).contiguous().bfloat16())
        self.register_buffer("bias", layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, Cin)
        y = torch._weight_int4pack_mm_for_cpu(
            flat, self.packed, self.group_size, self.scales_and_zeros
        ).float()  # (N, Cout)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)  # (..., Cout)


BLOCK_LAYERS = (nn.Linear, QuantizedLinear, NF4Linear, Int8PackLinear, Int4PackLinear)


def block_layers(model) -> dict[str, nn.Module]:
    """The 210 linear layers of the blocks (or what replaced them), by name."""
    return {n: m for n, m in model.blocks.named_modules() if isinstance(m, BLOCK_LAYERS)}


def swap(model, make: Callable[[nn.Module], nn.Module]) -> None:
    """Replace every block linear layer ``m`` of ``model`` by ``make(m)``, in place."""
    for name, layer in block_layers(model).items():
        parent, _, child = name.rpartition(".")
        setattr(model.blocks.get_submodule(parent), child, make(layer))


@torch.no_grad()
def fused_error(model, reference) -> float:
    """Largest ``|y - y_ref| / max |y_ref|`` over the block layers of ``model`` on random
    inputs (4, Cin), ``y_ref`` from ``F.linear`` with ``reference``'s dequantized weights."""
    gen = torch.Generator().manual_seed(0)
    ref_layers, worst = block_layers(reference), 0.0
    for name, layer in block_layers(model).items():
        x = torch.randn(4, layer.in_features, generator=gen)  # (4, Cin)
        y_ref = F.linear(x, ref_layers[name].dequantized_weight())  # (4, Cout)
        worst = max(worst, ((layer(x) - y_ref).abs().max() / y_ref.abs().max()).item())
    return worst


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
    sums = {
        n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64)
        for n, m in linears.items()
    }
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
        return torch.cat(
            [block(x[s : s + 4], positions=positions).hidden for s in range(0, len(x), 4)]
        )

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


# ----------------------------------------------------------------------------- measuring


def _stored_bytes(module: nn.Module) -> int:
    """Bytes of a layer's parameters and buffers except its bias."""
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    return sum(t.nbytes for n, t in tensors.items() if n != "bias")


def linear_bytes(model) -> int:
    """Bytes stored by the 210 block layers: codes, scales, zero points (or weights)."""
    return sum(_stored_bytes(m) for m in block_layers(model).values())


def block_numel(model) -> int:
    return sum(m.in_features * m.out_features for m in block_layers(model).values())


def bytes_in_memory(model) -> int:
    """Bytes of all parameters and buffers of ``model``, each storage once (tied weights)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.nbytes)
    return sum(seen.values())


def bytes_on_disk(model, label: str, folder: Path) -> int:
    """Size of the model's state dict written by ``safetensors.torch.save_model``."""
    path = folder / "model.safetensors"
    safetensors.torch.save_model(model, str(path), metadata={"setting": label})
    size = path.stat().st_size
    path.unlink()
    return size


def same_as_loaded(model, original) -> float | None:
    """Share of the block linears' weights that the setting leaves as loaded (to a relative
    1e-5); ``None`` where a layer cannot give its weights back (the int4 kernel's layout)."""
    same = total = 0
    loaded = block_layers(original)
    for name, m in block_layers(model).items():
        if isinstance(m, nn.Linear):
            w_hat = m.weight.float()
        elif hasattr(m, "dequantized_weight"):
            w_hat = m.dequantized_weight()
        else:
            return None
        w = loaded[name].weight
        same += int(torch.isclose(w_hat, w, rtol=1e-5, atol=1e-8).sum())
        total += w.numel()
    return same / total


@torch.no_grad()
def greedy_tokens(model, prompts: list[list[int]]) -> torch.Tensor:
    """``NEW_TOKENS`` greedy tokens per prompt (B, NEW_TOKENS), one left-padded batch,
    stopped rows (and an early end of the whole batch) filled with the pad id."""
    out = generate(
        model,
        prompts,
        NEW_TOKENS,
        stop_token_ids=pretrained.STOP_TOKEN_IDS,
        pad_token_id=pretrained.PAD_ID,
    )
    new = out[:, max(len(p) for p in prompts) :]  # (B, <= NEW_TOKENS)
    return F.pad(new, (0, NEW_TOKENS - new.shape[1]), value=pretrained.PAD_ID)


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    """(B, n) and (B, n) -> per row, the number of leading positions where they agree."""
    differs = (a != b).int()  # (B, n)
    first = torch.where(differs.any(1), differs.argmax(1), torch.tensor(a.shape[1]))
    return first.tolist()


@torch.no_grad()
def decode_speed(model, ids: torch.Tensor) -> float:
    """Greedy decoding of ``NEW_TOKENS`` tokens after ``ids`` (1, T) with the KV cache:
    ``NEW_TOKENS - 1`` over the time from the first step to the last (tokens/s)."""
    times: list[float] = []
    generate(model, ids, NEW_TOKENS, streamer=lambda tokens: times.append(time.perf_counter()))
    return (NEW_TOKENS - 1) / (times[-1] - times[0])


# ----------------------------------------------------------------------------- settings


def _quantized(base, bits: int, group_size: int | None, symmetric: bool):
    model = copy.deepcopy(base)
    quantize_model(model, bits, group_size, symmetric=symmetric)
    return model


def _fused(base, bits: int, group_size: int | None, symmetric: bool, layer: type):
    """A quantized copy whose layers run through a fused kernel; also returns the largest
    relative output error against the dequantizing layers of the same codes."""
    quantized = _quantized(base, bits, group_size, symmetric)
    model = copy.deepcopy(quantized)
    swap(model, layer)
    return model, fused_error(model, quantized)


def _nf4(base, double_quant: bool):
    model = copy.deepcopy(base)
    swap(model, lambda linear: NF4Linear(linear, 64, double_quant=double_quant))
    return model


def _gptq(base, calib):
    model = copy.deepcopy(base)
    gptq_model(model, calib, 4, 64, symmetric=False)
    return model


def _bf16(base):
    return copy.deepcopy(base).to(torch.bfloat16)


# label -> builder(base, calib) -> model or (model, fused kernel error)
SETTINGS: dict[str, Callable] = {
    "float32 (Q4_1 dequantized)": lambda base, calib: base,
    "bfloat16 (whole model, computed in bf16)": lambda base, calib: _bf16(base),
    "int8 per channel": lambda base, calib: _quantized(base, 8, None, True),
    "int4 g64 symmetric": lambda base, calib: _quantized(base, 4, 64, True),
    "int4 g64 asymmetric": lambda base, calib: _quantized(base, 4, 64, False),
    "int4 g32 asymmetric": lambda base, calib: _quantized(base, 4, 32, False),
    "NF4 b64": lambda base, calib: _nf4(base, False),
    "NF4 b64, double quantization": lambda base, calib: _nf4(base, True),
    "GPTQ int4 g64 asymmetric": _gptq,
    "int8 per channel, fused kernel (bf16 inputs)": lambda base, calib: _fused(
        base, 8, None, True, Int8PackLinear
    ),
    "int4 g32 asymmetric, fused kernel (bf16 inputs)": lambda base, calib: _fused(
        base, 4, 32, False, Int4PackLinear
    ),
}


@dataclass
class Row:
    label: str
    model: nn.Module
    seconds: float
    ppl: float = 0.0
    same: float = 0.0
    ppl_2: float = 0.0
    same_2: float = 0.0
    prefixes: list[int] = field(default_factory=list)
    grid: float | None = None
    linear_bytes: int = 0
    bits: float = 0.0
    memory: int = 0
    disk: int = 0
    kernel_error: float | None = None
    tokens: Tensor | None = None  # (3, NEW_TOKENS) greedy tokens
    speeds: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- report


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def reading(rows: list[Row], speed_0: float) -> list[str]:
    """The honest reading of the speed columns, with this run's ratios."""
    ratio = {r.label: max(r.speeds) / speed_0 for r in rows}
    slow = [
        v for k, v in ratio.items() if k != rows[0].label and "fused" not in k and "bf" not in k
    ]
    fused = {k: v for k, v in ratio.items() if "fused" in k}
    head = rows[0].model.embed.weight.nbytes / 2**20  # MiB of the float32 tied matrix
    lines = ["## Reading", ""]
    lines += [
        (
            "**Greedy answers are fragile.** Perplexity and top-1 agreement average over "
            "positions; greedy decoding follows one path, and a single flipped near-tie changes "
            "everything after it. Even int8 and bfloat16, within about 2% of float32's "
            "perplexity, leave float32's answer after a few tokens on some prompts; the 4-bit "
            "rows mostly leave it within the first few tokens. A different answer is not a worse "
            "one: judge quality by the perplexities, and the prefix as a measure of how "
            "reproducible outputs are."
        ),
        "",
    ]
    if slow:
        lines.append(
            f"**The dequantizing layers are slower than float32** ({min(slow):.2f}x to "
            f"{max(slow):.2f}x its decode speed): they save memory, not time. At batch 1 a "
            "decoding step is bound by reading the weights, and `QuantizedLinear` / `NF4Linear` "
            "rebuild every float32 weight in every forward pass: they read the 1 or 0.5 byte of "
            "a code, but then write and re-read full float32 tensors in several element-wise "
            "passes (unpack, convert, subtract the zero point or look up the NF4 value, "
            "multiply by the scales) before the matrix product reads the 4-byte weight once "
            "more, so each step moves more bytes than the float32 model does; int4 and NF4 add "
            "unpacking passes and are slower still."
        )
        lines.append("")
    if fused:
        parts = ", ".join(f"{k.split(',')[0]} {v:.2f}x" for k, v in fused.items())
        lines.append(
            f"**A fused kernel reads the small codes directly** ({parts} float32's speed): "
            "torch's CPU weight-only kernels multiply int8 or packed int4 weights by the "
            "activations without writing a float32 copy (llama.cpp's Q4/Q8 kernels and "
            "torchao's int8 weight-only path with `torch.compile` do the same). On this CPU "
            "(AVX2, no AVX-512) they are fast with bf16 activations (in a one-layer check, "
            "float32 inputs took a path several times slower than float32's own matrix "
            "product), so these rows "
            "also round the inputs of the block layers to bf16; their perplexities stay within "
            "1% of the dequantizing rows with the same codes, but a "
            "near-tie can still flip a greedy token. The gain is bounded: the tied "
            f"embedding / output matrix (float32, {head:.0f} MiB), read in full at every step, and "
            "the attention over the cache are unchanged."
        )
        lines.append("")
    bf16 = [v for k, v in ratio.items() if k.startswith("bfloat16")]
    if bf16:
        lines.append(
            f"**bfloat16** decodes at {bf16[0]:.2f}x float32's speed here: every matrix, the "
            "output matrix included, is read at half the bytes. Its quality cost comes from "
            "rounding the weights *and* the activations (the other rows keep float32 "
            "activations and a float32 output matrix), and where float32's top two tokens are "
            "close, that is enough to change a greedy answer."
        )
        lines.append("")
    lines.append(
        "In memory and on disk the sizes agree (the same tensors; the file adds a small "
        f"header), and the float32 embedding ({head:.0f} MiB) is a floor under every 4-bit row. The "
        "fused int4 layout stores a bf16 scale and a bf16 offset per group of 32 (5.0 bits "
        "per weight) where `QuantizedWeight` stores a float32 scale and a uint8 zero point "
        "(5.25)."
    )
    return lines


def report(rows: list[Row], ids, held_out, calib) -> str:
    fp32 = rows[0]
    speed_0 = max(fp32.speeds)
    by_label = {r.label: r for r in rows}
    lines = [
        "# Quantized SmolLM2-135M-Instruct: quality, size and decoding speed",
        "",
        f"`python benchmarks/quantization.py` on {cpu_name()} ({platform.machine()}, "
        f"torch {torch.__version__}, safetensors {safetensors.__version__}, "
        f"{torch.get_num_threads()} threads), {time.strftime('%Y-%m-%d')}. One process, all "
        "settings side by side. The float32 weights are the file's Q4_1 weights dequantized, "
        "so every row quantizes weights that were 4-bit already. Every setting but bfloat16 "
        "replaces the 210 block linear layers only; the tied embedding / output matrix "
        f"({fp32.model.embed.weight.numel() / 1e6:.1f} M weights) stays float32.",
        "",
        "## Quality",
        "",
        f"Texts: *story*, {ids.shape[1]} tokens (`TEXT` in the script); *ch. 4*, "
        f"{held_out.numel()} tokens of chapter 4's pages ({len(held_out)} windows of "
        f"{held_out.shape[1]}). GPTQ calibration: {len(calib)} x {calib.shape[1]} tokens of "
        "chapter 2's pages. *Greedy prefix*: for each of 3 chat prompts, how many of the "
        f"{NEW_TOKENS} greedy new tokens equal float32's before the first difference "
        f"({NEW_TOKENS} = the same answer; an answer that ends counts as padding after its "
        "end). Perplexities on a few hundred tokens move by several percent with the text: "
        "compare rows, not digits.",
        "",
        "| setting | perplexity: story | ch. 4 | vs float32: story | ch. 4 "
        "| top-1 same as float32: story | ch. 4 | greedy prefix (3 prompts) | weights unchanged |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        grid = "–" if r.grid is None else f"{r.grid:.3f}"
        lines.append(
            f"| {r.label} | {r.ppl:.2f} | {r.ppl_2:.2f} | {r.ppl / fp32.ppl:.3f}x | "
            f"{r.ppl_2 / fp32.ppl_2:.3f}x | {r.same:.3f} | {r.same_2:.3f} | "
            f"{', '.join(map(str, r.prefixes))} | {grid} |"
        )
    lines += [
        "",
        "## Size and speed",
        "",
        "*Block linears*: the 210 layers' codes, scales and zero points (or weights); "
        f"*bits / weight* over their {block_numel(fp32.model) / 1e6:.1f} M weights. *In memory*: all parameters and buffers "
        "of the model as run (shared tensors once). *On disk*: `safetensors.torch.save_model` "
        "of the model (its state dict, the tied matrix once). *Decode*: greedy `generate` "
        f"with the KV cache, batch 1, {NEW_TOKENS} new tokens after the first prompt, "
        f"{NEW_TOKENS - 1} / (last step - first step), best of {len(fp32.speeds)} rounds "
        "interleaved over the settings.",
        "",
        "| setting | block linears (MiB) | bits / weight | in memory (MiB) | on disk (MiB) "
        "| decode tokens/s | vs float32 | time to quantize (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speed = max(r.speeds)
        lines.append(
            f"| {r.label} | {_mib(r.linear_bytes)} | {r.bits:.2f} | {_mib(r.memory)} | "
            f"{_mib(r.disk)} | {speed:.1f} | {speed / speed_0:.2f}x | {r.seconds:.0f} |"
        )
    checks = [
        f"{r.label}: largest output error {r.kernel_error:.1e} of the output's largest "
        "value against `F.linear` with the same codes dequantized"
        for r in rows
        if r.kernel_error is not None
    ]
    lines += [
        "",
        "Checks of the fused kernels (random inputs, every layer): " + "; ".join(checks) + ".",
    ]
    int8 = by_label.get("int8 per channel")
    int8_fused = by_label.get("int8 per channel, fused kernel (bf16 inputs)")
    if int8 is not None and int8_fused is not None:
        same = common_prefix(int8.tokens, int8_fused.tokens)
        lines.append(
            "Greedy prefixes of the fused int8 path against the dequantizing int8 layers' "
            f"tokens: {', '.join(map(str, same))} of {NEW_TOKENS}."
        )
    lines += ["", *reading(rows, speed_0)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--calib-seqs", type=int, default=16)
    parser.add_argument("--only", default="", help="comma-separated label prefixes (a quick look)")
    args = parser.parse_args()
    torch.manual_seed(0)
    base, tokenizer = pretrained.load_smollm2()
    ids = torch.tensor([tokenizer.encode(TEXT)])  # (1, T)
    held_out = chapter_windows(tokenizer, "04-prompting-sampling", 4, 256)  # (4, 256)
    calib = chapter_windows(tokenizer, "02-evolution", args.calib_seqs, 128)  # (n, 128)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    prompts = [tokenizer.encode(pretrained.apply_chat_template(c)) for c in chats]
    speed_ids = torch.tensor([prompts[0]])  # (1, T0)
    wanted = [s for s in args.only.split(",") if s]
    labels = [
        label
        for i, label in enumerate(SETTINGS)
        if i == 0 or not wanted or any(label.startswith(w) for w in wanted)
    ]

    rows: list[Row] = []
    reference = reference_2 = fp32_tokens = None
    with tempfile.TemporaryDirectory() as folder:
        for label in labels:
            t0 = time.perf_counter()
            built = SETTINGS[label](base, calib)
            model, error = built if isinstance(built, tuple) else (built, None)
            row = Row(label, model, time.perf_counter() - t0, kernel_error=error)
            row.ppl, top1, row.same = perplexity_and_top1(model, ids, reference)
            row.ppl_2, top1_2, row.same_2 = perplexity_and_top1(model, held_out, reference_2)
            row.tokens = greedy_tokens(model, prompts)  # (3, NEW_TOKENS)
            if reference is None:
                reference, reference_2, fp32_tokens = top1, top1_2, row.tokens
            row.prefixes = common_prefix(row.tokens, fp32_tokens)
            row.grid = same_as_loaded(model, base) if model is not base else 1.0
            row.linear_bytes = linear_bytes(model)
            row.bits = 8 * row.linear_bytes / block_numel(model)
            row.memory = bytes_in_memory(model)
            row.disk = bytes_on_disk(model, label, Path(folder))
            rows.append(row)
            print(
                f"{label:48} ppl {row.ppl:7.3f} / {row.ppl_2:7.3f}  top-1 same "
                f"{row.same:.3f} / {row.same_2:.3f}  prefix {row.prefixes}  "
                f"{_mib(row.linear_bytes)} MiB linears, {_mib(row.memory)} MiB in memory, "
                f"{_mib(row.disk)} MiB on disk  ({row.seconds:.0f} s)",
                flush=True,
            )
    for round_ in range(ROUNDS):
        for row in rows:
            row.speeds.append(decode_speed(row.model, speed_ids))
            print(f"round {round_}: {row.label:48} {row.speeds[-1]:6.2f} tokens/s", flush=True)

    text = report(rows, ids, held_out, calib)
    print()
    print(text)
    if not args.no_write:
        RESULTS.write_text(text, encoding="utf-8")
        print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
