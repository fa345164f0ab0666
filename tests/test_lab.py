"""llmfoundations.lab: the seed a lab runs with, and claims (what a lab checks)."""

from __future__ import annotations

import json

import pytest
import torch

from llmfoundations import lab


def test_lab_seed_defaults_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv("LLMF_SEED", raising=False)
    assert lab.lab_seed(7) == 7
    monkeypatch.setenv("LLMF_SEED", "3")
    assert lab.lab_seed(7) == 3
    monkeypatch.setenv("LLMF_SEED", "three")
    with pytest.raises(ValueError, match="LLMF_SEED"):
        lab.lab_seed(0)
    with pytest.raises(TypeError, match="default"):
        lab.lab_seed(1.5)


def test_a_claim_that_holds_prints_a_line_without_the_value(capsys):
    lab.claim("loss is below 2 nats", 1.234567, at_most=2.0)
    lab.claim("accuracy is between 0.8 and 1", torch.tensor(0.91), at_least=0.8, at_most=1.0)
    lab.claim("the cache decodes the same tokens", True)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        lab.CLAIM_PREFIX + "loss is below 2 nats",
        lab.CLAIM_PREFIX + "accuracy is between 0.8 and 1",
        lab.CLAIM_PREFIX + "the cache decodes the same tokens",
    ]
    assert "1.23" not in "".join(out)


@pytest.mark.parametrize(
    "value, bounds",
    [(2.5, {"at_most": 2.0}), (0.1, {"at_least": 0.5}), (1.5, {"at_least": 0.0, "at_most": 1.0}),
     (float("nan"), {"at_least": 0.0}), (float("inf"), {"at_least": 0.0}), (False, {})],
)
def test_a_claim_that_fails_raises_with_the_measured_value(value, bounds, capsys):
    with pytest.raises(lab.ClaimFailed, match="claim does not hold: x"):
        lab.claim("x", value, **bounds)
    assert capsys.readouterr().out == ""


def test_claim_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at_least, at_most"):
        lab.claim("x", 1.0)
    with pytest.raises(ValueError, match="bool claim"):
        lab.claim("x", True, at_least=0)
    with pytest.raises(TypeError, match="value"):
        lab.claim("x", "big", at_least=0)
    with pytest.raises(TypeError, match="statement"):
        lab.claim("", 1.0, at_least=0)
    with pytest.raises(ValueError, match="one line"):
        lab.claim("a\nb", 1.0, at_least=0)


def test_claims_are_logged_when_asked(tmp_path, monkeypatch, capsys):
    log = tmp_path / "claims.jsonl"
    monkeypatch.setenv("LLMF_CLAIMS_LOG", str(log))
    lab.claim("a", 0.5, at_least=0.25)
    with pytest.raises(lab.ClaimFailed):
        lab.claim("b", 0.5, at_most=0.25)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records == [
        {"statement": "a", "value": 0.5, "at_least": 0.25, "at_most": None, "holds": True},
        {"statement": "b", "value": 0.5, "at_least": None, "at_most": 0.25, "holds": False},
    ]
