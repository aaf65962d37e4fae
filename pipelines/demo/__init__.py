"""The bundled offline world: a SongUNet trained on scikit-learn's real digits, its classifier,
and the end-to-end SIMS shift on it (issue 5)."""
