"""Checks for Lab 03-1 (supervised fine-tuning): the masked labels, the masked loss and
the answer-format checker.

Each check runs the student's function next to the course's reference
(``llmfoundations.finetuning.sft``) on fixed inputs and either prints one line of success
or raises ``AssertionError`` naming the failing case, with a hint where the wrong result
is a known mistake:

- ``sft_labels``: masking the response instead of the prompt, masking one token too many
  or too few (shifting the labels here as well as in the loss), ``0`` instead of ``-100``
  under the prompt, returning the response alone as labels;
- ``masked_sft_loss``: forgetting the shift (scoring ``logits[:, t]`` against
  ``labels[:, t]``), averaging over every position (masked ones counted as zero loss),
  averaging per sequence first, summing instead of averaging, NaN for a batch with no
  labelled token. It must be written from its definition: ``cross_entropy`` and
  ``nll_loss`` are ruled out;
- ``parse_answer``: accepting a reply that only starts with the format (text on a second
  line), or only contains it (text before ``ANSWER:``), an empty answer, another case
  (``answer:``), no space after the colon; returning the whole line instead of the answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from llmfoundations.finetuning.sft import IGNORE_INDEX, build_sft_example, sft_loss

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_sft_example_labels", "check_masked_sft_loss", "check_sft_answer_format"]


# ------------------------------------------------------------------------------- labels


def reference_sft_labels(prompt_ids: list[int], response_ids: list[int]) -> tuple[Tensor, Tensor]:
    """``(input_ids, labels)``: prompt + response, and the same with ``-100`` under the prompt.

    >>> ids, labels = reference_sft_labels([5, 6, 7], [8, 9])
    >>> ids.tolist(), labels.tolist()
    ([5, 6, 7, 8, 9], [-100, -100, -100, 8, 9])
    """
    example = build_sft_example(prompt_ids, response_ids)
    return example.input_ids, example.labels


def _labels_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def ids(p, r):
        return torch.tensor(p + r)

    return [
        (lambda p, r: (ids(p, r), torch.tensor(p + [IGNORE_INDEX] * len(r))),
         "you masked the response and kept the prompt; it is the other way round: -100 under "
         "the prompt, the response's ids under the response"),
        (lambda p, r: (ids(p, r), torch.tensor([IGNORE_INDEX] * (len(p) - 1) + p[-1:] + r)),
         "one prompt token too few is masked: every prompt token gets -100 (the shift by one "
         "happens in the loss, not here)"),
        (lambda p, r: (ids(p, r), torch.tensor([IGNORE_INDEX] * (len(p) + 1) + r[1:])),
         "one token too many is masked: the response's first token must keep its label (the "
         "shift by one happens in the loss, not here)"),
        (lambda p, r: (ids(p, r), torch.tensor([0] * len(p) + r)),
         "the prompt's labels must be -100, the value the loss skips; 0 is an ordinary token id"),
        (lambda p, r: (ids(p, r), torch.tensor(r)),
         "labels must be as long as input_ids, aligned token by token: -100 under each prompt "
         "token, then the response's ids"),
    ]


@exercise_check
def check_sft_example_labels(
    student: Callable[[list[int], list[int]], tuple[Tensor, Tensor]],
) -> None:
    """Lab 03-1: ``sft_labels(prompt_ids, response_ids)`` -> ``(input_ids, labels)``.

    Both 1-D int64 tensors of length ``len(prompt) + len(response)``: ``input_ids`` is the
    prompt followed by the response; ``labels`` is ``-100`` under every prompt token and
    the response's ids under the response.
    """
    check_callable("sft_labels", student)
    cases = [
        (([5, 6, 7], [8, 9]), {}),
        (([1], [2]), {}),
        (([10, 11, 12, 13, 14, 15], [3]), {}),  # a long prompt, a one-token answer
        (([4, 4], [4, 4, 4, 0]), {}),  # repeated ids, and id 0 in the response
        (([31, 7, 19], [2, 40, 40, 8, 1]), {}),
    ]

    def as_pair(prompt_ids: list[int], response_ids: list[int]) -> tuple[Tensor, Tensor]:
        got = student(list(prompt_ids), list(response_ids))
        if not isinstance(got, tuple) or len(got) != 2:
            raise AssertionError(
                f"sft_labels must return a pair (input_ids, labels), got {type(got).__name__}"
            )
        for name, t in zip(("input_ids", "labels"), got, strict=True):
            if not isinstance(t, Tensor):
                raise AssertionError(f"sft_labels: {name} must be a tensor, got {type(t).__name__}")
            if t.dtype != torch.long:
                raise AssertionError(f"sft_labels: {name} must be int64 (torch.long), got {t.dtype}")
        return got

    def as_lists(fn: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., tuple[list, list]]:
        def run(prompt_ids: list[int], response_ids: list[int]) -> tuple[list, list]:
            ids, labels = fn(prompt_ids, response_ids)
            return ids.tolist(), labels.tolist()

        return run

    compare_with_reference(
        "sft_labels", as_lists(as_pair), as_lists(reference_sft_labels), cases,
        hints=[(as_lists(wrong), message) for wrong, message in _labels_mistakes()],
    )


# --------------------------------------------------------------------------------- loss


def _picked(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Shifted log-probabilities of the labels and the mask of labelled positions."""
    logprobs = logits[:, :-1].double().log_softmax(-1)
    targets = labels[:, 1:]
    learned = targets != IGNORE_INDEX
    picked = logprobs.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
    return picked, learned


def _loss_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def no_shift(logits, labels):
        logprobs = logits.double().log_softmax(-1)
        learned = labels != IGNORE_INDEX
        picked = logprobs.gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
        return -(picked * learned).sum() / learned.sum().clamp_min(1)

    def over_all(logits, labels):
        picked, learned = _picked(logits, labels)
        return -(picked * learned).sum() / learned.numel()

    def per_sequence(logits, labels):
        picked, learned = _picked(logits, labels)
        rows = -(picked * learned).sum(1) / learned.sum(1).clamp_min(1)
        return rows.mean()

    def summed(logits, labels):
        picked, learned = _picked(logits, labels)
        return -(picked * learned).sum()

    def nan_when_empty(logits, labels):
        picked, learned = _picked(logits, labels)
        return -(picked * learned).sum() / learned.sum()

    return [
        (no_shift, "logits[:, t] predicts the token at t + 1: compare logits[:, :-1] with "
                   "labels[:, 1:]"),
        (over_all, "divide by the number of labelled positions, not by every position (the "
                   "masked ones are not zero-loss tokens, they are not counted at all)"),
        (per_sequence, "average over all labelled tokens of the batch at once, not per sequence "
                       "first (a longer answer weighs more)"),
        (summed, "the loss is the mean over labelled tokens, not their sum"),
        (nan_when_empty, "a batch without a labelled token must give 0, not 0/0 = NaN: divide by "
                         "max(count, 1)"),
    ]


@exercise_check
def check_masked_sft_loss(student: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Lab 03-1: ``masked_sft_loss(logits, labels)``, the SFT loss from its definition.

    ``logits`` (B, T, V), ``labels`` (B, T) with ``-100`` where nothing is learned. The
    mean of ``-log p(labels[:, t + 1])`` under ``logits[:, t]`` over the labelled
    positions of the whole batch; 0 when there is none. ``cross_entropy`` and
    ``nll_loss`` are not allowed.
    """
    check_callable("masked_sft_loss", student)
    g = torch.Generator().manual_seed(31)
    ignore = IGNORE_INDEX
    cases = [
        ((torch.zeros(1, 3, 4), torch.tensor([[ignore, ignore, 2]])), {}),  # uniform: ln 4
        ((torch.randn(1, 5, 7, generator=g) * 2, torch.tensor([[ignore, ignore, 3, 0, 6]])), {}),
        ((torch.randn(2, 6, 9, generator=g) * 2,
          torch.tensor([[ignore, ignore, ignore, ignore, 1, 2],  # a short answer ...
                        [ignore, 5, 6, 7, 8, ignore]])), {}),  # ... and a long one, padded
        ((torch.randn(3, 4, 5, generator=g) * 3,
          torch.tensor([[ignore, 1, 2, 3], [ignore, ignore, ignore, 4],
                        [ignore, ignore, 0, ignore]])), {}),
        ((torch.randn(2, 3, 6, generator=g), torch.full((2, 3), ignore)), {}),  # nothing labelled
    ]

    def as_float(logits: Tensor, labels: Tensor) -> Tensor:
        got = student(logits.clone(), labels.clone())
        if not isinstance(got, Tensor) or got.ndim != 0:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise AssertionError(f"masked_sft_loss must return a scalar tensor, got {shape}")
        return got.double()

    def reference(logits: Tensor, labels: Tensor) -> Tensor:
        return sft_loss(logits, labels).double()

    compare_with_reference(
        "masked_sft_loss", as_float, reference, cases, atol=1e-5, rtol=1e-5,
        hints=_loss_mistakes(),
        forbid={
            "cross_entropy": "pick the labels' log-probabilities with gather and average them",
            "nll_loss": "pick the labels' log-probabilities with gather and average them",
        },
    )


# --------------------------------------------------------------------- format


def reference_parse_answer(reply: str) -> str | None:
    """The answer of a reply that is exactly one line ``ANSWER: <answer>``, else ``None``.

    ``<answer>`` starts with a character that is not whitespace and holds no line break.

    >>> reference_parse_answer("ANSWER: Paris"), reference_parse_answer("The answer is Paris.")
    ('Paris', None)
    """
    match = re.fullmatch(r"ANSWER: (\S[^\n]*)", reply)
    return match.group(1) if match else None


def _format_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def starts(pattern: str, flags: int = 0) -> Callable[[str], str | None]:
        def parse(reply: str) -> str | None:
            match = re.match(pattern, reply, flags)
            return match.group(1) if match else None

        return parse

    def anywhere(reply: str) -> str | None:
        match = re.search(r"ANSWER: (\S[^\n]*)", reply)
        return match.group(1) if match else None

    def whole(reply: str) -> str | None:
        return reply if reference_parse_answer(reply) is not None else None

    def startswith(reply: str) -> str | None:
        return reply[len("ANSWER: "):] if reply.startswith("ANSWER: ") and "\n" not in reply else None

    return [
        (starts(r"ANSWER: (\S[^\n]*)"), "the whole reply must be the one line: 'ANSWER: Paris\\nMore "
                                          "text' does not comply (match the full string)"),
        (anywhere, "the reply must start with 'ANSWER: ': text before it does not comply"),
        (startswith, "the answer must not be empty or start with a space: 'ANSWER: ' alone does not "
                     "comply"),
        (lambda r: reference_parse_answer(r) or starts(r"answer: (\S[^\n]*)\Z", re.IGNORECASE)(r),
         "the format is exactly 'ANSWER: ' in capitals; 'answer: Paris' does not comply"),
        (starts(r"ANSWER: ?(\S[^\n]*)\Z"), "a space follows the colon: 'ANSWER:Paris' does not comply"),
        (whole, "return the answer after 'ANSWER: ' ('Paris'), not the whole reply"),
    ]


@exercise_check
def check_sft_answer_format(student: Callable[[str], str | None]) -> None:
    """Lab 03-1: ``parse_answer(reply)`` -> the answer, or ``None`` if out of format.

    A reply complies when it is exactly one line: ``ANSWER: `` (capitals, one space) and an
    answer that is not empty, starts with a non-space character and holds no line break.
    """
    check_callable("parse_answer", student)
    replies = [
        "ANSWER: Paris", "ANSWER: 12", "ANSWER: New York City", "The capital of France is Paris.",
        "ANSWER: Paris\nThe capital of France is Paris.", "The ANSWER: Paris", "ANSWER: ",
        "ANSWER:  Paris", "answer: Paris", "Answer: Paris", "ANSWER:Paris", "ANSWER: Paris.",
        "", "ANSWER: Paris\n",
    ]

    def checked(reply: str) -> str | None:
        got = student(reply)
        if got is not None and not isinstance(got, str):
            raise AssertionError(f"parse_answer must return a str or None, got {type(got).__name__}")
        return got

    compare_with_reference(
        "parse_answer", checked, reference_parse_answer, [((r,), {}) for r in replies],
        hints=_format_mistakes(),
    )
