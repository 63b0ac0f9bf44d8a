"""Plain-text / markdown tables of result rows."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as a markdown table; ``columns`` = (key, header, format spec) triples."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---:" if f else "---" for _, _, f in columns) + "|"
    body = [
        "| " + " | ".join(format(r[k], f) if f else str(r[k]) for k, _, f in columns) + " |"
        for r in rows
    ]
    return "\n".join([head, rule, *body])
