"""Checks for Lab 07-5 (a chatbot): rendering a conversation in ChatML, and counting the
prompt tokens a prefix cache can serve on the next turn.

Each check runs the student's function next to the course's reference and either prints
one line of success or raises ``AssertionError`` naming the failing case, with a hint
where the wrong result is a known mistake:

- ``render_chatml(messages, system_prompt)`` (reference ``pretrained.apply_chat_template``
  with the assistant turn opened): no opened assistant turn at the end, no ``\\n`` after
  ``<|im_end|>``, the role and the content on one line, a system message added in front of
  one that is already there, and the default system message left out;
- ``cached_tokens(cached, prompt, block_size)`` (reference: a ``PrefixCache`` that holds
  ``cached`` and is asked to ``match`` ``prompt``): counting the common prefix token by
  token instead of in whole blocks, and forgetting that the last prompt token is always
  computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from llmfoundations.inference.paged_kv import PagedKVCache
from llmfoundations.inference.prefix_cache import CachingBlockAllocator, PrefixCache
from llmfoundations.pretrained import DEFAULT_SYSTEM_PROMPT, apply_chat_template

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_render_chatml", "check_cached_tokens"]


# ----------------------------------------------------------------------------- render


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


_RENDER_CASES = [
    (([_msg("user", "Hi!")], None), {}),
    (([_msg("user", "Hi!")], DEFAULT_SYSTEM_PROMPT), {}),
    (([_msg("system", "Be brief."), _msg("user", "2 + 2?")], DEFAULT_SYSTEM_PROMPT), {}),
    (([_msg("user", "My dog is called Rex."), _msg("assistant", "Nice name!"),
       _msg("user", "What is he called?")], "You are a friendly assistant."), {}),
    (([_msg("user", "Two\nlines"), _msg("assistant", ""), _msg("user", "Again?")], None), {}),
]  # fmt: skip


def _render(messages: Sequence[Mapping[str, str]], system_prompt: str | None) -> str:
    return apply_chat_template(messages, add_generation_prompt=True, system_prompt=system_prompt)


def _render_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def with_system(messages: Sequence[Mapping[str, str]], system_prompt: str | None) -> list:
        if system_prompt is not None and messages[0]["role"] != "system":
            return [_msg("system", system_prompt), *messages]
        return list(messages)

    def body(messages: list, fmt: str) -> str:
        return "".join(fmt.format(role=m["role"], content=m["content"]) for m in messages)

    turn = "<|im_start|>{role}\n{content}<|im_end|>\n"
    return [
        (lambda m, s: body(with_system(m, s), turn),
         "end with the opened assistant turn, '<|im_start|>assistant\\n': it is the cue for the "
         "model to write the reply"),
        (lambda m, s: body(with_system(m, s), "<|im_start|>{role}\n{content}<|im_end|>")
         + "<|im_start|>assistant\n",
         "every message ends with '<|im_end|>' and a newline, '<|im_end|>\\n'"),
        (lambda m, s: body(with_system(m, s), "<|im_start|>{role} {content}<|im_end|>\n")
         + "<|im_start|>assistant\n",
         "the role is on its own line: '<|im_start|>{role}\\n{content}<|im_end|>\\n'"),
        (lambda m, s: body(([_msg("system", s)] if s is not None else []) + list(m), turn)
         + "<|im_start|>assistant\n",
         "add the system message only when the conversation does not start with one"),
        (lambda m, s: body(list(m), turn) + "<|im_start|>assistant\n",
         "when the first message is not a system message, put one with system_prompt in front "
         "(unless system_prompt is None)"),
    ]  # fmt: skip


@exercise_check
def check_render_chatml(student: Callable[[Sequence[Mapping[str, str]], str | None], str]) -> None:
    """Lab 07-5: ``render_chatml(messages, system_prompt)`` -> the ChatML text of the
    conversation, ending with the opened assistant turn (``apply_chat_template``)."""
    check_callable("render_chatml", student)

    def run(messages: Sequence[Mapping[str, str]], system_prompt: str | None) -> Any:
        return student([dict(m) for m in messages], system_prompt)  # a copy per call

    compare_with_reference(
        "render_chatml", run, _render, _RENDER_CASES, hints=_render_mistakes()
    )


# ------------------------------------------------------------------------ cached tokens


def _cached_tokens(cached: Sequence[int], prompt: Sequence[int], block_size: int) -> int:
    """A PrefixCache that has computed and committed ``cached``, asked about ``prompt``."""
    n_blocks = 2 * (len(cached) + len(prompt)) // block_size + 4
    kv = PagedKVCache(1, n_blocks, block_size, 1, 1, allocator=CachingBlockAllocator(n_blocks))
    cache = PrefixCache(kv)
    seq, _ = cache.add_sequence(cached)
    zeros = torch.zeros(1, len(cached), 1)  # (Hkv, T, D): the values do not matter here
    kv.append(0, seq, zeros, zeros)
    cache.commit(seq, cached)
    cache.free_sequence(seq)
    return cache.match(prompt).num_tokens


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _cached_cases() -> list[tuple[tuple, dict]]:
    g = torch.Generator().manual_seed(7)
    turn1 = torch.randint(0, 50, (37,), generator=g).tolist()
    reply = torch.randint(0, 50, (9,), generator=g).tolist()
    turn2 = turn1 + reply + torch.randint(0, 50, (12,), generator=g).tolist()
    other = [t + 1 for t in turn1]
    return [
        ((turn1 + reply, turn2, 16), {}),  # the next turn: 32 of 46 tokens are full blocks
        ((turn1 + reply, turn2, 4), {}),  # smaller blocks: 44
        ((turn1, turn1, 4), {}),  # the same prompt again: the last token is computed
        ((turn1[:32], turn1[:32], 16), {}),  # two full blocks, asked again: only one is served
        ((turn1, other, 4), {}),  # nothing in common
        ((turn1[:20] + [99] * 17, turn1[:22] + [98] * 5, 8), {}),  # diverges inside a block
        ((turn1[:10], turn1, 4), {}),  # cached is shorter: its last block is not full
    ]


def _cached_mistakes() -> list[tuple[Callable[..., Any], str]]:
    return [
        (lambda c, p, b: min(_common(c, p), len(p) - 1),
         "only whole blocks are cached: round the shared prefix down to a multiple of "
         "block_size"),
        (lambda c, p, b: _common(c, p) // b * b,
         "the last prompt token is always computed (its logits predict the reply), so at most "
         "len(prompt) - 1 tokens, in whole blocks, come from the cache"),
    ]  # fmt: skip


@exercise_check
def check_cached_tokens(student: Callable[[Sequence[int], Sequence[int], int], int]) -> None:
    """Lab 07-5: ``cached_tokens(cached, prompt, block_size)`` -> how many tokens of
    ``prompt`` a block-hashing prefix cache holding ``cached`` serves (an int)."""
    check_callable("cached_tokens", student)

    def run(cached: Sequence[int], prompt: Sequence[int], block_size: int) -> Any:
        got = student(list(cached), list(prompt), block_size)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, int):
            raise AssertionError(f"cached_tokens must return an int, got {type(got).__name__}")
        return got

    compare_with_reference(
        "cached_tokens", run, _cached_tokens, _cached_cases(), hints=_cached_mistakes()
    )
