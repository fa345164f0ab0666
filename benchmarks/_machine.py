"""What the benchmark scripts say about the machine they ran on (imported by each script;
``python benchmarks/NAME.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

from llmfoundations.course import cpu_name as _model_name

__all__ = ["cpu_name", "publish"]


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


def publish(lines: list[str], path: Path, write: bool = True) -> None:
    """Print a results table's lines and, unless ``write`` is false, write them to ``path``."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    print(text)
    if write:
        path.write_text(text)
        print(f"wrote {path}")
