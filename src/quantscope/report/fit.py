"""Tables that fit the terminal: rows of text cells laid out in as many tables as the width
needs, the key columns (a config's name, a metric) repeated in each and never cut, every
value whole on one line. A header may wrap at its spaces; a cell never does. And a model's
text made safe to print.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text

Style = Callable[[str, str], str]  # (column, value) → rich style


def _plain(head: str, value: str) -> str:
    return ""


def column_width(
    rows: Sequence[dict[str, str]], head: str, whole: bool = False, prose: bool = False
) -> int:
    """The room a column takes: its widest cell (its longest word, for ``prose``), or its
    header (its longest word, unless ``whole``)."""
    words = [len(head)] if whole else [len(w) for w in head.split()]
    cells = [max(map(len, r[head].split() or [""])) if prose else len(r[head]) for r in rows]
    return max(cells + words)


def _widths(
    rows: Sequence[dict[str, str]], heads: Sequence[str], width: int, prose: Sequence[str]
) -> list[int]:
    """Each column's width: headers on one line when the table fits so, else wrapped; prose
    columns given what room is left (at least their longest word)."""
    whole = [column_width(rows, h, whole=True) for h in heads]
    if 1 + sum(w + 3 for w in whole) <= width:
        return whole
    full = [column_width(rows, h) for h in heads]
    least = [column_width(rows, h, prose=h in prose) for h in heads]
    spare = width - 1 - sum(w + 3 for w in least)
    out = []
    for low, high in zip(least, full, strict=True):
        extra = min(high - low, max(spare, 0))
        spare -= extra
        out.append(low + extra)
    return out


def layout(
    rows: Sequence[dict[str, str]], keys: Sequence[str], width: int, prose: Sequence[str] = ()
) -> list[list[str]]:
    """The value columns, in order, in groups whose tables (keys repeated) fit ``width``."""
    start = 1 + sum(column_width(rows, k) + 3 for k in keys)
    groups: list[list[str]] = [[]]
    used = start
    for head in rows[0]:
        if head in keys:
            continue
        need = column_width(rows, head, prose=head in prose) + 3
        if groups[-1] and used + need > width:
            groups.append([])
            used = start
        groups[-1].append(head)
        used += need
    return groups


def fitted(
    rows: Sequence[dict[str, str]],
    keys: Sequence[str],
    width: int,
    title: str = "",
    notes: Sequence[str] = (),
    style: Style = _plain,
    left: Sequence[str] = (),
    prose: Sequence[str] = (),
) -> Group:
    """``rows`` (one dict of column → text per row, the same columns in each) as a title line,
    one table per group of columns that fits ``width`` beside the ``keys``, and dim notes.
    ``left``: value columns aligned left (the rest are numbers, aligned right); ``prose``:
    value columns of words (a model's name, a reason) that may wrap at their spaces — every
    other cell stays whole on one line."""
    parts: list[Text | Table] = [Text(title)] if title else []
    if rows:
        for group in layout(rows, keys, width, prose):
            table = Table(show_edge=True)
            heads = (*keys, *group)
            for head, room in zip(heads, _widths(rows, heads, width, prose), strict=True):
                table.add_column(
                    Text(head, no_wrap=False),  # a header wraps at its spaces
                    justify="left" if head in keys or head in left or head in prose else "right",
                    no_wrap=head not in prose,
                    max_width=room,
                    min_width=room,
                )
            for row in rows:
                table.add_row(*(Text(row[h], style=style(h, row[h])) for h in (*keys, *group)))
            parts.append(table)
    parts += [Text(n, style="dim") for n in notes]
    return Group(*parts)


def visible(text: str) -> str:
    """A model's text safe for a terminal: control characters (an escape sequence would
    drive the terminal) written as their escapes; newlines and tabs kept."""
    return "".join(
        c
        if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf")
        else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
        for c in text
    )
