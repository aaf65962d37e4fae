"""Our model format: one .safetensors file whose metadata holds the JSON config.

Metadata key "sims" = {"format", "model" (ModelConfig), "dataset", "training", "provenance"}.
Loading never unpickles anything.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules import module as nn_module

from safetensors.torch import load_file, save_file
from safetensors import SafetensorError, safe_open

from ..config import strict_from_dict
from ..errors import UserError
from ..models import ModelConfig, backbone_class, build_model
from ..precond import Precond, make_precond

FORMAT = "sims-model/1"


def git_commit() -> str | None:
    """Current git commit of the code, for provenance (None outside a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def save_model(path, model: Precond, config: ModelConfig, dataset: dict | None = None,
               training: dict | None = None, provenance: dict | None = None) -> Path:
    """Write weights + config; returns the path. `provenance` gets the git commit added."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prov = {"git_commit": git_commit(), **(provenance or {})}
    meta = {"format": FORMAT, "model": config.to_dict(), "dataset": dataset or {},
            "training": training or {}, "provenance": prov}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={"sims": json.dumps(meta)})
    tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint behind
    return path


def metadata_json(path, key: str, what: str, fix: str) -> Any:
    """The JSON value stored under `key` in a .safetensors file's metadata (None where the key is
    absent), read without the tensors. A file that cannot be read, or a value that is not JSON,
    raises a UserError naming the file as a `what` and ending in `fix`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(key)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable {what} ({e}). {fix}") from None
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as e:
        raise UserError(f"{path}: its {key!r} metadata is not valid JSON ({e}); the file is corrupt. {fix}") from None


def read_metadata(path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading the weights."""
    path = _check_path(path)
    meta = metadata_json(path, "sims", ".safetensors checkpoint",
                         "Re-download or re-export it; import an EDM pickle with `python -m pipelines import-edm`.")
    if meta is None:
        raise UserError(f"{path} has no SIMS metadata: it is a safetensors file but not one of ours. "
                        "Save models with `pipelines.checkpoints.native.save_model`.")
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise UserError(f"{path}: its SIMS metadata holds no model config; the file is corrupt. "
                        "Re-download or re-export it.")
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: unsupported checkpoint format {meta.get('format')!r} (expected {FORMAT}).")
    return meta


def load_model(path, device="cpu") -> tuple[Precond, dict[str, Any]]:
    """Rebuild the model from its config and load the weights; returns (model in eval mode, metadata)."""
    meta = read_metadata(path)
    try:
        cfg = ModelConfig.from_dict(meta["model"])
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (UserError, ImportError):
        raise
    except Exception as e:  # anything a corrupt header or config raises: the file is at fault
        raise UserError(f"{path}: its model config or tensor table is invalid ({type(e).__name__}: {e}). "
                        "Re-download or re-export it.") from None
    model = build_for_weights(cfg, shapes, path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError, OSError, or what a corrupt file makes safetensors raise
        raise UserError(f"{path}: weights are corrupt or truncated ({e}). Re-download or re-export it.") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match the config (missing {list(missing)[:5]}, "
                        f"unexpected {list(unexpected)[:5]}).")
    return model.eval().requires_grad_(False).to(device), meta


def _checked_network_kwargs(cfg: ModelConfig) -> dict:
    """The backbone's kwargs after the same strict check `build_model` applies."""
    cls = backbone_class(cfg.backbone)
    strict_from_dict(cls.Config, {k: v for k, v in cfg.network.items() if k != "label_dim"},
                     f"{cfg.backbone} network")
    return dict(cfg.network)


class _TooManyTensors(Exception):
    """The config builds more parameters/buffers than the file holds."""


class _TooManyParameters(Exception):
    """The config builds more scalars than the parameter budget allows."""


# Scalars (parameters + buffers) a loaded network may have: 4 GB in float32, over 3x the largest EDM/ADM
# network (ADM ImageNet-64, ~296M); SIMS_MAX_PARAMS raises it for a genuinely larger model.
MAX_PARAMS = 1_000_000_000
_SIZE_FIELDS = ("img_resolution", "img_channels", "model_channels", "channel_mult", "num_blocks",
                "channel_mult_emb", "channel_mult_noise", "augment_dim", "hidden", "width", "depth", "layers")


def max_params() -> int:
    """The parameter budget: SIMS_MAX_PARAMS if set (a positive integer), else MAX_PARAMS."""
    raw = os.environ.get("SIMS_MAX_PARAMS", "").replace("_", "").strip()
    if not raw:
        return MAX_PARAMS
    if not raw.isdigit() or int(raw) <= 0:
        raise UserError(f"SIMS_MAX_PARAMS={os.environ['SIMS_MAX_PARAMS']!r} is not a positive integer "
                        f"(the default is {MAX_PARAMS:,}); set it to the number of parameters to allow.")
    return int(raw)


def build_for_weights(cfg: ModelConfig, shapes: dict[str, tuple], source) -> Precond:
    """`build_model(cfg)`, once the config is known to describe exactly the tensors in `shapes`.

    A corrupt or hostile file can carry a config of absurd size (millions of blocks, 2**31 channels).
    The network is first built on the "meta" device (shapes without memory), aborted as soon as it
    registers more tensors than the file has or more scalars than `max_params()`, and its state-dict
    shapes must equal the file's; only then is the real model allocated, whose size is that of the
    weights already at hand.
    """
    limit, budget, me, count = len(shapes) + 64, max_params(), threading.get_ident(), [0, 0]

    def count_tensor(_module, _name, value):
        # other threads may build their own models meanwhile; None registrations (bias=False, a Conv2d's
        # absent resample filter) are no tensors: counting them refused EDM's real FFHQ/CIFAR-10 networks
        if threading.get_ident() == me and value is not None:
            count[0] += 1
            count[1] += value.numel()
            if count[0] > limit:
                raise _TooManyTensors()
            if count[1] > budget:
                raise _TooManyParameters()

    hooks = [nn_module.register_module_parameter_registration_hook(count_tensor),
             nn_module.register_module_buffer_registration_hook(count_tensor)]
    try:
        with torch.device("meta"):  # the backbone only: the wrapper computes Python floats from tensors
            net = backbone_class(cfg.backbone)(**_checked_network_kwargs(cfg), label_dim=cfg.label_dim)
        skeleton = make_precond(cfg.precond, net, label_dim=cfg.label_dim, **cfg.precond_kwargs)
    except UserError as e:  # the backbone's own check of its arguments, which says what is wrong
        raise UserError(f"{source}: {e} The file is corrupt or from an incompatible version.") from None
    except _TooManyTensors:
        raise UserError(f"{source}: its config describes a network with more tensors than the file holds "
                        f"({len(shapes)}); the file is corrupt or not a checkpoint of this model.") from None
    except _TooManyParameters:
        sizes = ", ".join(f"{k}={cfg.network[k]!r}" for k in _SIZE_FIELDS if k in cfg.network)
        raise UserError(f"{source}: its network config ({sizes}, label_dim={cfg.label_dim!r}) describes more "
                        f"than {budget:,} parameters, the limit for loading a model ({budget * 4 / 2**30:.1f} GB "
                        "in float32). The file is corrupt, or the model really is that large: then set "
                        "SIMS_MAX_PARAMS to a larger count if this machine has the memory.") from None
    except ImportError:  # a missing package is not the file's fault
        raise
    except Exception as e:  # a config with impossible values (zero, negative, wrong types)
        raise UserError(f"{source}: its network config cannot be built ({type(e).__name__}: {e}); the file is "
                        "corrupt or from an incompatible version.") from None
    finally:
        for h in hooks:
            h.remove()
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if expected != shapes:
        diff = sorted(set(expected) ^ set(shapes)) or [k for k in expected if expected[k] != shapes[k]]
        k = diff[0]
        raise UserError(f"{source}: the weights do not fit the network its config describes (first difference: "
                        f"{k}: config {expected.get(k)}, file {shapes.get(k)}). The file is corrupt or its "
                        "config was changed.")
    return build_model(cfg)


def _check_path(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"Checkpoint not found: {path}. Check the path, or train/import a model first.")
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass the .safetensors checkpoint file inside it.")
    if path.suffix == ".pkl":
        raise UserError(f"{path} is a pickle. Import EDM pickles safely with "
                        f"`python -m pipelines import-edm {path} OUT.safetensors`.")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise UserError(f"{path} is empty or truncated; it is not a checkpoint.")
    return path


def load_state_file(path) -> dict[str, torch.Tensor]:
    """Bare tensor dict from a safetensors file (used by bundles)."""
    return load_file(str(_check_path(path)))
