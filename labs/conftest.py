"""pytest set-up for the labs under nbval (``pytest --nbval labs/*.ipynb``, CI's lab stage).

A kernel that dies before it replies is started again, up to ``START_TRIES`` times, instead
of failing its whole notebook: two kernels started at once (``-n 2``) can race for a TCP
port that jupyter_client picked but the kernel had not bound yet ("Address already in
use"). nbval 0.11 starts each notebook's kernel once; the course's grader retries the
same way, with the same number of tries.
"""

from __future__ import annotations

import importlib.util

from llmfoundations.grading import START_TRIES, died_at_start, note_retry

if importlib.util.find_spec("nbval") is not None:  # plain pytest without nbval: nothing to patch
    import nbval.kernel

    _start_once = nbval.kernel.start_new_kernel

    def _start_with_retries(*args, **kwargs):
        for attempt in range(1, START_TRIES + 1):
            try:
                return _start_once(*args, **kwargs)
            except RuntimeError as err:  # nbval has already shut the dead kernel down
                if attempt == START_TRIES or not died_at_start(err):
                    raise
                note_retry("nbval", attempt, err)
        raise AssertionError("unreachable")

    nbval.kernel.start_new_kernel = _start_with_retries
