"""Tests of generate.py: the cached loop against full forward passes, stopping, streaming,
sampling, errors, and greedy generation against Hugging Face ``transformers``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.generate import (
    GenerationOutput,
    TextStreamer,
    chat,
    complete,
    generate,
    generate_output,
)
from llmfoundations.models import DecoderLM, ModelConfig
from llmfoundations.sampling import SamplingConfig

V = 61
STEP_TOL = dict(atol=1e-4, rtol=1e-4)  # logits of a step vs a full forward pass (fp32)
SIZE = dict(d_model=32, n_layers=2, n_heads=4, init_std=0.2)
CONFIGS = {
    "llama": ModelConfig.llama(V, n_kv_heads=2, **SIZE),  # RoPE, grouped-query attention
    "mqa": ModelConfig.llama(V, n_kv_heads=1, rope_interleaved=True, **SIZE),
    "gpt": ModelConfig.gpt(V, max_seq_len=48, **SIZE),  # learned positions
}


def _model(name: str, seed: int = 0) -> DecoderLM:
    """A small random model whose logits differ clearly from token to token and step to step
    (larger initial weights, non-trivial norm scales and biases)."""
    torch.manual_seed(seed)
    model = DecoderLM(CONFIGS[name]).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _prompts(seed: int, lengths: list[int]) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


def _last_logits(model: DecoderLM, row: list[int]) -> torch.Tensor:
    """Next-token logits (V,) of one unpadded row from a plain full forward pass."""
    with torch.no_grad():
        return model(torch.tensor([row])).logits[0, -1]


# ----------------------------------------------------------------------------- cached == full forward


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_cached_step_equals_a_full_forward_pass_per_row(name):
    """Left-padded batch through the cache: every step's logits of every row equal those of a
    full forward pass over that row's unpadded prefix (a position off by one would not)."""
    model = _model(name)
    prompts = _prompts(1, [7, 2, 4])
    n = 12
    out = generate_output(model, prompts, n, output_logits=True)
    assert isinstance(out, GenerationOutput) and out.steps == n
    width = out.prompt_length
    assert width == 7 and out.logits.shape == (3, n, V)
    for i, prompt in enumerate(prompts):
        new = out.new_tokens[i].tolist()
        for s in range(n):
            expected = _last_logits(model, prompt + new[:s])
            torch.testing.assert_close(out.logits[i, s], expected, **STEP_TOL)
        # the padded row continues exactly like the row generated on its own
        alone = generate(model, [prompt], n)
        assert alone[0, len(prompt) :].tolist() == new
    # padding sits on the left and is masked
    assert out.attention_mask[:, :width].sum(1).tolist() == [7, 2, 4]
    assert out.sequences[1, :5].tolist() == [0] * 5


@pytest.mark.parametrize("name", ["llama", "gpt"])
def test_uncached_reference_gives_the_same_steps(name):
    model = _model(name)
    prompts = _prompts(2, [3, 6])
    cached = generate_output(model, prompts, 10, output_logits=True)
    full = generate_output(model, prompts, 10, use_cache=False, output_logits=True)
    assert torch.equal(cached.sequences, full.sequences)
    torch.testing.assert_close(cached.logits, full.logits, **STEP_TOL)


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_head_reads_only_the_last_position(use_cache):
    """generate needs one position's logits per step: DecoderLM's head is given (B, 1, C),
    in the prefill and without a cache too; a model whose forward does not take
    logits_to_keep gets the call it always got, and the same tokens."""
    model = _model("llama")
    rows: list[int] = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[1]))
    try:
        got = generate(model, _prompts(3, [5, 2]), 4, use_cache=use_cache)
    finally:
        hook.remove()
    assert rows == [1, 1, 1, 1]

    class Plain(torch.nn.Module):  # a forward without logits_to_keep (or forward_unchecked)
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, ids, attention_mask=None, kv_cache=None):
            return self.inner(ids, attention_mask=attention_mask, kv_cache=kv_cache)

    assert torch.equal(generate(Plain(model), _prompts(3, [5, 2]), 4, use_cache=use_cache), got)


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(list(CONFIGS)),
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    n=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_property_cached_equals_uncached(name, lengths, n, seed):
    model = _model(name)
    prompts = _prompts(seed, lengths)
    cached = generate_output(model, prompts, n, output_logits=True)
    full = generate_output(model, prompts, n, use_cache=False, output_logits=True)
    assert cached.sequences.shape == (len(lengths), max(lengths) + n)
    assert torch.equal(cached.sequences, full.sequences)
    torch.testing.assert_close(cached.logits, full.logits, **STEP_TOL)


def test_tensor_prompt_with_mask_equals_list_prompt():
    model = _model("llama")
    prompts = _prompts(3, [5, 3])
    from_lists = generate(model, prompts, 6, pad_token_id=7)
    ids = torch.tensor([prompts[0], [7, 7] + prompts[1]])
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    from_tensor = generate(model, ids, 6, attention_mask=mask, pad_token_id=7)
    assert torch.equal(from_lists, from_tensor)
    # a bool mask works the same; an all-ones mask is the same as none
    assert torch.equal(
        generate(model, ids, 6, attention_mask=mask.bool(), pad_token_id=7), from_tensor
    )
    assert torch.equal(
        generate(model, ids[:1], 4, attention_mask=mask[:1]), generate(model, ids[:1], 4)
    )


# ----------------------------------------------------------------------------- choosing and stopping


def test_greedy_is_argmax_step_by_step():
    model = _model("llama")
    prompt = _prompts(4, [5])[0]
    out = generate_output(model, [prompt], 10, output_logits=True)
    assert torch.equal(out.new_tokens, out.logits.argmax(-1))
    # a hand-written loop without any cache gives the same tokens
    ids = list(prompt)
    for _ in range(10):
        ids.append(int(_last_logits(model, ids).argmax()))
    assert out.sequences[0].tolist() == ids
    # sampling=None is greedy; so is SamplingConfig(do_sample=False) and temperature 0
    for cfg in (SamplingConfig(do_sample=False), SamplingConfig(temperature=0.0)):
        assert torch.equal(generate(model, [prompt], 10, sampling=cfg), out.sequences)


def test_stop_tokens_end_rows_and_pad_after_them():
    model = _model("gpt")
    prompts = _prompts(5, [4, 6, 2])
    n = 12
    free = generate_output(model, prompts, n)
    stop = int(free.new_tokens[0, 3])  # row 0 produces it at step 3 (or earlier)
    out = generate_output(model, prompts, n, stop_token_ids=[stop], pad_token_id=5)
    for i in range(3):
        row = free.new_tokens[i].tolist()
        k = row.index(stop) + 1 if stop in row else n  # tokens kept, the stop token included
        got = out.new_tokens[i].tolist()
        assert got[:k] == row[:k]
        assert got[k:] == [5] * (out.steps - k)
        assert out.attention_mask[i, out.prompt_length :].tolist() == [1] * k + [0] * (
            out.steps - k
        )
        assert int(out.num_new_tokens[i]) == k
        assert bool(out.stopped[i]) == (stop in row)
    # one int works as well as a list of them
    assert torch.equal(
        generate(model, prompts, n, stop_token_ids=stop, pad_token_id=5), out.sequences
    )


def test_generation_ends_early_when_every_row_has_stopped():
    model = _model("llama")
    prompts = _prompts(6, [3, 5])
    free = generate_output(model, prompts, 8)
    stops = {int(free.new_tokens[0, 1]), int(free.new_tokens[1, 2])}
    out = generate_output(model, prompts, 8, stop_token_ids=sorted(stops))
    first = [min(row.index(s) for s in stops if s in row) + 1 for row in free.new_tokens.tolist()]
    assert out.steps == max(first) < 8
    assert out.stopped.all()
    assert out.num_new_tokens.tolist() == first
    # the stop token itself is in the output; positions after it are padding
    for i, k in enumerate(first):
        assert int(out.new_tokens[i, k - 1]) in stops


def test_streamer_sees_exactly_the_new_tokens():
    model = _model("llama")
    seen = []
    prompts = _prompts(7, [2, 4])
    free = generate_output(model, prompts, 7)
    stop = int(free.new_tokens[0, 2])
    out = generate_output(model, prompts, 7, stop_token_ids=[stop], streamer=seen.append)
    assert len(seen) == out.steps
    assert all(t.shape == (2,) for t in seen)
    assert torch.equal(torch.stack(seen, dim=1), out.new_tokens)


def test_seeded_sampling_is_reproducible_and_cache_independent():
    model = _model("llama")
    prompts = _prompts(8, [3, 5])
    cfg = SamplingConfig(temperature=1.5, top_k=20)

    def run(seed: int, use_cache: bool = True) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return generate(model, prompts, 15, sampling=cfg, generator=g, use_cache=use_cache)

    first = run(0)
    assert torch.equal(first, run(0))
    assert torch.equal(first, run(0, use_cache=False))  # same logits, same draws
    assert not torch.equal(first, run(1))
    # repetition penalty sees the whole sequence, prompt included
    penalised = SamplingConfig(repetition_penalty=1e6, do_sample=False)
    out = generate(model, [[1, 2, 3]], 20, sampling=penalised)[0].tolist()
    assert len(set(out)) == len(out)  # nothing can be chosen twice with such a penalty


def test_max_new_tokens_zero_returns_the_prompt():
    model = _model("llama")
    ids = torch.tensor([[3, 4, 5]])
    assert torch.equal(generate(model, ids, 0), ids)
    out = generate_output(model, [[1, 2], [9]], 0, pad_token_id=4, output_logits=True)
    assert out.sequences.tolist() == [[1, 2], [4, 9]]
    assert out.steps == 0 and out.logits.shape == (2, 0, V)
    assert out.num_new_tokens.tolist() == [0, 0] and not out.stopped.any()


def test_outputs_are_ordinary_tensors_and_the_mode_is_restored():
    model = _model("llama")
    dropout_model = DecoderLM(ModelConfig.llama(V, dropout=0.5, **SIZE))
    dropout_model.train()
    a = generate(dropout_model, [[1, 2, 3]], 6)
    b = generate(dropout_model, [[1, 2, 3]], 6)
    assert torch.equal(a, b)  # no dropout while generating
    assert dropout_model.training  # ... and the mode comes back
    out = generate_output(model, [[1, 2, 3]], 3, output_logits=True)
    assert not out.sequences.is_inference() and not out.logits.is_inference()
    # the sequences can feed a training step
    loss = dropout_model(out.sequences, labels=out.sequences).loss
    loss.backward()


# ----------------------------------------------------------------------------- errors


def test_input_errors():
    model = _model("gpt")  # max_seq_len=48
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        generate(model, ids, -1)
    with pytest.raises(TypeError, match="max_new_tokens must be an int"):
        generate(model, ids, 2.0)
    with pytest.raises(ValueError, match="input_ids must have 2 dimensions"):
        generate(model, ids[0], 2)
    with pytest.raises(ValueError, match="input_ids must have 2 dimensions"):
        generate(model, ids[None], 2)
    with pytest.raises(TypeError, match="input_ids must have dtype int64"):
        generate(model, ids.float(), 2)
    with pytest.raises(ValueError, match="input_ids must not be empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=61\)"):
        generate(model, torch.tensor([[1, V]]), 2)
    with pytest.raises(ValueError, match="input_ids must lie"):
        generate(model, [[1, 2], [-1]], 2)
    with pytest.raises(ValueError, match=r"input_ids\[1\] is empty"):
        generate(model, [[1], []], 2)
    with pytest.raises(ValueError, match="at least one prompt"):
        generate(model, [], 2)
    with pytest.raises(TypeError, match=r"input_ids\[0\] must hold ints"):
        generate(model, [[1, 2.0]], 2)
    with pytest.raises(TypeError, match="input_ids must be"):
        generate(model, "hello", 2)
    with pytest.raises(ValueError, match="attention_mask must be None when input_ids is a list"):
        generate(model, [[1, 2]], 2, attention_mask=torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        generate(model, ids, 2, attention_mask=torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="attention_mask must be bool or integer"):
        generate(model, ids, 2, attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="left padding"):
        generate(model, ids, 2, attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="no real token"):
        generate(model, ids, 2, attention_mask=torch.tensor([[0, 0, 0]]))
    with pytest.raises(ValueError, match="stop_token_ids must be < vocab_size"):
        generate(model, ids, 2, stop_token_ids=[V])
    with pytest.raises(TypeError, match="stop_token_ids must be an int or an iterable"):
        generate(model, ids, 2, stop_token_ids="2")
    with pytest.raises(ValueError, match="pad_token_id must be >= 0"):
        generate(model, ids, 2, pad_token_id=-1)
    with pytest.raises(TypeError, match="sampling must be a SamplingConfig"):
        generate(model, ids, 2, sampling={"temperature": 0.5})
    with pytest.raises(TypeError, match="streamer must be callable"):
        generate(model, ids, 2, streamer=[])
    with pytest.raises(TypeError, match="use_cache must be a bool"):
        generate(model, ids, 2, use_cache=1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        generate(lambda x: x, ids, 2)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        generate(model, ids, 2, sampling=SamplingConfig(), generator=0)
    with pytest.raises(ValueError, match="max_seq_len=48"):
        generate(model, ids, 47)  # 3 + 47 tokens: positions 0..48, one past the table
    # 3 + 46 tokens fit: the last token is never fed back, so positions 0..47 are embedded
    assert generate(model, ids, 46).shape == (1, 49)


# ----------------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def tiny_text():
    from llmfoundations.tokenizer import BPETokenizer

    tok = BPETokenizer.train(
        "héllo wörld, héllo world! " * 20,
        vocab_size=280,
        special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    torch.manual_seed(0)
    config = ModelConfig.llama(tok.vocab_size, d_model=32, n_layers=2, n_heads=4, init_std=0.2)
    return tok, DecoderLM(config).eval()


def test_text_streamer_waits_for_whole_characters():
    from llmfoundations.tokenizer import BPETokenizer

    tok = BPETokenizer.train("ab", vocab_size=256)  # bytes only: "é" is two tokens
    pieces = []
    streamer = TextStreamer(tok, on_text=pieces.append, skip_ids=[ord("!")])
    for t in "hé!😀".encode():
        streamer(torch.tensor([t]))
    streamer.end()
    assert pieces == ["h", "é", "😀"] and streamer.text == "hé😀"
    # an unfinished character is flushed as U+FFFD
    streamer = TextStreamer(tok, on_text=pieces.append)
    streamer(torch.tensor(["é".encode()[0]]))
    streamer.end()
    assert streamer.text == "\ufffd"
    with pytest.raises(ValueError, match="one sequence"):
        streamer(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="decode_bytes"):
        TextStreamer(object())


def test_complete_decodes_the_new_tokens_and_streams_them(tiny_text):
    tok, model = tiny_text
    prompt = "héllo"
    ids = tok.encode(prompt)
    expected_ids = generate(model, [ids], 12)[0, len(ids) :].tolist()
    pieces = []
    text = complete(model, tok, prompt, max_new_tokens=12, stream=pieces.append)
    assert text == tok.decode(expected_ids)
    assert "".join(pieces) == text
    # a stop token ends the text and is not part of it
    stop = expected_ids[4]
    k = expected_ids.index(stop)
    assert complete(model, tok, prompt, max_new_tokens=12, stop_token_ids=stop) == tok.decode(
        expected_ids[:k]
    )
    with pytest.raises(TypeError, match="prompt must be a str"):
        complete(model, tok, ids)
    with pytest.raises(ValueError, match="prompt must not be empty"):
        complete(model, tok, "")
    with pytest.raises(TypeError, match="stream must be a bool or a callable"):
        complete(model, tok, prompt, stream="yes")


def test_complete_prints_when_streaming(tiny_text, capsys):
    tok, model = tiny_text
    text = complete(model, tok, "wörld", max_new_tokens=5, stream=True)
    assert capsys.readouterr().out == text


def test_chat_renders_the_template_and_stops_at_the_end_of_turn(tiny_text):
    tok, model = tiny_text
    pretrained = pytest.importorskip("llmfoundations.pretrained")
    messages = [{"role": "user", "content": "héllo"}]
    stop = tok.token_to_id("<|im_end|>")
    for system in (..., None, "wörld"):
        options = {} if system is ... else {"system_prompt": system}
        ids = tok.encode(pretrained.apply_chat_template(messages, **options))
        new = generate_output(model, [ids], 10, stop_token_ids=stop)
        k = int(new.num_new_tokens[0]) - int(new.stopped[0])
        expected = tok.decode(new.new_tokens[0, :k].tolist())
        assert (
            chat(model, tok, messages, max_new_tokens=10, stop_token_ids=stop, **options)
            == expected
        )
    with pytest.raises(ValueError, match="messages"):
        chat(model, tok, [], stop_token_ids=stop)


# ----------------------------------------------------------------------------- vs transformers


def _hf_generate(hf, ids, mask, n, **kwargs):
    with torch.no_grad():
        return hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_logits=True,
            **kwargs,
        )


def test_greedy_matches_transformers_generate(hf_llama_copy):
    model = _model("llama")
    hf = hf_llama_copy(model, pad_token_id=0)
    n = 32
    # one prompt
    prompt = torch.tensor([_prompts(9, [6])[0]])
    ref = _hf_generate(hf, prompt, torch.ones_like(prompt), n)
    out = generate_output(model, prompt, n, output_logits=True)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(out.logits, torch.stack(ref.logits, 1), **STEP_TOL)
    # a left-padded batch
    out = generate_output(model, _prompts(10, [8, 3, 5]), n, output_logits=True)
    ref = _hf_generate(hf, out.sequences[:, :8], out.attention_mask[:, :8], n)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(out.logits, torch.stack(ref.logits, 1), **STEP_TOL)


def test_stop_tokens_match_transformers_eos_handling(hf_llama_copy):
    model = _model("llama")
    hf = hf_llama_copy(model, pad_token_id=0)
    prompts = _prompts(11, [4, 7])
    free = generate_output(model, prompts, 20)
    stop = int(free.new_tokens[1, 5])
    out = generate_output(model, prompts, 20, stop_token_ids=[stop])
    ref = _hf_generate(hf, out.sequences[:, :7], out.attention_mask[:, :7], 20, eos_token_id=stop)
    assert torch.equal(out.sequences, ref.sequences)


# ----------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    pretrained = pytest.importorskip("llmfoundations.pretrained")
    model, tokenizer = pretrained.load_smollm2(path=smollm2_path)
    return model, tokenizer, pretrained


@pytest.fixture(scope="module")
def smollm2_hf(smollm2_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_path.parent, gguf_file=smollm2_path.name, dtype=torch.float32
    )
    return hf.eval()


QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence why the sky is blue.",
]


@pytest.mark.slow
@pytest.mark.model
def test_smollm2_greedy_matches_transformers(smollm2, smollm2_hf):
    """Three chat prompts, left-padded into one batch, 30 tokens each: token for token the
    same as transformers' generate on its own load of the same file."""
    model, tokenizer, pretrained = smollm2
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    prompts = [tokenizer.encode(pretrained.apply_chat_template(c)) for c in chats]
    n = 30
    out = generate_output(model, prompts, n, pad_token_id=pretrained.PAD_ID)
    width = out.prompt_length
    with torch.no_grad():
        ref = smollm2_hf.generate(
            input_ids=out.sequences[:, :width],
            attention_mask=out.attention_mask[:, :width],
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,  # like ours without stop tokens: all 30 tokens, nothing masked
            pad_token_id=pretrained.PAD_ID,
        )
    assert ref.shape == out.sequences.shape == (3, width + n)
    assert torch.equal(out.sequences, ref)


@pytest.mark.slow
@pytest.mark.model
def test_smollm2_cached_steps_equal_full_forward_and_chat(smollm2):
    model, tokenizer, pretrained = smollm2
    prompt = tokenizer.encode("The three primary colours are")
    out = generate_output(model, [prompt], 6, output_logits=True)
    for s in range(out.steps):
        expected = _last_logits(model, out.sequences[0, : len(prompt) + s].tolist())
        torch.testing.assert_close(out.logits[0, s], expected, **STEP_TOL)
    # chat: the template, the stop at <|im_end|>, the decoded reply
    pieces = []
    reply = chat(
        model, tokenizer, [{"role": "user", "content": QUESTIONS[0]}], stream=pieces.append
    )
    assert "Paris" in reply and "<|im_end|>" not in reply
    assert "".join(pieces) == reply


# ----------------------------------------------------------------------------- checks once, not per token


class _HostCopies:
    """Counts the ways a tensor's value reaches Python (each is a device sync on a GPU)."""

    METHODS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                self.count += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("sampling", [None, SamplingConfig(temperature=0.8, top_p=0.9, repetition_penalty=1.2)])
@pytest.mark.parametrize("stop", [(), (7,)])
def test_each_decode_step_copies_to_the_host_once(monkeypatch, sampling, stop):
    # The loop checks the prompts once; each step makes one host copy (finite logits? all
    # rows stopped?) instead of one per check of the model and of every processor.
    model = _model("llama")
    prompts = torch.tensor(_prompts(1, [6, 6]))  # not padded
    generate(model, prompts, 3, sampling=sampling, stop_token_ids=stop)  # warm-up
    copies = _HostCopies(monkeypatch)
    generate(model, prompts, 1, sampling=sampling, stop_token_ids=stop,
             generator=torch.Generator().manual_seed(0))
    one_step = copies.count
    copies.count = 0
    n = 20
    out = generate_output(model, prompts, n, sampling=sampling, stop_token_ids=stop,
                   generator=torch.Generator().manual_seed(0))
    steps = out.new_tokens.shape[1]
    assert steps >= 2
    assert copies.count - one_step == steps - 1, (copies.count, one_step, steps)


def test_forward_unchecked_equals_forward():
    model = _model("llama")
    ids = torch.tensor(_prompts(2, [5, 5]))
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    labels = ids.clone()
    for kwargs in ({}, {"attention_mask": mask}, {"labels": labels}):
        a, b = model(ids, **kwargs), model.forward_unchecked(ids, **kwargs)
        assert torch.equal(a.logits, b.logits)
        assert (a.loss is None and b.loss is None) or torch.equal(a.loss, b.loss)


def test_generate_refuses_nan_logits_with_a_clear_error():
    for sampling in (None, SamplingConfig(temperature=1.0)):
        model = _model("llama")
        with torch.no_grad():
            model.lm_head.weight[3, 0] = float("nan")  # tied: embedding row 3 too
        with pytest.raises(ValueError, match="logits at step 0 hold NaN"):
            generate(model, torch.tensor([[1, 2, 4]]), 4, sampling=sampling)


def test_generate_returns_the_sequences_of_generate_output():
    model = _model("llama")
    prompts = [[1, 2, 3], [4]]
    ids = generate(model, prompts, 4)
    out = generate_output(model, prompts, 4)
    assert isinstance(ids, torch.Tensor) and isinstance(out, GenerationOutput)
    assert torch.equal(ids, out.sequences) and out.logits is None
    with pytest.raises(TypeError, match="return_dict"):
        generate(model, prompts, 4, return_dict=True)  # type: ignore[call-arg]
