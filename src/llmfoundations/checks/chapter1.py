"""Checks for the chapter-1 labs: tokenization (01-1), self-attention (01-2), positions (01-3).

Each check runs the student's function next to a reference on fixed, seeded inputs and
either prints one line of success or raises ``AssertionError`` naming the failing case.
The cases are chosen so that the usual mistakes fail:

- ``count_pairs``: overlapping pairs (``a a a`` holds ``(a, a)`` twice), the last pair;
- ``merge``: overlapping occurrences (``a a a`` -> ``X a``, not ``X X`` or ``a X``);
- ``train_bpe``: the tie rule (the pair seen first wins), running out of pairs;
- ``attention``: a missing ``1/sqrt(D)``, scaling by the value size, the softmax over
  the wrong axis;
- ``causal_attention``: a mask that hides the diagonal, points the wrong way, or is
  applied after the softmax without renormalising;
- ``repeat_kv``: tiling the heads (``h -> h % Hkv``) instead of grouping them
  (``h -> h // n_rep``);
- ``sinusoidal``: sine and cosine swapped, exponent ``i / d`` instead of ``2i / d``;
- ``rope_interleaved``: the split-half pairing, rotating the wrong way, wrong speeds.

Most of these mistakes are also recognised: the failure then ends with a ``Hint:`` line
naming it (attention, causal attention, ``repeat_kv``, ``sinusoidal``). Lab 01-2 asks
for attention written by hand, so ``attention`` and ``causal_attention`` fail a function
that calls ``scaled_dot_product_attention`` (any spelling: ``NO_FUSED_ATTENTION``).

The references are independent of the student's code: plain Python for the tokenizer
exercises, ``torch.nn.functional.scaled_dot_product_attention`` for attention, and the
course's ``positional`` module for the encodings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llmfoundations.positional import apply_rope, sinusoidal_encoding

from .core import Hint, check_callable, compare_with_reference, exercise_check

__all__ = [
    "check_count_pairs",
    "check_merge",
    "check_train_bpe",
    "check_attention",
    "check_causal_attention",
    "check_repeat_kv",
    "check_sinusoidal",
    "check_rope_interleaved",
]

Pair = tuple[int, int]


# ------------------------------------------------------------------ references (01-1)


def reference_count_pairs(ids: Sequence[int]) -> dict[Pair, int]:
    """Every adjacent pair of ``ids`` with its number of occurrences (overlaps count)."""
    counts: dict[Pair, int] = {}
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def reference_merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """A new list with each occurrence of ``pair`` replaced by ``new_id``, left to right."""
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def reference_train_bpe(ids: Sequence[int], n_merges: int, first_id: int = 256) -> dict[Pair, int]:
    """Learn up to ``n_merges`` merges on one sequence: ``{pair: new id}`` in learned order.

    The most frequent pair is merged; ties go to the pair whose first occurrence is
    leftmost. New ids are ``first_id``, ``first_id + 1``, ... Stops early when fewer than
    two ids are left.
    """
    ids = list(ids)
    merges: dict[Pair, int] = {}
    for k in range(n_merges):
        counts = reference_count_pairs(ids)
        if not counts:
            break
        best = max(counts.values())
        pair = next(p for p, c in counts.items() if c == best)  # first seen among the ties
        merges[pair] = first_id + k
        ids = reference_merge(ids, pair, first_id + k)
    return merges


# ------------------------------------------------------------------------------ helpers


def _as_dict(name: str, student: Callable[..., Any]) -> Callable[..., dict]:
    """Wrap ``student`` so a Counter/defaultdict compares as a plain dict."""

    def wrapped(*args: Any, **kwargs: Any) -> dict:
        got = student(*args, **kwargs)
        if not isinstance(got, Mapping):
            raise AssertionError(f"{name} must return a dict, got {type(got).__name__}")
        return dict(got)

    return wrapped


def _as_list_keeping_input(name: str, student: Callable[..., Any]) -> Callable[..., list]:
    """Wrap ``student`` so a tuple compares as a list, and a changed input is reported."""

    def wrapped(ids: list[int], *args: Any, **kwargs: Any) -> list:
        before = list(ids)
        got = student(ids, *args, **kwargs)
        if ids != before:
            raise AssertionError(
                f"{name} changed its input list ({before} became {ids}); return a new list instead"
            )
        if not isinstance(got, (list, tuple)):
            raise AssertionError(f"{name} must return a list, got {type(got).__name__}")
        return list(got)

    return wrapped



def _randn(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=generator)


# -------------------------------------------------------------------- checks (01-1)


@exercise_check
def check_count_pairs(student: Callable[[list[int]], Mapping[Pair, int]]) -> None:
    """Lab 01-1: ``count_pairs(ids)`` -> ``{(a, b): count}`` over adjacent pairs."""
    check_callable("count_pairs", student)
    rng = torch.Generator().manual_seed(11)
    cases = [
        [1, 2, 3, 1, 2],
        [5, 5, 5],  # overlapping: (5, 5) twice
        [5, 5, 5, 5],
        [7],  # no pair at all
        [],
        [1, 2, 1, 2, 1],
        list(b"hello hello"),
        torch.randint(0, 4, (40,), generator=rng).tolist(),
    ]
    compare_with_reference(
        "count_pairs",
        _as_dict("count_pairs", student),
        reference_count_pairs,
        [((ids,), {}) for ids in cases],
    )


@exercise_check
def check_merge(student: Callable[[list[int], Pair, int], list[int]]) -> None:
    """Lab 01-1: ``merge(ids, pair, new_id)`` -> a new list with the pair replaced."""
    check_callable("merge", student)
    rng = torch.Generator().manual_seed(12)
    cases: list[tuple[list[int], Pair, int]] = [
        ([1, 2, 3, 1, 2], (1, 2), 9),
        ([5, 5, 5], (5, 5), 7),  # overlapping: [7, 5]
        ([5, 5, 5, 5], (5, 5), 7),
        ([1, 1, 2], (1, 2), 9),
        ([3, 1, 2], (1, 2), 9),  # the pair at the very end
        ([1, 2, 3], (3, 4), 9),  # not there
        ([4], (4, 4), 9),
        ([], (1, 2), 9),
        ([2, 1, 2, 1], (2, 1), 8),
        (torch.randint(0, 3, (30,), generator=rng).tolist(), (0, 1), 3),
    ]
    compare_with_reference(
        "merge",
        _as_list_keeping_input("merge", student),
        reference_merge,
        [((list(ids), pair, new_id), {}) for ids, pair, new_id in cases],
    )


@exercise_check
def check_train_bpe(student: Callable[..., Mapping[Pair, int]]) -> None:
    """Lab 01-1: ``train_bpe(ids, n_merges, first_id=256)`` -> ``{pair: new_id}``."""
    check_callable("train_bpe", student)
    cases = [
        ((list(b"aaabdaaabac"), 3), {}),
        ((list(b"low lower lowest newer wider"), 8), {}),
        ((list(b"hug pug pun bun hugs"), 6), {"first_id": 1000}),
        ((list(b"abab"), 5), {}),  # runs out of pairs after two merges
        ((list(b"abcd"), 2), {}),  # all counts tie: the leftmost pair wins
        (([3], 4), {}),
    ]
    compare_with_reference(
        "train_bpe", _as_dict("train_bpe", student), reference_train_bpe, cases
    )


# -------------------------------------------------------------------- checks (01-2)


def _reference_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _reference_causal_attention(
    q: Tensor, k: Tensor, v: Tensor
) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


#: Lab 01-2 asks for attention written with ``@``, ``.transpose`` and ``torch.softmax``.
NO_FUSED_ATTENTION = {
    "scaled_dot_product_attention": "write softmax(q k^T / sqrt(D)) v yourself with @, "
    ".transpose(-2, -1) and torch.softmax",
}


def _scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    return q @ k.transpose(-2, -1) * scale  # (..., Tq, Tk)


def _mistakes_of_attention() -> list[Hint]:
    """Known wrong answers of ``attention`` and what to tell the student about each."""

    def d(q: Tensor) -> float:
        return q.shape[-1]

    return [
        (lambda q, k, v: torch.softmax(_scores(q, k, 1.0), -1) @ v,
         "the scores are not scaled: divide q @ k^T by sqrt(D), D = q.shape[-1]."),
        (lambda q, k, v: torch.softmax(_scores(q, k, v.shape[-1] ** -0.5), -1) @ v,
         "the scores are divided by the square root of the *value* size; D is the size of the "
         "queries and keys, q.shape[-1]."),
        (lambda q, k, v: torch.softmax(_scores(q, k, 1 / d(q)), -1) @ v,
         "the scores are divided by D; divide by its square root, math.sqrt(q.shape[-1])."),
        (lambda q, k, v: torch.softmax(_scores(q, k, d(q) ** -0.5), -2) @ v,
         "the softmax runs over the queries (dim=-2); each query's weights over the keys must "
         "sum to 1: softmax over the last dimension, dim=-1."),
        (lambda q, k, v: _scores(q, k, d(q) ** -0.5) @ v,
         "the scores go straight into @ v; turn them into weights with torch.softmax(scores, "
         "dim=-1) first."),
    ]  # fmt: skip


def _masked_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor):
    scores = _scores(q, k, q.shape[-1] ** -0.5).masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _mistakes_of_causal_attention() -> list[Hint]:
    """Known wrong answers of ``causal_attention`` and what to tell the student about each."""

    def ones(q: Tensor) -> Tensor:
        return torch.ones(q.shape[-2], q.shape[-2], dtype=torch.bool)  # (T, T)

    def after_softmax(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        weights = torch.softmax(_scores(q, k, q.shape[-1] ** -0.5), dim=-1)
        return (weights * ones(q).tril()) @ v

    return [
        (lambda q, k, v: _masked_attention(q, k, v, ones(q).tril(-1)),
         "the mask hides the diagonal too: position i may attend to itself, j <= i "
         "(tril(), not tril(-1))."),
        (lambda q, k, v: _masked_attention(q, k, v, ones(q).triu()),
         "the mask points the wrong way: position i may see j <= i, the lower triangle "
         "(tril), not the future (triu)."),
        (after_softmax,
         "the mask is applied after the softmax, so the weights no longer sum to 1: set the "
         "forbidden scores to -inf *before* the softmax."),
        (lambda q, k, v: _masked_attention(q, k, v, ones(q)),
         "there is no mask: every position also sees the future; set the scores of j > i "
         "to -inf before the softmax."),
    ]  # fmt: skip


@exercise_check
def check_attention(student: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """Lab 01-2: ``attention(q, k, v)`` = softmax(q k^T / sqrt(D)) v, no mask."""
    check_callable("attention", student)
    g = torch.Generator().manual_seed(21)
    # (Tq, D), (Tk, D), (Tk, Dv) with leading batch/head axes; Tq != Tk and D != Dv catch
    # transposes, the softmax over the wrong axis and scaling by the wrong size.
    shapes = [
        ((4, 2), (4, 2), (4, 2)),
        ((3, 8), (5, 8), (5, 4)),
        ((2, 6, 16), (2, 6, 16), (2, 6, 16)),
        ((2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 7, 6)),
    ]
    cases = [
        ((_randn(g, *sq), _randn(g, *sk), _randn(g, *sv)), {}) for sq, sk, sv in shapes
    ]
    compare_with_reference("attention", student, _reference_attention, cases, atol=1e-5,
                           rtol=1e-4, hints=_mistakes_of_attention(), forbid=NO_FUSED_ATTENTION)


@exercise_check
def check_causal_attention(
    student: Callable[[Tensor, Tensor, Tensor], Tensor],
) -> None:
    """Lab 01-2: ``causal_attention(q, k, v)``: position ``i`` attends to ``j <= i`` only."""
    check_callable("causal_attention", student)
    g = torch.Generator().manual_seed(22)
    shapes = [(1, 2), (4, 2), (6, 8), (2, 5, 4), (2, 3, 7, 16)]
    cases = []
    for s in shapes:
        v_shape = (*s[:-1], s[-1] + 2)  # Dv != D
        cases.append(((_randn(g, *s), _randn(g, *s), _randn(g, *v_shape)), {}))
    compare_with_reference(
        "causal_attention", student, _reference_causal_attention, cases, atol=1e-5, rtol=1e-4,
        hints=_mistakes_of_causal_attention(), forbid=NO_FUSED_ATTENTION,
    )


def _reference_repeat_kv(k: Tensor, n_rep: int) -> Tensor:
    return torch.repeat_interleave(k, n_rep, dim=1)  # head h reads KV head h // n_rep


@exercise_check
def check_repeat_kv(student: Callable[[Tensor, int], Tensor]) -> None:
    """Lab 01-2: ``repeat_kv(k, n_rep)``: ``(B, Hkv, T, D)`` -> ``(B, Hkv * n_rep, T, D)``.

    Query head ``h`` must see key/value head ``h // n_rep`` (the layout of
    ``MultiHeadAttention`` and of Hugging Face models).
    """
    check_callable("repeat_kv", student)
    g = torch.Generator().manual_seed(23)
    cases = [
        ((_randn(g, 1, 2, 3, 4), 2), {}),
        ((_randn(g, 2, 4, 5, 8), 2), {}),
        ((_randn(g, 1, 3, 2, 2), 3), {}),
        ((_randn(g, 2, 1, 4, 4), 8), {}),  # multi-query: one KV head for all
        ((_randn(g, 1, 2, 3, 4), 1), {}),  # plain multi-head: unchanged
    ]
    hints = [
        (lambda k, n_rep: k.repeat(1, n_rep, 1, 1),
         "the heads are tiled ([k0, k1, k0, k1]); query head h must read KV head h // n_rep, "
         "so each head is repeated in place: [k0, k0, k1, k1] (torch.repeat_interleave(k, "
         "n_rep, dim=1))."),
        (lambda k, n_rep: torch.repeat_interleave(k, n_rep, dim=2),
         "the positions are repeated (dim=2); repeat the heads, dim=1."),
        (lambda k, n_rep: k,
         "the keys come back unchanged: each of the Hkv heads must appear n_rep times."),
    ]  # fmt: skip
    compare_with_reference("repeat_kv", student, _reference_repeat_kv, cases, atol=0.0, rtol=0.0,
                           hints=hints)


# -------------------------------------------------------------------- checks (01-3)


@exercise_check
def check_sinusoidal(student: Callable[[int, int], Tensor]) -> None:
    """Lab 01-3: ``sinusoidal(n_positions, d_model)``, the 2017 table ``(T, C)``."""
    check_callable("sinusoidal", student)
    cases = [((1, 2), {}), ((4, 2), {}), ((6, 4), {}), ((50, 16), {}), ((20, 64), {})]
    compare_with_reference(
        "sinusoidal", student, sinusoidal_encoding, cases, atol=1e-4, rtol=1e-4,
        hints=_mistakes_of_sinusoidal(),
    )


def _sinusoidal_from(angle: Tensor, layout: str) -> Tensor:
    """A table from angles (T, C/2): sin/cos interleaved, swapped, or concatenated."""
    sin, cos = angle.sin(), angle.cos()
    if layout == "swapped":
        sin, cos = cos, sin
    if layout == "concatenated":
        return torch.cat((sin, cos), dim=-1).float()
    return torch.stack((sin, cos), dim=-1).flatten(1).float()


def _mistakes_of_sinusoidal() -> list[Hint]:
    """Known wrong answers of ``sinusoidal`` (even ``d_model``) and what to say about each."""

    def angle(n_positions: int, d_model: int, two_i: bool = True) -> Tensor:
        pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (T, 1)
        i = torch.arange(d_model // 2, dtype=torch.float64)  # (C/2,)
        return pos / 10000.0 ** ((2 * i if two_i else i) / d_model)  # (T, C/2)

    return [
        (lambda t, c: _sinusoidal_from(angle(t, c), "swapped"),
         "sine and cosine are swapped: even columns 2i hold the sine, odd columns 2i + 1 "
         "the cosine."),
        (lambda t, c: _sinusoidal_from(angle(t, c, two_i=False), "interleaved"),
         "the exponent is i / d_model; the pair (2i, 2i + 1) turns at p / 10000^(2i / d_model)."),
        (lambda t, c: _sinusoidal_from(angle(t, c), "concatenated"),
         "the sines and cosines are concatenated ([sin ... | cos ...]); they alternate: "
         "column 2i a sine, column 2i + 1 the cosine of the same angle."),
    ]  # fmt: skip


def _reference_rope_interleaved(
    x: Tensor, positions: Tensor, theta: float = 10000.0
) -> Tensor:
    return apply_rope(x, positions, theta, interleaved=True)


@exercise_check
def check_rope_interleaved(student: Callable[..., Tensor]) -> None:
    """Lab 01-3: ``rope_interleaved(x, positions, theta=10000.0)``, pairs ``(2i, 2i+1)``."""
    check_callable("rope_interleaved", student)
    g = torch.Generator().manual_seed(31)
    cases = [
        ((_randn(g, 3, 2), torch.arange(3)), {}),
        ((_randn(g, 5, 4), torch.arange(5)), {}),
        ((_randn(g, 2, 6, 8), torch.arange(6)), {}),
        ((_randn(g, 1, 2, 4, 16), torch.tensor([7, 8, 9, 10])), {}),
        ((_randn(g, 4, 8), torch.arange(4)), {"theta": 100.0}),
        ((_randn(g, 2, 4), torch.tensor([0, 1000])), {"theta": 10.0}),
    ]
    compare_with_reference(
        "rope_interleaved", student, _reference_rope_interleaved, cases, atol=1e-4, rtol=1e-4
    )

