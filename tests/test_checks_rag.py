"""The Lab 07-1 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
from rank_bm25 import BM25Okapi

from llmfoundations import checks


def good_mean_reciprocal_rank(rankings, relevant):
    total = 0.0
    for ranking, rel in zip(rankings, relevant, strict=True):
        for position, doc in enumerate(ranking, start=1):
            if doc in rel:
                total += 1 / position
                break
    return total / len(rankings)


def test_mrr_check_passes_a_correct_answer(capsys):
    checks.check_mean_reciprocal_rank(good_mean_reciprocal_rank)
    assert "✔ mean_reciprocal_rank: all 5 cases" in capsys.readouterr().out


def _first(ranking, rel):
    return next((i for i, d in enumerate(ranking, start=1) if d in rel), None)


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda R, S: _mean([([1 / i for i, d in enumerate(r, 1) if d in s] or [0.0])[-1] for r, s in zip(R, S, strict=True)]),
         "FIRST relevant"),
        (lambda R, S: _mean([1 / p for r, s in zip(R, S, strict=True) if (p := _first(r, s)) is not None]), "counts as 0"),
        (lambda R, S: sum(0.0 if (p := _first(r, s)) is None else 1 / p for r, s in zip(R, S, strict=True)), "do not sum"),
        (lambda R, S: 1 / _mean([p for r, s in zip(R, S, strict=True) if (p := _first(r, s)) is not None]), "before inverting"),
        (lambda R, S: "0.5", "must return a number"),
    ],
)
def test_mrr_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="mean_reciprocal_rank") as err:
        checks.check_mean_reciprocal_rank(wrong)
    assert hint in str(err.value)


def good_bm25_score(query, corpus, d, k1, b):
    n_docs = len(corpus)
    avgdl = sum(len(doc) for doc in corpus) / n_docs
    counts = Counter(corpus[d])
    score = 0.0
    for term in query:
        n = sum(term in doc for doc in corpus)
        idf = math.log((n_docs - n + 0.5) / (n + 0.5))
        tf = counts[term]
        score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(corpus[d]) / avgdl))
    return score


def test_bm25_check_passes_a_correct_answer(capsys):
    checks.check_bm25_score(good_bm25_score)
    assert "✔ bm25_score: all 7 cases" in capsys.readouterr().out


def test_bm25_check_passes_rank_bm25_itself(capsys):
    # the independent oracle: rank-bm25's BM25Okapi (its idf floor never applies in the cases)
    checks.check_bm25_score(lambda q, c, d, k1, b: float(BM25Okapi(c, k1=k1, b=b).get_scores(q)[d]))
    assert "✔ bm25_score" in capsys.readouterr().out


def _variant(*, idf=None, tf=None, ratio=None, numerator=True, repeat=True, length=len):
    def score(query, corpus, d, k1, b):
        n_docs = len(corpus)
        avgdl = sum(length(doc) for doc in corpus) / n_docs
        counts = Counter(corpus[d])
        total = 0.0
        for term in query if repeat else set(query):
            n = sum(term in doc for doc in corpus)
            w = (idf or (lambda N, n: math.log((N - n + 0.5) / (n + 0.5))))(n_docs, n) if n else 0.0
            f = tf(counts[term]) if tf else counts[term]
            r = ratio(length(corpus[d]), avgdl) if ratio else length(corpus[d]) / avgdl
            total += w * f * ((k1 + 1) if numerator else 1) / (f + k1 * (1 - b + b * r))
        return total

    return score


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_variant(idf=lambda N, n: math.log(N / n)), "0.5 smoothing"),
        (_variant(numerator=False), "(k1 + 1)"),
        (_variant(ratio=lambda dl, avg: avg / dl), "|d| / avgdl"),
        (_variant(length=lambda doc: len(set(doc))), "distinct words"),
        (_variant(tf=lambda f: min(f, 1)), "how many times"),
        (_variant(repeat=False), "added twice"),
        (lambda q, c, d, k1, b: None, "must return a number"),
    ],
)
def test_bm25_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="bm25_score") as err:
        checks.check_bm25_score(wrong)
    assert hint in str(err.value)


def test_the_checks_leave_the_students_inputs_alone():
    seen = []

    def mutating(rankings, relevant):
        seen.append(rankings[0][:])
        rankings[0].reverse()  # a copy: the reference must still see the original
        return good_mean_reciprocal_rank([r[::-1] if i == 0 else r for i, r in enumerate(rankings)], relevant)

    checks.check_mean_reciprocal_rank(mutating)
    assert seen
