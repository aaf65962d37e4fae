"""Experiments built on the engine: self-consuming loops and the paper's 2-D reproduction."""
