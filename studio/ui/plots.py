"""Plotly figures of the studio (plotly.js ships with gradio: works offline)."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

PALETTE = ["#4f46e5", "#f97316", "#10b981", "#e11d48", "#0ea5e9", "#a855f7", "#eab308", "#14b8a6", "#64748b",
           "#84cc16", "#f43f5e", "#6366f1"]
LAYOUT = dict(template="plotly_white", margin=dict(l=56, r=20, t=44, b=40), height=340,
              legend=dict(orientation="h", yanchor="top", y=-0.2, x=0), font=dict(size=12))


def _fig(title: str, **kw) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=dict(text=title, x=0, font=dict(size=14)), **{**LAYOUT, **kw})
    return fig


def empty(title: str, note: str) -> go.Figure:
    """A titled placeholder that says what to do to fill it."""
    fig = _fig(title)
    fig.add_annotation(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=13, color="#64748b"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def probabilities(classes, probs, manual: str | None = None) -> go.Figure:
    """Classifier probabilities of one sample (the manual label, if any, outlined)."""
    if not probs:
        return empty("Class probabilities", "not labelled yet: run 'Label pool'")
    colors = ["#f97316" if c == manual else "#4f46e5" for c in classes]
    fig = _fig("Class probabilities" + (f" (manual label: {manual})" if manual else ""), height=260)
    fig.add_bar(x=[str(c) for c in classes], y=probs, marker_color=colors)
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return fig


def mix_bars(groups, base, target, mix) -> go.Figure:
    """Base fractions, target and auxiliary mix side by side per group."""
    fig = _fig("Base pool vs target vs auxiliary mix (S)", height=300, barmode="group")
    for name, vals, col in (("base pool", base, "#94a3b8"), ("target", target, "#4f46e5"),
                            ("aux mix (S)", mix, "#f97316")):
        if vals is not None:
            fig.add_bar(name=name, x=list(groups), y=[v / 100 for v in vals], marker_color=col)
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return fig


def composition(counts: dict, title: str = "Composition of S") -> go.Figure:
    """Members per group."""
    if not counts:
        return empty(title, "no set yet")
    fig = _fig(title, height=260)
    fig.add_bar(x=list(counts), y=list(counts.values()), marker_color=PALETTE[: len(counts)],
                text=list(counts.values()), textposition="outside", cliponaxis=False)
    fig.update_yaxes(range=[0, 1.15 * max(max(counts.values()), 1)])  # headroom for the labels above the bars
    return fig


def loss_curve(records: list[dict]) -> go.Figure:
    """Training loss vs kimg, with images/s on a second axis."""
    if not records:
        return empty("Loss", "start a fine-tune to see its loss curve")
    kimg = [r["kimg"] for r in records]
    fig = _fig("Loss vs images seen", height=300)
    fig.add_scatter(x=kimg, y=[r["loss"] for r in records], name="loss", mode="lines", line=dict(color="#4f46e5"))
    fig.add_scatter(x=kimg, y=[r.get("images_per_s") for r in records], name="images/s", yaxis="y2",
                    mode="lines", line=dict(color="#94a3b8", dash="dot"))
    fig.update_layout(xaxis_title="kimg", yaxis=dict(title="loss"),
                      yaxis2=dict(title="images/s", overlaying="y", side="right", showgrid=False))
    return fig


def fraction_vs_omega(curves: dict, target: dict | None, omega: float | None = None) -> go.Figure:
    """Group fractions (95% CI band) vs omega, with the target per group dashed."""
    fr = curves.get("fraction") or {}
    if not fr:
        return empty("Group fraction vs ω", "press 'Precompute ω grid' to measure")
    fig = _fig("Group fraction vs ω")
    for k, (g, pts) in enumerate(fr.items()):
        ws = sorted(pts)
        col = PALETTE[k % len(PALETTE)]
        lo, hi = [pts[w][1] for w in ws], [pts[w][2] for w in ws]
        fig.add_scatter(x=ws + ws[::-1], y=hi + lo[::-1], fill="toself", fillcolor=_alpha(col, 0.12), mode="lines",
                        line=dict(width=0), hoverinfo="skip", showlegend=False)
        fig.add_scatter(x=ws, y=[pts[w][0] for w in ws], name=g, mode="lines+markers", line=dict(color=col))
        if target and g in target:
            fig.add_hline(y=target[g], line=dict(color=col, dash="dash", width=1),
                          annotation_text=f"target {g}", annotation_position="top left")
    _omega_marker(fig, omega)
    fig.update_layout(xaxis_title="ω", yaxis=dict(range=[0, 1], tickformat=".0%"))
    return fig


def fd_vs_omega(curves: dict, metric: str, omega: float | None = None) -> go.Figure:
    """Per-group distance (and overall, reweighted) vs omega: the paper's bowl-shaped curves."""
    per = curves.get("fd_group") or {}
    if not per and not curves.get("fd"):
        return empty(f"Per-group {metric} vs ω", "measured with the ω grid (needs real reference images)")
    fig = _fig(f"Per-group {metric} vs ω (lower is better)")
    floors = curves.get("fd_floor") or {}
    for k, (g, pts) in enumerate(per.items()):
        ws = sorted(pts)
        col = PALETTE[k % len(PALETTE)]
        fig.add_scatter(x=ws, y=[pts[w][0] for w in ws], name=g, mode="lines+markers", line=dict(color=col))
        fl = floors.get(g) or {}
        if fl:  # real vs real at the same n: differences below this line are what the metric cannot resolve
            fws = sorted(fl)
            fig.add_scatter(x=fws, y=[fl[w][0] for w in fws], name=f"floor {g} (real vs real, same n)",
                            mode="lines", line=dict(color=col, dash="dot", width=1))
    from ..services.honesty import small_fd
    counts = [n for pts in (curves.get("count") or {}).values() for n in pts.values() if n >= 2]
    if counts and (warn := small_fd(metric, min(counts))):
        fig.add_annotation(text="⚠ " + warn.split(":")[0], showarrow=False, x=0, y=1.0, xref="paper",
                           yref="paper", xanchor="left", yanchor="bottom", font=dict(size=11, color="#be123c"))
    for key, name, dash in (("fd_reweighted", "vs reference reweighted to the mix", "dot"),
                            ("fd", "vs whole reference", "dash")):
        pts = curves.get(key) or {}
        if pts:
            ws = sorted(pts)
            fig.add_scatter(x=ws, y=[pts[w] for w in ws], name=name, mode="lines", line=dict(color="#64748b", dash=dash))
    _omega_marker(fig, omega)
    fig.update_layout(xaxis_title="ω", yaxis_title=metric)
    return fig


def heatmap(h: dict, group: str, target: float | None, metric: str) -> go.Figure:
    """(ω, budget) heat map of the group's fraction (like the paper's Fig. 3), distance on hover."""
    if not h["omegas"] or not h["kimgs"] or np.isnan(h["fraction"]).all():
        return empty("Fraction over (ω, budget)", "measure all budgets with the ω grid to fill this map")
    text = [[f"{metric} {v:.2f}" if np.isfinite(v) else "" for v in row] for row in h["fd"]]
    fig = _fig(f"'{group}' fraction over (ω, budget)" + (f" — target {100 * target:.0f}%" if target is not None else ""),
               height=340)
    z, budgets = h["fraction"], [f"{k:g} kimg" for k in h["kimgs"]]
    fig.add_heatmap(x=h["omegas"], y=budgets, z=z, text=text, zmin=0, zmax=1,
                    colorscale="RdBu", reversescale=True, colorbar=dict(tickformat=".0%", title="fraction"),
                    hovertemplate="ω %{x}<br>%{y}<br>fraction %{z:.1%}<br>%{text}<extra></extra>")
    if target is not None:
        fig.add_contour(x=h["omegas"], y=budgets, z=z, showscale=False,
                        contours=dict(start=target, end=target, size=1, coloring="none"),
                        line=dict(color="black", width=2, dash="dash"), hoverinfo="skip", name="target")
    fig.update_layout(xaxis_title="ω", yaxis_title="budget", margin=dict(l=80, r=90, t=44, b=40))  # room for the colour bar
    return fig


def _omega_marker(fig: go.Figure, omega: float | None) -> None:
    if omega is not None and math.isfinite(omega):
        fig.add_vline(x=omega, line=dict(color="#0f172a", width=1, dash="dot"))


def _alpha(hex_color: str, a: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{a})"
