"""Sphinx configuration of jax_roi's documentation site.

Build: ``bash tools/build_docs.sh`` (warnings are errors). The pages are the
Markdown files of this folder (MyST); most include sections of the README
rather than repeating them, and the API reference comes from the docstrings
(autodoc + napoleon) of the installed (or PYTHONPATH's) jax_roi.
"""

from __future__ import annotations

import jax_roi

project = "jax_roi"
author = "the jax_roi authors"
copyright = "2026, the jax_roi authors"  # noqa: A001 (Sphinx's name)
release = jax_roi.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
# Pages include README sections below their own title: the README's "##" and
# "###" headings then follow the page's "#" (a level skipped is intended).
suppress_warnings = ["myst.header"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Attributes sections as fields: the layers' attributes are also dataclass members.
napoleon_use_ivar = True

html_theme = "alabaster"
html_title = f"jax_roi {release}"
