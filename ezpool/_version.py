"""The one place EzPool's version is written (a leaf: anything may import it; pyproject.toml reads it)."""

__version__ = "0.1.0"
