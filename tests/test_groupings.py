"""Groupings: built-ins, group assignment with 'uncertain'/'no_face', fractions with Wilson intervals."""
import numpy as np
import pytest

from pipelines.attributes import NO_FACE, Grouping, builtin_groupings, group_fractions, resolve_grouping
from pipelines.attributes.groupings import (DEEPFACE_GENDER, DIGITS, FAIRFACE_GENDER, FAIRFACE_RACE7, label_counts,
                                            wilson_interval)
from pipelines.errors import UserError


def _onehot(idx, k, p=1.0):
    out = np.full((len(idx), k), (1 - p) / (k - 1))
    out[np.arange(len(idx)), idx] = p
    return out


def test_builtin_digit_groupings():
    g = builtin_groupings("digits")
    assert g["digits 0-4 vs 5-9"].groups == {"0-4": list("01234"), "5-9": list("56789")}
    for k in range(10):
        assert g[f"digit={k} vs rest"].group_names == [str(k), "rest"]
        assert sorted(sum(g[f"digit={k} vs rest"].groups.values(), [])) == DIGITS
    assert g["all ten digits"].group_names == DIGITS


def test_fairface_partitions_cover_every_class_once():
    for grouping in builtin_groupings("fairface-race7").values():
        members = sum(grouping.groups.values(), [])
        assert sorted(members) == sorted(FAIRFACE_RACE7), grouping.name
    assert "race7" in builtin_groupings("fairface-race7")


def test_gender_groupings_share_group_names_across_plugins():
    ff = builtin_groupings("fairface-gender")["gender"]
    df = builtin_groupings("deepface-gender")["gender"]
    assert ff.group_names == df.group_names == ["female", "male"]
    p_ff = np.array([[0.2, 0.8]])  # FairFace order: Male, Female
    p_df = np.array([[0.8, 0.2]])  # deepface order: Woman, Man
    assert ff.assign(p_ff, FAIRFACE_GENDER)[0][0] == df.assign(p_df, DEEPFACE_GENDER)[0][0] == "female"


def test_assign_sums_class_probabilities_and_marks_uncertain():
    g = builtin_groupings("digits")["digits 0-4 vs 5-9"]
    probs = np.zeros((3, 10))
    probs[0, [0, 1]] = [0.3, 0.3]
    probs[0, 7] = 0.4                                      # 0-4 by summing: 0.6
    probs[1, [2, 8]] = [0.45, 0.55]                        # 5-9 with 0.55
    probs[2, [3, 9]] = [0.5, 0.5]                          # tie at 0.5
    labels, gp = g.assign(probs, DIGITS, threshold=0.5)
    assert list(labels) == ["0-4", "5-9", "0-4"]
    assert np.allclose(gp, [[0.6, 0.4], [0.45, 0.55], [0.5, 0.5]])
    labels, _ = g.assign(probs, DIGITS, threshold=0.58)
    assert list(labels) == ["0-4", "uncertain", "uncertain"]


def test_no_face_rows_are_labelled_no_face():
    classes = DIGITS + [NO_FACE]
    probs = np.zeros((2, 11))
    probs[0, 3] = 1.0
    probs[1, 10] = 1.0
    labels, _ = builtin_groupings("digits")["digit=3 vs rest"].assign(probs, classes)
    assert list(labels) == ["3", NO_FACE]


def test_fractions_exclude_uncertain_and_give_wilson_intervals():
    g = builtin_groupings("digits")["digits 0-4 vs 5-9"]
    assigned = np.array(["0-4"] * 30 + ["5-9"] * 70 + ["uncertain"] * 50 + [NO_FACE] * 5, dtype=object)
    fr = group_fractions(assigned, g)
    assert fr["0-4"][0] == pytest.approx(0.3) and fr["5-9"][0] == pytest.approx(0.7)
    lo, hi = fr["5-9"][1:]
    assert lo == pytest.approx(0.6041, abs=1e-3) and hi == pytest.approx(0.7810, abs=1e-3)
    assert label_counts(assigned, g) == {"0-4": 30, "5-9": 70, "uncertain": 50, NO_FACE: 5}


def test_wilson_interval_reference_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_coverage_of_wilson_interval_by_simulation():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        k = rng.binomial(80, 0.3)
        lo, hi = wilson_interval(k, 80)
        hits += lo <= 0.3 <= hi
    assert 0.92 <= hits / 2000 <= 0.98


def test_grouping_validation_and_parse():
    with pytest.raises(UserError, match="one group only"):
        Grouping("bad", {"a": ["1", "2"], "b": ["2"]})
    with pytest.raises(UserError, match="reserved"):
        Grouping("bad", {"uncertain": ["1"]})
    g = Grouping.parse("low=0+1+2;high=7+8+9", name="custom")
    assert g.groups == {"low": ["0", "1", "2"], "high": ["7", "8", "9"]}
    with pytest.raises(UserError, match="does not have"):
        g.check_classes(["0", "1"])
    assert resolve_grouping(None, "digits", DIGITS).group_names == DIGITS
    assert resolve_grouping("low=0;high=9", "digits", DIGITS).group_names == ["low", "high"]
    with pytest.raises(UserError, match="unknown grouping"):
        resolve_grouping("no such grouping", "digits", DIGITS)


def test_partial_grouping_leaves_other_classes_uncertain():
    g = Grouping.parse("low=0;high=9")
    labels, gp = g.assign(_onehot(np.array([0, 9, 5]), 10), DIGITS)
    assert list(labels) == ["low", "high", "uncertain"]
