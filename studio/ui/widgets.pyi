"""Small variants of Gradio widgets the studio needs (Gradio writes the .pyi stub beside this file)."""
from __future__ import annotations

import gradio as gr

from gradio.events import Dependency

class ShareSlider(gr.Slider):
    """A percentage slider whose typed value is clamped into range: a plain Slider refuses 150 with an error
    toast per listening event, leaving the other shares unscaled and the sum label stale."""

    def get_block_name(self) -> str:
        return "slider"  # the same widget in the page

    def preprocess(self, payload):
        if payload is None:
            return None
        return super().preprocess(min(max(float(payload), self.minimum), self.maximum))
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component