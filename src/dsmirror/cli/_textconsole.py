"""``TextConsole``: a rich console that shows untrusted text as text (see ``dsmirror.cli._console``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from dsmirror.cli._safetext import safe_text
from dsmirror.cli._signals import deferred

__all__ = ["TextConsole"]


class TextConsole(Console):
    """A rich ``Console`` that renders every string as plain text (see ``dsmirror.cli._console``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        kwargs["markup"] = False
        kwargs["emoji"] = False
        return super().render_str(safe_text(text), **kwargs)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        kwargs.pop("markup", None)
        with deferred():  # a Ctrl-C or SIGTERM now is raised once the line is out (see _signals)
            super().print(*(_safe(o) for o in objects), markup=False, **kwargs)


def _safe(obj: Any) -> Any:
    if isinstance(obj, Text):
        clean = safe_text(obj.plain)
        if clean != obj.plain:
            obj = obj.copy()
            obj.plain = clean
    return obj
