"""Three Transformer families built from the same blocks: decoder-only, encoder-only, both.

- ``DecoderLM``: a stack of causal blocks predicting the next token (GPT, Llama). With
  ``ModelConfig.gpt`` it is GPT-2's architecture (learned positions, LayerNorm, GELU, biases);
  with ``ModelConfig.llama`` it is Llama's (RoPE, RMSNorm, SwiGLU, grouped-query attention).
  The tests load its weights into Hugging Face's ``GPT2LMHeadModel`` and ``LlamaForCausalLM``
  and get the same logits.
- ``EncoderMLM``: bidirectional blocks with a masked-language-model head (BERT, Devlin et al.,
  2018, https://arxiv.org/abs/1810.04805).
- ``EncoderDecoder``: the 2017 translation model (Vaswani et al.,
  https://arxiv.org/abs/1706.03762): an encoder reads the source, a causal decoder with
  cross-attention writes the target.

One ``ModelConfig`` describes all three. Weights start as N(0, 0.02^2) (biases 0, norm scales
1), and the two projections that write into the residual stream (``o_proj``, ``down_proj``)
are further divided by ``sqrt(2 * n_layers)`` as in GPT-2, so the stream's variance does not
grow with depth.

Left out: BERT's next-sentence-prediction head and tanh pooler, label smoothing, the
generation loop (``generate.py``), loading pretrained checkpoints (``pretrained.py``),
gradient checkpointing, tensor parallelism.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmfoundations._pytree import pytree_dataclass
from llmfoundations._validate import (
    check_bool,
    check_choice,
    check_divisible,
    check_int,
    check_positive,
    check_tensor,
)
from llmfoundations.kv_cache import KVCache
from llmfoundations.layers import (
    FFN,
    FFNS,
    NORMS,
    BlockOutput,
    Norm,
    NormPosition,
    TransformerBlock,
    default_d_ff,
    make_norm,
)
from llmfoundations.positional import (
    LearnedPositionalEmbedding,
    sinusoidal_encoding,
)

if TYPE_CHECKING:
    from llmfoundations.moe import MoEOutput

__all__ = [
    "ModelConfig",
    "LMOutput",
    "MLMOutput",
    "DecoderLM",
    "EncoderMLM",
    "EncoderDecoder",
    "IGNORE_INDEX",
]

IGNORE_INDEX = -100  # label value that the losses skip (padding, prompt tokens, unmasked tokens)
Positional = Literal["learned", "sinusoidal", "rope", "none"]
POSITIONALS: tuple[Positional, ...] = get_args(Positional)


# ------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of every model in this module (frozen: change one with
    ``dataclasses.replace(config, n_layers=4)``, which validates the result again).

    Fields left as ``None`` are resolved by properties, so ``dataclasses.replace`` stays
    consistent: ``n_kv_heads=None`` means ``n_heads`` (see ``kv_heads``); ``d_ff=None`` means
    ``4 * d_model``, or ``8/3 * d_model`` rounded up to a multiple of 8 for ``"swiglu"`` and
    ``"moe"`` (see ``ffn_dim`` and ``layers.default_d_ff``).

    Presets: ``ModelConfig.gpt``, ``.llama``, ``.bert``, ``.original`` (2017).
    """

    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 256
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    ffn: FFN = "gelu"
    positional: Positional = "learned"
    rope_theta: float = 10000.0
    rope_interleaved: bool = False
    tie_embeddings: bool = True
    bias: bool = True
    norm_position: NormPosition = "pre"
    residual: bool = True
    dropout: float = 0.0
    n_experts: int = 8
    top_k: int = 2
    capacity_factor: float | None = None
    n_segments: int = 0  # BERT's sentence A / B embeddings (EncoderMLM only)
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model) (2017)
    init_std: float = 0.02
    fused_attention: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("n_kv_heads", "d_ff"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        check_int("n_segments", self.n_segments, minimum=0)
        check_choice("norm", self.norm, NORMS)
        check_choice("ffn", self.ffn, FFNS)
        check_choice("positional", self.positional, POSITIONALS)
        check_choice("norm_position", self.norm_position, ("pre", "post"))
        for name in (
            "rope_interleaved",
            "tie_embeddings",
            "bias",
            "residual",
            "scale_embeddings",
            "fused_attention",
        ):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        check_divisible("d_model", self.d_model, "n_heads", self.n_heads)
        check_divisible("n_heads", self.n_heads, "n_kv_heads", self.kv_heads)
        check_positive("norm_eps", self.norm_eps)
        check_positive("rope_theta", self.rope_theta)
        check_positive("init_std", self.init_std)
        if self.positional == "rope" and self.head_dim % 2:
            raise ValueError(
                f"positional='rope' needs an even head size, got d_model // n_heads = "
                f"{self.head_dim}"
            )
        check_positive("dropout", self.dropout, allow_zero=True)
        if self.dropout >= 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.ffn == "moe":
            check_int("n_experts", self.n_experts, minimum=1)
            check_int("top_k", self.top_k, minimum=1)
            if self.top_k > self.n_experts:
                raise ValueError(
                    f"top_k ({self.top_k}) must not exceed n_experts ({self.n_experts})"
                )
            if self.capacity_factor is not None:
                check_positive("capacity_factor", self.capacity_factor)

    @property
    def head_dim(self) -> int:
        """``D = d_model // n_heads``."""
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads actually used (``n_kv_heads`` or ``n_heads``)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_dim(self) -> int:
        """Feed-forward width actually used (``d_ff`` or the default for ``ffn``)."""
        return default_d_ff(self.d_model, self.ffn) if self.d_ff is None else self.d_ff

    # -------------------------------------------------------------------------- presets

    @classmethod
    def gpt(
        cls,
        vocab_size: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        max_seq_len: int = 256,
        **overrides: Any,
    ) -> ModelConfig:
        """A small GPT-2-style decoder: learned positions, pre-LayerNorm, GELU (tanh), biases,
        tied embeddings."""
        base = dict(
            norm="layernorm",
            ffn="gelu_tanh",
            positional="learned",
            bias=True,
            tie_embeddings=True,
            norm_position="pre",
        )
        return cls(
            vocab_size, d_model, n_layers, n_heads, max_seq_len=max_seq_len, **(base | overrides)
        )

    @classmethod
    def llama(
        cls,
        vocab_size: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        n_kv_heads: int | None = 2,
        max_seq_len: int = 256,
        **overrides: Any,
    ) -> ModelConfig:
        """A small Llama-style decoder: RoPE (split-half), pre-RMSNorm, SwiGLU, grouped-query
        attention, no biases, tied embeddings (as in small Llama-architecture models such as
        SmolLM2; Llama 2 itself does not tie)."""
        base = dict(
            norm="rmsnorm",
            ffn="swiglu",
            positional="rope",
            bias=False,
            tie_embeddings=True,
            norm_position="pre",
        )
        return cls(
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            max_seq_len=max_seq_len,
            **(base | overrides),
        )

    @classmethod
    def mixtral(
        cls,
        vocab_size: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        n_kv_heads: int | None = 2,
        max_seq_len: int = 256,
        **overrides: Any,
    ) -> ModelConfig:
        """A toy Mixtral: the Llama-style decoder with every feed-forward replaced by a
        mixture of 8 SwiGLU experts, 2 active per token (Jiang et al., 2024,
        https://arxiv.org/abs/2401.04088). Mixtral itself does not tie embeddings."""
        base = dict(ffn="moe", n_experts=8, top_k=2, tie_embeddings=False)
        return cls.llama(
            vocab_size, d_model, n_layers, n_heads, n_kv_heads, max_seq_len, **(base | overrides)
        )

    @classmethod
    def bert(
        cls,
        vocab_size: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        max_seq_len: int = 256,
        **overrides: Any,
    ) -> ModelConfig:
        """A small BERT-style encoder: learned positions, two segment embeddings, post-LayerNorm
        (eps 1e-12), exact GELU, biases."""
        base = dict(
            norm="layernorm",
            norm_eps=1e-12,
            ffn="gelu",
            positional="learned",
            bias=True,
            norm_position="post",
            n_segments=2,
        )
        return cls(
            vocab_size, d_model, n_layers, n_heads, max_seq_len=max_seq_len, **(base | overrides)
        )

    @classmethod
    def original(
        cls,
        vocab_size: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        max_seq_len: int = 256,
        **overrides: Any,
    ) -> ModelConfig:
        """The 2017 Transformer's choices: sinusoidal positions, post-LayerNorm, ReLU, biases,
        embeddings scaled by ``sqrt(d_model)`` and shared with the output layer."""
        base = dict(
            norm="layernorm",
            ffn="relu",
            positional="sinusoidal",
            bias=True,
            norm_position="post",
            scale_embeddings=True,
            tie_embeddings=True,
        )
        return cls(
            vocab_size, d_model, n_layers, n_heads, max_seq_len=max_seq_len, **(base | overrides)
        )


# ------------------------------------------------------------------------------ outputs


@pytree_dataclass
@dataclass
class LMOutput:
    """What ``DecoderLM`` and ``EncoderDecoder`` return.

    - ``logits`` (B, T, V): scores of the next token at every position;
    - ``loss``: mean cross-entropy over labelled tokens (``None`` without labels);
    - ``aux_loss``: sum of the MoE load-balancing losses (``None`` without MoE layers);
    - ``hidden_states`` (B, T, C): the final hidden states (after the final norm);
    - ``attentions``: per-layer self-attention weights (B, H, T, Tk) when requested;
    - ``moe``: per-MoE-layer :class:`llmfoundations.moe.MoEOutput` (losses, router
      logits, routing; ``None`` without MoE layers), in the order the layers ran.
    """

    logits: Tensor
    loss: Tensor | None = None
    aux_loss: Tensor | None = None
    hidden_states: Tensor | None = None
    attentions: tuple[Tensor, ...] | None = None
    moe: tuple[MoEOutput, ...] | None = None


@pytree_dataclass
@dataclass
class MLMOutput:
    """What ``EncoderMLM`` returns: ``logits`` (B, T, V), ``loss``, ``hidden_states``
    (B, T, C), ``pooled`` (B, C) = the first token's hidden state (the ``[CLS]`` position),
    ``aux_loss``, ``attentions`` and ``moe`` as in ``LMOutput``."""

    logits: Tensor
    loss: Tensor | None = None
    hidden_states: Tensor | None = None
    pooled: Tensor | None = None
    aux_loss: Tensor | None = None
    attentions: tuple[Tensor, ...] | None = None
    moe: tuple[MoEOutput, ...] | None = None


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the labels that are not ``IGNORE_INDEX``; 0 if there are none
    (``F.cross_entropy`` would return NaN)."""
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()  # (N, V)
    flat_labels = labels.reshape(-1)  # (N,)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    n_valid = (flat_labels != IGNORE_INDEX).sum()
    return total / n_valid.clamp_min(1)


# ------------------------------------------------------------------------- shared parts


def _check_ids(name: str, ids: object, vocab_size: int) -> Tensor:
    check_tensor(name, ids, ndim=2, nonempty=True)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (token ids), got dtype {ids.dtype}")
    low, high = torch.stack([ids.min(), ids.max()]).tolist()  # one device-to-host copy
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"{name} must lie in [0, vocab_size={vocab_size}), got values from {low} to {high}"
        )
    return ids


def _check_padding_mask(name: str, mask: object, shape: tuple[int, int]) -> Tensor:
    check_tensor(name, mask, ndim=2)
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"{name} must be bool or integer (1 = real token), got {mask.dtype}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
    return mask


def _check_labels(labels: object, shape: tuple[int, int], vocab_size: int) -> Tensor:
    check_tensor("labels", labels, ndim=2)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if tuple(labels.shape) != shape:
        raise ValueError(
            f"labels must have the shape of the ids {shape}, got {tuple(labels.shape)}"
        )
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        raise ValueError(
            f"labels must be {IGNORE_INDEX} or lie in [0, vocab_size={vocab_size}), "
            f"got {labels[bad][0].item()}"
        )
    return labels


def _make_block(
    config: ModelConfig, *, causal: bool, cross_attention: bool = False
) -> TransformerBlock:
    return TransformerBlock(
        config.d_model,
        config.n_heads,
        config.kv_heads,
        config.ffn_dim,
        norm=config.norm,
        ffn=config.ffn,
        norm_position=config.norm_position,
        residual=config.residual,
        cross_attention=cross_attention,
        causal=causal,
        rope_theta=config.rope_theta if config.positional == "rope" else None,
        rope_interleaved=config.rope_interleaved,
        bias=config.bias,
        eps=config.norm_eps,
        dropout=config.dropout,
        n_experts=config.n_experts,
        top_k=config.top_k,
        capacity_factor=config.capacity_factor,
        fused_attention=config.fused_attention,
    )


class _TransformerModel(nn.Module):
    """Embeddings, initialisation and parameter counting shared by the three models."""

    config: ModelConfig
    _head_name = "lm_head"  # the output layer's attribute, counted on its own

    def _build_embeddings(self, config: ModelConfig) -> None:
        self.embed = nn.Embedding(config.vocab_size, config.d_model)  # token embeddings
        if config.positional == "learned":
            self.pos_embed = LearnedPositionalEmbedding(config.max_seq_len, config.d_model)
        elif config.positional == "sinusoidal":
            table = sinusoidal_encoding(config.max_seq_len, config.d_model)  # (max_seq_len, C)
            self.register_buffer("pos_table", table, persistent=False)
        self.embed_drop = nn.Dropout(config.dropout)

    def _positions_from_mask(self, mask: Tensor, t: int) -> Tensor:
        """Positions of the last ``t`` tokens when padding (mask 0) comes first: (B, t)."""
        positions = (mask.long().cumsum(dim=-1) - 1).clamp_min(0)  # (B, Tk)
        return positions[:, -t:]

    def _check_positions(self, positions: object, b: int, t: int) -> Tensor:
        check_tensor("positions", positions, ndim=(1, 2), nonempty=True)
        if positions.shape[-1] != t or (positions.ndim == 2 and positions.shape[0] != b):
            raise ValueError(
                f"positions must be (T,) or (B, T) = {(b, t)}, got {tuple(positions.shape)}"
            )
        if self.config.positional != "rope" and positions.is_floating_point():
            raise TypeError(f"positions must be integers for positional='{self.config.positional}'")
        low, high = (v.item() for v in torch.aminmax(positions))
        if low < 0:
            raise ValueError(f"positions must be >= 0, got min {low}")
        self._check_length(high)
        return positions

    def _check_length(self, last_position: float) -> None:
        """Refuse positions past ``max_seq_len`` where the model has no meaning for them.

        Learned tables end there; RoPE would run, but on angles it never saw in training
        (build the config with a larger ``max_seq_len`` to allow it). Sinusoidal encodings
        extrapolate by design and are not limited.
        """
        config = self.config
        if config.positional in ("learned", "rope") and last_position >= config.max_seq_len:
            raise ValueError(
                f"position {int(last_position)} is past the model's max_seq_len="
                f"{config.max_seq_len} (positions 0..{config.max_seq_len - 1}); for RoPE, a "
                "larger max_seq_len in the config allows longer inputs"
            )

    def _embed(
        self, tokens: Tensor, positions: Tensor, segment_ids: Tensor | None = None
    ) -> Tensor:
        """Token embeddings (B, T, C), looked up by the caller, + positions (+ segments), then
        dropout."""
        return self.embed_drop(self._embed_sum(tokens, positions, segment_ids))

    def _embed_sum(
        self, tokens: Tensor, positions: Tensor, segment_ids: Tensor | None = None
    ) -> Tensor:
        """Token embeddings (B, T, C) + positions (+ segments), before dropout."""
        x = tokens
        if self.config.scale_embeddings:
            x = x * math.sqrt(self.config.d_model)
        if self.config.positional == "learned":
            x = x + self.pos_embed(positions)  # (T, C) or (B, T, C)
        elif self.config.positional == "sinusoidal":
            table = self.pos_table
            needed = int(positions.max()) + 1
            if needed > table.shape[0]:  # the formula extrapolates: extend the table
                table = sinusoidal_encoding(needed, self.config.d_model, device=x.device)
            x = x + table[positions].to(x.dtype)
        if segment_ids is not None:
            x = x + self.segment_embed(segment_ids)
        return x

    def _init_weights(self) -> None:
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Embedding, LearnedPositionalEmbedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of distinct parameters (tied weights once).

        ``exclude_embeddings=True`` leaves out the input embeddings (token, position, segment),
        the convention of scaling-law papers; an untied ``lm_head`` still counts.
        """
        counts = self.parameter_counts()
        total = sum(counts.values())
        return total - counts["embeddings"] if exclude_embeddings else total

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component: ``embeddings``, ``attention`` (self and cross), ``ffn``,
        ``norms``, ``lm_head`` (0 when tied to the embeddings) and, for ``EncoderMLM``,
        ``mlm_head``. Tied weights are counted once, under ``embeddings``."""
        counts = {"embeddings": 0, "attention": 0, "ffn": 0, "norms": 0, self._head_name: 0}
        for name, param in self.named_parameters():  # yields each tied tensor once
            parts = name.split(".")
            if parts[0] in ("embed", "pos_embed", "segment_embed"):
                key = "embeddings"
            elif parts[0] == self._head_name:
                key = self._head_name
            elif "attn" in parts or "cross_attn" in parts:
                key = "attention"
            elif "ffn" in parts:
                key = "ffn"
            elif any("norm" in part for part in parts):
                key = "norms"
            else:  # pragma: no cover - every parameter above has a home
                raise RuntimeError(f"unclassified parameter {name}")
            counts[key] += param.numel()
        return counts


# ----------------------------------------------------------------------------- decoder-only


class DecoderLM(_TransformerModel):
    """Decoder-only language model (GPT-2 / Llama style).

    Submodules: ``embed`` (token embeddings), ``pos_embed`` (learned positions only),
    ``blocks`` (causal ``TransformerBlock``s), ``norm`` (final norm; identity for post-norm,
    whose blocks already end with one), ``lm_head`` (C -> V, no bias; its weight *is*
    ``embed.weight`` when ``tie_embeddings``).

    >>> model = DecoderLM(ModelConfig.llama(vocab_size=100))
    >>> model(torch.tensor([[1, 2, 3]])).logits.shape
    torch.Size([1, 3, 100])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self._build_embeddings(config)
        self.blocks = nn.ModuleList(
            _make_block(config, causal=True) for _ in range(config.n_layers)
        )
        pre = config.norm_position == "pre"
        self.norm = (
            make_norm(config.norm, config.d_model, config.norm_eps, config.bias)
            if pre
            else nn.Identity()
        )
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(
        self,
        input_ids: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        kv_cache: KVCache | None = None,
        labels: Tensor | None = None,
        output_attentions: bool = False,
        logits_to_keep: int = 0,
    ) -> LMOutput:
        """Next-token logits for every position (or the last ``logits_to_keep``).

        Args:
            input_ids: ``(B, T)`` token ids.
            inputs_embeds: ``(B, T, C)`` vectors used *instead of* ``embed(input_ids)``
                (give exactly one of the two). Everything after the lookup still applies:
                the ``sqrt(d_model)`` scale, learned or sinusoidal positions, dropout. Soft
                prompts (``finetuning.prompt_tuning``) enter the model this way.
            attention_mask: ``(B, Tk)``, 1 = real token, 0 = padding (left padding for
                batched generation). With a KV cache, ``Tk`` = cached + new positions.
            positions: ``(T,)`` or ``(B, T)``. Default: ``cumsum(attention_mask) - 1``
                (clamped at 0) for the last ``T`` positions when a mask is given, so each row
                counts from its first real token; otherwise ``cache length + arange(T)``.
            kv_cache: a ``KVCache`` (see ``KVCache.for_model``), or an object with its
                ``layers``, ``batch_size`` and ``length`` (``inference.paged_kv.PagedKVView``);
                it is updated in place.
            labels: ``(B, T)``, usually ``input_ids`` with ``-100`` on tokens not to learn.
                Shifted inside, as in Hugging Face: ``logits[:, t]`` is scored against
                ``labels[:, t + 1]``.
            output_attentions: return every layer's attention weights (slower path).
            logits_to_keep: ``0`` (default) computes logits for every position; ``k > 0``
                only for the last ``k`` (all of them when ``k >= T``), as transformers'
                argument of that name: a prefill that only needs the next token skips the
                ``(T - 1) x V`` logits nobody reads. Cannot be combined with ``labels``.
        """
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(
                "give exactly one of input_ids and inputs_embeds, got "
                f"{'both' if input_ids is not None else 'neither'}"
            )
        if input_ids is not None:
            b, t = _check_ids("input_ids", input_ids, config.vocab_size).shape
        else:
            check_tensor("inputs_embeds", inputs_embeds, ndim=3, floating=True, nonempty=True)
            if inputs_embeds.shape[-1] != config.d_model:
                raise ValueError(
                    f"inputs_embeds must be (B, T, C) with C = d_model = {config.d_model}, "
                    f"got {tuple(inputs_embeds.shape)}"
                )
            b, t = inputs_embeds.shape[:2]
        past = 0
        if kv_cache is not None:
            # A KVCache, or anything with its `layers` (one attention.KVCacheLike per layer),
            # `batch_size` and int `length`, such as inference.paged_kv.PagedKVView.
            if not all(hasattr(kv_cache, a) for a in ("layers", "batch_size", "length")):
                raise TypeError(
                    "kv_cache must be a KVCache (or have its layers, batch_size and length), "
                    f"got {type(kv_cache).__name__}"
                )
            if len(kv_cache.layers) != config.n_layers or kv_cache.batch_size != b:
                raise ValueError(
                    f"kv_cache must have n_layers={config.n_layers} and batch_size={b}, got "
                    f"{len(kv_cache.layers)} layers and batch_size {kv_cache.batch_size}"
                )
            past = kv_cache.length
        if attention_mask is not None:
            _check_padding_mask("attention_mask", attention_mask, (b, past + t))
        if positions is None:
            self._check_length(past + t - 1)  # derived positions never exceed this: no sync
        else:
            positions = self._check_positions(positions, b, t)
        if labels is not None:
            _check_labels(labels, (b, t), config.vocab_size)
        check_bool("output_attentions", output_attentions)
        check_int("logits_to_keep", logits_to_keep, minimum=0)
        if logits_to_keep and labels is not None:
            raise ValueError(
                f"logits_to_keep={logits_to_keep} cannot be combined with labels: the loss "
                "needs the logits of every position"
            )
        return self.forward_unchecked(
            input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            positions=positions,
            kv_cache=kv_cache,
            labels=labels,
            output_attentions=output_attentions,
            logits_to_keep=logits_to_keep,
        )

    def forward_unchecked(
        self,
        input_ids: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        kv_cache: KVCache | None = None,
        labels: Tensor | None = None,
        output_attentions: bool = False,
        logits_to_keep: int = 0,
    ) -> LMOutput:
        """:meth:`forward` without its argument checks (same arguments, same result).

        For loops whose arguments are valid by construction: ``generate`` checks the
        prompts once and then feeds back the tokens it chose, so checking the ids on every
        step would only cost a device-to-host copy (a stall on a GPU). Hooks registered on
        the model itself do not run (those on its blocks and layers do). Anything else
        should call the model: a wrong argument here gives torch's error or a wrong result.
        """
        config = self.config
        tokens = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        b, t = tokens.shape[:2]
        past = kv_cache.length if kv_cache is not None else 0
        if positions is None:
            if attention_mask is not None:
                positions = self._positions_from_mask(attention_mask, t)  # (B, T)
            else:
                positions = torch.arange(past, past + t, device=tokens.device)  # (T,)

        x = self._embed(tokens, positions)  # (B, T, C)
        rope_positions = positions if config.positional == "rope" else None  # (T,) or (B, T)
        outs = []
        for i, block in enumerate(self.blocks):
            out = block(
                x,
                attn_mask=attention_mask,
                positions=rope_positions,
                kv_cache=kv_cache.layers[i] if kv_cache is not None else None,
                need_weights=output_attentions,
            )
            x = out.hidden
            outs.append(out)
        x = self.norm(x)
        logits = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)  # (B, T or k, V)

        loss = None
        if labels is not None:
            loss = _cross_entropy(logits[:, :-1], labels[:, 1:])
        return LMOutput(
            logits=logits,
            loss=loss,
            hidden_states=x,
            **_collect(outs, output_attentions),
        )


def _collect(outs: list[BlockOutput], output_attentions: bool) -> dict:
    """The per-layer parts of a model's output: attention weights, MoE outputs, aux loss."""
    moe = tuple(out.moe for out in outs if out.moe is not None)
    return {
        "attentions": tuple(out.attn_weights for out in outs) if output_attentions else None,
        "moe": moe or None,
        "aux_loss": torch.stack([m.aux_loss for m in moe]).sum() if moe else None,
    }


# ----------------------------------------------------------------------------- encoder-only


class MLMHead(nn.Module):
    """BERT's masked-LM head: ``decoder(norm(gelu(dense(h))))``; ``decoder`` (C -> V) has a
    bias and shares its weight with the token embeddings when tied."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.norm = make_norm(config.norm, config.d_model, config.norm_eps, config.bias)
        self.decoder = nn.Linear(config.d_model, config.vocab_size, bias=config.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(h))))  # (B, T, V)


class EncoderMLM(_TransformerModel):
    """Encoder-only model with a masked-language-model head (BERT style).

    Every token sees every other (no causal mask). Submodules: ``embed``, ``pos_embed``,
    ``segment_embed`` (when ``n_segments > 0``), ``embed_norm`` (post-norm models normalise
    the embeddings, as BERT does), ``blocks``, ``norm`` (final norm of pre-norm models),
    ``mlm_head``.
    """

    _head_name = "mlm_head"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self._build_embeddings(config)
        if config.n_segments > 0:
            self.segment_embed = nn.Embedding(config.n_segments, config.d_model)
        post = config.norm_position == "post"
        norm_args = (config.norm, config.d_model, config.norm_eps, config.bias)
        self.embed_norm = make_norm(*norm_args) if post else nn.Identity()
        self.blocks = nn.ModuleList(
            _make_block(config, causal=False) for _ in range(config.n_layers)
        )
        self.norm = nn.Identity() if post else make_norm(*norm_args)
        self.mlm_head = MLMHead(config)
        self._init_weights()
        if config.tie_embeddings:
            self.mlm_head.decoder.weight = self.embed.weight

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool = False,
    ) -> MLMOutput:
        """``input_ids`` (B, T) -> logits (B, T, V) at every position.

        ``attention_mask`` (B, T): 1 = real token; padding is never attended to.
        ``segment_ids`` (B, T): sentence A / B ids (needs ``n_segments > 0``).
        ``labels`` (B, T): the original ids at masked positions, ``-100`` elsewhere (no shift).
        """
        config = self.config
        ids = _check_ids("input_ids", input_ids, config.vocab_size)
        b, t = ids.shape
        if attention_mask is not None:
            attention_mask = _check_padding_mask("attention_mask", attention_mask, (b, t))
        if segment_ids is not None:
            if config.n_segments == 0:
                raise ValueError("segment_ids given, but the config has n_segments=0")
            segment_ids = _check_ids("segment_ids", segment_ids, config.n_segments)
            if tuple(segment_ids.shape) != (b, t):
                raise ValueError(
                    f"segment_ids must have shape {(b, t)}, got {tuple(segment_ids.shape)}"
                )
        positions = torch.arange(t, device=ids.device)  # (T,)
        # BERT: LayerNorm of the summed embeddings, then dropout
        x = self.embed_drop(self.embed_norm(self._embed_sum(self.embed(ids), positions, segment_ids)))
        outs = []
        for block in self.blocks:
            out = block(
                x,
                attn_mask=attention_mask,
                positions=positions if config.positional == "rope" else None,
                need_weights=output_attentions,
            )
            x = out.hidden
            outs.append(out)
        x = self.norm(x)
        logits = self.mlm_head(x)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = _cross_entropy(logits, _check_labels(labels, (b, t), config.vocab_size))
        return MLMOutput(
            logits=logits,
            loss=loss,
            hidden_states=x,
            pooled=x[:, 0],
            **_collect(outs, output_attentions),
        )


# ----------------------------------------------------------------------------- encoder-decoder


class EncoderDecoder(_TransformerModel):
    """The 2017 encoder-decoder: the encoder reads the source, the decoder writes the target.

    Source and target share one vocabulary and one embedding matrix (also the output layer
    when ``tie_embeddings``), as in the paper. Submodules: ``embed``, ``pos_embed`` (learned
    positions only), ``encoder_blocks`` (bidirectional), ``encoder_norm``, ``decoder_blocks``
    (causal self-attention + cross-attention to the encoder output), ``decoder_norm``,
    ``lm_head``. The two final norms are identities for post-norm models.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self._build_embeddings(config)
        n = config.n_layers
        self.encoder_blocks = nn.ModuleList(_make_block(config, causal=False) for _ in range(n))
        self.decoder_blocks = nn.ModuleList(
            _make_block(config, causal=True, cross_attention=True) for _ in range(n)
        )
        pre = config.norm_position == "pre"
        norm_args = (config.norm, config.d_model, config.norm_eps, config.bias)
        self.encoder_norm = make_norm(*norm_args) if pre else nn.Identity()
        self.decoder_norm = make_norm(*norm_args) if pre else nn.Identity()
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def encode(self, src_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Source ids (B, S) -> encoder output ("memory") (B, S, C)."""
        return self._encode(src_ids, src_mask)[0]

    def _encode(
        self, src_ids: Tensor, src_mask: Tensor | None
    ) -> tuple[Tensor, list[BlockOutput]]:
        """:meth:`encode`, also returning each block's output (for the MoE losses)."""
        ids = _check_ids("src_ids", src_ids, self.config.vocab_size)
        b, s = ids.shape
        if src_mask is not None:
            src_mask = _check_padding_mask("src_mask", src_mask, (b, s))
        positions = torch.arange(s, device=ids.device)
        x = self._embed(self.embed(ids), positions)  # (B, S, C)
        rope = self.config.positional == "rope"
        outs = []
        for block in self.encoder_blocks:
            outs.append(block(x, attn_mask=src_mask, positions=positions if rope else None))
            x = outs[-1].hidden
        return self.encoder_norm(x), outs

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Target ids (B, T) and memory (B, S, C) -> (logits (B, T, V), hidden states (B, T, C))."""
        logits, hidden, _ = self._decode(tgt_ids, memory, src_mask, tgt_mask)
        return logits, hidden

    def _decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_mask: Tensor | None,
        tgt_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, list[BlockOutput]]:
        """:meth:`decode`, also returning each block's output (for the MoE losses)."""
        ids = _check_ids("tgt_ids", tgt_ids, self.config.vocab_size)
        b, t = ids.shape
        check_tensor("memory", memory, ndim=3, floating=True)
        if memory.shape[0] != b or memory.shape[2] != self.config.d_model:
            raise ValueError(
                f"memory must be (B, S, C) = ({b}, S, {self.config.d_model}), "
                f"got {tuple(memory.shape)}"
            )
        if src_mask is not None:
            src_mask = _check_padding_mask("src_mask", src_mask, (b, memory.shape[1]))
        if tgt_mask is not None:
            tgt_mask = _check_padding_mask("tgt_mask", tgt_mask, (b, t))
        positions = torch.arange(t, device=ids.device)
        x = self._embed(self.embed(ids), positions)  # (B, T, C)
        rope = self.config.positional == "rope"
        outs = []
        for block in self.decoder_blocks:
            outs.append(
                block(
                    x,
                    memory,
                    attn_mask=tgt_mask,
                    context_mask=src_mask,
                    positions=positions if rope else None,
                )
            )
            x = outs[-1].hidden
        x = self.decoder_norm(x)
        return self.lm_head(x), x, outs

    def forward(
        self,
        src_ids: Tensor,
        tgt_ids: Tensor,
        *,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> LMOutput:
        """Logits over the target vocabulary for every target position (teacher forcing).

        ``src_mask`` (B, S) / ``tgt_mask`` (B, T): 1 = real token. ``labels`` (B, T) are
        shifted inside like ``DecoderLM``'s: pass ``labels = tgt_ids`` (with ``-100`` on
        padding) and ``logits[:, t]`` is scored against ``labels[:, t + 1]``.
        """
        memory, encoder_outs = self._encode(src_ids, src_mask)
        logits, hidden, decoder_outs = self._decode(tgt_ids, memory, src_mask, tgt_mask)
        loss = None
        if labels is not None:
            labels = _check_labels(labels, tuple(tgt_ids.shape), self.config.vocab_size)
            loss = _cross_entropy(logits[:, :-1], labels[:, 1:])
        return LMOutput(
            logits=logits,
            loss=loss,
            hidden_states=hidden,
            **_collect([*encoder_outs, *decoder_outs], output_attentions=False),
        )

    @torch.no_grad()
    def greedy_decode(
        self,
        src_ids: Tensor,
        bos_id: int,
        eos_id: int,
        max_len: int,
        src_mask: Tensor | None = None,
    ) -> Tensor:
        """Translate by always taking the most likely next token.

        Returns ``(B, 1 + n)`` ids starting with ``bos_id``, ``n <= max_len``; a row that has
        produced ``eos_id`` is filled with ``eos_id`` afterwards, and decoding stops once
        every row has. Runs in eval mode (no dropout) and restores the previous mode. Each step
        re-runs the decoder over the whole prefix (simple, quadratic; no KV cache).
        """
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
            check_int(name, value, minimum=0)
            if value >= self.config.vocab_size:
                raise ValueError(
                    f"{name} must be < vocab_size={self.config.vocab_size}, got {value}"
                )
        check_int("max_len", max_len, minimum=1)
        was_training = self.training
        self.eval()
        try:
            memory = self.encode(src_ids, src_mask)  # (B, S, C)
            b = memory.shape[0]
            out = torch.full((b, 1), bos_id, dtype=torch.long, device=memory.device)  # (B, 1)
            done = torch.zeros(b, dtype=torch.bool, device=memory.device)
            for _ in range(max_len):
                logits, _ = self.decode(out, memory, src_mask)  # (B, t, V)
                next_id = logits[:, -1].argmax(dim=-1)  # (B,)
                next_id = torch.where(done, torch.full_like(next_id, eos_id), next_id)
                out = torch.cat([out, next_id[:, None]], dim=1)
                done |= next_id == eos_id
                if bool(done.all()):
                    break
            return out
        finally:
            self.train(was_training)
