"""Continuous batching: requests join and leave the running batch at every step.

A server receives requests at any time, each with its own prompt length and its own
answer length. *Static* batching (``generate`` on a padded batch) starts a batch, runs it
until its longest answer is done, then starts the next: rows that finished early keep
their slot, and a request that arrives just after a batch started waits for all of it.
*Continuous* (iteration-level) batching, introduced by Orca (Yu et al., OSDI 2022,
https://www.usenix.org/conference/osdi22/presentation/yu), schedules at every forward
step instead: a finished request leaves at once and a waiting one takes its place. The
paged KV cache (``inference.paged_kv``) makes this cheap: a request that leaves returns
its blocks to the pool, and a new one takes blocks from anywhere in it.

One engine step here:

1. **Schedule** (``Scheduler.schedule``) under a *token budget* (vLLM's
   ``max_num_batched_tokens``): every running request that is decoding gets one token;
   what is left of the budget goes to prefills, first requests whose prompt is partly
   read (chunked prefill), then newly admitted ones, first come first served. A long
   prompt is cut into chunks, so that it does not stall the decoding requests (vLLM's
   and Sarathi-Serve's chunked prefill, Agrawal et al., 2024,
   https://arxiv.org/abs/2403.02310).
2. **Run** it (``Engine.step``): one forward pass for all decoding rows together, through a
   ``PagedKVView`` with its padding mask (rows of different lengths, one new token each),
   and one forward pass per prefill chunk. The chunk that ends a prompt gives the
   request's first token; it decodes from the next step on. ``Engine(fast=True)`` runs a
   step that prefills as *one* pass instead: the decoding rows' tokens and every prefill
   chunk packed into one row (``PackedPagedKVView``, with a block mask), so the weights
   are read once per step, as in vLLM and transformers' continuous batching.
3. **Choose and stream** each request's token with its own ``SamplingConfig`` and
   ``torch.Generator``; each token becomes a ``TokenEvent`` (returned by ``step``, yielded
   by ``Engine.stream``, and passed to the request's ``on_token`` callback). A request
   finishes at a stop token or after ``max_new_tokens``, and its blocks go back to the
   pool in the same step. ``cancel`` ends a request at any time and frees its blocks.

Admission and memory. There is no preemption here. A request is admitted only when the
pool can hold its worst case, ``prompt + max_new_tokens - 1`` positions (the last token
is never fed back), counting the blocks already promised to running requests; otherwise
it waits (first come first served: later requests wait behind it). Blocks are still
allocated on demand, so the pool holds only what was written; the promise only
guarantees that a running request never runs out of blocks. vLLM instead admits on the
prompt alone and, when the pool runs dry, *preempts* a running request: it frees its
blocks and recomputes it later (or, in older versions, swaps its blocks to CPU memory).

Each request's tokens are those of ``generate`` run on it alone (greedy, or sampling with
the same seeded generator): batching changes the schedule, not the arithmetic, up to the
rounding of a batched matrix product (the tests check this against ``generate`` and
against ``transformers``' ``generate_batch``).

Left out (what vLLM and TGI also do): preemption, recomputation and swapping; a varlen
attention kernel for the packed pass (vLLM v1 flattens every scheduled token into one
sequence and attends through the block tables; the fast path here packs the tokens too,
but its attention is dense under a block mask, and a step of decodes alone stays
left-padded, which is cheaper than a dense packed attention); CUDA graphs captured for
fixed decode batch sizes; prefix caching inside the scheduler (``inference.prefix_cache``
works one request at a time); priorities, fairness and other scheduling policies
(TGI's waiting-served ratio, vLLM's priority scheduler); speculative decoding in the
batch; parallel sampling and beam search (copy-on-write blocks); asynchronous
scheduling that overlaps the CPU's bookkeeping with the GPU's forward pass.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from llmfoundations._validate import check_int
from llmfoundations.generate import _check_length_fits, _check_model, _check_stop_ids
from llmfoundations.inference.paged_kv import PagedKVCache
from llmfoundations.sampling import SamplingConfig, _check_generator

__all__ = [
    "TokenEvent",
    "Request",
    "SchedulerConfig",
    "StepPlan",
    "Scheduler",
    "Engine",
]

GREEDY = SamplingConfig(do_sample=False)


class TokenEvent(NamedTuple):
    """One generated token of one request; ``finished``: the request ended with it (a stop
    token or ``max_new_tokens``). A request cancelled meanwhile ends without such an event."""

    request_id: int
    token: int
    finished: bool


@dataclass(eq=False)
class Request:
    """One request and its progress (the engine builds it in ``Engine.add_request``).

    ``prompt`` and ``output`` are token ids; ``num_prefilled`` counts the prompt tokens
    already in the cache; ``seq_id`` names its sequence in the paged cache (``None``
    while waiting and after it finished). ``status`` is ``"waiting"``, ``"running"``,
    ``"finished"`` (stop token or ``max_new_tokens``) or ``"cancelled"``.
    """

    request_id: int
    prompt: list[int]
    max_new_tokens: int
    stop_token_ids: frozenset[int] = frozenset()
    sampling: SamplingConfig = GREEDY
    generator: torch.Generator | None = None
    on_token: Callable[[TokenEvent], None] | None = None
    arrival_step: int = 0
    output: list[int] = field(default_factory=list)
    num_prefilled: int = 0
    seq_id: int | None = None
    status: str = "waiting"

    @property
    def is_prefilling(self) -> bool:
        """Part of the prompt is not in the cache yet."""
        return self.num_prefilled < len(self.prompt)

    @property
    def is_done(self) -> bool:
        return self.status in ("finished", "cancelled")

    @property
    def max_positions(self) -> int:
        """Positions this request can ever write: the last token is never fed back."""
        return len(self.prompt) + self.max_new_tokens - 1


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of one engine step.

    Attributes:
        token_budget: tokens one step may feed through the model, decodes and prefill
            chunks together (vLLM's ``max_num_batched_tokens``).
        max_running: requests admitted at once (vLLM's ``max_num_seqs``); must be
            ``<= token_budget`` so that every running request can always decode.
        chunked_prefill: ``True`` cuts prompts into chunks that fit what is left of the
            budget; ``False`` prefills a prompt in one step, so it must fit in the budget.
    """

    token_budget: int = 64
    max_running: int = 8
    chunked_prefill: bool = True

    def __post_init__(self) -> None:
        check_int("token_budget", self.token_budget, minimum=1)
        check_int("max_running", self.max_running, minimum=1)
        if self.max_running > self.token_budget:
            raise ValueError(
                f"max_running={self.max_running} must be <= token_budget={self.token_budget}: "
                "every running request decodes one token per step"
            )
        if not isinstance(self.chunked_prefill, bool):
            raise TypeError(
                f"chunked_prefill must be a bool, got {type(self.chunked_prefill).__name__}"
            )


@dataclass
class StepPlan:
    """What one step runs: ``decode`` request ids (one token each) and ``prefill``
    chunks ``(request_id, num_tokens)``; ``admitted``: ids that left the queue."""

    decode: list[int] = field(default_factory=list)
    prefill: list[tuple[int, int]] = field(default_factory=list)
    admitted: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        """Tokens fed through the model in this step."""
        return len(self.decode) + sum(n for _, n in self.prefill)


class Scheduler:
    """The bookkeeping of continuous batching: a waiting queue, the running requests,
    the token budget and the block promises. No tensors; :class:`Engine` runs its plans.
    """

    def __init__(self, config: SchedulerConfig, cache: PagedKVCache) -> None:
        if not isinstance(config, SchedulerConfig):
            raise TypeError(f"config must be a SchedulerConfig, got {type(config).__name__}")
        self.config, self.cache = config, cache
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order

    def blocks_for(self, num_positions: int) -> int:
        """Blocks that hold ``num_positions`` positions."""
        return -(-num_positions // self.cache.block_size)

    def blocks_promised(self) -> int:
        """Blocks the running requests may still allocate (worst case minus held)."""
        promised = 0
        for r in self.running:
            held = len(self.cache.block_table(r.seq_id))
            promised += self.blocks_for(r.max_positions) - held
        return promised

    def can_admit(self, request: Request) -> bool:
        """Room for one more request: a running slot, and free blocks for its worst case
        beyond what the running requests were promised."""
        if len(self.running) >= self.config.max_running:
            return False
        spare = self.cache.num_free_blocks - self.blocks_promised()
        return self.blocks_for(request.max_positions) <= spare

    def admit(self, request: Request) -> None:
        """Move a request from the queue to the running set, with a fresh sequence."""
        request.seq_id = self.cache.add_sequence()
        request.status = "running"
        self.running.append(request)

    def schedule(self) -> StepPlan:
        """Plan one step: decodes first, then prefill chunks (running, then admitted)."""
        plan = StepPlan()
        plan.decode = [r.request_id for r in self.running if not r.is_prefilling]
        budget = self.config.token_budget - len(plan.decode)
        for r in self.running:
            if r.is_prefilling and budget > 0:
                n = self._chunk(r, budget)
                if n == 0:
                    break  # no chunking: the prompt waits for a step with room (FCFS)
                plan.prefill.append((r.request_id, n))
                budget -= n
        while self.waiting and budget > 0 and self.can_admit(self.waiting[0]):
            r = self.waiting[0]
            n = self._chunk(r, budget)
            if n == 0:
                break
            self.admit(self.waiting.popleft())
            plan.admitted.append(r.request_id)
            plan.prefill.append((r.request_id, n))
            budget -= n
        return plan

    def _chunk(self, request: Request, budget: int) -> int:
        """Prompt tokens of ``request`` that fit in ``budget`` (0: wait)."""
        rest = len(request.prompt) - request.num_prefilled
        if self.config.chunked_prefill:
            return min(rest, budget)
        return rest if rest <= budget else 0

    def remove(self, request: Request) -> None:
        """Take a request out of the queue or the running set; free its blocks."""
        if request in self.waiting:
            self.waiting.remove(request)
        if request in self.running:
            self.running.remove(request)
        if request.seq_id is not None:
            self.cache.free_sequence(request.seq_id)
            request.seq_id = None


@contextmanager
def _head_sees(model: nn.Module, index: slice | torch.Tensor) -> Iterator[bool]:
    """While open, the model's output layer (``lm_head``) sees only positions ``index`` of
    its input ``x`` (B, T, C), through a forward pre-hook (transformers' ``logits_to_keep``):
    logits are not computed for positions nobody reads. Yields whether there was a head."""
    head = getattr(model, "lm_head", None)
    if head is None:
        yield False
        return

    def keep(module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        return (x[:, index], *rest)

    hook = head.register_forward_pre_hook(keep)
    try:
        yield True
    finally:
        hook.remove()


class Engine:
    """A continuous-batching engine over a ``DecoderLM`` and a paged KV cache.

    Args:
        model: a ``DecoderLM`` (eval mode is set during each step, then restored).
        num_blocks, block_size: the pool of the ``PagedKVCache`` built for the model.
        config: the scheduler's limits (default ``SchedulerConfig()``).
        fast: ``False`` (default) runs the readable reference: each layer gathers every
            row's blocks into a padded dense copy, and the model computes logits for every
            fed position. ``True`` reads the pool through *planned* views (slots computed
            once per pass, one ``index_select`` per layer; ``PagedKVCache.view``) and
            computes logits for the last position only; a step that prefills runs its
            decodes and prefill chunks in one packed pass (``PagedKVCache.packed_view``),
            and plain greedy rows are chosen with one ``argmax``. The tokens are the same
            (the logits up to float rounding).

    Use: ``add_request`` (any time, returns an id), ``step`` (one scheduled forward step,
    returns its :class:`TokenEvent` s), ``stream`` (steps until nothing is left, yielding
    events), ``cancel``, ``run`` (everything to the end: id -> tokens), ``release`` (forget
    a finished request). A step that raises before its tokens are recorded (non-finite
    logits, an error in the model or a sampler, an interrupt) is undone, generators
    included, so it can be run again or its requests cancelled (a callback that raises
    does not undo the step: its tokens are recorded first).

    >>> from llmfoundations.models import DecoderLM, ModelConfig
    >>> _ = torch.manual_seed(0)
    >>> model = DecoderLM(ModelConfig.llama(vocab_size=50, d_model=16, n_layers=1, n_heads=2))
    >>> engine = Engine(model, num_blocks=8, block_size=4)
    >>> a = engine.add_request([1, 2, 3], max_new_tokens=2)
    >>> b = engine.add_request([4], max_new_tokens=3)
    >>> [len(tokens) for tokens in engine.run().values()], engine.cache.num_free_blocks
    ([2, 3], 8)
    """

    def __init__(
        self,
        model: nn.Module,
        num_blocks: int,
        block_size: int,
        config: SchedulerConfig | None = None,
        *,
        fast: bool = False,
    ) -> None:
        if not isinstance(fast, bool):
            raise TypeError(f"fast must be a bool, got {type(fast).__name__}")
        self.fast = fast
        self.vocab_size = _check_model(model)
        self.model = model
        self.cache = PagedKVCache.for_model(model, num_blocks=num_blocks, block_size=block_size)
        self.scheduler = Scheduler(config or SchedulerConfig(), self.cache)
        # Every request added and not yet released, finished and cancelled ones too (their
        # outputs stay readable); a long-running server calls `release` once it has sent one.
        self.requests: dict[int, Request] = {}
        self.step_count = 0
        self.last_plan: StepPlan | None = None
        self._next_id = 0
        self._device = next(model.parameters()).device
        # The packed pass needs a model that takes a full attention mask and positions
        # without checks (DecoderLM's forward_unchecked).
        self._can_pack = hasattr(model, "forward_unchecked")

    # ------------------------------------------------------------------ requests

    def add_request(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        *,
        stop_token_ids: int | Iterable[int] = (),
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        on_token: Callable[[TokenEvent], None] | None = None,
    ) -> int:
        """Queue a request; return its id. It is admitted at a later ``step``.

        ``prompt``: token ids (at least one); ``max_new_tokens`` >= 1; the request stops
        after producing one of ``stop_token_ids`` (the stop token is part of its output,
        as in ``generate``); ``sampling`` (default greedy) with its own ``generator``;
        ``on_token`` receives each of its :class:`TokenEvent` s, after the step has
        recorded every request's token. An exception it raises is raised by ``step`` after
        the step's other callbacks have run; the engine stays consistent, and the step's
        tokens, which ``step`` then does not return, are in :meth:`output`.
        """
        prompt = self._check_prompt(prompt)
        check_int("max_new_tokens", max_new_tokens, minimum=1)
        stop_ids = frozenset(_check_stop_ids(stop_token_ids, self.vocab_size))
        if sampling is not None and not isinstance(sampling, SamplingConfig):
            raise TypeError(
                f"sampling must be a SamplingConfig or None, got {type(sampling).__name__}"
            )
        _check_generator(generator)
        if generator is not None and generator.device.type != self._device.type:
            raise ValueError(
                f"generator is on {generator.device}, the model on {self._device}: give a "
                f"torch.Generator(device={str(self._device)!r})"
            )
        if on_token is not None and not callable(on_token):
            raise TypeError(f"on_token must be callable or None, got {type(on_token).__name__}")
        _check_length_fits(self.model, len(prompt) + max_new_tokens)
        request = Request(
            request_id=self._next_id,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            stop_token_ids=stop_ids,
            sampling=sampling or GREEDY,
            generator=generator,
            on_token=on_token,
            arrival_step=self.step_count,
        )
        self._check_schedulable(request)
        self._next_id += 1
        self.requests[request.request_id] = request
        self.scheduler.waiting.append(request)
        return request.request_id

    def _check_prompt(self, prompt: object) -> list[int]:
        if isinstance(prompt, torch.Tensor):
            if prompt.ndim != 1:
                raise ValueError(f"prompt must be 1-D token ids, got shape {tuple(prompt.shape)}")
            prompt = prompt.tolist()
        if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
            raise TypeError(f"prompt must be a list of token ids, got {type(prompt).__name__}")
        if len(prompt) == 0:
            raise ValueError("prompt is empty: a request needs at least one token")
        for t in prompt:
            if isinstance(t, bool) or not isinstance(t, int):
                raise TypeError(f"prompt must hold ints, got {type(t).__name__} ({t!r})")
            if not 0 <= t < self.vocab_size:
                raise ValueError(
                    f"prompt holds token {t}, outside [0, vocab_size={self.vocab_size})"
                )
        return list(prompt)

    def _check_schedulable(self, request: Request) -> None:
        """Refuse a request that could never be admitted (it would wait forever)."""
        sched = self.scheduler
        need = sched.blocks_for(request.max_positions)
        if need > self.cache.num_blocks:
            raise ValueError(
                f"prompt length {len(request.prompt)} + max_new_tokens {request.max_new_tokens} "
                f"needs {need} blocks of {self.cache.block_size}, the pool has "
                f"{self.cache.num_blocks}"
            )
        if not sched.config.chunked_prefill and len(request.prompt) > sched.config.token_budget:
            raise ValueError(
                f"prompt length {len(request.prompt)} exceeds token_budget="
                f"{sched.config.token_budget} and chunked_prefill is off"
            )

    def cancel(self, request_id: int) -> bool:
        """End a request now and free its blocks. Returns ``False`` if it had already
        finished (or was cancelled), ``True`` otherwise; unknown ids raise ``ValueError``."""
        request = self._get(request_id)
        if request.is_done:
            return False
        self.scheduler.remove(request)
        request.status = "cancelled"
        return True

    def release(self, request_id: int) -> list[int]:
        """Forget a finished or cancelled request and return its output, so that a
        long-running server does not keep every request it ever served. A request still
        waiting or running is refused (``cancel`` it first); its id is never reused."""
        request = self._get(request_id)
        if not request.is_done:
            raise ValueError(
                f"request {request_id} is still {request.status}: cancel it before release"
            )
        del self.requests[request_id]
        return list(request.output)

    def _get(self, request_id: object) -> Request:
        if isinstance(request_id, bool) or not isinstance(request_id, int):
            raise TypeError(f"request_id must be an int, got {type(request_id).__name__}")
        if request_id not in self.requests:
            given = f"ids 0 .. {self._next_id - 1} were given" if self._next_id else "none given"
            gone = " and it was released" if 0 <= request_id < self._next_id else ""
            raise ValueError(f"request_id {request_id} is unknown ({given}{gone})")
        return self.requests[request_id]

    def output(self, request_id: int) -> list[int]:
        """The tokens a request has produced so far (a copy)."""
        return list(self._get(request_id).output)

    @property
    def has_work(self) -> bool:
        """Requests are waiting or running."""
        return bool(self.scheduler.waiting or self.scheduler.running)

    # ------------------------------------------------------------------ steps

    def step(self) -> list[TokenEvent]:
        """Schedule and run one step; return the tokens it produced, in request order."""
        plan = self.scheduler.schedule()
        self.last_plan = plan
        self.step_count += 1
        events: list[TokenEvent] = []
        if plan.num_tokens == 0:
            return events
        # If the step fails before a token is recorded (non-finite logits, an error in the
        # model or a sampler, an interrupt), its requests' written positions, fed prompt
        # tokens and generators are restored, so the step can be run again (with the same
        # tokens: no token is chosen before every pass has succeeded) or a request cancelled.
        # Requests it admitted stay admitted, with nothing written, and blocks it reserved
        # stay with their sequences (within what admission promised them).
        touched = [self.requests[i] for i in plan.decode + [i for i, _ in plan.prefill]]
        before = [(r, self.cache.length(r.seq_id), r.num_prefilled) for r in touched]
        generators = {id(g): g for g in (self._generator_of(r) for r in touched) if g is not None}
        states = [(g, g.get_state()) for g in generators.values()]
        was_training = self.model.training
        if was_training:  # (train() walks every module: only when needed)
            self.model.eval()
        try:
            with torch.no_grad():
                if self.fast and plan.prefill and self._can_pack:
                    passes = [self._run_packed(plan)]  # decodes and prefill chunks in one pass
                else:
                    passes = [self._run_decodes(plan.decode)]
                    passes += [self._run_prefill_chunk(i, n) for i, n in plan.prefill]
            chosen: dict[int, int] = {}
            for requests, logits in passes:  # in the order of the passes, as they ran before
                chosen.update(self._choose_rows(requests, logits) if self.fast else
                              {r.request_id: self._choose(r, logits[row : row + 1])
                               for row, r in enumerate(requests)})  # fmt: skip
        except BaseException:
            for r, length, num_prefilled in before:
                self.cache.truncate(r.seq_id, length)
                r.num_prefilled = num_prefilled
            for generator, state in states:
                generator.set_state(state)
            raise
        finally:
            if was_training:
                self.model.train()
        # Every token of the step is recorded before any callback runs, so a callback that
        # raises or cancels a request cannot leave another one half-stepped (its keys and
        # values written, its token not). A cancel takes effect from the next step. Every
        # callback is called; the first exception one raised is raised after the last.
        events = [self._record(self.requests[i], chosen[i]) for i in sorted(chosen)]
        # (Callbacks are looked up first: one may release another request of this step.)
        callbacks = [self.requests[e.request_id].on_token for e in events]
        error: Exception | None = None
        for event, on_token in zip(events, callbacks, strict=True):
            if on_token is not None:
                try:
                    on_token(event)
                except Exception as e:  # noqa: BLE001 (re-raised below)
                    error = error or e
        if error is not None:
            raise error
        return events

    def _forward(self, ids: torch.Tensor, seq_ids: list[int]) -> torch.Tensor:
        """Next-token logits (B, V) for rows of ``ids`` (B, T) through the paged cache."""
        # fast: a planned view (blocks reserved, slots computed once for all layers).
        view = self.cache.view(seq_ids, num_new_tokens=ids.shape[1] if self.fast else None)
        # Rows of different lengths are left-padded in the attention; the mask masks the
        # padding and gives every token its own position (cumsum of the mask - 1).
        mask = view.padding_mask(ids.shape[1], device=self._device) if len(seq_ids) > 1 else None
        forward = getattr(self.model, "forward_unchecked", self.model)
        # Only the last position's logits are needed: a pre-hook on the output layer keeps
        # its last input position (transformers' logits_to_keep=1), so a prefill chunk of
        # T tokens does not compute T - 1 rows of vocabulary-sized logits for nothing.
        with _head_sees(self.model, slice(-1, None)) if self.fast else nullcontext():
            out = forward(ids, attention_mask=mask, kv_cache=view)
        logits = out.logits[:, -1].float()  # (B, V)
        self._check_finite(logits, seq_ids)
        return logits

    def _run_packed(self, plan: StepPlan) -> tuple[list[Request], torch.Tensor]:
        """The fast path of a step that prefills: every decoding request's last token and
        every prefill chunk, packed into one row, in one forward pass (the weights are read
        once per step, as in transformers' and vLLM's engines). Returns the requests whose
        rows end there (decodes, and chunks that end their prompt) and their logits (R, V)."""
        rows: list[tuple[Request, list[int]]] = [
            (self.requests[i], [self.requests[i].output[-1]]) for i in plan.decode
        ]
        for request_id, n in plan.prefill:
            r = self.requests[request_id]
            rows.append((r, r.prompt[r.num_prefilled : r.num_prefilled + n]))
        view = self.cache.packed_view([r.seq_id for r, _ in rows], [len(t) for _, t in rows])
        ids = torch.tensor(
            [[t for _, tokens in rows for t in tokens]], device=self._device
        )  # (1, T)
        keep = torch.tensor(view.last_indices(), device=self._device)  # each row's last token
        with _head_sees(self.model, keep) as kept:  # logits of those tokens only
            out = self.model.forward_unchecked(
                ids,
                attention_mask=view.attention_mask(self._device),
                positions=view.positions(self._device),
                kv_cache=view,
            )
        logits = out.logits[0] if kept else out.logits[0, keep]  # (R, V)
        logits = logits.float()
        self._check_finite(logits, [r.seq_id for r, _ in rows])
        for r, tokens in rows[len(plan.decode) :]:  # the prefill chunks
            r.num_prefilled += len(tokens)
        ready = [(row, r) for row, (r, _) in enumerate(rows) if not r.is_prefilling]
        return [r for _, r in ready], logits[[row for row, _ in ready]]

    def _choose_rows(self, requests: list[Request], logits: torch.Tensor) -> dict[int, int]:
        """Tokens for ``requests`` from their logits (R, V): plain greedy rows are chosen
        together (one argmax, one copy to the host), the others one by one with
        :meth:`_choose` (each with its own generator)."""
        if not requests:
            return {}
        greedy = [row for row, r in enumerate(requests) if r.sampling == GREEDY]
        chosen: dict[int, int] = {}
        if greedy:
            picks = GREEDY.choose_unchecked(logits[greedy]).tolist()  # (G,)
            chosen = {requests[row].request_id: t for row, t in zip(greedy, picks, strict=True)}
        for row, r in enumerate(requests):
            if r.request_id not in chosen:
                chosen[r.request_id] = self._choose(r, logits[row : row + 1])
        return chosen

    def _check_finite(self, logits: torch.Tensor, seq_ids: list[int]) -> None:
        if not bool(torch.isfinite(logits.amax(dim=-1)).all()):  # one check for all rows
            ids = [r.request_id for r in self.scheduler.running if r.seq_id in seq_ids]
            raise ValueError(
                f"the model's logits for requests {ids} hold NaN or +inf, or a row of "
                "only -inf: no token can be chosen (check the model's weights and inputs)"
            )

    def _run_decodes(self, request_ids: list[int]) -> tuple[list[Request], torch.Tensor | None]:
        """One forward pass for every decoding request, its last token in: the requests and
        their next-token logits (B, V)."""
        if not request_ids:
            return [], None
        requests = [self.requests[i] for i in request_ids]
        last = torch.tensor([[r.output[-1]] for r in requests], device=self._device)  # (B, 1)
        return requests, self._forward(last, [r.seq_id for r in requests])  # (B, V)

    def _run_prefill_chunk(self, request_id: int, n: int) -> tuple[list[Request], torch.Tensor]:
        """Feed the next ``n`` prompt tokens; the chunk that ends the prompt gives logits
        (1, V) for the request's first token (no request: the prompt goes on)."""
        r = self.requests[request_id]
        chunk = r.prompt[r.num_prefilled : r.num_prefilled + n]
        logits = self._forward(torch.tensor([chunk], device=self._device), [r.seq_id])  # (1, V)
        r.num_prefilled += n
        return ([] if r.is_prefilling else [r]), logits

    def _generator_of(self, request: Request) -> torch.Generator | None:
        """The generator a request's tokens are drawn from: its own, the device's default one
        if it samples without one (None for greedy requests, and on devices other than the
        CPU and CUDA, whose default generators the engine does not restore)."""
        if request.generator is not None or request.sampling == GREEDY:
            return request.generator
        if self._device.type == "cpu":
            return torch.default_generator
        if self._device.type == "cuda":
            index = self._device.index
            return torch.cuda.default_generators[torch.cuda.current_device() if index is None else index]
        return None

    def _choose(self, request: Request, logits: torch.Tensor) -> int:
        """The request's next token from its logits (1, V), with its own sampling and RNG."""
        seen = None
        if request.sampling.repetition_penalty is not None:  # the only processor that reads them
            seen = torch.tensor([request.prompt + request.output], device=self._device)  # (1, T)
        return int(request.sampling.choose_unchecked(logits, seen, request.generator)[0])

    def _record(self, request: Request, token: int) -> TokenEvent:
        """Record a token; finish the request (freeing its blocks) if it was the last."""
        request.output.append(token)
        done = token in request.stop_token_ids or len(request.output) == request.max_new_tokens
        if done:
            self.scheduler.remove(request)
            request.status = "finished"
        return TokenEvent(request.request_id, token, done)

    def stream(self) -> Iterator[TokenEvent]:
        """Step until no request is waiting or running, yielding every token as it comes.
        Requests may be added or cancelled between the events; like a cancel from an
        ``on_token`` callback, a cancel takes effect from the next step (the events of the
        step already run still come)."""
        while self.has_work:
            yield from self.step()

    def run(self) -> dict[int, list[int]]:
        """Step until done; return every request's output (cancelled ones: what they had)."""
        for _ in self.stream():
            pass
        return {i: list(r.output) for i, r in self.requests.items()}

    def __repr__(self) -> str:
        s = self.scheduler
        return (
            f"Engine(step={self.step_count}, waiting={len(s.waiting)}, running={len(s.running)}, "
            f"free_blocks={self.cache.num_free_blocks}/{self.cache.num_blocks})"
        )
