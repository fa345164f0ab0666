"""The chapter-4 checks grade: right answers pass, plausible wrong ones fail.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.

The references inside the checks are held against independent ones too: a
descending-sort nucleus filter written here, ``collections.Counter`` for the vote, the
chat template for the few-shot conversation, and exact hand-worked values.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations import checks
from llmfoundations.checks import sampling as ch4
from llmfoundations.pretrained import apply_chat_template

# ----------------------------------------------------------------- 04-1


def good_temperature_softmax(logits, temperature):
    z = logits / temperature
    z = z - z.max(dim=-1, keepdim=True).values
    return z.exp() / z.exp().sum(dim=-1, keepdim=True)


def test_temperature_softmax_check_passes_a_correct_answer(capsys):
    checks.check_temperature_softmax(good_temperature_softmax)
    assert "✔ temperature_softmax: all 6 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong",
    [
        lambda z, t: torch.softmax(z * t, dim=-1),  # multiplies by T
        lambda z, t: torch.softmax(z, dim=-1),  # ignores T
        lambda z, t: torch.softmax(z / t, dim=0),  # normalises over the batch
        lambda z, t: (z / t).exp() / (z / t).exp().sum(-1, keepdim=True),  # overflows at 1000
        lambda z, t: z / t,  # logits, not probabilities
    ],
)
def test_temperature_softmax_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="temperature_softmax"):
        checks.check_temperature_softmax(wrong)


def good_top_k(logits, k):
    values, indices = torch.topk(logits, k, dim=-1)
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(-1, indices, values)


def test_top_k_check_passes_a_correct_answer(capsys):
    checks.check_top_k(good_top_k)
    assert "✔ top_k: all 6 cases" in capsys.readouterr().out


def _top_k_in_place(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    logits[logits < kth] = float("-inf")
    return logits


@pytest.mark.parametrize(
    "wrong",
    [
        lambda z, k: z.masked_fill(z > torch.topk(-z, k, dim=-1).values.neg()[:, -1:], -math.inf),
        lambda z, k: good_top_k(z, max(k - 1, 1)),  # one too few
        lambda z, k: good_top_k(z, min(k + 1, z.shape[-1])),  # one too many
        lambda z, k: good_top_k(z, k).nan_to_num(neginf=0.0),  # 0 instead of -inf
        lambda z, k: torch.softmax(good_top_k(z, k), dim=-1),  # probabilities
        _top_k_in_place,
    ],
)
def test_top_k_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="top_k"):
        checks.check_top_k(wrong)


# ----------------------------------------------------------------- 04-2


def good_top_p(logits, p):
    """Sort descending; keep a token if the mass *before* it is still below p."""
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep_sorted = before < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def test_top_p_check_passes_a_correct_answer(capsys):
    checks.check_top_p(good_top_p)
    assert "✔ top_p: all 9 cases" in capsys.readouterr().out


def test_top_p_cases_stay_away_from_the_boundary():
    """No cumulative probability lies within 5e-3 of p, so float rounding cannot flip a token."""
    for (logits, p), _ in ch4.top_p_cases():
        sorted_probs = torch.softmax(logits.double(), dim=-1).sort(dim=-1, descending=True).values
        cumulative = sorted_probs.cumsum(dim=-1)
        assert (cumulative - p).abs().min() > 5e-3, (logits, p)


def test_top_p_hand_case_keeps_the_boundary_token():
    logits = torch.tensor([[0.05, 0.5, 0.1, 0.3, 0.05]]).log()
    kept = torch.isfinite(ch4.top_p_filter(logits, 0.6))
    assert kept.tolist() == [[False, True, False, True, False]]  # .5 + .3 >= .6


def _top_p_without_boundary(logits, p):
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    keep_sorted = sorted_probs.cumsum(dim=-1) <= p
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def _top_p_unsorted(logits, p):
    probs = torch.softmax(logits, dim=-1)
    keep = probs.cumsum(dim=-1) - probs < p
    return logits.masked_fill(~keep, float("-inf"))


@pytest.mark.parametrize(
    "wrong",
    [
        _top_p_without_boundary,  # drops the token that carries the mass over p
        _top_p_unsorted,  # accumulates in vocabulary order
        lambda z, p: z.masked_fill(torch.softmax(z, -1) < p, float("-inf")),  # prob >= p
        lambda z, p: torch.softmax(good_top_p(z, p), dim=-1),  # probabilities
    ],
)
def test_top_p_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="top_p"):
        checks.check_top_p(wrong)


@settings(max_examples=40, deadline=None)
@given(
    probs=st.lists(st.integers(1, 50), min_size=2, max_size=12),
    p=st.sampled_from([0.25, 0.5, 0.7, 0.9, 0.99]),
)
def test_nucleus_of_the_reference_is_the_smallest_set_reaching_p(probs, p):
    """Integer weights / their sum: the kept mass reaches p, one token fewer would not."""
    weights = torch.tensor([probs], dtype=torch.float64)
    logits = (weights / weights.sum()).log()
    kept = torch.isfinite(ch4.top_p_filter(logits, p))[0]
    mass = (weights[0] / weights.sum())[kept]
    assert float(mass.sum()) >= p - 1e-12
    assert float(mass.sum() - mass.min()) < p + 1e-12
    # every kept token is at least as likely as every dropped one
    if (~kept).any():
        assert float(weights[0][kept].min()) >= float(weights[0][~kept].max())


def good_distinct_n(texts, n):
    grams = []
    for text in texts:
        words = text.split()
        grams += [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def test_distinct_n_check_passes_a_correct_answer(capsys):
    checks.check_distinct_n(good_distinct_n)
    assert "✔ distinct_n: all 8 cases" in capsys.readouterr().out


def _distinct_per_text(texts, n):
    ratios = [good_distinct_n([t], n) for t in texts if len(t.split()) >= n]
    return sum(ratios) / len(ratios) if ratios else 0.0


@pytest.mark.parametrize(
    "wrong",
    [
        _distinct_per_text,  # averages per-text ratios
        lambda texts, n: good_distinct_n([" ".join(texts)], n),  # n-grams cross texts
        lambda texts, n: good_distinct_n(texts, 1),  # ignores n
        lambda texts, n: len({w for t in texts for w in t.split()}) / 10,  # nonsense
        lambda texts, n: int(good_distinct_n(texts, n) * 100),  # an int percentage
    ],
)
def test_distinct_n_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="distinct_n"):
        checks.check_distinct_n(wrong)


def test_distinct_n_hand_values():
    texts = ["the cat sat on the mat", "the cat sat on the sofa", "a dog ran in the park"]
    assert ch4.distinct_n(texts, 2) == pytest.approx(11 / 15)  # 4 bigrams repeat
    assert ch4.distinct_n(["short", "tiny"], 2) == 0.0


# ----------------------------------------------------------------- 04-3


def good_few_shot_messages(instruction, examples, query):
    messages = []
    if instruction:
        messages.append({"role": "system", "content": instruction})
    for q, a in examples:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return messages + [{"role": "user", "content": query}]


def test_few_shot_messages_check_passes_a_correct_answer(capsys):
    checks.check_few_shot_messages(good_few_shot_messages)
    assert "✔ few_shot_messages: all 5 cases" in capsys.readouterr().out


def test_few_shot_messages_render_as_a_chat_history():
    messages = ch4.reference_few_shot_messages("Add.", [("1+1", "2")], "2+3")
    text = apply_chat_template(messages)
    assert text == (
        "<|im_start|>system\nAdd.<|im_end|>\n"
        "<|im_start|>user\n1+1<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
        "<|im_start|>user\n2+3<|im_end|>\n<|im_start|>assistant\n"
    )


def _all_in_one_user_message(instruction, examples, query):
    shots = "\n".join(f"{q} -> {a}" for q, a in examples)
    return [{"role": "system", "content": instruction}, {"role": "user", "content": f"{shots}\n{query}"}]


@pytest.mark.parametrize(
    "wrong",
    [
        _all_in_one_user_message,
        lambda i, ex, q: [
            m if m["role"] != "assistant" else {"role": "user", "content": m["content"]}
            for m in good_few_shot_messages(i, ex, q)
        ],  # answers spoken by the user
        lambda i, ex, q: [{"role": "system", "content": i}] + good_few_shot_messages("", ex, q),
        lambda i, ex, q: good_few_shot_messages(i, ex, q)[:-1],  # the query is missing
        lambda i, ex, q: good_few_shot_messages(i, list(reversed(ex)), q),  # order
        lambda i, ex, q: tuple(good_few_shot_messages(i, ex, q)),  # not a list
    ],
)
def test_few_shot_messages_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="few_shot_messages"):
        checks.check_few_shot_messages(wrong)


def good_majority_vote(answers):
    counts = Counter(a for a in answers if a)
    return counts.most_common(1)[0][0] if counts else ""


def test_majority_vote_check_passes_a_correct_answer(capsys):
    checks.check_majority_vote(good_majority_vote)
    assert "✔ majority_vote: all 8 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong",
    [
        lambda a: Counter(a).most_common(1)[0][0] if a else "",  # empty answers vote
        lambda a: max(sorted(set(x for x in a if x)), key=a.count, default=""),  # alphabetical ties
        lambda a: max(reversed([x for x in a if x]), key=a.count, default=""),  # last seen wins
        lambda a: (a or [""])[0],  # the first answer, no vote
        lambda a: Counter(x for x in a if x).most_common(1)[0][1] if any(a) else 0,  # a count
    ],
)
def test_majority_vote_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="majority_vote"):
        checks.check_majority_vote(wrong)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["", "1", "2", "3", "10"]), max_size=12))
def test_majority_vote_reference_matches_counter(answers):
    assert ch4.reference_majority_vote(answers) == good_majority_vote(answers)


def test_temperature_softmax_reference_is_a_distribution():
    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    for t in (0.1, 1.0, 5.0):
        p = ch4._reference_temperature_softmax(logits, t)
        torch.testing.assert_close(p.sum(-1), torch.ones(3), atol=1e-6, rtol=0)
    # T -> large: uniform; T -> small: one-hot on the argmax
    flat = ch4._reference_temperature_softmax(logits, 1e6)
    torch.testing.assert_close(flat, torch.full((3, 7), 1 / 7), atol=1e-5, rtol=0)
    sharp = ch4._reference_temperature_softmax(logits, 1e-3)
    assert torch.equal(sharp.argmax(-1), logits.argmax(-1))
    assert math.isclose(float(sharp.max(-1).values.min()), 1.0, abs_tol=1e-6)
