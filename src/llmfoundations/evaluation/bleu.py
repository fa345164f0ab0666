"""BLEU: clipped n-gram precision against references, pooled over a corpus, as sacreBLEU does it.

BLEU (Papineni et al., 2002, https://aclanthology.org/P02-1040/) asks how many of the
n-grams of a system's output (the *hypothesis*) also occur in human translations (the
*references*). For orders ``n = 1..N`` (``N = 4``) it counts, over the whole corpus,

    p_n = (clipped n-gram matches) / (n-grams in the hypotheses)

where an n-gram is *clipped*: it counts at most as often as it occurs in any single
reference, so "the the the the" cannot score by repeating a common word. Precision alone
rewards saying little, so a *brevity penalty* multiplies the geometric mean:

    BLEU = BP * exp((1/N) * sum_n log p_n),   BP = 1 if c >= r else exp(1 - r/c)

with ``c`` the hypothesis tokens and ``r`` the reference tokens of the corpus (for each
segment the reference length closest to its hypothesis, ties going to the shorter one;
``BP = 0`` when ``c = 0``). Scores are reported on a 0-100 scale.

Three facts decide what number you get, and sacreBLEU (Post, 2018,
https://aclanthology.org/W18-6319/) prints them in a *signature* so that two papers can be
compared: the **tokeniser** (BLEU counts tokens, so the same text split differently
scores differently; ``13a`` is the WMT standard), **case** and **smoothing**.

- Corpus BLEU sums the counts of all segments first and takes the ratios once; it is not
  the mean of sentence scores (which would be much lower and noisier).
- Smoothing (Chen and Cherry, 2014, https://aclanthology.org/W14-3346/) matters when an
  order has no match at all, which is common for one sentence: ``log 0`` would zero the
  score. ``"exp"`` (sacreBLEU's default, as in mteval-v13a) gives the k-th order without a
  match the precision ``1 / (2^k * total_n)``; ``"floor"`` gives ``smooth_value / total_n``
  (0.1 by default); ``"add-k"`` adds ``smooth_value`` (1) to the matches and totals of
  every order above 1; ``"none"`` leaves the zero (and the score 0).
- With ``effective_order`` the mean runs only over the orders for which the hypotheses
  have any n-gram at all (a three-word sentence has no 4-gram). Despite its description
  in sacreBLEU, it does not skip orders that merely have no *match*.

This module holds the tokenisers (:func:`tokenize_13a`, :func:`tokenize_intl`,
:func:`tokenize_char`, and ``"none"``: split on whitespace), the pieces
(:func:`ngram_counts`, :func:`closest_ref_length`, :func:`brevity_penalty`), corpus-level
:func:`bleu` and :func:`sentence_bleu`, each returning a :class:`BLEUScore`.

Equal to ``sacrebleu`` 2.6 (``corpus_bleu`` and ``sentence_bleu``) to 1e-9 on every
corpus the property tests generate. Differences from sacreBLEU:

- ``references[i]`` holds the references of ``hypotheses[i]`` (one string, or a list for
  several). sacreBLEU takes reference *streams*, ``refs[k][i]``: the transpose.
- Mismatched lengths and empty corpora raise a ``ValueError``; sacreBLEU's ``zip``
  silently drops the hypotheses that have no reference.
- With ``smooth="add-k"`` the reported ``matches`` and ``totals`` are the raw counts
  (sacreBLEU reports them with ``k`` added).
- The signature's ``version`` names this package, and a maximum order other than 4 is
  written as ``order:N`` (sacreBLEU leaves it out of the signature).

Left out: the ``zh``, ``ja-mecab``, ``ko-mecab`` and SentencePiece (``spm``, ``flores``)
tokenisers, chrF and TER, bootstrap and approximate-randomisation significance tests
(the ``harness`` module bootstraps per-example scores), reference caching across
systems, and sacreBLEU's warning about input that looks already tokenised (BLEU expects
*detokenised* text: feeding it pre-tokenised text changes the score).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import regex

from llmfoundations import __version__
from llmfoundations._validate import check_bool, check_choice, check_int, check_positive, check_str

__all__ = [
    "Tokenize",
    "Smooth",
    "TOKENIZERS",
    "tokenize_13a",
    "tokenize_intl",
    "tokenize_char",
    "ngram_counts",
    "closest_ref_length",
    "brevity_penalty",
    "BLEUScore",
    "bleu",
    "sentence_bleu",
]

Tokenize = Literal["13a", "intl", "char", "none"]
Smooth = Literal["exp", "floor", "add-k", "none"]

#: the value ``"floor"`` and ``"add-k"`` use when ``smooth_value`` is None (sacreBLEU's)
SMOOTH_DEFAULTS: dict[str, float] = {"floor": 0.1, "add-k": 1.0}


# --------------------------------------------------------------------------- tokenisers

# mteval-v13a, step 2: put spaces around the ASCII symbols ``space ! " # $ % &``,
# ``( ) * +``, ``/``, ``: ; < = > ? @``, ``[ \ ] ^ _ ` `` and ``{ | } ~`` (not the
# apostrophe, the hyphen, the period or the comma: those have their own rules).
_SYMBOLS_13A = re.compile(r"([ -&(-+/:-@\[-`{-~])")
_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([.,])")  # "end." -> "end ."
_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([.,])([^0-9])")  # ",a" -> ", a"
_HYPHEN_AFTER_DIGIT = re.compile(r"([0-9])(-)")  # "1990-2000" -> "1990 - 2000"


def tokenize_13a(text: str) -> list[str]:
    """The ``13a`` tokeniser of mteval-v13a (WMT's standard, sacreBLEU's default).

    1. Drop ``<skipped>``, join words hyphenated across lines (``-\\n``), turn newlines
       into spaces and unescape ``&quot; &amp; &lt; &gt;``.
    2. Split off the ASCII symbols (everything but letters, digits, ``' - . ,``).
    3. Split off periods and commas, except between two digits, so ``3.14`` and
       ``1,000`` stay whole; split off a hyphen that follows a digit.
    4. Split on whitespace.

    >>> tokenize_13a("It costs $1,000.50 (about 2-3 days' pay).")
    ['It', 'costs', '$', '1,000.50', '(', 'about', '2', '-', '3', "days'", 'pay', ')', '.']
    """
    check_str("text", text)
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in text:
        text = text.replace("&quot;", '"').replace("&amp;", "&")
        text = text.replace("&lt;", "<").replace("&gt;", ">")
    text = f" {text} "  # the padding lets a period at either end be split off
    text = _SYMBOLS_13A.sub(r" \1 ", text)
    text = _PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", text)
    text = _HYPHEN_AFTER_DIGIT.sub(r"\1 \2 ", text)
    return text.split()


# mteval-v14 "international": Unicode punctuation splits off unless a number follows or
# precedes it; every Unicode symbol splits off.
_PUNCT_AFTER_NON_NUMBER = regex.compile(r"(\P{N})(\p{P})")
_PUNCT_BEFORE_NON_NUMBER = regex.compile(r"(\p{P})(\P{N})")
_SYMBOL = regex.compile(r"(\p{S})")


def tokenize_intl(text: str) -> list[str]:
    """The ``intl`` tokeniser (mteval-v14's international variant): Unicode-aware.

    Punctuation (``\\p{P}``) is split from its neighbours unless a number (``\\p{N}``) is
    on the other side, and symbols (``\\p{S}``: currency, maths, emoji) always. Unlike
    ``13a`` the text is not padded, so a number followed by a final period keeps it
    (``"1999."`` stays one token), as in the original script. The apostrophe, which
    ``13a`` leaves attached (``"days'"``), is punctuation here and splits off.

    >>> tokenize_intl("«Привет», сказал он — 3,5 €.")
    ['«', 'Привет', '»', ',', 'сказал', 'он', '—', '3,5', '€', '.']
    >>> tokenize_intl("It ended in 1999.")
    ['It', 'ended', 'in', '1999.']
    """
    check_str("text", text)
    text = _PUNCT_AFTER_NON_NUMBER.sub(r"\1 \2 ", text)
    text = _PUNCT_BEFORE_NON_NUMBER.sub(r" \1 \2", text)
    text = _SYMBOL.sub(r" \1 ", text)
    return text.split()


def tokenize_char(text: str) -> list[str]:
    """Every character that is not whitespace is a token (for scripts without spaces).

    >>> tokenize_char("猫が 好き")
    ['猫', 'が', '好', 'き']
    """
    check_str("text", text)
    return " ".join(text).split()


def _tokenize_none(text: str) -> list[str]:
    return text.split()


#: tokeniser name -> function ``str -> list[str]``
TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "13a": tokenize_13a,
    "intl": tokenize_intl,
    "char": tokenize_char,
    "none": _tokenize_none,
}


# ----------------------------------------------------------------------------- counting


def ngram_counts(tokens: Sequence[str], max_order: int) -> Counter[tuple[str, ...]]:
    """Counts of every n-gram of ``tokens`` for ``n = 1..max_order``, in one Counter.

    >>> ngram_counts(["a", "b", "a"], 2)
    Counter({('a',): 2, ('b',): 1, ('a', 'b'): 1, ('b', 'a'): 1})
    """
    check_int("max_order", max_order, minimum=1)
    return _ngram_counts(list(tokens), max_order)


def _ngram_counts(tokens: list[str], max_order: int) -> Counter[tuple[str, ...]]:
    """Unchecked core of :func:`ngram_counts`."""
    return Counter(
        tuple(tokens[i : i + n])
        for n in range(1, max_order + 1)
        for i in range(len(tokens) - n + 1)
    )


def closest_ref_length(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """The reference length closest to ``hyp_len``; on a tie, the shorter one.

    >>> closest_ref_length(5, [3, 7, 9])
    3
    """
    check_int("hyp_len", hyp_len, minimum=0)
    if not ref_lens:
        raise ValueError("ref_lens must not be empty")
    for i, r in enumerate(ref_lens):
        check_int(f"ref_lens[{i}]", r, minimum=0)
    return min(ref_lens, key=lambda r: (abs(hyp_len - r), r))


def brevity_penalty(hyp_len: int, ref_len: int) -> float:
    """``1`` if the hypotheses are at least as long as the references, else
    ``exp(1 - ref_len / hyp_len)``; ``0`` for empty hypotheses.

    >>> round(brevity_penalty(4, 7), 4)
    0.4724
    """
    check_int("hyp_len", hyp_len, minimum=0)
    check_int("ref_len", ref_len, minimum=0)
    return _brevity_penalty(hyp_len, ref_len)


def _brevity_penalty(hyp_len: int, ref_len: int) -> float:
    if hyp_len >= ref_len:
        return 1.0
    return math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0


# ---------------------------------------------------------------------------- the score


@dataclass(frozen=True)
class BLEUScore:
    """What :func:`bleu` and :func:`sentence_bleu` return.

    Attributes:
        score: BLEU on a 0-100 scale (above 100 only with a floor ``smooth_value`` > 1).
        precisions: ``p_n`` in percent for ``n = 1..N``, after smoothing (all 0 when no
            unigram matches).
        brevity_penalty: ``BP`` in ``[0, 1]``.
        hyp_len: tokens in the hypotheses (``c``).
        ref_len: tokens in the closest references (``r``).
        matches: clipped n-gram matches per order (raw counts, before smoothing).
        totals: hypothesis n-grams per order.
        signature: sacreBLEU-style ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:...``.

    ``str(score)`` prints it as sacreBLEU does:
    ``BLEU = 30.18 100.0/66.7/50.0/50.0 (BP = 0.472 ratio = 0.571 hyp_len = 4 ref_len = 7)``.
    """

    score: float
    precisions: tuple[float, ...]
    brevity_penalty: float
    hyp_len: int
    ref_len: int
    matches: tuple[int, ...]
    totals: tuple[int, ...]
    signature: str

    def __post_init__(self) -> None:
        orders = {len(self.precisions), len(self.matches), len(self.totals)}
        if len(orders) != 1 or not self.precisions:
            raise ValueError(
                "precisions, matches and totals must have one entry per order, got lengths "
                f"{len(self.precisions)}, {len(self.matches)}, {len(self.totals)}"
            )
        if not (math.isfinite(self.score) and self.score >= 0):
            raise ValueError(f"score must be a finite number >= 0, got {self.score}")
        if not 0 <= self.brevity_penalty <= 1:
            raise ValueError(f"brevity_penalty must be in [0, 1], got {self.brevity_penalty}")
        check_int("hyp_len", self.hyp_len, minimum=0)
        check_int("ref_len", self.ref_len, minimum=0)

    @property
    def ratio(self) -> float:
        """``hyp_len / ref_len`` (0 when there are no reference tokens)."""
        return self.hyp_len / self.ref_len if self.ref_len else 0.0

    def __str__(self) -> str:
        precisions = "/".join(f"{p:.1f}" for p in self.precisions)
        return (
            f"BLEU = {self.score:.2f} {precisions} (BP = {self.brevity_penalty:.3f} "
            f"ratio = {self.ratio:.3f} hyp_len = {self.hyp_len} ref_len = {self.ref_len})"
        )


def bleu(
    hypotheses: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    tokenize: Tokenize = "13a",
    smooth: Smooth = "exp",
    smooth_value: float | None = None,
    lowercase: bool = False,
    max_order: int = 4,
    effective_order: bool = False,
) -> BLEUScore:
    """Corpus-level BLEU of ``hypotheses`` against ``references`` (sacreBLEU's ``corpus_bleu``).

    Args:
        hypotheses: the system outputs, one string per segment (detokenised text).
        references: ``references[i]`` is the reference of ``hypotheses[i]`` (a string) or
            its references (a non-empty list of strings; the number may vary by segment).
        tokenize: ``"13a"`` (default), ``"intl"``, ``"char"`` or ``"none"`` (whitespace).
        smooth: ``"exp"`` (default), ``"floor"``, ``"add-k"`` or ``"none"``.
        smooth_value: for ``"floor"`` (default 0.1) and ``"add-k"`` (default 1) only.
        lowercase: lowercase everything first (``str.lower``).
        max_order: ``N``, the longest n-gram.
        effective_order: average only over the orders the hypotheses have n-grams of.

    Each segment is lowercased (optionally), stripped on the right and tokenised; the
    n-gram statistics of all segments are summed, then turned into one score.

    >>> str(bleu(["The cat sat."], ["The cat sat on the mat."]))
    'BLEU = 30.18 100.0/66.7/50.0/50.0 (BP = 0.472 ratio = 0.571 hyp_len = 4 ref_len = 7)'
    """
    hyps = _check_hypotheses(hypotheses)
    refs = _check_references(references, len(hyps))
    check_choice("tokenize", tokenize, get_args(Tokenize))
    check_choice("smooth", smooth, get_args(Smooth))
    value = _check_smooth_value(smooth, smooth_value)
    check_bool("lowercase", lowercase)
    check_int("max_order", max_order, minimum=1)
    check_bool("effective_order", effective_order)
    return _bleu(hyps, refs, tokenize, smooth, value, lowercase, max_order, effective_order)


def sentence_bleu(
    hypothesis: str,
    references: str | Sequence[str],
    *,
    tokenize: Tokenize = "13a",
    smooth: Smooth = "exp",
    smooth_value: float | None = None,
    lowercase: bool = False,
    max_order: int = 4,
    effective_order: bool = True,
) -> BLEUScore:
    """BLEU of one hypothesis against its reference(s) (sacreBLEU's ``sentence_bleu``).

    The same computation as :func:`bleu` on a one-segment corpus, with
    ``effective_order=True`` by default as in sacreBLEU (a short sentence has no 4-grams).
    BLEU was designed for corpora: one sentence gives a noisy number that depends heavily
    on smoothing, so average sentence scores with care.

    >>> round(sentence_bleu("the cat sat", "the cat sat on the mat").score, 2)
    36.79
    """
    check_str("hypothesis", hypothesis)
    refs = _check_references([references], 1, name="references", single=True)
    check_choice("tokenize", tokenize, get_args(Tokenize))
    check_choice("smooth", smooth, get_args(Smooth))
    value = _check_smooth_value(smooth, smooth_value)
    check_bool("lowercase", lowercase)
    check_int("max_order", max_order, minimum=1)
    check_bool("effective_order", effective_order)
    return _bleu([hypothesis], refs, tokenize, smooth, value, lowercase, max_order, effective_order)


def _bleu(
    hyps: list[str],
    refs: list[list[str]],
    tokenize: str,
    smooth: str,
    smooth_value: float,
    lowercase: bool,
    max_order: int,
    effective_order: bool,
) -> BLEUScore:
    """Unchecked core of :func:`bleu`: sum the segment statistics, then score once."""
    split = TOKENIZERS[tokenize]

    def prepare(text: str) -> list[str]:
        return split((text.lower() if lowercase else text).rstrip())

    matches = [0] * max_order
    totals = [0] * max_order
    hyp_len = ref_len = 0
    for hyp, hyp_refs in zip(hyps, refs, strict=True):
        hyp_tokens = prepare(hyp)
        ref_tokens = [prepare(r) for r in hyp_refs]
        max_ref_counts: Counter[tuple[str, ...]] = Counter()  # clipping: max over references
        for tokens in ref_tokens:
            max_ref_counts |= _ngram_counts(tokens, max_order)
        for gram, count in _ngram_counts(hyp_tokens, max_order).items():
            totals[len(gram) - 1] += count
            matches[len(gram) - 1] += min(count, max_ref_counts[gram])
        hyp_len += len(hyp_tokens)
        ref_len += min((len(t) for t in ref_tokens), key=lambda r: (abs(len(hyp_tokens) - r), r))

    bp = _brevity_penalty(hyp_len, ref_len)
    precisions, reached = _precisions(matches, totals, smooth, smooth_value)
    used = reached if effective_order else max_order
    kept = precisions[:used]
    if min(kept) == 0.0:  # log 0: the geometric mean is 0
        score = 0.0
    else:
        score = bp * math.exp(sum(math.log(p) for p in kept) / used)
    return BLEUScore(
        score=score,
        precisions=tuple(precisions),
        brevity_penalty=bp,
        hyp_len=hyp_len,
        ref_len=ref_len,
        matches=tuple(matches),
        totals=tuple(totals),
        signature=_signature(
            refs, lowercase, effective_order, tokenize, smooth, smooth_value, max_order
        ),
    )


def _precisions(
    matches: list[int], totals: list[int], smooth: str, k: float
) -> tuple[list[float], int]:
    """``p_n`` in percent, smoothed, and the number of orders that have any (smoothed)
    hypothesis n-gram: the *effective order*. Orders without n-grams stay 0, and so do
    all orders when nothing matches at all.

    ``"add-k"`` adds ``k`` to the totals too, so with it every order counts as present:
    an order with no n-gram gets ``k / k``, a precision of 100% (as in sacreBLEU).
    """
    precisions = [0.0] * len(matches)
    if not any(matches):
        return precisions, len(matches)
    reached = len(matches)
    zero_orders = 0  # "exp": the k-th order without a match gets 1 / 2^k
    for i, (m, t) in enumerate(zip(matches, totals, strict=True)):
        if smooth == "add-k" and i > 0:
            m, t = m + k, t + k
        if t == 0:  # no n-grams this long, so none longer either
            reached = i
            break
        if m > 0:
            precisions[i] = 100.0 * m / t
        elif smooth == "exp":
            zero_orders += 1
            precisions[i] = 100.0 / (2**zero_orders * t)
        elif smooth == "floor":
            precisions[i] = 100.0 * k / t
    return precisions, reached


def _signature(
    refs: list[list[str]],
    lowercase: bool,
    effective_order: bool,
    tokenize: str,
    smooth: str,
    smooth_value: float,
    max_order: int,
) -> str:
    counts = {len(r) for r in refs}
    nrefs = counts.pop() if len(counts) == 1 else "var"
    smoothing = f"{smooth}[{smooth_value:.2f}]" if smooth in SMOOTH_DEFAULTS else smooth
    fields = [
        f"nrefs:{nrefs}",
        f"case:{'lc' if lowercase else 'mixed'}",
        f"eff:{'yes' if effective_order else 'no'}",
        f"tok:{tokenize}",
        f"smooth:{smoothing}",
    ]
    if max_order != 4:
        fields.append(f"order:{max_order}")
    fields.append(f"version:llmfoundations-{__version__}")
    return "|".join(fields)


def _check_hypotheses(hypotheses: object) -> list[str]:
    if isinstance(hypotheses, str) or not isinstance(hypotheses, Sequence):
        raise TypeError(
            f"hypotheses must be a list of strings, got {type(hypotheses).__name__}"
            " (for one sentence use sentence_bleu, or wrap it in a list)"
        )
    if len(hypotheses) == 0:
        raise ValueError("hypotheses must not be empty (BLEU of an empty corpus is undefined)")
    for i, h in enumerate(hypotheses):
        check_str(f"hypotheses[{i}]", h)
    return list(hypotheses)


def _check_references(
    references: object, n: int, name: str = "references", single: bool = False
) -> list[list[str]]:
    """One list of reference strings per hypothesis (a lone string is one reference)."""
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(
            f"{name} must be a list with the reference(s) of each hypothesis, "
            f"got {type(references).__name__}"
        )
    if len(references) != n:
        raise ValueError(
            f"{name} must hold one entry per hypothesis ({n}), got {len(references)}; "
            "references[i] holds the references of hypotheses[i] (sacrebleu's "
            "refs[k][i] layout is the transpose)"
        )
    out = []
    for i, refs in enumerate(references):
        where = name if single else f"{name}[{i}]"
        if isinstance(refs, str):
            out.append([refs])
            continue
        if not isinstance(refs, Sequence):
            raise TypeError(f"{where} must be a str or a list of str, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"{where} must hold at least one reference, got an empty list")
        for j, r in enumerate(refs):
            check_str(f"{where}[{j}]", r)
        out.append(list(refs))
    return out


def _check_smooth_value(smooth: str, smooth_value: object) -> float:
    if smooth_value is None:
        return SMOOTH_DEFAULTS.get(smooth, 0.0)
    if smooth not in SMOOTH_DEFAULTS:
        raise ValueError(
            f"smooth_value applies to smooth='floor' or 'add-k' only, got smooth={smooth!r} "
            f"with smooth_value={smooth_value!r}"
        )
    check_positive("smooth_value", smooth_value)
    assert isinstance(smooth_value, (int, float))
    return float(smooth_value)
