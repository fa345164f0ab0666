"""The environment files agree with each other, and the package is what labs expect."""

from __future__ import annotations

import re

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import llmfoundations


def _pyproject(repo_root):
    return tomllib.loads((repo_root / "pyproject.toml").read_text(encoding="utf-8"))


def _environment(repo_root):
    return yaml.safe_load((repo_root / "environment.yml").read_text(encoding="utf-8"))


def test_environment_python_satisfies_requires_python(repo_root):
    requires = SpecifierSet(_pyproject(repo_root)["project"]["requires-python"])
    deps = _environment(repo_root)["dependencies"]
    pythons = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    assert len(pythons) == 1, f"environment.yml must pin one python, got {pythons}"
    version = pythons[0].split("=", 1)[1]
    assert Version(version) in requires, f"python {version} not allowed by {requires}"


def test_environment_pip_part_installs_the_package_with_existing_extras(repo_root):
    project = _pyproject(repo_root)["project"]
    extras = set(project["optional-dependencies"])
    deps = _environment(repo_root)["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    installs = [line for line in pip if re.match(r"(-e\s+)?\.(\[|$)", line)]
    assert len(installs) == 1, f"the pip part must install the package once, got {pip}"
    match = re.search(r"\[([^\]]*)\]", installs[0])
    wanted = {e.strip() for e in match.group(1).split(",")} if match else set()
    assert wanted <= extras, f"unknown extras {wanted - extras}"
    assert "book" in wanted, "Binder must be able to build and read the book"


def test_environment_pins_agree_with_pyproject(repo_root):
    """Anything listed in both files must allow the same versions in environment.yml."""
    project = _pyproject(repo_root)["project"]
    declared = {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}
    deps = _environment(repo_root)["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    for line in pip:
        if line.startswith(("-", ".")):
            continue
        req = Requirement(line)
        assert req.name.lower() in declared, f"{req.name} is not a dependency in pyproject.toml"
        assert str(req.specifier) == str(declared[req.name.lower()].specifier), (
            f"{req.name}: environment.yml says {req.specifier}, pyproject says "
            f"{declared[req.name.lower()].specifier}"
        )


def test_runtime_dependencies_use_lower_bounds_only(repo_root):
    """Colab must never need a restart: no upper bounds or exact pins at run time."""
    for line in _pyproject(repo_root)["project"]["dependencies"]:
        for spec in Requirement(line).specifier:
            assert spec.operator == ">=", f"{line}: runtime dependencies take lower bounds only"


def test_package_docstring_has_the_dimension_legend():
    doc = llmfoundations.__doc__
    for symbol in ("B ", "T ", "H ", "Hkv", "D ", "V "):
        assert re.search(rf"^\s+{re.escape(symbol.strip())}\s", doc, re.M), f"legend misses {symbol}"
