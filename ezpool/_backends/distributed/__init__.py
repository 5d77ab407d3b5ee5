"""The distributed mode: a client of ``ezpool.serve`` workers (see ``backend``)."""
