"""Sphinx extension of the probprec site: the API pages and the tables that are facts of the code.

* At ``builder-inited`` it writes one API page per public module of :mod:`probprec` (every module whose
  dotted name has no part starting with an underscore), documenting exactly the names in the module's
  ``__all__``, and two index pages (the optimizer, the harness) into ``docs/_generated/api/``. A new
  module or a new name in ``__all__`` gets its entry without anything typed here.
* The directive ``.. probprec-table:: NAME`` renders one of :data:`TABLES` (the thesis mode's fixes, the
  problems, the optimizers, the experiments), read from the registries in the code when the site is built.

``tests/test_docs.py`` builds the site and compares the rendered tables and the API inventory with the code.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform

Table = tuple[list[str], list[list[str]]]
"""A table: its header and its rows, every cell plain text (inline ``code`` marked by backquotes)."""

GENERATED = "_generated"
"""The folder under ``docs/`` that the build writes its generated sources to (ignored by git)."""

LONG_VALUE = 80
"""Constants whose repr is longer than this are documented without their value."""


# --- the API pages ------------------------------------------------------------------------------------------


def public_modules(package: str = "probprec") -> list[str]:
    """Every public module of ``package``, the package first, in the order of their dotted names."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def public_names(module: ModuleType) -> list[str]:
    """The names a module exports (its ``__all__``; none without one)."""
    return list(getattr(module, "__all__", []))


def _position(module: ModuleType, name: str, value: Any, source: str) -> tuple[int, str, int]:
    """Where ``name`` is defined: objects of this module in source order, then what it imports.

    Imported objects are ordered by their defining module and its source order (``probprec``'s page: the
    optimizer, then its variants).
    """
    defined = getattr(value, "__module__", module.__name__)
    try:
        line = inspect.getsourcelines(value)[1]
    except (OSError, TypeError):
        line = 0
    if defined == module.__name__ and line:
        return 0, "", line
    match = re.search(rf"^{re.escape(name)}\b\s*[:=]", source, re.MULTILINE)
    if match:
        return 0, "", source.count("\n", 0, match.start())
    return 1, str(defined), line


def _directive(name: str, value: Any) -> list[str]:
    """The autodoc directive (and its options) that documents one exported object."""
    if isinstance(value, type) and issubclass(value, BaseException):
        return [f".. autoexception:: {name}", "   :members:", "   :show-inheritance:"]
    if isinstance(value, type):
        return [f".. autoclass:: {name}", "   :members:", "   :show-inheritance:"]
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        return [f".. autofunction:: {name}"]
    lines = [f".. autodata:: {name}"]
    if len(repr(value)) > LONG_VALUE:
        lines.append("   :no-value:")
    return lines


def _assigns(module_name: str, name: str) -> bool:
    """Whether the module's source assigns ``name`` at the top level (where autodoc finds its docstring)."""
    try:
        source = inspect.getsource(importlib.import_module(module_name))
    except (OSError, TypeError):
        return False
    return re.search(rf"^{re.escape(name)}\b\s*[:=]", source, re.MULTILINE) is not None


def _canonical(name: str, value: Any, exporters: list[str]) -> str:
    """The module that documents an object which several public modules export under one name.

    Data are documented where they are assigned (their docstring is there); classes and functions where
    they are shortest to import (``probprec.Preconditioner``, ``probprec.bench.analysis.load_results``),
    and among equally short ones where they are defined.
    """
    if not (inspect.isclass(value) or inspect.isroutine(value)):
        assigned = [m for m in exporters if _assigns(m, name)]
        if assigned:
            return assigned[0]
    defined = getattr(value, "__module__", None)
    return min(exporters, key=lambda m: (m.count("."), m != defined, m))


def canonical_names(modules: list[str]) -> dict[str, str]:
    """``module.name`` of every exported name -> the full name under which the API documents it."""
    exporters: dict[tuple[str, int], list[str]] = {}
    values: dict[tuple[str, int], Any] = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in public_names(module):
            value = getattr(module, name)
            exporters.setdefault((name, id(value)), []).append(module_name)
            values[(name, id(value))] = value
    out = {}
    for (name, key), where in exporters.items():
        home = _canonical(name, values[(name, key)], where)
        out.update({f"{module_name}.{name}": f"{home}.{name}" for module_name in where})
    return out


def module_page(module_name: str, canonical: dict[str, str]) -> str:
    """The reStructuredText of one module's API page; names documented elsewhere get a link there."""
    module = importlib.import_module(module_name)
    try:
        source = inspect.getsource(module)
    except OSError:
        source = ""
    exported = [(name, getattr(module, name)) for name in public_names(module)]
    exported.sort(key=lambda item: _position(module, item[0], item[1], source))
    here = [(n, v) for n, v in exported if canonical[f"{module_name}.{n}"] == f"{module_name}.{n}"]
    elsewhere = [canonical[f"{module_name}.{n}"] for n, _ in exported
                 if canonical[f"{module_name}.{n}"] != f"{module_name}.{n}"]
    title = f"``{module_name}``"
    lines = [f".. _api-{module_name}:", "", title, "=" * len(title), "",
             f".. automodule:: {module_name}", "", f".. currentmodule:: {module_name}", ""]
    for name, value in here:
        lines += [*_directive(name, value), ""]
    if elsewhere:
        lines += [".. rubric:: Also exported here, documented where shown", ""]
        lines += [f"* :py:obj:`{target}`" for target in elsewhere] + [""]
    if not exported:
        lines += ["This module exports no names of its own.", ""]
    return "\n".join(lines)


def _summary(module_name: str) -> str:
    """The first line of a module's docstring, for the index tables."""
    doc = inspect.getdoc(importlib.import_module(module_name)) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ")
    return first.replace("|", "\\|")


INDEXES = {
    "library": ("The optimizer: ``probprec``", "The optimizer and its building blocks; it depends on torch alone.",
                lambda name: not name.startswith("probprec.bench")),
    "harness": ("The benchmark harness: ``probprec.bench``",
                "The harness uses the optimizer only through its public API, like any user would.",
                lambda name: name.startswith("probprec.bench")),
}
"""The API index pages: file stem -> (title, introduction, which modules it lists)."""


def index_page(title: str, introduction: str, modules: list[str]) -> str:
    """An index page: a table of the modules with their summaries, and their toctree."""
    lines = [title, "=" * len(title), "", introduction, "", ".. list-table::", "   :header-rows: 1",
             "   :widths: 30 70", "", "   * - module", "     - what it is"]
    for name in modules:
        lines += [f"   * - :ref:`{name} <api-{name}>`", f"     - {_summary(name)}"]
    root = min(modules, key=len)  # the package; the navigation names the others relative to it
    labels = [name if name == root else name[len(root) + 1:] for name in modules]
    lines += ["", ".. toctree::", "   :hidden:", "",
              *(f"   {label} <{name}>" for label, name in zip(labels, modules, strict=True)), ""]
    return "\n".join(lines)


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (so that Sphinx rebuilds only what changed)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def write_api_pages(folder: Path) -> list[str]:
    """Write every module page and the index pages into ``folder``; returns the modules documented."""
    folder.mkdir(parents=True, exist_ok=True)
    modules = public_modules()
    canonical = canonical_names(modules)
    pages = {f"{name}.rst": module_page(name, canonical) for name in modules}
    for stem, (title, introduction, keep) in INDEXES.items():
        pages[f"{stem}.rst"] = index_page(title, introduction, [m for m in modules if keep(m)])
    for stale in folder.glob("*.rst"):
        if stale.name not in pages:
            stale.unlink()
    for name, text in pages.items():
        _write_if_changed(folder / name, text)
    return modules


_CANONICAL: dict[str, str] = {}
"""``module.name`` -> the full name it is documented under, for the build in progress."""
_FOLLOW: dict[str, str] = {}
"""Documented full name of a re-exported class or function -> the module whose source viewcode shows."""


def follow_map(canonical: dict[str, str]) -> dict[str, str]:
    """Where viewcode may show the source of a re-exported class or function (and link back from it).

    viewcode links a source module back to one documenting module only, so a re-export is followed to its
    source only where that module's objects are all documented on one page (``probprec.Preconditioner``
    in ``probprec/optimizer.py``); elsewhere the re-export gets no source link rather than a wrong one.
    """
    documenters: dict[str, set[str]] = {}
    defined_in: dict[str, str] = {}
    for full in set(canonical.values()):
        module_name, name = full.rsplit(".", 1)
        value = getattr(importlib.import_module(module_name), name)
        source = value.__module__ if inspect.isclass(value) or inspect.isroutine(value) else module_name
        documenters.setdefault(source, set()).add(module_name)
        if source != module_name:
            defined_in[full] = source
    return {full: source for full, source in defined_in.items()
            if documenters[source] == {full.rsplit(".", 1)[0]}}


def _follow_imported(app: Sphinx, modname: str, attribute: str) -> str:
    return _FOLLOW.get(f"{modname}.{attribute.split('.')[0]}", modname)


def _on_builder_inited(app: Sphinx) -> None:
    modules = write_api_pages(Path(app.srcdir) / GENERATED / "api")
    _CANONICAL.clear()
    _CANONICAL.update(canonical_names(modules))
    _FOLLOW.clear()
    _FOLLOW.update(follow_map(_CANONICAL))


def _resolve_alias(app: Sphinx, env: Any, node: Any, contnode: nodes.Node) -> nodes.Node | None:
    """Resolve a reference to a name as a re-exporting module spells it to the entry of the object.

    ``probprec.bench.runner.ConfigError`` goes to ``probprec.bench.errors.ConfigError``.
    """
    target = _CANONICAL.get(node.get("reftarget", ""))
    if node.get("refdomain") != "py" or target is None or target == node["reftarget"]:
        return None
    domain = env.domains["py"]
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], target, node, contnode)


def _drop_borrowed_docstrings(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Drop docstrings that say nothing about the object.

    They are "Alias for field number N" of a named tuple's field, and the docstring of a constant's type
    (a dict's or a tuple's), which autodoc shows for a constant without a docstring of its own.
    """
    text = "\n".join(lines).strip()
    if re.fullmatch(r"Alias for field number \d+", text):
        lines.clear()
    elif what in ("data", "attribute") and text and text == (inspect.getdoc(type(obj)) or "").strip():
        lines.clear()


# --- the tables that are facts of the code -----------------------------------------------------------------


def _code(text: Any) -> str:
    return f"``{text}``"


def fixes_table() -> Table:
    """The thesis mode's fixes, each with the 2019 quirk it removes (:data:`probprec.thesis.QUIRKS`)."""
    from probprec.thesis import QUIRKS

    rows = [[_code(fix), _code(quirk), text] for quirk, (fix, text) in QUIRKS.items()]
    return ["fix", "quirk", "what the 2019 class does"], rows


def problems_table() -> Table:
    """The test problems (:data:`probprec.bench.problems.PROBLEMS`), as ``probprec list`` prints them."""
    from probprec.bench.problems import PROBLEMS

    rows = []
    for name, cls in PROBLEMS.items():
        problem = cls()
        count = problem.count_parameters(problem.model())
        rows.append([_code(name), cls.description, cls.dataset or "embedded", f"{count:,}",
                     f"{cls.batch_size}, {cls.epochs}, {cls.l2:g}", cls.metric])
    return ["problem", "description", "data", "parameters", "batch, epochs, L2", "metric"], rows


def _optimizer_kind(spec: Any) -> str:
    from probprec.bench.peers import PEERS

    packages = {peer.name: peer.package for peer in PEERS}
    if spec.name in packages:
        return f"peer ({_code(packages[spec.name])})"
    if spec.defaults.get("mode") == "thesis":
        return "ours, thesis mode"
    return "ours" if spec.second_order else "baseline"


def optimizers_table() -> Table:
    """The optimizers by name (:data:`probprec.bench.optimizers.OPTIMIZERS`)."""
    from probprec.bench.optimizers import OPTIMIZERS

    rows = []
    for name, spec in OPTIMIZERS.items():
        defaults = ", ".join(f"{key}={value!r}" for key, value in spec.defaults.items())
        rows.append([_code(name), _optimizer_kind(spec), spec.description, _code(defaults) if defaults else ""])
    return ["name", "kind", "description", "defaults"], rows


def tuned_table() -> Table:
    """The tuned learning rates: one row per problem, one column per optimizer that has any.

    The thesis-mode twins (``Thesis...``) share their variant's rates and are left out.
    """
    from probprec.bench.optimizers import OPTIMIZERS

    tuned = {name: spec.tuned_lr for name, spec in OPTIMIZERS.items()
             if spec.tuned_lr and spec.defaults.get("mode") != "thesis"}
    problems = list(dict.fromkeys(problem for rates in tuned.values() for problem in rates))
    rows = [[_code(problem), *(f"{rates[problem]:.4g}" if problem in rates else "" for rates in tuned.values())]
            for problem in problems]
    return ["problem", *tuned], rows


def experiments_table() -> Table:
    """The shipped experiments (:func:`probprec.bench.experiment.experiment_names`) at full scale."""
    from probprec.bench.experiment import experiment_names, experiment_path
    from probprec.bench.sweeps import load_sweep

    rows = []
    for name in experiment_names():
        spec = load_sweep(experiment_path(name), "full")
        problems = ", ".join(_code(p) for p in spec.problems)
        epochs = "the problems'" if spec.epochs is None else str(spec.epochs)
        rows.append([_code(name), spec.description, problems, str(len(spec.optimizers)), str(len(spec.seeds)),
                     epochs, spec.protocol])
    header = ["experiment", "what", "problems (full scale)", "optimizer entries", "seeds", "epochs", "protocol"]
    return header, rows


TABLES: dict[str, Callable[[], Table]] = {
    "fixes": fixes_table,
    "problems": problems_table,
    "optimizers": optimizers_table,
    "tuned": tuned_table,
    "experiments": experiments_table,
}
"""The generated tables by the name that ``.. probprec-table::`` takes."""


def _inline(text: str) -> Iterator[nodes.Node]:
    """Plain text with ``code`` spans as docutils nodes."""
    for index, part in enumerate(re.split(r"``(.*?)``", text)):
        if index % 2:
            yield nodes.literal(part, part)
        elif part:
            yield nodes.Text(part)


def table_node(name: str, table: Table) -> nodes.table:
    """A docutils table of header and rows, every cell a paragraph."""
    header, rows = table
    group = nodes.tgroup(cols=len(header))
    group += [nodes.colspec(colwidth=1) for _ in header]

    def row(cells: list[str]) -> nodes.row:
        out = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += nodes.paragraph("", "", *_inline(cell))
            out += entry
        return out

    head = nodes.thead()
    head += row(header)
    body = nodes.tbody()
    body += [row(cells) for cells in rows]
    group += [head, body]
    node = nodes.table(classes=["probprec-table", f"probprec-table-{name}", "colwidths-auto"])
    node += group
    return node


class TableDirective(Directive):
    """``.. probprec-table:: NAME``: one of :data:`TABLES`, generated from the code."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        """The table named by the directive's argument."""
        name = self.arguments[0]
        if name not in TABLES:
            raise self.error(f"unknown table {name!r}; known: {', '.join(TABLES)}")
        return [table_node(name, TABLES[name]())]


_COMMAND_LINE_WORDS = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*|\w+=(?:'[^']*'|\"[^\"]*\"|[^\s,;)]+))")
"""An option (``--hp``) or a ``key=value`` argument in the help text of the command-line reference."""


def _ancestors(node: nodes.Node) -> Iterator[nodes.Node]:
    while node.parent is not None:
        node = node.parent
        yield node


class CommandLineLiterals(SphinxTransform):
    """Options and ``key=value`` arguments in the command-line reference's help text become literals.

    Before the smart quotes (priority 855): they would make ``--hp`` an en dash and the quotes of
    ``betas='(0.9, 0.99)'`` typographic, which a reader cannot paste into a shell.
    """

    default_priority = 700

    def apply(self, **kwargs: Any) -> None:
        """Split the text nodes of the ``cli`` page at each option and argument."""
        if self.env.docname != "cli":
            return
        for text in list(self.document.findall(nodes.Text)):
            parent = text.parent
            if parent is None or any(isinstance(node, (nodes.literal, nodes.FixedTextElement, nodes.option))
                                     for node in _ancestors(text)):
                continue
            parts = _COMMAND_LINE_WORDS.split(text.astext())
            if len(parts) == 1:
                continue
            new = [nodes.literal(part, part) if index % 2 else nodes.Text(part)
                   for index, part in enumerate(parts) if part]
            parent.replace(text, new)


def _public_bases(app: Sphinx, name: str, obj: Any, options: Any, bases: list[type]) -> None:
    """Show a private base class (``_TwoD``) as its nearest public ancestor (``Problem``): no page has it."""
    def public(base: Any) -> Any:
        if not (isinstance(base, type) and base.__name__.startswith("_")):
            return base
        return next(c for c in base.__mro__ if not c.__name__.startswith("_"))

    bases[:] = list(dict.fromkeys(public(base) for base in bases))


def _prose_first_line(self: Any) -> tuple[str, list[str]]:
    """Napoleon's reading of an attribute's, a constant's or a property's docstring, without the type.

    Napoleon reads such a docstring's first line as ``type: description`` (Google style allows it). The
    docstrings here are prose, and a colon in their first line starts an explanation ("The current phase:
    ..."), not a type; the types come from the annotations (``napoleon_attr_annotations``).
    """
    first = self._lines.next()
    lines = [first, *self._dedent(self._consume_to_end())]
    return "", self.__class__(lines, self._config).lines()


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the generator of the API pages and the table directive."""
    app.connect("builder-inited", _on_builder_inited)
    app.connect("autodoc-process-docstring", _drop_borrowed_docstrings, priority=100)  # before napoleon
    app.connect("missing-reference", _resolve_alias)
    app.connect("viewcode-follow-imported", _follow_imported)
    app.connect("autodoc-process-bases", _public_bases)
    app.add_directive("probprec-table", TableDirective)
    app.add_transform(CommandLineLiterals)
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    GoogleDocstring._consume_inline_attribute = _prose_first_line  # type: ignore[method-assign]
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
