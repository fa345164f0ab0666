"""Chapter 5, evaluation: reference metrics (BLEU, ROUGE), LLM judges and how far to trust
them, rubrics, and a harness that runs a system over a task's examples.

Modules: ``bleu``, ``rouge``, ``judge``, ``agreement``, ``rubric``, ``harness``.
"""
