"""Grade a folder of submitted lab notebooks: run each one, score its checks, report.

``python -m llmfoundations.course grade SUBMISSIONS/ --out grades.csv`` reads
``SUBMISSIONS/<student>/<lab>.ipynb`` (student versions of the labs, matched to the labs by
file name), and for each notebook:

1. runs the lab's set-up cell and the student's ``## Exercises`` section, cell by cell in
   order, in a fresh kernel on the CPU with a time limit for the whole notebook. The
   exercises depend only on the set-up cell, so the rest of the lab is not run. The check
   cells (tag ``check``) run the *lab's* check, even if the student edited theirs;
2. scores each check: ``passed`` (its points), ``failed``, ``not attempted`` (the blank's
   ``NotImplementedError``), ``timed out``, ``kernel crashed`` or ``not run``. A failing
   solution cell fails only its own exercise. A kernel that dies (``os._exit``, a segfault,
   memory) is restarted without the cell that killed it, so only that exercise is lost;
   a kernel that dies before its first cell (kernels started at once can race for a
   port) is started again, up to ``START_TRIES`` times, and then reads ``not run``;
3. writes one CSV row per student x lab x check (``grades.csv``), one row per student with
   a column per lab (``grades-summary.csv``) and a markdown report per student
   (``feedback/<student>.md``) saying what failed and the check's message.

A notebook that cannot be read, is not a known lab, or is missing gets a row too.
Points: 1 per check, or what the lab's notebook metadata says
(``"llmfoundations": {"points": {"check_attention": 2}}``).

Left out: the grader runs the students' code with your permissions (use a container or a
throw-away VM for untrusted submissions) and is no defence against a determined cheat
(a solution cell can replace a check function); kernels get offline settings
(``HF_HUB_OFFLINE``, ``PIP_NO_INDEX``, ...) but no network sandbox.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TypeVar

__all__ = [
    "Check",
    "Lab",
    "Row",
    "load_lab",
    "match_lab",
    "grade_notebook",
    "grade_submissions",
    "write_grades",
    "write_summary",
    "write_feedback",
]

PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"
TIMED_OUT, CRASHED, NOT_RUN = "timed out", "kernel crashed", "not run"
MISSING, UNREADABLE, UNKNOWN_LAB = "missing", "unreadable", "not a known lab"
NOT_A_NOTEBOOK, NO_FOLDER = "not a notebook", "not in a student folder"

#: Seconds a notebook may run (set-up + exercises, kernel restarts included); a lab's
#: exercise section takes under 10 s on 2 CPU cores, so this is room for a slow machine.
DEFAULT_TIMEOUT = 120
#: Kernel restarts allowed after crashes, per notebook.
MAX_RESTARTS = 3
#: Tries to start a kernel. A kernel can die at start through no fault of the notebook:
#: jupyter_client picks free TCP ports before the kernel binds them, so kernels started at
#: once (``--jobs``) can race for a port ("Address already in use"; measured about 1 start
#: in 300 with 4 at once on 2 cores).
START_TRIES = 3
CSV_COLUMNS = ("student", "lab", "file", "exercise", "check", "status", "points", "max_points", "message")

_CHECK_CALL = re.compile(r"\bchecks\.(check_\w+)\s*\(")
_EXERCISES = re.compile(r"^##\s+Exercises\b", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NOT_ATTEMPTED_TEXT = "not attempted yet"
_NOT_ATTEMPTED_ADVICE = (
    "not attempted yet: replace `raise NotImplementedError()` with your solution and run the cell again"
)


# --------------------------------------------------------------------------------- labs


@dataclass(frozen=True)
class Check:
    """One check cell of a lab: its order, the check it calls, its source and points."""

    number: int
    name: str
    source: str
    points: float


@dataclass(frozen=True)
class Lab:
    """What the grader needs of a lab: its set-up cell and its checks."""

    name: str  # file stem, e.g. "01-2-self-attention"
    title: str
    setup: str
    checks: tuple[Check, ...]

    @property
    def max_points(self) -> float:
        return sum(c.points for c in self.checks)


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _exercise_start(cells: Sequence[dict]) -> int | None:
    """Index of the ``## Exercises`` heading, or None."""
    for i, cell in enumerate(cells):
        if cell.get("cell_type") == "markdown" and _EXERCISES.search(_source(cell)):
            return i
    return None


def _points(meta: dict, names: Sequence[str], lab: str) -> dict[str, float]:
    """Points per check name: 1 each, or the lab metadata's ``points`` mapping."""
    given = meta.get("points", {})
    if not isinstance(given, dict):
        raise ValueError(f"{lab}: metadata 'points' must map check names to points, got {type(given).__name__}")
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"{lab}: metadata 'points' names checks the lab does not have: {unknown} (it has {list(names)})")
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{lab}: metadata 'points' of {name} must be a number >= 0, got {value!r}")
    return {name: float(given.get(name, 1)) for name in names}


def load_lab(path: Path) -> Lab:
    """Read a lab notebook: its title, set-up cell (tag ``setup``) and check cells in order.

    Raises ``ValueError`` naming the lab when it has no set-up cell, no ``## Exercises``
    section or no check cell there, or when its ``points`` metadata is wrong.
    """
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = nb.get("cells", [])
    meta = nb.get("metadata", {}).get("llmfoundations", {})
    setup = next((_source(c) for c in cells if "setup" in _tags(c)), None)
    if setup is None:
        raise ValueError(f"{path.name}: no cell tagged 'setup'")
    start = _exercise_start(cells)
    if start is None:
        raise ValueError(f"{path.name}: no '## Exercises' section")
    sources = [_source(c) for c in cells[start:] if c.get("cell_type") == "code" and "check" in _tags(c)]
    if not sources:
        raise ValueError(f"{path.name}: no cell tagged 'check' after '## Exercises'")
    names = [_check_name(src, i) for i, src in enumerate(sources, start=1)]
    if len(set(names)) != len(names):
        raise ValueError(f"{path.name}: two check cells call the same check: {names}")
    points = _points(meta, names, path.name)
    checks = tuple(Check(i, n, s, points[n]) for i, (n, s) in enumerate(zip(names, sources, strict=True), start=1))
    return Lab(path.stem, str(meta.get("title", path.stem)), setup, checks)


def _check_name(source: str, number: int) -> str:
    found = _CHECK_CALL.findall(source)
    return found[-1] if found else f"check {number}"


def _lab_number(stem: str) -> str | None:
    """``"01-2"`` of ``"01-2-self-attention"``, ``"00"`` of ``"00-check-your-setup"``."""
    match = re.match(r"(\d\d)(?:-(\d))?(?=-|\s|$)", stem)
    if not match:
        return None
    return match.group(1) + (f"-{match.group(2)}" if match.group(2) else "")


def match_lab(file_name: str, labs: Sequence[Lab], title: str | None = None) -> Lab | None:
    """The lab a submitted file is: same file name; else the same lab number at the start
    of the name (``01-2-self-attention (1).ipynb``, ``Copy of 01-2-....ipynb``); else the
    same title in the notebook's metadata. None when nothing (or more than one lab) fits."""
    stem = Path(file_name).stem
    by_name = [lab for lab in labs if lab.name == stem]
    if by_name:
        return by_name[0]
    number = _lab_number(re.sub(r"^copy of\s+", "", stem.strip(), flags=re.I))
    by_number = [lab for lab in labs if number and _lab_number(lab.name) == number]
    if len(by_number) == 1:
        return by_number[0]
    by_title = [lab for lab in labs if title and lab.title == title]
    return by_title[0] if len(by_title) == 1 else None


# ------------------------------------------------------------------------------ running


@dataclass
class _Cell:
    """A cell to run: its source, the check (0-based) it belongs to, whether it is the check."""

    source: str
    group: int
    is_check: bool


@dataclass
class _Ran:
    """What became of one cell: error name and message (None: no error), or how it ended."""

    ran: bool = False
    error: tuple[str, str] | None = None
    crashed: bool = False
    timed_out: bool = False


@dataclass
class _Plan:
    cells: list[_Cell]
    notes: list[str] = field(default_factory=list)


def _normalise(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def plan_cells(lab: Lab, nb: dict) -> _Plan:
    """The cells to run for a submission: the student's exercise section, with each of the
    lab's checks in place of the student's check cell (found by tag, else by source); a
    check the student deleted is run after their last cell. Cells after the last check are
    left out (no check depends on them)."""
    cells = nb.get("cells", [])
    start = _exercise_start(cells)
    notes = []
    if start is None:
        notes.append("no '## Exercises' heading was found, so every code cell of the notebook was run")
        start = 0
    wanted = {_normalise(c.source): c.number - 1 for c in lab.checks}
    used: set[int] = set()
    plan: list[_Cell] = []
    for cell in cells[start:]:
        if cell.get("cell_type") != "code" or "setup" in _tags(cell):
            continue
        source = _source(cell)
        by_source = wanted.get(_normalise(source))
        if by_source is not None and by_source not in used:
            index = by_source
        elif "check" in _tags(cell):
            index = next((c.number - 1 for c in lab.checks if c.number - 1 not in used), None)
            if index is None:
                plan.append(_Cell(source, -1, False))  # an extra check-tagged cell: run as written
                continue
            notes.append(f"the check cell of exercise {index + 1} was edited; the lab's check was run instead")
        else:
            plan.append(_Cell(source, -1, False))
            continue
        used.add(index)
        plan.append(_Cell(lab.checks[index].source, index, True))
    for check in lab.checks:
        if check.number - 1 not in used:
            notes.append(f"the check cell of exercise {check.number} was missing; the grader ran it after your last cell")
            plan.append(_Cell(check.source, check.number - 1, True))
    # A cell belongs to the first check after it; cells after the last check are dropped.
    group = -1
    for cell in reversed(plan):
        if cell.is_check:
            group = cell.group
        cell.group = group
    return _Plan([c for c in plan if c.group >= 0], notes)


def kernel_env(threads: int = 1) -> dict[str, str]:
    """The environment of a grading kernel: CPU, few threads, nothing downloaded, no seed
    or claims log from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if k not in ("LLMF_SEED", "LLMF_CLAIMS_LOG")}
    env.update({
        "LLMF_DEVICE": "cpu", "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "PIP_NO_INDEX": "1", "MPLBACKEND": "agg", "PYTHONDONTWRITEBYTECODE": "1",
    })  # fmt: skip
    return env


def _quiet_log() -> logging.Logger:
    """nbclient's logger, silenced: a crash or a timeout is reported in the grades instead."""
    log = logging.getLogger("llmfoundations.grading.kernel")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False
    return log


_T = TypeVar("_T")


class _KernelDidNotStart(RuntimeError):
    """The kernel died before running a cell, with time left: not the notebook's fault."""


def _run_pass(sources: list[str], skip: set[int], deadline: float, cwd: Path, env: dict) -> list[_Ran]:
    """Run the cells once, in order, in a fresh kernel; stop at a crash or the deadline."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    client = NotebookClient(
        nb, kernel_name="python3", allow_errors=True, record_timing=False,
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        startup_timeout=max(1, int(deadline - time.monotonic())),
        log=_quiet_log(), shutdown_kernel="immediate",
    )  # fmt: skip
    ran = [_Ran() for _ in sources]
    current = None
    try:
        with client.setup_kernel(env=env, cwd=str(cwd), stderr=subprocess.DEVNULL):
            for i, cell in enumerate(nb.cells):
                if i in skip:
                    continue
                if time.monotonic() >= deadline:
                    ran[i].timed_out = True
                    break
                current = i
                client.execute_cell(cell, i)
                ran[i].ran = True
                errors = [o for o in cell.outputs if o.get("output_type") == "error"]
                if errors:
                    ran[i].error = (str(errors[0].get("ename", "")), str(errors[0].get("evalue", "")))
    except CellTimeoutError:
        ran[current].timed_out = True
    except DeadKernelError:
        if current is None:
            raise
        ran[current].crashed = True
    except (RuntimeError, TimeoutError) as err:  # the kernel did not start in time, or died at once
        if current is not None and time.monotonic() < deadline:
            ran[current].crashed = True
        elif current is None and time.monotonic() < deadline and died_at_start(err):
            raise _KernelDidNotStart(str(err)) from err
        else:
            raise TimeoutError(f"the kernel did not start: {err}") from err
    return ran


def died_at_start(error: BaseException | str) -> bool:
    """Whether a kernel died before replying to its first message (jupyter_client's
    ``RuntimeError``), as in a port race; a kernel that is merely slow to start is not."""
    return "died before replying" in str(error)


def retry_kernel_start(run: Callable[[], _T], what: str) -> _T:
    """``run()``, called again (up to ``START_TRIES`` times in all, each retry logged as a
    warning) while it raises a ``RuntimeError`` saying its kernel died at start."""
    for attempt in range(1, START_TRIES + 1):
        try:
            return run()
        except RuntimeError as err:
            if attempt == START_TRIES or not died_at_start(err):
                raise
            last = str(err).strip().splitlines()[-1]
            logging.getLogger("llmfoundations.kernels").warning(
                "%s: the kernel died at start (try %d of %d; a port race?): %s; starting another",
                what, attempt, START_TRIES, last)  # fmt: skip
    raise AssertionError("unreachable")


def run_cells(sources: list[str], timeout: float, cwd: Path, env: dict) -> list[_Ran]:
    """Run the cells in order within ``timeout`` seconds in all; after a crash, start a
    fresh kernel and run them again without the cell that crashed (at most
    ``MAX_RESTARTS`` times)."""
    deadline = time.monotonic() + timeout
    skip: set[int] = set()
    while True:
        ran = retry_kernel_start(lambda: _run_pass(sources, skip, deadline, cwd, env), "grading")
        crashed = [i for i, r in enumerate(ran) if r.crashed]
        if not crashed or len(skip) >= MAX_RESTARTS or time.monotonic() >= deadline:
            for i in skip:
                ran[i] = _Ran(crashed=True)
            return ran
        skip.add(crashed[0])


# ------------------------------------------------------------------------------ scoring


@dataclass
class Row:
    """One line of ``grades.csv``: a check of a lab of a student (or a notebook-level row)."""

    student: str
    lab: str
    file: str
    exercise: int | str
    check: str
    status: str
    points: float
    max_points: float
    message: str = ""


def _one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line, cut to ``limit`` characters; a check's ``Hint:`` is kept whole
    (the part before it is cut instead), since it is what the student can act on."""
    text = " ".join(_ANSI.sub("", text).split())
    if len(text) <= limit:
        return text
    head, sep, hint = text.partition(" Hint: ")
    if sep and len(sep) + len(hint) <= limit - 100:
        return head[: limit - len(sep) - len(hint) - 1] + "…" + sep + hint
    return text[: limit - 1] + "…"


def _is_blank(error: tuple[str, str] | None) -> bool:
    return error is not None and error[0] == "NotImplementedError" and (
        error[1] == "" or _NOT_ATTEMPTED_TEXT in error[1]
    )


def _score(check: Check, cells: list[_Cell], ran: list[_Ran], timeout: float) -> tuple[str, str]:
    """Status and message of one check from what became of its cells."""
    mine = [(c, r) for c, r in zip(cells, ran, strict=True) if c.group == check.number - 1]
    in_check = any(r.crashed or r.timed_out for c, r in mine if c.is_check)
    where = "the check (which calls your function)" if in_check else "your code"
    if any(r.crashed for _, r in mine):
        return CRASHED, (f"the kernel died while running {where} for exercise {check.number} (os._exit, "
                         f"a segfault or running out of memory?); the other exercises ran in a fresh kernel")
    if any(r.timed_out for _, r in mine):
        return TIMED_OUT, (f"the notebook reached its time limit of {timeout:g} s while running {where} for "
                           f"exercise {check.number} (an endless loop?); later exercises were not run")
    check_ran = next(r for c, r in mine if c.is_check)
    if not check_ran.ran:
        return NOT_RUN, "not run: the time limit was reached or the kernel crashed earlier in the notebook"
    solution_error = next((r.error for c, r in mine if not c.is_check and r.error), None)
    if check_ran.error is None:
        return PASSED, ""
    if _is_blank(check_ran.error) or _is_blank(solution_error):
        text = check_ran.error[1] if _NOT_ATTEMPTED_TEXT in check_ran.error[1] else _NOT_ATTEMPTED_ADVICE
        return NOT_ATTEMPTED, text
    message = f"{check_ran.error[0]}: {check_ran.error[1]}"
    if solution_error:
        message = f"your code cell raised {solution_error[0]}: {solution_error[1]}; then the check: {message}"
    return FAILED, _name_error_note(solution_error or check_ran.error) + message


_UNDEFINED = re.compile(r"name '(\w+)' is not defined")


def _name_error_note(first_error: tuple[str, str]) -> str:
    """A first sentence when the first error is a ``NameError``: in the notebook the name may
    have come from the lab's body (``import math`` above the exercises), which grading
    does not run."""
    if first_error[0] == "NameError" and (m := _UNDEFINED.search(first_error[1])):
        return (f"`{m.group(1)}` is not defined when only the set-up cell and the Exercises "
                "section run, as in grading (a fresh kernel): import or define it in your "
                "exercise cell. ")
    return ""


def _rows_for(student: str, lab: Lab, file: str, status: str, message: str) -> list[Row]:
    return [Row(student, lab.name, file, c.number, c.name, status, 0.0, c.points, message) for c in lab.checks]


def grade_notebook(
    student: str, path: Path, labs: Sequence[Lab], *, timeout: float = DEFAULT_TIMEOUT, threads: int = 1
) -> tuple[list[Row], list[str]]:
    """Grade one submitted notebook: its rows (one per check of its lab) and notes.

    Never raises for a bad submission: an unreadable file, an unknown lab, a crash or a
    timeout each become rows saying so.
    """
    import nbformat

    file = path.name
    if path.suffix != ".ipynb":
        return [Row(student, "", file, "", "", NOT_A_NOTEBOOK, 0.0, 0.0, "only .ipynb files are graded")], []
    try:
        nb = nbformat.read(path, as_version=4)
        if not isinstance(nb.get("cells"), list):
            raise ValueError("it has no list of cells")
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes a row
        lab = match_lab(file, labs)
        message = f"could not read the notebook: {type(err).__name__}: {_one_line(str(err), 200)}"
        if lab is None:
            return [Row(student, "", file, "", "", UNREADABLE, 0.0, 0.0, message)], []
        return _rows_for(student, lab, file, UNREADABLE, message), []
    lab = match_lab(file, labs, title=nb.get("metadata", {}).get("llmfoundations", {}).get("title"))
    if lab is None:
        names = ", ".join(lab.name for lab in labs)
        return [Row(student, "", file, "", "", UNKNOWN_LAB, 0.0, 0.0,
                    f"the file name matches none of the labs ({names})")], []  # fmt: skip
    plan = plan_cells(lab, nb)
    sources = [lab.setup] + [c.source for c in plan.cells]
    with tempfile.TemporaryDirectory(prefix="llmf-grade-") as tmp:
        env = kernel_env(threads)
        env["IPYTHONDIR"] = str(Path(tmp) / "ipython")
        try:
            ran = run_cells(sources, timeout, Path(tmp), env)
        except TimeoutError as err:
            return _rows_for(student, lab, file, TIMED_OUT, _one_line(str(err))), plan.notes
        except _KernelDidNotStart as err:
            message = f"the grading kernel died at start {START_TRIES} times ({err}); grade this notebook again"
            return _rows_for(student, lab, file, NOT_RUN, _one_line(message)), plan.notes
    setup, ran = ran[0], ran[1:]
    if setup.error or setup.crashed or setup.timed_out or not setup.ran:
        why = f"{setup.error[0]}: {setup.error[1]}" if setup.error else "it crashed or ran out of time"
        return _rows_for(student, lab, file, NOT_RUN, f"the lab's set-up cell failed ({why}); "
                         "check the grading environment"), plan.notes  # fmt: skip
    rows = []
    for check in lab.checks:
        status, message = _score(check, plan.cells, ran, timeout)
        points = check.points if status == PASSED else 0.0
        rows.append(Row(student, lab.name, file, check.number, check.name, status, points, check.points, message))
    return rows, plan.notes


# -------------------------------------------------------------------------- submissions


@dataclass
class Submission:
    """One file handed in: who, where, and (once graded) its rows and notes."""

    student: str
    path: Path
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_submissions(folder: Path) -> list[Submission]:
    """Every file under ``folder/<student>/`` (hidden files and checkpoints left out); a
    file directly in ``folder`` is a submission of student ``""``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"submissions must be a folder with one sub-folder per student, got {folder}")
    found = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if not path.is_file() or any(p.startswith(".") or p == "__pycache__" for p in parts):
            continue
        found.append(Submission(parts[0] if len(parts) > 1 else "", path))
    return found


def _grade_one(sub: Submission, labs: Sequence[Lab], timeout: float, threads: int) -> Submission:
    if not sub.student:
        sub.rows = [Row("", "", sub.path.name, "", "", NO_FOLDER, 0.0, 0.0,
                        "put each student's notebooks in a folder named after the student")]  # fmt: skip
        return sub
    sub.rows, sub.notes = grade_notebook(sub.student, sub.path, labs, timeout=timeout, threads=threads)
    return sub


def grade_submissions(
    folder: Path,
    labs: Sequence[Lab],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int = 1,
    assigned: Iterable[str] | None = None,
) -> list[Submission]:
    """Grade every file under ``folder`` (one sub-folder per student), ``jobs`` at a time.

    ``assigned`` names the labs every student should have handed in (default: every lab
    someone handed in); a student without one gets ``missing`` rows for it.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    subs = find_submissions(folder)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 1
    if jobs == 1:
        graded = [_grade_one(s, labs, timeout, threads) for s in subs]
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            graded = list(pool.map(_grade_one, subs, [labs] * len(subs), [timeout] * len(subs),
                                   [threads] * len(subs)))  # fmt: skip
    students = sorted({p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")})
    return graded + _missing(graded, students, labs, assigned)


def _missing(
    graded: list[Submission], students: list[str], labs: Sequence[Lab], assigned: Iterable[str] | None
) -> list[Submission]:
    """A ``missing`` submission for each student (an empty folder too) x assigned lab
    they handed in nothing of."""
    by_name = {lab.name: lab for lab in labs}
    handed = {(s.student, r.lab) for s in graded for r in s.rows if r.lab}
    names = sorted({lab for _, lab in handed}) if assigned is None else list(assigned)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"assigned names labs that do not exist: {unknown}")
    out = []
    for student in students:
        for name in names:
            if (student, name) not in handed:
                rows = _rows_for(student, by_name[name], "", MISSING, "no notebook of this lab was handed in")
                out.append(Submission(student, Path(""), rows))
    return out


# ------------------------------------------------------------------------------ reports


def write_grades(subs: Sequence[Submission], path: Path) -> Path:
    """``grades.csv``: one row per student x lab x check (``message`` on one line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted((r for s in subs for r in s.rows), key=lambda r: (r.student, r.lab, r.file, str(r.exercise)))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**asdict(row), "message": _one_line(row.message),
                             "points": f"{row.points:g}", "max_points": f"{row.max_points:g}"})  # fmt: skip
    return path


def _best(subs: Sequence[Submission]) -> dict[tuple[str, str], tuple[float, float]]:
    """(student, lab) -> (points, max points) of the student's best file of that lab."""
    totals: dict[tuple[str, str, str], list[float]] = {}
    for s in subs:
        for r in s.rows:
            if s.student and r.lab:
                t = totals.setdefault((s.student, r.lab, r.file), [0.0, 0.0])
                t[0] += r.points
                t[1] += r.max_points
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for (student, lab, _), (points, maximum) in totals.items():
        if (student, lab) not in best or points > best[(student, lab)][0]:
            best[(student, lab)] = (points, maximum)
    return best


def write_summary(subs: Sequence[Submission], path: Path) -> Path:
    """``grades-summary.csv``: one row per student, a column of points per lab (the best
    file when a lab was handed in twice), then total, maximum and percent."""
    best = _best(subs)
    students = sorted({s.student for s in subs if s.student})
    labs = sorted({lab for _, lab in best})
    maxima = {lab: max(m for (_, name), (_, m) in best.items() if name == lab) for lab in labs}
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", *labs, "total", "max_points", "percent"])
        writer.writerow(["(max)", *[f"{maxima[lab]:g}" for lab in labs], "", f"{sum(maxima.values()):g}", ""])
        for student in students:
            points = [best.get((student, lab), (0.0, 0.0))[0] for lab in labs]
            total, maximum = sum(points), sum(maxima.values())
            percent = f"{100 * total / maximum:.1f}" if maximum else ""
            writer.writerow([student, *[f"{p:g}" for p in points], f"{total:g}", f"{maximum:g}", percent])
    return path


_MARK = {PASSED: "✔", NOT_ATTEMPTED: "○"}


def feedback_markdown(student: str, subs: Sequence[Submission], titles: dict[str, str]) -> str:
    """A student's report: per lab, points and a line per check; the message of each
    check that did not pass."""
    mine = [s for s in subs if s.student == student]
    best = _best(mine)
    total = sum(p for p, _ in best.values())
    maximum = sum(m for _, m in best.values())
    lines = [f"# Feedback for {student}", "", f"**Total: {total:g} / {maximum:g} points**", ""]
    for s in sorted(mine, key=lambda s: (s.rows[0].lab if s.rows else "", s.path.name)):
        lab = s.rows[0].lab if s.rows else ""
        got, of = sum(r.points for r in s.rows), sum(r.max_points for r in s.rows)
        title = titles.get(lab, lab) or "(not a lab)"
        lines += [f"## {title}", "", f"File: `{s.path.name or '(none)'}` · {got:g} / {of:g} points", ""]
        lines += [f"- note: {n}" for n in s.notes]
        for r in s.rows:
            name = f"Exercise {r.exercise} (`{r.check}`)" if r.check else "Notebook"
            lines.append(f"- {_MARK.get(r.status, '✘')} {name}: **{r.status}**"
                         + (f", {r.points:g} / {r.max_points:g}" if r.max_points else ""))  # fmt: skip
        lines += _messages(s)
        lines.append("")
    return "\n".join(lines)


def _messages(sub: Submission) -> list[str]:
    """Markdown of the messages of the rows that did not pass; one block when they all
    say the same (a missing or unreadable notebook)."""
    failing = [r for r in sub.rows if r.status != PASSED and r.message]
    if not failing:
        return []
    if len(failing) > 1 and len({(r.status, r.message) for r in failing}) == 1:
        failing = failing[:1]
        names = [f"{sub.path.name or 'this lab'}"]
    else:
        names = [f"Exercise {r.exercise} (`{r.check}`)" if r.check else sub.path.name for r in failing]
    lines = []
    for name, r in zip(names, failing, strict=True):
        lines += ["", f"### {name}: {r.status}", "", "```text", _ANSI.sub("", r.message).strip(), "```"]
    return lines


def write_feedback(subs: Sequence[Submission], folder: Path, labs: Sequence[Lab]) -> list[Path]:
    """One ``<student>.md`` per student in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    titles = {lab.name: lab.title for lab in labs}
    written = []
    for student in sorted({s.student for s in subs if s.student}):
        path = folder / f"{student}.md"
        path.write_text(feedback_markdown(student, subs, titles), encoding="utf-8")
        written.append(path)
    return written


def summary_path(out: Path) -> Path:
    """``grades-summary.csv`` beside ``grades.csv``."""
    return out.with_name(f"{out.stem}-summary{out.suffix or '.csv'}")


def summary_lines(subs: Sequence[Submission]) -> list[str]:
    """One line per student for the terminal: total and points per lab."""
    best = _best(subs)
    lines = []
    for student in sorted({s.student for s in subs if s.student}):
        mine = {lab: pm for (name, lab), pm in best.items() if name == student}
        total, maximum = sum(p for p, _ in mine.values()), sum(m for _, m in mine.values())
        labs = ", ".join(f"{lab} {p:g}/{m:g}" for lab, (p, m) in sorted(mine.items()))
        lines.append(f"{student}: {total:g}/{maximum:g} ({labs})")
    loose = [s.path.name for s in subs if not s.student]
    if loose:
        lines.append(f"not in a student folder (not graded): {', '.join(loose)}")
    return lines
