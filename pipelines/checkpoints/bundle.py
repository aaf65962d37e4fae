"""SIMS bundle: base + auxiliary weights, omega, interval and sampler settings in one file.

A .safetensors file with tensors `base.*` and `aux.*` and JSON metadata "sims_bundle" holding
both model configs, the guidance settings and a model card (measured fractions, FIDs,
provenance). A Markdown rendering of the card is written beside it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..guidance import SIMSDenoiser, check_guide, parse_omega
from ..models import ModelConfig, build_model
from ..sampler import SamplerConfig
from .download import sha256_file
from .native import _check_path, git_commit, read_metadata

FORMAT = "sims-bundle/1"
# What the second model of a bundle is (recorded in the card): the SIMS auxiliary (fine-tuned
# on the base's own samples), an earlier checkpoint of the base (autoguidance), or another model.
GUIDE_KINDS = ("sims-auxiliary", "earlier-checkpoint", "other-model")


@dataclasses.dataclass
class SIMSBundle:
    """A loaded bundle: ready-to-sample base and auxiliary models plus guidance settings."""
    base: Any
    aux: Any
    omega: float
    interval: tuple[float, float] | None
    shared_encoder: bool
    sampler: SamplerConfig
    card: dict

    def denoiser(self, omega: float | None = None) -> SIMSDenoiser:
        """The guided denoiser at the bundle's omega (or an override)."""
        return SIMSDenoiser(self.base, self.aux, self.omega if omega is None else omega,
                            interval=self.interval, shared_encoder=self.shared_encoder)


def save_bundle(path, base_ckpt, aux_ckpt, omega, interval=None, sampler: SamplerConfig = SamplerConfig(),
                shared_encoder: bool = False, card: dict | None = None, guide_kind: str = "sims-auxiliary") -> Path:
    """Pack two native checkpoints and the guidance settings into one bundle file.

    `aux_ckpt` is the guide: the SIMS auxiliary or any model of the base's sample shape
    (`guide_kind` says which, recorded with both files' sha256 in the card)."""
    omega = parse_omega(omega)
    if guide_kind not in GUIDE_KINDS:
        raise UserError(f"guide_kind must be one of {GUIDE_KINDS} (got {guide_kind!r}).")
    path = Path(path)
    metas, tensors = {}, {}
    for role, ckpt in (("base", base_ckpt), ("aux", aux_ckpt)):
        metas[role] = read_metadata(ckpt)
        tensors.update({f"{role}.{k}": v for k, v in load_file(str(ckpt)).items()})
    if metas["base"]["model"] != metas["aux"]["model"]:
        if shared_encoder:
            raise UserError("Shared-encoder guidance needs a decoder-only fine-tune of the base (same "
                            "architecture); this guide has a different one.")
        check_guide(*(build_model(ModelConfig.from_dict(metas[r]["model"])) for r in ("base", "aux")))
    meta = {"format": FORMAT, "omega": omega, "interval": list(interval) if interval else None,
            "shared_encoder": bool(shared_encoder), "sampler": dataclasses.asdict(sampler),
            "models": metas, "card": {**(card or {}), "git_commit": git_commit(),
                                       "base_checkpoint": str(base_ckpt), "aux_checkpoint": str(aux_ckpt),
                                       "base_sha256": sha256_file(base_ckpt), "aux_sha256": sha256_file(aux_ckpt),
                                       "guide_kind": guide_kind}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={"sims_bundle": json.dumps(meta)})
    tmp.replace(path)
    path.with_suffix(".md").write_text(render_card(meta))
    return path


def read_bundle_metadata(path) -> dict:
    """Bundle metadata without loading weights."""
    path = _check_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("sims_bundle")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable SIMS bundle ({e}).") from None
    if raw is None:
        raise UserError(f"{path} is not a SIMS bundle (no 'sims_bundle' metadata). "
                        "Export one from the studio or with pipelines.checkpoints.bundle.save_bundle.")
    return json.loads(raw)


def load_bundle(path, device="cpu") -> SIMSBundle:
    """Load a bundle written by `save_bundle`."""
    meta = read_bundle_metadata(path)
    tensors = load_file(str(path))
    models = {}
    for role in ("base", "aux"):
        model = build_model(ModelConfig.from_dict(meta["models"][role]["model"]))
        prefix = role + "."
        model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        models[role] = model.eval().requires_grad_(False).to(device)
    interval = tuple(meta["interval"]) if meta["interval"] else None
    return SIMSBundle(models["base"], models["aux"], meta["omega"], interval, meta["shared_encoder"],
                      SamplerConfig(**meta["sampler"]), meta["card"])


def render_card(meta: dict) -> str:
    """A short Markdown model card from bundle metadata."""
    card = meta["card"]
    lines = ["# SIMS-shifted model", "",
             f"- guidance omega: {meta['omega']}",
             f"- guidance interval (sigma): {meta['interval'] or 'whole trajectory'}",
             f"- shared encoder: {meta['shared_encoder']}",
             f"- sampler: {meta['sampler']['num_steps']} Heun steps "
             f"(sigma {meta['sampler']['sigma_min']}..{meta['sampler']['sigma_max']}, rho {meta['sampler']['rho']})",
             f"- base: {card.get('base_checkpoint')}", f"- auxiliary: {card.get('aux_checkpoint')}",
             f"- auxiliary provenance: {json.dumps(meta['models']['aux'].get('provenance', {}))}", ""]
    for key, value in card.items():
        if key == "fairness_vs_target" and value:
            from ..fairness import format_report
            for setting, report in value.items():
                text = report.get("skipped") or format_report(report)
                lines += [f"- fairness vs target ({setting}):", "", "```", text, "```", ""]
        elif key not in ("base_checkpoint", "aux_checkpoint"):
            lines.append(f"- {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return "\n".join(lines) + "\n"
