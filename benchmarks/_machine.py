"""What the benchmark scripts say about the machine they ran on (imported by each script;
``python benchmarks/NAME.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

from llmfoundations.course import cpu_name

__all__ = ["cpu_name", "publish"]


def publish(lines: list[str], path: Path, write: bool = True) -> None:
    """Print a results table's lines and, unless ``write`` is false, write them to ``path``."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    print(text)
    if write:
        path.write_text(text)
        print(f"wrote {path}")
