"""The guide model of the Guide tab: D = (1 + ω)·D_base − ω·D_guide with a guide of the user's choice.

The default guide is the SIMS auxiliary (the picked checkpoint). Autoguidance (Karras et al. 2024)
uses the same rule with a weaker version of the base, e.g. an earlier checkpoint; any registered
model denoising the same sample shape under the same preconditioning can guide, the rest is refused
with `pipelines.guidance.check_guide`'s message. Renders with another guide are cached under a key
holding the guide's content hash, so grids of different guides never mix.
"""
from __future__ import annotations

from sqlalchemy import select

from pipelines.errors import UserError

from ..db import Database
from ..models import Model
from ..settings import Settings
from .evaluate import load_cached, pair_paths, render_stream
from .guide import OMEGA_MAX, OMEGA_MIN, RENDER_WAIT_S, GuideSettings, render_slot

AUX = "aux"            # the SIMS auxiliary: the picked checkpoint itself
DEMO_EARLY = "demo-early"  # the bundled early checkpoint of the demo base
_HASHES: dict[tuple, str] = {}


def _sha256(path) -> str:
    """Content hash of a file, once per (path, mtime) in this process."""
    from pipelines.checkpoints.download import sha256_file
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def _demo_early():
    from pipelines.resources import ASSETS
    return ASSETS / "demo" / "digits_early_20kimg.safetensors"


def guide_choices(db: Database, settings: Settings, checkpoint_id: int) -> list[tuple[str, str]]:
    """(label, value) of the guides offered for a checkpoint: the auxiliary, the demo's early checkpoint
    (demo base only), and every other registered model of the base's resolution and channels."""
    base, _, _ = pair_paths(db, settings, checkpoint_id)
    out = [("SIMS auxiliary (this checkpoint)", AUX)]
    with db.session(read_only=True) as s:
        rows = s.execute(select(Model.id, Model.name, Model.content_hash).where(
            Model.resolution == base.resolution, Model.channels == base.channels, Model.id != base.id)
            .order_by(Model.id)).all()
    early = _demo_early()
    if base.source == "demo" and early.is_file():
        digest = _sha256(early)
        if not any(h == digest for _, _, h in rows):
            out.append(("early checkpoint of the demo base (20 kimg, bundled; autoguidance)", DEMO_EARLY))
    out += [(f"model #{mid}: {name}", f"model:{mid}") for mid, name, _ in rows]
    return out


def resolve_guide(db: Database, settings: Settings, checkpoint_id: int, choice: str | None,
                  device: str = "cpu") -> dict | None:
    """None for the auxiliary; else {"path", "sha256", "label", "model_id"} of a guide that fits the base.
    UserError (check_guide's message, both shapes named) when it does not."""
    from pipelines.guidance import check_guide
    choice = (choice or AUX).strip()
    if choice == AUX:
        return None
    base, base_path, _ = pair_paths(db, settings, checkpoint_id)
    if choice == DEMO_EARLY:  # used in place, not registered: it would become a base model in every picker
        path = _demo_early()
        if not path.is_file():
            raise UserError(f"The bundled early checkpoint is missing ({path}); pick another guide.")
        check_guide(load_cached(base_path, device), load_cached(path, device))
        return {"path": str(path), "sha256": _sha256(path), "label": "early checkpoint of the demo base (20 kimg)",
                "model_id": None}
    if choice.startswith("model:") and choice[6:].isdigit():
        mid = int(choice[6:])
    else:
        raise UserError(f"Unknown guide {choice!r}: pick the SIMS auxiliary or a registered model.")
    with db.session(read_only=True) as s:
        row = s.get(Model, mid)
        if row is None:
            raise UserError(f"Model #{mid} is not registered (any more); pick another guide.")
        path, digest, name = settings.abs(row.path), row.content_hash, row.name
    if mid == base.id:
        raise UserError("The base cannot guide itself (ω would have no effect); pick a weaker or shifted model.")
    check_guide(load_cached(base_path, device), load_cached(path, device))
    return {"path": str(path), "sha256": digest, "label": name, "model_id": mid}


def guide_identity(guide: dict | None, checkpoint_id: int) -> str:
    """A stable name of the guide for keys and captions."""
    return f"aux:ckpt{int(checkpoint_id)}" if guide is None else f"model:{guide['sha256'][:16]}"


MODES = ("score", "merged")


def check_mode(mode: str | None) -> str:
    """'score' (default) or 'merged'; anything else is refused."""
    mode = (mode or "score").strip()
    if mode not in MODES:
        raise UserError(f"Unknown guidance mode {mode!r}: pick 'score' (two networks) or 'merged' (one network).")
    return mode


def mode_settings(gs: GuideSettings, mode: str) -> GuideSettings:
    """The settings that determine a mode's samples: a merged model is one network, so it has no guidance
    interval and no shared encoder (merge_guide.check_merged refuses both)."""
    from dataclasses import replace
    return replace(gs, skip_steps=0, shared_encoder=False) if mode == "merged" else gs


def measurement_key(gs: GuideSettings, guide: dict | None, mode: str = "score") -> str:
    """Settings key of a measurement with this mode (score | merged) and guide. Score space with the auxiliary
    keeps the Guide's historical key, so stored curves stay valid; every other combination is
    '<mode>:<guide>:<hash>' (see `is_default_key`)."""
    import hashlib
    mode = check_mode(mode)
    if mode == "score" and guide is None:
        return gs.key()
    who = "aux" if guide is None else guide["sha256"]
    blob = f"{mode_settings(gs, mode).key()}|mode:{mode}|guide:{who}"
    return f"{mode}:{who[:12]}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def is_default_key(settings_key: str | None) -> bool:
    """True for score space with the SIMS auxiliary (the only measurements a two-model bundle's card may quote)."""
    return ":" not in (settings_key or "")


def preview_stream(db: Database, settings: Settings, checkpoint_id: int, omega: float, gs: GuideSettings,
                   choice: str | None, device: str = "cpu", slot_wait_s: float | None = RENDER_WAIT_S):
    """The Guide's fixed preview seeds at ω with the chosen guide (see evaluate.render_stream); an uncached
    grid takes the device's job slot first (guide.render_slot)."""
    from pipelines.guidance import parse_omega
    omega = parse_omega(omega)
    if not OMEGA_MIN <= omega <= OMEGA_MAX:
        raise UserError(f"omega must be between {OMEGA_MIN} and {OMEGA_MAX} (got {omega}).")
    guide = resolve_guide(db, settings, checkpoint_id, choice, device)
    if guide is not None and gs.shared_encoder:
        raise UserError("The shared encoder applies to a decoder-only SIMS auxiliary; untick it to guide with "
                        f"{guide['label']}.")
    if omega == 0:  # the base alone, whatever the guide: share the auxiliary's cached grid (same pixels)
        guide = None
    slot = render_slot(db, settings, device, f"preview at ω = {omega:+g} with another guide", slot_wait_s)
    return render_stream(db, settings, checkpoint_id, omega, range(gs.preview_count), gs.preview_steps,
                         gs.interval(gs.preview_steps), gs.shared_encoder, device, guide=guide, slot=slot)
