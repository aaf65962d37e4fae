"""Fig. 4 outputs: a JSON of results and plotly figures (HTML + PNG).

Figures are built from the JSON alone, so a saved result can be re-plotted. PNGs come from
plotly + kaleido (which drives a local Chrome/Chromium); where that is unavailable the PNG is
drawn with matplotlib from the same numbers and the JSON/return value says so.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ...errors import UserError
from .distance import mean_se
from .fig4 import METRICS, SweepResult, summarize

# SIMS paper, Sec. 4.2.1: E[dist(G^inf)]/E[dist(G^1)] (standard training, SIMS at its best omega)
PAPER_FIG4 = {125: (1.71, 0.996), 250: (2.46, 1.013), 500: (3.99, 1.078), 1000: (6.69, 1.204)}
PAPER_SETTINGS = "1000 runs x 100 generations, DDPM MLP (toy-diffusion), W distance, best omega ~ 3"


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def build_report(result: SweepResult, world, seconds: float | None = None) -> dict:
    """Everything the figures and the README table need, JSON-ready."""
    cfg = result.config
    out = {"world": dataclasses.asdict(world), "config": dataclasses.asdict(cfg),
           "recipe": getattr(cfg.loop.diffusion, "name", None),
           "wall_seconds": seconds, "paper_fig4": {str(k): {"standard": v[0], "sims_best": v[1]}
                                                   for k, v in PAPER_FIG4.items()},
           "paper_settings": PAPER_SETTINGS, "metrics": {}}
    for metric in METRICS:
        s = summarize(result, metric)
        loops = []
        for (size, omega), res in result.loops.items():
            dist = getattr(res, metric)
            cell = s["cells"][(size, omega)]
            loops.append({"n_syn": size, "omega": omega, "mean": dist.mean(1), "std": dist.std(1),
                          "ratio_curve": cell["curve"], "converged_ratio": cell["ratio"], "converged_se": cell["se"]})
        gen1 = [{"omega": o, **mean_se(v[metric])} for o, v in sorted(result.gen1.items())]
        out["metrics"][metric] = {"table": s["table"], "loops": loops, "gen1": gen1}
    return _jsonable(out)


def _converged_mean(report: dict, metric: str, size: int, omega) -> float | None:
    """E[dist(G^inf)] itself (not the ratio) of one loop, from the per-generation means."""
    start = report["config"]["converged_from"] - 1
    for cell in report["metrics"][metric]["loops"]:
        if cell["n_syn"] == size and omega is not None and cell["omega"] == float(omega):
            return float(np.mean(cell["mean"][start:]))
    return None


def table_markdown(report: dict, metric: str = "w2_ot") -> str:
    """Our Fig. 4 table beside the paper's, as Markdown (ratios, then E[dist(G^inf)] itself)."""
    rows = report["metrics"][metric]["table"]
    lines = ["| |D_s^t| | standard (ours) | standard (paper) | SIMS best (ours) | best ω (ours) | SIMS best (paper) "
             "| E[dist(G^∞)] standard / SIMS best (ours) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = report["paper_fig4"].get(str(r["n_syn"]), {})
        sims = "-" if r["sims_best"] is None else f"{r['sims_best']:.3f} ± {r['sims_best_se']:.3f}"
        d_std = _converged_mean(report, metric, r["n_syn"], 0.0)
        d_sims = _converged_mean(report, metric, r["n_syn"], r["best_omega"])
        absolute = f"{d_std:.3f} / " + ("-" if d_sims is None else f"{d_sims:.3f}")
        lines.append(f"| {r['n_syn']} | {r['standard']:.3f} ± {r['standard_se']:.3f} | "
                     f"{paper.get('standard', '-')} | {sims} | {r['best_omega']} | {paper.get('sims_best', '-')} "
                     f"| {absolute} |")
    return "\n".join(lines)


def make_figures(report: dict, metric: str = "w2_ot") -> dict:
    """{name: plotly Figure}: ratio vs generation, converged ratio vs omega, generation-1 distance vs omega."""
    import plotly.colors
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    m = report["metrics"][metric]
    label = {"w2_ot": "exact-OT W2", "w2_gauss": "Gaussian W2"}[metric]
    figs = {}
    sizes = sorted({c["n_syn"] for c in m["loops"]})
    omegas = sorted({c["omega"] for c in m["loops"]})
    colors = plotly.colors.qualitative.Plotly
    fig = make_subplots(rows=1, cols=len(sizes), shared_yaxes=True,
                        subplot_titles=[f"|D_s|={s}" for s in sizes])
    for cell in m["loops"]:
        k = omegas.index(cell["omega"])
        t = list(range(1, len(cell["ratio_curve"]) + 1))
        fig.add_trace(go.Scatter(x=t, y=cell["ratio_curve"], mode="lines", name=f"ω={cell['omega']:g}",
                                 legendgroup=str(k), showlegend=cell["n_syn"] == sizes[0],
                                 line={"color": colors[k % len(colors)]}),
                      row=1, col=sizes.index(cell["n_syn"]) + 1)
    fig.update_layout(title=f"E[dist(G^t)] / E[dist(G^1)] ({label})", yaxis_title="distance ratio",
                      width=300 * len(sizes) + 150, height=420)
    fig.update_xaxes(title_text="generation t")
    figs["ratio_vs_generation"] = fig
    fig = go.Figure()
    for size in sorted({c["n_syn"] for c in m["loops"]}):
        cells = sorted((c for c in m["loops"] if c["n_syn"] == size), key=lambda c: c["omega"])
        fig.add_trace(go.Scatter(x=[c["omega"] for c in cells], y=[c["converged_ratio"] for c in cells],
                                 error_y={"type": "data", "array": [c["converged_se"] or 0 for c in cells]},
                                 mode="lines+markers", name=f"|D_s|={size}"))
    fig.add_hline(y=1.0, line_dash="dot")
    fig.update_layout(title=f"E[dist(G^∞)] / E[dist(G^1)] vs ω ({label})", xaxis_title="ω",
                      yaxis_title="converged ratio")
    figs["converged_vs_omega"] = fig
    g = m["gen1"]
    fig = go.Figure(go.Scatter(x=[c["omega"] for c in g], y=[c["mean"] for c in g], mode="lines+markers",
                               error_y={"type": "data", "array": [c["se"] or 0 for c in g]}))
    fig.update_layout(title=f"E[dist(G^1)] vs ω ({label})", xaxis_title="ω", yaxis_title="distance")
    figs["gen1_vs_omega"] = fig
    return figs


def _png_matplotlib(fig, path: Path):
    """Draw a plotly figure's line traces with matplotlib (same data, one panel per plotly x-axis)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = sorted({tr.xaxis or "x" for tr in fig.data}, key=lambda a: int(a[1:] or 1))
    f, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels) + 3, 4.5), sharey=True, squeeze=False)
    titles = [a.text for a in fig.layout.annotations] if fig.layout.annotations else []
    for i, ax in enumerate(axes[0]):
        for tr in (t for t in fig.data if (t.xaxis or "x") == panels[i]):
            err = tr.error_y.array if tr.error_y is not None and tr.error_y.array is not None else None
            ax.errorbar(list(tr.x), list(tr.y), yerr=None if err is None else list(err), label=tr.name,
                        color=tr.line.color if tr.line is not None else None,
                        marker="o" if "markers" in (tr.mode or "") else None, lw=1, ms=3)
        ax.set_title(titles[i] if i < len(titles) else "", fontsize=9)
        ax.set_xlabel(fig.layout.xaxis.title.text or "generation t")
    axes[0][0].set_ylabel(fig.layout.yaxis.title.text)
    f.suptitle(fig.layout.title.text)
    if any(tr.name for tr in fig.data):
        handles, labels = axes[0][0].get_legend_handles_labels()
        f.legend(handles, labels, fontsize=7, loc="center right")
    f.tight_layout(rect=(0, 0, 0.9, 1))
    f.savefig(path, dpi=120)
    plt.close(f)


def write_figures(figs: dict, out_dir, png: str = "auto", prefix: str = "fig4_") -> dict:
    """Write <prefix><name>.html (+ .png); returns {'files': [...], 'png_renderer': str}."""
    if png not in ("auto", "kaleido", "matplotlib", "none"):
        raise UserError(f"png must be auto, kaleido, matplotlib or none (got {png!r}).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, fig in figs.items():
        path = out_dir / f"{prefix}{name}.html"
        fig.write_html(path, include_plotlyjs="cdn")
        files.append(str(path))
    renderer = "none"
    if png in ("auto", "kaleido"):
        try:
            import plotly.io as pio
            paths = [out_dir / f"{prefix}{n}.png" for n in figs]
            # kaleido renders at 700x500 unless told: hand it each figure's own layout size
            pio.write_images(list(figs.values()), paths, width=[f.layout.width for f in figs.values()],
                             height=[f.layout.height for f in figs.values()])
            files += [str(p) for p in paths]
            renderer = "kaleido"
        except Exception as e:  # kaleido missing or no Chrome: say so, then draw with matplotlib
            if png == "kaleido":
                raise UserError(f"PNG export with kaleido failed ({e}). Install kaleido>=1 and Chrome/Chromium, "
                                f"or pass --png matplotlib.") from e
            renderer = f"matplotlib (kaleido unavailable: {type(e).__name__}: {e})"
    if png == "matplotlib" or renderer.startswith("matplotlib"):
        for name, fig in figs.items():
            path = out_dir / f"{prefix}{name}.png"
            _png_matplotlib(fig, path)
            files.append(str(path))
        renderer = renderer if renderer.startswith("matplotlib") else "matplotlib"
    return {"files": files, "png_renderer": renderer}


def write_report(report: dict, out_dir, png: str = "auto") -> dict:
    """results.json + figures for both distance views; returns what was written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"files": [], "png_renderer": None}
    for metric in METRICS:
        w = write_figures(make_figures(report, metric), out_dir, png, prefix=f"fig4_{metric}_")
        written["files"] += w["files"]
        written["png_renderer"] = w["png_renderer"]
    report = {**report, "png_renderer": written["png_renderer"]}
    path = out_dir / "results.json"
    path.write_text(json.dumps(report, indent=1))
    written["files"].insert(0, str(path))
    return written


def merge_reports(reports: list[dict]) -> dict:
    """Join reports of one sweep split by |D_s| (same seed and settings otherwise) into one."""
    if not reports:
        raise UserError("Nothing to merge: give at least one results.json.")
    first = reports[0]
    key = lambda r: {k: v for k, v in r["config"]["loop"].items() if k != "n_syn"}  # noqa: E731
    for r in reports[1:]:
        if key(r) != key(first) or r["config"]["omegas"] != first["config"]["omegas"] or r["world"] != first["world"]:
            raise UserError("These results come from different settings (seed, runs, omegas, world...); "
                            "only shards of one sweep that differ in --sizes can be merged.")
    merged = json.loads(json.dumps(first))
    merged["config"]["sizes"] = sorted({s for r in reports for s in r["config"]["sizes"]})
    merged["wall_seconds"] = [r.get("wall_seconds") for r in reports]
    for metric, m in merged["metrics"].items():
        loops = {(c["n_syn"], c["omega"]): c for r in reports for c in r["metrics"][metric]["loops"]}
        table = {row["n_syn"]: row for r in reports for row in r["metrics"][metric]["table"]}
        m["loops"] = [loops[k] for k in sorted(loops)]
        m["table"] = [table[k] for k in sorted(table)]
    return merged
