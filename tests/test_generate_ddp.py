"""`generate` / `sample-sims` under torchrun (2 CPU processes, gloo) write the same file as one process.

The seeds are cut into batches exactly as one process cuts them and rank r samples batches
r, r+2, ...; every batch is computed as a single process computes it, so the gathered output
must be bit-identical (one thread per process keeps kernel reductions alike).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.checkpoints.native import save_model
from tests.testkit import make_mlp

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo" / "digits_base.safetensors"


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(argv, nproc, log: Path):
    """Run the CLI (under torchrun when nproc > 1); each rank's output goes to its own log file."""
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "--log-dir", str(log), "--redirects", "3", "-m", "pipelines", *argv]
    else:
        cmd = [sys.executable, "-m", "pipelines", *argv]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_torchrun_generate_and_sample_sims_equal_one_process(tmp_path):
    # 7 seeds in batches of 2 -> 4 batches, uneven over 2 ranks (2 + 2, the last batch short).
    common = ["--seeds", "3-9", "--batch", "2", "--steps", "4", "--device", "cpu"]
    _run(["generate", "--model", str(DEMO), *common, "--out", str(tmp_path / "two.npz")], 2, tmp_path / "logs")
    _run(["generate", "--model", str(DEMO), *common, "--out", str(tmp_path / "one.npz")], 1, tmp_path / "l1")
    two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    assert two["images"].shape == (7, 8, 8, 1)
    assert np.array_equal(two["images"], one["images"]) and np.array_equal(two["seeds"], one["seeds"])
    assert json.loads(str(two["info"]))["processes"] == 2 and json.loads(str(one["info"]))["processes"] == 1

    # Flat samples keep their float values: equality here is bitwise on float32.
    base, cfg = make_mlp(0)
    aux, _ = make_mlp(1)
    b = save_model(tmp_path / "b.safetensors", base, cfg)
    a = save_model(tmp_path / "a.safetensors", aux, cfg)
    sims = ["sample-sims", "--base", str(b), "--aux", str(a), "--omega", "1.5", *common]
    _run([*sims, "--out", str(tmp_path / "s2.npz")], 2, tmp_path / "logs2")
    _run([*sims, "--out", str(tmp_path / "s1.npz")], 1, tmp_path / "l2")
    s2, s1 = np.load(tmp_path / "s2.npz")["samples"], np.load(tmp_path / "s1.npz")["samples"]
    assert s2.shape == (7, 2) and s2.dtype == np.float32 and np.array_equal(s2, s1)
    assert len({tuple(r) for r in s1.tolist()}) == 7  # every seed its own sample, none duplicated


def test_help_lists_precision_and_device_auto_and_cuda_is_refused_without_a_gpu(tmp_path, capsys):
    import torch

    from pipelines.cli import main
    for verb in ("generate", "sample-sims"):
        out = subprocess.run([sys.executable, "-m", "pipelines", verb, "--help"], env=_env(), cwd=ROOT,
                             capture_output=True, text=True, timeout=120).stdout
        flat = " ".join(out.split())
        assert "--precision {fp32,bf16}" in flat and "--device DEVICE auto (default" in flat, verb
    assert "no guidance interval" in flat and "18 Heun steps" in flat and "12 steps" in flat  # sample-sims
    if torch.cuda.is_available():
        return  # the refusal below is for machines without a GPU
    assert main(["generate", "--model", str(DEMO), "--device", "cuda", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available here; use --device cpu" in err and "Traceback" not in err
    assert main(["generate", "--model", str(DEMO), "--seeds", "0-1", "--steps", "2",
                 "--out", str(tmp_path / "y.npz")]) == 0
    assert "sampling 2 seeds on cpu (auto: no CUDA here), precision fp32" in capsys.readouterr().out
