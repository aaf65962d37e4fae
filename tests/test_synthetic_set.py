"""Building S from a labelled pool: exact composition, growth when short, refusal when too rare."""
import pytest

from pipelines.errors import UserError
from pipelines.synthetic_set import choose_members, fill_set


def test_members_follow_the_counts():
    pool = ["a", "b", "a", "uncertain", "b", "a"]
    members = choose_members(pool, {"a": 2, "b": 2})
    assert members == {"a": [0, 2], "b": [1, 4]}


def test_short_group_grows_the_pool():
    calls = []

    def grow(n):
        calls.append(n)
        return ["b" if i % 4 == 0 else "a" for i in range(n)]  # 'b' is 25% of new samples

    members, pool = fill_set(["a"] * 10 + ["b"] * 2, {"a": 5, "b": 20}, grow, max_pool=10_000, chunk=32)
    assert len(members["b"]) == 20 and len(members["a"]) == 5
    assert len(pool) > 12 and calls
    assert all(pool[i] == "b" for i in members["b"])


def test_too_rare_group_is_refused_before_generating():
    grown = []
    pool = ["a"] * 999 + ["b"]
    with pytest.raises(UserError, match="'b' is too rare"):
        fill_set(pool, {"a": 10, "b": 500}, lambda n: grown.append(n) or ["a"] * n, max_pool=5000)
    assert not grown


def test_no_generator_reports_the_shortfall():
    with pytest.raises(UserError, match="'b' needs 3, pool has 1"):
        fill_set(["a", "a", "b"], {"a": 1, "b": 3}, None, max_pool=10)


def test_uncertain_is_not_a_group():
    with pytest.raises(UserError, match="uncertain"):
        fill_set(["a"], {"uncertain": 1}, None, max_pool=10)
