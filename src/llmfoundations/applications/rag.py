"""Retrieval-augmented generation: cut documents into passages, put the retrieved ones in
the prompt with numbers, and check that the answer cites a passage that supports it.

RAG (Lewis et al., 2020, "Retrieval-Augmented Generation for Knowledge-Intensive NLP
Tasks") answers a question from passages found at question time instead of from the
weights alone. The pipeline is: **chunk** the corpus into overlapping windows (so a
fact cut at one boundary is whole in the next window), **retrieve** the best chunks
(``llmfoundations.applications.retrieval``), **prompt** the model with the numbered
passages and the question, asking it to cite its sources like ``[2]``, and **check**
the answer. A cited answer can be verified: each citation must name a passage that was
shown, and a cited passage must actually contain the answer. This is a strict, cheap
proxy for "grounded" (an answer can be supported in other words, which this check calls
unsupported; judging paraphrases needs a model, see ``llmfoundations.evaluation.judge``).

This module holds pure functions of strings:

- ``chunk(items, size, overlap)``: windows of ``size`` characters (of a str) or tokens
  (of a list of ids) that start every ``size - overlap`` items; the last one ends at the
  end; no window lies wholly inside the previous one;
- ``build_prompt(question, passages)``: the passages numbered ``[1]``, ``[2]``, ... then
  the question and the instruction to cite;
- ``citations(text)``: the passage numbers cited in a text, in order, each once;
- ``Grounding`` and ``check_grounded(response, answer, passages)``.

Conventions: passage numbers start at 1 (as people count, and as the prompt shows them);
answer matching ignores case and collapses whitespace.

Left out: the model call (use ``llmfoundations.generate`` with the chat template of
``llmfoundations.pretrained``), chunking on sentence or section boundaries, re-ranking,
query rewriting, and answer extraction beyond substring matching.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from llmfoundations._validate import check_int, check_str

__all__ = [
    "DEFAULT_INSTRUCTION",
    "chunk",
    "build_prompt",
    "citations",
    "Grounding",
    "check_grounded",
]

Items = TypeVar("Items", str, Sequence)

DEFAULT_INSTRUCTION = (
    "Answer the question using only the passages below. After each claim, cite the "
    "passage it comes from by its number in brackets, like [1]. If the passages do not "
    'contain the answer, say "I don\'t know".'
)

_CITATION = re.compile(r"\[(\d+)\]")


def chunk(items: Items, size: int, overlap: int = 0) -> list[Items]:
    """Overlapping windows over a string (characters) or a sequence (e.g. token ids).

    Window ``i`` is ``items[i * stride : i * stride + size]`` with ``stride = size -
    overlap``; windows stop as soon as one reaches the end, so the last may be shorter and
    none is contained in the one before. An empty input gives no window.

    >>> chunk("abcdefgh", size=4, overlap=1)
    ['abcd', 'defg', 'gh']
    >>> chunk([1, 2, 3, 4, 5], size=3, overlap=1)
    [[1, 2, 3], [3, 4, 5]]
    """
    if not isinstance(items, (str, Sequence)):
        raise TypeError(f"items must be a str or a sequence, got {type(items).__name__}")
    check_int("size", size, minimum=1)
    check_int("overlap", overlap, minimum=0)
    if overlap >= size:
        raise ValueError(f"overlap ({overlap}) must be < size ({size}), or windows never advance")
    stride = size - overlap
    windows = []
    for start in range(0, len(items), stride):
        windows.append(items[start : start + size])
        if start + size >= len(items):
            break
    return windows


def build_prompt(
    question: str, passages: Sequence[str], *, instruction: str = DEFAULT_INSTRUCTION
) -> str:
    """The RAG prompt: the instruction, the passages numbered from 1, then the question.

    >>> print(build_prompt("Who wrote it?", ["Ada wrote it.", "Bob read it."], instruction="Cite."))
    Cite.
    <BLANKLINE>
    [1] Ada wrote it.
    [2] Bob read it.
    <BLANKLINE>
    Question: Who wrote it?
    Answer:
    """
    check_str("question", question)
    check_str("instruction", instruction)
    if isinstance(passages, str) or not isinstance(passages, Sequence):
        raise TypeError("passages must be a sequence of strings")
    lines = []
    for number, passage in enumerate(passages, start=1):
        check_str(f"passages[{number - 1}]", passage)
        lines.append(f"[{number}] {' '.join(passage.split())}")  # one line per passage
    body = "\n".join(lines) if lines else "(no passages)"
    return f"{instruction}\n\n{body}\n\nQuestion: {question.strip()}\nAnswer:"


def citations(text: str) -> list[int]:
    """Passage numbers cited as ``[n]`` in ``text``, in order of first appearance, once each.

    >>> citations("Paris [2], the capital [2][1]; see [10].")
    [2, 1, 10]
    """
    check_str("text", text)
    seen: dict[int, None] = {}
    for match in _CITATION.finditer(text):
        seen.setdefault(int(match.group(1)), None)
    return list(seen)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class Grounding:
    """The verdict of :func:`check_grounded`.

    - ``cited``: passage numbers the response cites (from 1, in order);
    - ``invalid``: cited numbers that name no passage (0, or more than were shown);
    - ``supporting``: cited, valid passages that contain the answer;
    - ``grounded``: at least one citation, none invalid, and at least one supporting.
    """

    cited: tuple[int, ...]
    invalid: tuple[int, ...]
    supporting: tuple[int, ...]

    @property
    def grounded(self) -> bool:
        return bool(self.cited) and not self.invalid and bool(self.supporting)


def check_grounded(response: str, answer: str, passages: Sequence[str]) -> Grounding:
    """Whether ``response`` cites only passages it was shown, and a cited one contains
    ``answer`` (case-insensitive, whitespace collapsed).

    >>> passages = ["The Eiffel Tower is in Paris.", "Rome is in Italy."]
    >>> check_grounded("It is in Paris [1].", "Paris", passages).grounded
    True
    >>> check_grounded("It is in Paris [2].", "Paris", passages)  # cites the wrong passage
    Grounding(cited=(2,), invalid=(), supporting=())
    >>> check_grounded("It is in Paris [3].", "Paris", passages).invalid
    (3,)
    """
    check_str("response", response)
    check_str("answer", answer)
    if not answer.strip():
        raise ValueError("answer must not be empty: every passage would contain it")
    if isinstance(passages, str) or not isinstance(passages, Sequence):
        raise TypeError("passages must be a sequence of strings")
    for i, passage in enumerate(passages):
        check_str(f"passages[{i}]", passage)
    cited = citations(response)
    valid = [n for n in cited if 1 <= n <= len(passages)]
    target = _normal(answer)
    return Grounding(
        cited=tuple(cited),
        invalid=tuple(n for n in cited if not 1 <= n <= len(passages)),
        supporting=tuple(n for n in valid if target in _normal(passages[n - 1])),
    )
