"""The one error of the config layer, and the small helpers its messages use."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from bptt_cli.core.errors import BpttError

MAX_MESSAGE = 1000  # characters; a message quoting a huge value is cut here as a last resort


class ConfigError(BpttError, ValueError):
    """A config is not what the schema allows. ``str()`` is the whole message for the user:

        configs/delay.yaml:12:3: truncation.mdoe: unknown key (did you mean truncation.mode?) ...

    ``path`` is the dotted key (None for the file as a whole), ``source`` the file name (or the
    ``--set`` override to blame), ``line`` and ``column`` 1-based where known. When several
    keys are wrong, ``others`` holds the rest and ``str()`` shows one per line.
    """

    def __init__(
        self,
        message: str,
        path: str | None = None,
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
        others: Sequence[ConfigError] = (),
    ) -> None:
        self.message = message
        self.path = path
        self.source = source
        self.line = line
        self.column = column
        self.others = tuple(others)
        super().__init__(message)

    def __reduce__(self):  # keep the attributes across processes (compare's workers)
        return (type(self), (self.message, self.path, self.source, self.line, self.column, self.others))

    def _one_line(self) -> str:
        where = _printable(self.source or "")  # a file name or --set value may hold a newline
        if self.source and self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        parts = [p for p in (where, self.path) if p]
        message = self.message if len(self.message) <= MAX_MESSAGE else self.message[:MAX_MESSAGE] + " ... (cut)"
        return ": ".join([*parts, message])

    def __str__(self) -> str:
        return "\n".join(e._one_line() for e in (self, *self.others))


def _repr(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut short: a 1 MB string in a config must not become a 1 MB message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters)"


def _printable(text: str) -> str:
    """``text`` with control characters (newlines too) escaped, for one-line messages."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _hint(word: str, choices: Sequence[str], prefix: str = "") -> str:
    near = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{near[0]}?)" if near else ""


def _join(*parts: str | None) -> str | None:
    path = ".".join(p for p in parts if p)
    return path or None
