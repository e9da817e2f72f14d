"""Derive the EV travel-chain numbers of priors/*.toml from emobpy's statistics.

    pip install emobpy && python priors/derive_emobpy.py

emobpy (MIT licence) ships trip statistics from the German national travel
survey (Mobilitaet in Deutschland): trips per day, the joint distribution of
departure half-hour and destination, and trip durations.  We reduce them, for
a weekday of an employed driver (emobpy's "Worker" example), to the mean
transition probabilities per half-hour of a three-state chain (M moving, R
parked at home, C parked elsewhere):

* departures in half-hour s: trips/day x P(depart in s);
* P(home | a trip ends in s): the destination share of trips departing in s;
* trips are home-based tours, so trips to a non-home place start at home in
  the proportion (trips home) / (trips elsewhere) and otherwise elsewhere;
* hazards P(R->M), P(C->M) = departures from R (C) / cars parked at R (C),
  iterated with the chain's own periodic occupancy until consistent;
* P(M->M) = P(trip longer than 30 minutes).

Nothing here is imported by bayesflex.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pandas as pd


def load_stats():
    data = files("emobpy") / "data"
    dep = pd.read_csv(data / "eg2" / "config_files" / "DepartureDestinationTrip_Worker.csv")
    dep = dep[dep.days == "weekdays"].sort_values("time")
    trips = pd.read_csv(data / "base" / "config_files" / "TripsPerDay.csv")
    dur = pd.read_csv(data / "base" / "config_files" / "DistanceDurationTrip.csv", index_col=0)
    return dep, trips, dur


def main() -> None:
    dep, trips, dur = load_stats()
    cols = [c for c in dep.columns if c not in ("days", "time")]
    joint = dep[cols].to_numpy(float)  # (48, destination)
    joint /= joint.sum()
    weekday_col = [c for c in trips.columns if "weekday" in c.lower()][0]
    n_trips = float((trips.iloc[:, 0] * trips[weekday_col]).sum() / trips[weekday_col].sum())
    home = cols.index("home")
    p_home_dest = joint[:, home]
    p_other_dest = joint.sum(axis=1) - p_home_dest
    home_share = np.where(joint.sum(axis=1) > 0, p_home_dest / joint.sum(axis=1), 0.0)
    w = p_home_dest.sum() / p_other_dest.sum()  # non-home-bound trips that start at home
    dep_r = n_trips * p_other_dest * w  # departures from home per half-hour
    dep_c = n_trips * (p_home_dest + p_other_dest * (1 - w))
    minutes = dur.columns.astype(float)
    keep_moving = float(dur.to_numpy().sum(axis=0)[minutes > 30].sum() / dur.to_numpy().sum())

    occ = np.tile([0.05, 0.85, 0.10], (48, 1))
    for _ in range(200):
        lam_r = np.clip(dep_r / np.maximum(occ[:, 1], 1e-3), 1e-4, 0.9)
        lam_c = np.clip(dep_c / np.maximum(occ[:, 2], 1e-3), 1e-4, 0.9)
        mats = np.zeros((48, 3, 3))
        mats[:, 1, 0], mats[:, 1, 1] = lam_r, 1 - lam_r
        mats[:, 2, 0], mats[:, 2, 2] = lam_c, 1 - lam_c
        mats[:, 0, 0] = keep_moving
        mats[:, 0, 1] = (1 - keep_moving) * home_share
        mats[:, 0, 2] = (1 - keep_moving) * (1 - home_share)
        day = np.linalg.multi_dot(list(mats))
        vals, vecs = np.linalg.eig(day.T)
        pi = np.real(vecs[:, np.argmin(abs(vals - 1))])
        pi /= pi.sum()
        new = np.empty_like(occ)
        for s in range(48):
            new[s] = pi
            pi = pi @ mats[s]
        if np.abs(new - occ).max() < 1e-10:
            break
        occ = new
    departures = (occ[:, 1] * lam_r + occ[:, 2] * lam_c).sum()
    print(f"# emobpy weekday worker statistics: {n_trips:.2f} trips/day, P(trip > 30 min) = {keep_moving:.3f}")
    print(f"# chain check: {departures:.2f} departures/day; occupancy at 03:00 (M, R, C) = {np.round(occ[6], 3)}, "
          f"at 11:00 = {np.round(occ[22], 3)}")
    print(f"keep_moving = {keep_moving:.3f}")
    for name, v in (("leave_home", lam_r), ("leave_other", lam_c), ("home_share", home_share)):
        print(f"{name} = [{', '.join(f'{x:.4f}' for x in v)}]")


if __name__ == "__main__":
    main()
