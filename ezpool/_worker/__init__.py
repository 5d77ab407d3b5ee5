"""What runs inside a worker process, of either mode: not public API.

A parallel worker (``ezpool._backends.parallel.child``) and a distributed one
(``python -m ezpool.serve``) both run chunks of tasks with ``running.run_chunk``.
"""
