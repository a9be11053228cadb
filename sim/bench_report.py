"""The ``tessera bench --out DIR`` report: report.md and its PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path

from tessera.arch import PRESETS

from .bench import (
    BOARDS,
    LOSS_HELP,
    LOSSES,
    PUBLISHED,
    TARGET,
    BenchResult,
    LayerResult,
)
from .cyclemodel import CycleModel

__all__ = ["board_clocks", "effective_bandwidth", "short_names", "shortfall", "write_report"]

PLOTS = ("layers.png", "losses.png", "roofline.png")


def effective_bandwidth(config) -> float:
    """Bytes per cycle a LOAD of full bus beats sustains: ``mem_outstanding`` reads per round trip."""
    rt = config.mem_latency + 1
    return config.bus_bytes * min(1.0, config.mem_outstanding / rt)


def board_clocks(root: Path | None = None) -> list[dict]:
    """Clock of every board: ``build/synth/<board>/report.json``'s Fmax when present, else its config's target."""
    root = Path(root) if root else Path.cwd()
    rows = []
    for board in BOARDS:
        rep = root / "build" / "synth" / board / "report.json"
        cfg = PRESETS.get(board)
        row = {"board": board, "config": cfg.name if cfg else None, "mhz": None, "source": ""}
        if rep.exists():
            try:
                d = json.loads(rep.read_text())
                if d.get("fmax_mhz"):
                    row.update(mhz=float(d["fmax_mhz"]), config=d.get("config", row["config"]),
                               source=f"synthesized Fmax ({rep})")
            except (OSError, ValueError):
                pass
        if row["mhz"] is None and cfg is not None:
            row.update(mhz=cfg.clock_mhz, source=f"target clock of config {cfg.name!r} (no synthesis report)")
        if row["mhz"] is not None:
            rows.append(row)
    return rows


def _bound(config, L: LayerResult) -> tuple[float, bool]:
    ai = L.macs / L.bytes_moved if L.bytes_moved else float("inf")
    return ai, ai * effective_bandwidth(config) < TARGET * config.macs_per_cycle


def shortfall(config, L: LayerResult) -> str:
    """Why a layer is under TARGET: its largest loss, padding waste, memory-bound per roofline."""
    if L.cycles == 0 or L.utilization(config) >= TARGET:
        return ""
    why = []
    if L.macs == 0:
        return "no MACs (runs on the post-processing unit)"
    if L.losses:
        k = max(L.losses, key=L.losses.get)
        why.append(f"{k} {L.losses[k] / L.cycles:.0%} of its cycles ({LOSS_HELP[k]})")
        if k != "padding" and L.losses.get("padding", 0) > 0.05 * L.cycles:
            why.append(f"padding {L.losses['padding'] / L.cycles:.0%}")
    if L.issued_macs > L.macs * 1.05 and L.in_shape:
        cin = L.in_shape[1] if len(L.in_shape) > 1 else None
        cout = L.out_shape[1] if len(L.out_shape) > 1 else None
        bits = []
        if cin and cin % config.lanes:
            bits.append(f"{cin} input channels padded to {-(-cin // config.lanes) * config.lanes}")
        if cout and cout % config.rows:
            bits.append(f"{cout} output channels padded to {-(-cout // config.rows) * config.rows}")
        if bits:
            why.append(", ".join(bits))
    ai, mem = _bound(config, L)
    if mem:
        why.append(f"memory-bound per roofline ({ai:.1f} MACs/byte × {effective_bandwidth(config):.1f} B/cycle "
                   f"< {TARGET:.0%} of {config.macs_per_cycle} MACs/cycle)")
    return "; ".join(why)


def short_names(names: list[str], width: int = 32) -> list[str]:
    """Layer names for axis labels: the path prefix all share dropped, long ones cut (names differ early)."""
    parts = [n.split("/") for n in names]
    k = 0
    while len(names) > 1 and all(len(p) > k + 1 and p[k] == parts[0][k] for p in parts):
        k += 1
    out = []
    for p in parts:
        n = "/".join(p[k:])
        out.append(n if len(n) <= width else n[:width - 1] + "…")
    return out


def _plots(res: BenchResult, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = res.config
    Ls = res.layers
    names = short_names([L.name for L in Ls])
    x = range(len(Ls))
    made = []

    fig, ax = plt.subplots(3, 1, figsize=(max(8, 0.22 * len(Ls) + 3), 9), sharex=True)
    ax[0].bar(x, [L.macs / 1e6 for L in Ls], color="tab:blue")
    ax[0].set_ylabel("MACs (M)")
    ax[1].bar(x, [L.cycles / 1e3 for L in Ls], color="tab:orange")
    ax[1].set_ylabel("cycles (k)")
    ax[2].bar(x, [100 * L.utilization(c) for L in Ls],
              color=["tab:green" if L.utilization(c) >= TARGET else "tab:red" for L in Ls])
    ax[2].axhline(100 * TARGET, color="k", ls="--", lw=0.8)
    ax[2].set_ylabel("utilization (%)")
    ax[2].set_ylim(0, 105)
    ax[2].set_xticks(list(x))
    ax[2].set_xticklabels(names, rotation=90, fontsize=6)
    ax[0].set_title(f"{res.source or 'program'} on {c.name} ({res.backend}): {res.utilization:.1%} of "
                    f"{c.macs_per_cycle} MACs/cycle")
    fig.tight_layout()
    fig.savefig(out / "layers.png", dpi=110)
    plt.close(fig)
    made.append("layers.png")

    if any(L.losses for L in Ls):
        fig, axl = plt.subplots(figsize=(max(8, 0.22 * len(Ls) + 3), 5))
        bottom = [0.0] * len(Ls)
        useful = [L.macs / c.macs_per_cycle / 1e3 for L in Ls]
        axl.bar(x, useful, label="useful MACs", color="tab:green")
        bottom = useful[:]
        colors = {"padding": "tab:olive", "pipeline": "tab:purple", "dma": "tab:red", "dependency": "tab:orange",
                  "fetch": "tab:brown", "tail": "tab:gray"}
        for k in LOSSES:
            v = [L.losses.get(k, 0) / 1e3 for L in Ls]
            axl.bar(x, v, bottom=bottom, label=k, color=colors[k])
            bottom = [b + w for b, w in zip(bottom, v)]
        axl.set_ylabel("cycles (k)")
        axl.set_xticks(list(x))
        axl.set_xticklabels(names, rotation=90, fontsize=6)
        axl.legend(fontsize=7, ncol=4)
        axl.set_title("Where each layer's cycles go (cycle model's reasons)")
        fig.tight_layout()
        fig.savefig(out / "losses.png", dpi=110)
        plt.close(fig)
        made.append("losses.png")

    fig, axr = plt.subplots(figsize=(7, 5))
    pts = [(L.macs / L.bytes_moved, L.macs / L.cycles, L) for L in Ls if L.bytes_moved and L.cycles and L.macs]
    lo = min([p[0] for p in pts] + [0.5]) / 2
    hi = max([p[0] for p in pts] + [4 * c.macs_per_cycle / c.bus_bytes]) * 2
    import numpy as np
    ais = np.geomspace(lo, hi, 200)
    axr.loglog(ais, np.minimum(c.macs_per_cycle, ais * c.bus_bytes), "k-",
               label=f"roof: {c.macs_per_cycle} MACs/cycle, {c.bus_bytes} B/cycle port")
    eff = effective_bandwidth(c)
    if eff < c.bus_bytes:
        axr.loglog(ais, np.minimum(c.macs_per_cycle, ais * eff), "k--",
                   label=f"LOAD rate: {c.mem_outstanding} reads per {c.mem_latency + 1} cycles = {eff:.1f} B/cycle")
    if pts:
        axr.scatter([p[0] for p in pts], [p[1] for p in pts], s=14,
                    c=["tab:green" if p[2].utilization(c) >= TARGET else "tab:red" for p in pts], zorder=3)
    axr.set_xlabel("arithmetic intensity (MACs per byte moved to/from external memory)")
    axr.set_ylabel("MACs per cycle")
    axr.set_title(f"Roofline, config {c.name}")
    axr.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "roofline.png", dpi=110)
    plt.close(fig)
    made.append("roofline.png")
    return made


def write_report(res: BenchResult, out, *, root=None, command: str | None = None) -> Path:
    """Write ``out/report.md`` and the plots; returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = res.config
    plots = _plots(res, out)
    tm = CycleModel(c).timing
    lines = [f"# Utilization report: {res.source or 'program'} on `{c.name}` ({res.backend} backend)", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [(f"- Config `{c.name}`: {c.rows}×{c.lanes} = {c.macs_per_cycle} int8 MACs/cycle, memory port "
              f"{c.bus_bytes} B/cycle ({c.mem_outstanding} reads in flight, latency {c.mem_latency}: a LOAD "
              f"sustains {effective_bandwidth(c):.1f} B/cycle)"),
              f"- Cycles: **{res.cycles:,}**" + (f" (cycle model: {res.model_cycles:,}, "
                                                  f"{(res.model_cycles - res.cycles) / res.cycles:+.2%})"
                                                  if res.backend == "rtl" and res.model_cycles else ""),
              (f"- MACs of the model: {res.macs:,}; issued by the array (padded channels included): "
              f"{res.issued_macs:,}"),
              (f"- **Utilization: {res.utilization:.1%}** of peak (model MACs / (cycles × {c.macs_per_cycle}));"
              f" array busy {res.issued_macs / (res.cycles * c.macs_per_cycle):.1%}"),
              ""]
    for n in res.notes:
        lines.append(f"> Note: {n}")
    if res.notes:
        lines.append("")
    lines += ["Layer cycles: the span from the previous layer's completion to the completion of this layer's "
              "last instruction (layers in graph order), so the layers add up to the run. Losses (cycle model): "
              + "; ".join(f"**{k}**: {v}" for k, v in LOSS_HELP.items()) + ".", ""]

    lines += ["## Projected latency at batch 1", "",
              "| board | config | clock | source | latency | images/s | GMAC/s |", "|---|---|---:|---|---:|---:|---:|"]
    for b in board_clocks(root):
        same = b["config"] == c.name
        ms = res.cycles / (b["mhz"] * 1e3)
        note = "" if same else f" (cycles of `{c.name}`, clock of `{b['config']}`)"
        lines.append(f"| {b['board']} | {b['config']}{note} | {b['mhz']:.1f} MHz | {b['source']} | {ms:.2f} ms "
                     f"| {1000 / ms:.1f} | {res.macs / (ms * 1e6):.1f} |")
    lines += ["", ("Only rows whose config is this program's are a projection of this hardware; the others "
              "show these cycles at another board's clock."), ""]

    lines += ["## Against published batch-1 figures", "",
              "| system | utilization at batch 1 | source | what the number is |", "|---|---:|---|---|",
              (f"| **Tessera `{c.name}`** ({res.backend}) | **{res.utilization:.1%}** | this report | model MACs / "
              f"(cycles × peak) |")]
    for p in PUBLISHED:
        lines.append(f"| {p['system']} | {p['utilization']} | {p['source']} ({p['url']}) | {p['note']} |")
    lines += ["", ("The titles, authors and venues above were checked; the percentages are the summary figures "
              "given in issue 9, not re-derived here."), ""]

    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]

    if res.layers:
        lines += ["## Layers", "",
                  "| # | layer | op | MACs | cycles | util. | MACs/byte | " + " | ".join(LOSSES) + " | below 85 % because |",
                  "|---:|---|---|---:|---:|---:|---:|" + "---:|" * len(LOSSES) + "---|"]
        for i, L in enumerate(res.layers):
            ai = f"{L.macs / L.bytes_moved:.1f}" if L.bytes_moved else "–"
            loss = " | ".join(f"{L.losses.get(k, 0):,}" if L.losses else "–" for k in LOSSES)
            lines.append(f"| {i} | {L.name} | {L.op} | {L.macs:,} | {L.cycles:,} | {L.utilization(c):.1%} | {ai} | "
                         f"{loss} | {shortfall(c, L)} |")
        lines.append("")
        below = [L for L in res.layers if L.cycles and L.utilization(c) < TARGET]
        share = sum(L.cycles for L in below) / max(1, sum(L.cycles for L in res.layers))
        lines += [(f"{len(below)} of {len(res.layers)} layers are below {TARGET:.0%}; they take {share:.1%} of the "
                  f"cycles."), ""]
    lines += [f"Timing constants of the cycle model for this config: {tm}", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

