"""The documentation site builds, its links resolve, and what it generates from the code matches the code.

The site is built once for this module, in a separate process, as a user would build it:
``python -m sphinx -W -b html docs OUT`` (warnings are errors: a broken reference, a module or name
autodoc cannot import, an example that fails or whose loss did not go down). The build needs the ``docs``
extra; without it the tests skip, except under CI, where the test command installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NEEDED = ("sphinx", "myst_parser", "furo", "sphinxarg", "sphinx_gallery", "lightning", "accelerate")
MISSING = [name for name in NEEDED if importlib.util.find_spec(name) is None]
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

pytestmark = pytest.mark.skipif(bool(MISSING) and not IN_CI,
                                reason=f"the docs extra is not installed (pip install -e '.[docs]'): {MISSING}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built HTML site (every example executed, also those that ran in an earlier build here)."""
    out = tmp_path_factory.mktemp("docs")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
               "-d", str(out / "doctrees"), "-D", "sphinx_gallery_conf.run_stale_examples=1",
               str(DOCS), str(out / "html")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return out / "html"


# --- links ------------------------------------------------------------------------------------------------------


class _Links(HTMLParser):
    """The link targets (href, src) and the anchors (id, name) of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.anchors: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value is None:
                continue
            if key in ("href", "src") and tag != "script":
                self.targets.append(value)
            if key in ("id", "name"):
                self.anchors.add(value)


def _parse(page: Path) -> _Links:
    links = _Links()
    links.feed(page.read_text(encoding="utf-8"))
    return links


def _is_internal(target: str) -> bool:
    parts = urlsplit(target)
    return not (parts.scheme or parts.netloc or target.startswith(("mailto:", "javascript:")))


def test_every_internal_link_and_anchor_resolves(site: Path):
    pages = {page: _parse(page) for page in site.rglob("*.html")}
    broken = []
    for page, links in pages.items():
        for target in filter(_is_internal, links.targets):
            parts = urlsplit(target)
            path = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if path.is_dir():
                path = path / "index.html"
            if not path.exists():
                broken.append(f"{page.relative_to(site)}: {target} (no such file)")
            elif parts.fragment and path.suffix == ".html" and unquote(parts.fragment) not in pages[path].anchors:
                broken.append(f"{page.relative_to(site)}: {target} (no such anchor)")
    assert len(pages) > 50
    assert not broken, "\n".join(broken)


def test_readme_is_short_starts_with_the_two_commands_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines()
    assert len(lines) <= 150
    commands = lines[lines.index("```bash") + 1:lines.index("```bash") + 3]
    assert commands == ['python -m pip install ".[bench]" && probprec benchmark',
                        'python -m pip install -e ".[test,docs]" && python -m pytest']
    assert lines.index("```bash") <= 3  # at the top
    install = commands[1].split(" && ")[0]
    assert install in (ROOT / ".ci" / "run").read_text(encoding="utf-8")  # CI runs the same test command
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    missing = [t for t in targets if _is_internal(t) and not (ROOT / urlsplit(t).path).exists()]
    assert targets and not missing


# --- the API reference ---------------------------------------------------------------------------------------


def _public_modules() -> list[str]:
    import probprec

    names = ["probprec"]
    for info in pkgutil.walk_packages(probprec.__path__, prefix="probprec."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def _inventory(site: Path) -> dict[str, dict[str, Any]]:
    from sphinx.util.inventory import InventoryFile

    with open(site / "objects.inv", "rb") as stream:
        inventory = InventoryFile.load(stream, "", lambda base, uri: uri)
    data = getattr(inventory, "data", inventory)
    return {kind: dict(entries) for kind, entries in data.items()}


def _resolve(full_name: str) -> Any:
    """The object a documented dotted name refers to (a module attribute, or an attribute of a class)."""
    parts = full_name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            value = getattr(value, part)
        return value
    raise LookupError(full_name)


def test_every_public_name_has_an_entry_in_the_api_reference(site: Path):
    """Every name in the ``__all__`` of a public module is documented: under its own full name, or its module's
    page links to the entry of the very same object (a re-export, documented once)."""
    inventory = _inventory(site)
    python = {name for kind, entries in inventory.items() if kind.startswith("py:") for name in entries}
    top_level = ("py:class", "py:exception", "py:function", "py:data")  # what a module's __all__ can hold
    by_identity: dict[int, list[str]] = {}
    for name, item in ((n, i) for kind in top_level for n, i in inventory.get(kind, {}).items()):
        if name.startswith("probprec"):
            uri = item.uri if hasattr(item, "uri") else item[2]
            by_identity.setdefault(id(_resolve(name)), []).append(uri)
    missing = []
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        assert module_name in inventory["py:module"], f"{module_name} has no API page"
        page = (site / "_generated" / "api" / f"{module_name}.html").read_text(encoding="utf-8")
        for name in getattr(module, "__all__", []):
            if f"{module_name}.{name}" in python:
                continue
            uris = by_identity.get(id(getattr(module, name)), [])
            anchors = [uri.split("#")[1] for uri in uris if "#" in uri]
            if not any(f'#{anchor}"' in page for anchor in anchors):
                missing.append(f"{module_name}.{name}")
    assert not missing, f"public names without an API entry: {missing}"


def test_every_option_of_the_optimizer_is_documented(site: Path):
    import probprec

    page = (site / "_generated" / "api" / "probprec.html").read_text(encoding="utf-8")
    for cls in [probprec.Preconditioner]:
        for parameter in inspect.signature(cls).parameters.values():
            stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}.get(parameter.kind, "")
            assert f"<strong>{stars}{parameter.name}</strong>" in page, f"{cls.__name__}({parameter.name}) undocumented"


# --- the tables generated from the code ----------------------------------------------------------------------


_PLAIN_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


class _Table(HTMLParser):
    """The cell texts of the rows of one table (by its class) of an HTML page."""

    def __init__(self, table_class: str) -> None:
        super().__init__()
        self.table_class = table_class
        self.depth = 0
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and self.table_class in (dict(attrs).get("class") or "").split():
            self.depth = 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag in ("td", "th") and self.cell is not None:
            text = "".join(self.cell).translate(_PLAIN_QUOTES)  # docutils' smart quotes, back to plain
            self.rows[-1].append(re.sub(r"\s+", " ", text).strip())
            self.cell = None
        elif self.depth and tag == "table":
            self.depth = 0

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _table(site: Path, page: str, name: str, header: bool = False) -> list[list[str]]:
    """The rows of a generated table, without its header (or only the header)."""
    parser = _Table(f"probprec-table-{name}")
    parser.feed((site / page).read_text(encoding="utf-8"))
    assert parser.rows, f"no table {name} on {page}"
    return parser.rows[:1] if header else parser.rows[1:]


def test_the_fixes_table_is_the_quirks_definition(site: Path):
    from probprec.thesis import QUIRKS

    expected = [[fix, quirk, text] for quirk, (fix, text) in QUIRKS.items()]
    assert _table(site, "thesis.html", "fixes") == expected


def test_the_problems_table_is_the_problem_registry(site: Path):
    from probprec.bench.problems import PROBLEMS

    rows = _table(site, "harness/problems.html", "problems")
    assert [row[0] for row in rows] == list(PROBLEMS)
    for row, (name, cls) in zip(rows, PROBLEMS.items(), strict=True):
        model = cls().model()
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert row[1:] == [cls.description, cls.dataset or "embedded", f"{count:,}",
                           f"{cls.batch_size}, {cls.epochs}, {cls.l2:g}", cls.metric], name


def test_the_optimizers_table_is_the_optimizer_registry(site: Path):
    from probprec.bench.optimizers import OPTIMIZERS

    rows = _table(site, "harness/optimizers.html", "optimizers")
    assert [row[0] for row in rows] == list(OPTIMIZERS)
    for row, spec in zip(rows, OPTIMIZERS.values(), strict=True):
        assert row[2] == spec.description
        assert all(f"{key}={value!r}" in row[3] for key, value in spec.defaults.items())
    tuned = _table(site, "harness/optimizers.html", "tuned")
    header = _table(site, "harness/optimizers.html", "tuned", header=True)[0]
    for row in tuned:
        for name, cell in zip(header[1:], row[1:], strict=True):
            rate = OPTIMIZERS[name].tuned_lr.get(row[0])
            assert cell == ("" if rate is None else f"{rate:.4g}"), (row[0], name)
    expected = {p for spec in OPTIMIZERS.values() for p in spec.tuned_lr}
    assert {row[0] for row in tuned} == expected


def test_the_experiments_table_is_the_shipped_experiments(site: Path):
    from probprec.bench.experiment import experiment_names, experiment_path
    from probprec.bench.sweeps import load_sweep

    rows = _table(site, "harness/reports.html", "experiments")
    assert [row[0] for row in rows] == experiment_names()
    for row, name in zip(rows, experiment_names(), strict=True):
        spec = load_sweep(experiment_path(name), "full")
        assert row[1:3] == [spec.description, ", ".join(spec.problems)]


def _parser_words() -> list[str]:
    """Every subcommand and option string of the ``probprec`` parser, read from the parser itself."""
    import argparse

    from probprec.bench.cli import _build_parser

    words = []
    for action in _build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, parser in action.choices.items():
                words.append(command)
                words += [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]
    return words


def test_the_cli_reference_is_the_argument_parser(site: Path):
    text = (site / "cli.html").read_text(encoding="utf-8")
    words = _parser_words()
    assert {"run", "benchmark", "report", "sweep", "--optimizer", "--executor"} <= set(words)
    missing = [word for word in words if not re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text)]
    assert not missing, f"not in the command-line reference: {missing}"


# --- the examples ------------------------------------------------------------------------------------------------


def test_every_example_ran_and_printed_its_result(site: Path):
    examples = sorted((ROOT / "examples" / "gallery").glob("*.py"))
    assert len(examples) >= 4
    for example in examples:
        page = (site / "_generated" / "gallery" / f"{example.stem}.html").read_text(encoding="utf-8")
        assert "sphx-glr-script-out" in page, f"{example.name} printed nothing (did it run?)"
    for stem in ("train_digits", "read_results"):
        assert (site / "_images" / f"sphx_glr_{stem}_001.png").exists(), f"{stem} drew no figure"
    assert any((site / "_images").glob("method_cycle*.png")), "the method page's figure was not drawn"
