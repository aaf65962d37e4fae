"""Embedding maps and near-duplicates of a sample pool, from a classifier's own features.

The features are the ones the classifier decides on: the digits CNN's 128-d penultimate layer
for the demo, the probe's feature extractor for a linear probe, and facenet (vggface2) 512-d
embeddings for the face classifiers. They are projected to 2-D with UMAP when `umap-learn` is
installed and with PCA otherwise (the result names the method used).

Near-duplicates: cosine similarity of L2-normalised features above a threshold, found in row
chunks (memory O(chunk x n), never an n x n matrix) compared only with the rows close enough along
the first principal axis to pass it, and joined into groups (connected components).
"""
from __future__ import annotations

import numpy as np

from .errors import UserError

METHODS = ("auto", "pca", "umap")


# ----------------------------------------------------------------------------
# Feature extractors


def feature_extractor(classifier, device=None):
    """(name, fn(images) -> (N, D) float array) for the features this classifier decides on."""
    from .attributes.base import FaceGate
    from .attributes.digits import DigitsClassifier
    from .attributes.facenet import FacenetEmbedder, ProbeClassifier

    inner = classifier.inner if isinstance(classifier, FaceGate) else classifier
    if isinstance(inner, DigitsClassifier):
        return f"digits-penultimate:{inner.cache_id}", inner.features
    if isinstance(inner, ProbeClassifier):
        feats = inner.features  # the probe's own extractor (facenet, hog or digits)
        return f"{getattr(feats, 'feature_name', 'probe')}:{inner.cache_id}", feats
    # Face attribute classifiers (FairFace, deepface): facenet identity embeddings.
    return "facenet-vggface2", FacenetEmbedder(device=device)


# ----------------------------------------------------------------------------
# 2-D projection


def umap_available() -> bool:
    """True when umap-learn can be imported."""
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def _pca_2d(x: np.ndarray) -> np.ndarray:
    # PCA through the D x D covariance (D <= 512): O(n D^2), no n x n matrix. The sign of each
    # axis is fixed (largest-magnitude loading positive) so the same features give the same map.
    x = x - x.mean(axis=0, keepdims=True)
    cov = x.T @ x / max(len(x) - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    top = vecs[:, np.argsort(vals)[::-1][:2]]
    if top.shape[1] < 2:  # one feature dimension: pad a zero axis
        top = np.pad(top, ((0, 0), (0, 2 - top.shape[1])))
    signs = np.sign(top[np.abs(top).argmax(axis=0), [0, 1]])
    return x @ (top * np.where(signs == 0, 1, signs))


def project_2d(features, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, D) features -> ((N, 2) float32 coordinates, method used: 'PCA' or 'UMAP')."""
    if method not in METHODS:
        raise UserError(f"Unknown projection {method!r}; choose one of {', '.join(METHODS)}.")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise UserError(f"A map needs at least 2 samples with features (got shape {x.shape}).")
    if method == "umap" and not umap_available():
        raise UserError("UMAP was asked for but umap-learn is not installed (pip install umap-learn), "
                        "or choose PCA.")
    if method in ("umap", "auto") and umap_available() and len(x) > 15:
        import umap
        xy = umap.UMAP(n_components=2, random_state=seed, n_neighbors=15).fit_transform(x)
        return np.asarray(xy, dtype=np.float32), "UMAP"
    return _pca_2d(x).astype(np.float32), "PCA"


# ----------------------------------------------------------------------------
# Near-duplicates


def normalize_rows(features) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero (they match nothing)."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


MAX_PAIRS_PER_SAMPLE = 50  # more similar pairs than this per sample: the threshold is too low to mean "duplicate"


def _sort_axis(x: np.ndarray) -> np.ndarray:
    """Unit vector of the rows' largest variance (any unit vector keeps the search exact; this one
    spreads the rows out the most, so it prunes the most)."""
    c = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    vals, vecs = np.linalg.eigh(c.T @ c)
    u = vecs[:, -1] if len(vals) and vals[-1] > 0 else np.eye(x.shape[1])[0]
    return (u / np.linalg.norm(u)).astype(np.float32)


def near_duplicate_groups(features, threshold: float, chunk: int = 256, threads: int | None = None) -> list[list[int]]:
    """Groups (row indices, ascending; groups ordered by first index) of rows whose cosine > threshold.

    Rows are joined transitively (a ~ b and b ~ c put a, b, c in one group). The search is exact and
    prunes by geometry: for unit rows a, b and a unit axis u, |u.a - u.b| <= |a - b| = sqrt(2 - 2 cos),
    so two rows above the threshold lie within r = sqrt(2 (1 - threshold)) of each other along u. Rows
    are sorted along their first principal axis and each chunk of `chunk` sorted rows is multiplied
    (torch.mm, float32) only with the rows that follow it up to r further along the axis. Memory is
    O(chunk x n) plus the similar pairs; `threads` fixes torch's thread count for the search.
    """
    import torch
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not 0.0 < float(threshold) <= 1.0:
        raise UserError(f"The cosine threshold must be in (0, 1] (got {threshold}); 0.98 is a good start.")
    t = float(threshold)
    x = normalize_rows(features)
    n = len(x)
    if n < 2:
        return []
    limit = MAX_PAIRS_PER_SAMPLE * n
    pos = x @ _sort_axis(x)
    order = np.argsort(pos, kind="stable")
    pos, xs = pos[order], torch.from_numpy(np.ascontiguousarray(x[order]))
    reach = np.sqrt(2.0 * (1.0 - t)) + 1e-3  # + float32 rounding slack: never skip a pair at the threshold
    rows_all, cols_all, total = [], [], 0
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            end = int(np.searchsorted(pos, pos[stop - 1] + reach, side="right"))
            hits = (torch.mm(xs[start:stop], xs[start:end].T) > t).nonzero().numpy()
            r, c = hits[:, 0] + start, hits[:, 1] + start
            keep = c > r                                  # each pair once (sorted positions), no self-pairs
            rows_all.append(order[r[keep]])
            cols_all.append(order[c[keep]])
            total += int(keep.sum())
            if total > limit:
                raise UserError(f"Cosine threshold {threshold} joins more than {limit:,} pairs of {n:,} samples: "
                                "that is similarity, not duplication. Raise the threshold (e.g. 0.95-0.99).")
    finally:
        torch.set_num_threads(previous)
    r = np.concatenate(rows_all)
    c = np.concatenate(cols_all)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp, minlength=n)
    groups: dict[int, list[int]] = {}
    for i in np.flatnonzero(sizes[comp] > 1):
        groups.setdefault(int(comp[i]), []).append(int(i))
    return sorted(groups.values(), key=lambda g: g[0])


def extra_copies(groups: list[list[int]]) -> list[int]:
    """Everything but the first member of each group: what to drop so each mode counts once."""
    return sorted(i for g in groups for i in g[1:])
