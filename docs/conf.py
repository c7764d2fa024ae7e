"""Sphinx configuration of the probprec documentation site.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (the ``docs`` extra installs what it needs).
The build needs no network: there is no intersphinx, and MathJax is loaded by the reader's browser.
Generated sources (the API pages, the examples gallery) go to ``docs/_generated/``, which git ignores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import probprec

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")

project = "probprec"
author = "the probprec authors"
copyright = "the probprec authors, MIT licence"
release = version = probprec.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
    "myst_parser",
    "probprec_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "_scripts", "**/README.txt"]
templates_path: list[str] = []

# Every reference to a probprec object must resolve; names of other libraries (torch, numpy, the standard
# library), which the site does not document, are left as plain text (no intersphinx: the build is offline).
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!probprec\b).*"),
                        (r"py:.*", r"probprec(\.\w+)*\._.*")]  # private modules and names have no entries
suppress_warnings = ["config.cache"]  # sphinx-gallery's configuration holds functions; Sphinx cannot cache it

# --- API pages -------------------------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_preserve_defaults = True
autoclass_content = "class"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
add_module_names = False
python_display_short_literal_types = True
toc_object_entries_show_parents = "hide"

# --- Markdown pages --------------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# --- the examples: executed at every build, each asserts that its loss went down -------------------------------
sphinx_gallery_conf = {
    "examples_dirs": ["../examples/gallery"],
    "gallery_dirs": ["_generated/gallery"],
    "filename_pattern": r"\.py$",  # run every example, not only plot_*.py
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "write_computation_times": False,
    "show_memory": False,
    "show_signature": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "capture_repr": (),
    "reset_modules": ("matplotlib",),
}

# --- the figure of the method page (matplotlib's plot directive, drawn at build time) ---------------------------
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 120)]
plot_rcparams = {"figure.dpi": 120}

# --- HTML ------------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"probprec {release}"
html_static_path = ["_static"]
html_css_files = ["probprec.css"]
html_show_sourcelink = False
html_last_updated_fmt = None
