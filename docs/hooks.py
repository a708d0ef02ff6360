"""mkdocs hooks of the documentation site (mkdocs.yml: ``hooks``).

The docstrings are written in reST (``:class:`~quantscope.results.RunReport```); mkdocstrings
renders such a role as its literal text. Here each becomes a link to the object's reference
when the site has one (mkdocs-autorefs resolves it; ``optional``: plain code when it has
none), shown as the last part of its name when written with ``~``.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):<code>(~?)([\w.]+)</code>")


def _link(match: re.Match[str]) -> str:
    short, name = match.groups()
    shown = name.rsplit(".", 1)[-1] if short else name
    return f'<autoref identifier="{name}" optional><code>{shown}</code></autoref>'


def on_page_content(html: str, **_: Any) -> str:
    return ROLE.sub(_link, html)


MARK = "<!-- the command line's reference -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Where a page holds MARK, the reference of every command, generated from the commands
    themselves by typer's own generator (what ``typer quantscope.cli utils docs`` writes)."""
    if MARK not in markdown:
        return markdown
    import typer.main
    from typer.cli import MARKUP_MODE_KEY, get_docs_for_click

    from quantscope.cli import app

    command = typer.main.get_command(app)
    context = typer.Context(command)
    context.ensure_object(dict)[MARKUP_MODE_KEY] = app.rich_markup_mode
    text = get_docs_for_click(obj=command, ctx=context, name="quantscope", title="-")
    return markdown.replace(MARK, text.split("\n", 1)[1].strip())
