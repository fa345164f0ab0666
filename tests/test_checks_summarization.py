"""The Lab 07-2 checks grade: right answers pass, plausible wrong ones fail with the hint
that names the mistake.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
The references are held against hand-worked values and independent implementations.
"""

from __future__ import annotations

import re

import pytest

from llmfoundations import checks
from llmfoundations.checks import summarization


def good_lead_summary(document, k):
    sentences = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", document.strip()) if s.strip()]
    return " ".join(sentences[:k])


def good_word_limit_share(summaries, max_words):
    within = 0
    for summary in summaries:
        if len(summary.split()) <= max_words:
            within += 1
    return within / len(summaries)


# ------------------------------------------------------------------------------ lead-k


def test_lead_reference_matches_hand_worked_values():
    docs = summarization._DOCS
    assert summarization.lead_k(docs[1], 1) == "Sales fell by 3.5 percent last year."
    assert summarization.lead_k(docs[2], 2) == "Who won the cup? Harbor United did!"
    assert summarization.lead_k(docs[4], 2) == "First line. Second line after a newline."
    assert summarization.lead_k(docs[3], 2) == docs[3]


def test_lead_summary_check_passes_a_correct_answer(capsys):
    checks.check_lead_summary(good_lead_summary)
    assert "✔ lead_summary: all 11 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (summarization._every_full_stop, "FOLLOWED by white space"),
        (summarization._full_stop_only, "also ends with ! or ?"),
        (summarization._no_punctuation, "end punctuation"),
        (summarization._one_more, "one fewer"),
        (summarization._one_less, "one more"),
        (summarization._no_space, "one space"),
    ],
)
def test_lead_summary_check_names_the_common_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.check_lead_summary(wrong)


def test_lead_summary_check_fails_an_unknown_mistake_without_a_hint():
    with pytest.raises(AssertionError) as info:
        checks.check_lead_summary(lambda document, k: document.upper())
    assert "Hint" not in str(info.value)


# ----------------------------------------------------------------------- word limit


def test_word_limit_reference_matches_hand_worked_values():
    ref = summarization._reference_word_limit_share
    assert ref(summarization._SUMMARIES, 6) == 4 / 6
    assert ref(summarization._SUMMARIES, 5) == 3 / 6
    assert ref(["a b c", "a b c d"], 3) == 0.5


def test_word_limit_share_check_passes_a_correct_answer(capsys):
    checks.check_word_limit_share(good_word_limit_share)
    assert "✔ word_limit_share: all 6 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (summarization._split_on_space, r"split\(' '\)"),
        (summarization._strictly_less, "<=, not <"),
        (summarization._characters, "not characters"),
        (summarization._count, "not the count"),
    ],
)
def test_word_limit_share_check_names_the_common_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.check_word_limit_share(wrong)


def test_word_limit_share_check_wants_a_number():
    with pytest.raises(AssertionError, match="return a number"):
        checks.check_word_limit_share(lambda summaries, max_words: [True] * len(summaries))
