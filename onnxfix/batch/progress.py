"""A one-line progress bar on stderr (images/s, ETA), drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _hms(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """``update(n)`` after ``n`` more images; ``close()`` ends the line. Silent unless ``enabled``."""

    def __init__(self, total: int | None, enabled: bool | None = None, stream: TextIO | None = None,
                 every: float = 0.2):
        self.stream = stream or sys.stderr
        self.enabled = bool(self.stream.isatty()) if enabled is None else enabled
        self.total = total
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.every = every

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < self.every and (self.total is None or self.done < self.total):
            return
        self._last = now
        rate = self.done / max(now - self.t0, 1e-9)
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 24)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            text = (f"\r[{bar:<24}] {self.done}/{self.total} images  {rate:.1f} img/s  ETA {_hms(eta)}")
        else:
            text = f"\r{self.done} images  {rate:.1f} img/s"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
