"""ROUGE: how much of the reference a summary recovers (n-gram overlap and longest common
subsequence), as Google's ``rouge-score`` package computes it.

ROUGE (Lin, 2004, https://aclanthology.org/W04-1013/) was built for summarisation, where
what matters is whether the summary *covers* the reference, so it leads with recall.
With ``overlap`` the matched units of the prediction and the reference:

    P = overlap / |prediction|,   R = overlap / |reference|,   F = 2PR / (P + R)

- **ROUGE-N** (:func:`rouge_n`): units are n-grams; an n-gram matches at most as often
  as it occurs in each text (clipped on both sides).
- **ROUGE-L** (:func:`rouge_l`): the overlap is the length of the *longest common
  subsequence* (LCS) of the two token lists: tokens in the same order, gaps allowed. It
  rewards in-order matches without fixing n.
- **ROUGE-Lsum** (:func:`rouge_lsum`): the summary-level LCS of section 3.2 of the paper.
  Both texts are split into sentences at ``"\\n"``; for every reference sentence the
  *union* of its LCS with each predicted sentence counts as hits, each token at most as
  often as it occurs in either text. Without newlines it is ROUGE-L on one sentence.

Tokenisation (:func:`rouge_tokenize`, rouge-score's default, after Lin's Perl script):
lowercase, replace every character outside ``a-z0-9`` by a space, split, and optionally
Porter-stem the tokens longer than three characters. Everything that is not an ASCII
letter or digit is thrown away, so **text in Cyrillic, Greek, Chinese, Arabic... has no
tokens and scores 0**, and "café" becomes "caf". Pass ``tokenizer=`` (a function
``str -> list[str]``) for such text: :func:`unicode_word_tokenize` keeps the letters and
digits of every script, :func:`character_tokenize` makes every character a token (for
scripts written without spaces).

Equal to ``rouge-score`` 0.1.2's ``RougeScorer`` (the tests compare P, R and F exactly on
generated text, with and without stemming, with custom tokenisers). Differences:

- Arguments come as ``(prediction, reference)``, like ``bleu(hypotheses, references)``.
  ``RougeScorer.score(target, prediction)`` takes the reference **first**; swapping the
  two swaps precision and recall.
- ``stem=True`` with a custom ``tokenizer`` raises (rouge-score silently ignores it).
- The Porter stemmer is NLTK's (``nltk.stem.porter.PorterStemmer`` in its default
  ``NLTK_EXTENSIONS`` mode), imported only when ``stem=True``. It is the very stemmer
  rouge-score uses (``nltk`` is one of its dependencies), so the stems agree by
  construction; re-implementing NLTK's variant of Porter's algorithm word for word
  would add hundreds of lines that teach nothing about ROUGE. The tokeniser rules and
  all the scoring are this module's own.

Left out: several references per prediction (rouge-score's ``score_multi`` keeps the
reference with the best F), averaging over a corpus and bootstrap intervals (rouge-score's
``BootstrapAggregator``; the ``harness`` module bootstraps any per-example score),
sentence splitting with NLTK's punkt (``split_summaries=True``; it needs a download),
ROUGE-W, ROUGE-S/SU (skip-bigrams) and the Perl script's stop-word removal.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import regex

from llmfoundations._validate import check_bool, check_int, check_str

__all__ = [
    "RougeScore",
    "Tokenizer",
    "rouge_tokenize",
    "unicode_word_tokenize",
    "character_tokenize",
    "lcs_length",
    "lcs_indices",
    "rouge_n",
    "rouge_l",
    "rouge_lsum",
]

Tokenizer = Callable[[str], Sequence[str]]

_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")
_ALPHANUMERIC = re.compile(r"^[a-z0-9]+$")


@dataclass(frozen=True)
class RougeScore:
    """Precision, recall and F1 of one prediction against one reference, each in [0, 1]."""

    precision: float
    recall: float
    fmeasure: float

    def __post_init__(self) -> None:
        for name in ("precision", "recall", "fmeasure"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


# --------------------------------------------------------------------------- tokenisers


@functools.cache
def _porter() -> Any:
    try:
        from nltk.stem.porter import PorterStemmer
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "stem=True needs NLTK's Porter stemmer: pip install nltk"
        ) from None
    return PorterStemmer()


@functools.lru_cache(maxsize=100_000)
def _stem(token: str) -> str:
    return _porter().stem(token)


def rouge_tokenize(text: str, stem: bool = False) -> list[str]:
    """rouge-score's default tokeniser: lowercase, keep runs of ``a-z0-9``, and with
    ``stem`` Porter-stem the tokens longer than three characters.

    >>> rouge_tokenize("The cats' café, 2nd-floor!")
    ['the', 'cats', 'caf', '2nd', 'floor']
    >>> rouge_tokenize("Кошки спят")  # no ASCII letters: no tokens
    []
    >>> rouge_tokenize("The cats were running", stem=True)
    ['the', 'cat', 'were', 'run']
    """
    check_str("text", text)
    check_bool("stem", stem)
    return _rouge_tokenize(text, stem)


def _rouge_tokenize(text: str, stem: bool) -> list[str]:
    """Unchecked core of :func:`rouge_tokenize`."""
    # lower() first: it maps a few non-ASCII letters to ASCII ones (the Kelvin sign to "k")
    tokens = _NOT_ALPHANUMERIC.sub(" ", text.lower()).split()
    if stem:
        tokens = [_stem(t) if len(t) > 3 else t for t in tokens]
        tokens = [t for t in tokens if _ALPHANUMERIC.match(t)]
    return tokens


_WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")


def unicode_word_tokenize(text: str) -> list[str]:
    """Lowercased runs of letters, combining marks and digits, in any script.

    >>> unicode_word_tokenize("Кошки спят, the café's cat")
    ['кошки', 'спят', 'the', 'café', 's', 'cat']
    """
    check_str("text", text)
    return _WORD.findall(text.lower())


def character_tokenize(text: str) -> list[str]:
    """Every letter, mark or digit is its own token (Chinese, Japanese, Thai: no spaces).

    >>> character_tokenize("猫が好き。")
    ['猫', 'が', '好', 'き']
    """
    check_str("text", text)
    return [c for c in text.lower() if _WORD.fullmatch(c)]


# ---------------------------------------------------------------------------------- LCS


def _lcs_table(a: Sequence[str], b: Sequence[str]) -> list[list[int]]:
    """``table[i][j]``: the LCS length of ``a[:i]`` and ``b[:j]`` (dynamic programming)."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, start=1):
        row, above = table[i], table[i - 1]
        for j, y in enumerate(b, start=1):
            row[j] = above[j - 1] + 1 if x == y else max(above[j], row[j - 1])
    return table


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    >>> lcs_length("the cat sat on the mat".split(), "the cat on a mat".split())
    4
    """
    return _lcs_table(_tokens("a", a), _tokens("b", b))[-1][-1]


def lcs_indices(a: Sequence[str], b: Sequence[str]) -> list[int]:
    """The positions in ``a`` of one longest common subsequence with ``b``.

    When there are several, the choice matters for ROUGE-Lsum (it takes their union), so
    it is rouge-score's: walk back from the ends, take a pair of equal tokens whenever
    there is one, else drop the token of ``b`` if that keeps a longer LCS, otherwise the
    token of ``a``.

    >>> lcs_indices("a b c".split(), "c a b".split())
    [0, 1]
    """
    a, b = _tokens("a", a), _tokens("b", b)
    return _lcs_indices(a, b)


def _lcs_indices(a: Sequence[str], b: Sequence[str]) -> list[int]:
    table = _lcs_table(a, b)
    i, j = len(a), len(b)
    picked = []
    while i > 0 and j > 0:
        if a[i - 1] == b[j - 1]:
            picked.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return picked[::-1]


# ------------------------------------------------------------------------------- scores


def _score(overlap: int, n_prediction: int, n_reference: int) -> RougeScore:
    """P, R and F from counts; an empty side gives 0 (never a division by zero)."""
    precision = overlap / max(n_prediction, 1)
    recall = overlap / max(n_reference, 1)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return RougeScore(precision, recall, f)


def rouge_n(
    prediction: str,
    reference: str,
    n: int = 1,
    *,
    stem: bool = False,
    tokenizer: Tokenizer | None = None,
) -> RougeScore:
    """ROUGE-N: clipped n-gram overlap (``rouge1``, ``rouge2``... in rouge-score).

    >>> rouge_n("the cat was found under the bed", "the cat was under the bed", 2)
    RougeScore(precision=0.6666666666666666, recall=0.8, fmeasure=0.7272727272727272)
    """
    check_int("n", n, minimum=1)
    pred, ref = _tokenize_pair(prediction, reference, stem, tokenizer)
    pred_grams = Counter(tuple(pred[i : i + n]) for i in range(len(pred) - n + 1))
    ref_grams = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
    overlap = sum((pred_grams & ref_grams).values())  # min of the two counts per n-gram
    return _score(overlap, sum(pred_grams.values()), sum(ref_grams.values()))


def rouge_l(
    prediction: str,
    reference: str,
    *,
    stem: bool = False,
    tokenizer: Tokenizer | None = None,
) -> RougeScore:
    """ROUGE-L: the LCS of the two token lists, over their lengths (``rougeL``).

    Newlines are ordinary whitespace here; see :func:`rouge_lsum` for sentences.

    >>> rouge_l("the cat was found under the bed", "the cat was under the bed")
    RougeScore(precision=0.8571428571428571, recall=1.0, fmeasure=0.923076923076923)
    """
    pred, ref = _tokenize_pair(prediction, reference, stem, tokenizer)
    if not pred or not ref:
        return RougeScore(0.0, 0.0, 0.0)
    return _score(_lcs_table(ref, pred)[-1][-1], len(pred), len(ref))


def rouge_lsum(
    prediction: str,
    reference: str,
    *,
    stem: bool = False,
    tokenizer: Tokenizer | None = None,
) -> RougeScore:
    """ROUGE-Lsum: summary-level LCS over sentences separated by ``"\\n"`` (``rougeLsum``).

    For each reference sentence ``r``, take the union of the positions of ``r`` that lie
    on its LCS with each predicted sentence; each token found there is a hit if it has
    not yet been used up (every token counts at most as often as it occurs in the whole
    prediction and in the whole reference). ``P = hits / |prediction|``,
    ``R = hits / |reference|``, in tokens. Put one sentence per line: without newlines
    this is ROUGE-L; with them, sentences matched in another order still count.

    >>> rouge_lsum("the bed was warm\\nthe cat slept", "the cat slept\\nthe bed was warm")
    RougeScore(precision=1.0, recall=1.0, fmeasure=1.0)
    """
    check_str("prediction", prediction)
    check_str("reference", reference)
    split = _check_tokenizer(tokenizer, stem)
    pred_sents = [split(s) for s in prediction.split("\n") if s]
    ref_sents = [split(s) for s in reference.split("\n") if s]
    n_pred = sum(len(s) for s in pred_sents)
    n_ref = sum(len(s) for s in ref_sents)
    if n_pred == 0 or n_ref == 0:
        return RougeScore(0.0, 0.0, 0.0)
    left_pred = Counter(t for s in pred_sents for t in s)  # how often each token may still hit
    left_ref = Counter(t for s in ref_sents for t in s)
    hits = 0
    for r in ref_sents:
        union = sorted(set().union(*(_lcs_indices(r, p) for p in pred_sents)))
        for token in (r[i] for i in union):
            if left_pred[token] > 0 and left_ref[token] > 0:
                hits += 1
                left_pred[token] -= 1
                left_ref[token] -= 1
    return _score(hits, n_pred, n_ref)


def _tokens(name: str, tokens: object) -> list[str]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"{name} must be a list of tokens, got {type(tokens).__name__}")
    return list(tokens)


def _check_tokenizer(tokenizer: object, stem: object) -> Callable[[str], list[str]]:
    """The function that turns one text into tokens, checked once per call."""
    check_bool("stem", stem)
    if tokenizer is None:
        return functools.partial(_rouge_tokenize, stem=bool(stem))
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be callable or None, got {type(tokenizer).__name__}")
    if stem:
        raise ValueError(
            "stem=True applies to the default tokenizer only; stem inside your tokenizer"
        )

    def split(text: str) -> list[str]:
        tokens = tokenizer(text)
        if isinstance(tokens, str) or not isinstance(tokens, Sequence):
            raise TypeError(f"tokenizer must return a list of str, got {type(tokens).__name__}")
        return list(tokens)

    return split


def _tokenize_pair(
    prediction: object, reference: object, stem: object, tokenizer: object
) -> tuple[list[str], list[str]]:
    check_str("prediction", prediction)
    check_str("reference", reference)
    split = _check_tokenizer(tokenizer, stem)
    assert isinstance(prediction, str) and isinstance(reference, str)
    return split(prediction), split(reference)
