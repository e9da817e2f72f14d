"""Progress of a study: tqdm's bar on a terminal, plain lines in a log.

Without a terminal (cron, CI, ``> log 2>&1``) tqdm shows nothing, and a
study of many draws would say nothing for minutes; :class:`ProgressLines`
writes one plain line instead at every tenth of the draws and at least every
minute, whichever comes first.
"""

from __future__ import annotations

import sys
import threading
import time

__all__ = ["ProgressLines", "progress_bar"]


class ProgressLines:
    """Plain progress lines on ``stream``: ``study NAME: 300 of 1000 draws (30 %), 42 s``.

    A line at every ``step`` (a share of ``total``) and, while work goes on, at least every
    ``every_s`` seconds (a watcher thread, so that a long chunk is no silence).  The same
    calls as a tqdm bar: ``update(n)`` and ``close()``.
    """

    def __init__(self, total: int, desc: str, *, initial: int = 0, stream=None, step: float = 0.1,
                 every_s: float = 60.0, clock=time.monotonic):
        self.total, self.desc, self.done = int(total), desc, int(initial)
        self.stream = sys.stderr if stream is None else stream
        self.every_s, self.clock = float(every_s), clock
        self.t0 = self.last = clock()
        self._step = max(1, round(step * self.total))
        self._mark = (self.done // self._step + 1) * self._step  # the next multiple of step to report
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="bayesflex-progress", daemon=True)
        self._watcher.start()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += int(n)
            if self.done >= self._mark or self.done >= self.total:
                self._mark = (self.done // self._step + 1) * self._step
                self._line()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not threading.current_thread():
            self._watcher.join()

    def _watch(self) -> None:
        while not self._stop.wait(max(0.0, self.last + self.every_s - self.clock())):
            with self._lock:
                if self.clock() - self.last >= self.every_s and not self._stop.is_set():
                    self._line()

    def _line(self) -> None:
        now = self.clock()
        pct = 100 * self.done / self.total if self.total else 100.0
        print(f"{self.desc}: {self.done} of {self.total} draws ({pct:.0f} %), {_elapsed(now - self.t0)}",
              file=self.stream, flush=True)
        self.last = now


def _elapsed(seconds: float) -> str:
    s = round(seconds)
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s" if s < 3600 else \
        f"{s // 3600} h {s // 60 % 60:02d} min"


def progress_bar(total: int, desc: str, *, progress: bool | None, initial: int = 0):
    """What shows a study's progress: ``progress=True`` tqdm's bar, ``False`` nothing, ``None``
    (the default) tqdm's bar when stderr is a terminal and :class:`ProgressLines` when it is not."""
    from tqdm.auto import tqdm

    if progress is None and not _is_terminal(sys.stderr):
        return ProgressLines(total, desc, initial=initial)
    return tqdm(total=total, unit="draw", desc=desc, disable=not progress if progress is not None else None,
                leave=False, initial=initial)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
