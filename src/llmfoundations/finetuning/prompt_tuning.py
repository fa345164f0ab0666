"""Prompt tuning: learn a few input vectors, keep the whole model frozen.

A written prompt steers a model through the embeddings of its tokens. Lester et al.
(2021, https://arxiv.org/abs/2104.08691) drop the requirement that those vectors be
embeddings of real tokens: they prepend ``Tv`` free vectors (a *soft prompt*, ``Tv x C``
numbers) to every input and train only them, by gradient descent through the frozen
model. The model sees::

    [p_1, ..., p_Tv, embed(x_1), ..., embed(x_T)]

The virtual tokens are always attended to (attention mask 1) and never scored (label
-100); the logits come out for all ``Tv + T`` positions. A task costs ``Tv * C`` numbers
(20 x 576 = 11,520 for SmolLM2), so one frozen model can serve many tasks, each a
different prompt in the same batch. Lester et al. found that it matches full fine-tuning
only as models reach billions of parameters, and that for smaller models starting from
embeddings of real tokens (``"vocab"``, ``"text"``) works better than random vectors.

This module holds:

- ``SoftPrompt(n_tokens, d_model, init="random" | "vocab" | "text")``: the ``Tv x C``
  parameter (float32) and ``forward(inputs_embeds)`` that prepends it;
- ``PromptTunedLM(model, soft_prompt)``: a frozen ``DecoderLM`` behind a soft prompt;
  ``forward(input_ids, attention_mask=None, labels=None)`` -> ``LMOutput`` with logits
  (B, Tv + T, V). It goes through ``DecoderLM(inputs_embeds=...)``.

Equal to peft's prompt tuning (``PromptTuningConfig``) on transformers'
``LlamaForCausalLM`` with the same weights: logits and loss (tested on a tiny Llama and
on SmolLM2). The initialisations follow peft's: ``"random"`` is N(0, 1) like
``nn.Embedding``; ``"vocab"`` copies the embeddings of ``Tv`` token ids drawn uniformly;
``"text"`` copies the embeddings of the given token ids, cut or repeated to ``Tv``.
One difference: with left padding, ``DecoderLM`` numbers positions from each row's
first real token (the virtual tokens count), while transformers' Llama counts from the
start of the row unless told otherwise; without left padding they agree.

Left out: prefix tuning and P-tuning (vectors in every layer, or produced by a small
network), several prompts trained together for multitask batches, generating with a
soft prompt through ``generate`` (call ``PromptTunedLM`` in a loop), and encoder-decoder
models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from llmfoundations._validate import check_choice, check_int, check_tensor
from llmfoundations.models import IGNORE_INDEX, DecoderLM, LMOutput, _check_ids

__all__ = ["PromptInit", "SoftPrompt", "PromptTunedLM"]

PromptInit = Literal["random", "vocab", "text"]


def _text_ids(text_ids: object, n_tokens: int, vocab_size: int) -> Tensor:
    """The ids of the init text, cut to ``n_tokens`` or repeated until they fill it."""
    if isinstance(text_ids, Tensor):
        check_tensor("text_ids", text_ids, ndim=1, nonempty=True)
        text_ids = text_ids.tolist()
    if not isinstance(text_ids, (list, tuple)) or not text_ids:
        raise TypeError(f"text_ids must be a non-empty list of token ids, got {text_ids!r}")
    for k, i in enumerate(text_ids):
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
            raise ValueError(f"text_ids[{k}] must be a token id in [0, {vocab_size}), got {i!r}")
    repeats = -(-n_tokens // len(text_ids))
    return torch.tensor((list(text_ids) * repeats)[:n_tokens], dtype=torch.long)  # (Tv,)


class SoftPrompt(nn.Module):
    """``Tv`` trainable vectors put in front of the input embeddings.

    Args:
        n_tokens: ``Tv``, the number of virtual tokens.
        d_model: ``C``, the model width.
        init: ``"random"`` (N(0, 1)), ``"vocab"`` (embeddings of random token ids) or
            ``"text"`` (embeddings of ``text_ids``, cut or repeated to ``Tv``).
        embedding: the model's token embedding (``model.embed``), needed by ``"vocab"``
            and ``"text"``; it is only read.
        text_ids: token ids of the init text (``"text"`` only), e.g.
            ``tokenizer.encode("Answer with one word:")``.
        generator: for ``"random"`` and ``"vocab"`` (default: torch's global one).

    The vectors are kept in float32 (``weight``, (Tv, C)) and cast to the dtype of the
    embeddings they are joined with.
    """

    def __init__(
        self,
        n_tokens: int,
        d_model: int,
        init: PromptInit = "random",
        *,
        embedding: nn.Embedding | None = None,
        text_ids: Sequence[int] | Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_int("n_tokens", n_tokens, minimum=1)
        check_int("d_model", d_model, minimum=1)
        check_choice("init", init, get_args(PromptInit))
        if init == "random":
            if embedding is not None or text_ids is not None:
                raise ValueError("init='random' takes neither embedding nor text_ids")
            weight = torch.randn(n_tokens, d_model, generator=generator)  # (Tv, C)
        else:
            if not isinstance(embedding, nn.Embedding):
                raise TypeError(
                    f"init={init!r} needs embedding=model.embed (an nn.Embedding), got "
                    f"{type(embedding).__name__}"
                )
            if embedding.embedding_dim != d_model:
                raise ValueError(
                    f"embedding has width {embedding.embedding_dim}, d_model is {d_model}"
                )
            vocab = embedding.num_embeddings
            if init == "vocab":
                if text_ids is not None:
                    raise ValueError("init='vocab' does not take text_ids")
                ids = torch.randint(0, vocab, (n_tokens,), generator=generator)  # (Tv,)
            else:
                if text_ids is None:
                    raise ValueError("init='text' needs text_ids (the init text's token ids)")
                ids = _text_ids(text_ids, n_tokens, vocab)
            weight = embedding.weight.detach()[ids.to(embedding.weight.device)].float()
        self.n_tokens, self.d_model, self.init = n_tokens, d_model, init
        self.weight = nn.Parameter(weight.clone())  # (Tv, C)

    def extra_repr(self) -> str:
        return f"n_tokens={self.n_tokens}, d_model={self.d_model}, init={self.init!r}"

    def forward(self, inputs_embeds: Tensor) -> Tensor:
        """``inputs_embeds`` (B, T, C) -> (B, Tv + T, C), the prompt first."""
        b = inputs_embeds.shape[0]
        prompt = self.weight.to(inputs_embeds.dtype).expand(b, -1, -1)  # (B, Tv, C)
        return torch.cat([prompt, inputs_embeds], dim=1)


class PromptTunedLM(nn.Module):
    """A frozen ``DecoderLM`` with a trainable ``SoftPrompt`` in front of every input.

    All of the model's parameters are frozen here; ``soft_prompt.weight`` is the only
    trainable tensor.
    """

    def __init__(self, model: DecoderLM, soft_prompt: SoftPrompt) -> None:
        super().__init__()
        if not isinstance(model, DecoderLM):
            raise TypeError(f"model must be a DecoderLM, got {type(model).__name__}")
        if not isinstance(soft_prompt, SoftPrompt):
            raise TypeError(f"soft_prompt must be a SoftPrompt, got {type(soft_prompt).__name__}")
        if soft_prompt.d_model != model.config.d_model:
            raise ValueError(
                f"soft_prompt has d_model={soft_prompt.d_model}, the model {model.config.d_model}"
            )
        model.requires_grad_(False)
        self.model = model
        self.soft_prompt = soft_prompt.to(model.embed.weight.device)

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> LMOutput:
        """``input_ids`` (B, T) -> logits (B, Tv + T, V).

        ``attention_mask`` (B, T), if given, gets ``Tv`` ones in front; ``labels``
        (B, T), if given, get ``Tv`` times ``-100`` in front (the loss is then the model's,
        over the real tokens only).
        """
        ids = _check_ids("input_ids", input_ids, self.model.config.vocab_size)
        b, t = ids.shape
        tv = self.soft_prompt.n_tokens
        embeds = self.soft_prompt(self.model.embed(ids))  # (B, Tv + T, C)
        if attention_mask is not None:
            check_tensor("attention_mask", attention_mask, ndim=2)
            if tuple(attention_mask.shape) != (b, t):
                raise ValueError(
                    f"attention_mask must have shape {(b, t)}, got {tuple(attention_mask.shape)}"
                )
            ones = torch.ones(b, tv, dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([ones, attention_mask], dim=1)  # (B, Tv + T)
        if labels is not None:
            check_tensor("labels", labels, ndim=2)
            if tuple(labels.shape) != (b, t):
                raise ValueError(f"labels must have shape {(b, t)}, got {tuple(labels.shape)}")
            ignored = torch.full((b, tv), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            labels = torch.cat([ignored, labels], dim=1)  # (B, Tv + T)
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
