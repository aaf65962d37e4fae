"""Feature extraction through clean-fid, its cache, and the label / ref-stats / fid / fit-probe CLI."""
import csv
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from pipelines.image_source import ImageSource
from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.metrics import fid as fidmod
from pipelines.metrics.fid import InceptionFeatureExtractor, ReferenceStats, StandInInception, compute_features


@pytest.fixture(scope="module")
def digits32():
    """sklearn digits rendered as 32x32 uint8 images (white on black), with their labels."""
    d = load_digits()
    img = np.round(d.images * 255 / 16).astype(np.uint8)
    return np.kron(img, np.ones((4, 4), np.uint8))[..., None], d.target


def _write_edm_folder(root, images):
    """EDM dataset_tool layout: 00000/img00000000.png ..."""
    for i, im in enumerate(images):
        sub = root / f"{i // 1000:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im[..., 0]).save(sub / f"img{i:08d}.png")
    (root / "dataset.json").write_text(json.dumps({"labels": None}))
    return root


class _Counting(StandInInception):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


# ----------------------------------------------------------------------------
# Features


def test_missing_inception_file_is_an_actionable_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fidmod, "inception_dir", lambda: tmp_path)
    with pytest.raises(UserError) as e:
        InceptionFeatureExtractor(device="cpu")
    msg = str(e.value)
    assert "inception-2015-12-05.pt" in msg and fidmod.INCEPTION_URL in msg and str(tmp_path) in msg


def test_our_batched_loop_gives_clean_fids_features(tmp_path, digits32):
    """Same files, same network: our loop == clean-fid's own get_files_features (clean mode)."""
    from cleanfid.fid import get_files_features

    import torch

    folder = _write_edm_folder(tmp_path / "imgs", digits32[0][:10])
    net = StandInInception("tiny")
    ours = compute_features(folder, InceptionFeatureExtractor("cpu", net, "tiny"), batch_size=4)
    files = [str(p) for p in ImageSource(folder).files]
    theirs = get_files_features(files, net, num_workers=0, batch_size=4, device=torch.device("cpu"),
                                mode="clean", verbose=False)
    assert ours.shape == (10, 2048)
    assert np.allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_features_are_cached_by_content(tmp_path, digits32):
    images = digits32[0][:6]
    ext = InceptionFeatureExtractor("cpu", _Counting("tiny"), "tiny-counting")
    _Counting.calls = 0
    a = compute_features(images, ext, cache_dir=tmp_path, batch_size=4)
    assert _Counting.calls == 2
    b = compute_features(images, ext, cache_dir=tmp_path, batch_size=4)
    assert _Counting.calls == 2 and np.array_equal(a, b)  # served from the cache
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    compute_features(changed, ext, cache_dir=tmp_path, batch_size=4)
    assert _Counting.calls == 4  # one pixel changed: recomputed


# ----------------------------------------------------------------------------
# CLI


@pytest.fixture(scope="module")
def sets(tmp_path_factory, digits32):
    root = tmp_path_factory.mktemp("sets")
    images, y = digits32
    ref = _write_edm_folder(root / "ref", images[:400])
    np.savez(root / "gen.npz", images=images[400:700])
    # a "shifted" generated set: only digits 5-9
    np.savez(root / "gen_high.npz", images=images[700:1300][y[700:1300] >= 5])
    return root, ref, y


def test_label_writes_csv_and_json(sets, capsys):
    root, _, y = sets
    g = "digits 0-4 vs 5-9"
    assert main(["label", str(root / "gen.npz"), "--classifier", "digits", "--grouping", g,
                 "--out", str(root / "l.csv"), "--no-cache"]) == 0
    rows = list(csv.DictReader(open(root / "l.csv")))
    assert len(rows) == 300 and rows[0]["name"] == "00000000"
    agree = np.mean([r["label"] == str(t) for r, t in zip(rows, y[400:700])])
    assert agree >= 0.97
    assert {r["group"] for r in rows} <= {"0-4", "5-9", "uncertain"}
    assert abs(sum(float(rows[0][f"p_{k}"]) for k in range(10)) - 1) < 1e-4
    assert main(["label", str(root / "gen.npz"), "--classifier", "digits", "--grouping", g,
                 "--out", str(root / "l.json"), "--no-cache"]) == 0
    doc = json.loads((root / "l.json").read_text())
    frac = doc["fractions"]["5-9"]
    true = np.mean(y[400:700] >= 5)
    assert abs(frac["fraction"] - true) < 0.03 and frac["ci95"][0] < frac["fraction"] < frac["ci95"][1]
    assert "0-4" in capsys.readouterr().out


def test_ref_stats_and_fid_per_group_fd_digits(sets, tmp_path, capsys):
    root, ref, _ = sets
    common = ["--feature", "digits", "--per-group", "--classifier", "digits",
              "--grouping", "digits 0-4 vs 5-9", "--cache-dir", str(tmp_path / "cache")]
    assert main(["ref-stats", str(ref), "--out", str(tmp_path / "ref.npz"), *common]) == 0
    stats = ReferenceStats.load(tmp_path / "ref.npz")
    assert stats.metric == "FD-digits" and stats.n == 400 and set(stats.groups) == {"0-4", "5-9"}
    assert sum(s.n for s in stats.groups.values()) + stats.info["counts"]["uncertain"] == 400

    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["fid", str(root / "gen.npz"), "--ref", str(tmp_path / "ref.npz"), "--out", str(out_a), *common]) == 0
    assert main(["fid", str(root / "gen.npz"), "--ref", str(ref), "--out", str(out_b), *common]) == 0
    a, b = json.loads(out_a.read_text()), json.loads(out_b.read_text())
    assert a["metric"] == "FD-digits" and a["overall"] == pytest.approx(b["overall"])
    assert a["per_group"] == pytest.approx(b["per_group"])
    printed = capsys.readouterr().out
    assert "FD-digits" in printed and "not FID" in printed and "\nFID" not in printed

    # a set of only 5-9 digits: far from the whole reference, close to the reference's 5-9 group
    out_h = tmp_path / "h.json"
    assert main(["fid", str(root / "gen_high.npz"), "--ref", str(tmp_path / "ref.npz"), "--out", str(out_h), *common]) == 0
    h = json.loads(out_h.read_text())
    assert h["gen_counts"]["0-4"] <= 3
    assert h["per_group"]["5-9"] < h["overall"] and h["reweighted"] < h["overall"]
    # fewer samples than FD-digits' 128 dimensions in group 0-4: flagged in the JSON and printed
    assert h["dims"] == 128 and h["small_sample"]["group 0-4"] and not h["small_sample"]["overall"]
    assert any("group 0-4" in w and "< 128 feature dimensions" in w for w in h["warnings"])
    assert "WARNING: FD-digits group 0-4" in capsys.readouterr().out
    assert not a["warnings"] or all("group" in w for w in a["warnings"])  # 300 samples overall: no warning


def test_cli_errors_are_clean(sets, tmp_path, capsys, monkeypatch):
    root, ref, _ = sets
    monkeypatch.setattr(fidmod, "inception_dir", lambda: tmp_path)
    assert main(["fid", str(root / "gen.npz"), "--ref", str(ref), "--no-cache"]) == 2
    assert "inception-2015-12-05.pt" in capsys.readouterr().err
    assert main(["fid", str(root / "gen.npz"), "--ref", str(ref), "--feature", "digits", "--per-group"]) == 2
    assert "--per-group needs --classifier" in capsys.readouterr().err
    assert main(["label", str(tmp_path / "missing"), "--classifier", "digits", "--out", "x.csv"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["label", str(root / "gen.npz"), "--classifier", "digits", "--out", str(tmp_path / "x.txt"),
                 "--no-cache"]) == 2
    assert ".csv or .json" in capsys.readouterr().err
    assert main(["label", str(root / "gen.npz"), "--classifier", "digits", "--grouping", "nope",
                 "--out", str(tmp_path / "x.csv"), "--no-cache"]) == 2
    assert "unknown grouping" in capsys.readouterr().err


def test_fit_probe_then_label_with_it(sets, tmp_path, capsys):
    root, ref, y = sets
    names = ImageSource(ref).names
    with open(tmp_path / "manual.csv", "w") as f:  # the user labelled 12 images by hand
        f.write("name,label\n")
        for i in list(np.flatnonzero(y[:400] % 2 == 0)[:6]) + list(np.flatnonzero(y[:400] % 2 == 1)[:6]):
            f.write(f"{names[i]},{'even' if y[i] % 2 == 0 else 'odd'}\n")
    assert main(["fit-probe", str(ref), "--labels", str(tmp_path / "manual.csv"), "--feature", "digits",
                 "--out", str(tmp_path / "probe.npz")]) == 0
    assert main(["label", str(ref), "--classifier", "facenet-probe", "--weights", str(tmp_path / "probe.npz"),
                 "--out", str(tmp_path / "p.csv"), "--no-cache"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    acc = np.mean([r["label"] == ("even" if t % 2 == 0 else "odd") for r, t in zip(rows, y[:400])])
    assert acc >= 0.75


def test_build_digits_classifier_command(tmp_path, capsys):
    out = tmp_path / "d.safetensors"
    assert main(["build-digits-classifier", "--out", str(out), "--epochs", "1"]) == 0
    assert out.is_file() and "held-out accuracy" in capsys.readouterr().out
