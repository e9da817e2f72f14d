"""Write a golden case's ``expected.csv`` from OpenDSS's own solution of its ``Master.dss``.

    python tests/golden/make_opendss_expected.py tests/golden/<case>

The expected values come from the OpenDSS engine (opendssdirect.py), never from bayesflex:
each bus's phase-to-neutral voltage in pu of the base OpenDSS gives it (``VoltageBases``), and
each line's current magnitude at its first terminal, per phase (A).  Solved to 1e-10 pu; the
loads are constant power and stay above OpenDSS's 0.95 pu switch to constant impedance.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import opendssdirect as dss


def solve(master: Path) -> list[tuple[str, str, str, float]]:
    dss.Text.Command("clear")
    dss.Text.Command(f'compile "{master}"')
    dss.Text.Command("set tolerance=1e-10")
    dss.Text.Command("set maxiterations=100")
    dss.Text.Command("solve")
    if not dss.Solution.Converged():
        raise SystemExit(f"{master}: OpenDSS did not converge")
    rows = []
    for bus in dss.Circuit.AllBusNames():
        dss.Circuit.SetActiveBus(bus)
        base_v = dss.Bus.kVBase() * 1e3  # phase to neutral
        for node, mag in zip(dss.Bus.Nodes(), dss.Bus.VMagAngle()[::2]):
            if 1 <= node <= 3:
                rows.append(("v_pu", bus, "abc"[node - 1], mag / base_v))
    for name in dss.Lines.AllNames():
        dss.Circuit.SetActiveElement(f"Line.{name}")
        mags = dss.CktElement.CurrentsMagAng()[::2]
        for k in range(dss.CktElement.NumPhases()):
            rows.append(("i_line_a", name, "abc"[k], mags[k]))
    return rows


def main(case: str) -> None:
    folder = Path(case).resolve()  # OpenDSS changes the working directory
    rows = solve(folder / "Master.dss")
    with open(folder / "expected.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["quantity", "element", "phase", "value"])
        w.writerows((q, e, p, repr(v)) for q, e, p, v in rows)
    print(f"wrote {folder / 'expected.csv'}: {len(rows)} values")


if __name__ == "__main__":
    main(sys.argv[1])
