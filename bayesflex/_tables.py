"""Checks shared by the readers of tidy tables (meter readings, EV logs, positions)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import ConfigError


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
