"""Sphinx configuration of discograd's documentation.

Why Sphinx (and not MkDocs + mkdocstrings): discograd's docstrings are reStructuredText with
Google-style sections: the formulas are ``:math:`...``` roles and ``.. math::`` blocks, and the
cross-references are ``:func:``/``:class:``/``:mod:`` roles. Sphinx's autodoc + napoleon render
all of that as written, and its nitpicky mode turns every unresolved reference into a build
error; mkdocstrings would show the RST roles as literal text unless every docstring were
rewritten. The guides are Markdown (MyST), so their ``python`` blocks are easy for the test
suite to extract and run (tests/test_docs.py).

Build (strict: warnings, broken links and missing references are errors)::

    python -m sphinx -b html -W --keep-going -n -E docs site
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))

import discograd  # noqa: E402

project = "discograd"
author = "discograd developers"
copyright = "discograd developers, MIT licence"
release = discograd.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "discograd_sphinx",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "figures/README*", "**/.ipynb_checkpoints"]

# Strictness. Run with -W -n: every warning, unresolved cross-reference and missing page or
# image fails the build. References to other libraries' objects (torch.Tensor, ...) are
# recognised by importing them and left as plain text (docs/_ext/discograd_sphinx.py): there is
# no network to fetch their inventories for intersphinx.
nitpicky = True

# Maths: MathJax 3 served from the site itself (docs/_ext/discograd_sphinx.py copies it from the
# sphinx-mathjax-offline package); a relative path is taken relative to _static/.
mathjax_path = "mathjax/tex-chtml.js"
mathjax3_config = {
    "tex": {"macros": {"E": r"\mathbb{E}"}},
    # No MathJax menu fetches (e.g. of the speech engine) unless a reader asks for them.
    "options": {"enableMenu": True},
}

# Docstrings: Google-style sections (Args:, Returns:, Raises:) around reStructuredText.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
napoleon_use_ivar = True  # "Attributes:" as fields: dataclass fields are documented once
autodoc_inherit_docstrings = False  # torch's docstrings (nn.Module.forward, ...) are not ours
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
# Optional dependencies that may be missing where the docs are built: stand-ins let autodoc
# import the modules that need them (the real packages are used when installed).
autodoc_mock_imports = [m for m in ("triton", "pyro") if importlib.util.find_spec(m) is None]
add_module_names = False
python_display_short_literal_types = True

# Markdown pages.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
suppress_warnings: list = []

html_theme = "furo"
html_title = f"discograd {release}"
html_favicon = "_static/favicon.svg"
html_static_path = ["_static"]
html_css_files = ["discograd.css"]
html_show_sourcelink = False
html_theme_options = {
    "navigation_with_keys": True,
}
templates_path: list = []
