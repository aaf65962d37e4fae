"""Fréchet distance, feature statistics files, and per-group reference statistics."""
import numpy as np
import pytest
import scipy.linalg

from pipelines.errors import UserError
from pipelines.metrics.fid import (GroupStats, ReferenceStats, fd_report, mixture_stats, per_group_fd,
                                   stats_from_features)
from pipelines.metrics.frechet import feature_stats, frechet_distance, load_stats, save_stats


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _direct_fd(mu1, s1, mu2, s2):
    """Independent formula: Tr sqrt(s1 s2) = sum sqrt(eig(sqrt(s1) s2 sqrt(s1))) (symmetric PSD)."""
    r = scipy.linalg.sqrtm(s1).real
    eig = np.linalg.eigvalsh(r @ s2 @ r)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def test_diagonal_gaussians_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_matches_direct_computation_on_random_gaussians():
    rng = np.random.default_rng(0)
    for d in (2, 16, 64):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _spd(rng, d), _spd(rng, d)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_direct_fd(mu1, s1, mu2, s2), rel=1e-8, abs=1e-9)


def test_symmetric_and_float64():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    s1, s2 = _spd(rng, 8).astype(np.float32), _spd(rng, 8).astype(np.float32)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert isinstance(d12, float) and d12 == pytest.approx(d21, rel=1e-9)


def test_identical_sets_give_zero_even_when_singular():
    rng = np.random.default_rng(2)
    for n, d in ((500, 16), (20, 64)):  # second: fewer samples than dimensions -> singular covariance
        x = rng.normal(size=(n, d))
        mu, sigma = feature_stats(x)
        # zero up to round-off relative to the scale of the covariance
        assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


def test_two_samples_of_one_gaussian_are_closer_than_shifted():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    same = frechet_distance(*feature_stats(a), *feature_stats(b))
    shifted = frechet_distance(*feature_stats(a), *feature_stats(b + 1.0))
    assert 0 < same < 0.1 and shifted == pytest.approx(8.0 + same, abs=0.15)


def test_mismatched_stats_rejected():
    with pytest.raises(UserError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_needs_two_rows():
    with pytest.raises(UserError, match="at least 2"):
        feature_stats(np.zeros((1, 4)))


def test_stats_npz_roundtrip_and_edm_layout(tmp_path):
    rng = np.random.default_rng(4)
    mu, sigma = feature_stats(rng.normal(size=(50, 5)))
    save_stats(tmp_path / "s.npz", mu, sigma)
    with np.load(tmp_path / "s.npz") as d:  # exactly what EDM's fid.py / clean-fid read
        assert sorted(d.keys()) == ["mu", "sigma"] and d["mu"].dtype == np.float64
    mu2, sigma2 = load_stats(tmp_path / "s.npz")
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    with pytest.raises(UserError, match="not found"):
        load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(UserError, match="expected 'mu' and 'sigma'"):
        load_stats(tmp_path / "bad.npz")


def test_per_group_stats_come_from_exactly_that_groups_images(tmp_path):
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(300, 6))
    feats[100:200] += 3.0
    assigned = np.array(["a"] * 100 + ["b"] * 100 + ["uncertain"] * 97 + ["c"] * 1 + ["a"] * 2, dtype=object)
    ref = stats_from_features(feats, "FD-digits", "test-feat", assigned, ["a", "b", "c"])
    for g in ("a", "b"):
        mu, sigma = feature_stats(feats[assigned == g])
        assert np.array_equal(ref.groups[g].mu, mu) and np.array_equal(ref.groups[g].sigma, sigma)
    assert ref.groups["a"].n == 102 and ref.groups["b"].n == 100
    assert "c" not in ref.groups and ref.info["groups_without_stats"] == {"c": 1}
    mu_all, sigma_all = feature_stats(feats)  # overall uses every image, uncertain included
    assert np.array_equal(ref.mu, mu_all) and np.array_equal(ref.sigma, sigma_all)

    ref.save(tmp_path / "ref.npz")
    back = ReferenceStats.load(tmp_path / "ref.npz")
    assert back.feature == "test-feat" and back.metric == "FD-digits" and back.n == 300
    assert set(back.groups) == {"a", "b"} and np.array_equal(back.groups["b"].sigma, ref.groups["b"].sigma)
    mu_edm, _ = load_stats(tmp_path / "ref.npz")  # still readable as plain EDM stats
    assert np.array_equal(mu_edm, mu_all)


def test_per_group_fd_isolates_the_shifted_group():
    rng = np.random.default_rng(6)
    ref_feats = np.concatenate([rng.normal(size=(400, 4)), rng.normal(size=(400, 4)) + 5])
    ref = stats_from_features(ref_feats, "FID", "f", np.array(["x"] * 400 + ["y"] * 400, object), ["x", "y"])
    gen = np.concatenate([rng.normal(size=(400, 4)), rng.normal(size=(400, 4)) + 5 + 1.0])  # y drifts by 1
    groups = np.array(["x"] * 400 + ["y"] * 400, object)
    fd = per_group_fd(gen, groups, ref.groups)
    assert fd["x"] < 0.1 and fd["y"] == pytest.approx(4.0, abs=0.4)
    assert np.isnan(per_group_fd(gen[:1], groups[:1], ref.groups)["x"])  # one image: no covariance


def test_mixture_stats_match_pooled_population_and_reweighting():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(20000, 3)), rng.normal(size=(20000, 3)) * 2 + 3
    groups = {"a": GroupStats(*feature_stats(a), n=len(a)), "b": GroupStats(*feature_stats(b), n=len(b))}
    mu, sigma = mixture_stats(groups, {"a": 3, "b": 1})
    pooled = np.concatenate([a, b[:len(b) // 3]])
    mu_p, sigma_p = feature_stats(pooled)
    assert np.allclose(mu, mu_p, atol=0.05) and np.allclose(sigma, sigma_p, atol=0.1)
    # a generated set with a 3:1 mix is far from the 1:1 reference, close to the reweighted one
    ref = stats_from_features(np.concatenate([a, b]), "FID", "f",
                              np.array(["a"] * len(a) + ["b"] * len(b), object), ["a", "b"])
    gen_groups = np.array(["a"] * 3000 + ["b"] * 1000, object)
    gen = np.concatenate([rng.normal(size=(3000, 3)), rng.normal(size=(1000, 3)) * 2 + 3])
    r = fd_report(gen, ref, gen_groups, feature="f")
    assert r["reweighted"] < 0.05 < r["overall"]
    with pytest.raises(UserError, match="same --feature"):
        fd_report(gen, ref, feature="other")


# ----------------------------------------------------------------------------
# The metric's own floor, bootstrap intervals and the small-sample warning


def test_small_sample_warning_only_below_the_feature_dimension():
    from pipelines.metrics.floor import small_sample, small_sample_warning

    assert small_sample(127, 128) and not small_sample(128, 128)
    assert small_sample_warning(128, 128) is None
    msg = small_sample_warning(100, 128, "group 5-9", "FD-digits")
    assert "100 samples < 128" in msg and "group 5-9" in msg and "FD-digits" in msg


def test_fd_report_warns_for_every_small_group_and_flags_it():
    rng = np.random.default_rng(0)
    d = 16
    real = rng.normal(size=(600, d))
    real_groups = np.where(np.arange(600) % 2 == 0, "a", "b")
    ref = stats_from_features(real, "FD-digits", "f", real_groups, ["a", "b"])
    gen = rng.normal(size=(40, d))
    gen_groups = np.array(["a"] * 30 + ["b"] * 10)  # 30 >= 16, 10 < 16
    r = fd_report(gen, ref, gen_groups)
    assert r["dims"] == d and r["small_sample"] == {"overall": False, "reweighted": False,
                                                     "group a": False, "group b": True}
    assert len(r["warnings"]) == 1 and "group b" in r["warnings"][0] and "10 samples < 16" in r["warnings"][0]
    r = fd_report(gen[:12], ref)
    assert r["small_sample"] == {"overall": True} and "overall" in r["warnings"][0]


def test_fd_floor_falls_with_n_and_perfect_samples_sit_on_it():
    from pipelines.metrics.floor import fd_floor

    rng = np.random.default_rng(1)
    d = 8
    real = rng.normal(size=(3000, d))
    small, (lo_s, hi_s) = fd_floor(real, 100, repeats=30, seed=0)
    big, (lo_b, hi_b) = fd_floor(real, 2000, repeats=30, seed=0)
    assert big < small and lo_b <= big <= hi_b and hi_b < lo_s  # bias shrinks with n
    assert fd_floor(real, 100, repeats=30, seed=0)[0] == small  # seeded
    mu, sigma = feature_stats(real)
    # a fresh sample of the same distribution at n = 2000 lands near the floor; a shifted one far above it
    fresh = frechet_distance(*feature_stats(rng.normal(size=(2000, d))), mu, sigma)
    shifted = frechet_distance(*feature_stats(rng.normal(size=(2000, d)) + 0.3), mu, sigma)
    assert fresh < 3 * hi_b and shifted > 10 * hi_b


def test_fd_floor_per_group_uses_each_groups_rows_at_its_count():
    from pipelines.metrics.floor import fd_floor, fd_floor_per_group

    rng = np.random.default_rng(2)
    real = np.concatenate([rng.normal(size=(500, 4)), rng.normal(size=(500, 4)) * 3])
    groups = np.array(["a"] * 500 + ["b"] * 500)
    out = fd_floor_per_group(real, groups, {"a": 200, "b": 200, "c": 5}, repeats=10)
    assert out["c"]["mean"] is None and out["a"]["n"] == 200
    assert out["b"]["mean"] > 4 * out["a"]["mean"]  # b's features are 3x wider: a 9x larger bias
    assert out["a"]["interval"][0] <= out["a"]["mean"] <= out["a"]["interval"][1]
    assert out["a"]["mean"] == pytest.approx(fd_floor(real[:500], 200, 10, 1000)[0])


def test_fd_bootstrap_interval_separates_a_shifted_set():
    from pipelines.metrics.floor import fd_bootstrap

    rng = np.random.default_rng(3)
    mu, sigma = np.zeros(4), np.eye(4)
    same = rng.normal(size=(500, 4))
    moved = rng.normal(size=(500, 4)) + 0.5
    lo_s, hi_s = fd_bootstrap(same, mu, sigma, repeats=50)
    lo_m, hi_m = fd_bootstrap(moved, mu, sigma, repeats=50)
    assert lo_s < hi_s < lo_m < hi_m
    point = frechet_distance(*feature_stats(moved), mu, sigma)
    assert lo_m <= point <= hi_m
    same_point = frechet_distance(*feature_stats(same), mu, sigma)
    assert lo_s <= same_point <= hi_s  # bias-corrected: near the floor the interval still holds the estimate
