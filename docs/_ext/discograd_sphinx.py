"""Sphinx helpers for discograd's documentation (a local extension, loaded by ``conf.py``).

- **Offline maths.** MathJax 3 is served from the built site itself: the files vendored by the
  ``sphinx-mathjax-offline`` pip package are copied into ``_static/mathjax`` after the build
  (only the CHTML bundle and the components it loads on demand), so no page asks a CDN.
- **Re-exported names.** ``:func:`discograd.gumbel_softmax``` and other public aliases are
  resolved to the object's documented home (``discograd.ops.gumbel_softmax``) by importing the
  target and following ``__module__``/``__qualname__`` (see :func:`resolve_alias`); a target
  that cannot be imported stays a warning, which the strict build turns into an error.
- ``.. estimator-table::`` tabulates the registered estimators (name, class, distributions,
  bias, cost, compilable) from the registry itself.
- ``.. preset-table::`` lists the experiments' named settings (the paper's) with their
  descriptions, from ``discograd.experiments.presets``.
- Shapes such as ``(S, *out_shape)`` in plain docstring text are escaped, so that the ``*``
  is not read as the start of an emphasis.
- ``.. figure-gallery::`` shows every PNG in ``docs/figures/`` not already shown on the page.
- ``.. cli-help:: COMMAND`` prints ``discograd COMMAND --help`` from the real parser, and
  ``.. cli-reference::`` documents every command of ``discograd.cli.COMMANDS`` (help and
  module), so the command-line reference cannot drift from the code.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import shutil
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, List, Optional

from docutils import nodes
from docutils.parsers.rst import Parser as RSTParser
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective, new_document

logger = logging.getLogger(__name__)

# What of the vendored MathJax the site needs: the CHTML bundle named by ``mathjax_path``, and
# the directories it loads fonts and optional components (menu, accessibility) from at run time.
MATHJAX_FILES = ("tex-chtml.js",)
MATHJAX_DIRS = ("a11y", "adaptors", "input", "output", "sre", "ui")


def mathjax_source() -> Path:
    """The MathJax 3 directory vendored by the ``sphinx-mathjax-offline`` package."""
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the docs serve MathJax locally from the sphinx-mathjax-offline package, which is "
            "not installed: pip install -e '.[docs]'"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax"
    if not (root / MATHJAX_FILES[0]).is_file():
        raise RuntimeError(f"no {MATHJAX_FILES[0]} in {root}")
    return root


def copy_mathjax(app: Sphinx, exc: Optional[BaseException]) -> None:
    if exc is not None or app.builder.format != "html":
        return
    src = mathjax_source()
    dst = Path(app.outdir) / "_static" / "mathjax"
    dst.mkdir(parents=True, exist_ok=True)
    for name in MATHJAX_FILES:
        shutil.copy2(src / name, dst / name)
    for name in MATHJAX_DIRS:
        shutil.copytree(src / name, dst / name, dirs_exist_ok=True)


def check_mathjax(app: Sphinx) -> None:
    # Fail early (before reading any page) rather than produce a site whose maths is raw TeX.
    if app.builder.format == "html":
        mathjax_source()
    path = app.config.mathjax_path
    if "://" in path or path.startswith("//"):
        raise RuntimeError(f"mathjax_path must be local (no CDN), got {path!r}")


def _import_target(target: str) -> Any:
    """The object a dotted name refers to (a module, or an attribute path inside one)."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(target)


def _canonical_name(obj: Any) -> Optional[str]:
    if isinstance(obj, type(importlib)):
        return obj.__name__
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module and qualname and "<" not in qualname:
        return f"{module}.{qualname}"
    return None


def _context_modules(module: Optional[str], cls: Optional[str]) -> List[str]:
    """Where a bare name in ``module`` (and ``cls``) may come from: the module itself, then the
    modules of the base classes (an inherited signature names types from those)."""
    if not module:
        return []
    names = [module]
    try:
        owners = [_import_target(f"{module}.{cls}")] if cls else []
        if not owners:  # a class's own signature is read before its body sets py:class
            mod = importlib.import_module(module)
            owners = [v for v in vars(mod).values() if getattr(v, "__module__", "") == module]
    except Exception:  # noqa: BLE001 (no context to add)
        return names
    for owner in owners:
        for base in getattr(owner, "__mro__", ())[1:]:
            if base.__module__ not in names:
                names.append(base.__module__)
    return names


def resolve_alias(app: Sphinx, env: Any, node: Any, contnode: Any) -> Optional[nodes.Node]:
    """Resolve a Python reference that the Python domain could not, by importing its target.

    - A re-exported name (``discograd.gumbel_softmax``) links to the object's documented home
      (``discograd.ops.gumbel_softmax``), found from ``__module__`` and ``__qualname__``.
    - A discograd object without an entry of its own (a module constant, a private helper)
      links to the nearest documented parent: its class or module.
    - Another library's object (``torch.Tensor``, ``nn.Module.load_state_dict``) stays plain
      text: its documentation is not part of this site.

    A target that cannot be imported is left unresolved, so the strict build reports it.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    module, cls = node.get("py:module"), node.get("py:class")
    candidates = []
    if module and cls:
        candidates.append(f"{module}.{cls}.{target}")
    candidates += [f"{name}.{target}" for name in _context_modules(module, cls)]
    candidates.append(target)
    domain = env.get_domain("py")
    for candidate in candidates:
        try:
            obj = _import_target(candidate)
        except Exception:  # noqa: BLE001 (an unimportable target is simply not this one)
            continue
        name = _canonical_name(obj) or candidate
        if name.split(".")[0] != "discograd":
            return contnode
        while name:
            if name in domain.objects:
                return domain.resolve_xref(
                    env, node["refdoc"], app.builder, "obj", name, node, contnode
                )
            name = name.rpartition(".")[0]
    return None


# Defaults whose repr is not Python (a dataclass's ``<factory>``, ``<Grammar object at 0x..>``)
# break the parsing of the whole signature; show them as ``...``.
_OPAQUE_DEFAULT = re.compile(r"<[^<>]*>")


def tidy_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: Optional[str],
    return_annotation: Optional[str],
):
    if signature and "<" in signature:
        signature = _OPAQUE_DEFAULT.sub("...", signature)
    return signature, return_annotation


def parse_rst(directive: SphinxDirective, lines: List[str], source: str) -> List[nodes.Node]:
    """Parse generated reStructuredText into nodes, also from a Markdown (MyST) page.

    ``state.nested_parse`` would use the page's own parser (Markdown on a MyST page), so the
    text is parsed as its own reStructuredText document sharing the page's settings (and so
    Sphinx's environment: roles, autodoc and references work as in an ``.rst`` page).
    """
    document = new_document(source, directive.state.document.settings)
    RSTParser().parse("\n".join(lines) + "\n", document)
    return list(document.children)


class FigureGallery(SphinxDirective):
    """Every ``*.png`` of a folder (relative to the page) that the page does not show yet."""

    required_arguments = 1
    option_spec = {"width": directives.unchanged}

    def run(self) -> List[nodes.Node]:
        page_dir = Path(self.env.doc2path(self.env.docname)).parent
        folder = (page_dir / self.arguments[0]).resolve()
        pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if not pngs:
            logger.warning(
                "figure-gallery: no PNG figures in %s", folder, location=self.get_location()
            )
            return []
        source = Path(self.env.doc2path(self.env.docname)).read_text(encoding="utf-8")
        prefix = self.arguments[0].rstrip("/")
        result: List[nodes.Node] = []
        for png in pngs:
            rel = f"{prefix}/{png.name}"
            if rel in source:
                continue  # shown with its own text elsewhere on the page
            figure = nodes.figure()
            figure += nodes.image(uri=rel, alt=png.stem, width=self.options.get("width", "100%"))
            figure += nodes.caption(text=png.name)
            result.append(figure)
        return result


class CliHelp(SphinxDirective):
    """The ``--help`` text of a ``discograd`` subcommand (or of ``discograd`` itself)."""

    optional_arguments = 1

    def run(self) -> List[nodes.Node]:
        from discograd.cli import build_parser

        argv = ([self.arguments[0]] if self.arguments else []) + ["--help"]
        out = io.StringIO()
        # argparse wraps to the terminal's width: fix it, so the page does not depend on it.
        columns = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "88"
        try:
            with redirect_stdout(out):
                build_parser().parse_args(argv)
        except SystemExit:
            pass
        finally:
            if columns is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = columns
        text = out.getvalue().replace("usage: __main__.py", "usage: discograd")
        if not text:
            logger.warning("cli-help: no help for %s", argv, location=self.get_location())
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


class CliReference(SphinxDirective):
    """For every command of ``discograd.cli.COMMANDS``: a section with its help and its module."""

    def run(self) -> List[nodes.Node]:
        from discograd.cli import COMMANDS

        lines: List[str] = []
        for name in COMMANDS:
            title = f"discograd {name}"
            lines += [title, "-" * len(title), "", f".. cli-help:: {name}", ""]
            lines += [f".. automodule:: discograd.cli.{name}", ""]
        return parse_rst(self, lines, "cli-reference")


# Shapes in docstrings are written for ``help()`` readers, as ``(S, *out_shape)``; in
# reStructuredText that lone ``*`` would open an emphasis. Escape it outside literals and roles.
_SHAPE_STAR = re.compile(r"(?:(?<=[(\[])|(?<=, ))\*(?=[A-Za-z_])(?![\w.]*\*)")
_LITERAL = re.compile(r"(``.+?``|:[\w:]+:`[^`]*`|`[^`]*`)")


def escape_shape_stars(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: List[str]):
    for i, line in enumerate(lines):
        if "*" not in line:
            continue
        parts = _LITERAL.split(line)
        # split() with one group: even indices are plain text, odd ones the literals/roles.
        parts[::2] = [_SHAPE_STAR.sub(r"\\*", part) for part in parts[::2]]
        lines[i] = "".join(parts)


class EstimatorTable(SphinxDirective):
    """A table of every registered estimator, read from the registry and the classes."""

    def run(self) -> List[nodes.Node]:
        import inspect

        from discograd import estimators

        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 18 18 9 12 9 34",
            "",
            "   * - name",
            "     - distributions",
            "     - unbiased",
            "     - evaluations of f",
            "     - torch.compile",
            "     - what",
        ]
        for name in estimators.available():
            cls = estimators.get(name).__class__
            # The class docstring says what it does; the module's, where it comes from.
            doc = inspect.getdoc(cls) or inspect.getdoc(inspect.getmodule(cls)) or ""
            summary = doc.split("\n\n")[0].replace("\n", " ")
            lines += [
                f"   * - :class:`{name} <{cls.__module__}.{cls.__qualname__}>`",
                f"     - {', '.join(cls.distributions)}",
                f"     - {'yes' if cls.unbiased else 'no'}",
                f"     - {cls.evaluations}",
                f"     - {'yes' if cls.compilable else 'no'}",
                f"     - {summary}",
            ]
        return parse_rst(self, lines, "estimator-table")


class PresetTable(SphinxDirective):
    """The named settings of the experiments (``discograd.experiments.presets``), per command."""

    def run(self) -> List[nodes.Node]:
        from discograd.experiments import presets

        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 30 70",
            "",
            "   * - command",
            "     - where it comes from, what differs",
        ]
        for command, described in presets.DESCRIPTIONS.items():
            for name in sorted(presets.presets_for(command)):
                text = described.get(name, "").replace("\n", " ")
                lines += [f"   * - ``discograd {command} --preset {name}``", f"     - {text}"]
        return parse_rst(self, lines, "preset-table")


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", check_mathjax)
    app.connect("build-finished", copy_mathjax)
    app.connect("missing-reference", resolve_alias)
    app.connect("autodoc-process-docstring", escape_shape_stars)
    app.connect("autodoc-process-signature", tidy_signature)
    app.add_directive("figure-gallery", FigureGallery)
    app.add_directive("cli-help", CliHelp)
    app.add_directive("cli-reference", CliReference)
    app.add_directive("estimator-table", EstimatorTable)
    app.add_directive("preset-table", PresetTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
