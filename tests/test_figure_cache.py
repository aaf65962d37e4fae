"""The Guide's figure cache: one figure per distinct arguments, keyed on whole arrays, bounded."""
import numpy as np

from studio.ui import figure_cache, plots
from studio.ui.figure_cache import figure

CALLS = []


def counted(values, omega):
    CALLS.append((values, omega))
    return plots.empty(f"ω = {omega}", str(values))


def test_same_arguments_give_the_same_figure_and_others_a_new_one():
    CALLS.clear()
    a = figure(counted, {"0-4": [0.1, 0.2]}, 0.5)
    assert figure(counted, {"0-4": [0.1, 0.2]}, 0.5) is a and len(CALLS) == 1
    assert figure(counted, {"0-4": [0.1, 0.2]}, 0.75) is not a  # the ω line moved
    assert figure(counted, {"0-4": [0.1, 0.3]}, 0.5) is not a  # new measurements
    assert len(CALLS) == 3


def test_arrays_are_keyed_whole():
    CALLS.clear()
    x = np.zeros(5000)
    y = x.copy()
    y[2500] = 1  # numpy's printed form hides the middle of a long array; the key must not
    assert figure(counted, x, 0.0) is not figure(counted, y, 0.0)
    assert len(CALLS) == 2


def test_the_cache_keeps_the_newest_figures_only(monkeypatch):
    monkeypatch.setattr(figure_cache, "SIZE", 3)
    CALLS.clear()
    first = figure(counted, "first", 0.0)
    for w in (1.0, 2.0, 3.0):
        figure(counted, "other", w)
    assert figure(counted, "first", 0.0) is not first  # evicted, drawn again
    assert len(CALLS) == 5 and len(figure_cache._FIGURES) == 3
