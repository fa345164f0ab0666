"""Tests of applications/retrieval.py: BM25 against rank-bm25, cosine top-k against faiss,
fusion, recall@k and MRR against hand-computed cases, embeddings from a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.applications.retrieval import (
    BM25Index,
    Hits,
    cosine_top_k,
    embed_texts,
    mean_pool,
    min_max_fusion,
    mrr,
    rank,
    recall_at_k,
    reciprocal_rank_fusion,
)
from llmfoundations.models import DecoderLM, ModelConfig

# ----------------------------------------------------------------------------- BM25

WORDS = st.sampled_from(list("abcdefgh"))  # a small vocabulary: many shared terms
DOC = st.lists(WORDS, min_size=0, max_size=12)
CORPUS = st.lists(DOC, min_size=1, max_size=12).filter(lambda c: any(c))
QUERY = st.lists(st.sampled_from(list("abcdefghxyz")), min_size=0, max_size=6)  # x, y, z: absent


@settings(max_examples=150, deadline=None)
@given(corpus=CORPUS, query=QUERY)
def test_bm25_equals_rank_bm25_get_scores(corpus, query):
    rank_bm25 = pytest.importorskip("rank_bm25")
    ours = BM25Index(corpus).scores(query)
    theirs = rank_bm25.BM25Okapi(corpus).get_scores(query)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("params", [dict(k1=1.2, b=0.5, epsilon=0.1), dict(k1=0.5, b=0.0, epsilon=0.0)])
def test_bm25_other_parameters_equal_rank_bm25(params):
    rank_bm25 = pytest.importorskip("rank_bm25")
    corpus = [["a", "b", "a"], ["a", "c"], ["a", "b", "d", "e"], [], ["b"]]
    for query in (["a"], ["b", "b", "q"], ["a", "e", "c"]):
        ours = BM25Index(corpus, **params).scores(query)
        theirs = rank_bm25.BM25Okapi(corpus, **params).get_scores(query)
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=1e-12)


def test_bm25_hand_computed_and_negative_idf_floor():
    # 3 documents; "a" is in all 3 (idf < 0 -> floored), "cat" in 2 (idf < 0 too), "dog" in 1.
    corpus = [["a", "cat"], ["a", "cat", "dog"], ["a"]]
    index = BM25Index(corpus)
    raw = {
        "a": math.log(0.5 / 3.5),
        "cat": math.log(1.5 / 2.5),
        "dog": math.log(2.5 / 1.5),
    }
    mean = sum(raw.values()) / 3
    assert index.mean_idf == pytest.approx(mean, abs=1e-15)
    assert index.idf["a"] == pytest.approx(0.25 * mean) and index.idf["dog"] == raw["dog"]
    avgdl = 2.0
    dl = 3.0
    expected = raw["dog"] * 1 * 2.5 / (1 + 1.5 * (1 - 0.75 + 0.75 * dl / avgdl))
    scores = index.scores(["dog"])
    assert scores.dtype == torch.float64
    assert scores.tolist() == pytest.approx([0.0, expected, 0.0], abs=1e-15)


def test_bm25_negative_mean_idf_makes_a_match_score_below_no_match():
    # rank-bm25's floor is epsilon * mean idf: when most terms are in more than half of the
    # documents the mean is negative, and so is the floor. "b" (in 2 of 3 documents) then
    # pushes the documents that contain it below the one that does not.
    index = BM25Index([["a"], ["b"], ["a", "b"]])
    assert index.mean_idf < 0 and index.idf["b"] == pytest.approx(0.25 * index.mean_idf)
    assert index.top_k(["b"], k=3).indices.tolist() == [0, 2, 1]  # the shorter match is last


def test_bm25_empty_query_absent_terms_and_repeats():
    index = BM25Index([["x", "y"], ["y"], ["z", "z"]])
    assert index.scores([]).tolist() == [0.0, 0.0, 0.0]
    assert index.scores(["nope"]).tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(index.scores(["z", "z"]), 2 * index.scores(["z"]))
    hits = index.top_k(["z"], k=5)  # k > Nd gives every document
    assert hits.indices.tolist() == [2, 0, 1]  # the tie 0, 1 (score 0) keeps index order


def test_bm25_bad_inputs():
    with pytest.raises(ValueError, match="at least one document"):
        BM25Index([])
    with pytest.raises(ValueError, match="no token"):
        BM25Index([[], []])
    with pytest.raises(TypeError, match="sequence of token sequences"):
        BM25Index("a b c")
    with pytest.raises(TypeError, match=r"corpus_tokens\[0\]"):
        BM25Index(["a b", ["c"]])
    with pytest.raises(ValueError, match="b must be in"):
        BM25Index([["a"]], b=1.5)
    with pytest.raises(ValueError, match="k1"):
        BM25Index([["a"]], k1=0.0)
    index = BM25Index([["a"]])
    with pytest.raises(TypeError, match="query_tokens"):
        index.scores("a")
    with pytest.raises(TypeError, match="unhashable"):
        index.scores([["a"]])
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.top_k(["a"], k=0)


# ----------------------------------------------------------------------------- rank, dense


def test_rank_ties_nan_and_k():
    hits = rank(torch.tensor([1.0, 3.0, 1.0, 3.0]))
    assert hits.indices.tolist() == [1, 3, 0, 2]
    assert rank(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), k=1).indices.tolist() == [[1], [0]]
    with pytest.raises(ValueError, match="NaN"):
        rank(torch.tensor([0.0, float("nan")]))
    with pytest.raises(TypeError, match="floating"):
        rank(torch.tensor([1, 2]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cosine_top_k_equals_faiss_index_flat_ip(seed):
    faiss = pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(seed)
    docs = torch.randn(200, 24, generator=g) * torch.rand(200, 1, generator=g) * 5  # (Nd, C)
    queries = torch.randn(7, 24, generator=g)  # (Nq, C)
    hits = cosine_top_k(queries, docs, k=10)
    index = faiss.IndexFlatIP(24)
    d = docs.numpy().copy()
    q = queries.numpy().copy()
    faiss.normalize_L2(d)
    faiss.normalize_L2(q)
    index.add(d)
    scores, ids = index.search(q, 10)
    assert hits.indices.tolist() == ids.tolist()
    np.testing.assert_allclose(hits.scores.numpy(), scores, rtol=0, atol=1e-5)


def test_cosine_top_k_equals_numpy_brute_force_and_is_scale_invariant():
    g = torch.Generator().manual_seed(3)
    docs = torch.randn(50, 8, generator=g, dtype=torch.float64)
    query = torch.randn(8, generator=g, dtype=torch.float64)
    hits = cosine_top_k(query, docs, k=5)
    d, q = docs.numpy(), query.numpy()
    cos = d @ q / (np.linalg.norm(d, axis=1) * np.linalg.norm(q))
    assert hits.indices.tolist() == np.argsort(-cos, kind="stable")[:5].tolist()
    np.testing.assert_allclose(hits.scores.numpy(), np.sort(cos)[::-1][:5], rtol=0, atol=1e-12)
    assert torch.equal(cosine_top_k(3.0 * query, 0.5 * docs, k=5).indices, hits.indices)


def test_cosine_top_k_bad_inputs():
    docs = torch.randn(4, 3)
    with pytest.raises(ValueError, match="zero vector"):
        cosine_top_k(torch.zeros(3), docs, k=1)
    with pytest.raises(ValueError, match="width C"):
        cosine_top_k(torch.randn(2), docs, k=1)
    with pytest.raises(ValueError, match="dimensions"):
        cosine_top_k(torch.randn(3), torch.randn(3), k=1)


# ----------------------------------------------------------------------------- embeddings


class _CharTokenizer:
    """One id per character (ids 1..26 for a-z, 27 for anything else)."""

    def encode(self, text: str) -> list[int]:
        return [ord(ch) - 96 if "a" <= ch <= "z" else 27 for ch in text.lower()]

    def decode(self, ids):  # pragma: no cover - not used
        raise NotImplementedError

    def decode_bytes(self, ids):  # pragma: no cover - not used
        raise NotImplementedError


def _tiny_model() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig.llama(32, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)).eval()


def test_mean_pool_against_a_loop():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    pooled = mean_pool(hidden, mask)
    for row, n in enumerate([3, 5, 1]):
        torch.testing.assert_close(pooled[row], hidden[row, :n].mean(0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no real token"):
        mean_pool(hidden, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="mask must be"):
        mean_pool(hidden, torch.ones(3, 4))


def test_embed_texts_is_the_mean_of_hidden_states_and_independent_of_the_batch():
    model, tok = _tiny_model(), _CharTokenizer()
    texts = ["a cat", "the dog sat on the mat", "hi"]
    batched = embed_texts(model, tok, texts, batch_size=3)  # right-padded together
    assert batched.shape == (3, 32) and batched.dtype == torch.float32
    for i, text in enumerate(texts):
        ids = torch.tensor([tok.encode(text)])
        expected = model(ids).hidden_states[0].mean(0)  # (C,)
        torch.testing.assert_close(batched[i], expected, rtol=1e-5, atol=1e-5)
    alone = embed_texts(model, tok, texts, batch_size=1)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    truncated = embed_texts(model, tok, ["the dog sat on the mat"], max_tokens=3)
    torch.testing.assert_close(truncated[0], embed_texts(model, tok, ["the"])[0], rtol=1e-5, atol=1e-5)


def test_embed_texts_bad_inputs():
    model, tok = _tiny_model(), _CharTokenizer()
    with pytest.raises(ValueError, match="no token"):
        embed_texts(model, tok, ["ok", ""])
    with pytest.raises(ValueError, match="non-empty sequence"):
        embed_texts(model, tok, "text")
    with pytest.raises(TypeError, match="DecoderLM"):
        embed_texts(torch.nn.Linear(2, 2), tok, ["a"])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        embed_texts(model, tok, ["a", 3])


# ----------------------------------------------------------------------------- fusion, metrics


def test_reciprocal_rank_fusion_hand_computed():
    hits = reciprocal_rank_fusion([[2, 0, 5], [0, 1]])
    expected = {0: 1 / 62 + 1 / 61, 2: 1 / 61, 1: 1 / 62, 5: 1 / 63}
    assert hits.indices.tolist() == [0, 2, 1, 5]
    assert hits.scores.tolist() == pytest.approx([expected[d] for d in [0, 2, 1, 5]], abs=1e-15)
    tie = reciprocal_rank_fusion([[3, 1], [1, 3]], k=0)  # 1 + 1/2 each: lower index first
    assert tie.indices.tolist() == [1, 3] and tie.scores.tolist() == [1.5, 1.5]
    assert reciprocal_rank_fusion([torch.tensor([4, 2])]).indices.tolist() == [4, 2]
    with pytest.raises(ValueError, match="twice"):
        reciprocal_rank_fusion([[1, 1]])
    with pytest.raises(ValueError, match="non-empty"):
        reciprocal_rank_fusion([])


def test_min_max_fusion_hand_computed():
    bm25 = torch.tensor([0.0, 10.0, 5.0], dtype=torch.float64)
    cosine = torch.tensor([0.9, 0.1, 0.5], dtype=torch.float64)
    fused = min_max_fusion([bm25, cosine], weights=[0.5, 1.0])
    assert fused.tolist() == pytest.approx([1.0, 0.5, 0.25 + 0.5], abs=1e-12)
    assert min_max_fusion([torch.ones(3)]).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="weights has"):
        min_max_fusion([bm25], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        min_max_fusion([bm25, torch.ones(2)])
    with pytest.raises(ValueError, match="non-finite"):
        min_max_fusion([torch.tensor([0.0, float("inf")])])


def test_recall_at_k_and_mrr_hand_computed():
    rankings = [[3, 1, 2], [0, 2, 1], [5, 4]]
    relevant = [[1], [1, 2], [7]]
    assert recall_at_k(rankings, relevant, k=1) == pytest.approx((0 + 0 + 0) / 3)
    assert recall_at_k(rankings, relevant, k=2) == pytest.approx((1 + 0.5 + 0) / 3)
    assert recall_at_k(rankings, relevant, k=3) == pytest.approx((1 + 1 + 0) / 3)
    assert mrr(rankings, relevant) == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert mrr([[4, 9]], [[4]]) == 1.0
    hits = BM25Index([["a"], ["b"], ["c"], ["a", "c"]]).top_k(["b"], k=3)
    assert isinstance(hits, Hits)
    assert mrr([hits.indices], [[1]]) == 1.0


def test_metrics_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        recall_at_k([[1, 2]], [[]], k=1)
    with pytest.raises(ValueError, match="one collection"):
        mrr([[1, 2]], [[1], [2]])
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k([[1]], [[1]], k=0)
    with pytest.raises(ValueError, match=">= 0"):
        mrr([[-1]], [[1]])


def test_doctests():
    import doctest

    from llmfoundations.applications import retrieval as module

    assert doctest.testmod(module).failed == 0
