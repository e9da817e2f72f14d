"""Shared fixtures.  Reference data is read from ../shared/data, never copied."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import bayesflex as bf

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BAYESFLEX_SHARED", REPO.parent / "shared")) / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data; skips the test when the reference data is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"reference data not present: {p} (set BAYESFLEX_SHARED to the shared/ folder)")
    return p


#: the test files that take longest (on 2 cores, a fresh machine: together two thirds of the suite's
#: time), longest first.  pytest-xdist hands whole files to its workers (``--dist loadfile``) in
#: collection order (``--no-loadscope-reorder``; its own order is by number of tests, which put a
#: long file of few tests last): these go first, so that each worker's last file is a short one
#: and both end together.  Only the wall time depends on this list.
LONGEST_FIRST = ("test_priors_conditioning.py", "test_report.py", "test_engine.py", "test_outputs_safety.py",
                 "test_priors_tails.py", "test_fleet.py", "test_hostile_input.py", "test_opendss_safety.py",
                 "test_resume.py", "test_loadflow_opendss.py", "test_priors.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


@pytest.fixture(scope="session")
def ieee() -> bf.Feeder:
    return bf.load_feeder("ieee_eu_lv")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261121)



def edited_priors(directory: Path, edits: list[tuple[str, str]], name: str = "default",
                  filename: str | None = None) -> Path:
    """A copy of a built-in prior set with text replaced; each old text must occur exactly once."""
    from bayesflex.priors import load_priors

    text = load_priors(name).text
    for old, new in edits:
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in priors/{name}.toml"
        text = text.replace(old, new)
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / (filename or f"{name}_edited.toml")
    path.write_text(text)
    return path


@contextlib.contextmanager
def fifo_nobody_opens(fifo: Path):
    """A FIFO nobody may open (for reading attacks): a writer thread waits for a reader and sets
    the yielded event if one came, then closes, so the reader sees end of file and nothing hangs."""
    if not fifo.exists():
        os.mkfifo(fifo)
    opened, done = threading.Event(), threading.Event()

    def writer():
        fd = os.open(fifo, os.O_WRONLY)  # blocks until someone opens it to read
        if not done.is_set():
            opened.set()
        os.close(fd)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        yield opened
    finally:
        done.set()
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # release the writer
        t.join(10)
        os.close(fd)
