"""Progress for CLI verbs: a tqdm bar on a terminal, plain periodic lines otherwise.

A bar redrawn with carriage returns turns a log file (CI, nohup, a job runner) into one huge
line; when stderr is not a terminal we print one short line every `every_s` seconds and a last
one at the end instead.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """update(done, **extra) with an absolute count; close() prints the last plain line."""

    def __init__(self, total: float, unit: str, label: str, enabled: bool = True, every_s: float = 10.0,
                 stream=None, fmt: str = "{:.0f}"):
        self.total, self.unit, self.label, self.fmt = total, unit, label, fmt
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s = every_s
        self.t0 = self._last = time.perf_counter()
        self.done, self.extra = 0.0, {}
        self.bar = tqdm(total=total, unit=unit, file=self.stream, desc=label) if self.tty else None

    def update(self, done: float, **extra) -> None:
        done = min(done, self.total)  # the last training step may overshoot the budget
        self.extra = extra
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if extra:
                self.bar.set_postfix(**extra)
        self.done = done
        now = time.perf_counter()
        if self.enabled and not self.tty and now - self._last >= self.every_s:
            self._last = now
            self._line()

    def write(self, text: str) -> None:
        """A message that does not break the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.t0
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        extra = "".join(f"  {k} {v}" for k, v in self.extra.items())
        f = self.fmt
        print(f"{self.label}: {f.format(self.done)}/{f.format(self.total)} {self.unit} "
              f"({100 * self.done / max(self.total, 1e-12):.0f}%)  {_duration(elapsed)} elapsed"
              f"  ETA {_duration(eta) if eta != float('inf') else '?'}{extra}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line()
