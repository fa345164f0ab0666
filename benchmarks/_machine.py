"""What the benchmark scripts say about the machine they ran on (imported by each script;
``python benchmarks/NAME.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

from llmfoundations.course import cpu_name

__all__ = ["cpu_name"]
