"""The one way the commands show stored or typed text: never as Rich markup (a job named "[/]" is
a name), never with its control characters live (a model's ESC sequences must not colour, erase or
retitle an auditor's terminal). `cli/trail.py` draws an audit trail with it.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.text import Text

from rstar.answers import visible


class SafeText(Text):
    """A Rich Text whose appended strings are shown with `visible` (and, like all Text, never
    parsed as markup)."""

    def __init__(self, text: str = "", *args: Any, **kwargs: Any) -> None:
        super().__init__(visible(text), *args, **kwargs)

    def append(self, text: Any, style: Any = None) -> SafeText:
        super().append(visible(text) if isinstance(text, str) else text, style)
        return self


def shown_title(text: object) -> Text:
    """A panel's or table's title: as Text, which Rich does not read as markup; controls visible."""
    return Text(visible(text))


def print_error(console: Console, message: object) -> None:
    """ "error: ..." in red, the message shown as it is (it often holds what the user typed)."""
    console.print(Text.assemble(("error: ", "bold red"), visible(message)), highlight=False, soft_wrap=True)


def make_console(*, stderr: bool = False) -> Console:
    """A Rich console; piped to a file or a CI log it is 160 columns wide instead of Rich's 80,
    so result tables are not squeezed (COLUMNS still wins when set). It reads no markup: what the
    commands print holds names, paths and URLs users typed, and styles are given as Text."""
    console = Console(stderr=stderr, markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=160, markup=False)
    return console
