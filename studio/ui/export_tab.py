"""Export tab: the shifted model as a SIMS bundle (+ card), and a shifted dataset zip in EDM's layout."""
from __future__ import annotations

import gradio as gr

from pipelines.errors import UserError

from ..services import attributes, export, jobs, merge_export
from ..services.guide import fmt_omega
from .common import Page, as_int, user_errors
from .guide_tab import settings_from


def card_md(out: dict) -> str:
    """The bundle's model card as a readable summary (the full Markdown card sits beside the file)."""
    c = out["card_data"]
    chain = c["provenance_chain"]
    base, sset, ft = chain["base_model"], chain["synthetic_set"], chain["finetune"]
    lines = [f"### {c['title']}", "", "| | |", "|---|---|",
             f"| ω | {fmt_omega(c['omega'])} |", f"| budget | {c['budget_kimg']:g} kimg |",
             f"| guidance interval | {'first ' + str(c['guidance_interval_skip_first_steps']) + ' steps unguided' if c['guidance_interval_skip_first_steps'] else 'whole trajectory'} |",
             f"| base model | {base['name']} ({base['source']}, sha256 {base['sha256'][:12]}…) |"]
    if sset:
        lines.append(f"| synthetic set S | #{sset['id']} {sset['kind']}, {sset['n_s']} samples: "
                     + ", ".join(f"{g} {n}" for g, n in (sset["counts"] or {}).items()) + " |")
    lines.append(f"| fine-tune | job #{ft['job']}, lr {ft['config']['lr']}, batch {ft['config']['batch_size']} |")
    for key, m in c["measured"].items():
        fr = ", ".join(f"{g} {100 * v[0]:.1f}% [{100 * v[1]:.0f}–{100 * v[2]:.0f}]" for g, v in m["fractions"].items())
        fd = ", ".join(f"{g} {v:.3g}" for g, v in m["fd_per_group"].items())
        lines.append(f"| measured (n={m['n']}) | {fr}" + (f"; {c['distance_metric']} per group: {fd}" if fd else "") + " |")
    if not c["measured"]:
        lines.append("| measured | nothing at this ω yet: run 'Precompute ω grid' in the Guide tab |")
    lines += [f"| ⚠ warning | {w} |" for w in c.get("measurement_warnings", [])]
    return "\n".join(lines) + f"\n\nFull card: `{out['card']}`\n\nSample from it anywhere:\n\n```\n{out['command']}\n```"


def plan_md(p: dict) -> str:
    """What the exports will use, shown before exporting."""
    rows = [("checkpoint", f"run #{p['run']} · {p['budget_kimg']:g} kimg (checkpoint #{p['checkpoint_id']})"),
            ("ω", fmt_omega(p["omega"])),
            ("guidance interval", export.interval_text(p["skip_steps"], p["steps"], p["interval"])),
            ("sampler", f"Heun, {p['steps']} steps" + (", shared encoder" if p["shared_encoder"] else ""))]
    if p["measured"]:
        m = next(iter(p["measured"].values()))
        rows.append(("measured at this ω", ", ".join(f"{g} {100 * v[0]:.1f}% [{100 * v[1]:.0f}–{100 * v[2]:.0f}]"
                                                     for g, v in m["fractions"].items()) + f" (n = {m['n']})"))
    else:
        rows.append(("measured at this ω", "nothing yet (Guide: Precompute ω grid or Find ω)"))
    rows += [("⚠ warning", w) for w in p.get("warnings", [])]
    return "#### Both exports will use\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


BUNDLE, MERGED = "score-space SIMS bundle (two networks)", "weight-space merge (one network, base's sampling cost)"


def cost_md(c: dict) -> str:
    """Network passes per image of each model export, as counted (not timed)."""
    b, m = c["bundle"], c["merged"]
    ratio = b["network passes"] / m["network passes"]
    zero = " (at ω = 0 the bundle runs the base alone)" if c["omega"] == 0 else ""
    return ("#### What each model export costs to sample\n\n| export | cost per image |\n|---|---|\n"
            f"| {BUNDLE} | {b['network passes']} network passes ({b['base passes']} base + "
            f"{b['auxiliary passes']} auxiliary) = {b['passes per step']:.2f} per step, "
            f"**{ratio:.2f}×** the base's passes{zero} |\n"
            f"| {MERGED} | {m['network passes']} network passes = {m['passes per step']:.2f} per step, "
            "**1.00×** the base's passes |\n\n"
            f"{c['how']}. Timed on the demo by `bench/merge_vs_sims.py` (ω = 1, 64 seeds, median of 3 alternating "
            "runs): score-space 1.98×, merged 1.01× the base's time. The merge's ω scale "
            "differs from score-space SIMS: the bundle's measurements at this ω are not the merged model's.\n\n")


def merged_md(out: dict) -> str:
    """The merged model's card as a readable summary."""
    c = out["card_data"]
    p = c["parents"]
    return (f"### {c['title']}\n\n| | |\n|---|---|\n| ω | {fmt_omega(c['omega'])} |\n| rule | {c['rule']} |\n"
            f"| base | `{p['base']['sha256'][:12]}…` |\n| auxiliary | `{p['aux']['sha256'][:12]}…` |\n"
            f"| registered | model #{c['registered_model_id']} (Models tab) |\n| measured | {c['measured_note']} |\n\n"
            f"Sample from it anywhere:\n\n```\n{out['command']}\n```")


def build(page: Page) -> None:
    """Lay out the tab and wire its events (uses the Guide tab's checkpoint, ω and settings)."""
    db, settings = page.db, page.settings
    gr.Markdown("Exports use the checkpoint, ω, guidance interval and sampler settings picked in the **Guide** tab.")
    plan_view = gr.Markdown(elem_id="export-plan", elem_classes=["card-md"])
    with gr.Row():
        with gr.Column():
            gr.Markdown("#### Shifted model (same auxiliary checkpoint and ω)")
            b_kind = gr.Radio([BUNDLE, MERGED], value=BUNDLE, label="Export as", elem_id="model-export-kind")
            b_name = gr.Textbox(label="File name (optional)", elem_id="bundle-name")
            b_btn = gr.Button("Export model", variant="primary", elem_id="bundle-btn")
            b_file = gr.File(label="Model file", interactive=False, elem_id="bundle-file")
            b_card = gr.Markdown(elem_id="bundle-card")
        with gr.Column():
            gr.Markdown("#### Shifted dataset (N images + classifier labels, EDM zip layout)")
            d_n = gr.Number(1000, label="Images", precision=0, minimum=1, elem_id="dataset-n")
            d_name = gr.Textbox(label="File name (optional)", elem_id="dataset-name")
            d_btn = gr.Button("Export dataset", variant="primary", elem_id="dataset-btn")
            follow = page.follower("export_dataset")
            d_file = gr.File(label="Dataset zip", interactive=False, elem_id="dataset-file")

    def classifier_of(grouping_id):
        gid = as_int(grouping_id)
        return attributes.get_grouping(db, gid)["classifier"] if gid is not None else ""

    @user_errors
    def do_bundle(ck, w, grouping_id, kind, name, *gs_vals):
        if as_int(ck) is None:
            raise gr.Error("Pick an auxiliary checkpoint in the Guide tab first.")
        if kind == MERGED:
            out = merge_export.export_merged(db, settings, as_int(ck), w, name, settings_from(*gs_vals),
                                             as_int(grouping_id))
            return out["file"], merged_md(out)
        gs = settings_from(*gs_vals)
        out = export.export_bundle(db, settings, as_int(ck), w, gs.steps, gs.skip_steps, gs.shared_encoder, name,
                                   classifier_of(grouping_id))
        return out["bundle"], card_md(out)

    @user_errors
    def do_dataset(ck, w, grouping_id, n, name, device, *gs_vals):
        if as_int(ck) is None:
            raise gr.Error("Pick an auxiliary checkpoint in the Guide tab first.")
        return export.submit_dataset_export(db, as_int(ck), w, int(n or 0), classifier_of(grouping_id),
                                            settings_from(*gs_vals), name or "", device, grouping_id=as_int(grouping_id),
                                            settings=settings)

    def finished(job_id):
        if job_id is None:
            return None
        j = jobs.get(db, job_id)
        return str(settings.abs(j.result["file"])) if j.state == "succeeded" and j.result.get("file") else None

    def show_plan(ck, w, grouping_id, *gs_vals):
        if as_int(ck) is None:
            return "Pick an auxiliary checkpoint in the **Guide** tab (finish a fine-tune first)."
        try:
            gs = settings_from(*gs_vals)
            return (plan_md(export.plan(db, as_int(ck), w, gs, classifier_of(grouping_id))) + "\n\n"
                    + cost_md(merge_export.pass_counts(gs.steps, gs.skip_steps, w, gs.shared_encoder)))
        except UserError as e:
            return f"**Cannot export yet:** {e}"

    plan_in = [page.guide_checkpoint, page.guide_omega, page.grouping, *page.guide_settings]
    for comp in (page.guide_checkpoint, page.guide_omega, *page.guide_settings):  # database reads: no queue
        comp.change(show_plan, plan_in, plan_view, show_progress="hidden", trigger_mode="always_last", queue=False)
    page.loaders.append((show_plan, plan_in, [plan_view]))
    b_btn.click(do_bundle, [page.guide_checkpoint, page.guide_omega, page.grouping, b_kind, b_name,
                            *page.guide_settings],
                [b_file, b_card])
    d_btn.click(do_dataset, [page.guide_checkpoint, page.guide_omega, page.grouping, d_n, d_name, page.device,
                             *page.guide_settings], follow.job)
    follow.done.change(finished, follow.job, d_file)
