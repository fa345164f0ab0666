"""Tests of llmfoundations.evaluation.judge.

On a tiny random Llama with a byte-level tokenizer: shapes and invariants of the option
probabilities (batched and left-padded equals one prompt at a time and a plain forward
pass), the swap test (swapping the two answers swaps the two games exactly; identical
answers get a debiased preference of exactly 1/2), hand-made judgements for the
consistency rules, and the errors. One slow test runs SmolLM2 as the judge.
"""

from __future__ import annotations

import math

import pytest
import torch

from llmfoundations.evaluation.judge import (
    PAIR_OPTIONS,
    POINTWISE_TEMPLATE,
    SCORE_OPTIONS,
    YES_NO_OPTIONS,
    PairwiseJudgement,
    PointwiseJudgement,
    YesNoJudgement,
    judge_pairwise,
    judge_pointwise,
    judge_yes_no,
    option_ids,
    option_logprobs,
    position_consistency,
    render_prompt,
)
from llmfoundations.models import DecoderLM, ModelConfig
from llmfoundations.tokenizer import BPETokenizer

CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QUESTIONS = ["What is 2 + 3?", "Name a colour.", "Capital of France?"]
GOOD = ["5", "Blue, like the sky on a clear day.", "Paris"]
BAD = ["6", "Seven.", "London is the capital of France."]


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    """Bytes, plus merges that make "Yes" and "No" single tokens, plus ChatML's specials."""
    vocab = {i: bytes([i]) for i in range(256)}
    merges = [(b"Y", b"e"), (b"Ye", b"s"), (b"N", b"o")]
    for k, (a, b) in enumerate(merges):
        vocab[256 + k] = a + b
    return BPETokenizer(vocab, merges, special_tokens=CHATML)


@pytest.fixture(scope="module")
def model(tokenizer) -> DecoderLM:
    torch.manual_seed(0)
    config = ModelConfig.llama(
        tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4, max_seq_len=1024, init_std=0.2
    )
    return DecoderLM(config).eval()


def _direct(model, tokenizer, prompt, options):
    """log P(option | prompt) from one plain forward pass without padding."""
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.no_grad():
        logprobs = model(ids).logits[0, -1].log_softmax(-1)
    return logprobs[option_ids(tokenizer, options)]


# ----------------------------------------------------------------------------- the primitive


def test_option_logprobs_equal_a_plain_forward_pass_in_any_batch(model, tokenizer):
    prompts = ["Hi", "A longer prompt, so that the others are padded on the left.", "Q?"]
    expected = torch.stack([_direct(model, tokenizer, p, PAIR_OPTIONS) for p in prompts])
    for batch_size in (1, 2, 8):
        got = option_logprobs(model, tokenizer, prompts, PAIR_OPTIONS, batch_size=batch_size)
        assert got.shape == (3, 2) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert bool((got.exp().sum(-1) <= 1 + 1e-6).all())


def test_option_logprobs_restore_training_mode(model, tokenizer):
    model.train()
    option_logprobs(model, tokenizer, ["x"], PAIR_OPTIONS)
    assert model.training
    model.eval()


def test_render_prompt_is_one_chatml_user_turn():
    text = render_prompt("Q: {question}", None, question="2+2?")
    assert text == "<|im_start|>user\nQ: 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt("x", "Be strict.").startswith("<|im_start|>system\nBe strict.")


# ----------------------------------------------------------------------------- pointwise


def test_pointwise_judgement_invariants(model, tokenizer):
    j = judge_pointwise(model, tokenizer, QUESTIONS, GOOD, system_prompt=None)
    assert j.logprobs.shape == (3, 5)
    torch.testing.assert_close(j.probs.sum(-1), torch.ones(3))
    assert bool(((j.mass > 0) & (j.mass <= 1)).all())
    by_hand = (j.probs * torch.tensor([1.0, 2, 3, 4, 5])).sum(-1)
    torch.testing.assert_close(j.expected_score, by_hand)
    assert bool(((j.expected_score >= 1) & (j.expected_score <= 5)).all())
    assert j.best_score.tolist() == (j.probs.argmax(-1) + 1).tolist()
    prompt = render_prompt(POINTWISE_TEMPLATE, None, question=QUESTIONS[1], answer=GOOD[1])
    torch.testing.assert_close(
        j.logprobs[1], _direct(model, tokenizer, prompt, SCORE_OPTIONS), atol=1e-5, rtol=1e-5
    )


def test_expected_score_by_hand():
    probs = torch.tensor([[0.1, 0.2, 0.4, 0.2, 0.1], [0.0, 0.0, 0.0, 0.5, 0.5]])
    j = PointwiseJudgement(probs.log())
    torch.testing.assert_close(j.expected_score, torch.tensor([3.0, 4.5]))
    assert j.best_score.tolist() == [3, 4]  # the lower score wins a tie


# ----------------------------------------------------------------------------- pairwise: the swap test


def test_swapping_the_answers_swaps_the_two_games(model, tokenizer):
    forward = judge_pairwise(model, tokenizer, QUESTIONS, GOOD, BAD, system_prompt=None)
    backward = judge_pairwise(model, tokenizer, QUESTIONS, BAD, GOOD, system_prompt=None)
    # (good as A, bad as B) is the same prompt in both calls
    torch.testing.assert_close(forward.logprobs_12, backward.logprobs_21, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(forward.logprobs_21, backward.logprobs_12, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(forward.p_first, 1 - backward.p_first, atol=1e-5, rtol=0)
    torch.testing.assert_close(forward.p_position_a, backward.p_position_a, atol=1e-5, rtol=0)
    mirror = {"first": "second", "second": "first", "inconsistent": "inconsistent"}
    assert backward.verdicts == tuple(mirror[v] for v in forward.verdicts)
    assert position_consistency(forward) == position_consistency(backward)


def test_identical_answers_get_a_debiased_preference_of_one_half(model, tokenizer):
    j = judge_pairwise(model, tokenizer, QUESTIONS, GOOD, GOOD, system_prompt=None)
    torch.testing.assert_close(j.p_first, torch.full((3,), 0.5), atol=1e-6, rtol=0)
    # whatever the judge prefers here is pure position: P(A) averaged over both orders
    torch.testing.assert_close(j.p_position_a, j.p_first_12, atol=1e-6, rtol=0)
    assert not j.consistent.any()  # P(A) > 1/2 in one game means P(B) > 1/2 in the other


def test_consistency_rules_by_hand():
    def log(p):
        return torch.tensor(p).log()

    j = PairwiseJudgement(
        logprobs_12=log([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.5, 0.5]]),
        logprobs_21=log([[0.2, 0.8], [0.8, 0.2], [0.6, 0.4], [0.5, 0.5]]),
    )
    torch.testing.assert_close(j.p_first_12, torch.tensor([0.9, 0.9, 0.3, 0.5]))
    torch.testing.assert_close(j.p_first_21, torch.tensor([0.8, 0.2, 0.4, 0.5]))
    assert j.verdicts == ("first", "inconsistent", "second", "inconsistent")
    assert j.consistent.tolist() == [True, False, True, False]
    assert position_consistency(j) == 0.5
    # the second pair: A wins in both orders, 0.9 and 0.8, so P(A) averages to 0.85
    assert j.p_position_a[1].item() == pytest.approx(0.85)
    assert j.p_first[1].item() == pytest.approx(0.55)


def test_yes_no_judgement(model, tokenizer):
    j = judge_yes_no(model, tokenizer, QUESTIONS, GOOD, "The answer is short.", system_prompt=None)
    assert isinstance(j, YesNoJudgement) and j.logprobs.shape == (3, 2)
    assert bool(((j.p_yes >= 0) & (j.p_yes <= 1)).all())
    assert option_ids(tokenizer, YES_NO_OPTIONS) == [257, 258]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, t: option_ids(t, ["AB", "C"]), ValueError, r"options\[0\] \('AB'\) must be a single"),
        (lambda m, t: option_ids(t, ["A", "A"]), ValueError, "different tokens"),
        (lambda m, t: option_ids(t, "AB"), ValueError, "at least 2 strings"),
        (lambda m, t: option_ids(object(), ["A", "B"]), TypeError, "tokenizer must have an encode"),
        (lambda m, t: option_logprobs(torch.nn.Linear(2, 2), t, ["x"], "AB"), TypeError, "DecoderLM"),
        (lambda m, t: option_logprobs(m, t, [], PAIR_OPTIONS), ValueError, "prompts must not be empty"),
        (lambda m, t: option_logprobs(m, t, [""], PAIR_OPTIONS), ValueError, r"prompts\[0\] encodes"),
        (lambda m, t: option_logprobs(m, t, ["x"], PAIR_OPTIONS, batch_size=0), ValueError, "batch_size"),
        (lambda m, t: judge_pointwise(m, t, ["q", "r"], ["a"]), ValueError, "questions has 2, answers has 1"),
        (lambda m, t: judge_pointwise(m, t, "q", "a"), TypeError, "questions must be a list"),
        (lambda m, t: judge_pairwise(m, t, ["q"], ["a"], [3]), TypeError, r"answers_2\[0\] must be a str"),
        (lambda m, t: judge_yes_no(m, t, ["q"], ["a"], " "), ValueError, "criterion must be"),
        (lambda m, t: render_prompt("{question} {answer}", question="q"), ValueError, "answer"),
        (lambda m, t: PointwiseJudgement(torch.zeros(2, 4)), ValueError, r"shape \(B, 5\)"),
        (lambda m, t: PairwiseJudgement(torch.zeros(2, 2), torch.zeros(3, 2)), ValueError, "same shape"),
        (lambda m, t: YesNoJudgement(torch.zeros(2)), ValueError, "logprobs must have 2 dimensions"),
        (lambda m, t: position_consistency("x"), TypeError, "judgement must be a PairwiseJudgement"),
    ],
)  # fmt: skip
def test_errors_name_the_argument(model, tokenizer, call, error, match):
    with pytest.raises(error, match=match):
        call(model, tokenizer)


def test_judgements_are_frozen():
    j = PointwiseJudgement(torch.zeros(1, 5))
    with pytest.raises(AttributeError):
        j.logprobs = torch.ones(1, 5)  # type: ignore[misc]


# ----------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_as_a_judge(smollm2_path):
    """The real model: every option is one token, the prompts put a real share of the
    probability on the allowed replies, batched equals one at a time, and the swap test
    holds on identical answers."""
    from llmfoundations.pretrained import load_smollm2

    model, tokenizer = load_smollm2(path=smollm2_path)
    for options in (SCORE_OPTIONS, PAIR_OPTIONS, YES_NO_OPTIONS):
        assert len(option_ids(tokenizer, options)) == len(options)
    questions, good = ["What is 2 + 3?", "What is the capital of France?"], ["5", "Paris"]
    points = judge_pointwise(model, tokenizer, questions, good)
    assert bool(((points.mass > 0.05) & (points.mass <= 1)).all())
    assert bool(((points.expected_score >= 1) & (points.expected_score <= 5)).all())
    prompt = render_prompt(POINTWISE_TEMPLATE, question=questions[1], answer=good[1])
    single = option_logprobs(model, tokenizer, [prompt], SCORE_OPTIONS)
    torch.testing.assert_close(single[0], points.logprobs[1], atol=1e-4, rtol=1e-4)
    pairs = judge_pairwise(model, tokenizer, questions[:1], good[:1], good[:1])
    assert math.isclose(pairs.p_first.item(), 0.5, abs_tol=1e-5)
    assert (pairs.logprobs_12.exp().sum() > 0.05).item()
