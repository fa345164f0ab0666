"""Rubrics: "good" for one use case, split into weighted criteria that code or a judge checks.

One number per answer hides *why* it failed. A rubric names what matters for the task
(the right result, the requested format, brevity, tone...), gives each criterion a
weight, and checks each one on its own: with code where a rule decides (a regular
expression, a word limit, the reference answer appears in the output) and with an LLM
judge where none does ("is it polite?"). The total is the weighted mean

    total = sum_i w_i * s_i / sum_i w_i,     each s_i in [0, 1],

and the per-criterion scores say what to fix. Checklist rubrics of this kind are how
fine-grained LLM judges are prompted and trained (Prometheus: Kim et al., 2023,
https://arxiv.org/abs/2310.08491).

This module holds :class:`Criterion` (a name, a weight and a check), :class:`Rubric` (a
tuple of criteria; :meth:`Rubric.score` checks a batch of outputs), :class:`RubricScore`
(the total and each criterion's score for one output), :func:`criterion_means` (the
average per criterion over many outputs), ready-made code checks
(:func:`contains_reference`, :func:`matches_regex`, :func:`max_words`) and
:func:`judge_check`, which asks the ``judge`` module's yes/no question
(``P(Yes) / (P(Yes) + P(No))``).

A check is a function ``check(outputs, examples) -> scores``: a list of output texts, the
matching examples (mappings such as ``{"question": ..., "reference": ...}``) and one
score in ``[0, 1]`` (or a bool) per output. Checks work on batches so that a judge can
run all its prompts in a few forward passes.

Left out: criteria that depend on each other (gates such as "if it is wrong, nothing else
counts"), negative weights for penalties, per-criterion calibration of judge checks
(see ``agreement.fit_temperature``), and judging multimodal outputs (one criterion per
modality would follow the same pattern).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from llmfoundations._validate import check_choice, check_int, check_positive
from llmfoundations.evaluation.judge import judge_yes_no
from llmfoundations.models import DecoderLM
from llmfoundations.tokenizer import TokenizerLike

__all__ = [
    "Check",
    "CheckKind",
    "Criterion",
    "Rubric",
    "RubricScore",
    "criterion_means",
    "contains_reference",
    "matches_regex",
    "max_words",
    "judge_check",
]

Example = Mapping[str, str]
Check = Callable[[Sequence[str], Sequence[Example]], Sequence[float | bool]]
CheckKind = Literal["code", "judge"]


@dataclass(frozen=True)
class Criterion:
    """One thing a good answer must do.

    Attributes:
        name: short and unique within its rubric ("correct", "format", "concise").
        weight: its share of the total, ``> 0`` (weights need not sum to 1).
        check: ``check(outputs, examples) -> scores in [0, 1]``, one per output.
        kind: ``"code"`` or ``"judge"``: who decides (for the report only).
        description: what it means, in a sentence.
    """

    name: str
    weight: float
    check: Check
    kind: CheckKind = "code"
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name must be a non-empty str, got {self.name!r}")
        check_positive("weight", self.weight)
        if not math.isfinite(self.weight):
            raise ValueError(f"weight must be finite, got {self.weight}")
        if not callable(self.check):
            raise TypeError(f"check must be callable, got {type(self.check).__name__}")
        check_choice("kind", self.kind, get_args(CheckKind))
        if not isinstance(self.description, str):
            raise TypeError(f"description must be a str, got {type(self.description).__name__}")


@dataclass(frozen=True)
class RubricScore:
    """One output's scores.

    Attributes:
        total: the weighted mean of the criterion scores, in ``[0, 1]``.
        names: the criteria, in the rubric's order.
        scores: each criterion's score, in ``[0, 1]``.
        weights: each criterion's weight.
    """

    total: float
    names: tuple[str, ...]
    scores: tuple[float, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.scores) == len(self.weights) > 0:
            raise ValueError("names, scores and weights must be non-empty and of equal length")
        if not 0 <= self.total <= 1:
            raise ValueError(f"total must be in [0, 1], got {self.total}")

    def __getitem__(self, name: str) -> float:
        """The score of the criterion called ``name``."""
        if name not in self.names:
            raise KeyError(f"no criterion {name!r}; the rubric has {list(self.names)}")
        return self.scores[self.names.index(name)]

    def __str__(self) -> str:
        parts = ", ".join(f"{n} {s:.2f}" for n, s in zip(self.names, self.scores, strict=True))
        return f"total {self.total:.2f} ({parts})"


@dataclass(frozen=True)
class Rubric:
    """Weighted criteria; :meth:`score` checks outputs against them.

    >>> rubric = Rubric((
    ...     Criterion("correct", 3.0, contains_reference()),
    ...     Criterion("concise", 1.0, max_words(5)),
    ... ))
    >>> s = rubric.score(["The answer is 42, I think, probably."], [{"reference": "42"}])[0]
    >>> str(s)
    'total 0.75 (correct 1.00, concise 0.00)'
    """

    criteria: tuple[Criterion, ...]

    def __post_init__(self) -> None:
        if isinstance(self.criteria, Criterion) or not isinstance(self.criteria, Sequence):
            raise TypeError(
                f"criteria must be a tuple of Criterion, got {type(self.criteria).__name__}"
            )
        object.__setattr__(self, "criteria", tuple(self.criteria))  # a list is accepted
        if not self.criteria:
            raise ValueError("criteria must not be empty")
        for i, c in enumerate(self.criteria):
            if not isinstance(c, Criterion):
                raise TypeError(f"criteria[{i}] must be a Criterion, got {type(c).__name__}")
        names = [c.name for c in self.criteria]
        if len(set(names)) != len(names):
            raise ValueError(f"criterion names must be unique, got {names}")

    def score(self, outputs: Sequence[str], examples: Sequence[Example]) -> tuple[RubricScore, ...]:
        """Check ``outputs[i]`` (for ``examples[i]``) against every criterion."""
        outputs, examples = _check_batch(outputs, examples)
        per_criterion = [_run_check(c, outputs, examples) for c in self.criteria]
        weights = tuple(float(c.weight) for c in self.criteria)
        names = tuple(c.name for c in self.criteria)
        results = []
        for i in range(len(outputs)):
            scores = tuple(s[i] for s in per_criterion)
            total = sum(w * s for w, s in zip(weights, scores, strict=True)) / sum(weights)
            results.append(RubricScore(min(total, 1.0), names, scores, weights))
        return tuple(results)


def criterion_means(scores: Sequence[RubricScore]) -> dict[str, float]:
    """The mean of each criterion, and of the total (key ``"total"``), over many outputs.

    >>> a = RubricScore(0.5, ("x", "y"), (1.0, 0.0), (1.0, 1.0))
    >>> b = RubricScore(1.0, ("x", "y"), (1.0, 1.0), (1.0, 1.0))
    >>> criterion_means([a, b])
    {'x': 1.0, 'y': 0.5, 'total': 0.75}
    """
    if isinstance(scores, RubricScore) or not isinstance(scores, Sequence) or not scores:
        raise ValueError("scores must be a non-empty list of RubricScore")
    for i, s in enumerate(scores):
        if not isinstance(s, RubricScore):
            raise TypeError(f"scores[{i}] must be a RubricScore, got {type(s).__name__}")
        if s.names != scores[0].names:
            raise ValueError(
                f"scores[{i}] comes from another rubric: {s.names} vs {scores[0].names}"
            )
    n = len(scores)
    means = {name: sum(s.scores[k] for s in scores) / n for k, name in enumerate(scores[0].names)}
    means["total"] = sum(s.total for s in scores) / n
    return means


# --------------------------------------------------------------------------- ready-made checks


def contains_reference(field: str = "reference", *, case_sensitive: bool = False) -> Check:
    """1.0 when ``example[field]`` occurs in the output (a short exact answer, a keyword).

    >>> contains_reference()(["It is Paris."], [{"reference": "paris"}])
    [1.0]
    """
    if not isinstance(field, str):
        raise TypeError(f"field must be a str, got {type(field).__name__}")
    if not isinstance(case_sensitive, bool):
        raise TypeError(f"case_sensitive must be a bool, got {type(case_sensitive).__name__}")

    def check(outputs: Sequence[str], examples: Sequence[Example]) -> list[float]:
        scores = []
        for i, (out, ex) in enumerate(zip(outputs, examples, strict=True)):
            if field not in ex:
                raise ValueError(f"examples[{i}] has no field {field!r}; it has {sorted(ex)}")
            want = ex[field] if case_sensitive else ex[field].lower()
            got = out if case_sensitive else out.lower()
            scores.append(float(want in got))
        return scores

    return check


def matches_regex(pattern: str) -> Check:
    """1.0 when the output contains a match of ``pattern`` (``re.search``).

    >>> matches_regex(r"^\\d+$")(["42", "forty-two"], [{}, {}])
    [1.0, 0.0]
    """
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"pattern is not a valid regular expression: {err}") from None

    def check(outputs: Sequence[str], examples: Sequence[Example]) -> list[float]:
        return [float(compiled.search(out) is not None) for out in outputs]

    return check


def max_words(limit: int) -> Check:
    """1.0 when the output has at most ``limit`` whitespace-separated words.

    >>> max_words(3)(["one two three", "one two three four"], [{}, {}])
    [1.0, 0.0]
    """
    check_int("limit", limit, minimum=1)

    def check(outputs: Sequence[str], examples: Sequence[Example]) -> list[float]:
        return [float(len(out.split()) <= limit) for out in outputs]

    return check


def judge_check(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    requirement: str,
    *,
    question_field: str = "question",
    batch_size: int = 8,
) -> Check:
    """A check that asks the judge whether each output meets ``requirement``; the score is
    ``P(Yes) / (P(Yes) + P(No))`` (``judge.judge_yes_no``), with ``example[question_field]``
    as the question."""
    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be a DecoderLM, got {type(model).__name__}")
    if not isinstance(requirement, str) or not requirement.strip():
        raise ValueError(f"requirement must be a non-empty str, got {requirement!r}")
    check_int("batch_size", batch_size, minimum=1)

    def check(outputs: Sequence[str], examples: Sequence[Example]) -> list[float]:
        questions = []
        for i, ex in enumerate(examples):
            if question_field not in ex:
                raise ValueError(
                    f"examples[{i}] has no field {question_field!r}; it has {sorted(ex)}"
                )
            questions.append(ex[question_field])
        judged = judge_yes_no(
            model, tokenizer, questions, list(outputs), requirement, batch_size=batch_size
        )
        return judged.p_yes.tolist()

    return check


# ----------------------------------------------------------------- checks of the inputs


def _check_batch(outputs: object, examples: object) -> tuple[list[str], list[Example]]:
    if isinstance(outputs, str) or not isinstance(outputs, Sequence):
        raise TypeError(f"outputs must be a list of str, got {type(outputs).__name__}")
    if isinstance(examples, Mapping) or not isinstance(examples, Sequence):
        raise TypeError(f"examples must be a list of mappings, got {type(examples).__name__}")
    if len(outputs) == 0:
        raise ValueError("outputs must not be empty")
    if len(outputs) != len(examples):
        raise ValueError(
            f"outputs and examples must have the same length, got {len(outputs)} and {len(examples)}"
        )
    for i, (out, ex) in enumerate(zip(outputs, examples, strict=True)):
        if not isinstance(out, str):
            raise TypeError(f"outputs[{i}] must be a str, got {type(out).__name__}")
        if not isinstance(ex, Mapping):
            raise TypeError(f"examples[{i}] must be a mapping, got {type(ex).__name__}")
    return list(outputs), list(examples)


def _run_check(criterion: Criterion, outputs: list[str], examples: list[Example]) -> list[float]:
    """Run one criterion's check and make sure it returned a score in [0, 1] per output."""
    scores = criterion.check(outputs, examples)
    if isinstance(scores, str) or not isinstance(scores, Sequence) or len(scores) != len(outputs):
        raise ValueError(
            f"criterion {criterion.name!r}: check must return one score per output "
            f"({len(outputs)}), got {scores!r:.80}"
        )
    out = []
    for i, s in enumerate(scores):
        if not isinstance(s, (bool, int, float)) or not 0 <= s <= 1:
            raise ValueError(
                f"criterion {criterion.name!r}: score {i} must be a number in [0, 1], got {s!r}"
            )
        out.append(float(s))
    return out
