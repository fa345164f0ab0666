"""The generation loop: a prompt in, new tokens out, one forward pass per token.

A decoder-only model scores the next token; generating text means calling it in a loop,
appending each chosen token to the input. This module holds that loop and the small
pieces around it:

- :func:`generate`: prompts (a ``(B, T)`` tensor, or lists of ids of different lengths,
  left-padded here) -> prompts + new tokens. With ``use_cache=True`` (the default) one
  *prefill* pass reads the whole prompt and fills a :class:`~llmfoundations.kv_cache.KVCache`;
  every *decode* step after that feeds only the newest token. ``use_cache=False`` reruns
  the whole sequence every step: the slow reference that the cached path must match.
  Stop tokens end a row (later positions hold ``pad_token_id`` and are masked), a
  ``streamer`` sees every step's tokens, and any
  :class:`~llmfoundations.sampling.SamplingConfig` chooses the tokens (greedy by default).
- :func:`generate_output`: the same loop, returning a :class:`GenerationOutput` (new
  tokens, lengths, which rows stopped, and with ``output_logits=True`` every step's logits).
- :func:`complete` and :func:`chat`: text in, text out, with a tokenizer; ``chat`` renders
  the messages with ``pretrained.apply_chat_template`` and stops at ``<|im_end|>`` (the
  end of the assistant's turn).
- :class:`TextStreamer`: prints (or hands over) the text of a single sequence as it grows,
  holding back bytes that are not yet a whole UTF-8 character.

Positions with left padding. A left-padded row starts with pad tokens, so its first real
token must still get position 0. The loop passes the attention mask (1 = real token,
covering cached and new positions) and ``DecoderLM`` derives every token's position
from it (``cumsum(mask) - 1``); RoPE and learned positions then see each row exactly as
if it were alone. When nothing is padded the mask is left out and positions are simply
``cache length + arange(T)``.

Left out: beam search with a cache (``sampling.beam_search`` recomputes the prefix),
speculative decoding (``speculative.py``), paged caches and continuous batching (rows
that finish keep their slot until the whole batch ends), stop *strings*, constraints and
grammars. A model whose forward takes ``logits_to_keep`` (``DecoderLM``) computes logits
for the last position only, in the prefill and in the uncached reference alike.
"""

from __future__ import annotations

import codecs
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import EllipsisType

import torch
from torch import Tensor, nn

from llmfoundations._validate import check_int, check_tensor
from llmfoundations.kv_cache import KVCache
from llmfoundations.sampling import SamplingConfig, _check_generator
from llmfoundations.tokenizer import TokenizerLike

__all__ = ["GenerationOutput", "generate", "generate_output", "TextStreamer", "complete", "chat"]

GREEDY = SamplingConfig(do_sample=False)  # what ``sampling=None`` means

Streamer = Callable[[Tensor], None]


@dataclass
class GenerationOutput:
    """What :func:`generate_output` returns.

    - ``sequences`` (B, T_prompt + n): the (left-padded) prompts followed by the new tokens;
    - ``attention_mask`` (B, T_prompt + n): 1 on real tokens, 0 on prompt padding and on the
      padding written after a row stopped;
    - ``new_tokens`` (B, n): ``sequences[:, T_prompt:]``;
    - ``num_new_tokens`` (B,): tokens each row generated, its stop token included;
    - ``stopped`` (B,): whether the row produced a stop token;
    - ``logits`` (B, n, V) or ``None``: the raw next-token logits of every step (before
      any sampling processor), with ``output_logits=True``;
    - ``prompt_length``: ``T_prompt``; ``n`` (``steps``) <= ``max_new_tokens``, fewer when
      every row stopped early.
    """

    sequences: Tensor
    attention_mask: Tensor
    new_tokens: Tensor
    num_new_tokens: Tensor
    stopped: Tensor
    logits: Tensor | None
    prompt_length: int

    @property
    def steps(self) -> int:
        """Number of decoding steps taken (columns of ``new_tokens``)."""
        return self.new_tokens.shape[1]


# ------------------------------------------------------------------------------- checks


def _check_model(model: object) -> int:
    """The model must be an ``nn.Module`` with a ``config.vocab_size``; return V."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module (a DecoderLM), got {type(model).__name__}"
        )
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab, int):
        raise TypeError(
            f"model must have a config with an int vocab_size (a DecoderLM), got "
            f"{type(model).__name__}"
        )
    return vocab


def _check_token_id(name: str, value: object, vocab: int) -> int:
    check_int(name, value, minimum=0)
    if value >= vocab:
        raise ValueError(f"{name} must be < vocab_size={vocab}, got {value}")
    return value


def _check_stop_ids(stop_token_ids: object, vocab: int) -> list[int]:
    if isinstance(stop_token_ids, int) and not isinstance(stop_token_ids, bool):
        stop_token_ids = (stop_token_ids,)
    if isinstance(stop_token_ids, (str, bytes)) or not isinstance(stop_token_ids, Iterable):
        raise TypeError(
            f"stop_token_ids must be an int or an iterable of ints, got "
            f"{type(stop_token_ids).__name__}"
        )
    return [_check_token_id("stop_token_ids", i, vocab) for i in stop_token_ids]


def _left_pad(rows: Sequence, pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Lists of ids of different lengths -> ids (B, T) and mask (B, T), padded on the left."""
    if len(rows) == 0:
        raise ValueError("input_ids must hold at least one prompt, got an empty list")
    lists = []
    for i, row in enumerate(rows):
        if isinstance(row, Tensor):
            if row.ndim != 1:
                raise ValueError(
                    f"input_ids[{i}] must be a 1-D tensor of ids, got shape {tuple(row.shape)}"
                )
            row = row.tolist()
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise TypeError(f"input_ids[{i}] must be a list of ints, got {type(row).__name__}")
        if len(row) == 0:
            raise ValueError(f"input_ids[{i}] is empty: every prompt needs at least one token")
        for token in row:
            if isinstance(token, bool) or not isinstance(token, int):
                raise TypeError(
                    f"input_ids[{i}] must hold ints, got {type(token).__name__} ({token!r})"
                )
        lists.append(list(row))
    width = max(len(row) for row in lists)
    ids = torch.full((len(lists), width), pad_token_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(lists), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(lists):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def _check_left_padding_mask(mask: object, shape: tuple[int, int]) -> Tensor:
    check_tensor("attention_mask", mask, ndim=2)
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(
            f"attention_mask must be bool or integer (1 = real token), got {mask.dtype}"
        )
    if tuple(mask.shape) != shape:
        raise ValueError(
            f"attention_mask must have the shape of input_ids {shape}, got {tuple(mask.shape)}"
        )
    real = mask != 0  # (B, T)
    if bool((real[:, 1:] < real[:, :-1]).any()):
        raise ValueError(
            "attention_mask must be left padding (each row: 0s, then 1s); generation appends "
            "at the right end, so right-padded prompts would continue after their padding"
        )
    if not bool(real[:, -1].all()):
        raise ValueError("attention_mask has a row with no real token: every prompt needs one")
    return real.long()


def _prepare_prompts(
    input_ids: object, attention_mask: object, pad_token_id: int, vocab: int
) -> tuple[Tensor, Tensor]:
    """Validated ids (B, T) long and mask (B, T) long (1 = real token)."""
    if isinstance(input_ids, Tensor):
        check_tensor("input_ids", input_ids, ndim=2, dtype=torch.long, nonempty=True)
        ids = input_ids
        if attention_mask is None:
            mask = torch.ones_like(ids)
        else:
            mask = _check_left_padding_mask(attention_mask, tuple(ids.shape))
            if mask.device != ids.device:
                raise ValueError(f"attention_mask is on {mask.device}, input_ids on {ids.device}")
    elif isinstance(input_ids, Sequence) and not isinstance(input_ids, (str, bytes)):
        if attention_mask is not None:
            raise ValueError(
                "attention_mask must be None when input_ids is a list of prompts "
                "(the mask is built while padding them)"
            )
        ids, mask = _left_pad(input_ids, pad_token_id)
    else:
        raise TypeError(
            f"input_ids must be a (B, T) long tensor or a list of lists of ids, got "
            f"{type(input_ids).__name__}"
        )
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab:
        raise ValueError(
            f"input_ids must lie in [0, vocab_size={vocab}), got values from {low} to {high}"
        )
    return ids, mask


# ----------------------------------------------------------------------------- the loop


def generate(
    model: nn.Module,
    input_ids: Tensor | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    sampling: SamplingConfig | None = None,
    attention_mask: Tensor | None = None,
    stop_token_ids: int | Iterable[int] = (),
    pad_token_id: int = 0,
    use_cache: bool = True,
    streamer: Streamer | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continue each prompt by up to ``max_new_tokens`` tokens.

    Args:
        model: a ``DecoderLM`` (anything with its ``forward(ids, attention_mask=...,
            kv_cache=...)`` and ``config``). It runs in eval mode; its mode is restored.
        input_ids: ``(B, T)`` long tensor, or a list of ``B`` lists of ids of any lengths
            (left-padded here with ``pad_token_id``; the mask is built for you).
        max_new_tokens: steps to run (>= 0); fewer when every row has stopped.
        sampling: how to choose each token (``None``: greedy). Its repetition penalty sees
            the whole row, prompt padding included (as in ``transformers``).
        attention_mask: ``(B, T)`` for a tensor prompt, 1 = real token; must be left padding.
        stop_token_ids: a row stops after producing one of these; its later positions hold
            ``pad_token_id`` (masked out).
        pad_token_id: the id written in padding positions.
        use_cache: ``True``: prefill once, then one token per forward pass through a
            ``KVCache``. ``False``: a full forward pass over the whole sequence every step.
        streamer: called once per step with that step's tokens ``(B,)`` (pad for stopped rows).
        generator: a seeded ``torch.Generator`` makes sampling reproducible.

    Returns the sequences ``(B, T + n)``: prompts (with their padding) then new tokens.
    They are ordinary tensors (not inference tensors), so they may feed a training step.
    :func:`generate_output` returns more: lengths, stopped rows, logits.

    >>> from llmfoundations.models import DecoderLM, ModelConfig
    >>> model = DecoderLM(ModelConfig.llama(vocab_size=50))
    >>> generate(model, [[1, 2, 3], [4]], max_new_tokens=2).shape
    torch.Size([2, 5])
    """
    return generate_output(
        model,
        input_ids,
        max_new_tokens,
        sampling=sampling,
        attention_mask=attention_mask,
        stop_token_ids=stop_token_ids,
        pad_token_id=pad_token_id,
        use_cache=use_cache,
        streamer=streamer,
        generator=generator,
    ).sequences


def generate_output(
    model: nn.Module,
    input_ids: Tensor | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    sampling: SamplingConfig | None = None,
    attention_mask: Tensor | None = None,
    stop_token_ids: int | Iterable[int] = (),
    pad_token_id: int = 0,
    use_cache: bool = True,
    streamer: Streamer | None = None,
    generator: torch.Generator | None = None,
    output_logits: bool = False,
) -> GenerationOutput:
    """:func:`generate`, returning a :class:`GenerationOutput` instead of the sequences.

    The arguments are :func:`generate`'s, plus ``output_logits``: keep every step's raw
    logits (before any sampling processor) in ``GenerationOutput.logits`` (B, n, V).

    >>> from llmfoundations.models import DecoderLM, ModelConfig
    >>> model = DecoderLM(ModelConfig.llama(vocab_size=50))
    >>> out = generate_output(model, [[1, 2, 3], [4]], max_new_tokens=2)
    >>> out.new_tokens.shape, out.num_new_tokens.tolist()
    (torch.Size([2, 2]), [2, 2])
    """
    vocab = _check_model(model)
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    pad_token_id = _check_token_id("pad_token_id", pad_token_id, vocab)
    stop_ids = _check_stop_ids(stop_token_ids, vocab)
    if sampling is not None and not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig or None, got {type(sampling).__name__}")
    _check_generator(generator)
    if streamer is not None and not callable(streamer):
        raise TypeError(f"streamer must be callable or None, got {type(streamer).__name__}")
    for name, flag in (("use_cache", use_cache), ("output_logits", output_logits)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    ids, mask = _prepare_prompts(input_ids, attention_mask, pad_token_id, vocab)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    _check_length_fits(model, ids.shape[1] + max_new_tokens)

    was_training = model.training
    model.eval()
    try:
        out = _generation_loop(
            model,
            ids,
            mask,
            max_new_tokens,
            sampling=sampling or GREEDY,
            stop_ids=torch.tensor(stop_ids, dtype=torch.long, device=device),
            pad_token_id=pad_token_id,
            use_cache=use_cache,
            streamer=streamer,
            generator=generator,
            output_logits=output_logits,
        )
    finally:
        model.train(was_training)
    # Clones made outside inference mode are ordinary tensors, usable with autograd later.
    return GenerationOutput(
        **{k: v.clone() if isinstance(v, Tensor) else v for k, v in vars(out).items()}
    )


def _check_length_fits(model: nn.Module, total: int) -> None:
    """Refuse before spending any compute if positions would run past ``max_seq_len``.

    The last generated token is never fed back, so ``total - 1`` positions are embedded.
    Learned tables end at ``max_seq_len``, and RoPE models are refused past it too (see
    ``DecoderLM``); sinusoidal encodings extrapolate.
    """
    config = model.config
    limited = getattr(config, "positional", None) in ("learned", "rope")
    if limited and total - 1 > config.max_seq_len:
        raise ValueError(
            f"prompt length + max_new_tokens = {total} needs {total - 1} positions, more than "
            f"the model's max_seq_len={config.max_seq_len}"
        )


def _takes_logits_to_keep(forward: Callable[..., object]) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):  # no signature to read (some C-implemented callables)
        return False


@torch.inference_mode()
def _generation_loop(
    model: nn.Module,
    ids: Tensor,  # (B, T) prompts, left-padded
    mask: Tensor,  # (B, T) 1 = real token
    max_new_tokens: int,
    *,
    sampling: SamplingConfig,
    stop_ids: Tensor,  # (S,)
    pad_token_id: int,
    use_cache: bool,
    streamer: Streamer | None,
    generator: torch.Generator | None,
    output_logits: bool,
) -> GenerationOutput:
    b, prompt_length = ids.shape
    cache = KVCache.for_model(model, b, prompt_length + max_new_tokens) if use_cache else None
    done = torch.zeros(b, dtype=torch.bool, device=ids.device)  # (B,) row has stopped
    pad = torch.full((b,), pad_token_id, dtype=torch.long, device=ids.device)  # (B,)
    step_logits = []
    feed = ids  # what the next forward pass reads: the whole prompt first (prefill)
    # The prompts were checked by generate and every token fed back is one the loop chose,
    # so the steps skip the model's argument checks (forward_unchecked, where the model
    # has one) and the sampling processors' (choose_unchecked). What stays is one
    # device-to-host copy per step: are the logits finite, and has every row stopped.
    forward = getattr(model, "forward_unchecked", model)
    # Only the last position's logits are read: a model that can skip the others (its head
    # over one position instead of every prompt position, and every position of the whole
    # sequence without a cache) is asked to, as transformers' generate does.
    keep = {"logits_to_keep": 1} if _takes_logits_to_keep(forward) else {}
    # The mask is only needed when a prompt is padded; without it the model uses positions
    # cache length + arange(T) and the plain causal kernel. (Once a row stops, its later
    # positions are masked in the output mask, but what the model computes for that row no
    # longer matters, so the forward passes need no mask for them.)
    padded = not bool(mask.all())

    for step in range(max_new_tokens):
        forward_mask = mask if padded else None  # (B, T_so_far)
        if use_cache:
            # Prefill: the prompt, T tokens. Decode: the newest token only; the keys and
            # values of everything before it are in the cache.
            logits = forward(feed, attention_mask=forward_mask, kv_cache=cache, **keep).logits
        else:
            # Reference: recompute every position of the whole sequence, every step.
            logits = forward(ids, attention_mask=forward_mask, **keep).logits  # (B, 1 or T, V)
        next_logits = logits[:, -1].float()  # (B, V) scores of the next token
        if output_logits:
            step_logits.append(next_logits)

        # A row's max is NaN or +inf if it holds one, -inf if no token is left. Such rows are
        # zeroed so that sampling cannot fail before the error below names the cause.
        row_ok = torch.isfinite(next_logits.amax(dim=-1))  # (B,)
        safe = torch.where(row_ok[:, None], next_logits, 0.0)  # (B, V)
        token = sampling.choose_unchecked(safe, ids, generator)  # (B,)
        token = torch.where(done, pad, token)  # stopped rows only get padding
        ids = torch.cat([ids, token[:, None]], dim=1)  # (B, T_so_far + 1)
        mask = torch.cat([mask, (~done).long()[:, None]], dim=1)  # the stop token stays real
        if len(stop_ids):
            done = done | torch.isin(token, stop_ids)
        ok, all_done = torch.stack([row_ok.all(), done.all()]).tolist()  # the step's one sync
        if not ok:
            raise ValueError(
                f"the model's logits at step {step} hold NaN or +inf, or a row of only -inf: "
                "no token can be chosen (check the model's weights and inputs)"
            )
        if streamer is not None:
            streamer(token)
        if all_done:
            break
        feed = token[:, None]  # (B, 1)

    kept = None
    if output_logits:  # (B, n, V); n may be 0
        empty = torch.empty(b, 0, model.config.vocab_size, device=ids.device)
        kept = torch.stack(step_logits, dim=1) if step_logits else empty
    return GenerationOutput(
        sequences=ids,
        attention_mask=mask,
        new_tokens=ids[:, prompt_length:],
        num_new_tokens=mask[:, prompt_length:].sum(dim=1),
        stopped=done,
        logits=kept,
        prompt_length=prompt_length,
    )


# -------------------------------------------------------------------- text in, text out


def _print_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class TextStreamer:
    """A ``streamer`` for :func:`generate` that turns one sequence's tokens into text.

    Byte-level BPE tokens need not end on a character boundary (an emoji may take two
    tokens), so the bytes go through an incremental UTF-8 decoder: a piece of text is
    handed to ``on_text`` as soon as its characters are whole. Tokens in ``skip_ids``
    (stop tokens, padding) are not shown. Call :meth:`end` after generating to flush.

    >>> from llmfoundations.tokenizer import BPETokenizer
    >>> tok = BPETokenizer.train("héhé", vocab_size=256)
    >>> pieces = []
    >>> streamer = TextStreamer(tok, on_text=pieces.append)
    >>> for t in tok.encode("hé"): streamer(torch.tensor([t]))
    >>> pieces  # the two bytes of "é" came out as one character
    ['h', 'é']
    """

    def __init__(
        self,
        tokenizer: TokenizerLike,
        on_text: Callable[[str], None] | None = None,
        skip_ids: Iterable[int] = (),
    ) -> None:
        if not callable(getattr(tokenizer, "decode_bytes", None)):
            raise TypeError(
                f"tokenizer must have a decode_bytes method (a BPETokenizer), got "
                f"{type(tokenizer).__name__}"
            )
        if on_text is not None and not callable(on_text):
            raise TypeError(f"on_text must be callable or None, got {type(on_text).__name__}")
        self.tokenizer = tokenizer
        self.on_text = on_text or _print_now
        self.skip_ids = set(skip_ids)
        self.text = ""  # everything handed out so far
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, tokens: Tensor) -> None:
        check_tensor("tokens", tokens, ndim=1)
        if tokens.numel() != 1:
            raise ValueError(
                f"TextStreamer follows one sequence: tokens must have shape (1,), got "
                f"{tuple(tokens.shape)}"
            )
        token = int(tokens[0])
        if token not in self.skip_ids:
            self._emit(self._decoder.decode(self.tokenizer.decode_bytes([token])))

    def end(self) -> None:
        """Flush what is left (an unfinished character becomes U+FFFD)."""
        self._emit(self._decoder.decode(b"", final=True))

    def _emit(self, piece: str) -> None:
        if piece:
            self.text += piece
            self.on_text(piece)


def _generate_text(
    model: nn.Module,
    tokenizer: TokenizerLike,
    prompt: str,
    max_new_tokens: int,
    sampling: SamplingConfig | None,
    stream: bool | Callable[[str], None],
    stop_ids: list[int],
    generator: torch.Generator | None,
) -> str:
    """Encode ``prompt``, generate, decode the new tokens up to (not including) a stop token."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not prompt:
        raise ValueError("prompt must not be empty (the model needs a token to continue)")
    if not (isinstance(stream, bool) or callable(stream)):
        raise TypeError(f"stream must be a bool or a callable, got {type(stream).__name__}")
    streamer = None
    if stream is not False:
        streamer = TextStreamer(tokenizer, None if stream is True else stream, skip_ids=stop_ids)
    ids = tokenizer.encode(prompt)
    out = generate_output(
        model,
        [ids],
        max_new_tokens,
        sampling=sampling,
        stop_token_ids=stop_ids,
        streamer=streamer,
        generator=generator,
    )
    n = int(out.num_new_tokens[0]) - int(out.stopped[0])  # leave the stop token out
    if streamer is not None:
        streamer.end()
    return tokenizer.decode(out.new_tokens[0, :n].tolist())


def complete(
    model: nn.Module,
    tokenizer: TokenizerLike,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    sampling: SamplingConfig | None = None,
    stop_token_ids: int | Iterable[int] = (),
    stream: bool | Callable[[str], None] = False,
    generator: torch.Generator | None = None,
) -> str:
    """Continue a plain-text ``prompt``; return only the new text.

    ``stream=True`` prints the text as it is generated; a callable receives the pieces.
    Generation stops after ``max_new_tokens`` or at one of ``stop_token_ids`` (not part of
    the returned text).
    """
    vocab = _check_model(model)
    return _generate_text(
        model,
        tokenizer,
        prompt,
        max_new_tokens,
        sampling,
        stream,
        _check_stop_ids(stop_token_ids, vocab),
        generator,
    )


def chat(
    model: nn.Module,
    tokenizer: TokenizerLike,
    messages: Sequence[Mapping[str, str]],
    *,
    max_new_tokens: int = 128,
    sampling: SamplingConfig | None = None,
    stream: bool | Callable[[str], None] = False,
    system_prompt: str | None | EllipsisType = ...,
    stop_token_ids: int | Iterable[int] | None = None,
    generator: torch.Generator | None = None,
) -> str:
    """The assistant's reply to a conversation, for a ChatML model such as SmolLM2.

    ``messages`` is a list of ``{"role": ..., "content": ...}`` dicts. They are rendered
    with ``pretrained.apply_chat_template`` (ending with the assistant's turn opened) and
    generation stops at ``stop_token_ids``, by default ``pretrained.STOP_TOKEN_IDS``
    (``<|im_end|>``, the end of the turn, and ``<|endoftext|>``). ``system_prompt``:
    ``...`` keeps the template's default system message, ``None`` leaves it out, a string
    replaces it. ``stream=True`` prints the reply as it is generated; a callable receives
    the pieces of text.

    >>> model, tok = load_smollm2()  # doctest: +SKIP
    >>> chat(model, tok, [{"role": "user", "content": "What is the capital of France?"}])  # doctest: +SKIP
    'The capital of France is Paris.'
    """
    from llmfoundations import pretrained  # lazy: only chat needs the SmolLM2 conventions

    vocab = _check_model(model)
    options = {} if system_prompt is ... else {"system_prompt": system_prompt}
    prompt = pretrained.apply_chat_template(messages, add_generation_prompt=True, **options)
    if stop_token_ids is None:
        stop_token_ids = pretrained.STOP_TOKEN_IDS
    stop_ids = _check_stop_ids(stop_token_ids, vocab)
    return _generate_text(
        model, tokenizer, prompt, max_new_tokens, sampling, stream, stop_ids, generator
    )
