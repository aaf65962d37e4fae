"""Export tab: the shifted model as a SIMS bundle (+ card), and a shifted dataset zip in EDM's layout."""
from __future__ import annotations

import gradio as gr

from ..services import attributes, export, jobs
from .common import Page, as_int, user_errors
from .guide_tab import settings_from


def card_md(out: dict) -> str:
    """The bundle's model card as a readable summary (the full Markdown card sits beside the file)."""
    c = out["card_data"]
    chain = c["provenance_chain"]
    base, sset, ft = chain["base_model"], chain["synthetic_set"], chain["finetune"]
    lines = [f"### {c['title']}", "", "| | |", "|---|---|",
             f"| ω | {c['omega']:+.2f} |", f"| budget | {c['budget_kimg']:g} kimg |",
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
    return "\n".join(lines) + f"\n\nFull card: `{out['card']}`\n\nSample from it anywhere:\n\n```\n{out['command']}\n```"


def build(page: Page) -> None:
    """Lay out the tab and wire its events (uses the Guide tab's checkpoint, ω and settings)."""
    db, settings = page.db, page.settings
    gr.Markdown("Exports use the checkpoint, ω, guidance interval and sampler settings picked in the **Guide** tab.")
    with gr.Row():
        with gr.Column():
            gr.Markdown("#### SIMS bundle (base + auxiliary + ω + interval + sampler + model card)")
            b_name = gr.Textbox(label="File name (optional)", elem_id="bundle-name")
            b_btn = gr.Button("Export bundle", variant="primary", elem_id="bundle-btn")
            b_file = gr.File(label="Bundle", interactive=False, elem_id="bundle-file")
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
    def do_bundle(ck, w, grouping_id, name, *gs_vals):
        if as_int(ck) is None:
            raise gr.Error("Pick an auxiliary checkpoint in the Guide tab first.")
        gs = settings_from(*gs_vals)
        out = export.export_bundle(db, settings, as_int(ck), w, gs.steps, gs.skip_steps, gs.shared_encoder, name,
                                   classifier_of(grouping_id))
        return out["bundle"], card_md(out)

    @user_errors
    def do_dataset(ck, w, grouping_id, n, name, device, *gs_vals):
        if as_int(ck) is None:
            raise gr.Error("Pick an auxiliary checkpoint in the Guide tab first.")
        return export.submit_dataset_export(db, as_int(ck), w, int(n or 0), classifier_of(grouping_id),
                                            settings_from(*gs_vals), name or "", device)

    def finished(job_id):
        if job_id is None:
            return None
        j = jobs.get(db, job_id)
        return str(settings.abs(j.result["file"])) if j.state == "succeeded" and j.result.get("file") else None

    b_btn.click(do_bundle, [page.guide_checkpoint, page.guide_omega, page.grouping, b_name, *page.guide_settings],
                [b_file, b_card])
    d_btn.click(do_dataset, [page.guide_checkpoint, page.guide_omega, page.grouping, d_n, d_name, page.device,
                             *page.guide_settings], follow.job)
    follow.done.change(finished, follow.job, d_file)
