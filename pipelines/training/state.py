"""Files of a training run: EMA checkpoints, the resumable training state and the loss log.

run_dir/
  checkpoint-{nimg:010d}.safetensors   EMA weights + metadata (native format), kept for sweeps
  training-state.pt                    raw weights, optimizer, EMA, RNG states, images seen
  log.jsonl                            one JSON line per loss report

The state is written atomically (tmp + rename) and holds only tensors and plain Python values,
so it loads with torch.load(weights_only=True): nothing in it can execute code.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError

STATE_FORMAT = "sims-training-state/1"
STATE_NAME = "training-state.pt"
LOG_NAME = "log.jsonl"
_CKPT_RE = re.compile(r"^checkpoint-(\d{10})\.safetensors$")


def checkpoint_path(run_dir, nimg: int) -> Path:
    return Path(run_dir) / f"checkpoint-{nimg:010d}.safetensors"


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """(images seen, path) of the run's EMA checkpoints, in training order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CKPT_RE.match(p.name))]
    return sorted(found)


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


#----------------------------------------------------------------------------
# RNG states as tensors / plain values (weights_only-safe).

def capture_rng() -> dict[str, Any]:
    """torch CPU (+ every CUDA device), numpy global and Python `random` states."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


#----------------------------------------------------------------------------
# Training state.

def save_state(run_dir, state: dict[str, Any]) -> Path:
    """Write training-state.pt atomically (a kill mid-write leaves the previous state intact)."""
    path = Path(run_dir) / STATE_NAME
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": STATE_FORMAT, **state}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def load_state(run_dir) -> dict[str, Any] | None:
    """The run's saved state, or None if the run has not saved one yet."""
    path = Path(run_dir) / STATE_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise UserError(f"{path} is not a readable training state ({type(e).__name__}: {e}). "
                        "Delete it to restart the run from scratch, or use a new --run-dir.") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a {STATE_FORMAT} file; use a new --run-dir.")
    return state


#----------------------------------------------------------------------------
# Loss log.

def append_log(run_dir, record: dict) -> None:
    with open(Path(run_dir) / LOG_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(run_dir) -> list[dict]:
    path = Path(run_dir) / LOG_NAME
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill; it is rewritten on resume
    return records


def truncate_log(run_dir, nimg: int) -> None:
    """Drop log lines written after the state we resume from (they will be written again)."""
    path = Path(run_dir) / LOG_NAME
    if path.exists():
        keep = [r for r in read_log(run_dir) if r.get("nimg", 0) <= nimg]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(path)
