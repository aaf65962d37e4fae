"""The studio's page holds no gr.State: a State makes Gradio keep a heartbeat request open for the page's
whole life, so the page never becomes network-idle (headless checks and the browser tests wait for that)
and every tab keeps a server connection. Per-browser values live in hidden components instead."""
import gradio as gr

from studio.testing import tiny_studio


def test_the_built_ui_has_no_state_component(tmp_path):
    from studio.ui.app import build_ui
    st, _ = tiny_studio(tmp_path / "data")
    try:
        demo = build_ui(st)
        states = [b for b in demo.blocks.values() if isinstance(b, gr.State)]
        assert not states, f"gr.State found ({len(states)}); use studio.ui.common.hidden_value instead"
    finally:
        st.close()
