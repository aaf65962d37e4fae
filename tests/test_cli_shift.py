"""The shift, step by step on the command line: label (seeds kept), suggest-mix, build-set, find-omega, sweep,
export, and the built-in real digits as a reference. A tiny pool of the demo model (3 Heun steps)."""
import json
import zipfile

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.demo.assets import DEMO_MODEL
from pipelines.shift import mix_counts, suggest_aux_mix

GROUPING = ["--classifier", "digits", "--grouping", "digits 0-4 vs 5-9", "--no-cache"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-shift")
    assert main(["generate", "--model", str(DEMO_MODEL), "--seeds", "0-47", "--steps", "3",
                 "--out", str(d / "pool.npz")]) == 0
    return d


def test_label_keeps_seeds_and_help_lists_groupings(pool, capsys):
    assert main(["label", str(pool / "pool.npz"), "--out", str(pool / "labels.json"), *GROUPING]) == 0
    doc = json.loads((pool / "labels.json").read_text())
    assert [it["seed"] for it in doc["items"]] == list(range(48))
    with pytest.raises(SystemExit):
        main(["label", "--help"])
    out = capsys.readouterr().out
    assert "built-in groupings" in out and "'digits 0-4 vs 5-9'" in out and "'race6 (Asian merged)'" in out


def test_suggest_mix_matches_the_engine(pool):
    assert main(["suggest-mix", str(pool / "pool.npz"), "--target", "5-9=0.7", "--n-s", "40",
                 "--out", str(pool / "plan.json"), *GROUPING]) == 0
    plan = json.loads((pool / "plan.json").read_text())
    base = {g: v["fraction"] for g, v in plan["base_fractions"].items()}
    assert plan["mix"] == pytest.approx(suggest_aux_mix(base, {"0-4": 0.3, "5-9": 0.7}, 1.0))
    assert plan["counts"] == mix_counts(plan["mix"], 40)
    assert sum(v["count"] for v in plan["base_fractions"].values()) <= 48


def test_build_set_grows_the_pool_when_a_group_is_short(pool, capsys):
    labels = json.loads((pool / "labels.json").read_text())
    have = {g: sum(it["group"] == g for it in labels["items"]) for g in ("0-4", "5-9")}
    small = min(have, key=have.get)
    want = {small: have[small] + 6, ("5-9" if small == "0-4" else "0-4"): 4}
    mix = ",".join(f"{g}={c / sum(want.values())}" for g, c in want.items())
    args = ["build-set", str(pool / "pool.npz"), "--labels", str(pool / "labels.json"), "--mix", mix,
            "--n-s", str(sum(want.values())), *GROUPING]
    # without a model: refused with the studio's words, nothing written
    assert main([*args, "--out", str(pool / "S0.npz")]) == 2
    assert "more than the labelled pool can supply" in capsys.readouterr().err and not (pool / "S0.npz").exists()
    assert main([*args, "--model", str(DEMO_MODEL), "--out", str(pool / "S.npz")]) == 0
    s = np.load(pool / "S.npz")
    info = json.loads(str(s["set"]))
    assert info["counts"] == want and len(s["images"]) == sum(want.values())
    assert list(s["groups"]).count(small) == want[small]
    assert info["pool_grown_by"] > 0 and len(set(s["seeds"])) == len(s["seeds"])
    grown = np.load(pool / "S.pool.npz")
    assert list(grown["seeds"][:48]) == list(range(48)) and len(grown["seeds"]) == 48 + info["pool_grown_by"]
    original = np.load(pool / "pool.npz")["images"]
    for img, seed in zip(s["images"], s["seeds"]):  # every member is its seed's image
        assert np.array_equal(img, grown["images"][list(grown["seeds"]).index(seed)])
        if seed < 48:
            assert np.array_equal(img, original[seed])


def test_build_set_refuses_a_too_rare_group_naming_it(pool, capsys):
    assert main(["build-set", str(pool / "pool.npz"), "--labels", str(pool / "labels.json"), "--mix", "5-9=0.9",
                 "--n-s", "200", "--model", str(DEMO_MODEL), "--max-pool", "100", "--out", str(pool / "S1.npz"),
                 *GROUPING]) == 2
    err = capsys.readouterr().err
    assert "Group '5-9' is too rare" in err and "limit 100" in err and not (pool / "S1.npz").exists()


def test_build_set_from_a_not_preferred_list(pool):
    (pool / "np.txt").write_text("# sample names\n00000003\n00000007\n00000011\n")
    assert main(["build-set", str(pool / "pool.npz"), "--not-preferred", str(pool / "np.txt"),
                 "--out", str(pool / "S_np"), *GROUPING]) == 0
    info = json.loads((pool / "S_np" / "set.json").read_text())
    assert info["kind"] == "not_preferred" and info["seeds"] == [3, 7, 11]


def test_find_omega_says_when_the_target_is_out_of_reach(pool, capsys):
    # the base as its own auxiliary: guidance changes nothing, so no omega moves the fraction to 99%
    assert main(["find-omega", "--base", str(DEMO_MODEL), "--aux", str(DEMO_MODEL), "--group", "5-9",
                 "--target", "99%", "--n", "16", "--steps", "3", "--out", str(pool / "find.json"), *GROUPING]) == 0
    doc = json.loads((pool / "find.json").read_text())
    assert doc["status"] == "above_range" and not doc["reached"] and doc["measured"] == [-1.0, 0.0, 1.0, 2.0, 3.0]
    assert len({round(p["fraction"], 9) for p in doc["points"].values()}) == 1
    assert "out of reach" in capsys.readouterr().out


def test_sweep_writes_the_grid_and_figures(pool):
    out = pool / "sweep"
    assert main(["sweep", "--base", str(DEMO_MODEL), "--aux", str(DEMO_MODEL), "--omegas", "0,1", "--n", "16",
                 "--steps", "3", "--ref", "digits", "--out", str(out), *GROUPING]) == 0
    grid = json.loads((out / "grid.json").read_text())
    assert [p["omega"] for p in grid["points"]] == [0.0, 1.0]
    p0, p1 = grid["points"]
    assert p0["metric"] == "FD-digits" and p0["fd"] == pytest.approx(p1["fd"], rel=1e-4)  # aux = base
    assert all(0 <= v["ci95"][0] <= v["fraction"] <= v["ci95"][1] <= 1 for v in p0["fractions"].values())
    assert p0["fd_warnings"]  # 16 samples: the small-sample warning travels with the number
    for name in ("fraction_vs_omega.html", "fd_vs_omega.html", "heatmap.html"):
        assert (out / name).stat().st_size > 1000


def test_export_bundle_and_dataset(pool, capsys):
    assert main(["export", "bundle", "--base", str(DEMO_MODEL), "--aux", str(DEMO_MODEL), "--omega", "1.5",
                 "--steps", "3", "--out", str(pool / "b.safetensors")]) == 0
    from pipelines.checkpoints.bundle import read_bundle_metadata
    assert read_bundle_metadata(pool / "b.safetensors")["omega"] == 1.5
    assert main(["export", "bundle", "--base", str(DEMO_MODEL), "--aux", str(DEMO_MODEL), "--omega", "1",
                 "--out", str(pool / "b.safetensors")]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err
    assert main(["export", "dataset", "--base", str(DEMO_MODEL), "--aux", str(DEMO_MODEL), "--omega", "1",
                 "--n", "8", "--steps", "3", "--planned", "5-9=0.7", "--out", str(pool / "d.zip"), *GROUPING]) == 0
    with zipfile.ZipFile(pool / "d.zip") as z:
        assert len([n for n in z.namelist() if n.endswith(".png")]) == 8
    info = json.loads((pool / "d.json").read_text())
    assert set(info["realised_mix"]) == {"0-4", "5-9"} and info["planned_fraction"] == "5-9=0.7"
    assert "realised mix" in capsys.readouterr().out


def test_fid_and_ref_stats_take_the_builtin_digits(pool):
    assert main(["ref-stats", "digits", "--feature", "digits", "--out", str(pool / "ref.npz"), "--no-cache"]) == 0
    assert main(["fid", str(pool / "pool.npz"), "--ref", "digits", "--feature", "digits", "--out",
                 str(pool / "fid.json"), "--no-cache"]) == 0
    with_stats = pool / "fid2.json"
    assert main(["fid", str(pool / "pool.npz"), "--ref", str(pool / "ref.npz"), "--feature", "digits", "--out",
                 str(with_stats), "--no-cache"]) == 0
    a, b = (json.loads(p.read_text()) for p in (pool / "fid.json", with_stats))
    assert a["n_ref"] == 1797 and a["overall"] == pytest.approx(b["overall"], rel=1e-6)
