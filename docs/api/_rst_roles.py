"""MkDocs hook: render the Sphinx roles numbanet's docstrings use (``:func:`x```).

The docstrings are Google style but cross-reference with reStructuredText roles, which
Markdown shows literally (":class:`~numbanet.LossSpec`"). After each page is rendered,
this hook turns every ``:role:<code>target</code>`` into ``<code>name</code>``, linked
through mkdocs-autorefs when the target is a fully qualified ``numbanet.`` name that the
API reference documents. A leading ``~`` shows the last component only, as in Sphinx.
Registered in mkdocs.yml under ``hooks:``.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([\w.]+)(\(\))?</code>")


def _replace(match: re.Match[str]) -> str:
    tilde, target, call = match.groups()
    shown = (target.rsplit(".", 1)[-1] if tilde else target) + (call or "")
    code = f"<code>{shown}</code>"
    if target.startswith("numbanet."):
        # 'optional': an unresolved target renders as plain code instead of failing.
        return f'<autoref identifier="{target}" optional>{code}</autoref>'
    return code


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(_replace, html)
