"""Progress for long jobs: a tqdm bar on a terminal; written to a file or a pipe, a plain line every few percent
(or every minute when the total is unknown) instead of a bar's carriage returns; nothing when disabled.

Example:
    >>> import io
    >>> out = io.StringIO()  # not a terminal
    >>> bar = progress_bar(total=40, desc="train", unit="step", stream=out)
    >>> for _ in range(40):
    ...     bar.update(1)
    >>> bar.close()
    >>> out.getvalue().splitlines()[:2], len(out.getvalue().splitlines())
    (['train: 2/40 step (5%)', 'train: 4/40 step (10%)'], 20)
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

PERCENT_STEP = 5  # a line each time progress crosses a multiple of this many percent
SECONDS_STEP = 60.0  # a line at most this often when the total is unknown


class LineProgress:
    """The subset of tqdm's interface our jobs use, writing whole lines."""

    def __init__(self, total: int | None, initial: int, desc: str, unit: str, stream: TextIO) -> None:
        self.total, self.n, self.desc, self.unit, self.stream = total, initial, desc, unit, stream
        self.postfix = ""
        self._last_step = self._step()
        self._last_time = time.monotonic()

    def _step(self) -> int:
        return self.n * 100 // (PERCENT_STEP * self.total) if self.total else 0

    def _line(self) -> str:
        done = f"{self.n:,}/{self.total:,} {self.unit} ({self.n * 100 // self.total}%)" if self.total else f"{self.n:,} {self.unit}"
        return f"{self.desc}: {done}" + (f" {self.postfix}" if self.postfix else "")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if (self.total and self._step() > self._last_step) or (not self.total and now - self._last_time >= SECONDS_STEP):
            self._last_step, self._last_time = self._step(), now
            print(self._line(), file=self.stream, flush=True)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int | None = None, initial: int = 0, enabled: bool = True, desc: str = "", unit: str = "it",
                 stream: TextIO | None = None, **bar: Any) -> Any:
    """A tqdm bar on a terminal, a `LineProgress` elsewhere, a disabled tqdm when not `enabled`.

    Args:
        total: the units to do (None: unknown).
        initial: the units already done (a resumed run).
        enabled: False shows nothing (`--quiet`, or a caller's own progress=False).
        desc, unit: the bar's label and unit.
        stream: where it writes (default stderr).
        **bar: further tqdm arguments (a terminal only).
    """
    from tqdm import tqdm

    stream = stream or sys.stderr
    if not enabled:
        return tqdm(total=total, disable=True)
    if stream.isatty():
        return tqdm(total=total, initial=initial, desc=desc or None, unit=unit, file=stream, dynamic_ncols=True, **bar)
    return LineProgress(total, initial, desc or "progress", unit, stream)
