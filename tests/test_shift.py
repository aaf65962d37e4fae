"""Auxiliary-mix suggestion a ≈ p − (q − p)/ω₀ (clipped to the simplex, renormalised) and set composition."""
import pytest

from pipelines.errors import UserError
from pipelines.shift import closest_omega, mix_counts, suggest_aux_mix


def test_paper_example_gives_thirty_percent_female():
    mix = suggest_aux_mix({"female": 0.5, "male": 0.5}, {"female": 0.7, "male": 0.3}, omega0=1.0)
    assert mix["female"] == pytest.approx(0.3) and mix["male"] == pytest.approx(0.7)


def test_mix_is_clipped_to_the_simplex_for_k_groups():
    mix = suggest_aux_mix({"a": 0.2, "b": 0.3, "c": 0.5}, {"a": 0.6, "b": 0.3, "c": 0.1}, omega0=0.5)
    assert all(v >= 0 for v in mix.values()) and sum(mix.values()) == pytest.approx(1)
    assert mix["a"] == 0  # p - (q - p)/omega0 < 0 is clipped


def test_same_target_as_base_keeps_the_base_mix():
    p = {"0-4": 0.52, "5-9": 0.48}
    assert suggest_aux_mix(p, p) == pytest.approx(p)


@pytest.mark.parametrize("target", [{"a": 0.6, "b": 0.6}, {"a": -0.1, "b": 1.1}, {}])
def test_bad_targets_are_refused(target):
    with pytest.raises(UserError):
        suggest_aux_mix({"a": 0.5, "b": 0.5}, target)


def test_counts_sum_to_n_and_follow_the_mix():
    counts = mix_counts({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 100)
    assert sum(counts.values()) == 100 and sorted(counts.values()) == [33, 33, 34]
    with pytest.raises(UserError):
        mix_counts({"a": 1.0}, 0)


def test_closest_omega_picks_the_nearest_fraction():
    assert closest_omega([0, 1, 2, 3], [0.5, 0.6, 0.72, 0.8], 0.7) == (2.0, 0.72)
