"""Tests for llmfoundations.train: loss, schedule, optimizer groups, clipping, checkpoints,
the training loop and evaluation.

Independent references: the cross-entropy written out with log-softmax, the schedule's
closed form at chosen steps, hand-computed gradient norms, a uniform model whose
perplexity is exactly V, and a second run that must match a resumed one bit for bit.
"""

from __future__ import annotations

import doctest
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from llmfoundations import data, train
from llmfoundations.train import (
    History,
    TrainConfig,
    clip_gradients,
    cosine_schedule,
    evaluate,
    lm_loss,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    perplexity,
    save_checkpoint,
    train_lm,
)


class Bigram(nn.Module):
    """The smallest language model: each token's row of a table holds the next-token logits."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x) + self.bias  # (B, T, V)


@dataclass
class Output:
    logits: torch.Tensor
    aux_loss: torch.Tensor | None = None


class WithAux(nn.Module):
    """Returns an object with .logits and an auxiliary loss, like a mixture-of-experts LM."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.inner = Bigram(vocab_size)

    def forward(self, x: torch.Tensor) -> Output:
        return Output(self.inner(x), aux_loss=0.01 * self.inner.bias.square().sum() + 0.5)


@pytest.fixture(scope="module")
def story_ids() -> tuple[data.CharTokenizer, torch.Tensor]:
    text = data.story_corpus(60_000, seed=0)
    tok = data.CharTokenizer(text)
    return tok, torch.tensor(tok.encode(text))


def test_doctests():
    assert doctest.testmod(train).failed == 0


# -------------------------------------------------------------------------- loss


def manual_loss(logits, targets, ignore_index=-100):
    logp = torch.log_softmax(logits.double(), dim=-1)  # (B, T, V)
    keep = targets != ignore_index
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return -(picked * keep).sum() / keep.sum()


def test_lm_loss_matches_manual_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    targets = torch.randint(0, 11, (3, 5))
    assert_close(lm_loss(logits, targets), manual_loss(logits, targets).float(), atol=1e-6, rtol=0)
    targets[0, :2] = -100
    targets[2, 4] = -100
    assert_close(lm_loss(logits, targets), manual_loss(logits, targets).float(), atol=1e-6, rtol=0)
    n_scored = int((targets != -100).sum())
    assert_close(
        lm_loss(logits, targets, reduction="sum"),
        (manual_loss(logits, targets) * n_scored).float(),
        atol=1e-5,
        rtol=0,
    )
    targets[targets == -100] = 7
    targets[1] = 7
    assert_close(
        lm_loss(logits, targets, ignore_index=7),
        manual_loss(logits, targets, ignore_index=7).float(),
        atol=1e-6,
        rtol=0,
    )


def test_lm_loss_errors():
    logits, targets = torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="logits"):
        lm_loss(torch.zeros(2, 5), targets)
    with pytest.raises(ValueError, match="logits"):
        lm_loss(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="targets"):
        lm_loss(logits, targets.float())
    with pytest.raises(TypeError, match="logits"):
        lm_loss(logits.long(), targets)
    with pytest.raises(ValueError, match="ignore_index"):
        lm_loss(logits, torch.full((2, 3), -100))
    with pytest.raises(ValueError, match="reduction"):
        lm_loss(logits, targets, reduction="none")


# ------------------------------------------------------------------ schedule/optim


def test_cosine_schedule_values():
    w, total, m = 10, 110, 0.1
    assert cosine_schedule(0, w, total, m) == pytest.approx(0.1, abs=1e-12)
    assert cosine_schedule(4, w, total, m) == pytest.approx(0.5, abs=1e-12)
    assert cosine_schedule(9, w, total, m) == pytest.approx(1.0, abs=1e-12)
    assert cosine_schedule(10, w, total, m) == pytest.approx(1.0, abs=1e-12)
    assert cosine_schedule(60, w, total, m) == pytest.approx(0.55, abs=1e-12)  # halfway
    quarter = m + (1 - m) * 0.5 * (1 + math.cos(math.pi / 4))
    assert cosine_schedule(35, w, total, m) == pytest.approx(quarter, abs=1e-12)
    assert cosine_schedule(110, w, total, m) == pytest.approx(0.1, abs=1e-12)
    assert cosine_schedule(500, w, total, m) == pytest.approx(0.1, abs=1e-12)
    assert cosine_schedule(0, 0, 10, 0.0) == 1.0
    assert cosine_schedule(10, 0, 10, 0.0) == pytest.approx(0.0, abs=1e-12)
    values = [cosine_schedule(s, w, total, m) for s in range(w, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_make_scheduler_follows_the_schedule():
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = make_scheduler(optimizer, warmup_steps=3, total_steps=12, min_lr_ratio=0.2)
    for step in range(15):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(
            2.0 * cosine_schedule(step, 3, 12, 0.2), abs=1e-12
        )
        optimizer.step()
        scheduler.step()


def test_schedule_errors():
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(0, 20, 10)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(0, 0, 0)
    with pytest.raises(ValueError, match="step"):
        cosine_schedule(-1, 0, 10)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        cosine_schedule(0, 0, 10, 1.5)
    with pytest.raises(TypeError, match="optimizer"):
        make_scheduler("adam", 1, 10)


def test_optimizer_decays_only_matrices():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    model[1].bias.requires_grad_(False)  # frozen parameters are left out
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.3)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.3 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[1].weight)}
    assert {id(p) for p in plain["params"]} == {id(model[2].weight), id(model[2].bias)}
    with pytest.raises(ValueError, match="lr"):
        make_optimizer(model, lr=0.0)
    with pytest.raises(ValueError, match="trainable"):
        make_optimizer(nn.Linear(2, 2).requires_grad_(False), lr=1e-3)


def test_clip_gradients():
    a = nn.Parameter(torch.zeros(2))
    b = nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])  # global norm 5
    assert clip_gradients([a, b], max_norm=10.0) == pytest.approx(5.0)
    assert_close(a.grad, torch.tensor([3.0, 0.0]), atol=0, rtol=0)  # under the limit
    assert clip_gradients([a, b], max_norm=1.0) == pytest.approx(5.0)  # norm before
    assert_close(a.grad, torch.tensor([0.6, 0.0]), atol=1e-6, rtol=0)
    assert_close(b.grad, torch.tensor([0.8]), atol=1e-6, rtol=0)
    assert clip_gradients([a, b], max_norm=None) == pytest.approx(1.0, abs=1e-5)
    assert clip_gradients(nn.Linear(2, 2), max_norm=1.0) == 0.0  # no gradients yet
    with pytest.raises(ValueError, match="max_norm"):
        clip_gradients([a], max_norm=-1.0)


# -------------------------------------------------------------------- checkpoints


def one_step(model, optimizer, x, y):
    optimizer.zero_grad()
    lm_loss(model(x), y).backward()
    optimizer.step()


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randint(0, 7, (2, 5)), torch.randint(0, 7, (2, 5))
    model = Bigram(7)
    optimizer = make_optimizer(model, lr=1e-2)
    for _ in range(3):
        one_step(model, optimizer, x, y)
    config = TrainConfig(steps=3, warmup_steps=1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, optimizer, step=3, config=config, extra={"note": "hi"})

    torch.manual_seed(1)
    restored = Bigram(7)
    restored_optimizer = make_optimizer(restored, lr=1e-2)
    meta = load_checkpoint(path, restored, restored_optimizer)
    assert meta == {"step": 3, "config": config.__dict__ | {"betas": (0.9, 0.95)},
                    "extra": {"note": "hi"}}  # fmt: skip
    assert_close(restored(x), model(x), atol=0, rtol=0)
    # the optimizer state came back too: one more step gives identical weights
    one_step(model, optimizer, x, y)
    one_step(restored, restored_optimizer, x, y)
    assert_close(restored.table.weight, model.table.weight, atol=0, rtol=0)
    # and the file needs nothing beyond tensors and plain values
    payload = torch.load(path, weights_only=True)
    assert set(payload) >= {"model", "optimizer", "step", "config"}


def test_checkpoint_keeps_tied_weights(tmp_path):
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    save_checkpoint(tmp_path / "tied.pt", model)
    fresh = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    fresh[1].weight = fresh[0].weight
    load_checkpoint(tmp_path / "tied.pt", fresh)
    assert fresh[1].weight is fresh[0].weight
    assert_close(fresh[0].weight, model[0].weight, atol=0, rtol=0)


def test_checkpoint_errors(tmp_path):
    model = Bigram(3)
    save_checkpoint(tmp_path / "m.pt", model)
    with pytest.raises(ValueError, match="optimizer"):
        load_checkpoint(tmp_path / "m.pt", model, make_optimizer(model, lr=1e-3))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="path"):
        load_checkpoint(tmp_path / "other.pt", model)
    with pytest.raises(TypeError, match="config"):
        save_checkpoint(tmp_path / "c.pt", model, config="lr=1")
    with pytest.raises(TypeError, match="model"):
        save_checkpoint(tmp_path / "c.pt", {"w": 1})


# ----------------------------------------------------------------------- the loop


def test_training_reduces_loss_on_stories(story_ids):
    tok, ids = story_ids
    train_ids, val_ids = data.train_val_split(ids, 0.1)
    val_batches = data.sequential_batches(val_ids, batch_size=16, seq_len=32)
    torch.manual_seed(0)
    model = Bigram(tok.vocab_size)
    before = evaluate(model, val_batches)
    config = TrainConfig(steps=100, batch_size=16, seq_len=32, lr=0.1, warmup_steps=10,
                         eval_every=50, seed=0)  # fmt: skip
    history = train_lm(model, train_ids, config, progress=False,
                       eval_fn=lambda m: evaluate(m, val_batches))  # fmt: skip
    assert history.step == list(range(100))
    assert len(history.loss) == len(history.lr) == len(history.grad_norm) == 100
    assert history.eval_step == [49, 99] and len(history.eval_loss) == 2
    assert history.aux_loss == []
    assert history.lr[0] == pytest.approx(0.1 * cosine_schedule(0, 10, 100))
    assert history.lr[-1] == pytest.approx(0.1 * cosine_schedule(99, 10, 100))
    # from ln(V) ~ 4.1 at initialisation to what character bigrams can reach (~2.4)
    assert before > 4.0
    assert history.eval_loss[-1] < 2.7
    assert sum(history.loss[-10:]) / 10 < history.loss[0] - 1.5
    assert not model.training


def test_training_is_repeatable(story_ids):
    tok, ids = story_ids
    config = TrainConfig(steps=5, batch_size=4, seq_len=16, lr=0.05, warmup_steps=1)
    runs = []
    for init_seed in (0, 0):
        torch.manual_seed(init_seed)
        runs.append(train_lm(Bigram(tok.vocab_size), ids, config, progress=False).loss)
    assert runs[0] == runs[1]


def test_training_accepts_batch_functions_iterables_and_aux_losses(story_ids):
    tok, ids = story_ids
    config = TrainConfig(steps=4, batch_size=2, seq_len=8, warmup_steps=0)
    it = data.batches(ids, 2, 8, seed=3)
    torch.manual_seed(0)
    h1 = train_lm(Bigram(tok.vocab_size), lambda: next(it), config, progress=False)
    torch.manual_seed(0)
    h2 = train_lm(Bigram(tok.vocab_size), data.batches(ids, 2, 8, seed=3), config,
                  progress=False)  # fmt: skip
    assert h1.loss == h2.loss
    h3 = train_lm(WithAux(tok.vocab_size), ids, config, progress=False)
    assert len(h3.aux_loss) == 4 and h3.aux_loss[0] == pytest.approx(0.5)
    # a custom loss replaces lm_loss (here: scaled by 2)
    torch.manual_seed(0)
    h4 = train_lm(Bigram(tok.vocab_size), data.batches(ids, 2, 8, seed=3), config,
                  progress=False, loss_fn=lambda lg, y: 2 * lm_loss(lg, y))  # fmt: skip
    assert h4.loss[0] == pytest.approx(2 * h2.loss[0], rel=1e-6)


def test_training_errors(story_ids):
    tok, ids = story_ids
    config = TrainConfig(steps=3, batch_size=2, seq_len=8, warmup_steps=0)
    one_batch = [next(data.batches(ids, 2, 8))]
    with pytest.raises(ValueError, match="ran out"):
        train_lm(Bigram(tok.vocab_size), one_batch, config, progress=False)
    with pytest.raises(TypeError, match="data"):
        train_lm(Bigram(tok.vocab_size), 42, config, progress=False)
    with pytest.raises(TypeError, match="config"):
        train_lm(Bigram(tok.vocab_size), ids, {"steps": 3}, progress=False)

    class Broken(Bigram):
        def forward(self, x):
            return super().forward(x) * float("nan")

    with pytest.raises(FloatingPointError, match="step 0"):
        train_lm(Broken(tok.vocab_size), ids, config, progress=False)

    class NoLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return {"logits": x}

    with pytest.raises(TypeError, match="logits"):
        train_lm(NoLogits(), ids, config, progress=False)


def test_train_config_validation():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(TypeError, match="batch_size"):
        TrainConfig(batch_size=2.5)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(steps=10, warmup_steps=20)
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(grad_clip=0.0)
    with pytest.raises(ValueError, match="betas"):
        TrainConfig(betas=(0.9, 1.0))
    assert TrainConfig(grad_clip=None).grad_clip is None


# -------------------------------------------------------------------- evaluation


def test_uniform_model_has_perplexity_v():
    class Uniform(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return torch.zeros(*x.shape, 13) + self.w  # (B, T, V)

    batches = data.sequential_batches(list(range(13)) * 5, batch_size=3, seq_len=4)
    assert perplexity(Uniform(), batches) == pytest.approx(13.0, rel=1e-6)


def test_evaluate_weights_by_tokens():
    torch.manual_seed(0)
    model = Bigram(6).train()
    x, y = torch.randint(0, 6, (2, 4)), torch.randint(0, 6, (2, 4))
    y2 = y.clone()
    y2[1] = -100  # second batch scores only 4 tokens
    expected = lm_loss(model(x), y, reduction="sum") + lm_loss(model(x), y2, reduction="sum")
    expected = expected.item() / 12
    assert evaluate(model, [(x, y), (x, y2)]) == pytest.approx(expected, rel=1e-6)
    assert model.training  # mode restored
    endless = data.batches(list(range(6)) * 4, 2, 3)
    assert math.isfinite(evaluate(model, endless, max_batches=3))
    with pytest.raises(ValueError, match="batches"):
        evaluate(model, [])


def test_history_is_plain_lists():
    h = History()
    assert all(isinstance(v, list) and not v for v in h.__dict__.values())


def test_aux_loss_is_scaled_by_its_coefficient(story_ids):
    # One plain SGD step must follow the gradient of loss + coef * aux, computed by hand.
    tok, ids = story_ids
    x, y = next(data.batches(ids, 2, 8, seed=3))
    for coef in (0.0, 0.01, 1.0):
        torch.manual_seed(0)
        model = WithAux(tok.vocab_size)
        with torch.no_grad():
            model.inner.bias.normal_()  # a non-zero bias: the auxiliary loss has a gradient
        start = {k: v.clone() for k, v in model.state_dict().items()}
        config = TrainConfig(steps=1, batch_size=2, seq_len=8, warmup_steps=0, lr=0.1,
                             grad_clip=None, aux_loss_coef=coef)
        sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        history = train_lm(model, [(x, y)], config, progress=False, optimizer=sgd)
        ref = WithAux(tok.vocab_size)
        ref.load_state_dict(start)
        out = ref(x)
        assert history.aux_loss[0] == pytest.approx(out.aux_loss.item())  # recorded unscaled
        (lm_loss(out.logits, y) + coef * out.aux_loss).backward()
        expected = start["inner.bias"] - 0.1 * ref.inner.bias.grad
        assert_close(model.inner.bias.detach(), expected, atol=1e-6, rtol=0)


def test_default_aux_loss_coef_is_switch_transformers():
    assert TrainConfig().aux_loss_coef == 0.01
    with pytest.raises(ValueError, match="aux_loss_coef"):
        TrainConfig(aux_loss_coef=-1.0)
