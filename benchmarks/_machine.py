"""What the benchmark scripts share: the machine they ran on, percentiles, and writing a
results file only when the outputs compared were equal (imported by each script;
``python benchmarks/NAME.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from llmfoundations.course import cpu_name as _model_name

__all__ = ["command", "compare", "cpu_name", "fmt_ratio", "paired", "percentile", "publish"]


def cpu_name() -> str:
    """The CPU's model name, with its family and model numbers and widest vector extension
    where Linux says (virtual machines often report only "AMD EPYC" or "Intel Xeon", which
    covers several generations: EPYC family 25 is Zen 3, AVX2 only, or Zen 4, AVX-512;
    family 26 is Zen 5)."""
    name = _model_name()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    isa = next(
        (label for flag, label in (("avx512_bf16", "AVX-512 with BF16"), ("avx512f", "AVX-512"),
                                   ("avx2", "AVX2")) if flag in flags),
        None,
    )
    details = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields else []
    details += [isa] if isa else []
    return f"{name} ({', '.join(details)})" if details else name


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear between order statistics (NumPy's
    default, "type 7")."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def publish(lines: list[str], path: Path, write: bool = True, *, mismatch: str = "") -> None:
    """Print a results table's lines and, unless ``write`` is false, write them to ``path``.

    ``mismatch``, when not empty, says which outputs that should be equal were not: the
    lines are printed, nothing is written, and the script exits with an error, since a
    speed comparison of different outputs means nothing."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    print(text)
    if mismatch:
        raise SystemExit(f"not written: {mismatch}")
    if write:
        path.write_text(text)
        print(f"wrote {path}")


def paired(numerators: Sequence[float], denominators: Sequence[float]) -> tuple[float, float, float]:
    """Median, lowest and highest over rounds of ``numerators[r] / denominators[r]``: each
    ratio is taken within one round, where the two measurements ran seconds apart, so a
    drift of the machine's speed between rounds cancels."""
    if not numerators or len(numerators) != len(denominators):
        raise ValueError(f"need equal, non-empty rounds, got {len(numerators)} and {len(denominators)}")
    if any(b == 0 for b in denominators):
        raise ValueError(f"a round measured 0 in the denominator: {list(denominators)}")
    ratios = sorted(a / b for a, b in zip(numerators, denominators, strict=True))
    return statistics.median(ratios), ratios[0], ratios[-1]


def fmt_ratio(r: tuple[float, float, float], digits: int = 2) -> str:
    """``median (lowest-highest)``, or the median alone when every round gave the same."""
    median, low, high = r
    if f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def compare(r: tuple[float, float, float], above: str, below: str, level: str) -> str:
    """A verdict that holds in every round: ``above`` when every ratio is over 1, ``below``
    when every one is under 1, ``level`` when the rounds disagree."""
    _, low, high = r
    return above if low > 1 else below if high < 1 else level


def command(script: str) -> str:
    """The command line that ran ``script`` (for the page's "Command:" line)."""
    return " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]])
