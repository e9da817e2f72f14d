"""Checks shared by the readers of tidy tables (meter readings, EV logs, positions)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV file as a frame; any reader failure is a :class:`ConfigError` naming the file.

    Unlike ``pd.read_csv``, a row with more fields than the header is an error
    naming the row (pandas would take the first column as an index and shift
    the others)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, index_col=False)
    except pd.errors.ParserWarning:
        import csv

        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        r = next(i for i, row in enumerate(rows) if len(row) > len(rows[0]))
        raise ConfigError(f"{path}: row {r + 1} has {len(rows[r])} fields, the header {len(rows[0])}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable CSV: {e}") from e


def first_bad_time(times: pd.Series) -> int:
    """Position of the first value that is not a date-time like the first one (0 if none is)."""
    for i, t in enumerate(times):
        try:
            pd.to_datetime(pd.Series([times.iloc[0], t]))
        except (ValueError, TypeError):
            return i
    return 0


def agents_and_times(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Agent names as text and times as date-times; a missing one is named by its row."""
    if df.empty:
        raise ConfigError(f"{where}: no rows (needed: one row per agent and half-hour)")
    if df["agent"].isna().any():
        raise ConfigError(f"{where}: row {int(np.flatnonzero(df['agent'].isna())[0]) + 2}: agent is missing")
    df["agent"] = df["agent"].astype(str)
    try:
        df["time"] = pd.to_datetime(df["time"])
    except (ValueError, TypeError) as e:
        r = first_bad_time(df["time"])
        raise ConfigError(f"{where}: row {r + 2}: time {df['time'].iloc[r]!r} is not a date-time") from e
    if df["time"].isna().any():
        raise ConfigError(f"{where}: row {int(np.flatnonzero(df['time'].isna())[0]) + 2}: time is missing")
    return df
