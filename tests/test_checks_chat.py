"""The Lab 07-5 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import pytest

from llmfoundations import checks


def good_render(messages, system_prompt):
    if messages[0]["role"] != "system" and system_prompt is not None:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + "<|im_start|>assistant\n"


def good_cached(cached, prompt, block_size):
    n = 0
    while n < min(len(cached), len(prompt) - 1) and cached[n] == prompt[n]:
        n += 1
    return n // block_size * block_size


def test_render_check_passes_a_correct_answer(capsys):
    checks.check_render_chatml(good_render)
    assert "✔ render_chatml: all 5 cases" in capsys.readouterr().out


def test_cached_check_passes_a_correct_answer(capsys):
    checks.check_cached_tokens(good_cached)
    assert "✔ cached_tokens: all 7 cases" in capsys.readouterr().out


def test_cached_check_passes_a_block_by_block_answer(capsys):
    def by_blocks(cached, prompt, block_size):
        usable = (len(prompt) - 1) // block_size * block_size
        n = 0
        while n + block_size <= min(usable, len(cached)) and cached[n : n + block_size] == prompt[n : n + block_size]:
            n += block_size
        return n

    checks.check_cached_tokens(by_blocks)
    assert "✔ cached_tokens" in capsys.readouterr().out


def _body(messages, fmt):
    return "".join(fmt.format(**m) for m in messages)


def _with_system(messages, system_prompt):
    if system_prompt is not None and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
OPEN = "<|im_start|>assistant\n"


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda m, s: _body(_with_system(m, s), TURN), "opened assistant turn"),
        (lambda m, s: _body(_with_system(m, s), "<|im_start|>{role}\n{content}<|im_end|>") + OPEN,
         "a newline"),
        (lambda m, s: _body(_with_system(m, s), "<|im_start|>{role} {content}<|im_end|>\n") + OPEN,
         "own line"),
        (lambda m, s: _body(([{"role": "system", "content": s}] if s else []) + m, TURN) + OPEN,
         "does not start with one"),
        (lambda m, s: _body(m, TURN) + OPEN, "put one with system_prompt in front"),
    ],
)  # fmt: skip
def test_render_check_names_the_common_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=f"(?s)Hint:.*{hint}"):
        checks.check_render_chatml(wrong)


def test_render_check_rejects_a_wrong_system_prompt():
    with pytest.raises(AssertionError, match="render_chatml, case"):
        checks.check_render_chatml(lambda m, s: good_render(m, "You are helpful."))


def test_render_check_does_not_let_the_student_change_the_cases():
    def mutating(messages, system_prompt):
        messages.insert(0, {"role": "system", "content": "x"})
        return good_render(messages[1:], system_prompt)

    checks.check_render_chatml(mutating)  # the check hands in copies: the later cases stay intact


def _common(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda c, p, b: min(_common(c, p), len(p) - 1), "round the shared prefix down"),
        (lambda c, p, b: _common(c, p) // b * b, "last prompt token is always computed"),
    ],
)
def test_cached_check_names_the_common_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=f"(?s)Hint:.*{hint}"):
        checks.check_cached_tokens(wrong)


def test_cached_check_wants_an_int():
    with pytest.raises(AssertionError, match="must return an int"):
        checks.check_cached_tokens(lambda c, p, b: float(good_cached(c, p, b)))


def test_cached_check_reference_counts_the_worked_cases():
    from llmfoundations.checks.chat import _cached_cases, _cached_tokens

    got = [_cached_tokens(*args) for args, _ in _cached_cases()]
    assert got == [32, 44, 36, 16, 0, 16, 8]
