"""`python -m pipelines`: every verb has --help; user errors exit 2 with one clean message."""
import subprocess
import sys

import numpy as np
import pytest

from pipelines.checkpoints.bundle import save_bundle
from pipelines.checkpoints.native import save_model
from pipelines.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "sample-sims" in out.stdout


@pytest.fixture
def checkpoints(tmp_path, mlp_pair):
    base, aux, cfg = mlp_pair
    return (save_model(tmp_path / "base.safetensors", base, cfg), save_model(tmp_path / "aux.safetensors", aux, cfg))


def test_generate_and_sample_sims_write_npz(tmp_path, checkpoints, capsys):
    b, a = checkpoints
    assert main(["generate", "--model", str(b), "--seeds", "0-3", "--steps", "4",
                 "--out", str(tmp_path / "g.npz")]) == 0
    assert main(["sample-sims", "--base", str(b), "--aux", str(a), "--omega", "0", "--seeds", "0-3",
                 "--steps", "4", "--out", str(tmp_path / "s.npz")]) == 0
    bundle = save_bundle(tmp_path / "b.safetensors", b, a, 0.0)
    assert main(["sample-sims", "--bundle", str(bundle), "--seeds", "0-3", "--steps", "4",
                 "--out", str(tmp_path / "bundle.npz")]) == 0
    g, s, bb = (np.load(tmp_path / f)["samples"] for f in ("g.npz", "s.npz", "bundle.npz"))
    assert g.shape == (4, 2)
    assert np.array_equal(g, s) and np.array_equal(g, bb)  # omega 0 == base


@pytest.mark.parametrize("argv,message", [
    (["sample-sims", "--base", "B", "--aux", "A", "--omega", "abc", "--out", "x.npz"], "omega must be a number"),
    (["generate", "--model", "missing.safetensors", "--out", "x.npz"], "Checkpoint not found"),
    (["generate", "--model", "B", "--seeds", "a-b", "--out", "x.npz"], "Could not read seeds"),
    (["sample-sims", "--base", "B", "--out", "x.npz"], "Give --bundle FILE"),
    (["sample-sims", "--base", "B", "--aux", "A", "--interval", "1", "--out", "x.npz"], "--interval takes"),
])
def test_user_errors_are_one_clean_line(argv, message, checkpoints, capsys, tmp_path):
    b, a = checkpoints
    argv = [str(b) if v == "B" else str(a) if v == "A" else v for v in argv]
    argv = [str(tmp_path / v) if v == "x.npz" else v for v in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
