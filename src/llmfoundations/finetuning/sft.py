"""Supervised fine-tuning (SFT): train on prompt/response pairs, score only the response.

Pre-training scores every next token of raw text. Supervised fine-tuning keeps the model
and the next-token loss, changes the data to prompt/response pairs (an instruction and a
good answer, a user turn and an assistant turn), and scores the response only: every
prompt token gets the label ``-100`` (``IGNORE_INDEX``), which the loss skips. The model
is taught to write answers, not to imitate the questions it is asked. With ``R`` the
positions whose *next* token belongs to the response::

    loss = -(1 / |R|) * sum_{t in R} log p(x_{t+1} | x_1 .. x_t)

Labels sit under the tokens they name (``labels[t]`` is ``input_ids[t]`` or ``-100``);
the loss shifts by one, as ``DecoderLM(labels=...)`` and Hugging Face models do.

This module holds:

- ``build_sft_example(prompt_ids, response_ids)`` -> ``SFTExample(input_ids, labels)``;
- ``chat_sft_example(tokenizer, messages)``: one conversation in SmolLM2's chat format
  (ChatML, ``pretrained.apply_chat_template``); the last message is the assistant's
  answer and the only part that is learned;
- ``collate_sft(examples, pad_id)`` -> ``SFTBatch``: right-padded ids, labels (``-100`` on
  the padding) and the attention mask;
- ``sft_loss(logits, labels)``: the masked mean written out (log-softmax, pick the label's
  log-probability, average over labelled positions). It equals
  ``F.cross_entropy(..., ignore_index=-100)`` on the shifted tensors, and
  ``DecoderLM(ids, labels=labels).loss`` (tested).

Two conventions to know. The average is over all response tokens of the batch, so a long
answer weighs more than a short one (as in ``F.cross_entropy`` and Hugging Face models);
a batch without a single labelled token gives 0, where ``F.cross_entropy``
gives NaN. A chat example ends at ``<|im_end|>``, the token at which generation stops; the
newline that the template writes after it is left out, since nothing is ever generated
there.

Left out: packing several short examples into one row, truncation (cut the ids before
calling), learning every assistant turn of a multi-turn conversation (only the last
message is the response), per-sequence loss normalisation, chat templates other than
SmolLM2's, and noise on the embeddings during training (NEFTune).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from llmfoundations._validate import check_int, check_logits_labels, check_tensor
from llmfoundations.models import IGNORE_INDEX
from llmfoundations.pretrained import DEFAULT_SYSTEM_PROMPT, apply_chat_template

__all__ = [
    "IGNORE_INDEX",
    "SFTExample",
    "SFTBatch",
    "build_sft_example",
    "chat_sft_example",
    "collate_sft",
    "sft_loss",
]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class Encoder(Protocol):
    """Anything with ``encode(text) -> list[int]`` (``BPETokenizer`` and SmolLM2's)."""

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class SFTExample:
    """One training example: ``input_ids`` (T,) = prompt + response; ``labels`` (T,) =
    ``-100`` under the prompt, the response's ids under the response."""

    input_ids: Tensor
    labels: Tensor


@dataclass(frozen=True)
class SFTBatch:
    """Right-padded examples: ``input_ids``, ``labels`` (``-100`` on padding) and
    ``attention_mask`` (1 = real token), each (B, T) int64."""

    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor


def _check_ids(name: str, ids: object) -> list[int]:
    """Token ids as a list of non-negative ints (from a list/tuple or a 1-D int tensor)."""
    if isinstance(ids, Tensor):
        check_tensor(name, ids, ndim=1, dtype=_INT_DTYPES)
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        raise TypeError(
            f"{name} must be a list of token ids or a 1-D tensor, got {type(ids).__name__}"
        )
    if not ids:
        raise ValueError(f"{name} must not be empty")
    for k, i in enumerate(ids):
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"{name}[{k}] must be an int, got {type(i).__name__}")
        if i < 0:
            raise ValueError(f"{name}[{k}] must be a token id >= 0, got {i}")
    return list(ids)


def build_sft_example(
    prompt_ids: Sequence[int] | Tensor, response_ids: Sequence[int] | Tensor
) -> SFTExample:
    """Concatenate prompt and response; label the response, mask the prompt with ``-100``.

    The prompt must not be empty: the first token of a sequence is never predicted, so a
    response that started the sequence would lose its first token.

    >>> ex = build_sft_example([5, 6, 7], [8, 9])
    >>> ex.input_ids.tolist(), ex.labels.tolist()
    ([5, 6, 7, 8, 9], [-100, -100, -100, 8, 9])
    """
    prompt = _check_ids("prompt_ids", prompt_ids)
    response = _check_ids("response_ids", response_ids)
    input_ids = torch.tensor(prompt + response, dtype=torch.long)  # (T,)
    labels = torch.tensor([IGNORE_INDEX] * len(prompt) + response, dtype=torch.long)  # (T,)
    return SFTExample(input_ids=input_ids, labels=labels)


def chat_sft_example(
    tokenizer: Encoder,
    messages: Sequence[Mapping[str, str]],
    *,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> SFTExample:
    """One conversation in SmolLM2's chat format; only the final assistant answer is learned.

    The prompt is every message but the last, rendered with the cue for an answer
    (``apply_chat_template(messages[:-1], add_generation_prompt=True)``, which also puts
    the default system prompt in front unless ``system_prompt`` says otherwise). The
    response is the last message's content followed by ``<|im_end|>``. Prompt and response
    are tokenized separately, so the boundary between them is exact.

    ``tokenizer``: anything with ``encode(text) -> list[int]`` that knows ``<|im_start|>``
    and ``<|im_end|>`` as special tokens (``pretrained.smollm2_tokenizer()``).
    """
    if isinstance(tokenizer, (str, bytes)) or not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(
            f"tokenizer must have an encode(text) method, got {type(tokenizer).__name__}"
        )
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if len(messages) < 2:
        raise ValueError(
            f"messages must hold at least a user turn and the assistant's answer, got "
            f"{len(messages)} message(s)"
        )
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "assistant":
        role = last.get("role") if isinstance(last, Mapping) else type(last).__name__
        raise ValueError(f"messages[-1] must be the assistant's answer, got role {role!r}")
    prompt = apply_chat_template(
        messages[:-1], add_generation_prompt=True, system_prompt=system_prompt
    )
    if not isinstance(last["content"], str):
        raise TypeError(
            f"messages[-1]['content'] must be a str, got {type(last['content']).__name__}"
        )
    response = last["content"] + "<|im_end|>"
    return build_sft_example(tokenizer.encode(prompt), tokenizer.encode(response))


def collate_sft(examples: Sequence[SFTExample], pad_id: int) -> SFTBatch:
    """Stack examples into a batch, right-padded to the longest one.

    Padding gets ``pad_id`` in ``input_ids``, ``-100`` in ``labels`` and 0 in
    ``attention_mask``. Right padding suits training (every row starts at position 0);
    generation pads on the left (``generate``).
    """
    if isinstance(examples, SFTExample) or not isinstance(examples, Sequence):
        raise TypeError(f"examples must be a list of SFTExample, got {type(examples).__name__}")
    if not examples:
        raise ValueError("examples must not be empty")
    for k, example in enumerate(examples):
        if not isinstance(example, SFTExample):
            raise TypeError(f"examples[{k}] must be an SFTExample, got {type(example).__name__}")
    check_int("pad_id", pad_id, minimum=0)
    t = max(len(example.input_ids) for example in examples)
    b = len(examples)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((b, t), dtype=torch.long)  # (B, T)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = example.input_ids
        labels[row, :n] = example.labels
        attention_mask[row, :n] = 1
    return SFTBatch(input_ids=input_ids, labels=labels, attention_mask=attention_mask)


def _sft_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The unchecked core of :func:`sft_loss` (no argument checks, no device sync)."""
    logprobs = logits[:, :-1].float().log_softmax(dim=-1)  # (B, T-1, V)
    targets = labels[:, 1:]  # (B, T-1): the token that follows each position
    learned = targets != IGNORE_INDEX  # (B, T-1)
    picked = logprobs.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)  # (B, T-1)
    n_learned = learned.sum().clamp_min(1)  # 0 labelled tokens -> loss 0, not NaN
    return -(picked * learned).sum() / n_learned


def sft_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token loss over the labelled (response) tokens of a batch.

    ``logits`` (B, T, V) from the model; ``labels`` (B, T) aligned with the input ids,
    ``-100`` where nothing is to be learned. ``logits[:, t]`` is scored against
    ``labels[:, t + 1]``. Returns a float32 scalar; 0 when no token is labelled. Checks
    the labels' values (one device sync); ``_sft_loss`` is the unchecked core.

    >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
    >>> sft_loss(logits, torch.tensor([[-100, -100, 2]]))  # one learned token: ln 4
    tensor(1.3863)
    """
    check_logits_labels(logits, labels, IGNORE_INDEX)
    return _sft_loss(logits, labels)
