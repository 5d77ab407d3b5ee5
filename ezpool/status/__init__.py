"""``ezpool-status`` (or ``python -m ezpool.status``): the workers you can reach, and what each does.

Workers are named by URI, found through a name server (``--ns``), or asked of a
running pool that listens for workers that dial in (``--pool``, its address or
listen file). Each answers ``status`` (``ezpool._worker.activity``) only over a
connection that proved the key. ``--watch`` looks again every few seconds;
``--json`` gives one JSON document a look.

- ``ask``: asking workers, name servers and pools, at once, within ``--timeout``.
- ``show``: the table and the JSON.
- ``cli``: the command line.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
