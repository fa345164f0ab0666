"""Tests of alignment/rlaif.py: AI preference labels judged in both orders."""

from __future__ import annotations

import math

import pytest
import torch

from llmfoundations.alignment.rlaif import (
    TIE,
    AIPreferences,
    ai_preferences,
    label_accuracy,
    preference_pairs,
)
from llmfoundations.models import DecoderLM, ModelConfig
from llmfoundations.tokenizer import BPETokenizer

QUESTIONS = ["What is 2 + 3?", "Name a colour.", "Capital of France?"]
ANSWERS_1 = ["5", "blue", "Lyon, I think, or maybe Paris"]
ANSWERS_2 = ["six", "a car", "Paris"]


def _byte_tokenizer() -> BPETokenizer:
    return BPETokenizer({i: bytes([i]) for i in range(256)}, [])


def _model(seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig.llama(vocab_size=256, max_seq_len=512, init_std=0.1)).eval()


def _prefs(p_ab: list[float], p_ba: list[float]) -> AIPreferences:
    """Preferences with P(answer 1 better) = p_ab shown as A, p_ba shown as B."""
    ab = torch.tensor([[math.log(p), math.log(1 - p)] for p in p_ab])
    ba = torch.tensor([[math.log(1 - p), math.log(p)] for p in p_ba])
    return AIPreferences(logp_ab=ab, logp_ba=ba)


def test_labels_follow_both_orders_and_ties_when_they_disagree():
    prefs = _prefs([0.9, 0.2, 0.8, 0.3, 0.5], [0.7, 0.1, 0.3, 0.6, 0.9])
    assert prefs.labels.tolist() == [1, 0, TIE, TIE, TIE]
    torch.testing.assert_close(prefs.p_first, torch.tensor([0.8, 0.15, 0.55, 0.45, 0.7]))
    # a judge that always answers "A" with P = 0.8 prefers whatever is shown first
    always_a = AIPreferences(
        logp_ab=torch.log(torch.tensor([[0.8, 0.2]] * 3)),
        logp_ba=torch.log(torch.tensor([[0.8, 0.2]] * 3)),
    )
    assert always_a.labels.tolist() == [TIE] * 3
    torch.testing.assert_close(always_a.p_letter_a, torch.full((3,), 0.8))
    torch.testing.assert_close(always_a.p_first, torch.full((3,), 0.5))


def test_equals_the_chapter_5_judge_on_a_tiny_model():
    judge = pytest.importorskip("llmfoundations.evaluation.judge")
    model, tok = _model(), _byte_tokenizer()
    ours = ai_preferences(model, tok, QUESTIONS, ANSWERS_1, ANSWERS_2, system_prompt=None,
                          batch_size=2)
    ref = judge.judge_pairwise(model, tok, QUESTIONS, ANSWERS_1, ANSWERS_2, system_prompt=None)
    torch.testing.assert_close(ours.logp_ab, ref.logprobs_12, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.logp_ba, ref.logprobs_21, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.p_first, ref.p_first, rtol=0, atol=1e-5)
    assert not model.training


def test_batch_size_does_not_change_the_verdicts():
    model, tok = _model(1), _byte_tokenizer()
    one = ai_preferences(model, tok, QUESTIONS, ANSWERS_1, ANSWERS_2, batch_size=1)
    all_ = ai_preferences(model, tok, QUESTIONS, ANSWERS_1, ANSWERS_2, batch_size=8)
    torch.testing.assert_close(one.logp_ab, all_.logp_ab, rtol=0, atol=1e-5)
    torch.testing.assert_close(one.logp_ba, all_.logp_ba, rtol=0, atol=1e-5)


def test_swapping_the_answers_mirrors_the_preferences():
    model, tok = _model(2), _byte_tokenizer()
    fwd = ai_preferences(model, tok, QUESTIONS, ANSWERS_1, ANSWERS_2)
    rev = ai_preferences(model, tok, QUESTIONS, ANSWERS_2, ANSWERS_1)
    torch.testing.assert_close(rev.p_first, 1 - fwd.p_first, rtol=0, atol=1e-5)
    flipped = torch.where(fwd.labels == TIE, TIE, 1 - fwd.labels)
    assert torch.equal(rev.labels, flipped)


def test_preference_pairs_and_label_accuracy():
    pairs = preference_pairs(["p1", "p2", "p3"], ["a", "b", "c"], ["x", "y", "z"], [1, TIE, 0])
    assert pairs == [("p1", "a", "x"), ("p3", "z", "c")]
    acc = label_accuracy(torch.tensor([1, 0, TIE, 1, 0]), [1, 1, 0, 1, 0])
    assert acc.accuracy == pytest.approx(3 / 4)
    assert acc.tie_rate == pytest.approx(1 / 5)
    assert acc.coverage_accuracy == pytest.approx(3 / 5)
    assert label_accuracy([TIE, TIE], [0, 1]).accuracy is None


def test_bad_input_raises():
    model, tok = _model(), _byte_tokenizer()
    with pytest.raises(ValueError, match="one length"):
        ai_preferences(model, tok, QUESTIONS, ANSWERS_1[:2], ANSWERS_2)
    with pytest.raises(ValueError, match="non-empty"):
        ai_preferences(model, tok, [], [], [])
    with pytest.raises(TypeError, match="questions"):
        ai_preferences(model, tok, "What?", ["a"], ["b"])
    with pytest.raises(TypeError, match="model"):
        ai_preferences(torch.nn.Linear(2, 2), tok, QUESTIONS, ANSWERS_1, ANSWERS_2)
    with pytest.raises(ValueError, match="batch_size"):
        ai_preferences(model, tok, QUESTIONS, ANSWERS_1, ANSWERS_2, batch_size=0)
    with pytest.raises(ValueError, match="labels must be 1, 0 or TIE"):
        preference_pairs(["p"], ["a"], ["b"], [2])
    with pytest.raises(ValueError, match="one length"):
        preference_pairs(["p"], ["a"], ["b"], [1, 0])
    with pytest.raises(ValueError, match="truth"):
        label_accuracy([1], [2])
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        AIPreferences(logp_ab=torch.zeros(3, 3), logp_ba=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="same shape"):
        AIPreferences(logp_ab=torch.zeros(3, 2), logp_ba=torch.zeros(2, 2))
