"""Exact resume: a run killed with SIGKILL (or cancelled) and restarted ends bit-identical to an
uninterrupted run with the same seed (CPU)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.data import DigitsDataset
from pipelines.models import ModelConfig
from pipelines.networks.songunet import songunet_config
from pipelines.training import TrainConfig, list_checkpoints, train
from pipelines.training.state import load_state, read_log

ROOT = Path(__file__).resolve().parents[1]

# Dropout, an lr ramp and the EMA ramp all depend on the step, so any resume slip shows up.
MODEL = ModelConfig(network=songunet_config("tiny", img_resolution=8, img_channels=1, dropout=0.1))
CFG = dict(batch_size=8, total_kimg=0.128, state_kimg=0.032, checkpoint_kimg=0.064, lr_rampup_kimg=0.05,
           log_every=2, seed=5)

SCRIPT = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from pipelines.data import DigitsDataset
from pipelines.models import ModelConfig
from pipelines.training import TrainConfig, train
train(ModelConfig.from_dict({MODEL.to_dict()!r}), DigitsDataset(), TrainConfig(**{CFG!r}), sys.argv[1])
"""


def _run(run_dir, **popen):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(run_dir)], **popen)


def _assert_same_run(a: Path, b: Path):
    ca, cb = list_checkpoints(a), list_checkpoints(b)
    assert [n for n, _ in ca] == [n for n, _ in cb] == [64, 128]
    for (_, pa), (_, pb) in zip(ca, cb):
        ta, tb = load_file(pa), load_file(pb)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    sa, sb = load_state(a), load_state(b)
    assert all(torch.equal(sa["net"][k], sb["net"][k]) for k in sa["net"])
    assert all(torch.equal(x, y) for k in sa["optimizer"]["state"] for x, y in
               zip(sa["optimizer"]["state"][k].values(), sb["optimizer"]["state"][k].values()))
    assert sa["loss_history"] == sb["loss_history"]
    assert [(r["nimg"], r["loss"]) for r in read_log(a)] == [(r["nimg"], r["loss"]) for r in read_log(b)]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = _run(killed, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (killed / "training-state.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no training state was saved"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = int(load_state(killed)["nimg"])
    assert 0 < interrupted_at < 128, "the kill must land mid-run"
    assert _run(full).wait() == 0
    assert _run(killed).wait() == 0
    _assert_same_run(full, killed)


def test_cancel_via_should_stop_then_resume(tmp_path):
    full, cancelled = tmp_path / "full", tmp_path / "cancelled"
    train(MODEL, DigitsDataset(), TrainConfig(**CFG), full)
    polls = []
    stop_after_5 = lambda: polls.append(1) or len(polls) > 5  # noqa: E731
    first = train(MODEL, DigitsDataset(), TrainConfig(**CFG), cancelled, should_stop=stop_after_5)
    assert first["status"] == "cancelled" and first["nimg"] == 40 and first["final_checkpoint"] is None
    assert load_state(cancelled)["nimg"] == 40
    second = train(MODEL, DigitsDataset(), TrainConfig(**CFG), cancelled)
    assert second["status"] == "done" and second["nimg"] == 128
    _assert_same_run(full, cancelled)
