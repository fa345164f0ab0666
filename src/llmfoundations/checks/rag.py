"""Checks for Lab 07-1 (retrieval-augmented question answering): MRR and one BM25 score.

Each check runs the student's function next to the course's reference
(``llmfoundations.applications.retrieval``) on fixed inputs and either prints one line of
success or raises ``AssertionError`` naming the failing case, with a hint where the wrong
result is a known mistake:

- ``mean_reciprocal_rank``: the reciprocal rank of the *last*
  relevant document instead of the first, queries whose relevant documents were never
  retrieved left out of the mean (they count 0), a sum instead of a mean, the reciprocal
  of the mean rank;
- ``bm25_score``: the idf without the 0.5 smoothing (``ln(N / n)``), ``(k1 + 1)`` left
  out of the numerator, the length ratio upside down (``avgdl / |d|``), lengths counted in
  distinct words, each word counted once (``tf`` in {0, 1}), each query word counted once.

The BM25 cases keep every query word in at most half of the documents, so no idf is
negative and ``rank-bm25``'s floor never applies: the plain formula is the reference.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from llmfoundations.applications.retrieval import BM25Index, mrr

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_mean_reciprocal_rank", "check_bm25_score"]


def _as_float(name: str, student: Callable[..., Any]) -> Callable[..., Tensor]:
    """Call the student's function on copies of the inputs; return its number as a 0-d
    float64 tensor, so that it is compared with a tolerance."""

    def run(*args: Any) -> Tensor:
        got = student(*copy.deepcopy(args))
        if isinstance(got, Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise AssertionError(f"{name} must return a number (a float), got {type(got).__name__}")
        return torch.tensor(float(got), dtype=torch.float64)

    return run


# ------------------------------------------------------------------------------- MRR


def _mrr_cases() -> list[tuple[tuple, dict]]:
    """(rankings, relevant): rankings are lists of document numbers, best first."""
    return [
        (([[2, 0, 1]], [[2]]), {}),  # first place: 1
        (([[4, 3, 1, 0]], [[1]]), {}),  # third place: 1/3
        (([[0, 1, 2], [3, 1, 0], [2, 0, 1]], [[0], [0], [1]]), {}),  # (1 + 1/3 + 1/3) / 3
        (([[5, 2, 7], [1, 0, 3]], [[9], [0]]), {}),  # the first query's document is missing: 0
        (([[6, 1, 4, 2], [0, 5, 3]], [[4, 2, 1], [3, 5]]), {}),  # several relevant: the first counts
    ]  # fmt: skip


def reference_mean_reciprocal_rank(rankings: list[list[int]], relevant: list[list[int]]) -> Tensor:
    """``retrieval.mrr`` as a 0-d float64 tensor."""
    return torch.tensor(mrr(rankings, relevant), dtype=torch.float64)


def _first_rank(ranking: list[int], rel: list[int]) -> int | None:
    for position, doc in enumerate(ranking, start=1):
        if doc in rel:
            return position
    return None


def _mrr_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def last(rankings, relevant):
        vals = []
        for r, s in zip(rankings, relevant, strict=True):
            places = [i for i, d in enumerate(r, start=1) if d in s]
            vals.append(1 / places[-1] if places else 0.0)
        return torch.tensor(sum(vals) / len(vals), dtype=torch.float64)

    def skip_missing(rankings, relevant):
        vals = [1 / p for r, s in zip(rankings, relevant, strict=True) if (p := _first_rank(r, s)) is not None]
        return torch.tensor(sum(vals) / len(vals) if vals else 0.0, dtype=torch.float64)

    def summed(rankings, relevant):
        vals = [0.0 if (p := _first_rank(r, s)) is None else 1 / p for r, s in zip(rankings, relevant, strict=True)]
        return torch.tensor(sum(vals), dtype=torch.float64)

    def inverse_mean_rank(rankings, relevant):
        ranks = [p for r, s in zip(rankings, relevant, strict=True) if (p := _first_rank(r, s)) is not None]
        return torch.tensor(len(ranks) / sum(ranks) if ranks else 0.0, dtype=torch.float64)

    return [
        (last, "use the FIRST relevant document in the ranking (the best-placed one), not the last"),
        (skip_missing, "a query whose relevant document is not in the ranking counts as 0 in the mean; "
                       "do not leave it out"),
        (summed, "average over the queries; do not sum"),
        (inverse_mean_rank, "average the reciprocal ranks (1/r), not the ranks before inverting"),
    ]  # fmt: skip


@exercise_check
def check_mean_reciprocal_rank(student: Callable[..., float]) -> None:
    """Lab 07-1: ``mean_reciprocal_rank(rankings, relevant)`` -> the mean over queries of
    ``1 / rank`` of the first relevant document (ranks from 1; 0 if none is retrieved)."""
    check_callable("mean_reciprocal_rank", student)
    compare_with_reference(
        "mean_reciprocal_rank", _as_float("mean_reciprocal_rank", student), reference_mean_reciprocal_rank,
        _mrr_cases(), atol=1e-9, rtol=1e-7, hints=_mrr_mistakes(),
    )  # fmt: skip


# ------------------------------------------------------------------------------ BM25


_CORPUS = [
    "the comet ilvora was found in 1968 by the skellan observatory",
    "the observatory stands on mount sarvik",
    "the ferry crosses the gulf twice a day",
    "a bell named old orla hangs in the cathedral the bell weighs eleven tonnes",
    "the cathedral has a bell",
    "jam from the berry of mount sarvik",
]


def _bm25_cases() -> list[tuple[tuple, dict]]:
    """(query_tokens, corpus_tokens, d, k1, b): every query word in at most half the documents."""
    corpus = [text.split() for text in _CORPUS]
    return [
        ((["comet"], corpus, 0, 1.5, 0.75), {}),  # one rare word, tf 1
        ((["bell", "cathedral"], corpus, 3, 1.5, 0.75), {}),  # tf 2 in a long document
        ((["bell", "cathedral"], corpus, 4, 1.5, 0.75), {}),  # the same words in a short one
        ((["mount", "sarvik", "observatory"], corpus, 1, 1.2, 0.5), {}),  # other k1 and b
        ((["bell", "bell", "ferry"], corpus, 3, 2.0, 1.0), {}),  # a repeated query word counts twice
        ((["unicorn", "gulf"], corpus, 2, 1.5, 0.0), {}),  # a word absent from the corpus; b = 0
        ((["comet"], corpus, 2, 1.5, 0.75), {}),  # the word is not in this document: 0
    ]  # fmt: skip


def reference_bm25_score(query, corpus, d, k1, b) -> Tensor:
    """``BM25Index(corpus, k1=k1, b=b).scores(query)[d]`` (no idf is negative in the cases)."""
    return BM25Index(corpus, k1=k1, b=b).scores(query)[d]


def _bm25(query, corpus, d, k1, b, *, idf=None, tf=None, length=None, numerator=True, repeat=True,
          flip=False):
    """BM25 of document ``d`` with one ingredient swapped for a known mistake."""
    n_docs = len(corpus)
    lengths = [len(doc) if length is None else length(doc) for doc in corpus]
    avgdl = sum(lengths) / n_docs
    counts = Counter(corpus[d])
    total = 0.0
    for term in query if repeat else dict.fromkeys(query):
        n = sum(term in doc for doc in corpus)
        if n == 0:
            continue
        w = math.log((n_docs - n + 0.5) / (n + 0.5)) if idf is None else idf(n_docs, n)
        f = counts[term] if tf is None else tf(counts[term])
        norm = 1 - b + b * (avgdl / lengths[d] if flip else lengths[d] / avgdl)
        total += w * f * ((k1 + 1) if numerator else 1) / (f + k1 * norm)
    return torch.tensor(total, dtype=torch.float64)


def _bm25_mistakes() -> list[tuple[Callable[..., Any], str]]:
    return [
        (lambda *a: _bm25(*a, idf=lambda N, n: math.log(N / n)),
         "the idf is ln((N - n + 0.5) / (n + 0.5)), with the 0.5 smoothing, not ln(N / n)"),
        (lambda *a: _bm25(*a, numerator=False),
         "the numerator is tf * (k1 + 1); without (k1 + 1) every score is too small"),
        (lambda *a: _bm25(*a, flip=True), "the length ratio is |d| / avgdl: long documents are penalised, not favoured"),
        (lambda *a: _bm25(*a, length=lambda doc: len(set(doc))),
         "|d| and avgdl count every word (len(doc)), repeats included, not distinct words"),
        (lambda *a: _bm25(*a, tf=lambda f: min(f, 1)),
         "tf is how many times the word occurs in the document, not whether it occurs"),
        (lambda *a: _bm25(*a, repeat=False),
         "a word that appears twice in the query is added twice (as rank-bm25 does)"),
    ]  # fmt: skip


@exercise_check
def check_bm25_score(student: Callable[..., float]) -> None:
    """Lab 07-1: ``bm25_score(query_tokens, corpus_tokens, d, k1, b)`` -> the BM25 Okapi
    score of document ``d`` of the corpus for the query (a float)."""
    check_callable("bm25_score", student)
    compare_with_reference(
        "bm25_score", _as_float("bm25_score", student), reference_bm25_score, _bm25_cases(),
        atol=1e-9, rtol=1e-7, hints=_bm25_mistakes(),
    )  # fmt: skip

