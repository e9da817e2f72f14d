"""Do the heuristic's turn-ups on phases that are not congested relieve the congested phase?

A winter study at a raised lower voltage limit (so that a small study congests) asks
agents to turn up on phases within their limits; the heuristic says it does so to
relieve another phase through the neutral (``heuristic/adjust_target_phase``).  Here
each such turn-up is applied alone, to the planned powers of its draw and half-hour,
and a load flow (bayesflex's, independent of the heuristic's linearisation) measures
the lowest voltage of the phase it was for, and of the agent's own phase:

    python bench/neutral_shift.py                       # 50 draws, 48 half-hours, v_min 1.02 pu
    python bench/neutral_shift.py --v-min 0.98 --draws 200

With the default priors the IEEE European LV feeder has no turn-up at 0.98 or 1.00 pu
in 200 and 50 draws (the congested phase sheds its own load); 1.02 pu gives some.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import bayesflex as bf
from bayesflex.grid.heuristic import Limits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--feeder", default="ieee_eu_lv")
    ap.add_argument("--priors", default="default")
    ap.add_argument("--v-min", type=float, default=1.02, help="lower voltage limit, pu (default 1.02)")
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--periods", type=int, default=48)
    ap.add_argument("--start", default="2026-01-14 00:00")
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()

    t0 = time.perf_counter()
    fd = bf.load_feeder(a.feeder)
    tree = bf.run_study(fd, a.priors, draws=a.draws, seed=a.seed, start=a.start, periods=a.periods,
                        limits=Limits(v_min_pu=a.v_min), headroom=False, jobs=1)
    print(f"study: {a.draws} draws x {a.periods} half-hours from {a.start}, v_min {a.v_min} pu, "
          f"{time.perf_counter() - t0:.0f} s")
    h = tree["heuristic"]
    up, dn = h["adjust_up_kw"].values[0], h["adjust_down_kw"].values[0]
    target = h["adjust_target_phase"].values[0]
    cong = h["congested"].values[0].astype(bool)
    resolved = h["resolved"].values[0].astype(bool)
    calm = ~cong[:, :, None, :]
    own = np.arange(3)
    for name, v in (("turn-ups", up), ("turn-downs", dn)):
        m = v > 0
        print(f"{name}: {m.sum()} agent-phase half-hours; {(m & calm).sum()} on a phase not congested; "
              f"for another phase {(m & (target >= 0) & (target != own)).sum()}")
    d, t, ag, ph = np.nonzero((up > 0) & calm & (target != own))
    if d.size == 0:
        print("no turn-up on a phase not congested for another phase: nothing to check")
        return
    pp = tree["prior_predictive"]
    p = pp["p_kw"].values[0].astype(float)[d, t]
    q = pp["q_kvar"].values[0].astype(float)[d, t]
    moved = p.copy()
    i = np.arange(d.size)
    moved[i, ag, ph] += up[d, t, ag, ph]
    before = bf.solve_loadflow(fd, p, q, full=False)
    after = bf.solve_loadflow(fd, moved, q, full=False)
    y = target[d, t, ag, ph]
    dv = (after.v_min_pu[i, y] - before.v_min_pu[i, y]) * 1e3
    dv_own = (after.v_min_pu[i, ph] - before.v_min_pu[i, ph]) * 1e3
    kw = up[d, t, ag, ph]
    print(f"each of the {d.size} alone ({(~resolved[d, t]).sum()} in half-hours the heuristic could not resolve), "
          f"by a load flow:")
    print(f"  the lowest voltage of the phase it was for rose in {(dv > 0).sum()} of {d.size}: median "
          f"{np.median(dv):+.2f} mpu ({np.median(dv / kw):+.3f} mpu per kW; range {dv.min():+.3f} .. {dv.max():+.2f}; "
          f"{(dv < 0.1).sum()} by less than 0.1 mpu)")
    print(f"  the lowest voltage of the agent's own phase: median {np.median(dv_own):+.2f} mpu; "
          f"turn-up median {np.median(kw):.2f} kW")


if __name__ == "__main__":
    main()
