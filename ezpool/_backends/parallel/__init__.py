"""The parallel mode: worker processes on this machine (see ``backend``)."""
