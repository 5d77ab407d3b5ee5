"""Sphinx configuration for EzPool's documentation."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc and the doctests import this checkout
sys.path.insert(0, str(ROOT / "docs"))  # options_table, this site's own extension

import ezpool  # noqa: E402

project = "EzPool"
author = "The EzPool developers"
copyright = "EzPool developers, Apache-2.0"
release = ezpool.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "options_table",  # docs/options_table.py: the API page's table of options
]

exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"EzPool {release}"
html_static_path = ["_static"]
html_css_files = ["ezpool.css"]

# Nitpicky builds (``-n``, as the docs session and tests/test_docs.py run them)
# flag every cross-reference that resolves to nothing. The builds are offline, so
# there is no intersphinx inventory for the standard library: its names in type
# hints are left unlinked on purpose, and only they are excused here.
nitpick_ignore_regex = [
    ("py:class", r"(collections\.abc|os|types|abc|concurrent\.futures(\._base)?)\.\w+"),
    # The option parameters of Pool's methods are typed as in ezpool.options, whose
    # aliases (and types.ModuleType, imported by name) show as written; R is the
    # value type of Results, explained on Results itself.
    ("py:class", r"ModuleType|PathText|StrPath|ProgressHook|R|Workers"),
    # Each method's options are the TypedDict group of its mode, described on Options.
    ("py:class", r"Unpack\[\w+Options\]|Unpack|\w+Options"),
    ("py:obj", r"ezpool\.results\.R"),
]

# The code uses Google-style docstrings with "Attributes:" sections. Render them
# as fields, so that they do not clash with the members autodoc documents.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Types go to the parameters a docstring describes; "Parameters: x (int)" with no
# word on what x is says nothing the signature does not.
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True, "show-inheritance": True}

# Every doctest starts from these names.
doctest_global_setup = """
from ezpool import Pool, EzPool, BaseWorker, TaskOutcome, Results
"""
