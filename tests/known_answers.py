"""A network whose load flow has a closed form, for tests with a known answer.

One bus at the end of one cable from an ideal source, the cable's phases not
coupled (a diagonal impedance matrix, the neutral ideal): each phase's voltage
then follows from that phase's own power alone.  With the bus voltage ``V``
taken as the angle reference, ``E V = V^2 + Z (P - jQ)`` per phase, so
``|E|^2 V^2 = |V^2 - jZQ + Z P|^2``: a quadratic in ``P``.  Nothing here calls
bayesflex's solver.
"""

from __future__ import annotations

import math

import numpy as np

import bayesflex as bf
from bayesflex.grid.feeder import Source

V_BASE = 416 / math.sqrt(3)  # volts, phase to neutral (the source, 1.0 pu)


def series_feeder(z_ohm, phases=(True, True, True), name: str = "series") -> bf.Feeder:
    """A source, one cable with impedance ``z_ohm[k]`` on phase k (no coupling) and one agent on ``phases``."""
    feeder = bf.Feeder.build(
        name=name, origin="tests/known_answers.py", f_hz=50.0, buses=("src", "bus"),
        bus_vn_kv=[0.416, 0.416], lines=("cable",), line_from=[0], line_to=[1], line_z_ohm=[np.diag(z_ohm)],
        line_y_s=np.zeros((1, 3, 3)), line_i_max_a=[1e4], trafos=(),
        source=Source(bus=0, vm_pu=1.0, va_degree=0.0, z1_ohm=0j, z2_ohm=1e-6 + 0j, z0_ohm=1e-6 + 0j),
        agents=("agent",), agent_bus=[1], agent_phases=[list(phases)],
        agent_p_kw=[[1.0 * p for p in phases]], agent_q_kvar=[[0.3 * p for p in phases]],
    )
    bf.validate_feeder(feeder)
    return feeder


def p_at_voltage_kw(z_ohm, v_pu, q_kvar):
    """Active power (kW) on a phase of :func:`series_feeder` that puts it at ``v_pu``, given its
    reactive power ``q_kvar``: the larger root of the quadratic (the root on the stable side of
    the nose; the other is negative).  Broadcasts."""
    z = np.asarray(z_ohm, complex)
    v = np.asarray(v_pu, float) * V_BASE
    w = v * v - 1j * z * np.asarray(q_kvar, float) * 1e3
    a, b, c = np.abs(z) ** 2, 2 * (np.conj(z) * w).real, np.abs(w) ** 2 - (V_BASE * v) ** 2
    return (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a) / 1e3
