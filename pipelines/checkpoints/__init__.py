"""Checkpoint formats: our own (safetensors + JSON), safe EDM pickle import, SIMS bundles."""
