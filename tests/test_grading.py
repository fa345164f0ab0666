"""The grader: labs and points, matching files to labs, planning and scoring cells, the
reports, and (slow) a whole folder of generated submissions graded in real kernels.

The generated submissions are built from two real labs (00 and 01-2) with
``course.student_version`` and edits: correct, blank, partly wrong (a forbidden shortcut,
a known mistake), crashing (``os._exit``), an endless loop, an unreadable file, a
notebook that is no lab, a file that is no notebook, and a missing lab.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from llmfoundations import course, grading
from llmfoundations.grading import _Cell, _Ran

ROOT = Path(__file__).resolve().parents[1]
LAB00 = ROOT / "labs" / "00-check-your-setup.ipynb"
LAB012 = ROOT / "labs" / "01-2-self-attention.ipynb"


def _nb(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def labs() -> list[grading.Lab]:
    return [grading.load_lab(p) for p in (LAB00, LAB012)]


# ------------------------------------------------------------------------------ labs


def test_every_lab_loads_with_a_point_per_check():
    for path in sorted((ROOT / "labs").glob("*.ipynb")):
        lab = grading.load_lab(path)
        assert lab.checks and all(c.points == 1 for c in lab.checks)
        assert all(c.name.startswith("check_") for c in lab.checks)
        assert lab.max_points == len(lab.checks)


def test_a_lab_knows_its_set_up_and_checks(labs):
    lab = labs[1]
    assert lab.name == "01-2-self-attention" and lab.title.startswith("Lab 01-2")
    assert [c.name for c in lab.checks] == ["check_attention", "check_causal_attention", "check_repeat_kv"]
    assert "start_lab(" in lab.setup


def _with_meta(tmp_path: Path, points) -> Path:
    nb = _nb(LAB012)
    nb["metadata"]["llmfoundations"]["points"] = points
    path = tmp_path / LAB012.name
    path.write_text(json.dumps(nb))
    return path


def test_points_come_from_the_lab_metadata(tmp_path):
    lab = grading.load_lab(_with_meta(tmp_path, {"check_causal_attention": 2, "check_repeat_kv": 0.5}))
    assert [c.points for c in lab.checks] == [1, 2, 0.5]
    assert lab.max_points == 3.5


@pytest.mark.parametrize(
    ("points", "match"),
    [
        ({"check_nothing": 2}, "points' names checks the lab does not have"),
        ({"check_attention": -1}, "points' of check_attention must be a number >= 0"),
        ({"check_attention": True}, "points' of check_attention must be a number"),
        ([1, 2, 3], "points' must map check names"),
    ],
)
def test_wrong_points_metadata_is_refused_naming_the_lab(tmp_path, points, match):
    with pytest.raises(ValueError, match=f"01-2-self-attention.ipynb: metadata '{match}"):
        grading.load_lab(_with_meta(tmp_path, points))


def test_a_notebook_without_checks_is_not_a_lab(tmp_path):
    nb = _nb(LAB012)
    for cell in nb["cells"]:
        if "check" in cell["metadata"].get("tags", []):
            cell["metadata"]["tags"].remove("check")
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps(nb))
    with pytest.raises(ValueError, match="x.ipynb: no cell tagged 'check'"):
        grading.load_lab(path)


@pytest.mark.parametrize(
    ("name", "title", "expected"),
    [
        ("01-2-self-attention.ipynb", None, "01-2-self-attention"),
        ("01-2-self-attention (1).ipynb", None, "01-2-self-attention"),
        ("Copy of 01-2-self-attention.ipynb", None, "01-2-self-attention"),
        ("00-check-your-setup-ana.ipynb", None, "00-check-your-setup"),
        ("homework.ipynb", "Lab 00 · Check your set-up", "00-check-your-setup"),
        ("homework.ipynb", None, None),
        ("01-3-positional-encodings.ipynb", None, None),
    ],
)
def test_files_are_matched_to_labs_by_name(labs, name, title, expected):
    lab = grading.match_lab(name, labs, title=title)
    assert (lab.name if lab else None) == expected


# ---------------------------------------------------------------------------- planning


def _student(path: Path = LAB012) -> dict:
    return course.student_version(_nb(path))


def test_the_plan_runs_the_exercise_section_with_the_labs_checks(labs):
    lab = labs[1]
    nb = _student()
    plan = grading.plan_cells(lab, nb)
    assert [c.is_check for c in plan.cells] == [False, True, False, True, False, True]
    assert [c.group for c in plan.cells] == [0, 0, 1, 1, 2, 2]
    assert [c.source for c in plan.cells if c.is_check] == [c.source for c in lab.checks]
    assert "raise NotImplementedError()" in plan.cells[0].source
    assert plan.notes == []


def test_an_edited_check_is_replaced_and_a_deleted_one_appended(labs):
    lab = labs[1]
    nb = _student()
    checks = [i for i, c in enumerate(nb["cells"]) if "check" in c["metadata"].get("tags", [])]
    nb["cells"][checks[0]]["source"] = "print('all good')"  # edited
    del nb["cells"][checks[1]]  # deleted
    nb["cells"].append({"cell_type": "code", "metadata": {}, "source": "print('scratch')",
                        "outputs": [], "execution_count": None})  # after the last check
    plan = grading.plan_cells(lab, nb)
    assert [c.source for c in plan.cells if c.is_check] == [
        lab.checks[0].source, lab.checks[2].source, lab.checks[1].source]
    assert plan.cells[-2].source == "print('scratch')"  # runs before the appended check
    assert any("exercise 1 was edited" in n for n in plan.notes)
    assert any("exercise 2 was missing" in n for n in plan.notes)


def test_a_check_without_its_tag_is_found_by_its_source(labs):
    nb = _student()
    for cell in nb["cells"]:
        cell["metadata"].pop("tags", None)
    plan = grading.plan_cells(labs[1], nb)
    assert sum(c.is_check for c in plan.cells) == 3 and plan.notes == []


# ----------------------------------------------------------------------------- scoring


def _score(ran: list[_Ran]) -> tuple[str, str]:
    check = grading.Check(1, "check_x", "checks.check_x(x)", 1.0)
    cells = [_Cell("def x(): ...", 0, False), _Cell(check.source, 0, True)]
    return grading._score(check, cells, ran, timeout=30)


@pytest.mark.parametrize(
    ("ran", "status", "message"),
    [
        ([_Ran(True), _Ran(True)], "passed", ""),
        ([_Ran(True), _Ran(True, ("AssertionError", "x, case 2 of 5: values differ\nHint: h"))],
         "failed", "AssertionError: x, case 2 of 5"),
        ([_Ran(True), _Ran(True, ("NotImplementedError", "x: not attempted yet: replace ..."))],
         "not attempted", "x: not attempted yet"),
        ([_Ran(True), _Ran(True, ("NotImplementedError", ""))], "not attempted", "not attempted yet"),
        # a blank at the top of a solution cell: the check then fails with a NameError
        ([_Ran(True, ("NotImplementedError", "")), _Ran(True, ("NameError", "name 'x' is not defined"))],
         "not attempted", "not attempted yet"),
        ([_Ran(True, ("SyntaxError", "invalid syntax")), _Ran(True, ("NameError", "name 'x'"))],
         "failed", "your code cell raised SyntaxError: invalid syntax; then the check: NameError"),
        ([_Ran(crashed=True), _Ran(True, ("NameError", "x"))], "kernel crashed", "kernel died while running your code"),
        # a name from the lab's body (not run when grading): say so first, then the error
        ([_Ran(True, ("NameError", "name 'math' is not defined")), _Ran(True, ("AssertionError", "y"))],
         "failed", "`math` is not defined when only the set-up cell and the Exercises section run"),
        ([_Ran(True), _Ran(True, ("NameError", "name 'toy_cache' is not defined"))],
         "failed", "`toy_cache` is not defined when only the set-up cell"),
        # the solution cell failed first: its own error is the news, not the check's NameError
        ([_Ran(True, ("SyntaxError", "invalid syntax")), _Ran(True, ("NameError", "name 'x' is not defined"))],
         "failed", "your code cell raised SyntaxError"),
        ([_Ran(True), _Ran(crashed=True)], "kernel crashed",
         "while running the check (which calls your function) for exercise 1"),
        ([_Ran(True), _Ran(timed_out=True)], "timed out", "time limit of 30 s"),
        ([_Ran(True), _Ran()], "not run", "not run"),
    ],
)
def test_a_check_is_scored_from_what_became_of_its_cells(ran, status, message):
    got_status, got_message = _score(ran)
    assert got_status == status
    assert message in got_message


def test_the_kernel_gets_the_cpu_and_offline_settings(monkeypatch):
    monkeypatch.setenv("LLMF_SEED", "3")
    env = grading.kernel_env()
    assert env["LLMF_DEVICE"] == "cpu" and env["HF_HUB_OFFLINE"] == "1" and env["PIP_NO_INDEX"] == "1"
    assert "LLMF_SEED" not in env


# -------------------------------------------------- a kernel that dies at start (real kernels)


@pytest.mark.slow
def test_a_kernel_that_dies_at_start_is_started_again(tmp_path, kernels_die_at_start):
    counter = kernels_die_at_start(grading.START_TRIES - 1)
    ran = grading.run_cells(["x = 2", "assert x == 2", "raise ValueError('v')"], 60, tmp_path, grading.kernel_env())
    assert counter.read_text() == "0"  # both deaths happened
    assert [(r.ran, r.error, r.crashed, r.timed_out) for r in ran] == [
        (True, None, False, False), (True, None, False, False), (True, ("ValueError", "v"), False, False)]


@pytest.mark.slow
def test_a_kernel_that_never_starts_is_not_the_students_fault(tmp_path, kernels_die_at_start, labs):
    kernels_die_at_start(grading.START_TRIES)
    folder = tmp_path / "subs" / "ben"
    folder.mkdir(parents=True)
    (folder / LAB00.name).write_text(json.dumps(_student(LAB00)), encoding="utf-8")
    rows, _ = grading.grade_notebook("ben", folder / LAB00.name, labs, timeout=60)
    assert [r.status for r in rows] == ["not run"]
    assert f"died at start {grading.START_TRIES} times" in rows[0].message
    assert "grade this notebook again" in rows[0].message


# --------------------------------------------------------------- rows without a kernel


def test_files_that_cannot_be_graded_get_clear_rows(tmp_path, labs):
    folder = tmp_path / "subs"
    (folder / "zoe").mkdir(parents=True)
    (folder / "zoe" / "01-2-self-attention.ipynb").write_text("{not json")
    (folder / "zoe" / "essay.pdf").write_bytes(b"%PDF")
    other = _nb(LAB012)
    other["metadata"].pop("llmfoundations")
    (folder / "zoe" / "homework.ipynb").write_text(json.dumps(other))
    (folder / "zoe" / ".ipynb_checkpoints").mkdir()
    (folder / "zoe" / ".ipynb_checkpoints" / "x.ipynb").write_text("{}")
    (folder / "loose.ipynb").write_text("{}")
    subs = grading.grade_submissions(folder, labs, timeout=5)
    rows = {(r.file, r.exercise): r for s in subs for r in s.rows}
    assert {r.status for (f, _), r in rows.items() if f == "01-2-self-attention.ipynb"} == {"unreadable"}
    assert rows[("01-2-self-attention.ipynb", 3)].max_points == 1
    assert "could not read the notebook: " in rows[("01-2-self-attention.ipynb", 1)].message
    assert rows[("essay.pdf", "")].status == "not a notebook"
    assert rows[("homework.ipynb", "")].status == "not a known lab"
    assert rows[("loose.ipynb", "")].status == "not in a student folder"
    assert ("x.ipynb", "") not in rows  # checkpoints are not submissions
    assert len(subs) == 4


def test_a_student_who_handed_in_nothing_gets_missing_rows(tmp_path, labs):
    (tmp_path / "zed").mkdir()
    subs = grading.grade_submissions(tmp_path, labs, assigned=["01-2-self-attention"])
    assert [(r.student, r.lab, r.status, r.max_points) for s in subs for r in s.rows] == [
        ("zed", "01-2-self-attention", "missing", 1.0)] * 3
    with pytest.raises(ValueError, match="assigned names labs that do not exist: \\['nope'\\]"):
        grading.grade_submissions(tmp_path, labs, assigned=["nope"])


def test_submissions_must_be_a_folder(tmp_path, labs):
    with pytest.raises(ValueError, match="submissions must be a folder"):
        grading.grade_submissions(tmp_path / "nope", labs)


@pytest.mark.parametrize(("kwargs", "match"), [({"timeout": 0}, "timeout"), ({"jobs": 0}, "jobs")])
def test_bad_options_are_refused_by_name(tmp_path, labs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        grading.grade_submissions(tmp_path, labs, **kwargs)


def test_the_command_refuses_bad_arguments_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):
        course.main(["grade", str(tmp_path / "nope"), "--out", str(tmp_path / "g.csv")])
    assert "submissions must be a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        course.main(["grade", str(tmp_path), "--labs", "09-9", "--out", str(tmp_path / "g.csv")])
    assert "--labs: '09-9' is not a lab" in capsys.readouterr().err


def test_labs_are_named_by_number_or_name(labs):
    assert course.resolve_labs(labs, ["00", "01-2-self-attention", "labs/01-2-self-attention.ipynb"]) == [
        "00-check-your-setup", "01-2-self-attention", "01-2-self-attention"]
    with pytest.raises(ValueError, match="--labs: '09-9' is not a lab"):
        course.resolve_labs(labs, ["09-9"])


# ---------------------------------------------------------------------------- reports


def _sub(student, lab, file, statuses, notes=(), message=None):
    rows = [grading.Row(student, lab, file, i, f"check_{i}", s, float(s == "passed"), 1.0,
                        "" if s == "passed" else message or f"AssertionError: case {i}\nHint: try again")
            for i, s in enumerate(statuses, start=1)]
    return grading.Submission(student, Path(file), rows, list(notes))


def test_the_reports_total_the_best_file_per_lab(tmp_path, labs):
    subs = [
        _sub("ana", "01-2-self-attention", "01-2-self-attention.ipynb", ["passed", "failed", "passed"]),
        _sub("ana", "01-2-self-attention", "Copy of 01-2-self-attention.ipynb", ["passed", "failed", "failed"]),
        _sub("ana", "00-check-your-setup", "00-check-your-setup.ipynb", ["passed"]),
        _sub("bo", "01-2-self-attention", "01-2-self-attention.ipynb", ["not attempted"] * 3, ["a note"]),
        _sub("bo", "00-check-your-setup", "", ["missing"]),
        _sub("cy", "01-2-self-attention", "01-2-self-attention.ipynb", ["unreadable"] * 3,
             message="could not read the notebook"),
    ]
    grades = grading.write_grades(subs, tmp_path / "grades.csv")
    rows = list(csv.DictReader(grades.open()))
    assert len(rows) == 14 and list(rows[0]) == list(grading.CSV_COLUMNS)
    assert "AssertionError: case 3 Hint: try again" in [r["message"] for r in rows]  # one line
    summary = list(csv.reader(grading.write_summary(subs, tmp_path / "s.csv").open()))
    assert summary[0] == ["student", "00-check-your-setup", "01-2-self-attention", "total", "max_points", "percent"]
    assert summary[1] == ["(max)", "1", "3", "", "4", ""]
    assert summary[2] == ["ana", "1", "2", "3", "4", "75.0"]
    assert summary[3] == ["bo", "0", "0", "0", "4", "0.0"]
    [ana, bo, cy] = grading.write_feedback(subs, tmp_path / "feedback", labs)
    text = bo.read_text()
    assert "**Total: 0 / 4 points**" in text and "- note: a note" in text
    assert "○ Exercise 1 (`check_1`): **not attempted**" in text
    assert "### Exercise 2 (`check_2`): not attempted\n\n```text\nAssertionError: case 2\nHint: try again\n```" in text
    assert "## Lab 01-2 · Self-attention by hand" in text
    assert "**Total: 3 / 4 points**" in ana.read_text()
    assert cy.read_text().count("could not read the notebook") == 1  # said once, not per check


# ------------------------------------------------------ real kernels, real submissions


def _cells(nb: dict) -> list[dict]:
    return [nb["cells"][i] for i in course.exercise_cell_indices(nb) if nb["cells"][i]["cell_type"] == "code"]


def _solution_cells(nb: dict) -> list[dict]:
    return [c for c in _cells(nb) if "check" not in c["metadata"].get("tags", [])]


def _set(cell: dict, source: str) -> None:
    cell["source"] = source


def _correct(path: Path) -> dict:
    """The lab with its solutions (the student version's blanks filled in), outputs cleared."""
    nb = copy.deepcopy(_nb(path))
    blank = course.student_version(nb)
    for full, empty in zip(nb["cells"], blank["cells"], strict=True):
        empty["source"] = full["source"]
    return blank


ATTENTION_HEAD = "import math\n\nimport torch\n\n\ndef attention(q, k, v):\n"


def _write(folder: Path, student: str, name: str, nb: dict | str) -> None:
    (folder / student).mkdir(parents=True, exist_ok=True)
    (folder / student / name).write_text(nb if isinstance(nb, str) else json.dumps(nb), encoding="utf-8")


def make_submissions(folder: Path) -> None:
    """Five students: correct, blank, partly wrong, crashing, looping (plus odd files)."""
    n00, n12 = LAB00.name, LAB012.name
    _write(folder, "ana", n00, _correct(LAB00))  # correct
    _write(folder, "ana", n12, _correct(LAB012))
    _write(folder, "ben", n00, _student(LAB00))  # blank
    _write(folder, "ben", n12, _student(LAB012))

    wrong = _correct(LAB012)  # partly wrong; no lab 00 handed in
    ex1, ex2, _ = _solution_cells(wrong)
    _set(ex1, ATTENTION_HEAD + "    return torch.nn.functional.scaled_dot_product_attention(q, k, v)\n")
    _set(ex2, "def causal_attention(q, k, v):  # forgot the mask\n"
         "    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v\n")
    _write(folder, "cy", "01-2-self-attention (1).ipynb", wrong)

    crash = _correct(LAB012)  # exercise 2 kills the kernel
    ex2 = _solution_cells(crash)[1]
    _set(ex2, "import os\nos._exit(1)\n" + "".join(ex2["source"]))
    _write(folder, "dee", n12, crash)
    _write(folder, "dee", n00, "{not json")  # unreadable
    _write(folder, "dee", "notes.txt", "I had fun")

    loop = _correct(LAB012)  # exercise 3 never returns
    _set(_solution_cells(loop)[2], "def repeat_kv(k, n_rep):\n    while True:\n        pass\n")
    _write(folder, "eve", n12, loop)
    other = _correct(LAB00)
    other["metadata"].pop("llmfoundations")
    _write(folder, "eve", "homework.ipynb", other)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade the generated submissions through the command line (2 jobs, 120 s limit).
    CI twice graded a blank notebook "timed out": first read as a slow machine (the limit
    was 60 s), then found to be a kernel dying at start in a port race, which rows read as
    timed out (see the tests above); such a kernel is now started again."""
    folder = tmp_path_factory.mktemp("submissions")
    make_submissions(folder)
    out = tmp_path_factory.mktemp("out") / "grades.csv"
    import os

    here = os.getcwd()
    os.chdir(ROOT)
    try:
        course.main(["grade", str(folder), "--out", str(out), "--jobs", "2", "--timeout", "120",
                     "--labs", "00", "01-2"])
    finally:
        os.chdir(here)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    return {
        "rows": rows,
        "by": {(r["student"], r["lab"], r["file"], r["exercise"]): r for r in rows},
        "summary": list(csv.reader(grading.summary_path(out).open(encoding="utf-8"))),
        "feedback": {p.stem: p.read_text(encoding="utf-8") for p in (out.parent / "feedback").glob("*.md")},
    }


def _statuses(graded, student: str, lab: str, file: str) -> list[str]:
    rows = [r for r in graded["rows"] if (r["student"], r["lab"], r["file"]) == (student, lab, file)]
    return [r["status"] for r in sorted(rows, key=lambda r: int(r["exercise"]))]


L00, L12 = "00-check-your-setup", "01-2-self-attention"


@pytest.mark.slow
def test_a_correct_submission_gets_every_point(graded):
    assert _statuses(graded, "ana", L00, LAB00.name) == ["passed"]
    assert _statuses(graded, "ana", L12, LAB012.name) == ["passed"] * 3
    assert graded["summary"][2] == ["ana", "1", "3", "4", "4", "100.0"]


@pytest.mark.slow
def test_a_blank_submission_is_not_attempted(graded):
    assert _statuses(graded, "ben", L12, LAB012.name) == ["not attempted"] * 3
    assert _statuses(graded, "ben", L00, LAB00.name) == ["not attempted"]
    message = graded["by"][("ben", L12, LAB012.name, "2")]["message"]
    assert message.startswith("causal_attention: not attempted yet: replace `raise NotImplementedError()`")
    assert graded["summary"][3][-3:] == ["0", "4", "0.0"]


@pytest.mark.slow
def test_a_partly_wrong_submission_says_what_is_wrong(graded):
    file = "01-2-self-attention (1).ipynb"
    assert _statuses(graded, "cy", L12, file) == ["failed", "failed", "passed"]
    assert "calls scaled_dot_product_attention, which this exercise asks you not to use" in (
        graded["by"][("cy", L12, file, "1")]["message"])
    assert "Hint: there is no mask" in graded["by"][("cy", L12, file, "2")]["message"]
    assert _statuses(graded, "cy", L00, "") == ["missing"]
    assert "Hint: there is no mask" in graded["feedback"]["cy"]


@pytest.mark.slow
def test_a_crash_loses_only_its_own_exercise(graded):
    assert _statuses(graded, "dee", L12, LAB012.name) == ["passed", "kernel crashed", "passed"]
    assert "kernel died while running your code for exercise 2" in graded["by"][("dee", L12, LAB012.name, "2")]["message"]
    assert _statuses(graded, "dee", L00, LAB00.name) == ["unreadable"]
    assert graded["by"][("dee", "", "notes.txt", "")]["status"] == "not a notebook"


@pytest.mark.slow
def test_an_endless_loop_hits_the_time_limit(graded):
    assert _statuses(graded, "eve", L12, LAB012.name) == ["passed", "passed", "timed out"]
    assert "time limit of 120 s" in graded["by"][("eve", L12, LAB012.name, "3")]["message"]
    assert graded["by"][("eve", "", "homework.ipynb", "")]["status"] == "not a known lab"
    assert _statuses(graded, "eve", L00, "") == ["missing"]


@pytest.mark.slow
def test_no_row_is_lost(graded):
    per_student = {s: sum(1 for r in graded["rows"] if r["student"] == s) for s in ("ana", "ben", "cy", "dee", "eve")}
    assert per_student == {"ana": 4, "ben": 4, "cy": 4, "dee": 5, "eve": 5}
    assert sorted(graded["feedback"]) == ["ana", "ben", "cy", "dee", "eve"]


def test_the_name_error_note_comes_first_and_only_for_a_first_name_error():
    _, message = _score([_Ran(True, ("NameError", "name 'math' is not defined")), _Ran(True, ("NameError", "y"))])
    assert message.startswith("`math` is not defined")  # first: a CSV row is cut at 600 characters
    _, message = _score([_Ran(True, ("SyntaxError", "bad")), _Ran(True, ("NameError", "name 'x' is not defined"))])
    assert message.startswith("your code cell raised SyntaxError")


def test_a_long_message_is_cut_before_its_hint():
    text = "AssertionError: x, case 1 of 3: expected " + "1, " * 400 + "\nHint: chain the parent's hash"
    line = grading._one_line(text)
    assert len(line) == 600 and line.endswith("… Hint: chain the parent's hash")
    assert grading._one_line("a " * 400).endswith("…") and len(grading._one_line("a " * 400)) == 600
    assert grading._one_line("short\n text") == "short text"
