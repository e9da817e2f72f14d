"""Progress of a study without a terminal (cron, CI logs): plain lines, every tenth and every minute."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

from bayesflex.core.progress import ProgressLines

from .conftest import REPO


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_line_at_every_tenth_of_the_draws():
    out, clock = io.StringIO(), _Clock()
    bar = ProgressLines(1000, "study x", stream=out, clock=clock, every_s=3600)
    for _ in range(20):  # chunks of 50 draws, 2 s each
        clock.t += 2.0
        bar.update(50)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == [f"study x: {100 * k} of 1000 draws ({10 * k} %), {4 * k} s" for k in range(1, 11)]


def test_a_line_at_least_every_minute_when_draws_come_slowly():
    out = io.StringIO()
    bar = ProgressLines(1000, "study x", stream=out, every_s=0.05)  # a "minute" of 50 ms, real clock
    deadline = time.monotonic() + 10
    while out.getvalue().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    bar.update(50)  # 5 %: no tenth reached, no extra line
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and lines[0].startswith("study x: 0 of 1000 draws (0 %), ")
    assert all("draws" in line for line in lines)


def test_without_a_terminal_the_study_prints_plain_lines():
    """A real process whose stderr is a pipe (as under cron): plain lines, not tqdm's bar."""
    code = ("from bayesflex.core.progress import progress_bar\n"
            "bar = progress_bar(200, 'study x', progress=None, initial=50)\n"
            "for _ in range(3):\n"
            "    bar.update(50)\n"
            "bar.close()\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"study x: {k} of 200 draws ({k // 2} %)"
                                                      for k in (100, 150, 200)], r.stderr
    assert "\r" not in r.stderr and "it/s" not in r.stderr
