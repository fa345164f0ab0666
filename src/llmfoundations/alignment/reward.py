"""A reward model: one number per text, trained on pairs that people (or a checker) ranked.

RLHF replaces "write what the data says" by "write what people prefer". Preferences come
as pairs: for a prompt ``x``, the response ``y_c`` was chosen over ``y_r``. A reward model
``r(x, y)`` turns a text into a score, and the Bradley–Terry model (1952) says how scores
become preferences: the chance that ``y_c`` beats ``y_r`` is the logistic function of the
score gap. Fitting the scores by maximum likelihood gives the loss of InstructGPT
(Ouyang et al., 2022, eq. 1) and of TRL's ``RewardTrainer``::

    P(y_c > y_r | x) = sigma(r(x, y_c) - r(x, y_r))
    loss = -mean_i log sigma(r_c[i] - r_r[i] - m[i])

with an optional margin ``m`` (Llama 2, Touvron et al., 2023: a bigger margin for pairs
people rated "significantly better"); the loss then keeps pushing until the gap exceeds
``m``. Only differences of rewards enter the loss, so adding a constant to every reward
changes nothing: the scale has no zero. ``center_rewards_penalty`` pins it (Eisenstein et
al., 2023, eq. 2; TRL's ``center_rewards_coefficient``). The gradient of one term with
respect to ``r_c`` is ``-sigma(-(r_c - r_r - m))``: pairs the model already ranks right by
a wide gap teach it almost nothing; pairs it ranks wrong teach it most.

The reward model here is a course ``DecoderLM`` (:mod:`llmfoundations.models`) with a
linear head ``C -> 1`` on its final hidden state. A decoder's hidden state at position
``t`` has read tokens ``1..t`` only, so the one that has read the whole text is at its
**last real token**: with right padding that is position ``lengths - 1``, with left
padding it is ``T - 1``. ``last_token_pool`` finds it from the attention mask, whatever
the padding side, as Hugging Face's ``*ForSequenceClassification`` models and TRL's
reward models do (they end every text with an EOS token so that this position is always
the same kind of token; do the same).

This module holds:

- ``last_token_pool(hidden_states, attention_mask)`` -> (B, C): the hidden state of each
  row's last non-padding token;
- ``RewardModel(backbone)``: the backbone plus a bias-free head initialised to zero, so
  every reward is 0 before training and the loss starts at exactly ``ln 2``;
  ``model(input_ids, attention_mask)`` -> rewards (B,);
- ``bradley_terry_loss(r_chosen, r_rejected, margin=None)`` -> scalar, computed with
  ``F.logsigmoid`` (finite for any gap; the naive ``log(sigmoid(x))`` is ``-inf`` below
  about ``x = -89`` in float32, where ``exp(-x)`` overflows);
- ``center_rewards_penalty(r_chosen, r_rejected)`` = ``mean((r_c + r_r)^2)``, to add with a
  small coefficient (TRL recommends 0.01);
- ``pairwise_accuracy(r_chosen, r_rejected)``: the share of pairs with ``r_c > r_r``
  (a tie counts as wrong, as in TRL's logged ``accuracy``).

Conventions: rewards are float tensors (B,) with one row per pair, ``r_chosen[i]`` and
``r_rejected[i]`` from the same pair; the loss and the accuracy average over pairs; an
empty batch raises (a mean over no pairs has no value). The head has no bias because the
loss could not tell it any value (see above).

Left out: more than two responses per prompt (InstructGPT ranks K of them and uses all
K(K-1)/2 pairs; write them as pairs), ties in the data, ensembles of reward models,
regression heads on absolute ratings, process (per-step) rewards, and a value head for
PPO (``ppo``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmfoundations._validate import check_tensor
from llmfoundations.models import DecoderLM

__all__ = [
    "last_token_pool",
    "RewardModel",
    "bradley_terry_loss",
    "center_rewards_penalty",
    "pairwise_accuracy",
]


# ----------------------------------------------------------------------------- pooling


def _last_token_index(attention_mask: Tensor) -> Tensor:
    """Unchecked core: the position of each row's last 1 in a (B, T) 0/1 mask -> (B,).

    ``argmax`` of ``position * mask`` is the largest position whose mask is 1, for right
    padding, left padding, or no padding at all.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    return (positions * attention_mask.long()).argmax(dim=-1)  # (B,)


def _last_token_pool(hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
    """Unchecked core of :func:`last_token_pool`."""
    last = _last_token_index(attention_mask)  # (B,)
    rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)  # (B,)
    return hidden_states[rows, last]  # (B, C)


def _check_mask(attention_mask: object, shape: tuple[int, int]) -> Tensor:
    mask = check_tensor("attention_mask", attention_mask, ndim=2)
    if tuple(mask.shape) != shape:
        raise ValueError(f"attention_mask must have shape (B, T) = {shape}, got {tuple(mask.shape)}")
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"attention_mask must hold 0/1 integers or bools, got dtype {mask.dtype}")
    if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    if mask.shape[1] and not bool(mask.any(dim=-1).all()):
        empty = int((~mask.bool().any(dim=-1)).nonzero()[0])
        raise ValueError(f"attention_mask row {empty} has no real token: it has no reward")
    return mask


def last_token_pool(hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """The hidden state of each row's last real token: (B, T, C) -> (B, C).

    ``attention_mask`` (B, T): 1 for a real token, 0 for padding, on either side. Without
    a mask every position is real and the result is ``hidden_states[:, -1]``. A row with
    no real token raises.

    >>> h = torch.arange(6.0).reshape(2, 3, 1)  # rows [0, 1, 2] and [3, 4, 5]
    >>> last_token_pool(h, torch.tensor([[1, 1, 0], [0, 1, 1]])).squeeze(-1)
    tensor([1., 5.])
    """
    check_tensor("hidden_states", hidden_states, ndim=3, floating=True)
    b, t = hidden_states.shape[:2]
    if b == 0 or t == 0:
        raise ValueError(f"hidden_states must have B, T >= 1, got shape {tuple(hidden_states.shape)}")
    if attention_mask is None:
        return hidden_states[:, -1]  # (B, C)
    mask = _check_mask(attention_mask, (b, t))
    if mask.device != hidden_states.device:
        raise ValueError(f"attention_mask is on {mask.device}, hidden_states on {hidden_states.device}")
    return _last_token_pool(hidden_states, mask)


# ----------------------------------------------------------------------------- model


class RewardModel(nn.Module):
    """A ``DecoderLM`` with a scalar head: ``reward = w . h_last``.

    ``backbone``'s final hidden states (after its final norm; ``LMOutput.hidden_states``)
    are pooled at each row's last real token and projected to one number by ``head``, a
    ``nn.Linear(C, 1, bias=False)`` initialised to zero (every reward starts at 0; the
    head's first gradient is ``-sigma(0) (h_c - h_r)``, not zero, so training starts).
    The backbone's language-model head is computed and ignored.

    >>> from llmfoundations.models import ModelConfig
    >>> model = RewardModel(DecoderLM(ModelConfig.llama(vocab_size=20, d_model=32, n_layers=1, n_heads=2)))
    >>> model(torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]))
    tensor([0., 0.], grad_fn=<SqueezeBackward1>)
    """

    def __init__(self, backbone: DecoderLM) -> None:
        super().__init__()
        if not isinstance(backbone, DecoderLM):
            raise TypeError(f"backbone must be a DecoderLM, got {type(backbone).__name__}")
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.d_model, 1, bias=False)
        nn.init.zeros_(self.head.weight)  # rewards start at 0, the loss at ln 2

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Rewards (B,) of the ``input_ids`` (B, T), padded on either side per ``attention_mask``."""
        check_tensor("input_ids", input_ids, ndim=2)
        if attention_mask is not None:
            _check_mask(attention_mask, tuple(input_ids.shape))
        hidden = self.backbone(input_ids, attention_mask=attention_mask).hidden_states  # (B, T, C)
        return self.rewards_from_hidden(hidden, attention_mask)

    def rewards_from_hidden(self, hidden_states: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Unchecked: the head on the last real token of already computed hidden states -> (B,)."""
        if attention_mask is None:
            pooled = hidden_states[:, -1]  # (B, C)
        else:
            pooled = _last_token_pool(hidden_states, attention_mask)  # (B, C)
        return self.head(pooled).squeeze(-1)  # (B,)


# ----------------------------------------------------------------------------- losses


def _check_pair(r_chosen: object, r_rejected: object) -> None:
    check_tensor("r_chosen", r_chosen, ndim=1, floating=True)
    check_tensor("r_rejected", r_rejected, ndim=1, floating=True)
    assert isinstance(r_chosen, Tensor) and isinstance(r_rejected, Tensor)
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(
            f"r_chosen and r_rejected must both be (B,) with one row per pair, got "
            f"{tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}"
        )
    if r_chosen.numel() == 0:
        raise ValueError("r_chosen is empty: the loss and the accuracy need at least one pair")
    if r_chosen.device != r_rejected.device:
        raise ValueError(f"r_chosen is on {r_chosen.device}, r_rejected on {r_rejected.device}")


def _bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor, margin: Tensor | float | None) -> Tensor:
    """Unchecked core of :func:`bradley_terry_loss`."""
    gap = r_chosen - r_rejected  # (B,)
    if margin is not None:
        gap = gap - margin
    return -F.logsigmoid(gap).mean()


def bradley_terry_loss(
    r_chosen: Tensor, r_rejected: Tensor, margin: Tensor | float | None = None
) -> Tensor:
    """``-mean log sigma(r_chosen - r_rejected - margin)``: the reward model's loss.

    ``r_chosen``, ``r_rejected``: (B,) float rewards of the two responses of each pair.
    ``margin``: ``None`` (no margin), a number, or a (B,) float tensor (one per pair).
    Equal rewards give ``ln 2``; a large right gap gives about 0, a large wrong gap ``g``
    about ``g`` (never ``inf``).

    >>> bradley_terry_loss(torch.zeros(3), torch.zeros(3))  # ln 2
    tensor(0.6931)
    >>> bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]), margin=2.0)  # gap = margin
    tensor(0.6931)
    """
    _check_pair(r_chosen, r_rejected)
    if margin is not None:
        if isinstance(margin, Tensor):
            check_tensor("margin", margin, ndim=(0, 1), floating=True)
            if margin.ndim == 1 and margin.shape != r_chosen.shape:
                raise ValueError(
                    f"margin must be a number or (B,) = {tuple(r_chosen.shape)}, got {tuple(margin.shape)}"
                )
            if margin.device != r_chosen.device:
                raise ValueError(f"margin is on {margin.device}, the rewards on {r_chosen.device}")
        elif isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise TypeError(f"margin must be None, a number or a tensor, got {type(margin).__name__}")
    return _bradley_terry_loss(r_chosen, r_rejected, margin)


def center_rewards_penalty(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """``mean((r_chosen + r_rejected)^2)``: small when the two rewards of a pair are
    centred on 0. Add ``coefficient * penalty`` to the loss to fix the reward's zero
    (TRL: ``center_rewards_coefficient``, recommended 0.01).

    >>> center_rewards_penalty(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -1.0]))
    tensor(2.)
    """
    _check_pair(r_chosen, r_rejected)
    return ((r_chosen + r_rejected) ** 2).mean()


def pairwise_accuracy(r_chosen: Tensor, r_rejected: Tensor) -> float:
    """The share of pairs the rewards rank right, ``r_chosen > r_rejected`` (ties are
    wrong: a model that scores everything 0 has accuracy 0, not 0.5). A Python float.

    >>> pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0]))
    0.3333333333333333
    """
    _check_pair(r_chosen, r_rejected)
    return int((r_chosen > r_rejected).sum()) / r_chosen.numel()
