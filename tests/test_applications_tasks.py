"""Tests of applications/tasks.py: label scoring against a naive loop and against
transformers, calibration against the paper's formula, prompts exact, lead-k exact, tasks
run through chapter 5's harness."""

from __future__ import annotations

import math

import pytest
import torch

from llmfoundations.applications.tasks import (
    NLI_LABELS,
    NLI_VERBALIZERS,
    LabelSet,
    calibrate,
    classification_task,
    classify,
    content_free_logprobs,
    few_shot_prompt,
    label_system,
    lead_k,
    lead_k_system,
    nli_prompt,
    score_continuations,
    score_continuations_reference,
    split_sentences,
    summarization_prompt,
    summarization_task,
    translation_prompt,
    translation_task,
)
from llmfoundations.evaluation.bleu import sentence_bleu
from llmfoundations.evaluation.harness import evaluate
from llmfoundations.evaluation.rouge import rouge_l
from llmfoundations.models import DecoderLM, ModelConfig

V = 128
TOL = dict(atol=1e-4, rtol=1e-4)  # fp32 forward passes of different batch shapes


class CharTokenizer:
    """One token per character (code point mod V): every word is a multi-token label."""

    def encode(self, text: str) -> list[int]:
        return [ord(ch) % V for ch in text]

    def decode(self, ids) -> str:
        return "".join(chr(i) for i in ids)

    def decode_bytes(self, ids) -> bytes:
        return self.decode(ids).encode()


TOK = CharTokenizer()


@pytest.fixture(scope="module")
def model() -> DecoderLM:
    torch.manual_seed(0)
    m = DecoderLM(ModelConfig.llama(vocab_size=V, d_model=32, n_layers=2, n_heads=4)).eval()
    with torch.no_grad():  # make the logits differ clearly from token to token
        for p in m.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    return m


PROMPTS = ["Text: good\nLabel:", "A much longer prompt, to pad the batch.\nLabel:", "x"]
LABELS = [" positive", " neg", " neutral!"]  # 9, 4 and 9 tokens


# ------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_scores_equal_the_naive_loop(model, reduce, batch_size):
    fast = score_continuations(model, TOK, PROMPTS, LABELS, reduce=reduce, batch_size=batch_size)
    slow = score_continuations_reference(model, TOK, PROMPTS, LABELS, reduce=reduce)
    assert fast.shape == (3, 3) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, slow, **TOL)


def test_mean_is_sum_over_token_count(model):
    total = score_continuations(model, TOK, PROMPTS, LABELS)
    mean = score_continuations(model, TOK, PROMPTS, LABELS, reduce="mean")
    lengths = torch.tensor([len(TOK.encode(c)) for c in LABELS], dtype=torch.float32)
    torch.testing.assert_close(mean, total / lengths, **TOL)
    assert bool((total < 0).all())


def test_scores_equal_transformers_logits(model, hf_llama_copy):
    hf = hf_llama_copy(model)
    ours = score_continuations(model, TOK, PROMPTS, LABELS)
    for i, prompt in enumerate(PROMPTS):
        p = TOK.encode(prompt)
        for j, label in enumerate(LABELS):
            c = TOK.encode(label)
            with torch.no_grad():
                logits = hf(torch.tensor([p + c])).logits[0]  # (T, V)
            logp = torch.log_softmax(logits.double(), -1)
            expected = sum(float(logp[len(p) + k - 1, t]) for k, t in enumerate(c))
            assert math.isclose(float(ours[i, j]), expected, rel_tol=1e-4, abs_tol=1e-4)


def test_a_single_token_label_is_the_next_token_log_softmax(model):
    prompt = "Label:"
    logits = model(torch.tensor([TOK.encode(prompt)])).logits[0, -1]  # (V,)
    expected = logits.log_softmax(-1)[[ord("a"), ord("b")]]
    got = score_continuations(model, TOK, [prompt], ["a", "b"])[0]
    torch.testing.assert_close(got, expected.detach(), **TOL)


def test_scoring_errors(model):
    with pytest.raises(ValueError, match="continuations must not be empty"):
        score_continuations(model, TOK, PROMPTS, [])
    with pytest.raises(ValueError, match="prompts must not be empty"):
        score_continuations(model, TOK, [], LABELS)
    with pytest.raises(ValueError, match=r"prompts\[1\] encodes to no token"):
        score_continuations(model, TOK, ["a", ""], LABELS)
    with pytest.raises(ValueError, match=r"continuations\[0\] must not be empty"):
        score_continuations(model, TOK, PROMPTS, ["", " b"])
    with pytest.raises(TypeError, match="prompts must be a sequence"):
        score_continuations(model, TOK, "one prompt", LABELS)
    with pytest.raises(ValueError, match="max_seq_len"):
        score_continuations(model, TOK, ["x" * 300], LABELS)
    with pytest.raises(ValueError, match="reduce"):
        score_continuations(model, TOK, PROMPTS, LABELS, reduce="max")
    with pytest.raises(TypeError, match="model must be a DecoderLM"):
        score_continuations(torch.nn.Linear(2, 2), TOK, PROMPTS, LABELS)


# ------------------------------------------------------------------------------ labels


def test_label_set_defaults_and_errors():
    s = LabelSet(("yes", "no"))
    assert s.verbalizers == (" yes", " no") and len(s) == 2
    assert LabelSet(["a", "b"], [" A", " B"]).labels == ("a", "b")
    with pytest.raises(ValueError, match="labels must not be empty"):
        LabelSet(())
    with pytest.raises(ValueError, match=r"labels must be unique, repeated: \['yes'\]"):
        LabelSet(("yes", "no", "yes"))
    with pytest.raises(ValueError, match="verbalizers must be unique"):
        LabelSet(("a", "b"), (" x", " x"))
    with pytest.raises(ValueError, match="one entry per label"):
        LabelSet(("a", "b"), (" x",))
    with pytest.raises(ValueError, match=r"labels\[1\] must not be empty"):
        LabelSet(("a", ""))
    with pytest.raises(TypeError, match="labels must be a sequence"):
        LabelSet("ab")


def test_classify_picks_the_argmax(model):
    labels = LabelSet(("p", "n", "u"), tuple(LABELS))
    result = classify(model, TOK, PROMPTS, labels)
    scores = score_continuations(model, TOK, PROMPTS, LABELS)
    torch.testing.assert_close(result.scores, scores)
    assert result.predictions == tuple(labels.labels[i] for i in scores.argmax(-1).tolist())
    with pytest.raises(TypeError, match="label_set must be a LabelSet"):
        classify(model, TOK, PROMPTS, ["p", "n"])


# ------------------------------------------------------------------------- calibration


def test_calibrate_equals_the_papers_formula():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 3, generator=g)
    content_free = torch.randn(3, 3, generator=g)
    p = torch.softmax(scores.double(), -1)
    p_cf = torch.softmax(content_free.double(), -1).mean(0)
    W = torch.diag(1 / p_cf)
    expected = torch.softmax(p @ W.T, -1)  # q = softmax(W p + b), b = 0, row by row
    torch.testing.assert_close(calibrate(scores, content_free), expected.float(), atol=1e-6, rtol=1e-6)


def test_calibration_removes_a_constant_bias():
    # every input favours label 0 by the same factor as the content-free input: after
    # calibration the uniform-looking inputs are uniform and the argmax follows the evidence.
    bias = torch.tensor([0.7, 0.2, 0.1]).log()
    evidence = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    q = calibrate(bias + evidence, bias[None])
    torch.testing.assert_close(q[0], torch.full((3,), 1 / 3))
    assert q[1:].argmax(-1).tolist() == [1, 2]  # after: the evidence decides
    assert (bias + evidence).argmax(-1).tolist() == [0, 0, 0]  # before: always label 0


def test_calibrate_errors():
    with pytest.raises(ValueError, match="same number of labels"):
        calibrate(torch.zeros(2, 3), torch.zeros(1, 2))
    with pytest.raises(ValueError):
        calibrate(torch.zeros(3), torch.zeros(1, 3))


def test_content_free_scores_and_calibrated_classify(model):
    labels = LabelSet(("p", "n", "u"), tuple(LABELS))

    def make(text):
        return few_shot_prompt(text, [("fine", "p")])

    cf = content_free_logprobs(model, TOK, make, labels)
    expected = score_continuations(
        model, TOK, [make("N/A"), make(""), make("[MASK]")], labels.verbalizers
    )
    torch.testing.assert_close(cf, expected)
    result = classify(model, TOK, PROMPTS, labels, content_free=cf)
    raw = score_continuations(model, TOK, PROMPTS, labels.verbalizers)
    torch.testing.assert_close(result.scores, calibrate(raw, cf))
    torch.testing.assert_close(result.scores.sum(-1), torch.ones(3))


# ------------------------------------------------------------------------------ prompts


def test_few_shot_prompt_exact():
    prompt = few_shot_prompt(
        "The  plot\nwas thin.",
        [("Loved it.", "positive"), ("Hated it.", " negative ")],
        instruction="Classify the sentiment.",
    )
    assert prompt == (
        "Classify the sentiment.\n\n"
        "Text: Loved it.\nLabel: positive\n\n"
        "Text: Hated it.\nLabel: negative\n\n"
        "Text: The plot was thin.\nLabel:"
    )
    assert few_shot_prompt("hi") == "Text: hi\nLabel:"
    assert few_shot_prompt("hi", input_prefix="Q:", output_prefix="A:") == "Q: hi\nA:"
    with pytest.raises(TypeError, match=r"demonstrations\[0\] must be an \(input, output\)"):
        few_shot_prompt("hi", [("only input",)])


def test_nli_prompt_exact():
    prompt = nli_prompt(
        "A man plays a guitar.",
        "Nobody plays music.",
        [("A cat sleeps.", "An animal rests.", "entailment")],
    )
    assert prompt == (
        "A cat sleeps.\nQuestion: An animal rests. True, False or Neither?\nAnswer: True\n\n"
        "A man plays a guitar.\nQuestion: Nobody plays music. True, False or Neither?\nAnswer:"
    )
    assert dict(zip(NLI_LABELS, NLI_VERBALIZERS, strict=True)) == {
        "entailment": " True", "neutral": " Neither", "contradiction": " False"
    }
    with pytest.raises(ValueError, match=r"demonstrations\[0\]\[2\] must be one of"):
        nli_prompt("p", "h", [("p", "h", "yes")])


def test_translation_and_summarization_prompts_exact():
    assert translation_prompt("Guten Tag.", "German", "English") == (
        "Translate from German to English.\n\nGerman: Guten Tag.\nEnglish:"
    )
    assert summarization_prompt("A  b.\nC.", max_words=7) == (
        "Summarize the text below in at most 7 words.\n\nText: A b. C.\n\nSummary:"
    )
    with pytest.raises(ValueError, match="name languages"):
        translation_prompt("x", "", "English")
    with pytest.raises(ValueError, match="max_words"):
        summarization_prompt("x", max_words=0)


# ---------------------------------------------------------------------------- lead-k


def test_split_sentences_and_lead_k_exact():
    doc = "The storm hit at dawn. Roads closed!  Was anyone hurt?\nNo one was. Power returns Monday."
    assert split_sentences(doc) == [
        "The storm hit at dawn.", "Roads closed!", "Was anyone hurt?", "No one was.",
        "Power returns Monday.",
    ]
    assert lead_k(doc, 1) == "The storm hit at dawn."
    assert lead_k(doc, 3) == "The storm hit at dawn. Roads closed! Was anyone hurt?"
    assert lead_k(doc, 10) == " ".join(split_sentences(doc))
    assert lead_k("no end punctuation", 2) == "no end punctuation"
    assert lead_k("", 2) == ""
    with pytest.raises(ValueError, match="k must be >= 1"):
        lead_k(doc, 0)


# ------------------------------------------------------------------ tasks in the harness


def test_summarization_task_with_lead_k_in_the_harness():
    docs = ["Rain fell. Rivers rose. Towns flooded.", "Prices rose. Sales fell."]
    refs = ["Rain fell and rivers rose.", "Sales fell."]
    task = summarization_task("news", docs, refs, max_words=10)
    report = evaluate(task, lead_k_system(task, k=1))
    assert report.outputs == ["Rain fell.", "Prices rose."]
    expected = [rouge_l(o, r, stem=True).fmeasure for o, r in zip(report.outputs, refs, strict=True)]
    assert report.scores.tolist() == expected
    assert task.examples[0].prompt == summarization_prompt(docs[0], max_words=10)
    with pytest.raises(ValueError, match="same length"):
        summarization_task("news", docs, refs[:1])


def test_translation_task_scores_sentence_bleu():
    task = translation_task("de-en", ["Guten Morgen.", "Danke."], ["Good morning.", "Thanks."],
                            "German", "English")
    def system(prompt, generator):
        return " Good morning." if "Morgen" in prompt else "Thank you."

    report = evaluate(task, system)
    assert report.scores.tolist() == [
        sentence_bleu("Good morning.", "Good morning.").score,
        sentence_bleu("Thank you.", "Thanks.").score,
    ]
    assert math.isclose(report.scores[0], 100.0)
    with pytest.raises(ValueError, match="same length"):
        translation_task("de-en", ["a"], [], "German", "English")


def test_classification_task_accuracy_equals_classify(model):
    labels = LabelSet(("p", "n", "u"), tuple(LABELS))
    texts = ["good", "bad", "meh", "fine"]
    gold = ["p", "n", "u", "p"]
    task = classification_task("sentiment", texts, gold, labels, few_shot_prompt)
    report = evaluate(task, label_system(model, TOK, labels))
    predicted = classify(model, TOK, [few_shot_prompt(t) for t in texts], labels).predictions
    assert tuple(report.outputs) == predicted
    assert report.summary.mean == sum(p == g for p, g in zip(predicted, gold, strict=True)) / 4
    with pytest.raises(ValueError, match="same length"):
        classification_task("s", texts, gold[:2], labels, few_shot_prompt)
    with pytest.raises(ValueError, match=r"gold\[0\]"):
        classification_task("s", ["a"], ["x"], labels, few_shot_prompt)


# ----------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
@pytest.mark.model
def test_smollm2_scores_equal_the_naive_loop(smollm2_path):
    from llmfoundations.pretrained import load_smollm2

    model, tok = load_smollm2(path=smollm2_path)
    labels = LabelSet(("positive", "negative"))
    prompts = [
        few_shot_prompt("I loved this film, it was wonderful.", instruction="Sentiment:"),
        few_shot_prompt("A terrible, boring waste of time.", instruction="Sentiment:"),
    ]
    fast = score_continuations(model, tok, prompts, labels.verbalizers)
    slow = score_continuations_reference(model, tok, prompts, labels.verbalizers)
    torch.testing.assert_close(fast, slow, atol=1e-3, rtol=1e-4)
    nli = LabelSet(NLI_LABELS, NLI_VERBALIZERS)
    scores = score_continuations(
        model, tok, [nli_prompt("A dog runs in the park.", "An animal is outside.")],
        nli.verbalizers,
    )
    assert scores.shape == (1, 3) and bool(torch.isfinite(scores).all())
