"""pytest set-up for the labs under nbval (``pytest --nbval labs/*.ipynb``, CI's lab stage).

A kernel that dies before it replies is started again, up to ``START_TRIES`` times, instead
of failing its whole notebook: two kernels started at once (``-n 2``) can race for a TCP
port that jupyter_client picked but the kernel had not bound yet ("Address already in
use"). nbval 0.11 starts each notebook's kernel once; the course's grader retries the
same way, with the same number of tries.
"""

from __future__ import annotations

import importlib.util

from llmfoundations.grading import retry_kernel_start

if importlib.util.find_spec("nbval") is not None:  # plain pytest without nbval: nothing to patch
    import nbval.kernel

    _start_once = nbval.kernel.start_new_kernel  # shuts a kernel that died at start down itself

    def _start_with_retries(*args, **kwargs):
        return retry_kernel_start(lambda: _start_once(*args, **kwargs), "nbval")

    nbval.kernel.start_new_kernel = _start_with_retries
