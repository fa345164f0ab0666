"""An evaluation harness: run a system over a task's examples, score every output, and report
the mean with a bootstrap confidence interval; seeded and resumable.

What gets evaluated is the whole *system*: the prompt template, the model, the decoding
settings and any post-processing together, as one function ``system(prompt, generator)
-> output``. Change any part and you have another system with another score.
:func:`model_system` builds one from a course model (``generate.chat`` or ``complete``).

A :class:`Task` is a name, a tuple of :class:`Example` (an id, a prompt, an optional
reference and other fields) and a *metric* ``metric(output, example) -> float``: exact
match, a ROUGE F1, a rubric total, a judge's expected score... :func:`evaluate` calls the
system once per example and the metric on its output, and returns an
:class:`EvaluationReport` with every :class:`ExampleResult` and a
:class:`ConfidenceInterval` for the mean.

- **The interval.** The mean of 50 scores is itself uncertain. The percentile bootstrap
  (Efron, 1979) resamples the scores with replacement ``n_resamples`` times and takes
  the middle ``confidence`` share of the resampled means. Two systems whose intervals
  overlap widely have not been told apart; to compare two systems on the same
  examples, bootstrap the per-example *differences* (``bootstrap_ci(a - b)``), which is
  far tighter. :func:`bootstrap_ci` equals ``scipy.stats.bootstrap(...,
  method="percentile")`` given the same NumPy generator (tested).
- **Seeded.** Each example gets its own ``torch.Generator``, seeded from the run's
  ``seed`` and the example's id (a SHA-256, not Python's salted ``hash``), so a sampled
  output does not depend on which examples ran before it.
- **Resumable.** With ``results_path``, every result is appended to a JSON-lines file as
  soon as it is scored; a rerun reuses the stored results and runs only the missing
  examples, so an interrupted run (a notebook kernel killed, a Colab session gone)
  continues where it stopped and ends with the same report. Each line records a
  fingerprint of the example's prompt and reference; a line whose example has changed
  raises. The file does not record the system or the metric: delete it (or use another
  path) when you change either.

Left out: batching several examples into one generation call, parallel workers,
corpus-level metrics in the summary (BLEU pools counts over the corpus; compute it on
``report.outputs`` with ``bleu.bleu``), stratified and BCa bootstrap intervals, and
significance tests.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType, MappingProxyType

import numpy as np
import torch
from torch import Tensor, nn

from llmfoundations._validate import check_int
from llmfoundations.sampling import SamplingConfig
from llmfoundations.tokenizer import TokenizerLike

__all__ = [
    "System",
    "Metric",
    "Example",
    "Task",
    "ExampleResult",
    "ConfidenceInterval",
    "EvaluationReport",
    "bootstrap_ci",
    "example_seed",
    "evaluate",
    "exact_match",
    "model_system",
]

System = Callable[[str, torch.Generator], str]


@dataclass(frozen=True)
class Example:
    """One input of a task.

    Attributes:
        id: unique within the task; names the example in results files.
        prompt: what the system receives.
        reference: the expected output, if there is one.
        fields: anything else a metric or rubric needs (``{"question": ...}``).
    """

    id: str
    prompt: str
    reference: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"id must be a non-empty str, got {self.id!r}")
        if not isinstance(self.prompt, str):
            raise TypeError(f"prompt must be a str, got {type(self.prompt).__name__}")
        if self.reference is not None and not isinstance(self.reference, str):
            raise TypeError(f"reference must be a str or None, got {type(self.reference).__name__}")
        if not isinstance(self.fields, Mapping):
            raise TypeError(f"fields must be a mapping, got {type(self.fields).__name__}")
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))  # read-only

    def fingerprint(self) -> str:
        """SHA-256 of the prompt and reference: a stored result is reused only if it matches."""
        payload = json.dumps([self.prompt, self.reference], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


Metric = Callable[[str, Example], float]


@dataclass(frozen=True)
class Task:
    """A named set of examples and the metric that scores an output for one of them."""

    name: str
    examples: tuple[Example, ...]
    metric: Metric

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {self.name!r}")
        if isinstance(self.examples, Example) or not isinstance(self.examples, Sequence):
            raise TypeError(
                f"examples must be a tuple of Example, got {type(self.examples).__name__}"
            )
        object.__setattr__(self, "examples", tuple(self.examples))
        if not self.examples:
            raise ValueError("examples must not be empty")
        for i, ex in enumerate(self.examples):
            if not isinstance(ex, Example):
                raise TypeError(f"examples[{i}] must be an Example, got {type(ex).__name__}")
        ids = [ex.id for ex in self.examples]
        if len(set(ids)) != len(ids):
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"example ids must be unique, repeated: {repeated}")
        if not callable(self.metric):
            raise TypeError(f"metric must be callable, got {type(self.metric).__name__}")


@dataclass(frozen=True)
class ExampleResult:
    """One example's output and score (``resumed``: read back from the results file)."""

    id: str
    output: str
    score: float
    resumed: bool = False


@dataclass(frozen=True)
class ConfidenceInterval:
    """A mean with its percentile-bootstrap interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    confidence: float
    n: int
    n_resamples: int
    seed: int

    def __post_init__(self) -> None:
        if not self.low <= self.mean <= self.high:
            raise ValueError(f"need low <= mean <= high, got {self.low}, {self.mean}, {self.high}")

    def __str__(self) -> str:
        return (
            f"{self.mean:.3f} ({100 * self.confidence:g}% CI {self.low:.3f} to {self.high:.3f}, "
            f"n = {self.n})"
        )


@dataclass(frozen=True)
class EvaluationReport:
    """What :func:`evaluate` returns: every example's result, in task order, and the summary."""

    task: str
    results: tuple[ExampleResult, ...]
    summary: ConfidenceInterval

    @property
    def scores(self) -> np.ndarray:
        """``(n,)`` float64 per-example scores."""
        return np.array([r.score for r in self.results])

    @property
    def outputs(self) -> list[str]:
        return [r.output for r in self.results]

    @property
    def n_resumed(self) -> int:
        """How many results came from the results file instead of a new run."""
        return sum(r.resumed for r in self.results)


# ---------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    scores: Sequence[float] | np.ndarray | Tensor,
    *,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> ConfidenceInterval:
    """The mean of ``scores`` with a percentile-bootstrap confidence interval.

    Draws ``n_resamples`` resamples of size ``n`` with replacement (indices from
    ``np.random.default_rng(seed).integers(0, n, (n_resamples, n))``), takes each mean,
    and reports the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of
    those means (linear interpolation). Same numbers as ``scipy.stats.bootstrap`` with
    ``method="percentile"`` and ``rng=np.random.default_rng(seed)``.

    >>> print(bootstrap_ci([0, 1, 1, 1, 0, 1, 1, 0, 1, 1]))
    0.700 (95% CI 0.400 to 0.900, n = 10)
    """
    if isinstance(scores, Tensor):
        scores = scores.detach().cpu().numpy()
    if isinstance(scores, str) or not isinstance(scores, (Sequence, np.ndarray)):
        raise TypeError(f"scores must be a list or array of numbers, got {type(scores).__name__}")
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"scores must be a non-empty 1-D list, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores must be finite (no NaN or inf)")
    _check_bootstrap_options(confidence, n_resamples, seed)
    return _bootstrap_ci(x, confidence, n_resamples, seed)


def _check_bootstrap_options(confidence: object, n_resamples: object, seed: object) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise TypeError(f"confidence must be a number, got {type(confidence).__name__}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    check_int("n_resamples", n_resamples, minimum=1)
    check_int("seed", seed, minimum=0)


def _bootstrap_ci(
    x: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> ConfidenceInterval:
    """Unchecked core of :func:`bootstrap_ci` (``x``: non-empty, finite, float64)."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(x), (n_resamples, len(x)))  # (n_resamples, n)
    means = x[index].mean(axis=1)  # (n_resamples,)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    mean = float(x.mean())
    return ConfidenceInterval(
        mean=mean,
        low=min(float(low), mean),  # guards a rounding hair's breadth outside
        high=max(float(high), mean),
        confidence=float(confidence),
        n=len(x),
        n_resamples=n_resamples,
        seed=seed,
    )


# ------------------------------------------------------------------------------ running


def example_seed(seed: int, example_id: str) -> int:
    """A 63-bit seed from the run's ``seed`` and an example's id, the same in every process.

    >>> example_seed(0, "q1") == example_seed(0, "q1") != example_seed(1, "q1")
    True
    """
    check_int("seed", seed, minimum=0)
    if not isinstance(example_id, str):
        raise TypeError(f"example_id must be a str, got {type(example_id).__name__}")
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def evaluate(
    task: Task,
    system: System,
    *,
    seed: int = 0,
    results_path: str | os.PathLike | None = None,
    confidence: float = 0.95,
    n_resamples: int = 1000,
) -> EvaluationReport:
    """Run ``system`` on every example of ``task``, score the outputs, summarise.

    Args:
        task: the examples and the metric.
        system: ``system(prompt, generator) -> output``; the generator is seeded per
            example (:func:`example_seed`), for systems that sample.
        seed: the run's seed, for the generators and the bootstrap.
        results_path: a JSON-lines file to append results to and resume from (created
            with its folder if missing); ``None`` keeps nothing.
        confidence, n_resamples: of the bootstrap interval (:func:`bootstrap_ci`).

    >>> task = Task("echo", (Example("a", "yes", "yes"), Example("b", "no", "yes")), exact_match)
    >>> print(evaluate(task, lambda prompt, generator: prompt).summary)
    0.500 (95% CI 0.000 to 1.000, n = 2)
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task, got {type(task).__name__}")
    if not callable(system):
        raise TypeError(f"system must be callable, got {type(system).__name__}")
    _check_bootstrap_options(confidence, n_resamples, seed)  # before a long run, not after
    path = None if results_path is None else Path(results_path)
    stored = _read_results(path, task) if path is not None else {}
    results = []
    for example in task.examples:
        if example.id in stored:
            output, score = stored[example.id]
            results.append(ExampleResult(example.id, output, score, resumed=True))
            continue
        generator = torch.Generator().manual_seed(example_seed(seed, example.id))
        output = system(example.prompt, generator)
        if not isinstance(output, str):
            raise TypeError(
                f"system must return a str, got {type(output).__name__} for example {example.id!r}"
            )
        score = task.metric(output, example)
        if isinstance(score, bool) or not isinstance(score, (int, float, np.floating)):
            raise TypeError(
                f"metric must return a number, got {type(score).__name__} for example {example.id!r}"
            )
        if not math.isfinite(score):
            raise ValueError(f"metric returned {score} for example {example.id!r}")
        result = ExampleResult(example.id, output, float(score))
        if path is not None:
            _append_result(path, task.name, example, result)
        results.append(result)
    summary = _bootstrap_ci(
        np.array([r.score for r in results]), float(confidence), n_resamples, seed
    )
    return EvaluationReport(task.name, tuple(results), summary)


def _read_results(path: Path, task: Task) -> dict[str, tuple[str, float]]:
    """``id -> (output, score)`` from a results file; a half-written last line (a run killed
    while writing) is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        path.write_bytes(complete)
    fingerprints = {ex.id: ex.fingerprint() for ex in task.examples}
    stored = {}
    for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            name, key, fp = row["task"], row["id"], row["fingerprint"]
            output, score = row["output"], float(row["score"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"results_path line {number} is not a result: {err}") from None
        if name != task.name:
            raise ValueError(
                f"results_path holds results of task {name!r}, not {task.name!r}; "
                "use one file per task"
            )
        if key in fingerprints and fingerprints[key] != fp:
            raise ValueError(
                f"results_path holds a result for another version of example {key!r} "
                "(its prompt or reference changed); delete the file or use another path"
            )
        stored[key] = (output, score)
    return stored


def _append_result(path: Path, task: str, example: Example, result: ExampleResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {
        "task": task,
        "id": result.id,
        "fingerprint": example.fingerprint(),
        "output": result.output,
        "score": result.score,
    }
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()


# ------------------------------------------------------------------ systems and metrics


def exact_match(output: str, example: Example) -> float:
    """1.0 when the output equals the reference after trimming and lowercasing.

    >>> exact_match(" Paris ", Example("q", "Capital of France?", "paris"))
    1.0
    """
    if not isinstance(example, Example) or example.reference is None:
        raise ValueError("exact_match needs an Example with a reference")
    return float(output.strip().lower() == example.reference.strip().lower())


def model_system(
    model: nn.Module,
    tokenizer: TokenizerLike,
    *,
    chat: bool = True,
    max_new_tokens: int = 64,
    sampling: SamplingConfig | None = None,
    system_prompt: str | None | EllipsisType = ...,
    stop_token_ids: int | Iterable[int] | None = None,
) -> System:
    """A system from a course model: ``chat=True`` sends the prompt as one user message
    (``generate.chat``, stopping at the end of the assistant's turn), ``chat=False``
    continues it as plain text (``generate.complete``). Greedy unless ``sampling`` says
    otherwise; the harness's per-example generator drives the sampling."""
    from llmfoundations.generate import chat as chat_reply
    from llmfoundations.generate import complete

    if not isinstance(chat, bool):
        raise TypeError(f"chat must be a bool, got {type(chat).__name__}")
    check_int("max_new_tokens", max_new_tokens, minimum=1)

    def system(prompt: str, generator: torch.Generator) -> str:
        if chat:
            return chat_reply(
                model,
                tokenizer,
                [{"role": "user", "content": prompt}],
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                system_prompt=system_prompt,
                stop_token_ids=stop_token_ids,
                generator=generator,
            )
        return complete(
            model,
            tokenizer,
            prompt,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            stop_token_ids=() if stop_token_ids is None else stop_token_ids,
            generator=generator,
        )

    return system
