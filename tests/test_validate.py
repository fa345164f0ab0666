"""The shared argument checks, and that the public functions use them (inf included)."""

from __future__ import annotations

import math

import pytest
import torch

from llmfoundations._validate import check_positive
from llmfoundations.attention import scaled_dot_product_attention
from llmfoundations.sampling import SamplingConfig, apply_temperature, repetition_penalty
from llmfoundations.train import TrainConfig


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_check_positive_refuses_non_finite_numbers(value):
    with pytest.raises(ValueError, match="x must be finite"):
        check_positive("x", value)
    with pytest.raises(ValueError, match="x must be finite"):
        check_positive("x", value, allow_zero=True)


def test_check_positive_bounds_and_types():
    check_positive("x", 1e-30)
    check_positive("x", 0.0, allow_zero=True)
    with pytest.raises(ValueError, match="x must be > 0"):
        check_positive("x", 0.0)
    with pytest.raises(ValueError, match="x must be >= 0"):
        check_positive("x", -1, allow_zero=True)
    with pytest.raises(TypeError, match="x must be a number"):
        check_positive("x", True)


def test_infinite_settings_are_refused_where_the_review_found_them():
    # +inf used to pass as a "positive number" in each of these.
    logits = torch.randn(2, 5)
    q = k = v = torch.randn(1, 3, 4)
    cases = [
        (lambda: SamplingConfig(temperature=math.inf), "temperature"),
        (lambda: apply_temperature(logits, math.inf), "temperature"),
        (lambda: repetition_penalty(logits, torch.tensor([[1], [2]]), math.inf), "penalty"),
        (lambda: scaled_dot_product_attention(q, k, v, scale=math.inf), "scale"),
        (lambda: TrainConfig(lr=math.inf), "lr"),
    ]
    for make, name in cases:
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            make()


def test_attention_and_flash_share_one_qkv_check():
    # One rule set for q, k, v (issue 20: two _check_qkv with different rules): the same bad
    # input gives the same message from the readable attention and from flash's reference.
    from llmfoundations.attention import scaled_dot_product_attention
    from llmfoundations.inference.flash import flash_attention_reference

    q = torch.randn(1, 2, 4, 8)
    for k, v in ((torch.randn(1, 2, 4, 6), torch.randn(1, 2, 4, 8)), (q, torch.randn(1, 2, 3, 8))):
        messages = []
        for fn in (scaled_dot_product_attention, flash_attention_reference):
            with pytest.raises(ValueError) as err:
                fn(q, k, v)
            messages.append(str(err.value))
        assert messages[0] == messages[1]
