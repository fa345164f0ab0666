"""Checks for the chapter-5 lab on reference metrics (05-1, BLEU and ROUGE).

Each check runs the student's function next to a reference on fixed token lists and
either prints one line of success or raises ``AssertionError`` naming the failing case.
The cases are chosen so that the usual mistakes fail:

- ``clipped_precision``: no clipping at all, clipping by the *sum* of the references'
  counts instead of the largest, clipping by the first reference only, counting distinct
  n-grams instead of occurrences, counting n-grams of every order up to ``n``, a
  hypothesis shorter than ``n`` (must give ``(0, 0)``);
- ``bleu_brevity_penalty``: ``exp(1 - c / r)`` (the ratio upside down), penalising long
  hypotheses too, ``r / c`` without the exponential, a division by zero for ``c == 0``;
- ``rouge_l_prf``: the longest common *substring* (contiguous) instead of subsequence,
  precision and recall swapped (same F, so F alone would not catch it), F as the
  arithmetic mean, a division by zero on an empty list.

The references are the course's ``llmfoundations.evaluation`` functions
(``ngram_counts``, ``brevity_penalty``, ``lcs_length``), themselves tested against
sacreBLEU and rouge-score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from llmfoundations.evaluation.bleu import brevity_penalty, ngram_counts
from llmfoundations.evaluation.rouge import lcs_length

from .core import check_callable, compare_with_reference, exercise_check

__all__ = [
    "check_bleu_clipped_precision",
    "check_bleu_brevity_penalty",
    "check_rouge_l_prf",
]


def _pair_of_ints(name: str, student: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``student`` so a result that is not ``(int, int)`` fails with a clear message."""

    def wrapped(*args: Any) -> Any:
        got = student(*args)
        if (
            not isinstance(got, tuple)
            or len(got) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in got)
        ):
            raise AssertionError(
                f"{name} must return a tuple (matches, total) of two ints, got {got!r}"
            )
        return got

    return wrapped


def _close(name: str, where: str, got: Any, expected: Sequence[float] | float) -> None:
    """Raise unless ``got`` equals ``expected`` (a float or a tuple of floats) to 1e-9."""
    want = expected if isinstance(expected, tuple) else (expected,)
    have = got if isinstance(expected, tuple) else (got,)
    ok = (
        isinstance(have, tuple)
        and len(have) == len(want)
        and all(
            isinstance(h, (int, float)) and not isinstance(h, bool) and math.isclose(h, w, rel_tol=1e-9, abs_tol=1e-12)
            for h, w in zip(have, want, strict=True)
        )
    )
    if not ok:
        raise AssertionError(f"{name}, {where}: expected {expected!r}, got {got!r}")


def _first_hint(got: Any, args: tuple, hints: Sequence[tuple[Callable[..., Any], str]]) -> str:
    for wrong, message in hints:
        try:
            value = wrong(*args)
        except Exception:  # noqa: BLE001 - a hint that cannot run on this case does not apply
            continue
        if isinstance(value, tuple) and isinstance(got, tuple) and len(value) == len(got):
            if all(isinstance(g, (int, float)) and math.isclose(g, v, rel_tol=1e-9, abs_tol=1e-12)
                   for g, v in zip(got, value, strict=True)):
                return f"\nHint: {message}"
        elif isinstance(value, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
            if math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-12):
                return f"\nHint: {message}"
    return ""


# -------------------------------------------------------------------- clipped precision


def _reference_clipped_precision(
    hypothesis: Sequence[str], references: Sequence[Sequence[str]], n: int
) -> tuple[int, int]:
    hyp = {g: c for g, c in ngram_counts(hypothesis, n).items() if len(g) == n}
    best: dict[tuple[str, ...], int] = {}
    for ref in references:
        for g, c in ngram_counts(ref, n).items():
            if len(g) == n:
                best[g] = max(best.get(g, 0), c)
    return sum(min(c, best.get(g, 0)) for g, c in hyp.items()), sum(hyp.values())


def _grams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _no_clipping(hyp, refs, n):
    present = {g for ref in refs for g in _grams(ref, n)}
    grams = _grams(hyp, n)
    return sum(g in present for g in grams), len(grams)


def _clip_by_sum(hyp, refs, n):
    grams = _grams(hyp, n)
    return sum(min(grams.count(g), sum(_grams(r, n).count(g) for r in refs)) for g in set(grams)), len(grams)


def _clip_by_first(hyp, refs, n):
    grams, first = _grams(hyp, n), _grams(refs[0], n)
    return sum(min(grams.count(g), first.count(g)) for g in set(grams)), len(grams)


def _distinct(hyp, refs, n):
    grams = set(_grams(hyp, n))
    present = {g for ref in refs for g in _grams(ref, n)}
    return len(grams & present), len(grams)


def _all_orders(hyp, refs, n):
    pairs = [_reference_clipped_precision(hyp, refs, k) for k in range(1, n + 1)]
    return sum(m for m, _ in pairs), sum(t for _, t in pairs)


@exercise_check
def check_bleu_clipped_precision(
    student: Callable[[Sequence[str], Sequence[Sequence[str]], int], tuple[int, int]],
) -> None:
    """Lab 05-1: ``clipped_precision(hypothesis, references, n)`` -> ``(matches, total)``.

    ``matches``: the hypothesis's n-grams of order ``n``, each counted at most as often as
    it occurs in the reference that has it most often; ``total``: its n-grams of order ``n``.
    """
    check_callable("clipped_precision", student)
    s = str.split
    cases = [
        ((s("the the the the the the the"), [s("the cat is on the mat")], 1), {}),
        ((s("the cat sat ."), [s("the cat sat on the mat .")], 2), {}),
        # clipping by the max over references, not the sum or the first: "the" 2x in ref 2
        ((s("the the the cat"), [s("a cat on the mat"), s("the cat and the dog")], 1), {}),
        ((s("the cat the cat the cat"), [s("the cat is the cat"), s("a cat")], 2), {}),
        ((s("a b a b a b"), [s("a b"), s("b a b a")], 2), {}),
        ((s("police kill the gunman"), [s("police killed the gunman")], 3), {}),
        ((s("a b"), [s("a b c d")], 3), {}),  # shorter than n: (0, 0)
        ((s("x y z"), [s("a b c")], 1), {}),  # nothing matches
    ]
    compare_with_reference(
        "clipped_precision",
        _pair_of_ints("clipped_precision", student),
        _reference_clipped_precision,
        cases,
        hints=[
            (_no_clipping, "count each n-gram at most as often as it occurs in a reference (clip)"),
            (_clip_by_sum, "clip by the largest count in any ONE reference, not the sum over references"),
            (_clip_by_first, "clip by the largest count over ALL references, not only the first"),
            (_distinct, "count every occurrence of an n-gram, not each distinct n-gram once"),
            (_all_orders, "count only the n-grams of order n, not those of every order up to n"),
        ],
    )


# ---------------------------------------------------------------------- brevity penalty


@exercise_check
def check_bleu_brevity_penalty(student: Callable[[int, int], float]) -> None:
    """Lab 05-1: ``bleu_brevity_penalty(c, r)``: 1 if ``c >= r``, ``exp(1 - r / c)`` if
    ``0 < c < r``, 0 if ``c == 0 < r``."""
    check_callable("bleu_brevity_penalty", student)
    cases = [(4, 7), (7, 7), (9, 7), (1, 10), (12, 8), (99, 100), (0, 5), (0, 0), (30, 1)]
    hints = [
        (lambda c, r: 1.0 if c >= r else math.exp(1 - c / r), "the exponent is 1 - r / c (reference over hypothesis)"),
        (lambda c, r: math.exp(1 - r / c) if c else 0.0, "a hypothesis at least as long as the reference gets BP = 1"),
        (lambda c, r: 1.0 if c >= r else c / r, "BP = exp(1 - r / c), not the length ratio"),
    ]
    for i, (c, r) in enumerate(cases, start=1):
        where = f"case {i} of {len(cases)} (c = {c}, r = {r})"
        try:
            got = student(c, r)
        except ZeroDivisionError:
            raise AssertionError(
                f"bleu_brevity_penalty, {where}: division by zero; an empty hypothesis (c = 0) gets 0"
            ) from None
        expected = brevity_penalty(c, r)
        try:
            _close("bleu_brevity_penalty", where, got, expected)
        except AssertionError as err:
            raise AssertionError(f"{err}{_first_hint(got, (c, r), hints)}") from None
    print(f"✔ bleu_brevity_penalty: all {len(cases)} cases match the reference")


# ------------------------------------------------------------------- ROUGE-L


def _reference_rouge_l_prf(
    prediction: Sequence[str], reference: Sequence[str]
) -> tuple[float, float, float]:
    if not prediction or not reference:
        return 0.0, 0.0, 0.0
    lcs = lcs_length(list(prediction), list(reference))
    p, r = lcs / len(prediction), lcs / len(reference)
    return p, r, (2 * p * r / (p + r) if lcs else 0.0)


def _longest_substring(prediction, reference):
    best = 0
    for i in range(len(prediction)):
        for j in range(len(reference)):
            k = 0
            while i + k < len(prediction) and j + k < len(reference) and prediction[i + k] == reference[j + k]:
                k += 1
            best = max(best, k)
    p, r = best / len(prediction), best / len(reference)
    return p, r, (2 * p * r / (p + r) if best else 0.0)


def _swapped(prediction, reference):
    p, r, f = _reference_rouge_l_prf(prediction, reference)
    return r, p, f


def _arithmetic_mean(prediction, reference):
    p, r, _ = _reference_rouge_l_prf(prediction, reference)
    return p, r, (p + r) / 2


@exercise_check
def check_rouge_l_prf(student: Callable[[Sequence[str], Sequence[str]], tuple[float, float, float]]) -> None:
    """Lab 05-1: ``rouge_l_prf(prediction, reference)`` -> ``(precision, recall, fmeasure)``
    of ROUGE-L on two token lists (LCS over the lengths; all 0 if a list is empty)."""
    check_callable("rouge_l_prf", student)
    s = str.split
    cases = [
        (s("police kill the gunman"), s("police killed the gunman")),
        (s("the gunman kill police"), s("police killed the gunman")),
        (s("the cat"), s("the cat sat on the mat")),  # P != R: catches swapping them
        (s("a x b y c z d"), s("a b c d")),  # LCS 4, longest substring 1
        (s("the cat was found under the bed"), s("the cat was under the bed")),
        (s("w1 w2 w6 w7 w8"), s("w1 w2 w3 w4 w5")),
        (s("x y"), s("a b c")),  # no match
        ([], s("a b")),  # empty prediction
        (s("a b"), []),  # empty reference
    ]
    hints = [
        (_longest_substring, "ROUGE-L uses the longest common SUBSEQUENCE (gaps allowed), not substring"),
        (_swapped, "precision divides by the prediction's length, recall by the reference's"),
        (_arithmetic_mean, "F is the harmonic mean 2PR / (P + R), not (P + R) / 2"),
    ]
    for i, (pred, ref) in enumerate(cases, start=1):
        where = f"case {i} of {len(cases)} (prediction {pred}, reference {ref})"
        try:
            got = student(list(pred), list(ref))
        except ZeroDivisionError:
            raise AssertionError(
                f"rouge_l_prf, {where}: division by zero; return (0.0, 0.0, 0.0) when a list is "
                "empty or nothing matches"
            ) from None
        if not isinstance(got, tuple) or len(got) != 3:
            raise AssertionError(f"rouge_l_prf, {where}: return a tuple (precision, recall, fmeasure), got {got!r}")
        expected = _reference_rouge_l_prf(pred, ref)
        try:
            _close("rouge_l_prf", where, got, expected)
        except AssertionError as err:
            raise AssertionError(f"{err}{_first_hint(got, (pred, ref), hints)}") from None
    print(f"✔ rouge_l_prf: all {len(cases)} cases match the reference")
