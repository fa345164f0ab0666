"""Tests for llmfoundations.tokenizer: byte-level BPE training, encoding and decoding.

Independent references: a naive trainer that recounts every pair, merges worked out by
hand, Hugging Face ``tokenizers`` (a ``models.BPE`` with the ByteLevel pre-tokenizer)
and ``transformers``' GPT-2 tokenizer given the same vocabulary and merges.
"""

from __future__ import annotations

import doctest
import json
import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from llmfoundations import data, tokenizer
from llmfoundations.tokenizer import (
    CL100K_PATTERN,
    GPT2_PATTERN,
    BPETokenizer,
    _descending_key,
    bytes_to_unicode,
)

EOT = "<|endoftext|>"
# Text that exercises multi-byte UTF-8, emoji, code, digits and odd whitespace.
MIXED = (
    "Grüße aus Köln! Ça va? 東京タワーに行きました。 Привет, мир. 🎉🎉 👩‍👩‍👧 ok!!\n"
    "def f(x):\n\treturn x**2  # 12345 + 678 = 13023\r\n"
    "She'll say it's 3.14159, isn't it?   \n\n  (yes) [no] {maybe} <tag/> x_y--z\u00a0nbsp\n"
)
SAMPLES = [
    "",
    "Hello world",
    "  multiple   spaces\n\n\nnewlines\t\ttabs  ",
    "Grüße 東京 🎉 it's we'll I'M",
    f"a{EOT}b {EOT}{EOT} c",
    "x\u0085y\u00a0z \u2028 \u3000end",
    "1234567890 3.14 -42 1,000,000",
    "\x00\x01\x7f control \u200b zero-width",
    MIXED,
]


@pytest.fixture(scope="module")
def corpus() -> str:
    return data.story_corpus(40_000, seed=1) + "\n" + MIXED * 5


@pytest.fixture(scope="module")
def tok(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus, vocab_size=800, special_tokens=[EOT, "<pad>"])


@pytest.fixture(scope="module")
def hf(tok) -> Tokenizer:
    return hf_tokenizer(tok)


def to_hugging_face(t: BPETokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Our vocabulary and merges in the GPT-2 file alphabet (each byte one character)."""
    alphabet = bytes_to_unicode()

    def show(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {show(token): i for i, token in t.vocab.items()}
    merges = [(show(left), show(right)) for left, right in t.merges]
    return vocab, merges


def hf_tokenizer(t: BPETokenizer) -> Tokenizer:
    vocab, merges = to_hugging_face(t)
    hf = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    for name, i in sorted(t.special_tokens.items(), key=lambda kv: kv[1]):
        hf.add_special_tokens([name])
        assert hf.token_to_id(name) == i
    return hf


def test_doctests():
    assert doctest.testmod(tokenizer).failed == 0


# ------------------------------------------------------------------ round trips


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=200))
def test_round_trip_any_text(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert b"".join(tok.tokenize(text)) == text.encode("utf-8")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from([EOT, "<pad>"])), max_size=8))
def test_special_tokens_never_split_and_round_trip(tok, parts):
    text = "".join(parts)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    n_specials = sum(text.count(s) for s in (EOT, "<pad>"))  # they cannot overlap
    assert sum(i in tok.special_tokens.values() for i in ids) == n_specials


def test_special_token_handling(tok):
    eot = tok.special_tokens[EOT]
    assert tok.encode(f"hi{EOT}there") == [*tok.encode("hi"), eot, *tok.encode("there")]
    ordinary = tok.encode(EOT, allowed_special="none")
    assert eot not in ordinary and len(ordinary) > 1 and tok.decode(ordinary) == EOT
    assert tok.encode_ordinary(EOT) == ordinary
    only_pad = tok.encode(f"{EOT}<pad>", allowed_special={"<pad>"})
    assert only_pad == [*ordinary, tok.special_tokens["<pad>"]]
    assert tok.tokenize(f"a{EOT}") == [b"a", EOT.encode()]


def test_specials_are_cut_out_before_training():
    t = BPETokenizer.train(f"ab{EOT}ab{EOT}" * 50, vocab_size=300, special_tokens=[EOT])
    assert t.merges == [(b"a", b"b")]  # nothing of "<|endoftext|>" was learned
    assert t.special_tokens == {EOT: 257}
    assert t.vocab_size == 258


def test_longest_special_token_wins():
    t = BPETokenizer.train("abc", vocab_size=258, special_tokens=["<s>", "<s><s>"])
    assert t.encode("<s><s><s>") == [t.special_tokens["<s><s>"], t.special_tokens["<s>"]]


# ------------------------------------------------------------------------ training


def test_tie_break_worked_by_hand():
    # Words "ab" and " cd" (GPT-2 keeps the space with the word): the pairs (a, b),
    # (' ', c) and (c, d) all occur once. The greatest (left, right) wins each tie:
    # ('c','d') > ('a','b') > (' ','c'); then ('a','b') > (' ','cd'); then (' ','cd').
    t = BPETokenizer.train("ab cd", vocab_size=259)
    assert t.merges == [(b"c", b"d"), (b"a", b"b"), (b" ", b"cd")]
    assert t.vocab[256] == b"cd" and t.vocab[258] == b" cd"
    assert t.merge_counts == [1, 1, 1]


def test_counts_are_weighted_by_word_frequency():
    # Newlines keep the words free of leading spaces: "aa" x4 and "bc" x3 give the
    # counts 4 and 3, so (a, a) goes first although (b, c) is lexicographically greater.
    t = BPETokenizer.train("aa\naa\naa\naa\nbc\nbc\nbc", vocab_size=258)
    assert t.merges == [(b"a", b"a"), (b"b", b"c")] and t.merge_counts == [4, 3]
    # Overlapping pairs are merged left to right: "aaa" -> "aa" + "a".
    t = BPETokenizer.train("aaa", vocab_size=258)
    assert t.merges == [(b"a", b"a"), (b"aa", b"a")]
    assert t.tokenize("aaaaa") == [b"aa", b"aaa"]  # "aa aa a", then (aa, a) at the end


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=6), st.binary(max_size=6))
def test_descending_key_reverses_byte_order(x, y):
    assert (x < y) == (_descending_key(x) > _descending_key(y))
    assert (x == y) == (_descending_key(x) == _descending_key(y))


def test_training_is_deterministic(corpus, tok):
    again = BPETokenizer.train(corpus, vocab_size=800, special_tokens=[EOT, "<pad>"])
    assert again.merges == tok.merges and again.vocab == tok.vocab


def test_incremental_equals_naive_on_stories(corpus):
    text = corpus[:12_000]
    fast = BPETokenizer.train(text, vocab_size=500, special_tokens=[EOT])
    naive = BPETokenizer.train_naive(text, vocab_size=500, special_tokens=[EOT])
    assert fast.merges == naive.merges
    assert fast.merge_counts == naive.merge_counts
    assert fast.vocab == naive.vocab and fast.special_tokens == naive.special_tokens


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text("ab c\n", min_size=1, max_size=12), min_size=1, max_size=10),
    st.integers(256, 300),
)
def test_incremental_equals_naive_on_tie_heavy_text(words, vocab_size):
    # A tiny alphabet gives many equal counts and overlapping pairs ("aaaa").
    text = " ".join(words)
    fast = BPETokenizer.train(text, vocab_size)
    naive = BPETokenizer.train_naive(text, vocab_size)
    assert fast.merges == naive.merges
    assert fast.merge_counts == naive.merge_counts


def test_merge_counts_never_increase(tok):
    counts = tok.merge_counts
    assert all(a >= b for a, b in pairwise(counts))


def test_stops_when_corpus_runs_out_of_pairs():
    t = BPETokenizer.train("ab ab", vocab_size=1000)
    assert t.merges == [(b"a", b"b"), (b" ", b"ab")]
    assert t.vocab_size == 258


def test_trained_vocab_layout(tok):
    assert all(tok.vocab[b] == bytes([b]) for b in range(256))
    assert sorted(tok.vocab) == list(range(len(tok.vocab)))
    assert sorted(tok.special_tokens.values()) == [len(tok.vocab), len(tok.vocab) + 1]
    assert tok.vocab_size == 800
    for left, right in tok.merges:
        assert tok.token_to_id(left + right) >= 256
    assert tok.token_to_id(EOT) == tok.special_tokens[EOT]
    assert tok.token_to_id(" the") == tok.token_to_id(b" the")
    assert tok.id_to_token(tok.token_to_id(b" the")) == b" the"


# ----------------------------------------------- Hugging Face as the reference


@pytest.mark.parametrize("text", SAMPLES)
def test_same_ids_as_hugging_face_tokenizers(tok, hf, text):
    assert tok.encode(text) == hf.encode(text).ids
    assert tok.decode(tok.encode(text)) == hf.decode(hf.encode(text).ids, skip_special_tokens=False)


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=120))
def test_same_ids_as_hugging_face_on_any_text(tok, hf, text):
    assert tok.encode(text) == hf.encode(text).ids  # both split out the special tokens


def test_same_ids_as_hugging_face_on_held_out_stories(tok, hf):
    for story in data.stories(20, seed=123):
        assert tok.encode(story) == hf.encode(story).ids


def test_same_ids_as_transformers_gpt2_tokenizer(tok):
    from transformers import GPT2Tokenizer

    vocab, merges = to_hugging_face(tok)
    vocab[EOT] = tok.special_tokens[EOT]  # GPT-2's end-of-text token, as in its vocab.json
    gpt2 = GPT2Tokenizer(vocab=vocab, merges=merges)
    for text in SAMPLES[:-1]:
        ids = gpt2(text)["input_ids"]
        assert ids == tok.encode(text, allowed_special={EOT})
        assert gpt2.decode(ids) == tok.decode(ids)


def test_pretrained_vocabulary_with_other_ids(tok):
    # A pretrained vocabulary (SmolLM2, GPT-2) does not put byte b at id b: shuffle all ids.
    rng = random.Random(0)
    new_ids = list(range(len(tok.vocab)))
    rng.shuffle(new_ids)
    vocab = {new_ids[i]: token for i, token in tok.vocab.items()}
    specials = {EOT: len(vocab) + 10}
    shuffled = BPETokenizer(vocab, tok.merges, specials)
    text = MIXED + EOT + data.stories(1, seed=5)[0]
    assert shuffled.encode(text) == [
        specials[EOT] if i == tok.special_tokens[EOT] else new_ids[i] for i in tok.encode(text)
    ]
    assert shuffled.decode(shuffled.encode(text)) == text
    assert shuffled.vocab_size == len(vocab) + 11
    hf = Tokenizer(models.BPE(*to_hugging_face(shuffled)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    assert shuffled.encode_ordinary(MIXED) == hf.encode(MIXED).ids


def test_special_token_inside_vocab_is_allowed():
    vocab = {b: bytes([b]) for b in range(256)}
    vocab[256] = b"<s>"
    t = BPETokenizer(vocab, [], {"<s>": 256})
    assert t.encode("a<s>") == [97, 256] and t.vocab_size == 257


# ----------------------------------------------------------------------- patterns


def test_cl100k_pattern_groups_digits_by_three(corpus):
    t = BPETokenizer.train(corpus, vocab_size=400, pattern=CL100K_PATTERN)
    pieces = t.tokenize("In 2024, 1234567 people!")
    assert all(len(p) <= 3 for p in pieces if p.strip().isdigit())
    assert t.decode(t.encode("In 2024, 1234567 people!")) == "In 2024, 1234567 people!"
    assert t.pattern == CL100K_PATTERN


def test_custom_pattern_single_digits():
    # SmolLM2 style (Llama 1 and 2 too): every digit is its own pre-token, no digit merges.
    pattern = r"\p{N}| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
    t = BPETokenizer.train("1234 1234 1234 abc abc", vocab_size=300, pattern=pattern)
    assert t.tokenize("12345") == [b"1", b"2", b"3", b"4", b"5"]
    assert not any(left.isdigit() and right.isdigit() for left, right in t.merges)


def test_default_pattern_is_gpt2():
    assert BPETokenizer.train("x", 256).pattern == GPT2_PATTERN


# ---------------------------------------------------------------------- save/load


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    payload = json.loads(path.read_text())
    assert payload["vocab"]["32"] == "20"  # bytes as hex
    loaded = BPETokenizer.load(path)
    assert loaded.vocab == tok.vocab and loaded.merges == tok.merges
    assert loaded.special_tokens == tok.special_tokens and loaded.pattern == tok.pattern
    for text in SAMPLES:
        assert loaded.encode(text) == tok.encode(text)


def test_decode_partial_utf8_is_replaced_not_raised(tok):
    ids = tok.encode("é")  # two bytes, no merge for them in this vocabulary -> 2 tokens
    assert tok.decode_bytes(ids) == "é".encode()
    assert tok.decode(ids[:1]) == "\ufffd"


def test_decode_accepts_tensors(tok):
    import torch

    ids = tok.encode("Once upon a time")
    assert tok.decode(torch.tensor(ids)) == "Once upon a time"


# -------------------------------------------------------------------------- errors


def test_errors_name_the_argument(tok, tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("abc", vocab_size=255)
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("abc", vocab_size=257, special_tokens=["<a>", "<b>"])
    with pytest.raises(TypeError, match="vocab_size"):
        BPETokenizer.train("abc", vocab_size=300.0)
    with pytest.raises(TypeError, match="text"):
        BPETokenizer.train(b"abc", vocab_size=300)
    with pytest.raises(TypeError, match="text"):
        tok.encode(123)
    with pytest.raises(TypeError, match="text"):
        tok.encode_ordinary(None)
    with pytest.raises(ValueError, match="ids"):
        tok.decode([5, 10**6])
    with pytest.raises(ValueError, match="ids"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="ids"):
        tok.decode(["a"])
    with pytest.raises(TypeError, match="ids"):
        tok.decode("abc")
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special="some")
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special={"<nope>"})
    with pytest.raises(ValueError, match="special_tokens"):
        BPETokenizer.train("abc", vocab_size=300, special_tokens=["<a>", "<a>"])
    with pytest.raises(ValueError, match="pattern"):
        BPETokenizer.train("abc", vocab_size=300, pattern="(")
    with pytest.raises(ValueError, match="token"):
        tok.token_to_id(b"\x00\x01\x02 not a token")
    with pytest.raises(ValueError, match="token_id"):
        tok.id_to_token(10**6)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="path"):
        BPETokenizer.load(bad)


def test_constructor_checks_vocab_and_merges():
    vocab = {b: bytes([b]) for b in range(256)}
    with pytest.raises(ValueError, match="256 single bytes"):
        BPETokenizer({i: t for i, t in vocab.items() if i != 7}, [])
    with pytest.raises(ValueError, match="vocab"):
        BPETokenizer({**vocab, 256: b"a"}, [])  # duplicate bytes
    with pytest.raises(ValueError, match=r"merges\[0\]"):
        BPETokenizer(vocab, [(b"a", b"b")])  # b"ab" missing from vocab
    with pytest.raises(TypeError, match=r"merges\[0\]"):
        BPETokenizer({**vocab, 256: b"ab"}, [("a", "b")])
    with pytest.raises(ValueError, match="special_tokens"):
        BPETokenizer(vocab, [], {"<s>": 65})  # id 65 is b"A"
    with pytest.raises(ValueError, match="special_tokens"):
        BPETokenizer(vocab, [], {"<s>": 300, "</s>": 300})
    with pytest.raises(TypeError, match="special_tokens"):
        BPETokenizer(vocab, [], "<s>")


# ----------------------------------------------------------------------------- streaming


@pytest.fixture(scope="module")
def stream_tok() -> BPETokenizer:
    from llmfoundations import data

    return BPETokenizer.train(data.story_corpus(20_000, seed=0), vocab_size=300,
                              special_tokens=["<|endoftext|>", "<|im_start|>"])  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", " ", "  ", "\n", "\t", "'s", "Tom", "12", "3", "!", "é",
                              "<|endoftext|>", "<|end", "oftext|>", "<|", "im_start|>", "<"]),
             max_size=40),  # fmt: skip
    st.randoms(use_true_random=False),
)
def test_encode_iterable_equals_encode_of_the_whole_text(stream_tok, pieces, rnd):
    text = "".join(pieces)
    cuts = sorted(rnd.sample(range(len(text) + 1), k=min(4, len(text) + 1)))
    parts = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    for allowed in ("all", "none", ["<|im_start|>"]):
        assert list(stream_tok.encode_iterable(parts, allowed)) == stream_tok.encode(text, allowed)


def test_encode_iterable_reads_a_file_lazily_in_bounded_memory(stream_tok, tmp_path):
    import tracemalloc

    from llmfoundations import data

    story = data.story_corpus(50_000, seed=1)
    path = tmp_path / "corpus.txt"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(40):  # 2 MB of text, written as lines
            f.write(story + "\n<|endoftext|>\n")
    expected = len(stream_tok.encode(story + "\n<|endoftext|>\n"))
    tracemalloc.start()
    with open(path, encoding="utf-8") as f:
        count = sum(1 for _ in stream_tok.encode_iterable(f))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 40 * expected
    assert peak < 2_000_000 / 4  # a quarter of the file: memory does not grow with it


def test_encode_iterable_rejects_non_strings(stream_tok):
    with pytest.raises(TypeError, match="an item of texts must be a str"):
        list(stream_tok.encode_iterable(["ok", b"bytes"]))
