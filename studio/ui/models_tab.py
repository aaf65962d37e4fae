"""Models tab: register base models (bundled demo, path/URL import, upload) and read their cards."""
from __future__ import annotations

import json

import gradio as gr

from ..services import pool, registry
from .common import Page, as_int, hidden_id, model_choices, user_errors


def _training(t: dict) -> str:
    """The few training facts a user compares models by."""
    keys = (("kimg", "kimg seen"), ("batch_size", "batch"), ("lr", "lr"), ("last_loss", "final loss"),
            ("loss", "loss"))
    parts = [f"{label} {t[k]:.4g}" if isinstance(t[k], float) else f"{label} {t[k]}"
             for k, label in keys if isinstance(t.get(k), (int, float, str))]
    return ", ".join(parts) or "not recorded"


def _card_md(c: registry.ModelCard) -> str:
    net = c.network
    prov = {k: v for k, v in c.provenance.items() if v not in (None, "", {})}
    rows = [("Architecture", f"{c.backbone} ({c.precond} preconditioning), {c.resolution}×{c.resolution}×{c.channels}"),
            ("Channels", f"model {net.get('model_channels', '?')}, mult {net.get('channel_mult', '?')}, "
                         f"{net.get('num_blocks', '?')} blocks/level"),
            ("Dataset", ", ".join(f"{k}: {v}" for k, v in c.dataset.items()) or "not recorded"),
            ("Training", _training(c.training)),
            ("Source", f"{c.source} — `{c.source_ref}`"), ("SHA-256", f"`{c.content_hash[:16]}…`"),
            ("Pool", f"{c.pool_size:,} samples"), ("Registered", c.created_at)]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"### {c.name}\n\n| | |\n|---|---|\n{table}\n\n<details><summary>Provenance</summary>\n\n"
            f"```json\n{json.dumps(prov, indent=1)[:3000]}\n```\n</details>")


def _rows(db) -> list[list]:
    return [[m["id"], m["name"], m["source"], m["architecture"], m["pool"], m["created"]]
            for m in registry.list_models(db)]


def _initial(page: Page):
    """Table, card and samples at build time, so the landing page is filled before the load event returns."""
    mid = as_int(page.model.value)
    try:
        if mid is None:
            return _rows(page.db), "Pick or register a model.", []
        rows = pool.gallery_page(page.db, mid, per_page=16).rows
        return (_rows(page.db), _card_md(registry.card(page.db, mid)),
                [(str(page.settings.abs(r["path"])), f"seed {r['seed']}") for r in rows])
    except Exception:  # an unreadable model must not stop the studio from starting
        return [], "Pick or register a model.", []


def build(page: Page) -> None:
    """Lay out the tab and wire its events."""
    db, settings = page.db, page.settings
    init = _initial(page)
    if page.studio.notes:
        gr.Markdown("\n".join(f"> **Note:** {n}" for n in page.studio.notes))
    with gr.Row():
        with gr.Column(scale=2):
            table = gr.Dataframe(init[0], headers=["id", "name", "source", "architecture", "pool", "created"],
                                 label="Registered models", interactive=False, elem_id="models-table")
            with gr.Accordion("Add a base model", open=True):
                demo_btn = gr.Button("Register the bundled digits demo", elem_id="register-demo")
                src = gr.Textbox(label="Checkpoint path or URL", elem_id="import-src",
                                 placeholder="/path/edm-ffhq-64x64-uncond-vp.pkl or https://…/model.pkl")
                name = gr.Textbox(label="Name (optional)", elem_id="import-name")
                import_btn = gr.Button("Import (safe: no pickle code runs)", variant="primary", elem_id="import-btn")
                upload = gr.File(label="…or upload a .safetensors / EDM .pkl", file_types=[".safetensors", ".pkl"],
                                 elem_id="upload-ckpt")
                upload_btn = gr.Button("Register upload", elem_id="upload-btn")
                follow = page.follower("import_model")
        with gr.Column(scale=3):
            card = gr.Markdown(init[1], elem_classes=["card-md"], elem_id="model-card")
            samples = gr.Gallery(init[2], label="Samples from the pool", columns=8, height=240, elem_id="card-samples",
                                 elem_classes=["pixelated"], allow_preview=False)
            preview_btn = gr.Button("Render 16 samples", elem_id="card-render")
            with gr.Accordion("Real reference images (for per-group FD / FID)", open=False):
                gr.Markdown("Upload real images of the model's training data (PNG/JPEG files, or one .zip in EDM's "
                            "layout). The demo uses scikit-learn's digits automatically.")
                ref_files = gr.File(file_count="multiple", label="Images or zip", elem_id="ref-upload")
                ref_btn = gr.Button("Use as reference", elem_id="ref-btn")
                ref_status = gr.Markdown()

    def refresh(model_id):
        rows = _rows(db)
        mid = as_int(model_id)
        if mid is None:
            return rows, "Pick or register a model.", []
        c = registry.card(db, mid)
        page_ = pool.gallery_page(db, mid, per_page=16)
        return rows, _card_md(c), [(str(settings.abs(r["path"])), f"seed {r['seed']}") for r in page_.rows]

    def picker(selected=None):
        choices = model_choices(db)
        value = selected if selected is not None else (choices[0][1] if choices else None)
        return gr.Dropdown(choices=choices, value=value)

    @user_errors
    def register_demo():
        before = {m["id"] for m in registry.list_models(db)}
        mid = registry.register_demo(db, settings)
        gr.Info("Bundled demo registered." if mid not in before else
                f"The bundled demo is already registered (model #{mid}); it is picked now.")
        return picker(mid)

    @user_errors
    def do_import(src_text, name_text):
        job = registry.submit_import(db, settings, src_text, name_text)
        gr.Info(f"Import queued as job #{job}.")
        return job

    @user_errors
    def do_upload(file):
        if file is None:
            raise gr.Error("Choose a file to upload first.")
        kind, ident = registry.register_upload(db, settings, getattr(file, "name", file))
        if kind == "model":
            gr.Info("Checkpoint registered.")
            return ident, None
        gr.Info(f"EDM pickle queued for safe import as job #{ident}.")
        return None, ident

    @user_errors
    def render16(model_id, device):
        mid = as_int(model_id)
        if mid is None:
            raise gr.Error("Pick a model first.")
        return pool.submit_generate(db, mid, 16, device=device)

    @user_errors
    def set_reference(model_id, files):
        if as_int(model_id) is None:
            raise gr.Error("Pick a model first.")
        n = registry.set_reference_images(db, settings, as_int(model_id), files)
        return f"Stored {n} reference images stored; distances will use them."

    outs = [table, card, samples]
    page.model.change(refresh, page.model, outs)
    demo_btn.click(register_demo, None, page.model)
    import_btn.click(do_import, [src, name], follow.job)
    # the header picker is updated by the hidden id's change, never as an output of a click that may fail
    # (Gradio would show a red "Error" pill in the picker)
    uploaded = hidden_id()
    upload_btn.click(do_upload, upload, [uploaded, follow.job])
    uploaded.change(lambda i: picker(as_int(i)) if as_int(i) is not None else gr.skip(), uploaded, page.model)
    preview_btn.click(render16, [page.model, page.device], follow.job)
    follow.done.change(lambda m: picker(as_int(m)), page.model, page.model).then(refresh, page.model, outs)
    ref_btn.click(set_reference, [page.model, ref_files], ref_status)
    page.loaders.append((refresh, [page.model], outs))
