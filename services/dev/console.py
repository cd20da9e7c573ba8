"""``make run``'s terminal: one line per child output line, ``name | line``, coloured per process on a TTY."""

from __future__ import annotations

import os
import sys
import threading
from typing import IO, Final


class Console:
    """Serialises lines from the child pumps and the launcher onto stdout, ``name | line``."""

    _COLORS: Final = ("36", "32", "35", "33", "34", "96", "92", "95")

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()
        self._color = self._stream.isatty() and not os.environ.get("NO_COLOR")
        self._width = 12
        self._assigned: dict[str, str] = {}

    def _paint(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self._color else text

    def line(self, name: str, text: str) -> None:
        code = self._assigned.setdefault(name, self._COLORS[len(self._assigned) % len(self._COLORS)])
        prefix = self._paint(code, f"{name:<{self._width}}|")
        self._write(f"{prefix} {text}\n")

    def info(self, text: str) -> None:
        self.line("dev", text)

    def error(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            self._write(self._paint("1;31", f"{'dev':<{self._width}}| ") + line + "\n")

    def block(self, text: str) -> None:
        """Unprefixed text (the walk-through), so it can be copied as it is."""
        self._write(text if text.endswith("\n") else text + "\n")

    def _write(self, text: str) -> None:
        with self._lock:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                pass
