"""Mixture of experts: a router picks k of E feed-forward experts for every token.

A mixture-of-experts (MoE) layer replaces the single feed-forward network of a
transformer block with ``E`` expert networks and a small linear *router* (the gate).
For each token the router scores every expert, the token is sent to its ``top_k``
best experts only, and the layer returns the experts' outputs weighted by the
router's (renormalised) probabilities. The parameter count grows with ``E``, the
compute per token only with ``top_k``.

What the module holds:

- :func:`Expert` - one feed-forward expert: `layers.SwiGLU`, or `layers.FeedForward` (GELU, ReLU).
- :func:`top_k_routing` - softmax over the router logits, top-k, renormalise
  (Mixtral's rule); returns a :class:`Routing`.
- :func:`load_balancing_loss` - the Switch Transformer auxiliary loss.
- :func:`router_z_loss` - the ST-MoE loss that keeps router logits small.
- :func:`expert_capacity` and :func:`dispatch_order` - capacity per expert, and the
  sort that groups token-slots by expert and drops the ones over capacity.
- :class:`MoELayer` - the batched layer: every expert runs once on a contiguous
  slice of the tokens routed to it. It returns a :class:`MoEOutput`: the mixed
  output, the layer's losses and what the router decided.
- :func:`moe_reference` - the same layer computed token by token, in plain Python
  loops, to check the batched one against.

Vocabulary. A token routed to ``K`` experts occupies ``K`` *token-slots*; slot
``(n, k)`` is token ``n``'s ``k``-th choice. Capacity and the load-balancing loss
both count slots, not tokens.

Naming of expert weights. Mixtral's checkpoints call an expert's three matrices
``w1``, ``w3`` and ``w2``; here (as in Llama and in Hugging Face ``transformers``)
they are ``gate_proj`` (= ``w1``, passed through SiLU), ``up_proj`` (= ``w3``, the
linear branch) and ``down_proj`` (= ``w2``, back to ``d_model``):
``expert(x) = down_proj(silu(gate_proj(x)) * up_proj(x))``.

Left out: expert parallelism (experts on different devices and the all-to-all
exchange of tokens between them), shared experts that every token uses (DeepSeek-MoE),
fine-grained expert segmentation, auxiliary-loss-free balancing with per-expert bias
terms (DeepSeek-V3), expert-choice routing (experts pick tokens), soft MoE, fused
grouped-GEMM kernels, and routing decisions made in reduced precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from einops import rearrange
from torch import Tensor, nn

from llmfoundations._pytree import pytree_dataclass
from llmfoundations._validate import check_choice, check_int, check_positive, check_tensor
from llmfoundations.layers import FeedForward, SwiGLU

__all__ = [
    "ACTIVATIONS",
    "Expert",
    "Routing",
    "top_k_routing",
    "load_balancing_loss",
    "router_z_loss",
    "expert_capacity",
    "dispatch_order",
    "MoELayer",
    "MoEOutput",
    "moe_reference",
]

ExpertActivation = Literal["swiglu", "gelu", "relu"]
ACTIVATIONS: tuple[ExpertActivation, ...] = get_args(ExpertActivation)


def _check_router_logits(router_logits: object) -> Tensor:
    check_tensor("router_logits", router_logits, ndim=2, floating=True, nonempty=True)
    return router_logits  # type: ignore[return-value]


# ------------------------------------------------------------------------------ experts


def Expert(  # noqa: N802 - a factory named like the module it builds, as nn layers are
    d_model: int, d_ff: int, activation: ExpertActivation = "swiglu", bias: bool = False
) -> nn.Module:
    """One feed-forward expert, ``d_model -> d_ff -> d_model``: an ordinary feed-forward
    network of ``layers``, one per expert.

    ``activation="swiglu"`` (Mixtral, Llama): ``layers.SwiGLU``,
    ``down_proj(silu(gate_proj(x)) * up_proj(x))``, three matrices (Mixtral's w1, w3, w2).
    ``"gelu"`` (exact, erf-based) or ``"relu"``: ``layers.FeedForward``,
    ``down_proj(act(up_proj(x)))``, two matrices (the original Transformer and GPT-2 style).

    >>> Expert(8, 16)(torch.zeros(3, 8)).shape
    torch.Size([3, 8])
    """
    check_choice("activation", activation, ACTIVATIONS)
    if activation == "swiglu":
        return SwiGLU(d_model, d_ff, bias=bias)
    return FeedForward(d_model, d_ff, activation=activation, bias=bias)


# ------------------------------------------------------------------------------ routing


@pytree_dataclass
@dataclass
class Routing:
    """The router's decision for N tokens.

    Attributes:
        weights: (N, K) mixing weights of the chosen experts; each row sums to one.
        experts: (N, K) long, the chosen experts, best first.
        probs: (N, E) the full softmax over experts (float32), before top-k.
    """

    weights: Tensor
    experts: Tensor
    probs: Tensor


def top_k_routing(router_logits: Tensor, top_k: int) -> Routing:
    """Mixtral's routing rule: softmax over all experts, keep the top k, renormalise.

    The softmax runs in float32 whatever the logits' dtype, because the choice of
    experts is a discrete decision that low precision can flip. Because the kept
    probabilities are divided by their sum, the result is the same as a softmax over
    the k kept logits alone. Ties are broken by ``torch.topk``.

    >>> r = top_k_routing(torch.tensor([[2.0, 0.0, 1.0]]), top_k=2)
    >>> r.experts.tolist(), [round(w, 4) for w in r.weights[0].tolist()]
    ([[0, 2]], [0.7311, 0.2689])
    """
    _check_router_logits(router_logits)
    n_experts = router_logits.shape[-1]
    check_int("top_k", top_k, minimum=1)
    if top_k > n_experts:
        raise ValueError(f"top_k ({top_k}) must be <= the number of experts ({n_experts})")
    probs = router_logits.float().softmax(dim=-1)  # (N, E)
    top_probs, experts = probs.topk(top_k, dim=-1)  # (N, K), (N, K)
    weights = top_probs / top_probs.sum(dim=-1, keepdim=True)  # (N, K)
    return Routing(weights=weights, experts=experts, probs=probs)


def load_balancing_loss(router_logits: Tensor, top_k: int) -> Tensor:
    r"""Switch Transformer's auxiliary loss: ``E * sum_i f_i * P_i`` (a scalar).

    ``f_i`` is the fraction of the ``N * k`` token-slots whose top-k choice is expert
    ``i`` (the ``f_i`` sum to one), ``P_i`` the router probability of expert ``i``
    averaged over the N tokens. A router that spreads the slots evenly and has uniform
    probabilities scores exactly 1 for any k; one that sends everything to a single
    expert with probability 1 scores ``E``. Gradients flow through ``P`` only (``f``
    comes from an argmax-like top-k); lowering the loss moves probability away from
    overloaded experts. Multiply by a small coefficient (Switch used 0.01) before
    adding it to the language-model loss.

    Counting convention: Hugging Face's ``load_balancing_loss_func`` (Mixtral) divides
    the slot counts by the number of *tokens*, so its ``f_i`` sum to k and its value
    is **k times** this one (a balanced top-2 router scores 2 there, 1 here).

    Reference: Fedus, Zoph & Shazeer 2021, https://arxiv.org/abs/2101.03961, eq. 4-6.

    >>> float(load_balancing_loss(torch.zeros(4, 2), top_k=1))  # uniform probabilities score 1
    1.0
    """
    _check_router_logits(router_logits)
    return _balance(top_k_routing(router_logits, top_k))


def _balance(routing: Routing) -> Tensor:
    """``E * sum_i f_i * P_i`` from a routing (the unchecked core of the loss above)."""
    n_experts = routing.probs.shape[-1]
    slots = routing.experts.numel()  # N * K
    counts = torch.bincount(routing.experts.reshape(-1), minlength=n_experts)  # (E,)
    f = counts.float() / slots  # (E,) fraction of slots, sums to 1
    p = routing.probs.mean(dim=0)  # (E,) mean router probability
    return n_experts * torch.sum(f * p)


def router_z_loss(router_logits: Tensor) -> Tensor:
    """ST-MoE's router z-loss: the mean over tokens of ``logsumexp(logits)**2``.

    It penalises large router logits, whose exponentials amplify rounding errors in
    low precision and destabilise training; ST-MoE weights it by 0.001.
    Computed in float32. Reference: Zoph et al. 2022, https://arxiv.org/abs/2202.08906.

    >>> round(float(router_z_loss(torch.zeros(3, 4))), 4)  # log(4)**2
    1.9218
    """
    _check_router_logits(router_logits)
    z = torch.logsumexp(router_logits.float(), dim=-1)  # (N,)
    return torch.mean(z**2)


# ---------------------------------------------------------------- capacity and dispatch


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """Token-slots one expert may take: ``ceil(capacity_factor * n_tokens * top_k / n_experts)``.

    With ``capacity_factor = 1`` a perfectly balanced router fills every expert
    exactly; values above 1 leave slack for imbalance.

    >>> expert_capacity(n_tokens=10, n_experts=4, top_k=2, capacity_factor=1.0)
    5
    """
    check_int("n_tokens", n_tokens, minimum=1)
    check_int("n_experts", n_experts, minimum=1)
    check_int("top_k", top_k, minimum=1)
    check_positive("capacity_factor", capacity_factor)
    return math.ceil(capacity_factor * n_tokens * top_k / n_experts)


def dispatch_order(
    experts: Tensor, n_experts: int, capacity: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Group token-slots by expert, in priority order, and drop those over capacity.

    Slots are numbered *rank-major*: slot ``s = k * N + n`` is token ``n``'s ``k``-th
    choice, so ``s % N`` is its token. Priority inside an expert's queue: all first
    choices before any second choice, and earlier tokens first within a rank (the
    order GShard fills its buffers in). A stable sort by expert keeps that priority.

    Args:
        experts: (N, K) long, the experts chosen for every token.
        n_experts: E.
        capacity: slots one expert may take, or ``None`` for no limit.

    Returns:
        ``(order, routed, kept)``: ``order`` (Nk,) long holds the kept slot numbers,
        grouped by expert (expert 0's slots first); ``routed`` (E,) long counts the
        slots the router sent to each expert; ``kept`` (E,) long the slots each
        expert keeps, so expert ``e`` owns ``order[kept[:e].sum() : kept[:e+1].sum()]``.

    >>> order, routed, kept = dispatch_order(torch.tensor([[1, 0], [1, 2], [1, 0]]), 3, capacity=2)
    >>> order.tolist(), routed.tolist(), kept.tolist()
    ([3, 5, 0, 1, 4], [2, 3, 1], [2, 2, 1])
    """
    check_tensor("experts", experts, ndim=2, dtype=torch.long, nonempty=True)
    check_int("n_experts", n_experts, minimum=1)
    if capacity is not None:
        check_int("capacity", capacity, minimum=1)
    low, high = int(experts.min()), int(experts.max())
    if low < 0 or high >= n_experts:
        raise ValueError(f"experts must lie in [0, {n_experts}), got values in [{low}, {high}]")
    return _dispatch_order(experts, n_experts, capacity)


def _dispatch_order(
    experts: Tensor, n_experts: int, capacity: int | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The unchecked core of :func:`dispatch_order` (a router's choices are always valid)."""
    slot_expert = rearrange(experts, "n k -> (k n)")  # (K*N,) rank-major
    routed = torch.bincount(slot_expert, minlength=n_experts)  # (E,)
    order = torch.argsort(slot_expert, stable=True)  # (K*N,) grouped by expert
    if capacity is None:
        return order, routed, routed.clone()
    starts = torch.cumsum(routed, dim=0) - routed  # (E,) where each expert's group begins
    queue_pos = torch.arange(order.numel(), device=order.device) - starts[slot_expert[order]]
    order = order[queue_pos < capacity]  # (Nk,) the first `capacity` of every group
    return order, routed, routed.clamp(max=capacity)


# ---------------------------------------------------------------------------- the layer


@pytree_dataclass
@dataclass(frozen=True)
class MoEOutput:
    """What :class:`MoELayer` returns: the output, the losses, and the routing.

    - ``output``: the mixture, the input's shape (B, T, C) or (N, C);
    - ``aux_loss``: :func:`load_balancing_loss` of this batch (scalar, with grad);
    - ``z_loss``: :func:`router_z_loss` (scalar, with grad);
    - ``router_logits``: (N, E), attached to the autograd graph, so that other losses can
      be built from it (``.detach()`` to inspect);
    - ``routing``: the :class:`Routing` (weights and experts, (N, K), best first);
    - ``kept``: (N, K) bool, False where capacity dropped the slot;
    - ``tokens_per_expert``: (E,) long, slots the router sent to each expert (counted
      before the capacity drop);
    - ``dropped``: slots dropped by capacity (0 without capacity).

    The losses are unscaled: the training loop multiplies them by its coefficients.
    """

    output: Tensor
    aux_loss: Tensor
    z_loss: Tensor
    router_logits: Tensor
    routing: Routing
    kept: Tensor
    tokens_per_expert: Tensor
    dropped: int


class MoELayer(nn.Module):
    """A sparse mixture-of-experts feed-forward layer (Mixtral semantics).

    ``forward(x)`` takes (B, T, C) or (N, C) and returns the same shape:

    1. router: ``logits = gate(x)``, a bias-free ``nn.Linear(d_model, n_experts)``;
    2. :func:`top_k_routing`: softmax, keep the ``top_k`` best experts, renormalise
       their probabilities to sum to one (Mixtral's rule; done *before* any capacity drop);
    3. in training mode with ``capacity_factor`` set, every expert keeps at most
       :func:`expert_capacity` token-slots, first choices first and earlier tokens
       first (:func:`dispatch_order`); a dropped slot adds nothing, the weights of the
       token's other experts are *not* re-scaled, and a token that loses every slot
       leaves the layer as zeros, i.e. it only travels the surrounding residual path.
       Capacity is a training-time device (it bounds the work per expert in a batch):
       in ``eval()`` nothing is dropped, as Mixtral runs at inference. While training,
       the limit is shared by every token of the batch, so a token's output depends on
       the *other* tokens, later positions and other rows (padding included) among them:
       a known property of token dropping, and the reason it must not run when the
       model generates (a cached and an uncached pass would disagree);
    4. dispatch: token-slots are sorted by expert, gathered once (``index_select``),
       every expert runs once on its contiguous slice, and the weighted results are
       summed back per token with ``index_add_``. There is a loop over experts, none
       over tokens.

    ``forward`` returns a :class:`MoEOutput` (the output with the batch's losses and
    routing) and writes nothing on the layer: a model collects its layers' outputs.
    ``router_jitter > 0`` multiplies the router's input (only the router's, as in the
    Switch Transformer) by uniform noise in ``[1 - jitter, 1 + jitter]`` in training
    mode.

    >>> layer = MoELayer(d_model=8, d_ff=16, n_experts=4, top_k=2)
    >>> out = layer(torch.randn(2, 5, 8))
    >>> out.output.shape, out.routing.experts.shape
    (torch.Size([2, 5, 8]), torch.Size([10, 2]))
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        n_experts: int,
        top_k: int,
        capacity_factor: float | None = None,
        activation: ExpertActivation = "swiglu",
        bias: bool = False,
        router_jitter: float = 0.0,
    ) -> None:
        super().__init__()
        check_int("d_model", d_model, minimum=1)
        check_int("d_ff", d_ff, minimum=1)
        check_int("n_experts", n_experts, minimum=1)
        check_int("top_k", top_k, minimum=1)
        if top_k > n_experts:
            raise ValueError(f"top_k ({top_k}) must be <= n_experts ({n_experts})")
        if capacity_factor is not None:
            check_positive("capacity_factor", capacity_factor)
        check_choice("activation", activation, ACTIVATIONS)
        check_positive("router_jitter", router_jitter, allow_zero=True)
        if router_jitter >= 1:
            raise ValueError(f"router_jitter must be < 1, got {router_jitter}")
        self.d_model = d_model
        self.d_ff = d_ff
        self.n_experts = n_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.router_jitter = router_jitter
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(
            Expert(d_model, d_ff, activation=activation, bias=bias) for _ in range(n_experts)
        )

    def extra_repr(self) -> str:
        return (
            f"n_experts={self.n_experts}, top_k={self.top_k}, "
            f"capacity_factor={self.capacity_factor}"
        )

    def check_input(self, x: object) -> Tensor:
        """Validate ``x``: a non-empty floating (B, T, C) or (N, C) tensor.

        Its dtype must be the layer's, except under ``torch.autocast``.
        """
        check_tensor("x", x, ndim=(2, 3), floating=True, nonempty=True)
        assert isinstance(x, Tensor)
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must have last dimension d_model={self.d_model}, got shape {tuple(x.shape)}"
            )
        weight = self.gate.weight
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x has dtype {x.dtype} but the layer's weights are {weight.dtype}")
        if x.device != weight.device:
            raise ValueError(f"x is on {x.device} but the layer's weights are on {weight.device}")
        return x

    def capacity(self, n_tokens: int) -> int | None:
        """Token-slots per expert for a batch of ``n_tokens`` tokens.

        ``None`` (unlimited) without a ``capacity_factor`` and in ``eval()`` mode.
        """
        if self.capacity_factor is None or not self.training:
            return None
        return expert_capacity(n_tokens, self.n_experts, self.top_k, self.capacity_factor)

    def forward(self, x: Tensor) -> MoEOutput:
        x = self.check_input(x)
        flat = x.reshape(-1, self.d_model)  # (N, C)
        n_tokens = flat.shape[0]

        router_in = flat
        if self.training and self.router_jitter > 0:
            noise = torch.empty_like(flat).uniform_(1 - self.router_jitter, 1 + self.router_jitter)
            router_in = flat * noise
        logits = self.gate(router_in)  # (N, E)
        routing = top_k_routing(logits, self.top_k)  # weights, experts: (N, K)

        capacity = self.capacity(n_tokens)
        order, routed, kept = _dispatch_order(routing.experts, self.n_experts, capacity)
        routed_list, kept_list = torch.stack([routed, kept]).tolist()  # one device sync
        token = order % n_tokens  # (Nk,) the token behind each kept slot
        weight = rearrange(routing.weights, "n k -> (k n)")[order]  # (Nk,)

        x_sorted = flat.index_select(0, token)  # (Nk, C), grouped by expert
        chunks = x_sorted.split(kept_list)  # E pieces, one per expert
        outputs = [
            expert(chunk)  # each expert runs once, on its own contiguous slice
            for expert, chunk in zip(self.experts, chunks, strict=True)
            if chunk.shape[0] > 0
        ]
        y_sorted = torch.cat(outputs)  # (Nk, C); its dtype may differ from x's under autocast
        y_sorted = y_sorted * weight.to(y_sorted.dtype)[:, None]
        y = y_sorted.new_zeros(flat.shape).index_add_(0, token, y_sorted)  # (N, C)

        kept_mask = torch.zeros(routing.experts.numel(), dtype=torch.bool, device=flat.device)
        kept_mask[order] = True
        return MoEOutput(
            output=y.reshape(*x.shape[:-1], self.d_model),
            aux_loss=_balance(routing),
            z_loss=router_z_loss(logits),
            router_logits=logits,
            routing=routing,
            kept=rearrange(kept_mask, "(k n) -> n k", n=n_tokens),
            tokens_per_expert=routed,
            dropped=sum(routed_list) - sum(kept_list),
        )


def moe_reference(layer: MoELayer, x: Tensor) -> Tensor:
    """The same mixture as ``layer(x)``, computed one token at a time (slow, readable).

    Uses the layer's router and experts but none of its batched machinery: no sorting,
    gathering or scattering. Capacity (training mode only, as in the layer) follows the
    same priority (first choices before second choices, earlier tokens first). Router jitter is not applied, so compare in
    ``eval()`` mode or with ``router_jitter=0``. Returns the output tensor only.
    """
    x = layer.check_input(x)
    flat = x.reshape(-1, layer.d_model)  # (N, C)
    n_tokens, k = flat.shape[0], layer.top_k

    # 1. every token's choice of experts and their weights
    choices: list[list[int]] = []
    weights: list[Tensor] = []
    for n in range(n_tokens):
        probs = torch.softmax(layer.gate(flat[n]).float(), dim=-1)  # (E,)
        top_probs, top_experts = probs.topk(k)  # (K,), (K,)
        choices.append(top_experts.tolist())
        weights.append(top_probs / top_probs.sum())

    # 2. capacity: walk the slots in priority order, counting each expert's load
    capacity = layer.capacity(n_tokens)
    keep = [[True] * k for _ in range(n_tokens)]
    if capacity is not None:
        load = [0] * layer.n_experts
        for rank in range(k):
            for n in range(n_tokens):
                expert = choices[n][rank]
                if load[expert] < capacity:
                    load[expert] += 1
                else:
                    keep[n][rank] = False

    # 3. each token's output: the weighted sum of its kept experts' outputs
    rows = []
    for n in range(n_tokens):
        y = torch.zeros_like(flat[n])  # (C,)
        for rank in range(k):
            if keep[n][rank]:
                expert = layer.experts[choices[n][rank]]
                y = y + weights[n][rank].to(flat.dtype) * expert(flat[n])
        rows.append(y)
    return torch.stack(rows).reshape(x.shape)
