"""DDP under torchrun (2 CPU processes, gloo) vs one process with the same global batch.

What holds: with the same global batch and micro-batch (batch_gpu), every chunk sees the same
images, noise and dropout whatever the number of processes (they depend on seed, step and
chunk only), gradients are sum / batch either way, so the weights agree to float rounding;
both runs use one thread per process to keep kernel reductions alike.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.checkpoints.native import read_metadata
from pipelines.training import list_checkpoints
from pipelines.training.state import read_log

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = f"""
import os, sys
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from pipelines.data import DigitsDataset
from pipelines.models import ModelConfig
from pipelines.networks.songunet import songunet_config
from pipelines.training import TrainConfig, train
model = ModelConfig(network=songunet_config("tiny", img_resolution=8, img_channels=1, dropout=0.1))
cfg = TrainConfig(batch_size=8, batch_gpu=4, total_kimg=0.032, lr_rampup_kimg=0, log_every=1, seed=1,
                  device="cpu")
result = train(model, DigitsDataset(), cfg, sys.argv[1])
# one file per rank: two ranks printing to one pipe interleave their characters
out = Path(sys.argv[1] + ".result-" + os.environ.get("RANK", "single"))
out.write_text(f"{{result['status']}} {{result['nimg']}}")
"""


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(ddp_dir)], env=_env(), capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    results = sorted(p.read_text() for p in tmp_path.glob("ddp.result-*"))
    assert results == ["done 32", "done 32"]  # both ranks finish the same budget
    one = subprocess.run([sys.executable, str(script), str(single_dir)], env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert (tmp_path / "single.result-single").read_text() == "done 32"

    (n_ddp, ckpt_ddp), = list_checkpoints(ddp_dir)  # rank 0 alone wrote one final checkpoint
    (n_one, ckpt_one), = list_checkpoints(single_dir)
    assert n_ddp == n_one == 32 and read_metadata(ckpt_ddp)["training"]["world_size"] == 2
    a, b = load_file(ckpt_ddp), load_file(ckpt_one)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max |w_ddp - w_single| = {worst:.3g}; bitwise equal: {all(torch.equal(a[k], b[k]) for k in a)}")
    assert worst < 1e-5
    loss_ddp = [r["loss"] for r in read_log(ddp_dir)]
    loss_one = [r["loss"] for r in read_log(single_dir)]
    assert len(loss_ddp) == 4 and loss_ddp == pytest.approx(loss_one, rel=1e-5)
