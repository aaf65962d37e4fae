"""find_omega: the engine's search for the guidance that meets a target fraction, over a measure callback."""
import math

import pytest

from pipelines.errors import UserError
from pipelines.shift import find_omega


def logistic(w: float) -> float:
    """A monotone fraction curve: 0.3 at omega=-1, ~0.5 at 0, ~0.78 at 3."""
    return 0.3 + 0.5 / (1 + math.exp(-0.8 * (w - 0.4)))


class Recorder:
    def __init__(self, curve, noise=None, half_width=0.06):
        self.curve, self.noise, self.half, self.calls = curve, noise or (lambda w: 0.0), half_width, []

    def __call__(self, w):
        self.calls.append(w)
        f = self.curve(w) + self.noise(w)
        return f, (f - self.half, f + self.half)


def test_monotone_curve_is_bisected_to_the_target():
    m = Recorder(logistic, half_width=0.005)
    r = find_omega(m, 0.7, iterations=6)
    assert r.status == "reached" and r.reached
    assert abs(r.fraction - 0.7) <= 0.02 and abs(logistic(r.omega) - 0.7) <= 0.02
    assert m.calls[:5] == [-1.0, 0.0, 1.0, 2.0, 3.0]  # coarse grid first
    assert all(1.0 < w < 3.0 for w in m.calls[5:])     # then only inside the crossing bracket
    assert r.measured == m.calls and set(r.points) >= set(m.calls)


def test_known_points_are_reused_not_measured():
    m = Recorder(logistic)
    known = {w: (logistic(w), None) for w in (-1.0, 0.0, 1.0, 2.0, 3.0)}
    r = find_omega(m, 0.7, known=known, iterations=3)
    assert all(w not in (-1.0, 0.0, 1.0, 2.0, 3.0) for w in m.calls) and len(m.calls) <= 3
    assert r.points[0.0][0] == pytest.approx(logistic(0.0))


def test_noisy_non_monotone_curve_picks_the_crossing_nearest_the_target():
    # deterministic "noise" of +-0.04 makes the curve wiggle; the answer must still sit near the target
    noise = lambda w: 0.04 * math.sin(7.3 * w)  # noqa: E731
    m = Recorder(logistic, noise, half_width=0.06)
    r = find_omega(m, 0.7, iterations=4)
    assert len(m.calls) <= 5 + 4
    assert abs(r.fraction - 0.7) <= 0.05
    assert abs(logistic(r.omega) - 0.7) <= 0.1  # the true curve at the answer is near the target too


def test_stops_when_a_point_is_within_its_own_interval_of_the_target():
    m = Recorder(lambda w: 0.69 if w == 1.0 else (0.5 if w < 1 else 0.8), half_width=0.06)
    r = find_omega(m, 0.7, iterations=4)
    assert r.omega == 1.0 and r.reached and len(m.calls) == 5  # no bisection point: 69% ± 6% holds 70%


def test_unreachable_target_says_so():
    m = Recorder(logistic)
    r = find_omega(m, 0.95, iterations=4)
    assert not r.reached and r.status == "above_range" and r.omega == 3.0
    text = r.describe("5-9")
    assert "out of reach" in text and "[-1, 3]" in text and "5-9" in text and "that high" in text
    assert len(m.calls) == 5  # no bisection without a crossing
    low = find_omega(Recorder(logistic), 0.1)
    assert low.status == "below_range" and low.omega == -1.0 and "that low" in low.describe("5-9")


def test_reached_message_and_bad_input():
    r = find_omega(Recorder(logistic, half_width=0.01), 0.6, iterations=8)
    assert r.describe("5-9").startswith(f"omega = {r.omega:+.3f} gives 5-9 ") and "out of reach" not in r.describe()
    with pytest.raises(UserError, match="between 0 and 1"):
        find_omega(Recorder(logistic), 1.5)
    with pytest.raises(UserError, match="increasing"):
        find_omega(Recorder(logistic), 0.5, omega_range=(3, -1))
