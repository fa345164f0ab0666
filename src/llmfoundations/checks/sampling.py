"""Checks for the chapter-4 labs: the next-token distribution (04-1), decoding (04-2), prompting (04-3).

Each check runs the student's function next to a reference on fixed inputs and either
prints one line of success or raises ``AssertionError`` naming the failing case. The
cases are chosen so that the usual mistakes fail:

- ``temperature_softmax``: multiplying by the temperature instead of dividing, the
  softmax over the batch axis (``B != V`` in every case), forgetting the temperature;
- ``top_k``: keeping the smallest logits, one token too many or too few, ``0`` instead
  of ``-inf`` for removed tokens, returning probabilities instead of logits;
- ``top_p``: dropping the token that carries the kept mass over ``p`` (the boundary
  token), accumulating in vocabulary order instead of sorted order, keeping every
  token whose own probability is at least ``p``;
- ``distinct_n``: averaging per-text ratios instead of pooling the n-grams, letting
  n-grams run from one text into the next, counting tokens instead of n-grams;
- ``few_shot_messages``: all examples packed into one user message, the answers given
  the user's role, a system message even without an instruction, the query left out;
- ``majority_vote``: counting empty answers (nothing could be read) as votes, breaking
  a tie alphabetically or by the last answer seen instead of the first.

The logits cases avoid ties and keep every cumulative probability at least 5e-3 away
from ``p``, so any correct implementation passes whatever order it sorts ties in. The
references are the course's ``llmfoundations.sampling`` functions (themselves tested
against Hugging Face ``transformers``) and plain Python for the text exercises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from llmfoundations.sampling import distinct_n, top_k_filter, top_p_filter

from .core import check_callable, compare_with_reference, exercise_check

__all__ = [
    "check_temperature_softmax",
    "check_top_k",
    "check_top_p",
    "check_distinct_n",
    "check_few_shot_messages",
    "check_majority_vote",
]


# ------------------------------------------------------------------------------ helpers



def _logits(seed: int, shape: tuple[int, int], scale: float = 2.0) -> Tensor:
    """Seeded (B, V) logits ~ N(0, scale^2): ties have probability zero."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _returns(name: str, kind: type, student: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``student`` so a result of the wrong type fails with a clear message."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        got = student(*args, **kwargs)
        if not isinstance(got, kind) or isinstance(got, bool):
            raise AssertionError(f"{name} must return a {kind.__name__}, got {type(got).__name__}")
        return got

    return wrapped


def _unchanged_input(name: str, student: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a logits -> logits ``student`` so changing its input in place is reported."""

    def wrapped(logits: Tensor, *args: Any, **kwargs: Any) -> Any:
        before = logits.clone()
        got = student(logits, *args, **kwargs)
        if not torch.equal(logits, before):
            raise AssertionError(
                f"{name} changed its input logits in place; return a new tensor instead"
            )
        return got

    return wrapped


# ------------------------------------------------------------------------ 04-1


def _reference_temperature_softmax(logits: Tensor, temperature: float) -> Tensor:
    return torch.softmax(logits / temperature, dim=-1)


@exercise_check
def check_temperature_softmax(student: Callable[[Tensor, float], Tensor]) -> None:
    """Lab 04-1: ``temperature_softmax(logits, temperature)`` -> probabilities ``(B, V)``.

    ``softmax(logits / temperature)`` along the vocabulary (last) axis.
    """
    check_callable("temperature_softmax", student)
    cases = [
        ((torch.tensor([[2.0, 1.0, 0.0]]), 1.0), {}),
        ((torch.tensor([[2.0, 1.0, 0.0]]), 0.5), {}),
        ((_logits(41, (2, 5)), 2.0), {}),
        ((_logits(42, (3, 8)), 0.1), {}),  # nearly one-hot: needs a stable softmax
        ((_logits(43, (4, 50), scale=5.0), 1.5), {}),
        ((torch.tensor([[1000.0, 999.0, 990.0], [0.0, 0.0, 0.0]]), 0.7), {}),
    ]
    compare_with_reference(
        "temperature_softmax",
        student,
        _reference_temperature_softmax,
        cases,
        atol=1e-6,
        rtol=1e-5,
    )


@exercise_check
def check_top_k(student: Callable[[Tensor, int], Tensor]) -> None:
    """Lab 04-1: ``top_k(logits, k)`` keeps the ``k`` largest logits of each row, ``-inf`` elsewhere."""
    check_callable("top_k", student)
    cases = [
        ((torch.tensor([[0.5, 3.0, -1.0, 2.0]]), 2), {}),
        ((torch.tensor([[0.5, 3.0, -1.0, 2.0]]), 1), {}),
        ((_logits(44, (2, 6)), 3), {}),
        ((_logits(45, (3, 10)), 5), {}),
        ((_logits(46, (2, 7)), 7), {}),  # k = V keeps everything
        ((_logits(47, (4, 100)), 20), {}),
    ]
    compare_with_reference(
        "top_k", _unchanged_input("top_k", student), top_k_filter, cases, atol=0.0, rtol=0.0
    )


# ------------------------------------------------------------------------ 04-2

# (seed, (B, V), p): chosen so that no cumulative probability lies within 5e-3 of p
# (the test file verifies it), which keeps float rounding away from the boundary.
_TOP_P_CASES = [
    (51, (2, 6), 0.5),
    (52, (3, 10), 0.9),
    (53, (2, 20), 0.8),
    (54, (4, 50), 0.5),
    (55, (2, 8), 0.9),
]


def top_p_cases() -> list[tuple[tuple, dict]]:
    """The ``(args, kwargs)`` cases of :func:`check_top_p` (exposed for the tests)."""
    hand = torch.tensor([[0.05, 0.5, 0.1, 0.3, 0.05]]).log()  # sorted: .5 .3 .1 .05 .05
    cases = [
        ((hand, 0.6), {}),  # .5 < .6, so .3 joins: keeps {.5, .3}
        ((hand, 0.85), {}),  # .5 + .3 = .8 < .85, .1 joins: keeps three
        ((hand, 0.4), {}),  # the top token alone reaches p
        ((torch.tensor([[9.0, 0.0, 0.0, 0.0]]), 0.5), {}),  # one token holds nearly all
    ]
    cases += [((_logits(seed, shape), p), {}) for seed, shape, p in _TOP_P_CASES]
    return cases


@exercise_check
def check_top_p(student: Callable[[Tensor, float], Tensor]) -> None:
    """Lab 04-2: ``top_p(logits, p)``, nucleus filtering.

    Keep, in each row, the smallest set of most likely tokens whose probabilities add up
    to at least ``p`` (the token that carries the sum over ``p`` is kept); ``-inf`` elsewhere.
    """
    check_callable("top_p", student)
    compare_with_reference(
        "top_p",
        _unchanged_input("top_p", student),
        top_p_filter,
        top_p_cases(),
        atol=0.0,
        rtol=0.0,
    )


@exercise_check
def check_distinct_n(student: Callable[[Sequence[str], int], float]) -> None:
    """Lab 04-2: ``distinct_n(texts, n)``: distinct n-grams / all n-grams, pooled over ``texts``.

    Texts are split on whitespace; n-grams never cross from one text into the next; 0.0
    when no text has ``n`` words.
    """
    check_callable("distinct_n", student)
    texts = [
        "the cat sat on the mat",
        "the cat sat on the sofa",
        "a dog ran in the park",
    ]
    cases = [
        ((texts, 1), {}),
        ((texts, 2), {}),
        ((texts, 3), {}),
        ((["a b a b a b"], 2), {}),  # repetition inside one text
        ((["one two", "two one"], 2), {}),  # "two two" would only appear across texts
        ((["the the the", "the the the"], 1), {}),
        ((["short", "tiny"], 2), {}),  # no bigram at all: 0.0
        ((["x y z", "x y z", "x y z", "x y w"], 2), {}),
    ]

    def rounded(fn: Callable[..., float]) -> Callable[..., float]:
        return lambda *args: round(float(fn(*args)), 6)

    compare_with_reference(
        "distinct_n",
        rounded(_returns("distinct_n", float, student)),
        rounded(distinct_n),
        cases,
    )


# ------------------------------------------------------------------------ 04-3


def reference_few_shot_messages(
    instruction: str, examples: Sequence[tuple[str, str]], query: str
) -> list[dict[str, str]]:
    """A few-shot prompt for a chat model, as a conversation.

    A system message with ``instruction`` (left out when it is empty), then each example
    as a user turn (the question) followed by an assistant turn (the answer), then the
    query as the last user turn. ``pretrained.apply_chat_template`` renders it.

    >>> reference_few_shot_messages("Add.", [("1+1", "2")], "2+3")  # doctest: +NORMALIZE_WHITESPACE
    [{'role': 'system', 'content': 'Add.'}, {'role': 'user', 'content': '1+1'},
     {'role': 'assistant', 'content': '2'}, {'role': 'user', 'content': '2+3'}]
    """
    messages = [{"role": "system", "content": instruction}] if instruction else []
    for question, answer in examples:
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": query})
    return messages


@exercise_check
def check_few_shot_messages(
    student: Callable[[str, Sequence[tuple[str, str]], str], list[dict[str, str]]],
) -> None:
    """Lab 04-3: ``few_shot_messages(instruction, examples, query)`` -> a list of chat messages."""
    check_callable("few_shot_messages", student)
    capitals = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi")]
    cases = [
        (("Name the capital city of the country.", capitals, "Italy"), {}),
        (("Name the capital city of the country.", [], "Italy"), {}),  # zero-shot
        (("", capitals[:1], "Peru"), {}),  # no instruction: no system message
        (("Is the review positive or negative?", [("I loved it.", "positive")], "Dull."), {}),
        (("Add the numbers.", [("2+2", "4"), ("10+5", "15")], "7+8"), {}),
    ]

    def as_plain_list(*args: Any) -> list[dict[str, str]]:
        got = _returns("few_shot_messages", list, student)(*args)
        for i, message in enumerate(got):
            if not isinstance(message, dict):
                raise AssertionError(
                    f"few_shot_messages: message {i} must be a dict, got {type(message).__name__}"
                )
        return [dict(m) for m in got]

    compare_with_reference("few_shot_messages", as_plain_list, reference_few_shot_messages, cases)


def reference_majority_vote(answers: Sequence[str]) -> str:
    """The most frequent non-empty answer; on a tie the one seen first; ``""`` if none.

    >>> reference_majority_vote(["12", "", "13", "12"])
    '12'
    """
    counts: dict[str, int] = {}
    for answer in answers:
        if answer:
            counts[answer] = counts.get(answer, 0) + 1
    if not counts:
        return ""
    best = max(counts.values())
    return next(a for a, c in counts.items() if c == best)  # dicts keep insertion order


@exercise_check
def check_majority_vote(student: Callable[[Sequence[str]], str]) -> None:
    """Lab 04-3: ``majority_vote(answers)``, the vote of self-consistency decoding."""
    check_callable("majority_vote", student)
    answers = [
        ["12", "13", "12"],
        ["7"],
        ["", "", "7"],  # an empty answer (nothing could be read) is not a vote
        ["5", "4", "4", "5"],  # a tie: "5" was seen first
        ["40", "9", "9", "40", "100", "9"],
        ["b", "a"],  # a tie: the first, not the alphabetically first
        [],
        ["", ""],
    ]
    compare_with_reference(
        "majority_vote",
        _returns("majority_vote", str, student),
        reference_majority_vote,
        [((list(a),), {}) for a in answers],
    )
