"""Greedy decoding arranged for speed: a static KV cache, fused projections, SDPA's
grouped-query path, and optionally ``torch.compile`` of the decoding step.

``generate.generate`` is the readable path a student steps through, and the default. This
module does the same arithmetic for Llama-style models (SmolLM2) in the order a fast
engine would, and is tested against it: the same logits within float32 rounding and the same
greedy tokens. ``benchmarks/generation.py`` times both beside transformers' ``generate``.

At batch 1-8 a decoding step reads every weight once (about 540 MB per step for
SmolLM2-135M in float32) for only 2 floating-point operations per weight and row.
Reading them would allow some 150-170 steps per second on the 2-core CPU of
``benchmarks/results/generation.md``; the readable path reaches a fifth of that or less,
lost to overheads around the reads and to matrix-multiply kernels badly suited to 1-8
rows. Every change below removes such overhead, none changes the arithmetic:

- the KV cache is one ``(B, Hkv, T_max, D)`` key and value buffer per layer, allocated
  once and written one column per step in place, as ``generate``'s ``KVCache`` is (what
  differs is the fixed shape of each step, below). One buffer per layer rather than one
  ``(L, B, Hkv, T_max, D)`` tensor matters for ``torch.compile``: inductor writes the column into a whole buffer in place, but
  a write into a slice (``cache[i]``) of a larger buffer it turns into copies of that layer's
  cache at every step, which cost more than the compiled step saves at batch 8 (measured
  while this module was built; ``tests/test_inference_fast_decode.py`` checks that the
  compiled step allocates no cache-sized buffer);
- q, k and v come from one matrix multiply with the three weights stacked, and so do the
  gate and up projections of the feed-forward network;
- attention is one ``scaled_dot_product_attention`` call with ``enable_gqa=True``: the
  ``Hkv`` key/value heads are shared by their query heads without being copied ``H / Hkv``
  times (torch < 2.5 has no ``enable_gqa``: there they are repeated);
- arguments are checked once per call, not in every layer of every step;
- every decoding step has the same shapes (it attends over all ``T_max`` columns of the
  cache, the unwritten ones masked), so ``torch.compile`` compiles it once. With
  ``freeze=True`` inductor treats the weights as constants and pre-packs them for its
  matrix multiplies (``torch._inductor.config.freezing``; for float32 on x86, for MKL);
- with ``prepack=True`` (CPU, float32) every matrix multiply reads a weight packed once
  (``inference.prepack``) instead of handing the row-major weight to ``F.linear``; at 1-8
  rows per multiply this was the largest single gain measured, and it composes with
  ``compile``. ``library`` picks oneDNN or MKL for the packing; ``"auto"`` (the default)
  times both for each weight shape at this batch size and keeps the faster
  (``libraries`` says what it chose), because the winner differs between machines (the
  CPU, and the MKL and oneDNN of the torch build).

Left out: sampling (use ``generate``), models that are not pre-norm RMSNorm + SwiGLU + RoPE
without biases, mixture-of-experts layers, gradients. The stacked weights are copies, so
the decoder holds a second set of the attention and feed-forward weights.

>>> from llmfoundations.models import DecoderLM, ModelConfig
>>> model = DecoderLM(ModelConfig.llama(vocab_size=50))
>>> decoder = FastGreedyDecoder(model, batch_size=2, max_length=8)
>>> decoder.generate([[1, 2, 3], [4]], max_new_tokens=2).sequences.shape
torch.Size([2, 5])
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .._validate import check_bool, check_choice, check_int
from ..attention import _TORCH_HAS_GQA
from ..generate import (
    GenerationOutput,
    Streamer,
    _check_stop_ids,
    _check_token_id,
    _prepare_prompts,
)
from ..layers import _rms_norm
from ..models import DecoderLM
from ..positional import _rope_cos_sin, rotate_pairs
from .prepack import (
    LIBRARIES,
    PackedLinear,
    PackedWeight,
    pack_weight,
    packed_linear_unchecked,
    tensor_version,
)

__all__ = ["FastGreedyDecoder", "check_fast_decodable"]


def check_fast_decodable(model: object) -> DecoderLM:
    """The model, if this module can run it; otherwise a ``TypeError``/``ValueError`` saying why."""
    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be a DecoderLM, got {type(model).__name__}")
    c = model.config
    wanted = {
        "positional": "rope",
        "norm": "rmsnorm",
        "ffn": "swiglu",
        "norm_position": "pre",
        "bias": False,
        "residual": True,
        "scale_embeddings": False,
    }
    for field, value in wanted.items():
        if getattr(c, field) != value:
            raise ValueError(
                f"FastGreedyDecoder runs Llama-style models ({field}={value!r}); this model "
                f"has {field}={getattr(c, field)!r} (use generate.generate)"
            )
    # The decoder multiplies by the layers' .weight itself, so each must be all the layer
    # does: a LoRA, quantized or fake-quantizing (QAT) layer would be bypassed silently.
    layers = {"embed": (model.embed, (nn.Embedding,)), "lm_head": (model.lm_head, _PLAIN)}
    for i, block in enumerate(model.blocks):
        for part, names in (("attn", ("q", "k", "v", "o")), ("ffn", ("gate", "up", "down"))):
            for n in names:
                name = f"blocks.{i}.{part}.{n}_proj"
                layers[name] = (getattr(getattr(block, part), f"{n}_proj"), _PLAIN)
    for name, (layer, kinds) in layers.items():
        if type(layer) not in kinds:
            raise TypeError(
                f"FastGreedyDecoder reads plain {' or '.join(k.__name__ for k in kinds)} "
                f"weights; {name} is a {type(layer).__name__} (merge the adapter or "
                "quantization into the weights, or use generate.generate)"
            )
    return model


_PLAIN = (nn.Linear, PackedLinear)  # layers whose output is exactly F.linear(x, weight)


def _fingerprint(model: nn.Module) -> list[tuple[int, int, int | None]]:
    """Which tensors the model's parameters are, and how often each was changed in place:
    ``(id, data_ptr, version)`` per parameter. Replacing a parameter (``load_state_dict(...,
    assign=True)``, ``model.double()``) changes the first two, an in-place write the third."""
    return [(id(p), p.data_ptr(), tensor_version(p)) for p in model.parameters()]


class _Layer(nn.Module):
    """One block's weights, stacked for fewer, larger matrix multiplies (frozen copies), and
    its own static key/value cache ``(B, Hkv, T_max, D)`` each."""

    def __init__(self, block: nn.Module, cache_shape: tuple[int, int, int, int]) -> None:
        super().__init__()
        attn, ffn = block.attn, block.ffn

        def frozen(t: Tensor) -> nn.Parameter:
            return nn.Parameter(t.detach().clone(), requires_grad=False)

        qkv = (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight)
        self.qkv = frozen(torch.cat(qkv))  # (H*D + 2*Hkv*D, C)
        self.o = frozen(attn.o_proj.weight)  # (C, H*D)
        self.gate_up = frozen(torch.cat((ffn.gate_proj.weight, ffn.up_proj.weight)))  # (2F, C)
        self.down = frozen(ffn.down_proj.weight)  # (C, F)
        self.norm1 = frozen(block.norm1.weight)  # (C,)
        self.norm2 = frozen(block.norm2.weight)  # (C,)
        new = self.o.new_zeros
        self.register_buffer("k_cache", new(cache_shape), persistent=False)  # (B, Hkv, T_max, D)
        self.register_buffer("v_cache", new(cache_shape), persistent=False)  # (B, Hkv, T_max, D)
        self.packed: dict[str, PackedWeight] = {}  # name -> the packed weight (prepack=True)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """SDPA of ``q`` (B, H, T, D) over ``k``, ``v`` (B, Hkv, T_max, D): SDPA shares the key/value
    heads itself where it can (torch >= 2.5, which has ``enable_gqa``); older torch gets
    them repeated ``H / Hkv`` times."""
    h, g = q.shape[1], k.shape[1]
    if h == g:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if _TORCH_HAS_GQA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    k, v = k.repeat_interleave(h // g, dim=1), v.repeat_interleave(h // g, dim=1)  # (B, H, T_max, D)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _matmul(x: Tensor, weight: Tensor, packed: PackedWeight | None) -> Tensor:
    """``x @ weight.T``: through ``F.linear``, or from the packed copy when there is one
    (unchecked: the shapes are fixed when the decoder is built)."""
    return F.linear(x, weight) if packed is None else packed_linear_unchecked(x, packed)


class FastGreedyDecoder(nn.Module):
    """Greedy decoding of a Llama-style ``DecoderLM`` with a static cache (see the module).

    Args:
        model: the model whose weights are copied in (the layers' stacked) or shared (the
            embedding, final norm and head). ``generate`` refuses to run after the model's
            weights were changed in place (an optimizer step, ``load_state_dict``) or
            replaced (``load_state_dict(..., assign=True)``, ``model.double()``): build a new
            decoder. Writes through ``weight.data`` bypass that check; ``share_memory()``
            moves the weights, so it needs a new decoder too. Its linear layers
            must be plain (``nn.Linear`` or ``PackedLinear``), not LoRA or quantized ones.
        batch_size: rows per call (``B``); prompts must come in batches of exactly this size.
        max_length: prompt + new tokens per call, at most the model's ``max_seq_len``; the
            cache is ``(B, Hkv, max_length, D)`` keys and values per layer.
        compile: compile the decoding step with ``torch.compile`` (once, at construction:
            ``compile_seconds`` says how long it took). The prefill pass stays eager. Each
            compiled decoder adds a graph for the same code, and dynamo keeps at most
            ``torch._dynamo.config.recompile_limit`` (8 by default) per process: raise it
            to build more.
        freeze: with ``compile``, let inductor treat the weights as constants.
        prepack: multiply by weights packed once (CPU, float32 weights only).
        library: with ``prepack``, ``"onednn"``, ``"mkl"`` or ``"auto"`` (time both per
            weight shape, keep the faster); ``libraries`` then maps each weight
            (``"qkv"``, ``"o"``, ``"gate_up"``, ``"down"``, ``"head"``) to its library.
    """

    def __init__(
        self,
        model: DecoderLM,
        batch_size: int,
        max_length: int,
        *,
        compile: bool = False,
        freeze: bool = False,
        prepack: bool = False,
        library: str = "auto",
    ) -> None:
        super().__init__()
        c = check_fast_decodable(model).config
        check_int("batch_size", batch_size, minimum=1)
        check_int("max_length", max_length, minimum=1)
        if max_length > c.max_seq_len:
            raise ValueError(
                f"max_length must be at most the model's max_seq_len={c.max_seq_len}, "
                f"got {max_length}"
            )
        check_bool("compile", compile)
        check_bool("freeze", freeze)
        check_bool("prepack", prepack)
        check_choice("library", library, (*LIBRARIES, "auto"))
        if library != "auto" and not prepack:
            raise ValueError(f"library={library!r} needs prepack=True (it says what to pack for)")
        if freeze and not compile:
            raise ValueError("freeze=True needs compile=True (freezing is a compiler option)")
        if freeze and prepack:
            raise ValueError("freeze=True and prepack=True both pre-pack the weights; choose one")
        weight = model.embed.weight
        if prepack and (weight.device.type != "cpu" or weight.dtype != torch.float32):
            raise ValueError(
                f"prepack=True needs float32 weights on the CPU, got {weight.dtype} on {weight.device}"
            )
        self.config, self.batch_size, self.max_length = c, batch_size, max_length
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.kv_heads, c.head_dim
        self.vocab_size = c.vocab_size

        def frozen(t: Tensor) -> nn.Parameter:
            return nn.Parameter(t.detach(), requires_grad=False)  # shared, not copied

        self.embed = frozen(weight)  # (V, C)
        self.lm_head = frozen(model.lm_head.weight)  # (V, C); the same tensor when tied
        self.final_norm = frozen(model.norm.weight)  # (C,)
        cache_shape = (batch_size, c.kv_heads, max_length, c.head_dim)
        self.layers = nn.ModuleList(_Layer(block, cache_shape) for block in model.blocks)
        self.head_packed = pack_weight(self.lm_head, batch_size, library) if prepack else None
        for layer in self.layers if prepack else ():
            for name in ("qkv", "o", "gate_up", "down"):
                layer.packed[name] = pack_weight(getattr(layer, name), batch_size, library)
        self.libraries: dict[str, str] = {}  # weight -> the library it is packed for
        if prepack:
            self.libraries = {name: p.library for name, p in self.layers[0].packed.items()}
            self.libraries["head"] = self.head_packed.library
        # valid[b, j]: column j of row b holds a real token (not prompt padding, not unwritten)
        self.register_buffer(
            "valid", torch.zeros(batch_size, max_length, dtype=torch.bool, device=weight.device)
        )
        self.register_buffer("columns", torch.arange(max_length, device=weight.device))
        positions = torch.arange(max_length, device=weight.device)
        cos, sin = _rope_cos_sin(positions, c.head_dim, c.rope_theta)  # (T_max, D/2) each
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

        # The model (a weak reference: the decoder does not keep it alive, and a deep copy of
        # the decoder shares it; none to its parameters, which would stop torch swapping
        # them in model.to()) and what its parameters are now.
        self._model = weakref.ref(model)
        self._fingerprint = _fingerprint(model)
        self.compile_seconds = 0.0
        self._step = self._decode_step
        if compile:
            self._compile(freeze)

    # --------------------------------------------------------------------- the forward pass

    def _forward(self, ids: Tensor, cols: Tensor, positions: Tensor) -> Tensor:
        """Run ``ids`` (B, T), written to cache columns ``cols`` (T,) at RoPE ``positions``
        (B, T); return the last position's logits (B, V). Updates the cache in place."""
        b, t = ids.shape
        h, g, d = self.n_heads, self.n_kv_heads, self.head_dim
        eps = self.config.norm_eps
        x = F.embedding(ids, self.embed)  # (B, T, C)
        cos = self.rope_cos[positions][:, None]  # (B, 1, T, D/2)
        sin = self.rope_sin[positions][:, None]  # (B, 1, T, D/2)
        # Query i (column cols[i]) may read column j if j <= cols[i] and j holds a real
        # token. A padding query reads only itself, so no row is fully masked.
        causal = self.columns[None, :] <= cols[:, None]  # (T, T_max)
        itself = self.columns[None, :] == cols[:, None]  # (T, T_max)
        mask = (causal & self.valid[:, None, :]) | itself  # (B, T, T_max)
        mask = mask[:, None]  # (B, 1, T, T_max)
        interleaved = self.config.rope_interleaved
        for layer in self.layers:
            p = layer.packed
            qkv = _matmul(_rms_norm(x, layer.norm1, eps), layer.qkv, p.get("qkv"))  # (B, T, (H+2Hkv) D)
            q, k, v = qkv.split((h * d, g * d, g * d), dim=-1)
            q = rearrange(q, "b t (h d) -> b h t d", h=h)  # (B, H, T, D)
            k = rearrange(k, "b t (g d) -> b g t d", g=g)  # (B, Hkv, T, D)
            v = rearrange(v, "b t (g d) -> b g t d", g=g)  # (B, Hkv, T, D)
            q = rotate_pairs(q, cos, sin, interleaved)
            k = rotate_pairs(k, cos, sin, interleaved)
            layer.k_cache.index_copy_(2, cols, k)  # (B, Hkv, T_max, D)
            layer.v_cache.index_copy_(2, cols, v)
            a = _attend(q, layer.k_cache, layer.v_cache, mask)  # (B, H, T, D)
            a = rearrange(a, "b h t d -> b t (h d)")  # (B, T, H*D)
            x = x + _matmul(a, layer.o, p.get("o"))  # (B, T, C)
            normed = _rms_norm(x, layer.norm2, eps)  # (B, T, C)
            gate, up = _matmul(normed, layer.gate_up, p.get("gate_up")).chunk(2, dim=-1)  # (B, T, F)
            x = x + _matmul(F.silu(gate) * up, layer.down, p.get("down"))  # (B, T, C)
        last = _rms_norm(x[:, -1], self.final_norm, eps)  # (B, C)
        return _matmul(last, self.lm_head, self.head_packed)  # (B, V)

    def _decode_step(self, token: Tensor, col: Tensor, positions: Tensor) -> Tensor:
        """One token per row: ``token`` (B, 1) at cache column ``col`` (1,), RoPE
        ``positions`` (B, 1) -> logits (B, V). The same shapes at every step."""
        self.valid.index_fill_(1, col, True)
        return self._forward(token, col, positions)

    def _compile(self, freeze: bool) -> None:
        # Freezing goes in the compile options, not in a patched global setting: dynamo
        # reuses a compiled step for a backend that compares equal, and the options are
        # part of that comparison, so a frozen and a plain decoder get their own graphs.
        compiled = torch.compile(
            self._decode_step, fullgraph=True, dynamic=False, options={"freezing": freeze}
        )
        # Arguments laid out as `generate` passes them (strides included: dynamo guards on
        # them, and an expanded positions tensor here once made every decoder compile twice).
        b, dev = self.batch_size, self.valid.device
        token = torch.zeros(b, dtype=torch.long, device=dev)[:, None]  # (B, 1)
        positions = torch.zeros(b, 1, dtype=torch.long, device=dev)  # (B, 1)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(token, self.columns[:1], positions)  # compiles now, not in the first call
        self.compile_seconds = time.perf_counter() - start
        self._step = compiled

    # ------------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor | Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        attention_mask: Tensor | None = None,
        stop_token_ids: int | Iterable[int] = (),
        pad_token_id: int = 0,
        streamer: Streamer | None = None,
    ) -> GenerationOutput:
        """Greedy continuation, as ``generate.generate_output`` with ``sampling=None``.

        Arguments and result as there (``logits`` is ``None``); ``input_ids`` must have
        ``batch_size`` rows and prompt + ``max_new_tokens`` must fit in ``max_length``.
        """
        vocab = self.vocab_size
        model = self._model()
        if model is not None and _fingerprint(model) != self._fingerprint:
            raise ValueError(
                "the model's weights were changed in place or replaced after this decoder was "
                "built (it holds copies of them): build a new FastGreedyDecoder"
            )
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        pad_token_id = _check_token_id("pad_token_id", pad_token_id, vocab)
        stop_ids = torch.tensor(_check_stop_ids(stop_token_ids, vocab), dtype=torch.long)
        if streamer is not None and not callable(streamer):
            raise TypeError(f"streamer must be callable or None, got {type(streamer).__name__}")
        ids, mask = _prepare_prompts(input_ids, attention_mask, pad_token_id, vocab)
        b, t = ids.shape
        if b != self.batch_size:
            raise ValueError(f"input_ids must have batch_size={self.batch_size} rows, got {b}")
        if t + max_new_tokens > self.max_length:
            raise ValueError(
                f"prompt length + max_new_tokens = {t + max_new_tokens} is more than "
                f"max_length={self.max_length}"
            )
        dev = self.valid.device
        ids, mask, stop_ids = ids.to(dev), mask.to(dev), stop_ids.to(dev)

        self.valid.zero_()
        self.valid[:, :t] = mask.bool()
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0)  # (B, T) as DecoderLM counts them
        logits = self._forward(ids, self.columns[:t], positions)  # prefill, eager
        last = positions[:, -1:]  # (B, 1)
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        pad = torch.full((b,), pad_token_id, dtype=torch.long, device=dev)
        new, real = [], []
        for step in range(max_new_tokens):
            row_ok = torch.isfinite(logits.amax(dim=-1))  # (B,) NaN/+inf, or a row of only -inf
            token = torch.where(done, pad, logits.argmax(dim=-1))  # (B,)
            new.append(token)
            real.append(~done)
            if len(stop_ids):
                done = done | torch.isin(token, stop_ids)
            ok, all_done = torch.stack([row_ok.all(), done.all()]).tolist()  # the step's one sync
            if not ok:
                raise ValueError(
                    f"the model's logits at step {step} hold NaN or +inf, or a row of only "
                    "-inf: no token can be chosen (check the model's weights and inputs)"
                )
            if streamer is not None:
                streamer(token)
            if step == max_new_tokens - 1 or all_done:
                break
            last = last + 1
            col = self.columns[t + step : t + step + 1]  # (1,)
            logits = self._step(token[:, None], col, last)  # (B, V)
        new_tokens = torch.stack(new, dim=1) if new else ids.new_zeros(b, 0)  # (B, n)
        new_mask = torch.stack(real, dim=1).long() if real else mask.new_zeros(b, 0)
        return GenerationOutput(
            sequences=torch.cat((ids, new_tokens), dim=1),
            attention_mask=torch.cat((mask, new_mask), dim=1),
            new_tokens=new_tokens,
            num_new_tokens=new_mask.sum(dim=1),
            stopped=done,
            logits=None,
            prompt_length=t,
        )
