"""Feeder -> a factorised phase-frame network model for the batched load flow.

The network is linear; only the constant-power loads are not.  We assemble
the phase-frame bus admittance matrix (3 nodes per bus, neutral Kron-reduced
and grounded), eliminate the source, and factorise once.  Then every node
voltage and every branch current is an affine function of the currents
injected at the *load nodes* (the bus-phases where agents connect):

    V_all = V0_all + W_all @ I_L        I_branch = I0_branch + K_branch @ I_L

``V0`` are the no-load voltages, ``W`` the impedance seen from the load nodes.
The load flow iterates only on the load nodes (``Z_LL = W[L]``), then
recovers everything else by one product.

Per unit: voltages on each bus's phase-to-neutral base ``vn_kv / sqrt(3)``,
power base ``S_PHASE_MVA`` per phase.  Elements given by sequence data
(transformers, the source) enter through ``Y_abc = A Y_012 A^-1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from bayesflex.errors import FeederError
from bayesflex.grid.sequence import PHASE_TO_SEQ, SEQ_TO_PHASE

if TYPE_CHECKING:  # the model is built from a Feeder, which holds it: the type only, for the annotations
    from bayesflex.grid.feeder import Feeder, Transformer

__all__ = ["NetworkModel", "build_model", "S_PHASE_MVA"]

#: per-phase power base of the per-unit system, MVA
S_PHASE_MVA = 1.0


@dataclass(frozen=True, eq=False)
class BranchRows:
    """Affine map from load-node currents to branch current magnitudes.

    ``rows`` are the distinct rows (``i0`` | ``k``) in amperes; ``inverse``
    maps each (branch end, phase) back to its row.  Series-chain lines carry
    the same current, so there are far fewer distinct rows than branches.
    """

    i0_a: np.ndarray  # (rows,)
    k_a: np.ndarray  # (rows, n_load_nodes)  amperes per pu load current
    inverse: np.ndarray  # (n_branch_ends, 3) -> row


@dataclass(frozen=True, eq=False)
class NetworkModel:
    """Everything the load-flow kernels need, as plain arrays (per unit)."""

    n_bus: int
    load_nodes: np.ndarray  # (L,) node index = bus * 3 + phase
    agent_cols: np.ndarray  # (C,) flat (agent*3 + phase) columns with a connection
    agent_to_load: np.ndarray  # (C, L) 0/1: sums agent-phase powers onto load nodes
    v0_l: np.ndarray  # (L,) complex no-load voltage at load nodes
    z_ll: np.ndarray  # (L, L) complex
    v0_all: np.ndarray  # (3 * n_bus,) complex
    w_all_t: np.ndarray  # (L, 3 * n_bus) complex, transposed for row-major products
    vmon_v0: np.ndarray  # (R,) distinct monitored voltage rows, phase a rows first, then b, c
    vmon_w_t: np.ndarray  # (L, R)
    vmon_phase_start: np.ndarray  # (3,) first row of each phase in vmon_*
    vmon_bus: np.ndarray  # (M,) the monitored buses (all but the source bus)
    vmon_row: np.ndarray  # (M, 3) each monitored bus-phase -> its row in vmon_*
    line_rows: BranchRows  # from end then to end, per line
    line_i_max_a: np.ndarray
    line_rating_per_row_a: np.ndarray  # (rows,) the smallest rating among the branch ends sharing a row
    trafo_rows: BranchRows  # per transformer: hv end then lv end
    trafo_i_rated_a: np.ndarray  # (n_trafo, 2) hv, lv
    source_rows: BranchRows  # source current per phase (complex: the source power needs it)
    source_v: np.ndarray  # (3,) indices of the source bus nodes
    s_base_kva: float
    v_base_v: np.ndarray  # (n_bus,) phase-to-neutral base voltage
    #: tables derived from the model once and kept with it (and so sent with it to workers): the
    #: heuristic's constraint table per set of limits
    derived: dict = field(default_factory=dict, repr=False)

    @property
    def n_load_nodes(self) -> int:
        return len(self.load_nodes)


def _bus_bases(feeder: Feeder) -> tuple[np.ndarray, np.ndarray]:
    vn = feeder.bus_vn_kv
    z_base = vn**2 / (3 * S_PHASE_MVA)  # ohm
    i_base = S_PHASE_MVA * 1e6 / (vn * 1e3 / math.sqrt(3))  # A
    return z_base, i_base


def trafo_sequence_blocks(t: Transformer, vn_hv_bus: float, vn_lv_bus: float) -> np.ndarray:
    """Per-unit 2-port admittance of a transformer per sequence.

    Returns ``(3, 2, 2)``: sequence 0, 1, 2; ports (hv, lv).  Follows
    pandapower's ``runpp_3ph`` model (T model with the series impedance split
    by ``leakage_ratio_hv`` around the magnetising branch, taps as an ideal
    ratio on the HV side, phase shift +/- ``shift_degree``).
    """
    if t.vector_group != "Dyn":
        raise FeederError(t.name, f"vector group {t.vector_group!r} not supported (allowed: Dyn)")
    vn_hv_t, vn_lv_t = t.rated_kv()
    sn_mva = t.sn_kva / 1e3
    tap_lv = (vn_lv_t / vn_lv_bus) ** 2 * 3 * S_PHASE_MVA
    z = t.vk_percent / 100 / sn_mva * tap_lv
    r = t.vkr_percent / 100 / sn_mva * tap_lv
    x = math.sqrt(z**2 - r**2)
    # magnetising admittance, per unit, as pandapower computes it
    base_z = vn_lv_bus**2 / (3 * S_PHASE_MVA)
    g_mva = t.pfe_kw * 1e-3 / 3
    ym_mva = t.i0_percent / 3 / 100 * sn_mva
    b_mva = -math.sqrt(max(ym_mva**2 - g_mva**2, 0.0))
    corr = base_z / (vn_lv_t**2 / 3) / (vn_lv_t / vn_lv_bus) ** 2
    ym = complex(g_mva * corr, b_mva * corr)
    if ym != 0:
        za = complex(r * t.leakage_ratio_hv, x * t.leakage_ratio_hv)
        zb = complex(r, x) - za
        zc = 1 / ym
        zsum = za * zb + za * zc + zb * zc
        ys, yf, yt = zc / zsum, zb / zsum, za / zsum
    else:
        ys, yf, yt = 1 / complex(r, x), 0j, 0j
    ratio = (vn_hv_t / vn_hv_bus) / (vn_lv_t / vn_lv_bus)
    out = np.zeros((3, 2, 2), complex)
    for seq, sign in ((1, 1), (2, -1)):
        tap = ratio * np.exp(1j * math.radians(sign * t.shift_degree))
        out[seq] = [[(ys + yf) / abs(tap) ** 2, -ys / np.conj(tap)], [-ys / tap, ys + yt]]
    # zero sequence, Dyn: HV delta blocks it; LV sees z_lv + (z_hv || z_mag) to ground
    z0 = t.vk0_percent / 100 / sn_mva * tap_lv
    r0 = t.vkr0_percent / 100 / sn_mva * tap_lv
    z0k = complex(r0, math.sqrt(z0**2 - r0**2))
    z_hv, z_lv = t.si0_hv_partial * z0k, (1 - t.si0_hv_partial) * z0k
    if math.isinf(t.mag0_percent):
        y0 = 1 / z0k
    else:
        zm_abs = z0 * t.mag0_percent / 100
        xm = zm_abs / math.sqrt(t.mag0_rx**2 + 1)
        zm = complex(xm * t.mag0_rx, xm)
        y0 = 1 / (z_lv + z_hv * zm / (z_hv + zm))
    out[0] = [[0, 0], [0, y0]]
    return out


def _seq_to_abc(y012: np.ndarray) -> np.ndarray:
    return SEQ_TO_PHASE @ np.diag(y012) @ PHASE_TO_SEQ


def _assemble(feeder: Feeder):
    """Phase-frame Ybus (3N x 3N, pu) and the per-branch 3x3 blocks."""
    nb = feeder.n_bus
    z_base, _ = _bus_bases(feeder)
    rows, cols, vals = [], [], []

    def add(bi, bj, blocks: np.ndarray) -> None:
        """Stamp 3x3 ``blocks (n, 3, 3)`` at bus pairs ``(bi, bj)``."""
        shape = np.shape(blocks)
        ph = np.arange(3)
        rows.append(np.broadcast_to(3 * np.asarray(bi)[:, None, None] + ph[:, None], shape).ravel())
        cols.append(np.broadcast_to(3 * np.asarray(bj)[:, None, None] + ph[None, :], shape).ravel())
        vals.append(np.asarray(blocks).ravel())

    zb = z_base[feeder.line_from]
    z_pu = feeder.line_z_ohm / zb[:, None, None]
    ys = np.linalg.inv(z_pu)
    ysh = feeder.line_y_s * zb[:, None, None] / 2
    line_ff, line_ft = ys + ysh, -ys
    f, t = feeder.line_from, feeder.line_to
    add(f, f, line_ff)
    add(t, t, line_ff)
    add(f, t, line_ft)
    add(t, f, line_ft)
    trafo_blocks = []
    for t in feeder.trafos:
        seq = trafo_sequence_blocks(t, feeder.bus_vn_kv[t.hv_bus], feeder.bus_vn_kv[t.lv_bus])
        blk = np.empty((2, 2, 3, 3), complex)
        for a in range(2):
            for b in range(2):
                blk[a, b] = _seq_to_abc(seq[:, a, b])
        trafo_blocks.append(blk)
        for a, ba in enumerate((t.hv_bus, t.lv_bus)):
            for b, bb in enumerate((t.hv_bus, t.lv_bus)):
                add([ba], [bb], blk[a, b][None])
    y = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(3 * nb, 3 * nb)
    ).tocsr()
    return y, line_ff, line_ft, trafo_blocks


def _unique_rows(i0: np.ndarray, k: np.ndarray, shape: tuple[int, int]) -> BranchRows:
    """Merge identical affine rows (to 1e-11 of the largest entry)."""
    full = np.concatenate([i0[:, None], k], axis=1)
    scale = np.abs(full).max() or 1.0
    key = np.round(np.concatenate([full.real, full.imag], axis=1) / scale * 1e11).astype(np.int64)
    key = np.ascontiguousarray(key).view(np.dtype((np.void, key.itemsize * key.shape[1]))).ravel()
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return BranchRows(
        i0_a=np.ascontiguousarray(i0[first]),
        k_a=np.ascontiguousarray(k[first]),
        inverse=inverse.reshape(shape),
    )


def build_model(feeder: Feeder) -> NetworkModel:
    """Assemble, eliminate the source and factorise; see the module docstring."""
    nb = feeder.n_bus
    y, line_ff, line_ft, trafo_blocks = _assemble(feeder)
    src = feeder.source
    s_nodes = 3 * src.bus + np.arange(3)
    z_base_src = feeder.bus_vn_kv[src.bus] ** 2 / (3 * S_PHASE_MVA)

    # change of variables at the source bus: its three nodes become sequence
    # quantities (V_abc = A V_012 for the columns, A^-1 on the KCL rows)
    t_right = sp.identity(3 * nb, dtype=complex, format="lil")
    t_left = sp.identity(3 * nb, dtype=complex, format="lil")
    for i in range(3):
        for j in range(3):
            t_right[s_nodes[i], s_nodes[j]] = SEQ_TO_PHASE[i, j]
            t_left[s_nodes[i], s_nodes[j]] = PHASE_TO_SEQ[i, j]
    y_seq = (t_left.tocsr() @ y @ t_right.tocsr()).tolil()
    e = src.vm_pu * np.exp(1j * math.radians(src.va_degree))
    for k, z in ((0, src.z0_ohm), (2, src.z2_ohm)):
        if np.isfinite(z):
            y_seq[s_nodes[k], s_nodes[k]] += 1 / (complex(z) / z_base_src)
    ideal = complex(src.z1_ohm) == 0
    rhs_full = np.zeros(3 * nb, complex)
    if ideal:
        unknown = np.setdiff1d(np.arange(3 * nb), [s_nodes[1]])
    else:
        y1 = 1 / (complex(src.z1_ohm) / z_base_src)
        y_seq[s_nodes[1], s_nodes[1]] += y1
        rhs_full[s_nodes[1]] = y1 * e
        unknown = np.arange(3 * nb)
    y_seq = y_seq.tocsc()
    y_uu = y_seq[unknown][:, unknown].tocsc()
    rhs = rhs_full[unknown]
    if ideal:
        rhs = rhs - y_seq[unknown][:, [s_nodes[1]]].toarray().ravel() * e
    try:
        lu = spla.splu(y_uu)
    except RuntimeError as err:  # singular: a part of the network floats
        raise FeederError(feeder.origin, f"network admittance matrix is singular ({err}); "
                          "is the zero sequence grounded somewhere?") from err

    # load nodes: bus-phases with at least one agent
    conn = feeder.agent_phases
    agent_cols = np.flatnonzero(conn.ravel())
    agent_nodes = (3 * feeder.agent_bus[:, None] + np.arange(3))[conn]
    load_nodes, which = np.unique(agent_nodes, return_inverse=True)
    agent_to_load = np.zeros((len(agent_cols), len(load_nodes)))
    agent_to_load[np.arange(len(agent_cols)), which] = 1.0
    pos_in_u = np.full(3 * nb, -1)
    pos_in_u[unknown] = np.arange(len(unknown))

    # unit current injections at the load nodes (abc nodes, never source nodes)
    inj = np.zeros((len(unknown), len(load_nodes)), complex)
    inj[pos_in_u[load_nodes], np.arange(len(load_nodes))] = 1.0
    x_u = lu.solve(np.column_stack([rhs, inj]))
    x_full = np.zeros((3 * nb, 1 + len(load_nodes)), complex)
    x_full[unknown] = x_u
    if ideal:
        x_full[s_nodes[1], 0] = e
    x_full[s_nodes] = SEQ_TO_PHASE @ x_full[s_nodes]  # back to abc at the source bus
    v0_all, w_all = x_full[:, 0], x_full[:, 1:]

    # source current into the network (pu): KCL at the source nodes, Y_abc V
    src_rows = (y[s_nodes] @ x_full)  # (3, 1 + L)
    _, i_base = _bus_bases(feeder)

    def branch_rows(blocks_from, blocks_to, bus_from, bus_to, i_base_rows):
        """Current (A) at one branch end: (n, 3) rows of (i0 | k)."""
        vf = x_full.reshape(nb, 3, -1)[bus_from]  # (n, 3, 1+L)
        vt = x_full.reshape(nb, 3, -1)[bus_to]
        cur = np.einsum("nij,njk->nik", blocks_from, vf) + np.einsum("nij,njk->nik", blocks_to, vt)
        return cur * i_base_rows[:, None, None]

    lf, lt = feeder.line_from, feeder.line_to
    line_from_end = branch_rows(line_ff, line_ft, lf, lt, i_base[lf])
    line_to_end = branch_rows(line_ff, line_ft, lt, lf, i_base[lt])
    both = np.concatenate([line_from_end, line_to_end]).reshape(-1, 1 + len(load_nodes))
    line_rows = _unique_rows(both[:, 0], both[:, 1:], (2 * feeder.n_line, 3))
    rating_per_row = np.full(len(line_rows.i0_a), np.inf)
    np.minimum.at(rating_per_row, line_rows.inverse, np.tile(feeder.line_i_max_a, 2)[:, None].repeat(3, 1))

    tr_list, rated = [], []
    for t, blk in zip(feeder.trafos, trafo_blocks):
        hv = branch_rows(blk[0, 0][None], blk[0, 1][None], np.array([t.hv_bus]), np.array([t.lv_bus]),
                         i_base[[t.hv_bus]])
        lv = branch_rows(blk[1, 1][None], blk[1, 0][None], np.array([t.lv_bus]), np.array([t.hv_bus]),
                         i_base[[t.lv_bus]])
        tr_list += [hv, lv]
        rated.append([t.sn_kva / (math.sqrt(3) * t.vn_hv_kv), t.sn_kva / (math.sqrt(3) * t.vn_lv_kv)])
    if tr_list:
        tr = np.concatenate(tr_list).reshape(-1, 1 + len(load_nodes))
        trafo_rows = BranchRows(i0_a=tr[:, 0].copy(), k_a=tr[:, 1:].copy(),
                                inverse=np.arange(len(tr)).reshape(-1, 3))
    else:
        trafo_rows = BranchRows(np.zeros(0, complex), np.zeros((0, len(load_nodes)), complex),
                                np.zeros((0, 3), np.int64))
    src_a = src_rows * i_base[src.bus]
    mon = np.setdiff1d(np.arange(nb), [src.bus])
    # distinct monitored voltage rows per phase (a bus with no load beyond it
    # has its parent's voltage): fewer rows for the reductions
    v_rows, starts = [], []
    for ph in range(3):
        nodes = 3 * mon + ph
        u = _unique_rows(v0_all[nodes], w_all[nodes], (len(nodes), 1))
        starts.append(sum(len(r.i0_a) for r in v_rows))
        v_rows.append(u)
    vmon_row = np.stack([u.inverse[:, 0] + s for u, s in zip(v_rows, starts)], axis=1)
    return NetworkModel(
        n_bus=nb,
        load_nodes=load_nodes,
        agent_cols=agent_cols,
        agent_to_load=agent_to_load,
        v0_l=v0_all[load_nodes].copy(),
        z_ll=w_all[load_nodes].copy(),
        v0_all=v0_all,
        w_all_t=np.ascontiguousarray(w_all.T),
        vmon_v0=np.concatenate([r.i0_a for r in v_rows]),
        vmon_w_t=np.ascontiguousarray(np.concatenate([r.k_a for r in v_rows]).T),
        vmon_phase_start=np.array(starts),
        vmon_bus=mon,
        vmon_row=vmon_row,
        line_rows=line_rows,
        line_i_max_a=np.asarray(feeder.line_i_max_a, float),
        line_rating_per_row_a=rating_per_row,
        trafo_rows=trafo_rows,
        trafo_i_rated_a=np.array(rated, float).reshape(-1, 2),
        source_rows=BranchRows(i0_a=src_a[:, 0].copy(), k_a=src_a[:, 1:].copy(),
                               inverse=np.arange(3).reshape(1, 3)),
        source_v=s_nodes,
        s_base_kva=S_PHASE_MVA * 1e3,
        v_base_v=feeder.bus_vn_kv * 1e3 / math.sqrt(3),
    )
