"""Checks for the chapter-7 lab on summarization and translation (07-2).

Each check runs the student's function next to a reference on fixed inputs and either
prints one line of success or raises ``AssertionError`` naming the failing case. The
cases are chosen so that the usual mistakes fail:

- ``lead_summary``: splitting at every full stop (so "3.5 million" is cut), splitting on
  ``"."`` only (a question or exclamation mark does not end a sentence), dropping the end
  punctuation, taking ``k + 1`` or ``k - 1`` sentences, joining without a space;
- ``word_limit_share``: ``<`` instead of ``<=`` (a summary of exactly ``max_words`` words
  complies), counting characters instead of words, ``split(" ")`` (double spaces and
  newlines make empty or merged "words"), returning the count instead of the share.

The reference for ``lead_summary`` is the course's
``llmfoundations.applications.tasks.lead_k``; ``word_limit_share`` has no library
counterpart, its reference is the three-line definition below.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from llmfoundations.applications.tasks import lead_k, split_sentences

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_lead_summary", "check_word_limit_share"]


# ------------------------------------------------------------------------------ lead-k

_DOCS = [
    "The bridge will close in March. Engineers found cracks. A new one opens in 2029.",
    "Sales fell by 3.5 percent last year. The firm will cut 200 jobs. Unions are angry.",
    "Who won the cup? Harbor United did! The final was watched by 12,000 fans.",
    "One sentence only, with no final full stop",
    "First line.\nSecond line after a newline.   Third after spaces. Fourth.",
]


def _every_full_stop(document: str, k: int) -> str:
    parts = [p.strip() for p in document.split(".") if p.strip()]
    return " ".join(p + "." for p in parts[:k])


def _full_stop_only(document: str, k: int) -> str:
    parts = [" ".join(p.split()) for p in re.split(r"(?<=\.)\s+", document.strip()) if p.strip()]
    return " ".join(parts[:k])


def _no_punctuation(document: str, k: int) -> str:
    parts = [" ".join(p.split()) for p in re.split(r"[.!?]\s+", document.strip()) if p.strip()]
    return " ".join(parts[:k])


def _one_more(document: str, k: int) -> str:
    return lead_k(document, k + 1)


def _one_less(document: str, k: int) -> str:
    return lead_k(document, k - 1) if k > 1 else ""


def _no_space(document: str, k: int) -> str:
    return "".join(split_sentences(document)[:k])


@exercise_check
def check_lead_summary(student: Callable[[str, int], str]) -> None:
    """Lab 07-2: ``lead_summary(document, k)``: the first ``k`` sentences of ``document``
    (cut after ``.``, ``!`` or ``?`` followed by white space; white space inside a
    sentence collapsed to one space), joined by single spaces."""
    check_callable("lead_summary", student)
    cases = [((doc, k), {}) for doc in _DOCS for k in (1, 2)] + [((_DOCS[0], 5), {})]
    compare_with_reference(
        "lead_summary",
        student,
        lead_k,
        cases,
        hints=[
            (_every_full_stop, "cut only where . ! or ? is FOLLOWED by white space: '3.5' is one number"),
            (_full_stop_only, "a sentence also ends with ! or ?"),
            (_no_punctuation, "keep each sentence's end punctuation"),
            (_one_more, "take exactly k sentences (one fewer)"),
            (_one_less, "take exactly k sentences (one more)"),
            (_no_space, "join the sentences with one space"),
        ],
    )


# ----------------------------------------------------------------------- word limit


def _reference_word_limit_share(summaries: Sequence[str], max_words: int) -> float:
    return sum(len(s.split()) <= max_words for s in summaries) / len(summaries)


def _split_on_space(summaries: Sequence[str], max_words: int) -> float:
    return sum(len(s.split(" ")) <= max_words for s in summaries) / len(summaries)


def _strictly_less(summaries: Sequence[str], max_words: int) -> float:
    return sum(len(s.split()) < max_words for s in summaries) / len(summaries)


def _characters(summaries: Sequence[str], max_words: int) -> float:
    return sum(len(s) <= max_words for s in summaries) / len(summaries)


def _count(summaries: Sequence[str], max_words: int) -> float:
    return float(sum(len(s.split()) <= max_words for s in summaries))


_SUMMARIES = [
    "Five words in this one.",
    "Exactly six words are written here.",
    "A much longer summary that goes well past the limit of six words.",
    "Two  spaces  between\nwords here.",
    "Short.",
    "Seven words: this one is one over.",
]


@exercise_check
def check_word_limit_share(student: Callable[[Sequence[str], int], float]) -> None:
    """Lab 07-2: ``word_limit_share(summaries, max_words)``: the share (0 to 1) of the
    summaries with at most ``max_words`` words, words being what ``str.split()`` returns."""
    check_callable("word_limit_share", student)
    cases = [
        (_SUMMARIES, 6),
        (_SUMMARIES, 5),
        (_SUMMARIES[:3], 100),
        (_SUMMARIES[3:4], 4),  # 4 words, but split(" ") gives 5 pieces
        (_SUMMARIES[2:3], 3),
        (["one two three"], 3),
    ]
    hints = [  # in this order: split(' ') and '<' give the same share on case 2
        (_split_on_space, "use str.split() with no argument: split(' ') keeps empty pieces and newlines"),
        (_strictly_less, "a summary of exactly max_words words is within the limit (<=, not <)"),
        (_characters, "count words (str.split()), not characters"),
        (_count, "return the share (divide by the number of summaries), not the count"),
    ]
    for i, (summaries, max_words) in enumerate(cases, start=1):
        where = f"case {i} of {len(cases)} ({len(summaries)} summaries, max_words = {max_words})"
        got = student(list(summaries), max_words)
        expected = _reference_word_limit_share(summaries, max_words)
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise AssertionError(f"word_limit_share, {where}: return a number, got {got!r}")
        if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
            hint = ""
            for wrong, message in hints:
                if math.isclose(wrong(summaries, max_words), got, rel_tol=1e-9, abs_tol=1e-12):
                    hint = f"\nHint: {message}"
                    break
            raise AssertionError(f"word_limit_share, {where}: expected {expected!r}, got {got!r}{hint}")
    print(f"✔ word_limit_share: all {len(cases)} cases match the reference")
