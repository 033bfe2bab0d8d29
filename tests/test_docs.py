"""The documentation cannot rot: every ```python block in docs/ runs here.

How the blocks run (documented for authors in docs/index.md, "Writing these pages"):

* Each Markdown page under ``docs/`` is one test. Its ```python blocks run in order in
  one shared namespace, like cells of a notebook, so a later block may use names an
  earlier block defined. Blocks on different pages never share anything.
* A page runs in a fresh temporary working directory, so ``model.save("model.npz")``
  leaves nothing behind.
* A block opts out with an HTML comment ``<!-- docs: skip -->`` on the last non-blank
  line before its opening fence (it is invisible in the rendered page). Fences other than
  ``python`` / ``py`` (``bash``, ``text``, ``toml``, ...) never run.
* A block's printed output is checked when the fence right after it is preceded by
  ``<!-- docs: output -->``: the printed text must match that fence's content, with
  ``...`` matching anything and runs of whitespace equal (doctest's ELLIPSIS and
  NORMALIZE_WHITESPACE), so machine-dependent digits can be elided.
* A failure names the page and the line of the block; the traceback points into the
  Markdown file itself.

The docstring examples (``>>>``) the API reference renders run here too, as doctests
of every numbanet module that has some. The other tests keep the site honest: relative
links resolve (pages and the source files the tour links to), every public name has an
API reference entry, and ``mkdocs build --strict`` passes when mkdocs is installed.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import importlib.util
import io
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_MARKER = "<!-- docs: skip -->"
OUTPUT_MARKER = "<!-- docs: output -->"
RUN_LANGUAGES = {"python", "py"}

# Any indentation: fences inside list items are indented (pymdownx.superfences renders them).
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")


class Block(NamedTuple):
    line: int                   # 1-based line of the first code line
    source: str
    skipped: bool               # preceded by SKIP_MARKER
    expected: str | None        # the output fence that follows it, if marked


def _pages() -> list[Path]:
    # docs/dev/ is contributor material outside the site; its blocks run too.
    return sorted(DOCS.rglob("*.md"))


def _fences(text: str) -> list[tuple[int, str, str, str]]:
    """``(line, language, body, marker)`` for every fenced block of a Markdown text.

    ``marker`` is the last non-blank line before the opening fence. Fences nested in
    other fences (a longer or different fence) are content, as CommonMark says. The body
    loses the opening fence's indentation.
    """
    lines = text.splitlines()
    fences = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence = match["fence"]
        start = j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            j += 1
        marker = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        indent = len(match["indent"])
        body = "\n".join(line[indent:] if line[:indent].isspace() else line
                         for line in lines[start:j])
        language = match["info"].lower().lstrip("{.").rstrip("}")
        fences.append((start + 1, language, body, marker))
        i = j + 1
    return fences


def _blocks(text: str) -> list[Block]:
    """The python blocks of a Markdown text, each with its expected output if marked."""
    blocks: list[Block] = []
    previous_is_python = False
    for line, language, body, marker in _fences(text):
        if marker == OUTPUT_MARKER:
            if not previous_is_python or blocks[-1].expected is not None:
                raise ValueError(f"line {line}: {OUTPUT_MARKER} must follow a python block")
            blocks[-1] = blocks[-1]._replace(expected=body)
            previous_is_python = False
        elif language in RUN_LANGUAGES:
            blocks.append(Block(line, body, marker == SKIP_MARKER, None))
            previous_is_python = True
        else:
            previous_is_python = False
    return blocks


def test_block_parser_reads_fences_and_markers() -> None:
    text = (
        "intro\n"
        "```python\nx = 1\n```\n"
        "<!-- docs: skip -->\n\n"
        "```python\nraise SystemExit\n```\n"
        "````text\n```python\nnot code\n```\n````\n"
        "```bash\nls\n```\n"
        "```py\nprint(x + 1)\n```\n"
        "<!-- docs: output -->\n"
        "```text\n2\n```\n"
        "* a list item:\n\n"
        "    ```python\n    if x:\n        y = 2\n    ```\n"
    )
    assert _blocks(text) == [Block(3, "x = 1", False, None),
                             Block(8, "raise SystemExit", True, None),
                             Block(19, "print(x + 1)", False, "2"),
                             Block(28, "if x:\n    y = 2", False, None)]
    with pytest.raises(ValueError, match="must follow a python block"):
        _blocks("```bash\nls\n```\n<!-- docs: output -->\n```text\nx\n```\n")


_CHECKER = doctest.OutputChecker()
_OUTPUT_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _pages_with_code() -> list[Path]:
    return [p for p in _pages() if _blocks(p.read_text(encoding="utf-8"))]


#: Top-level modules of numbanet's optional extras (pyproject's optional-dependencies)
#: that pages import. A block that fails for want of one skips the rest of its page, as
#: docstring examples skip (DOCTEST_REQUIRES); in CI, which installs every extra, it fails.
OPTIONAL_MODULES = frozenset({"sklearn", "onnx", "onnxruntime", "tensorboard", "torch",
                              "mpi4py", "matplotlib", "pandas"})


def _missing_optional(exc: BaseException | None) -> str | None:
    """The optional module whose absence raised ``exc`` (directly, or as the cause of
    numbanet's own ImportError naming the extra), or ``None``."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError):
            top = (exc.name or "").split(".")[0]
            if top in OPTIONAL_MODULES:
                return top
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: str(p.relative_to(DOCS)))
def test_code_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [b for b in _blocks(page.read_text(encoding="utf-8")) if not b.skipped]
    if not blocks:
        pytest.skip("every python block on this page opts out")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    where = page.relative_to(ROOT)
    for block in blocks:
        # Pad so line numbers in tracebacks are the Markdown file's own.
        code = compile("\n" * (block.line - 1) + block.source, str(page), "exec")
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(code, namespace)
        except Exception as exc:
            missing = _missing_optional(exc)
            if missing is not None and not os.environ.get("CI"):
                pytest.skip(f"{where}: the block starting at line {block.line} needs "
                            f"{missing}, from an optional extra (CI installs them all)")
            pytest.fail(
                f"{where}: the block starting at line {block.line} failed\n"
                f"--- its output ---\n{out.getvalue()}\n--- traceback ---\n"
                f"{traceback.format_exc()}",
                pytrace=False,
            )
        want = None if block.expected is None else block.expected.strip() + "\n"
        if want is not None and not _CHECKER.check_output(want, out.getvalue(), _OUTPUT_FLAGS):
            pytest.fail(
                f"{where}: the block starting at line {block.line} printed something other "
                f"than its output block ('...' matches anything)\n--- expected ---\n{want}"
                f"--- printed ---\n{out.getvalue()}",
                pytrace=False,
            )


def _doctests(module: str) -> list[doctest.DocTest]:
    found = doctest.DocTestFinder(exclude_empty=True).find(importlib.import_module(module), module)
    return [t for t in found if t.examples]


def _modules_with_examples() -> list[str]:
    import numbanet

    names = ["numbanet"] + [m.name for m in pkgutil.walk_packages(numbanet.__path__, "numbanet.")
                            if not m.name.endswith("__main__")]
    found = []
    for name in sorted(names):
        needs = DOCTEST_REQUIRES.get(name)
        if needs is not None and importlib.util.find_spec(needs) is None:
            found.append(name)  # it cannot be imported here; the test skips it by name
        elif _doctests(name):
            found.append(name)
    return found


# Docstring examples known to fail, with why; owners of those files fix them and drop the
# entry here (the xfail is not strict, so a fix does not break the run meanwhile).
KNOWN_BROKEN_DOCTESTS: dict[str, str] = {}


# Modules whose examples need an optional dependency (skipped without it).
DOCTEST_REQUIRES = {"numbanet.bench": "torch", "numbanet.sklearn": "sklearn",
                    "numbanet.onnx": "onnx", "numbanet.tensorboard": "tensorboard",
                    "numbanet.distributed": "mpi4py"}


@pytest.mark.parametrize("module", _modules_with_examples())
def test_docstring_examples_run(module: str, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    if module in KNOWN_BROKEN_DOCTESTS:
        pytest.xfail(KNOWN_BROKEN_DOCTESTS[module])
    if module in DOCTEST_REQUIRES:
        pytest.importorskip(DOCTEST_REQUIRES[module])
    monkeypatch.chdir(tmp_path)
    tests = _doctests(module)
    report = io.StringIO()
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()


_LINK = re.compile(r"\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _strip_code(text: str) -> str:
    """The text without fenced blocks and inline code (links there are not links)."""
    text = re.sub(r"(?ms)^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1\s*$", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


@pytest.mark.parametrize("page", [*_pages(), ROOT / "README.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for match in _LINK.finditer(_strip_code(page.read_text(encoding="utf-8"))):
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # absolute URL or same-page anchor
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken relative links {broken}"


def test_readme_links_every_page() -> None:
    """The issue's rule: the README links to each page (sections link their sub-pages)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {m["target"].split("#", 1)[0] for m in _LINK.finditer(readme)}
    pages = [p for p in DOCS.glob("*.md")] + [DOCS / "tour" / "index.md", DOCS / "api" / "index.md"]
    missing = [p.relative_to(ROOT).as_posix() for p in sorted(pages)
               if p.exists() and p.relative_to(ROOT).as_posix() not in linked]
    assert not missing, f"README.md's Documentation section does not link {missing}"


def _api_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((DOCS / "api").glob("*.md")))


def test_every_public_name_has_an_api_entry() -> None:
    import numbanet

    text = _api_text()
    documented = set(re.findall(r"^::: numbanet\.([\w.]+)", text, flags=re.M))
    missing = [name for name in numbanet.__all__
               if name != "__version__" and name not in documented]
    assert not missing, f"add '::: numbanet.NAME' blocks to docs/api/ for {missing}"


@pytest.mark.parametrize("module", [
    "kernels", "kernels.activations", "kernels.reductions", "kernels.losses",
    "kernels.updates", "kernels.dropout", "nn", "datasets", "metrics", "callbacks",
    "schedules", "io", "testing", "plugins", "specs", "hookspecs", "train", "threads",
    "optim", "losses", "bench",
])
def test_public_module_has_an_api_page(module: str) -> None:
    assert re.search(rf"^::: numbanet\.{re.escape(module)}\s*$", _api_text(), flags=re.M), (
        f"docs/api/ has no '::: numbanet.{module}' block"
    )


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    if shutil.which("mkdocs") is None:
        pytest.skip("mkdocs command not on PATH")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
