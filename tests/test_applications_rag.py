"""Tests of applications/rag.py: chunking, the cited prompt, citations and groundedness."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.applications.rag import (
    DEFAULT_INSTRUCTION,
    build_prompt,
    check_grounded,
    chunk,
    citations,
)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="abcxyz ", max_size=60),
    size=st.integers(1, 12),
    overlap_frac=st.floats(0, 0.99),
)
def test_chunks_cover_the_text_with_the_stated_overlap(text, size, overlap_frac):
    overlap = min(int(size * overlap_frac), size - 1)
    windows = chunk(text, size, overlap)
    stride = size - overlap
    if not text:
        assert windows == []
        return
    for i, window in enumerate(windows):
        assert window == text[i * stride : i * stride + size]  # window i starts at i * stride
    assert all(len(w) == size for w in windows[:-1])
    assert windows[-1] == text[(len(windows) - 1) * stride :]  # the last one ends at the end
    assert len(windows) == 1 or len(windows[-2]) + (len(windows) - 2) * stride < len(text)
    rebuilt = windows[0] + "".join(w[overlap:] for w in windows[1:])
    assert rebuilt == text  # dropping each overlap gives the text back


def test_chunk_hand_computed_and_tokens():
    assert chunk("abcdefgh", 4, 1) == ["abcd", "defg", "gh"]
    assert chunk("abcdefg", 4, 1) == ["abcd", "defg"]  # no window inside the last one
    assert chunk("abcdefgh", 3) == ["abc", "def", "gh"]
    assert chunk("ab", 5, 2) == ["ab"]
    assert chunk([10, 11, 12, 13, 14, 15], 4, 2) == [[10, 11, 12, 13], [12, 13, 14, 15]]
    assert chunk([], 3) == []


def test_chunk_bad_inputs():
    with pytest.raises(ValueError, match="overlap .* must be < size"):
        chunk("abc", 2, 2)
    with pytest.raises(ValueError, match="size must be >= 1"):
        chunk("abc", 0)
    with pytest.raises(TypeError, match="items"):
        chunk(123, 2)


def test_build_prompt_numbers_passages_from_one_and_ends_with_the_question():
    prompt = build_prompt("Where is it?", ["First  passage,\nwith a newline.", "Second."])
    assert prompt.startswith(DEFAULT_INSTRUCTION)
    assert "[1] First passage, with a newline.\n[2] Second.\n" in prompt
    assert prompt.endswith("Question: Where is it?\nAnswer:")
    assert "like [1]" in DEFAULT_INSTRUCTION
    assert "(no passages)" in build_prompt("Q?", [])
    with pytest.raises(TypeError, match="passages"):
        build_prompt("Q?", "one passage")
    with pytest.raises(TypeError, match=r"passages\[1\]"):
        build_prompt("Q?", ["a", 2])


def test_citations_in_order_once_each():
    assert citations("A [1]. B [3][1]. C [12], not (4) or [x].") == [1, 3, 12]
    assert citations("no sources") == []


PASSAGES = ["The Eiffel Tower stands in Paris.", "Rome is the capital of Italy.", "Berlin."]


@pytest.mark.parametrize(
    "response, answer, cited, invalid, supporting, grounded",
    [
        ("It is in Paris [1].", "Paris", (1,), (), (1,), True),
        ("It is in PARIS [2] [1].", "paris", (2, 1), (), (1,), True),  # one support suffices
        ("Paris [2].", "Paris", (2,), (), (), False),  # the cited passage lacks the answer
        ("Paris [1] [4].", "Paris", (1, 4), (4,), (1,), False),  # [4] was never shown
        ("Paris [0].", "Paris", (0,), (0,), (), False),  # numbers start at 1
        ("Paris.", "Paris", (), (), (), False),  # no citation
        ("capital [2]", "capital  of\nItaly", (2,), (), (2,), True),  # whitespace collapsed
    ],
)
def test_check_grounded(response, answer, cited, invalid, supporting, grounded):
    g = check_grounded(response, answer, PASSAGES)
    assert (g.cited, g.invalid, g.supporting, g.grounded) == (cited, invalid, supporting, grounded)


def test_check_grounded_bad_inputs():
    with pytest.raises(ValueError, match="answer must not be empty"):
        check_grounded("x [1]", "  ", PASSAGES)
    with pytest.raises(TypeError, match="passages"):
        check_grounded("x [1]", "x", "x")
    with pytest.raises(TypeError, match="response"):
        check_grounded(None, "x", PASSAGES)


def test_doctests():
    import doctest

    from llmfoundations.applications import rag as module

    assert doctest.testmod(module).failed == 0
