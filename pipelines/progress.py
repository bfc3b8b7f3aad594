"""Progress for long stages: a bar on a terminal, plain periodic lines in CI logs, nothing with --quiet.

CI logs are not terminals: carriage-return bars turn into thousands of lines there, so off a TTY a
stage prints one line every PLAIN_EVERY_S seconds (and at the end) instead.
"""

from __future__ import annotations

import sys
import time

PLAIN_EVERY_S = 10.0


class Progress:
    """`update(n, **status)` after each unit of work; `close()` at the end. `write` prints around the bar."""

    def __init__(self, total: int, label: str, *, quiet: bool = False, stream=None, tty: bool | None = None,
                 every_s: float = PLAIN_EVERY_S):
        self.total, self.label, self.quiet = total, label, quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = every_s
        self.done = 0
        self.status: dict = {}
        self._start = self._last = time.monotonic()
        self._bar = None
        if not quiet and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, file=self.stream, unit="it", dynamic_ncols=True)

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        pct = 100 * self.done / self.total if self.total else 100.0
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        extra = "".join(f", {k} {v}" for k, v in self.status.items())
        return f"{self.label}: {self.done}/{self.total} ({pct:.0f}%){extra}, {elapsed:.0f} s elapsed, eta {eta:.0f} s"

    def update(self, n: int = 1, **status) -> None:
        self.done += n
        self.status.update(status)
        if self.quiet:
            return
        if self._bar is not None:
            if status:
                self._bar.set_postfix(status, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            print(self._line(), file=self.stream, flush=True)

    def write(self, text: str, stream=None) -> None:
        """Print a line without breaking the bar (stdout by default); nothing when quiet."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=stream or sys.stdout)
        else:
            print(text, file=stream or sys.stdout, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self.quiet and self.done:
            print(self._line(), file=self.stream, flush=True)
