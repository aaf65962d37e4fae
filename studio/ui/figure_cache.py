"""Figures drawn once per distinct data: the Guide redraws its curves at every ω a user lets go of, from
many browsers at once, and building a plotly figure costs 5-25 ms of the web process's CPU (its
property validators, the template), more than everything else a cached ω move does. The figure
functions are pure (data in, figure out), so a figure of the same arguments is taken from here.
Figures handed out are shared: callers return them to Gradio (which only serialises them) and must
not change them."""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Callable

import plotly.graph_objects as go

SIZE = 256  # figures kept (a few tens of KB each): 17 slider positions x several plots x a few checkpoints
_FIGURES: OrderedDict[str, go.Figure] = OrderedDict()
_LOCK = threading.Lock()


def _plain(o):
    """JSON for what the figure functions take besides JSON types: arrays (whole, never abbreviated)."""
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot key a figure on {type(o).__name__}")


def figure(fn: Callable[..., go.Figure], *args) -> go.Figure:
    """fn(*args), built once per distinct (fn, args) among the last SIZE."""
    key = json.dumps([fn.__module__, fn.__qualname__, args], default=_plain, sort_keys=True)
    with _LOCK:
        if key in _FIGURES:
            _FIGURES.move_to_end(key)
            return _FIGURES[key]
    fig = fn(*args)  # outside the lock: two threads may build the same figure once each, never wait
    with _LOCK:
        _FIGURES[key] = fig
        while len(_FIGURES) > SIZE:
            _FIGURES.popitem(last=False)
    return fig
