"""Tests for llmfoundations.data: seeded generators, the toy translation, worked arithmetic,
the character tokenizer and the batch makers.

Independent references: Python's own arithmetic (``eval``) for every generated problem,
a re-computation of the answer from the worked steps, the Tovan rules applied by a
parser (``translate``) that is separate from the generator, and hand-written examples.
"""

from __future__ import annotations

import doctest
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations import data
from llmfoundations.data import (
    CLASSIFICATION_LABELS,
    HAPPY_WORDS,
    SAD_WORDS,
    TOVAN_WORDS,
    CharTokenizer,
    arithmetic,
    arithmetic_text,
    batches,
    classification,
    sequential_batches,
    stories,
    story_corpus,
    train_val_split,
    translate,
    translation_pairs,
)


def test_doctests():
    assert doctest.testmod(data).failed == 0


# -------------------------------------------------------------------- determinism


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: stories(20, seed=seed),
        lambda seed: story_corpus(3000, seed=seed),
        lambda seed: classification(20, seed=seed),
        lambda seed: translation_pairs(20, seed=seed),
        lambda seed: arithmetic(20, seed=seed),
    ],
    ids=["stories", "story_corpus", "classification", "translation", "arithmetic"],
)
def test_same_seed_same_data_other_seed_other_data(make):
    assert make(0) == make(0)
    assert make(0) != make(1)


def test_generators_do_not_touch_global_random_state():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    stories(5)
    arithmetic(5)
    translation_pairs(5)
    assert random.random() == expected


def test_known_first_items():
    # Pinned outputs: a change in any generator (or in Python's random) shows up here.
    assert stories(1, seed=0)[0].startswith("One morning, Bipon the bird went to the beach.")
    assert [item["question"] for item in arithmetic(3, seed=0)] == ["75-15", "55-48", "242+27"]
    assert translation_pairs(1, seed=0) == [
        ("a child watches a quick farmer .", "un tenu un gorbi rapi gardar .")
    ]


# ------------------------------------------------------------------------ stories


def test_stories_look_like_stories():
    texts = stories(200, seed=3)
    assert len(set(texts)) == 200
    lengths = [len(t) for t in texts]
    assert 250 < sum(lengths) / len(lengths) < 700
    joined = " ".join(texts)
    for phrase in ("Once upon a time", " because ", '" said ', "One day"):
        assert phrase in joined
    for t in texts:
        assert t[0].isupper() and t.endswith(".")
        assert t.count('"') % 2 == 0  # dialogue quotes are balanced


def test_story_corpus_is_a_prefix_of_the_stories():
    text = story_corpus(5000, seed=7)
    assert len(text) == 5000
    assert "\n\n".join(stories(30, seed=7)).startswith(text)
    assert story_corpus(0) == ""


def test_classification_labels_match_the_ending():
    items = classification(300, seed=5)
    labels = [label for _, label in items]
    assert set(labels) == {0, 1} and 100 < sum(labels) < 200  # roughly balanced
    for text, label in items:
        ending = re.split(r"(?<=\.) ", text)[-1]  # last sentence
        words = set(re.findall(r"[a-z]+", ending))
        assert bool(words & set(HAPPY_WORDS)) == (label == 1), ending
        assert bool(words & set(SAD_WORDS)) == (label == 0), ending
        # feeling words of either class appear only in the ending
        body = set(re.findall(r"[a-z]+", text[: -len(ending)]))
        assert not body & (set(HAPPY_WORDS) | set(SAD_WORDS))
    assert CLASSIFICATION_LABELS == ("sad", "happy")
    # the labelled stories are the plain stories of the same seed
    assert [t for t, _ in items[:10]] == stories(10, seed=5)


# -------------------------------------------------------------------- translation


def test_translation_by_hand():
    assert translate("the big dog sees a small cat .") == "lo vordo grom un miku pik vidar ."
    assert (
        translate("two children carry my old red book near the river .")
        == "pres lo riva du tenuek mi libo vel rud portar ."
    )
    assert translate("an old fox likes an apple .") == "un rasko vel un zuna amar ."


def test_translation_pairs_follow_the_rules():
    pairs = translation_pairs(500, seed=2)
    word_map: dict[str, str] = {}
    for english, tovan in pairs:
        assert translate(english) == tovan  # a deterministic function of the source
        assert tovan.split()[-2] in {TOVAN_WORDS[v] for v in data._VERBS}  # verb last
        # every Tovan word comes from the dictionary (plus the plural suffix)
        for word in tovan.split()[:-1]:
            stem = word[:-2] if word.endswith("ek") and word[:-2] in TOVAN_WORDS.values() else word
            assert stem in TOVAN_WORDS.values(), word
        # a place phrase moves to the front
        has_place = any(p in english.split() for p in ("in", "near", "behind"))
        assert (tovan.split()[0] in ("en", "pres", "mal")) == has_place
        for word in english.split():
            if word in TOVAN_WORDS:  # non-inflected words always map to the same word
                word_map.setdefault(word, TOVAN_WORDS[word])
    assert len({e for e, _ in pairs}) > 450  # varied
    assert len(word_map) > 40


def test_translate_rejects_sentences_outside_the_grammar():
    with pytest.raises(ValueError, match="sentence"):
        translate("the dog sees the cat")  # no full stop
    with pytest.raises(ValueError, match="sentence"):
        translate("the unicorn sees the cat .")
    with pytest.raises(ValueError, match="sentence"):
        translate("the dog sees the cat on the moon .")
    with pytest.raises(TypeError, match="sentence"):
        translate(None)


# --------------------------------------------------------------------- arithmetic


def digits_from_steps(steps: str) -> str:
    written = re.findall(r"write (\d)", steps)  # one digit per column, right to left
    return "".join(reversed(written)).lstrip("0") or "0"


def test_arithmetic_answers_and_steps_are_correct():
    items = arithmetic(2000, n_digits=(1, 4), seed=11)
    for item in items:
        assert int(item["answer"]) == eval(item["question"])  # our own strings
        assert item["question"] == f"{item['a']}{item['op']}{item['b']}"
        assert int(item["answer"]) >= 0
        assert digits_from_steps(item["steps"]) == item["answer"]
        n_columns = max(len(str(item["a"])), len(str(item["b"])))
        assert item["steps"].count("write") in (n_columns, n_columns + 1)
    assert {item["op"] for item in items} == {"+", "-"}
    digit_counts = {len(str(item["a"])) for item in items}
    assert digit_counts == {1, 2, 3, 4}


def test_arithmetic_worked_examples_by_hand():
    assert data._add_steps(47, 85) == "7+5=12, write 2 carry 1; 4+8+1=13, write 3 carry 1; write 1"
    assert data._subtract_steps(52, 17) == (
        "2-7 borrow, 12-7=5, write 5 borrow 1; 5-1-1=3, write 3"
    )
    assert data._subtract_steps(100, 1) == (
        "0-1 borrow, 10-1=9, write 9 borrow 1; 0-0-1 borrow, 10-0-1=9, write 9 borrow 1; "
        "1-0-1=0, write 0"
    )
    item = {"question": "47+85", "answer": "132", "steps": data._add_steps(47, 85)}
    assert arithmetic_text(item, with_steps=False) == "47+85=132"
    assert arithmetic_text(item) == (
        "47+85: 7+5=12, write 2 carry 1; 4+8+1=13, write 3 carry 1; write 1. 47+85=132"
    )


def test_arithmetic_options_and_errors():
    items = arithmetic(50, n_digits=(2, 2), ops=("+",), worked=False, seed=0)
    assert all(item["op"] == "+" and item["steps"] is None for item in items)
    assert all(10 <= item["a"] <= 99 and 10 <= item["b"] <= 99 for item in items)
    with pytest.raises(ValueError, match="item"):
        arithmetic_text(items[0], with_steps=True)
    with pytest.raises(ValueError, match="ops"):
        arithmetic(3, ops=("*",))
    with pytest.raises(ValueError, match="ops"):
        arithmetic(3, ops=())
    with pytest.raises(ValueError, match="n_digits"):
        arithmetic(3, n_digits=(3, 1))
    with pytest.raises(TypeError, match="n_digits"):
        arithmetic(3, n_digits=2)
    with pytest.raises(TypeError, match="n"):
        arithmetic(2.0)
    with pytest.raises(TypeError, match="item"):
        arithmetic_text("1+1=2")


# ----------------------------------------------------------------------- plumbing


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=50))
def test_char_tokenizer_round_trip(text):
    tok = CharTokenizer(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text
    assert tok.vocab_size == len(set(text)) and max(ids) < tok.vocab_size


def test_char_tokenizer_errors():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="text"):
        tok.encode("abd")
    with pytest.raises(ValueError, match="ids"):
        tok.decode([3])
    with pytest.raises(TypeError, match="text"):
        CharTokenizer(["a"])
    with pytest.raises(ValueError, match="text"):
        CharTokenizer("")


def test_batches_are_shifted_windows():
    ids = torch.arange(100) * 3
    it = batches(ids, batch_size=4, seq_len=8, seed=0)
    for _ in range(5):
        x, y = next(it)
        assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert torch.equal(y[:, -1], x[:, -1] + 3)  # the next element of the stream
        assert torch.equal(x[:, 1:] - x[:, :-1], torch.full((4, 7), 3))  # contiguous
    a = [x for x, _ in batches(ids, 4, 8, seed=1, num_batches=3)]
    b = [x for x, _ in batches(list(range(0, 300, 3)), 4, 8, seed=1, num_batches=3)]
    assert len(a) == 3 and all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    # every start offset can be drawn, including the last one
    starts = torch.cat([x[:, 0] for x, _ in batches(torch.arange(10), 64, 8, num_batches=4)])
    assert set(starts.tolist()) == {0, 1}


def test_sequential_batches_cover_the_stream_once():
    ids = list(range(50))
    out = sequential_batches(ids, batch_size=2, seq_len=7)
    xs = torch.cat([x for x, _ in out])
    assert [x.shape[0] for x, _ in out] == [2, 2, 2, 1]  # 7 windows, last batch short
    assert xs.flatten().tolist() == list(range(49))
    assert all(torch.equal(x[:, 1:], y[:, :-1]) for x, y in out)


def test_batch_errors():
    with pytest.raises(ValueError, match="seq_len"):
        next(batches([1, 2, 3], batch_size=1, seq_len=3))
    with pytest.raises(ValueError, match="batch_size"):
        batches(list(range(10)), batch_size=0, seq_len=3)
    with pytest.raises(TypeError, match="token_ids"):
        batches(torch.rand(10), 1, 3)
    with pytest.raises(ValueError, match="token_ids"):
        batches(torch.zeros(2, 10, dtype=torch.long), 1, 3)
    with pytest.raises(TypeError, match="token_ids"):
        batches("hello world", 1, 3)
    with pytest.raises(ValueError, match="seq_len"):
        sequential_batches([1, 2], batch_size=1, seq_len=2)


def test_train_val_split():
    text = "abcdefghij"
    assert train_val_split(text, 0.2) == ("abcdefgh", "ij")
    train, val = train_val_split(torch.arange(100), 0.1)
    assert train.shape == (90,) and torch.equal(val, torch.arange(90, 100))
    items = list(range(20))
    a = train_val_split(items, 0.25, shuffle=True, seed=0)
    assert a == train_val_split(items, 0.25, shuffle=True, seed=0)
    assert sorted(a[0] + a[1]) == items and len(a[1]) == 5 and a[0] + a[1] != items
    assert items == list(range(20))  # the input is not shuffled in place
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(items, 1.0)
    with pytest.raises(ValueError, match="shuffle"):
        train_val_split(text, 0.5, shuffle=True)
    with pytest.raises(ValueError, match="data"):
        train_val_split("a", 0.5)


def test_count_errors_name_the_argument():
    with pytest.raises(ValueError, match="n"):
        stories(-1)
    with pytest.raises(TypeError, match="seed"):
        stories(2, seed="0")
    with pytest.raises(TypeError, match="n_chars"):
        story_corpus(10.5)
