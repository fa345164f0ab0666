"""Tests of finetuning/sft.py: masked SFT examples, SmolLM2's chat format, the masked loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.finetuning.sft import (
    IGNORE_INDEX,
    SFTBatch,
    SFTExample,
    build_sft_example,
    chat_sft_example,
    collate_sft,
    sft_loss,
)
from llmfoundations.models import DecoderLM, ModelConfig
from llmfoundations.pretrained import apply_chat_template
from llmfoundations.tokenizer import BPETokenizer

V = 40
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MESSAGES = [
    {"role": "user", "content": "What is 12 + 7?"},
    {"role": "assistant", "content": "12 + 7 = 19."},
]


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    corpus = apply_chat_template(MESSAGES * 3, add_generation_prompt=False) * 4
    return BPETokenizer.train(corpus, vocab_size=300, special_tokens=SPECIALS)


def _reference_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The oracle: torch's cross-entropy with ignore_index on the shifted tensors."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )


# ----------------------------------------------------------------------------- examples


def test_build_masks_the_prompt_and_keeps_the_response():
    example = build_sft_example([5, 6, 7], torch.tensor([8, 9]))
    assert isinstance(example, SFTExample)
    assert example.input_ids.tolist() == [5, 6, 7, 8, 9]
    assert example.labels.tolist() == [IGNORE_INDEX] * 3 + [8, 9]
    assert example.input_ids.dtype == example.labels.dtype == torch.long


@pytest.mark.parametrize(
    "prompt, response, error, match",
    [
        ([], [1], ValueError, "prompt_ids must not be empty"),
        ([1], [], ValueError, "response_ids must not be empty"),
        ([1, -2], [1], ValueError, r"prompt_ids\[1\] must be a token id >= 0, got -2"),
        ([1], [1.0], TypeError, r"response_ids\[0\] must be an int"),
        ([True], [1], TypeError, r"prompt_ids\[0\] must be an int"),
        ("abc", [1], TypeError, "prompt_ids must be a list of token ids"),
        (torch.ones(2, 2, dtype=torch.long), [1], ValueError, "prompt_ids must have 1"),
        (torch.ones(2), [1], TypeError, "prompt_ids must have dtype"),
    ],
)
def test_build_errors(prompt, response, error, match):
    with pytest.raises(error, match=match):
        build_sft_example(prompt, response)


def test_collate_right_pads_with_ignored_labels_and_a_mask():
    batch = collate_sft(
        [build_sft_example([1, 2], [3]), build_sft_example([4], [5, 6, 7])], pad_id=0
    )
    assert isinstance(batch, SFTBatch)
    assert batch.input_ids.tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert batch.labels.tolist() == [[-100, -100, 3, -100], [-100, 5, 6, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_collate_errors():
    example = build_sft_example([1], [2])
    with pytest.raises(TypeError, match="examples must be a list of SFTExample"):
        collate_sft(example, pad_id=0)
    with pytest.raises(ValueError, match="examples must not be empty"):
        collate_sft([], pad_id=0)
    with pytest.raises(TypeError, match=r"examples\[1\] must be an SFTExample, got tuple"):
        collate_sft([example, (1, 2)], pad_id=0)
    with pytest.raises(ValueError, match="pad_id must be >= 0"):
        collate_sft([example], pad_id=-1)


# ----------------------------------------------------------------------------- chat format


def test_chat_example_learns_only_the_answer_and_its_end_token(tokenizer):
    example = chat_sft_example(tokenizer, MESSAGES)
    prompt = apply_chat_template(MESSAGES[:1], add_generation_prompt=True)
    n_prompt = len(tokenizer.encode(prompt))
    assert example.input_ids[:n_prompt].tolist() == tokenizer.encode(prompt)
    assert (example.labels[:n_prompt] == IGNORE_INDEX).all()
    learned = example.labels[example.labels != IGNORE_INDEX]
    assert tokenizer.decode(learned) == "12 + 7 = 19.<|im_end|>"
    assert learned[-1].item() == tokenizer.special_tokens["<|im_end|>"]
    # the whole example is the rendered conversation, up to the closing <|im_end|>
    full = apply_chat_template(MESSAGES, add_generation_prompt=False)
    assert tokenizer.decode(example.input_ids) == full.removesuffix("\n")
    assert full.startswith("<|im_start|>system\n")  # the default system prompt is in front


def test_chat_example_with_a_system_message_and_none_added(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    example = chat_sft_example(tokenizer, messages)
    assert tokenizer.decode(example.input_ids).startswith("<|im_start|>system\nBe brief.")
    bare = chat_sft_example(tokenizer, MESSAGES, system_prompt=None)
    assert tokenizer.decode(bare.input_ids).startswith("<|im_start|>user\n")


def test_chat_example_errors(tokenizer):
    with pytest.raises(ValueError, match="at least a user turn and the assistant's answer"):
        chat_sft_example(tokenizer, MESSAGES[:1])
    with pytest.raises(
        ValueError, match=r"messages\[-1\] must be the assistant's answer, got role 'user'"
    ):
        chat_sft_example(tokenizer, MESSAGES[::-1])
    with pytest.raises(TypeError, match="tokenizer must have an encode"):
        chat_sft_example("tokenizer", MESSAGES)
    with pytest.raises(TypeError, match="messages must be a list"):
        chat_sft_example(tokenizer, "hello")
    with pytest.raises(TypeError, match=r"messages\[-1\]\['content'\] must be a str"):
        chat_sft_example(tokenizer, [MESSAGES[0], {"role": "assistant", "content": 3}])


@pytest.mark.slow
@pytest.mark.model
def test_smollm2_chat_example_tokenizes_like_the_whole_text(smollm2_path):
    """Tokenizing prompt and answer apart gives the ids of the whole conversation."""
    from llmfoundations.pretrained import load_smollm2

    _, smol = load_smollm2(path=smollm2_path)
    for content in ["12 + 7 = 19.", "Paris.", "def f(x):\n    return x"]:
        messages = [MESSAGES[0], {"role": "assistant", "content": content}]
        example = chat_sft_example(smol, messages)
        full = apply_chat_template(messages, add_generation_prompt=False).removesuffix("\n")
        assert example.input_ids.tolist() == smol.encode(full)


# ----------------------------------------------------------------------------- loss


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 3),
    t=st.integers(2, 9),
    seed=st.integers(0, 2**16),
    p_masked=st.floats(0, 0.9),
)
def test_loss_equals_cross_entropy_with_ignore_index(b, t, seed, p_masked):
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(b, t, V, generator=generator)
    labels = torch.randint(0, V, (b, t), generator=generator)
    labels[torch.rand(b, t, generator=generator) < p_masked] = IGNORE_INDEX
    labels[0, -1] = 7  # at least one labelled next token
    torch.testing.assert_close(sft_loss(logits, labels), _reference_loss(logits, labels))


def test_loss_equals_the_models_own_loss_and_ignores_the_prompt():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.llama(V, d_model=32, n_layers=2))
    batch = collate_sft(
        [build_sft_example([1, 2, 3, 4], [5, 6]), build_sft_example([7, 8], [9, 10, 11])], pad_id=0
    )
    out = model(batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
    torch.testing.assert_close(sft_loss(out.logits, batch.labels), out.loss)
    # the gradient reaches only positions whose next token is part of a response
    logits = out.logits.detach().requires_grad_(True)
    sft_loss(logits, batch.labels).backward()
    touched = logits.grad.abs().sum(-1) > 0  # (B, T)
    expected = torch.zeros_like(touched)
    expected[:, :-1] = batch.labels[:, 1:] != IGNORE_INDEX
    assert torch.equal(touched, expected)


def test_loss_is_zero_not_nan_without_labels():
    logits = torch.randn(2, 4, V)
    labels = torch.full((2, 4), IGNORE_INDEX)
    assert sft_loss(logits, labels).item() == 0.0
    assert torch.isnan(_reference_loss(logits, labels))  # what torch returns


def test_loss_errors():
    logits = torch.randn(2, 4, V)
    labels = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"labels \(B, T\) must match logits"):
        sft_loss(logits, labels[:, :3])
    with pytest.raises(ValueError, match=r"labels must be -100 or lie in \[0, V=40\), got -1"):
        sft_loss(logits, labels - 1)
    with pytest.raises(ValueError, match="got 40"):
        sft_loss(logits, labels + V)
    with pytest.raises(TypeError, match="labels must have dtype"):
        sft_loss(logits, labels.float())
    with pytest.raises(ValueError, match="logits must have 3"):
        sft_loss(logits[0], labels)
    with pytest.raises(TypeError, match="logits must be a floating-point"):
        sft_loss(labels[..., None], labels)
