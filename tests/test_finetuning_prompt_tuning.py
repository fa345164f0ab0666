"""Tests of finetuning/prompt_tuning.py: soft prompts, against peft's prompt tuning on
transformers' Llama (a tiny random one, and SmolLM2)."""

from __future__ import annotations

import pytest
import torch

from llmfoundations.finetuning.prompt_tuning import PromptTunedLM, SoftPrompt
from llmfoundations.models import IGNORE_INDEX, DecoderLM, ModelConfig

V = 50


def _tiny_llama(seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    config = ModelConfig.llama(V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    return DecoderLM(config).eval()


def _peft_prompt_tuning(hf_model, soft_prompt: SoftPrompt):
    """peft's prompt tuning on a transformers model, holding exactly our prompt vectors."""
    peft = pytest.importorskip("peft")
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=soft_prompt.n_tokens)
    tuned = peft.get_peft_model(hf_model, config)
    with torch.no_grad():
        tuned.prompt_encoder["default"].embedding.weight.copy_(soft_prompt.weight)
    return tuned


# ----------------------------------------------------------------------------- the prompt


def test_initialisations():
    model = _tiny_llama()
    generator = torch.Generator().manual_seed(0)
    random = SoftPrompt(6, 32, generator=generator)
    assert random.weight.shape == (6, 32) and random.weight.dtype == torch.float32
    assert 0.5 < random.weight.std() < 1.5  # N(0, 1), like nn.Embedding
    vocab = SoftPrompt(6, 32, "vocab", embedding=model.embed, generator=generator)
    table = model.embed.weight.detach()
    assert all((row == table).all(dim=1).any() for row in vocab.weight)  # rows of the table
    text = SoftPrompt(7, 32, "text", embedding=model.embed, text_ids=[3, 4, 5])
    assert torch.equal(text.weight, table[[3, 4, 5, 3, 4, 5, 3]])  # repeated to fill
    cut = SoftPrompt(2, 32, "text", embedding=model.embed, text_ids=torch.tensor([9, 8, 7]))
    assert torch.equal(cut.weight, table[[9, 8]])  # or cut
    # the prompt is a copy: training it leaves the model's embeddings alone
    with torch.no_grad():
        cut.weight.add_(1.0)
    assert torch.equal(model.embed.weight, table)


def test_soft_prompt_prepends_in_the_inputs_dtype():
    prompt = SoftPrompt(3, 8)
    embeds = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    out = prompt(embeds)
    assert out.shape == (2, 8, 8) and out.dtype == torch.bfloat16
    assert torch.equal(out[:, 3:], embeds)
    assert torch.equal(out[1, :3], prompt.weight.to(torch.bfloat16))


# ----------------------------------------------------------------------------- the model


def test_prompt_tuned_model_frozen_except_the_prompt():
    model = _tiny_llama()
    tuned = PromptTunedLM(model, SoftPrompt(4, 32, "vocab", embedding=model.embed))
    ids = torch.randint(0, V, (2, 6))
    labels = ids.clone()
    labels[:, :2] = IGNORE_INDEX
    out = tuned(ids, labels=labels)
    assert out.logits.shape == (2, 10, V)
    # the loss is the model's own loss on the real tokens behind the prompt
    embeds = torch.cat([tuned.soft_prompt.weight.expand(2, -1, -1), model.embed(ids)], 1)
    full_labels = torch.cat([torch.full((2, 4), IGNORE_INDEX), labels], 1)
    direct = model(inputs_embeds=embeds, labels=full_labels)
    torch.testing.assert_close(out.logits, direct.logits, atol=0, rtol=0)
    torch.testing.assert_close(out.loss, direct.loss, atol=0, rtol=0)
    out.loss.backward()
    trainable = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert trainable == ["soft_prompt.weight"]
    assert tuned.soft_prompt.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_errors():
    model = _tiny_llama()
    with pytest.raises(ValueError, match="init must be one of"):
        SoftPrompt(4, 32, "zeros")
    with pytest.raises(ValueError, match="n_tokens must be >= 1"):
        SoftPrompt(0, 32)
    with pytest.raises(TypeError, match="init='vocab' needs embedding=model.embed"):
        SoftPrompt(4, 32, "vocab")
    with pytest.raises(ValueError, match="init='text' needs text_ids"):
        SoftPrompt(4, 32, "text", embedding=model.embed)
    with pytest.raises(ValueError, match=r"text_ids\[1\] must be a token id in \[0, 50\), got 50"):
        SoftPrompt(4, 32, "text", embedding=model.embed, text_ids=[1, 50])
    with pytest.raises(TypeError, match="text_ids must be a non-empty list"):
        SoftPrompt(4, 32, "text", embedding=model.embed, text_ids="hello")
    with pytest.raises(ValueError, match="init='random' takes neither"):
        SoftPrompt(4, 32, embedding=model.embed)
    with pytest.raises(ValueError, match="embedding has width 32, d_model is 16"):
        SoftPrompt(4, 16, "vocab", embedding=model.embed)
    with pytest.raises(ValueError, match="soft_prompt has d_model=16, the model 32"):
        PromptTunedLM(model, SoftPrompt(4, 16))
    with pytest.raises(TypeError, match="model must be a DecoderLM"):
        PromptTunedLM(torch.nn.Linear(2, 2), SoftPrompt(4, 16))
    tuned = PromptTunedLM(model, SoftPrompt(4, 32))
    ids = torch.randint(0, V, (2, 6))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 6\)"):
        tuned(ids, attention_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 6\)"):
        tuned(ids, labels=ids[:, :4])
    with pytest.raises(ValueError, match="input_ids must lie in"):
        tuned(ids + V)


# ----------------------------------------------------------------------------- vs peft


def test_equals_peft_prompt_tuning_on_a_tiny_llama(hf_llama_copy):
    model = _tiny_llama()
    prompt = SoftPrompt(5, 32, "vocab", embedding=model.embed)
    with torch.no_grad():
        prompt.weight.add_(0.1 * torch.randn_like(prompt.weight))  # not just embedding rows
    reference = _peft_prompt_tuning(hf_llama_copy(model, attn_implementation="eager"), prompt)
    tuned = PromptTunedLM(model, prompt)
    ids = torch.randint(0, V, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # right padding
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :3] = IGNORE_INDEX  # a prompt that is not learned
    with torch.no_grad():
        ours = tuned(ids, attention_mask=mask, labels=labels)
        theirs = reference(input_ids=ids, attention_mask=mask, labels=labels)
    real = torch.cat([torch.ones(2, 5, dtype=torch.bool), mask.bool()], 1)  # (B, Tv + T)
    assert ours.logits.shape == theirs.logits.shape == (2, 12, V)
    torch.testing.assert_close(ours.logits[real], theirs.logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.model
def test_equals_peft_prompt_tuning_on_smollm2(smollm2_path, hf_llama_copy):
    from llmfoundations.pretrained import apply_chat_template, load_smollm2

    model, tokenizer = load_smollm2(path=smollm2_path)
    text_ids = tokenizer.encode("Answer in one word.")
    prompt = SoftPrompt(8, model.config.d_model, "text", embedding=model.embed, text_ids=text_ids)
    reference = _peft_prompt_tuning(hf_llama_copy(model), prompt)
    chat = apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    ids = torch.tensor([tokenizer.encode(chat + "Paris.")])
    labels = ids.clone()
    labels[:, : len(tokenizer.encode(chat))] = IGNORE_INDEX
    with torch.no_grad():
        ours = PromptTunedLM(model, prompt)(ids, labels=labels)
        theirs = reference(input_ids=ids, labels=labels)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=0)
