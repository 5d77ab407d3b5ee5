"""EzPool's internals shared by every mode: nothing here is public API.

What the calling process does with a call, whatever its mode, and what every
process needs to read the messages of another. ``ezpool._worker`` holds what runs
inside a worker process; ``ezpool._backends`` the three ways of running tasks.
"""
