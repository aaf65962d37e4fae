"""FID through clean-fid's Inception features in our own batched loop, cached; FD-digits for the demo.

Features: `InceptionFeatureExtractor` uses clean-fid's 'clean' mode exactly (its PIL bicubic
float resize to 299x299 and its torchscript Inception from /tmp/inception-2015-12-05.pt), but
decodes and resizes in a thread pool while the network runs on the previous batch, and keeps
the features on disk keyed by the images' content hash, so a reference set is featurised once.
A classifier names its own feature space (`Classifier.feature_space` / `feature_extractor()`):
the demo digits classifier's 128-d features give 'FD-digits', never called FID.

Reference statistics (`ReferenceStats`) hold mu/sigma for a whole real set and, optionally,
per group of a grouping (the real images labelled by a classifier): group g's statistics come
from exactly the images assigned to g ('uncertain'/'no_face' images join no group). The npz
keeps `mu`/`sigma` at the top level, so EDM and clean-fid read the overall statistics as usual.
"""
from __future__ import annotations

import json
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..attributes.base import as_uint8_nhwc, resolve_device
from ..image_source import ImageSource, array_hash, cached_array
from ..errors import UserError
from .floor import small_sample, small_sample_warning
from .frechet import feature_stats, frechet_distance, save_stats

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


def inception_dir() -> Path:
    """Where clean-fid looks for the Inception file (hard-coded in clean-fid: /tmp, or ./ on Windows)."""
    return Path("./" if platform.system() == "Windows" else "/tmp")


# ----------------------------------------------------------------------------
# Feature extractors


class InceptionFeatureExtractor:
    """clean-fid 'clean' Inception features (N, 2048), batched, resize in threads.

    `network` swaps the Inception network for any callable with the same contract
    ((n, 3, 299, 299) float in [0, 255] -> (n, 2048)); used offline by tests and bench only,
    and recorded in `feature_id` so its features never mix with real Inception ones.
    """

    metric = "FID"
    dims = 2048

    def __init__(self, device=None, network=None, network_name: str | None = None, threads: int | None = None):
        from cleanfid.resize import build_resizer

        self.device = resolve_device(device)
        if network is None:
            path = inception_dir() / INCEPTION_FILE
            if not path.is_file():
                raise UserError(f"Inception weights for FID not found at {path}. Download {INCEPTION_URL} "
                                f"and put it in {inception_dir()}/ (clean-fid reads that exact path), or use "
                                "--feature digits for the offline FD-digits")
            from cleanfid.features import build_feature_extractor

            network = build_feature_extractor("clean", device=self.device, use_dataparallel=False)
            self.feature_id = "inception-2015-12-05/clean"
        else:
            if network_name is None:
                raise ValueError("a swapped network needs a network_name (it goes into the cache key)")
            self.feature_id = f"swapped:{network_name}"
        self.network = network
        self.resize = build_resizer("clean")  # clean-fid's own resize, so features match compute_fid
        self.threads = threads or os.cpu_count() or 1

    def _resize_one(self, img: np.ndarray) -> np.ndarray:
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        return self.resize(img).astype(np.float32, copy=False)

    def preprocess(self, images, pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
        """uint8 NHWC (or [-1, 1] NCHW) -> (n, 3, 299, 299) float32 in [0, 255], clean-fid's resize."""
        x = as_uint8_nhwc(images)
        resized = list(pool.map(self._resize_one, x)) if pool else [self._resize_one(i) for i in x]
        return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)

    @torch.inference_mode()
    def features_of_batches(self, batches) -> np.ndarray:
        """Features of an iterable of image batches; the next batch is prepared while the network runs."""
        out = [np.zeros((0, self.dims), np.float32)]
        with ThreadPoolExecutor(self.threads) as pool, ThreadPoolExecutor(1) as ahead:
            it = iter(batches)
            pending = None
            first = next(it, None)
            if first is not None:
                pending = ahead.submit(self.preprocess, first, pool)
            while pending is not None:
                x = pending.result()
                nxt = next(it, None)
                pending = ahead.submit(self.preprocess, nxt, pool) if nxt is not None else None
                feats = self.network(x.to(self.device))
                out.append(feats.detach().float().cpu().numpy().reshape(len(x), self.dims))
        return np.concatenate(out)

    def __call__(self, images, batch_size: int = 64) -> np.ndarray:
        """(N, 2048) features of an in-memory batch."""
        n = int(images.shape[0])
        return self.features_of_batches(images[s:s + batch_size] for s in range(0, n, batch_size))


class StandInInception(torch.nn.Module):
    """Offline stand-in with Inception's contract ((n, 3, 299, 299) in [0, 255] -> (n, 2048)).

    For tests and benchmarks only, where the real Inception file cannot be had: 'inception-v3'
    is torchvision's Inception-v3 architecture with random weights (same cost as the real one),
    'tiny' two strided convolutions. Its features are not FID; `feature_id` says 'swapped:'.
    """

    def __init__(self, kind: str = "tiny", seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        if kind == "inception-v3":
            import torchvision

            self.body = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
            self.body.fc = torch.nn.Identity()
        elif kind == "tiny":
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(16, 64, 5, stride=4),
                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(1024, 2048))
        else:
            raise ValueError(f"unknown stand-in {kind!r}")
        self.kind = kind
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 255] images -> (n, 2048), normalised as clean-fid normalises for Inception."""
        return self.body((x - 128) / 128)


def get_feature_extractor(kind: str, device=None, weights=None):
    """'inception' (FID, needs the Inception file) or 'digits' (FD-digits, offline)."""
    if kind == "inception":
        return InceptionFeatureExtractor(device=device)
    if kind == "digits":
        from ..attributes.digits import load_digits_classifier

        return load_digits_classifier(weights, device=device).feature_extractor()
    raise UserError(f"unknown feature kind {kind!r}; choose 'inception' (FID) or 'digits' (FD-digits)")


def extractor_for(classifier):
    """The extractor of a classifier's `feature_space`: its own (the demo's FD-digits) or clean-fid Inception (FID)."""
    if classifier.feature_space.kind == "inception":
        return InceptionFeatureExtractor(device=classifier.device)
    return classifier.feature_extractor()


def compute_features(images_or_folder, extractor, cache_dir=None, batch_size: int = 64) -> np.ndarray:
    """Features of a folder / npz path / ImageSource / image array, cached under cache_dir by content hash."""
    if isinstance(images_or_folder, (str, os.PathLike, ImageSource)):
        src = images_or_folder if isinstance(images_or_folder, ImageSource) else ImageSource(images_or_folder)
        key = f"features|{extractor.feature_id}|{src.content_hash()}"
        return cached_array(cache_dir, key, lambda: extractor.features_of_batches(src.batches(batch_size)))
    images = as_uint8_nhwc(images_or_folder)
    key = f"features|{extractor.feature_id}|{array_hash(images)}"
    return cached_array(cache_dir, key, lambda: extractor(images, batch_size))


# ----------------------------------------------------------------------------
# Reference statistics, overall and per group


@dataclass
class GroupStats:
    """Statistics of one group's images."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


@dataclass
class ReferenceStats:
    """mu/sigma of a reference set, optionally per group, with what made them."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    feature: str = "unknown"
    metric: str = "FID"
    groups: dict[str, GroupStats] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # classifier, grouping, threshold, skipped groups

    def save(self, path) -> None:
        """npz: `mu`, `sigma` (EDM/clean-fid layout) + group arrays and a JSON `info`."""
        names = list(self.groups)
        extra = dict(n=np.int64(self.n), feature=np.str_(self.feature), metric=np.str_(self.metric),
                     info=np.str_(json.dumps(self.info)), group_names=np.asarray(names, dtype=str),
                     group_counts=np.asarray([self.groups[g].n for g in names], dtype=np.int64))
        if names:
            extra["group_mu"] = np.stack([self.groups[g].mu for g in names])
            extra["group_sigma"] = np.stack([self.groups[g].sigma for g in names])
        save_stats(path, self.mu, self.sigma, **extra)

    @classmethod
    def load(cls, path) -> "ReferenceStats":
        """Read ours, or a plain EDM/clean-fid npz (feature then 'unknown', assumed Inception)."""
        from .frechet import load_stats

        mu, sigma = load_stats(path)
        with np.load(path, allow_pickle=False) as d:
            if "feature" not in d:
                return cls(mu, sigma, n=0, feature="unknown", metric="FID",
                           info={"source": f"{path} (no feature record: assumed clean-fid Inception)"})
            names = [str(s) for s in d["group_names"]]
            groups = {g: GroupStats(d["group_mu"][i], d["group_sigma"][i], int(d["group_counts"][i]))
                      for i, g in enumerate(names)}
            return cls(mu, sigma, int(d["n"]), str(d["feature"]), str(d["metric"]), groups, json.loads(str(d["info"])))


def stats_from_features(features, metric: str, feature: str, assigned=None, group_names=None,
                        info: dict | None = None) -> ReferenceStats:
    """ReferenceStats from (N, D) features; per group from exactly the rows assigned to it."""
    mu, sigma = feature_stats(features)
    ref = ReferenceStats(mu, sigma, len(features), feature, metric, info=dict(info or {}))
    if assigned is not None:
        assigned = np.asarray(assigned, dtype=object)
        skipped = {}
        for g in group_names:
            rows = np.asarray(features)[assigned == g]
            if len(rows) < 2:
                skipped[g] = int(len(rows))  # a covariance needs two images
                continue
            ref.groups[g] = GroupStats(*feature_stats(rows), n=len(rows))
        if skipped:
            ref.info["groups_without_stats"] = skipped
    return ref


def mixture_stats(groups: dict[str, GroupStats], weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Moments of the mixture sum_g w_g N(mu_g, sigma_g): the reference reweighted to a group mix."""
    total = sum(weights[g] for g in weights if g in groups)
    if total <= 0:
        raise UserError("no weight on any group that has reference statistics")
    mu = sum(weights[g] / total * groups[g].mu for g in weights if g in groups)
    second = sum(weights[g] / total * (groups[g].sigma + np.outer(groups[g].mu, groups[g].mu))
                 for g in weights if g in groups)
    return mu, second - np.outer(mu, mu)


def per_group_fd(gen_features, gen_groups, ref_stats_by_group, min_count: int = 2) -> dict[str, float]:
    """group -> Fréchet distance of that group's generated features vs its reference stats (nan if < min_count)."""
    gen_features = np.asarray(gen_features, np.float64)
    gen_groups = np.asarray(gen_groups, dtype=object)
    out = {}
    for g, ref in ref_stats_by_group.items():
        mu_r, sigma_r = (ref.mu, ref.sigma) if isinstance(ref, GroupStats) else ref
        rows = gen_features[gen_groups == g]
        out[g] = frechet_distance(*feature_stats(rows), mu_r, sigma_r) if len(rows) >= max(2, min_count) else float("nan")
    return out


def fd_report(gen_features, ref: ReferenceStats, gen_groups=None, feature: str | None = None) -> dict:
    """Overall FD, and with gen_groups: per-group FD and FD against the reference reweighted to the generated mix."""
    if feature is not None and ref.feature not in ("unknown", feature):
        raise UserError(f"reference statistics were made with features {ref.feature!r} but the generated "
                        f"set uses {feature!r}; rebuild the reference with the same --feature")
    dims = int(np.asarray(ref.mu).size)
    report = {"metric": ref.metric, "feature": feature or ref.feature, "n_gen": int(len(gen_features)),
              "n_ref": ref.n, "dims": dims,
              "overall": frechet_distance(*feature_stats(gen_features), ref.mu, ref.sigma)}
    # Every FD from fewer samples than feature dimensions says so (see floor.small_sample_warning).
    sizes = {"overall": report["n_gen"]}
    if gen_groups is not None:
        if not ref.groups:
            raise UserError("the reference statistics have no groups; make them with "
                            "`ref-stats --per-group --classifier NAME --grouping NAME`")
        gen_groups = np.asarray(gen_groups, dtype=object)
        counts = {g: int((gen_groups == g).sum()) for g in ref.groups}
        report["per_group"] = per_group_fd(gen_features, gen_groups, ref.groups)
        report["gen_counts"] = counts
        report["ref_counts"] = {g: s.n for g, s in ref.groups.items()}
        assigned = np.isin(gen_groups, list(ref.groups))
        if sum(counts.values()) >= 2 and assigned.sum() >= 2:
            mu_m, sigma_m = mixture_stats(ref.groups, {g: c for g, c in counts.items()})
            report["reweighted"] = frechet_distance(*feature_stats(np.asarray(gen_features)[assigned]), mu_m, sigma_m)
            sizes["reweighted"] = int(assigned.sum())
        sizes.update({f"group {g}": c for g, c in counts.items()})
    report["small_sample"] = {k: small_sample(n, dims) for k, n in sizes.items()}
    report["warnings"] = [w for k, n in sizes.items()
                          if (w := small_sample_warning(n, dims, k, ref.metric)) is not None]
    return report


# ----------------------------------------------------------------------------
# FD-digits helpers for the offline demo


def fd_digits(gen_images, ref_images_or_stats, device=None, cache_dir=None) -> float:
    """FD-digits of generated images against reference images or ReferenceStats (not FID)."""
    ext = get_feature_extractor("digits", device=device)
    gen = compute_features(gen_images, ext, cache_dir)
    if isinstance(ref_images_or_stats, ReferenceStats):
        return fd_report(gen, ref_images_or_stats, feature=ext.feature_id)["overall"]
    ref = compute_features(ref_images_or_stats, ext, cache_dir)
    return frechet_distance(*feature_stats(gen), *feature_stats(ref))

