"""MkDocs hook: the Python sources the pages link to become pages of the site.

The tour links to numbanet's source files the way GitHub resolves them, relative to the
page's file in the repository (``../../src/numbanet/kernels/matmul.py`` from
``docs/tour/matmul.md``). Those files are outside ``docs_dir``, so on the built site the
links would lead nowhere. This hook adds one generated page per ``src/numbanet/**.py``
(the file's text, highlighted, under ``_source/``; not in the nav) and rewrites such
links to point at it, so they work on GitHub and on the site alike and ``mkdocs build
--strict`` checks them. Registered in mkdocs.yml under ``hooks:``.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

_PREFIX = "_source"
# A Markdown link target: (../)+src/numbanet/....py, optionally with an anchor.
_LINK = re.compile(r"\]\((?P<target>(?:\.\./)+src/numbanet/[\w/]+\.py)(?P<anchor>#[^)\s]*)?\)")


def _repo(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


def _page_uri(rel: str) -> str:
    # src/numbanet/kernels/matmul.py -> _source/numbanet/kernels/matmul.py.md
    return f"{_PREFIX}/{rel.removeprefix('src/')}.md"


def on_files(files: Files, config: Any) -> Files:
    repo = _repo(config)
    for path in sorted((repo / "src" / "numbanet").rglob("*.py")):
        rel = path.relative_to(repo).as_posix()
        text = path.read_text(encoding="utf-8")
        longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
        fence = "`" * max(3, longest + 1)
        content = f"# `{rel}`\n\n{fence}python\n{text}\n{fence}\n"
        files.append(File.generated(config, _page_uri(rel), content=content,
                                    inclusion=InclusionLevel.NOT_IN_NAV))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    docs_dir = Path(config.docs_dir).resolve()
    repo = _repo(config)
    page_dir = (docs_dir / page.file.src_uri).parent

    def rewrite(match: re.Match[str]) -> str:
        target = (page_dir / match["target"]).resolve()
        try:
            rel = target.relative_to(repo).as_posix()
        except ValueError:
            return match[0]
        if files.get_file_from_path(_page_uri(rel)) is None:
            return match[0]  # not a numbanet source file: leave it to the link checks
        link = posixpath.relpath(_page_uri(rel), posixpath.dirname(page.file.src_uri) or ".")
        return f"]({link}{match['anchor'] or ''})"

    return _LINK.sub(rewrite, markdown)
