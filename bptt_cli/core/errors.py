"""The one exception family of bptt.

Library code raises these; only ``bptt_cli.cli`` turns them into messages and exit codes.
"""

from __future__ import annotations


class BpttError(Exception):
    """Base of every error bptt raises on purpose (a caller's mistake or a run outcome)."""


class InvalidInputError(BpttError, ValueError):
    """An argument, array or parameter is not what is allowed; the message says what is."""


class DivergedError(BpttError, FloatingPointError):
    """The loss or a gradient became NaN or Inf: the expected end of an exploding run.

    ``what`` names the quantity that went non-finite (``"loss"`` or ``"gradient W_hh"``, ...).
    """

    def __init__(self, what: str, detail: str = "") -> None:
        self.what = what
        msg = f"non-finite {what}"
        super().__init__(f"{msg}: {detail}" if detail else msg)
