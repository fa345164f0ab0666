"""Retrieval: finding the passages that answer a question, by words and by vectors.

Retrieval-augmented generation starts by ranking the documents of a corpus for a query.
Two families of scores are used, and are often combined:

**Sparse (lexical): BM25 Okapi** (Robertson & Zaragoza, 2009, "The Probabilistic
Relevance Framework: BM25 and Beyond"). A document ``d`` scores, for a query ``q``::

    score(q, d) = sum_{t in q} idf(t) * tf(t, d) (k1 + 1) / (tf(t, d) + k1 (1 - b + b |d| / avgdl))
    idf(t)      = ln((N - n(t) + 0.5) / (n(t) + 0.5))

with ``tf`` the count of term ``t`` in ``d``, ``|d|`` its length in tokens, ``avgdl``
the mean length, ``N`` the number of documents and ``n(t)`` how many contain ``t``.
``k1`` caps what repeating a word can earn (the fraction saturates at ``k1 + 1``);
``b`` says how much long documents are penalised. A term in more than half of the
documents gets a *negative* idf; we follow ``rank-bm25`` (``BM25Okapi``, the library
the tests compare against) and replace such an idf by ``epsilon * mean idf`` (the mean
taken over every corpus term before the replacement; when most terms are that common
the mean, and so the floor, is itself negative, and a document *containing* such a query
term scores below one that does not: a quirk kept for equality). Lucene instead uses
``ln(1 + (N - n + 0.5) / (n + 0.5))``, which is never negative. Like ``rank-bm25``: a
query term repeated twice counts twice, a term absent from the corpus adds 0, and the
tokenisation is the caller's (give lists of tokens, e.g. ``text.lower().split()``).

**Dense: cosine similarity of embeddings.** Every text becomes a vector; the score is
``cos(u, v) = u . v / (|u| |v|)``, i.e. the inner product of unit vectors, so a
search is one matrix product (faiss's ``IndexFlatIP`` on normalised vectors computes
exactly this, and is the test oracle). Our embeddings mean-pool a course model's final
hidden states over the real tokens of each text; a decoder trained for next-token
prediction was never trained to make these vectors comparable, so expect them to be
much weaker than a trained embedding model's (Reimers & Gurevych, 2019, Sentence-BERT).

**Hybrid.** Reciprocal rank fusion (Cormack, Clarke & Büttcher, 2009, "Reciprocal Rank
Fusion outperforms Condorcet and individual Rank Learning Methods") adds, for each
ranking a document appears in, ``1 / (k + rank)`` with ranks counted from 1 and
``k = 60``: it needs only ranks, so BM25 scores and cosines never have to share a
scale. The alternative, a weighted sum of min-max normalised scores, is here too.

This module holds:

- ``Hits``: what a search returns, ``indices`` and ``scores``, best first;
- ``BM25Index(corpus_tokens, k1=1.5, b=0.75, epsilon=0.25)``: ``.scores(query)`` (Nd,),
  ``.top_k(query, k)``;
- ``rank(scores, k)``: top-k of a score vector or matrix (ties: the lower index first);
- ``normalize``, ``cosine_top_k(queries, docs, k)``: dense search;
- ``mean_pool(hidden, mask)``, ``embed_texts(model, tokenizer, texts)``: embeddings
  from a course model (``DecoderLM``, e.g. SmolLM2 from ``llmfoundations.pretrained``);
- ``reciprocal_rank_fusion(rankings, k=60)``, ``min_max_fusion(scores, weights)``;
- ``recall_at_k(rankings, relevant, k)``, ``mrr(rankings, relevant)``.

Shapes: ``Nd`` documents, ``Nq`` queries, ``k`` results per query (the argument),
``C`` the embedding width. Scores are float64 for BM25 (as ``rank-bm25``'s numpy) and
the embeddings' dtype for cosines. Ties are broken towards the lower document index
everywhere (``rank-bm25``'s ``get_top_n`` breaks them the other way).

Left out: inverted indexes and any speed-up (BM25 here scans every document: fine for
thousands of passages), BM25 variants (BM25+, BM25L), approximate nearest neighbours
(faiss IVF/HNSW), learned sparse retrieval (SPLADE), re-ranking with a cross-encoder,
and training an embedding model (contrastive loss).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmfoundations._validate import check_int, check_positive, check_tensor
from llmfoundations.models import DecoderLM
from llmfoundations.tokenizer import TokenizerLike

__all__ = [
    "Hits",
    "BM25Index",
    "rank",
    "normalize",
    "cosine_top_k",
    "mean_pool",
    "embed_texts",
    "reciprocal_rank_fusion",
    "min_max_fusion",
    "recall_at_k",
    "mrr",
]

RRF_K = 60  # Cormack et al. (2009): "k = 60 was fixed during a pilot investigation"


@dataclass(frozen=True)
class Hits:
    """The result of a search, best first: ``indices`` (document numbers, int64) and
    their ``scores``; shapes (k,) for one query, (Nq, k) for several."""

    indices: Tensor
    scores: Tensor


# ----------------------------------------------------------------------------- ranking


def _rank(scores: Tensor, k: int) -> Hits:
    """Unchecked core of :func:`rank`: a stable descending sort keeps ties in index order."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    return Hits(indices=order, scores=scores.gather(-1, order))


def rank(scores: Tensor, k: int | None = None) -> Hits:
    """The ``k`` best entries of ``scores`` (Nd,) or (Nq, Nd), best first (all if ``k`` is
    None; ``k`` larger than ``Nd`` gives all). Equal scores: the lower index first.

    >>> rank(torch.tensor([0.5, 2.0, 0.5, 1.0]), k=3)
    Hits(indices=tensor([1, 3, 0]), scores=tensor([2.0000, 1.0000, 0.5000]))
    """
    check_tensor("scores", scores, ndim=(1, 2), floating=True)
    if k is None:
        k = scores.shape[-1]
    check_int("k", k, minimum=1)
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores must not contain NaN")
    return _rank(scores, k)


# ----------------------------------------------------------------------------- BM25


def _check_tokens(name: str, tokens: object) -> list[Hashable]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(
            f"{name} must be a sequence of tokens (e.g. text.split()), got {type(tokens).__name__}"
        )
    for token in tokens:
        if not isinstance(token, Hashable):
            raise TypeError(f"{name} holds an unhashable token of type {type(token).__name__}")
    return list(tokens)


class BM25Index:
    """BM25 Okapi over a tokenised corpus, with ``rank-bm25``'s parameters and idf floor.

    ``corpus_tokens``: one sequence of tokens per document (strings, ints, any hashable).
    Empty documents are allowed (they score 0); a corpus with no token at all is not
    (its mean length and mean idf are undefined).

    Attributes: ``n_docs``, ``doc_lengths`` (Nd,), ``avgdl``, ``doc_freqs`` (term ->
    number of documents containing it), ``idf`` (term -> idf after the floor),
    ``mean_idf`` (before the floor), ``k1``, ``b``, ``epsilon``.

    >>> docs = ["a cat", "a dog", "the bird", "a fish", "a cat and a dog"]
    >>> index = BM25Index([d.split() for d in docs])
    >>> index.top_k(["cat"], k=2).indices  # the shorter document with "cat" first
    tensor([0, 4])
    """

    def __init__(
        self,
        corpus_tokens: Sequence[Sequence[Hashable]],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
    ) -> None:
        if isinstance(corpus_tokens, str) or not isinstance(corpus_tokens, Sequence):
            raise TypeError(
                "corpus_tokens must be a sequence of token sequences, got "
                f"{type(corpus_tokens).__name__}"
            )
        if len(corpus_tokens) == 0:
            raise ValueError("corpus_tokens must hold at least one document")
        check_positive("k1", k1)  # k1 = 0 makes tf = 0 a 0/0
        check_positive("b", b, allow_zero=True)
        if b > 1:
            raise ValueError(f"b must be in [0, 1], got {b}")
        check_positive("epsilon", epsilon, allow_zero=True)
        docs = [_check_tokens(f"corpus_tokens[{i}]", d) for i, d in enumerate(corpus_tokens)]
        if not any(docs):
            raise ValueError("corpus_tokens holds no token at all (every document is empty)")
        self.k1, self.b, self.epsilon = float(k1), float(b), float(epsilon)
        self.n_docs = len(docs)
        self._term_counts = [Counter(doc) for doc in docs]  # per document: term -> tf
        self.doc_lengths = torch.tensor([len(doc) for doc in docs], dtype=torch.float64)  # (Nd,)
        self.avgdl = float(sum(len(doc) for doc in docs)) / self.n_docs
        self.doc_freqs: dict[Hashable, int] = Counter(t for c in self._term_counts for t in c)

        n = self.n_docs
        raw = {t: math.log(n - df + 0.5) - math.log(df + 0.5) for t, df in self.doc_freqs.items()}
        self.mean_idf = sum(raw.values()) / len(raw)
        floor = self.epsilon * self.mean_idf  # rank-bm25: negative idf -> epsilon * mean idf
        self.idf: dict[Hashable, float] = {t: (v if v >= 0 else floor) for t, v in raw.items()}

    def _term_scores(self, term: Hashable) -> Tensor:
        """One query term's contribution to every document's score: (Nd,) float64."""
        idf = self.idf.get(term, 0.0)  # a term absent from the corpus adds nothing
        tf = torch.tensor([c.get(term, 0) for c in self._term_counts], dtype=torch.float64)
        length_norm = 1 - self.b + self.b * self.doc_lengths / self.avgdl  # (Nd,)
        return idf * tf * (self.k1 + 1) / (tf + self.k1 * length_norm)  # (Nd,)

    def scores(self, query_tokens: Sequence[Hashable]) -> Tensor:
        """BM25 score of every document for the query: (Nd,) float64 (zeros for an empty
        query). Repeated query terms count once per occurrence, as in ``rank-bm25``."""
        query = _check_tokens("query_tokens", query_tokens)
        total = torch.zeros(self.n_docs, dtype=torch.float64)  # (Nd,)
        for term in query:
            total = total + self._term_scores(term)
        return total

    def top_k(self, query_tokens: Sequence[Hashable], k: int) -> Hits:
        """The ``k`` best documents for the query (fewer if the corpus is smaller)."""
        check_int("k", k, minimum=1)
        return _rank(self.scores(query_tokens), k)


# ----------------------------------------------------------------------------- dense


def normalize(x: Tensor) -> Tensor:
    """Rows of ``x`` (..., C) scaled to unit length. A zero row has no direction: error."""
    check_tensor("x", x, min_ndim=1, floating=True, nonempty=True)
    norms = x.norm(dim=-1, keepdim=True)  # (..., 1)
    if bool((norms == 0).any()):
        raise ValueError("x has a zero vector: its cosine with anything is undefined")
    return x / norms


def cosine_top_k(queries: Tensor, docs: Tensor, k: int) -> Hits:
    """The ``k`` documents with the highest cosine similarity to each query.

    ``queries`` (Nq, C) or (C,); ``docs`` (Nd, C). Returns ``Hits`` with ``indices`` and
    ``scores`` (the cosines) of shape (Nq, k), or (k,) for one query. Equal to faiss
    ``IndexFlatIP`` on the normalised vectors (up to float rounding).
    """
    check_tensor("queries", queries, ndim=(1, 2), floating=True, nonempty=True)
    check_tensor("docs", docs, ndim=2, floating=True, nonempty=True)
    check_int("k", k, minimum=1)
    if queries.shape[-1] != docs.shape[-1] or queries.dtype != docs.dtype:
        raise ValueError(
            f"queries {tuple(queries.shape)} {queries.dtype} and docs {tuple(docs.shape)} "
            f"{docs.dtype} must share the width C and the dtype"
        )
    if queries.device != docs.device:
        raise ValueError(f"queries are on {queries.device}, docs on {docs.device}")
    sims = normalize(queries) @ normalize(docs).T  # (Nq, Nd) or (Nd,)
    return _rank(sims, k)


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``hidden`` (B, T, C) over the positions where ``mask`` (B, T) is 1: (B, C).

    Every row needs at least one real position (else the mean is undefined)."""
    check_tensor("hidden", hidden, ndim=3, floating=True, nonempty=True)
    check_tensor("mask", mask, ndim=2)
    if tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"mask must be (B, T) = {tuple(hidden.shape[:2])}, got {tuple(mask.shape)}")
    weights = mask.to(hidden.dtype)  # (B, T)
    counts = weights.sum(dim=1, keepdim=True)  # (B, 1)
    if bool((counts == 0).any()):
        raise ValueError("mask has a row with no real token")
    return (hidden * weights[..., None]).sum(dim=1) / counts  # (B, C)


def embed_texts(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_tokens: int | None = None,
) -> Tensor:
    """One vector per text: the mean of the model's final hidden states over its tokens.

    Each text is encoded with ``tokenizer.encode`` (truncated to ``max_tokens``, default
    the model's ``max_seq_len``), batches are **right-padded**, and the pooling skips the
    padding. No attention mask is needed: in a causal model a real token never sees the
    padding that follows it, so a text's vector does not depend on its batch. Runs under
    ``torch.inference_mode`` with the model as it is (put it in ``eval()`` mode first so
    dropout is off). Returns (len(texts), C) float32 on the model's device.
    """
    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be a DecoderLM, got {type(model).__name__}")
    if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
        raise ValueError("texts must be a non-empty sequence of strings")
    check_int("batch_size", batch_size, minimum=1)
    limit = model.config.max_seq_len if max_tokens is None else max_tokens
    check_int("max_tokens", limit, minimum=1)
    encoded = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        ids = list(tokenizer.encode(text))[:limit]
        if not ids:
            raise ValueError(f"texts[{i}] encodes to no token: it has no embedding")
        encoded.append(ids)
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            width = max(len(ids) for ids in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)  # (B, T), 0 = padding
            mask = torch.zeros(len(chunk), width, dtype=torch.long)  # (B, T)
            for row, toks in enumerate(chunk):
                ids[row, : len(toks)] = torch.tensor(toks)
                mask[row, : len(toks)] = 1
            hidden = model(ids.to(device)).hidden_states  # (B, T, C)
            out.append(mean_pool(hidden.float(), mask.to(device)))  # (B, C)
    return torch.cat(out)  # (len(texts), C)


# ----------------------------------------------------------------------------- hybrid


def _check_rankings(name: str, rankings: object) -> list[list[int]]:
    if not isinstance(rankings, Sequence) or len(rankings) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of rankings")
    out = []
    for i, ranking in enumerate(rankings):
        if isinstance(ranking, Tensor):
            ranking = ranking.tolist()
        if not isinstance(ranking, Sequence):
            raise TypeError(f"{name}[{i}] must be a sequence of document indices")
        ids = [check_int(f"{name}[{i}][{j}]", d, minimum=0) for j, d in enumerate(ranking)]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name}[{i}] lists a document twice: {ids}")
        out.append(ids)
    return out


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], *, k: int = RRF_K) -> Hits:
    """Fuse rankings (each a list of document indices, best first, possibly truncated):
    ``score(d) = sum over rankings containing d of 1 / (k + rank)``, rank counted from 1.

    Returns ``Hits`` over every document that appears in some ranking, best first (equal
    scores: the lower index first); ``scores`` float64.

    >>> reciprocal_rank_fusion([[2, 0], [0, 1]]).indices  # 0 is 2nd then 1st: it wins
    tensor([0, 2, 1])
    """
    lists = _check_rankings("rankings", rankings)
    check_int("k", k, minimum=0)
    fused: dict[int, float] = {}
    for ranking in lists:
        for position, doc in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + position)
    docs = sorted(fused)
    scores = torch.tensor([fused[d] for d in docs], dtype=torch.float64)  # (n,)
    order = _rank(scores, len(docs))
    return Hits(indices=torch.tensor(docs)[order.indices], scores=order.scores)


def min_max_fusion(scores: Sequence[Tensor], weights: Sequence[float] | None = None) -> Tensor:
    """Weighted sum of score vectors (each (Nd,)) after min-max normalising each to
    [0, 1]: ``sum_i w_i (s_i - min s_i) / (max s_i - min s_i)``. A constant vector carries
    no ranking information and becomes zeros. ``weights`` default to equal (1 each).
    Returns (Nd,) float64; feed it to :func:`rank`."""
    if not isinstance(scores, Sequence) or len(scores) == 0:
        raise ValueError("scores must be a non-empty sequence of (Nd,) tensors")
    for i, s in enumerate(scores):
        check_tensor(f"scores[{i}]", s, ndim=1, floating=True, nonempty=True)
        if s.shape != scores[0].shape:
            raise ValueError(f"scores[{i}] has shape {tuple(s.shape)}, scores[0] {tuple(scores[0].shape)}")
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"scores[{i}] has a non-finite value")
    if weights is None:
        weights = [1.0] * len(scores)
    if len(weights) != len(scores):
        raise ValueError(f"weights has {len(weights)} entries for {len(scores)} score vectors")
    for i, w in enumerate(weights):
        check_positive(f"weights[{i}]", w, allow_zero=True)
    total = torch.zeros(scores[0].shape, dtype=torch.float64)  # (Nd,)
    for s, w in zip(scores, weights, strict=True):
        s = s.detach().to("cpu", torch.float64)
        span = s.max() - s.min()
        if span > 0:
            total = total + w * (s - s.min()) / span
    return total


# ----------------------------------------------------------------------------- metrics


def _check_relevant(rankings: list[list[int]], relevant: object) -> list[set[int]]:
    if not isinstance(relevant, Sequence) or len(relevant) != len(rankings):
        raise ValueError(
            f"relevant must hold one collection of relevant indices per ranking ({len(rankings)})"
        )
    out = []
    for i, rel in enumerate(relevant):
        ids = {check_int(f"relevant[{i}] entry", d, minimum=0) for d in rel}
        if not ids:
            raise ValueError(f"relevant[{i}] is empty: recall and MRR are undefined for it")
        out.append(ids)
    return out


def recall_at_k(
    rankings: Sequence[Sequence[int]], relevant: Sequence[Sequence[int]], k: int
) -> float:
    """Mean over queries of ``|relevant ∩ top-k| / |relevant|``.

    ``rankings``: one ranking per query (document indices, best first); ``relevant``: the
    relevant indices of each query (non-empty). With one relevant document per query this
    is the hit rate: the fraction of queries whose answer is in the top k.

    >>> recall_at_k([[3, 1, 2], [0, 2, 1]], [[1], [1, 2]], k=2)  # (1 + 1/2) / 2
    0.75
    """
    lists = _check_rankings("rankings", rankings)
    rel = _check_relevant(lists, relevant)
    check_int("k", k, minimum=1)
    per_query = [len(set(r[:k]) & s) / len(s) for r, s in zip(lists, rel, strict=True)]
    return sum(per_query) / len(per_query)


def mrr(rankings: Sequence[Sequence[int]], relevant: Sequence[Sequence[int]]) -> float:
    """Mean reciprocal rank: mean over queries of ``1 / rank`` of the first relevant
    document (ranks from 1; 0 when no relevant document is in the ranking).

    >>> mrr([[3, 1, 2], [0, 2, 1], [5]], [[1], [0], [4]])  # (1/2 + 1 + 0) / 3
    0.5
    """
    lists = _check_rankings("rankings", rankings)
    rel = _check_relevant(lists, relevant)
    total = 0.0
    for ranking, rel_ids in zip(lists, rel, strict=True):
        first = next((pos for pos, d in enumerate(ranking, start=1) if d in rel_ids), None)
        total += 0.0 if first is None else 1.0 / first
    return total / len(lists)
