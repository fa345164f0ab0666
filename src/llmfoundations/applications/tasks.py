"""Language tasks with a generative model: classification and NLI by label log-probabilities,
summarization and translation by prompting, each scored with chapter 5's harness.

**Classification by scoring, not by generating.** To classify a text ``x`` into one of
the labels ``y_1 .. y_L``, write each label as a *verbalizer* continuation ``v_l`` (say
``" positive"``) and ask the model how likely each continuation is after the prompt::

    score(l) = log p(v_l | prompt(x)) = sum_j log p(v_l[j] | prompt(x), v_l[:j])

The prediction is the label with the highest score. Nothing is sampled, no answer has to
be parsed, and the model can only answer with a label. A verbalizer may take several
tokens; the sum favours short verbalizers (each extra token adds a negative number), so
``reduce="mean"`` divides by the number of tokens (the same two reductions as
``alignment.logprobs.sequence_logprobs``, which does the sum here). Natural language
inference (does a premise entail, contradict, or say nothing about a hypothesis?) is the
same computation with a premise-and-hypothesis prompt and three labels.

**Tokenization convention.** The prompt and each continuation are encoded *separately*
and concatenated, so the continuation's tokens are the same after every prompt. Start
verbalizers with a space (``" positive"``) and end prompts without one, as a
byte-level BPE tokenizer puts the space at the start of a word's token.

**Contextual calibration** (Zhao et al., 2021, "Calibrate Before Use"). A model prefers
some labels whatever the input (the majority label of the demonstrations, the last one,
a frequent word). Estimate that bias by scoring *content-free* inputs (``"N/A"``, ``""``,
``"[MASK]"``) in the same prompt: ``p_cf``, the mean over them of the label probabilities
renormalised over the label set. The calibrated probabilities are the paper's
``q = softmax(W p + b)`` with ``W = diag(p_cf)^-1`` and ``b = 0``, where ``p`` are the
input's renormalised label probabilities. Its argmax is that of ``p_l / p_cf_l``.

**Summarization** is a prompt asking for at most ``max_words`` words, with
``max_new_tokens`` as a hard cap (a word limit in a prompt is a request, not a
guarantee), scored by ROUGE-L F1 (``evaluation.rouge``) against a reference. The
**lead-k** baseline, the document's first ``k`` sentences, is hard to beat on news,
whose first sentences summarise the story (See et al., 2017). **Translation** is a
prompt naming the two languages (with optional demonstrations), scored by sentence
BLEU (``evaluation.bleu``); report corpus BLEU with ``bleu.bleu(report.outputs,
references)``, as chapter 5 explains.

This module holds:

- ``score_continuations(model, tokenizer, prompts, continuations, reduce="sum")`` ->
  (N, L) float32 log-probabilities (one batched forward pass per ``batch_size`` rows),
  and ``score_continuations_reference``, the same by one forward pass per pair and a
  Python loop over tokens;
- ``LabelSet(labels, verbalizers)``, ``few_shot_prompt``, ``nli_prompt``, ``NLI_LABELS``;
- ``classify``, ``content_free_logprobs``, ``calibrate``;
- ``classification_task`` and ``label_system`` (a harness ``System`` answering with a
  label);
- ``split_sentences``, ``lead_k``, ``summarization_prompt``, ``summarization_task``,
  ``lead_k_system``;
- ``translation_prompt``, ``translation_task``.

Shapes: ``N`` prompts, ``L`` labels (continuations), ``T`` tokens of a scored row.

Left out: encoding prompt and continuation together (lm-evaluation-harness does, and
moves a trailing space of the prompt into the continuation), normalising by bytes or
characters instead of tokens, reusing the prompt's KV cache across labels, the other
calibrations (domain-conditional PMI, batch calibration), linear probes and LoRA
classifiers (chapter 3's ``finetuning``), and sentence splitting beyond end punctuation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmfoundations._validate import check_choice, check_int, check_str, check_tensor
from llmfoundations.alignment.logprobs import Reduce, sequence_logprobs
from llmfoundations.evaluation.bleu import sentence_bleu
from llmfoundations.evaluation.harness import Example, System, Task, exact_match
from llmfoundations.evaluation.rouge import rouge_l
from llmfoundations.models import IGNORE_INDEX, DecoderLM
from llmfoundations.tokenizer import TokenizerLike

__all__ = [
    "CONTENT_FREE_INPUTS",
    "NLI_LABELS",
    "NLI_VERBALIZERS",
    "LabelSet",
    "Classification",
    "score_continuations",
    "score_continuations_reference",
    "few_shot_prompt",
    "nli_prompt",
    "classify",
    "content_free_logprobs",
    "calibrate",
    "label_system",
    "classification_task",
    "split_sentences",
    "lead_k",
    "summarization_prompt",
    "summarization_task",
    "lead_k_system",
    "translation_prompt",
    "translation_task",
]

#: The content-free inputs of Zhao et al. (2021).
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")

#: NLI labels and the words that verbalize them in :func:`nli_prompt`'s "True, False or
#: Neither?" question (after the format GPT-3 used for ANLI).
NLI_LABELS = ("entailment", "neutral", "contradiction")
NLI_VERBALIZERS = (" True", " Neither", " False")


# ------------------------------------------------------------------------------ labels


def _check_strings(name: str, values: object, *, allow_empty_items: bool = True) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of strings, got {type(values).__name__}")
    out = []
    for i, value in enumerate(values):
        check_str(f"{name}[{i}]", value)
        if not allow_empty_items and not value:
            raise ValueError(f"{name}[{i}] must not be empty")
        out.append(value)
    return out


def _check_string_pairs(a_name: str, a: object, b_name: str, b: object) -> tuple[list[str], list[str]]:
    """Two sequences of strings of the same length (inputs and their references)."""
    a, b = _check_strings(a_name, a), _check_strings(b_name, b)
    if len(a) != len(b):
        raise ValueError(f"{a_name} and {b_name} must have the same length, got {len(a)} and {len(b)}")
    return a, b


def _repeated(values: Sequence[str]) -> list[str]:
    return sorted({v for v in values if values.count(v) > 1})


@dataclass(frozen=True)
class LabelSet:
    """Labels and their verbalizers (the continuations scored), in the same order.

    ``verbalizers`` defaults to ``" " + label``. Labels must be unique, and so must the
    verbalizers (two labels with one continuation could never be told apart).

    >>> LabelSet(("positive", "negative")).verbalizers
    (' positive', ' negative')
    """

    labels: tuple[str, ...]
    verbalizers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        labels = _check_strings("labels", self.labels, allow_empty_items=False)
        if not labels:
            raise ValueError("labels must not be empty")
        if _repeated(labels):
            raise ValueError(f"labels must be unique, repeated: {_repeated(labels)}")
        if self.verbalizers is None:
            verbalizers = [" " + label for label in labels]
        else:
            verbalizers = _check_strings("verbalizers", self.verbalizers, allow_empty_items=False)
        if len(verbalizers) != len(labels):
            raise ValueError(
                f"verbalizers must have one entry per label ({len(labels)}), got {len(verbalizers)}"
            )
        if _repeated(verbalizers):
            raise ValueError(f"verbalizers must be unique, repeated: {_repeated(verbalizers)}")
        object.__setattr__(self, "labels", tuple(labels))
        object.__setattr__(self, "verbalizers", tuple(verbalizers))

    def __len__(self) -> int:
        return len(self.labels)


# ------------------------------------------------------------------------------ scoring


def _encode_pairs(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    prompts: object,
    continuations: object,
) -> tuple[list[list[int]], list[list[int]]]:
    """Checks the arguments; returns the prompts' and the continuations' token ids."""
    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be a DecoderLM, got {type(model).__name__}")
    prompts = _check_strings("prompts", prompts)
    continuations = _check_strings("continuations", continuations, allow_empty_items=False)
    if not prompts:
        raise ValueError("prompts must not be empty")
    if not continuations:
        raise ValueError("continuations must not be empty (no label to score)")
    prompt_ids = [list(tokenizer.encode(p)) for p in prompts]
    cont_ids = [list(tokenizer.encode(c)) for c in continuations]
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise ValueError(
                f"prompts[{i}] encodes to no token: nothing predicts the continuation's first token"
            )
    for i, ids in enumerate(cont_ids):
        if not ids:
            raise ValueError(f"continuations[{i}] encodes to no token")
    longest = max(map(len, prompt_ids)) + max(map(len, cont_ids))
    if longest > model.config.max_seq_len:
        raise ValueError(
            f"a prompt and continuation take {longest} tokens, more than the model's "
            f"max_seq_len {model.config.max_seq_len}"
        )
    return prompt_ids, cont_ids


def score_continuations(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    reduce: Reduce = "sum",
    batch_size: int = 16,
) -> Tensor:
    """``log p(continuation | prompt)`` for every prompt and continuation: (N, L) float32.

    Each row of a batch is ``prompt ids + continuation ids``, right-padded; its labels
    are ``-100`` on the prompt and the padding, so ``sequence_logprobs`` scores exactly
    the continuation's tokens (summed, or averaged with ``reduce="mean"``). No attention
    mask is needed: in a causal model a real token never sees the padding after it. Runs
    under ``torch.inference_mode`` with the model as it is (call ``eval()`` first).
    """
    prompt_ids, cont_ids = _encode_pairs(model, tokenizer, prompts, continuations)
    check_choice("reduce", reduce, ("sum", "mean"))
    check_int("batch_size", batch_size, minimum=1)
    pairs = [(p, c) for p in prompt_ids for c in cont_ids]  # row-major: (N * L) rows
    device = next(model.parameters()).device
    scores = []
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            width = max(len(p) + len(c) for p, c in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T), 0 = padding
            labels = torch.full((len(batch), width), IGNORE_INDEX)  # (B, T)
            for row, (p, c) in enumerate(batch):
                ids[row, : len(p) + len(c)] = torch.tensor(p + c)
                labels[row, len(p) : len(p) + len(c)] = torch.tensor(c)
            logits = model(ids.to(device)).logits  # (B, T, V)
            scores.append(sequence_logprobs(logits, labels.to(device), reduce=reduce))  # (B,)
    return torch.cat(scores).view(len(prompt_ids), len(cont_ids)).float()  # (N, L)


def score_continuations_reference(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    reduce: Reduce = "sum",
) -> Tensor:
    """:func:`score_continuations` the slow, obvious way: one forward pass per (prompt,
    continuation) pair, and a loop adding the log-probability of each continuation token."""
    prompt_ids, cont_ids = _encode_pairs(model, tokenizer, prompts, continuations)
    check_choice("reduce", reduce, ("sum", "mean"))
    device = next(model.parameters()).device
    out = torch.zeros(len(prompt_ids), len(cont_ids))
    with torch.inference_mode():
        for i, p in enumerate(prompt_ids):
            for j, c in enumerate(cont_ids):
                ids = torch.tensor([p + c], device=device)  # (1, T)
                logp = model(ids).logits[0].float().log_softmax(-1)  # (T, V)
                total = 0.0
                for k, token in enumerate(c):
                    total += float(logp[len(p) + k - 1, token])  # the position before it
                out[i, j] = total if reduce == "sum" else total / len(c)
    return out


# ------------------------------------------------------------------------------ prompts


def _one_line(text: str) -> str:
    return " ".join(text.split())


def few_shot_prompt(
    text: str,
    demonstrations: Sequence[tuple[str, str]] = (),
    *,
    instruction: str = "",
    input_prefix: str = "Text:",
    output_prefix: str = "Label:",
) -> str:
    """A zero- or few-shot prompt: the instruction, the demonstrations (input, then the
    output after a space), then the input with the output left open.

    Blocks are separated by a blank line; inputs are put on one line (whitespace
    collapsed). The prompt ends right after ``output_prefix``, with no space: the
    verbalizer (``" positive"``) brings it.

    >>> print(few_shot_prompt("Great film.", [("Dull.", "negative")], instruction="Sentiment?"))
    Sentiment?
    <BLANKLINE>
    Text: Dull.
    Label: negative
    <BLANKLINE>
    Text: Great film.
    Label:
    """
    check_str("text", text)
    check_str("instruction", instruction)
    check_str("input_prefix", input_prefix)
    check_str("output_prefix", output_prefix)
    if isinstance(demonstrations, str) or not isinstance(demonstrations, Sequence):
        raise TypeError("demonstrations must be a sequence of (input, output) pairs")
    blocks = [instruction.strip()] if instruction.strip() else []
    for i, pair in enumerate(demonstrations):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"demonstrations[{i}] must be an (input, output) tuple, got {pair!r}")
        check_str(f"demonstrations[{i}][0]", pair[0])
        check_str(f"demonstrations[{i}][1]", pair[1])
        blocks.append(f"{input_prefix} {_one_line(pair[0])}\n{output_prefix} {pair[1].strip()}")
    blocks.append(f"{input_prefix} {_one_line(text)}\n{output_prefix}")
    return "\n\n".join(blocks)


def nli_prompt(
    premise: str,
    hypothesis: str,
    demonstrations: Sequence[tuple[str, str, str]] = (),
) -> str:
    """An NLI prompt: ``premise``, then "Question: ``hypothesis`` True, False or Neither?"
    and "Answer:"; demonstrations are (premise, hypothesis, label) with labels from
    :data:`NLI_LABELS`, answered with :data:`NLI_VERBALIZERS`.

    >>> print(nli_prompt("A dog runs.", "An animal moves."))
    A dog runs.
    Question: An animal moves. True, False or Neither?
    Answer:
    """
    check_str("premise", premise)
    check_str("hypothesis", hypothesis)
    if isinstance(demonstrations, str) or not isinstance(demonstrations, Sequence):
        raise TypeError("demonstrations must be a sequence of (premise, hypothesis, label)")

    def block(p: str, h: str) -> str:
        return f"{_one_line(p)}\nQuestion: {_one_line(h)} True, False or Neither?\nAnswer:"

    blocks = []
    for i, demo in enumerate(demonstrations):
        if not isinstance(demo, tuple) or len(demo) != 3:
            raise TypeError(f"demonstrations[{i}] must be a (premise, hypothesis, label) tuple")
        p, h, label = demo
        check_str(f"demonstrations[{i}][0]", p)
        check_str(f"demonstrations[{i}][1]", h)
        check_choice(f"demonstrations[{i}][2]", label, NLI_LABELS)
        blocks.append(block(p, h) + NLI_VERBALIZERS[NLI_LABELS.index(label)])
    blocks.append(block(premise, hypothesis))
    return "\n\n".join(blocks)


# ------------------------------------------------------------------------ classification


@dataclass(frozen=True)
class Classification:
    """What :func:`classify` returns: ``scores`` (N, L) (log-probabilities, or calibrated
    probabilities), and ``predictions``, the best label of each row (ties: the first)."""

    labels: tuple[str, ...]
    scores: Tensor
    predictions: tuple[str, ...]


def _check_label_set(label_set: object) -> LabelSet:
    if not isinstance(label_set, LabelSet):
        raise TypeError(f"label_set must be a LabelSet, got {type(label_set).__name__}")
    return label_set


def content_free_logprobs(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    make_prompt: Callable[[str], str],
    label_set: LabelSet,
    *,
    inputs: Sequence[str] = CONTENT_FREE_INPUTS,
    reduce: Reduce = "sum",
) -> Tensor:
    """The label scores (M, L) of the content-free ``inputs`` put through ``make_prompt``
    (the same function that builds the real prompts), for :func:`calibrate`."""
    label_set = _check_label_set(label_set)
    if not callable(make_prompt):
        raise TypeError(f"make_prompt must be callable, got {type(make_prompt).__name__}")
    inputs = _check_strings("inputs", inputs)
    if not inputs:
        raise ValueError("inputs must not be empty")
    prompts = [make_prompt(x) for x in inputs]
    return score_continuations(model, tokenizer, prompts, label_set.verbalizers, reduce=reduce)


def calibrate(scores: Tensor, content_free: Tensor) -> Tensor:
    """Contextual calibration of label log-probabilities ``scores`` (N, L), given the
    content-free inputs' ``content_free`` (M, L): the probabilities (N, L) ``softmax(W p)``
    with ``p = softmax(scores)`` (renormalised over the labels) and ``W = diag(p_cf)^-1``,
    ``p_cf`` the mean of ``softmax(content_free)`` over its M rows (Zhao et al., 2021).

    >>> scores = torch.tensor([[0.6, 0.4]]).log()  # the model prefers label 0 ...
    >>> calibrate(scores, torch.tensor([[0.75, 0.25]]).log())  # ... but prefers it anyway
    tensor([[0.3100, 0.6900]])
    """
    check_tensor("scores", scores, ndim=2, floating=True, nonempty=True)
    check_tensor("content_free", content_free, ndim=2, floating=True, nonempty=True)
    if scores.shape[1] != content_free.shape[1]:
        raise ValueError(
            f"scores {tuple(scores.shape)} and content_free {tuple(content_free.shape)} "
            "must have the same number of labels L"
        )
    p = scores.float().softmax(dim=-1)  # (N, L)
    p_cf = content_free.float().softmax(dim=-1).mean(dim=0)  # (L,)
    return (p / p_cf).softmax(dim=-1)  # (N, L): W p with W = diag(p_cf)^-1, b = 0


def classify(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    prompts: Sequence[str],
    label_set: LabelSet,
    *,
    reduce: Reduce = "sum",
    content_free: Tensor | None = None,
) -> Classification:
    """Score every label of ``label_set`` after every prompt and pick the best.

    With ``content_free`` (M, L) (from :func:`content_free_logprobs`), the scores are
    the calibrated probabilities of :func:`calibrate`; otherwise the log-probabilities.
    """
    label_set = _check_label_set(label_set)
    scores = score_continuations(model, tokenizer, prompts, label_set.verbalizers, reduce=reduce)
    if content_free is not None:
        scores = calibrate(scores, content_free.to(scores.device))
    best = scores.argmax(dim=-1).tolist()  # (N,); torch.argmax returns the first maximum
    return Classification(label_set.labels, scores, tuple(label_set.labels[i] for i in best))


def label_system(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    label_set: LabelSet,
    *,
    reduce: Reduce = "sum",
    content_free: Tensor | None = None,
) -> System:
    """A harness system that answers each prompt with the best-scoring label
    (deterministic: the generator is unused)."""
    label_set = _check_label_set(label_set)

    def system(prompt: str, generator: torch.Generator) -> str:
        result = classify(
            model, tokenizer, [prompt], label_set, reduce=reduce, content_free=content_free
        )
        return result.predictions[0]

    return system


def classification_task(
    name: str,
    texts: Sequence[str],
    gold: Sequence[str],
    label_set: LabelSet,
    make_prompt: Callable[[str], str],
) -> Task:
    """A harness task: prompt ``make_prompt(text)``, reference the gold label, metric
    exact match (so the mean score is the accuracy)."""
    label_set = _check_label_set(label_set)
    texts, gold = _check_string_pairs("texts", texts, "gold", gold)
    for i, label in enumerate(gold):
        check_choice(f"gold[{i}]", label, label_set.labels)
    if not callable(make_prompt):
        raise TypeError(f"make_prompt must be callable, got {type(make_prompt).__name__}")
    examples = tuple(
        Example(f"{name}-{i}", make_prompt(text), label, {"text": text})
        for i, (text, label) in enumerate(zip(texts, gold, strict=True))
    )
    return Task(name, examples, exact_match)


# ------------------------------------------------------------------------- summarization

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: cut after ``.``, ``!`` or ``?`` followed by whitespace
    (so "e.g. this" is cut too: a known limit), whitespace collapsed, empty ones dropped.

    >>> split_sentences("One. Two!  Three?\\nFour")
    ['One.', 'Two!', 'Three?', 'Four']
    """
    check_str("text", text)
    return [_one_line(s) for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def lead_k(document: str, k: int = 3) -> str:
    """The lead-k baseline: the first ``k`` sentences of ``document``, joined by spaces.

    >>> lead_k("A b. C d! E f? G.", k=2)
    'A b. C d!'
    """
    check_int("k", k, minimum=1)
    return " ".join(split_sentences(document)[:k])


def summarization_prompt(document: str, *, max_words: int = 30) -> str:
    """A prompt asking for a summary of at most ``max_words`` words.

    >>> print(summarization_prompt("The cat sat.", max_words=5))
    Summarize the text below in at most 5 words.
    <BLANKLINE>
    Text: The cat sat.
    <BLANKLINE>
    Summary:
    """
    check_str("document", document)
    check_int("max_words", max_words, minimum=1)
    return (
        f"Summarize the text below in at most {max_words} words.\n\n"
        f"Text: {_one_line(document)}\n\nSummary:"
    )


def _rouge_l_f1(output: str, example: Example) -> float:
    if example.reference is None:
        raise ValueError(f"example {example.id!r} has no reference summary")
    return rouge_l(output, example.reference, stem=True).fmeasure


def summarization_task(
    name: str,
    documents: Sequence[str],
    references: Sequence[str],
    *,
    max_words: int = 30,
) -> Task:
    """A harness task: prompt :func:`summarization_prompt`, metric ROUGE-L F1 (stemmed,
    as in rouge-score with ``use_stemmer=True``). Each example keeps its document in
    ``fields["document"]``. Cap the length of a model's summary with ``max_new_tokens``
    of ``harness.model_system``."""
    documents, references = _check_string_pairs("documents", documents, "references", references)
    examples = tuple(
        Example(f"{name}-{i}", summarization_prompt(doc, max_words=max_words), ref, {"document": doc})
        for i, (doc, ref) in enumerate(zip(documents, references, strict=True))
    )
    return Task(name, examples, _rouge_l_f1)


def lead_k_system(task: Task, k: int = 3) -> System:
    """The lead-k baseline as a harness system for a :func:`summarization_task` (it looks
    up the document of each prompt in the task)."""
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task, got {type(task).__name__}")
    check_int("k", k, minimum=1)
    documents = {}
    for ex in task.examples:
        if "document" not in ex.fields:
            raise ValueError(f"example {ex.id!r} has no fields['document']")
        documents[ex.prompt] = ex.fields["document"]

    def system(prompt: str, generator: torch.Generator) -> str:
        if prompt not in documents:
            raise ValueError("lead_k_system got a prompt that is not in its task")
        return lead_k(documents[prompt], k)

    return system


# --------------------------------------------------------------------------- translation


def translation_prompt(
    text: str,
    source: str,
    target: str,
    demonstrations: Sequence[tuple[str, str]] = (),
) -> str:
    """A translation prompt: the instruction, optional (source, target) demonstrations,
    then the text with the target line left open.

    >>> print(translation_prompt("Bonjour.", "French", "English", [("Merci.", "Thank you.")]))
    Translate from French to English.
    <BLANKLINE>
    French: Merci.
    English: Thank you.
    <BLANKLINE>
    French: Bonjour.
    English:
    """
    check_str("source", source)
    check_str("target", target)
    if not source.strip() or not target.strip():
        raise ValueError("source and target must name languages")
    return few_shot_prompt(
        text,
        demonstrations,
        instruction=f"Translate from {source} to {target}.",
        input_prefix=f"{source}:",
        output_prefix=f"{target}:",
    )


def _sentence_bleu(output: str, example: Example) -> float:
    if example.reference is None:
        raise ValueError(f"example {example.id!r} has no reference translation")
    return sentence_bleu(output.strip(), example.reference).score


def translation_task(
    name: str,
    sources: Sequence[str],
    references: Sequence[str],
    source: str,
    target: str,
    demonstrations: Sequence[tuple[str, str]] = (),
) -> Task:
    """A harness task: prompt :func:`translation_prompt`, metric sentence BLEU (0-100,
    sacreBLEU's defaults). For the corpus score, call ``bleu.bleu(report.outputs,
    references)`` on the report."""
    sources, references = _check_string_pairs("sources", sources, "references", references)
    examples = tuple(
        Example(f"{name}-{i}", translation_prompt(src, source, target, demonstrations), ref)
        for i, (src, ref) in enumerate(zip(sources, references, strict=True))
    )
    return Task(name, examples, _sentence_bleu)
