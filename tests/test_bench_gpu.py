"""bench/gpu.py and bench/reference.py on the CPU: --help, the no-GPU message, the NVlabs/edm
reference column (when a checkout of it is at hand) and the --cpu-smoke dry run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "bench" / "gpu.py"
# A checkout of github.com/NVlabs/edm: $SIMS_EDM_REFERENCE (a folder, or a git dir to export HEAD
# from), else the mirror this workplace fetches into.
CANDIDATES = [os.environ.get("SIMS_EDM_REFERENCE", ""), "/work/.mirror/NVlabs+edm/repo"]


def _run(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(GPU), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def edm_checkout(tmp_path_factory):
    for c in filter(None, CANDIDATES):
        p = Path(c)
        if (p / "training" / "networks.py").is_file():
            return p
        if (p / "HEAD").is_file() and (p / "objects").is_dir():  # a bare git dir: materialise HEAD
            out = tmp_path_factory.mktemp("edm")
            archive = subprocess.run(["git", f"--git-dir={p}", "archive", "HEAD"], capture_output=True, check=True)
            subprocess.run(["tar", "x", "-C", str(out)], input=archive.stdout, check=True)
            return out
    reason = "no NVlabs/edm checkout: set SIMS_EDM_REFERENCE to one to run the reference-column test"
    print(reason)
    pytest.skip(reason)


def test_help_works_without_a_gpu():
    out = _run("--help", timeout=120)
    assert out.returncode == 0 and "--reference-dir" in out.stdout and "--cpu-smoke" in out.stdout


def test_exits_with_a_message_without_a_gpu():
    out = _run("--skip", "train,sample,tiny", timeout=120)
    assert out.returncode == 2 and "no CUDA device" in out.stderr


def test_wrong_reference_dir_is_refused(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from reference import load_reference
    finally:
        sys.path.remove(str(ROOT / "bench"))
    with pytest.raises(SystemExit, match="not a checkout of NVlabs/edm"):
        load_reference(tmp_path)


def test_reference_column_same_weights_both_rates(edm_checkout):
    """Our tiny SongUNet's weights load into the reference's EDMPrecond(SongUNet) (strict) and both
    compute the same D in fp32; both training steps run and are timed side by side."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from reference import compare, load_reference, reference_net, same_weights
    finally:
        sys.path.remove(str(ROOT / "bench"))
    import torch

    from pipelines.models import ModelConfig, build_model
    from pipelines.networks.songunet import songunet_config
    cfg = ModelConfig(backbone="songunet", network=songunet_config("tiny", img_resolution=8))
    nets, _ = load_reference(edm_checkout)
    ours, theirs = build_model(cfg), reference_net(nets, cfg.network, use_fp16=True)
    assert same_weights(ours, theirs) < 1e-5
    with torch.no_grad():  # the check can fail: other weights give another function
        for p in theirs.parameters():
            p.add_(0.01)
        x, s = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 2.0])
        assert (ours(x, s) - theirs(x, s)).abs().max() > 1e-3
    lines = compare(cfg, 2, 1, 1, "cpu", edm_checkout, bf16=False)
    text = "\n".join(lines)
    assert "same initial weights (max |D_ours - D_ref| = " in text
    rates = [float(line.split()[-2]) for line in lines if line.rstrip().endswith("images/s")]
    assert len(rates) == 2 and all(r > 0 for r in rates)
    assert "ours / reference = " in text and "fp32: its use_fp16 is CUDA-only" in text


@pytest.mark.slow
def test_cpu_smoke_runs_every_part(edm_checkout):
    out = _run("--cpu-smoke", "--configs", "cifar10", "--reference-dir", str(edm_checkout))
    assert out.returncode == 0, out.stderr[-2000:]
    for part in ("training  cifar10", "reference  NVlabs/edm", "sampling  cifar10", "full, 1 call",
                 "loop/bare", "total "):
        assert part in out.stdout, part
