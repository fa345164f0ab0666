"""Checks that grade the exercises of the labs.

Each ``check_*`` function takes the student's function, runs it on fixed inputs next
to the course's reference, and either prints a one-line confirmation or raises
``AssertionError`` saying which case failed and how (with a hint where the wrong answer
is a known mistake). A blank exercise (``raise NotImplementedError()``) fails its check
with a ``NotImplementedError`` that says "not attempted yet" and what to do; every
``check_*`` carries ``core.exercise_check`` for that, and an undecorated one is an import
error.

Labs call them as ``from llmfoundations import checks; checks.check_softmax(softmax)``.
The checks live in one submodule per topic (``checks/basics.py``, ...); every name in a
submodule's ``__all__`` is available here, and a name exported twice is an import error.
"""

from __future__ import annotations

import importlib
import pkgutil

from .core import compare_with_reference, random_cases

__all__ = ["compare_with_reference", "random_cases"]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name == "core":
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_module, "__all__", ()):
        if _name in globals():  # two topics must not silently shadow each other's check
            raise ImportError(f"checks.{_info.name} redefines {_name!r}, already exported by the checks package")
        if _name.startswith("check_") and not getattr(getattr(_module, _name), "__exercise_check__", False):
            raise ImportError(f"checks.{_info.name}.{_name} must be decorated with @exercise_check")
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
