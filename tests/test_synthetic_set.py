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


def test_too_rare_names_the_group_that_drives_the_estimate():
    # The shape of a real report: 512 labelled samples, S of 1000 with 73% 0-4 / 27% 5-9. 5-9 is the
    # smaller group in the pool but only 20 short; 0-4 is 468 short and needs a pool of about 1420.
    pool = ["0-4"] * 264 + ["5-9"] * 248
    counts = {"0-4": 732, "5-9": 268}
    with pytest.raises(UserError) as e:
        fill_set(pool, counts, lambda n: ["0-4"] * n, max_pool=1000)
    msg = str(e.value)
    expected = 512 + -(-468 * 512 // 264)  # n + ceil(short / rate) for 0-4
    assert "Group '0-4' is too rare" in msg and f"about {expected} pool samples" in msg
    assert "264 of 512" in msg and "needs 732" in msg and "share of '0-4'" in msg and "'5-9'" not in msg
    # the advice is right: a smaller 0-4 share fits the same limit
    from pipelines.synthetic_set import check_feasible
    assert 0 < check_feasible(pool, {"0-4": 400, "5-9": 600}, max_pool=1500) <= 1500 - 512


def test_estimate_is_the_largest_group_need():
    from pipelines.synthetic_set import extra_samples_needed, pool_needed
    pool = ["a"] * 50 + ["b"] * 50
    assert pool_needed(pool, {"a": 60, "b": 200}) == {"a": 120, "b": 400}
    assert extra_samples_needed(pool, {"a": 60, "b": 200}) == 300
    assert extra_samples_needed(pool, {"a": 10}) == 0
    assert extra_samples_needed(pool, {"c": 1}) == float("inf")
