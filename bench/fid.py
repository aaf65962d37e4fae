"""Images/s of our FID feature extraction vs clean-fid's own path, on the same PNG folder, in one run.

Ours: `pipelines.metrics.fid.compute_features` (decode + clean-fid's resize in a thread pool,
next batch prepared while the network runs). Theirs: `cleanfid.fid.get_folder_features`
(its DataLoader path that `compute_fid` uses), with its default num_workers=12 and with 0.
Both use clean mode and the same network object, so the features must agree (checked).

Offline, the Inception file (/tmp/inception-2015-12-05.pt) is absent: the network is then
swapped for a stand-in with the same input/output shape ((n, 3, 299, 299) -> (n, 2048)),
by default torchvision's Inception-v3 architecture with random weights; the output says which.
Each path runs `--repeats` times alternately; the best time of each is reported.

    python bench/fid.py [--n 128] [--size 64] [--batch 32] [--network auto|real|inception-v3|tiny] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.metrics import fid as fidmod  # noqa: E402


def make_folder(root: Path, n: int, size: int) -> Path:
    """n RGB PNGs of sklearn digits, upscaled to size x size and tinted, in EDM's folder layout."""
    from sklearn.datasets import load_digits

    d = load_digits().images / 16.0
    rng = np.random.default_rng(0)
    for i in range(n):
        g = torch.nn.functional.interpolate(torch.from_numpy(d[i % len(d)])[None, None].float(), size=(size, size),
                                            mode="bilinear", align_corners=False)[0, 0].numpy()
        rgb = np.stack([g * c for c in rng.uniform(0.5, 1.0, 3)], -1) + rng.normal(0, 0.03, (size, size, 3))
        sub = root / f"{i // 1000:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rgb.clip(0, 1) * 255).astype(np.uint8)).save(sub / f"img{i:08d}.png")
    return root


def build_network(kind: str, device):
    """(network, description): the real clean-fid Inception or a same-shape stand-in."""
    real = (fidmod.inception_dir() / fidmod.INCEPTION_FILE).is_file()
    if kind == "real" or (kind == "auto" and real):
        ext = fidmod.InceptionFeatureExtractor(device=device)
        return ext.network, "real clean-fid Inception (inception-2015-12-05.pt)", ext
    kind = "inception-v3" if kind == "auto" else kind
    net = fidmod.StandInInception(kind).to(device)
    desc = (f"STAND-IN network '{kind}' (random weights, same input/output shape as Inception; "
            f"{fidmod.INCEPTION_FILE} not present) - timings only, features are not FID")
    return net, desc, fidmod.InceptionFeatureExtractor(device=device, network=net, network_name=kind)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--network", default="auto", choices=["auto", "real", "inception-v3", "tiny"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    from cleanfid.fid import get_folder_features

    device = torch.device(args.device)
    net, desc, ext = build_network(args.network, device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "imgs", args.n, args.size)
        with torch.inference_mode():  # warm-up: first-call allocations would bias whichever runs first
            net(torch.zeros(2, 3, 299, 299, device=device))

        def ours():
            return fidmod.compute_features(folder, ext, cache_dir=None, batch_size=args.batch)

        def theirs(workers):
            return lambda: get_folder_features(str(folder), net, num_workers=workers, batch_size=args.batch,
                                               device=device, mode="clean", verbose=False)

        runs = {"ours": ours, "clean-fid (num_workers=12, its default)": theirs(12),
                "clean-fid (num_workers=0)": theirs(0)}
        best, feats = {k: float("inf") for k in runs}, {}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                feats[name] = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best[name] = min(best[name], time.perf_counter() - t0)
        t0 = time.perf_counter()
        cache = Path(tmp) / "cache"
        fidmod.compute_features(folder, ext, cache_dir=cache, batch_size=args.batch)
        t_fill = time.perf_counter() - t0
        t0 = time.perf_counter()
        fidmod.compute_features(folder, ext, cache_dir=cache, batch_size=args.batch)
        t_hit = time.perf_counter() - t0

    ips = {k: args.n / v for k, v in best.items()}
    # relative: a random-weight Inception-v3 stand-in produces features of very large magnitude
    diff = max(float(np.abs(feats["ours"] - f).max() / (np.abs(f).max() + 1e-12)) for f in feats.values())
    result = {
        "network": desc, "device": str(device), "torch_threads": torch.get_num_threads(),
        "images": args.n, "image_size": args.size, "batch": args.batch,
        "images_per_s": {k: round(v, 2) for k, v in ips.items()},
        "ratio_ours_vs_cleanfid_default": round(ips["ours"] / ips["clean-fid (num_workers=12, its default)"], 3),
        "ratio_ours_vs_cleanfid_workers0": round(ips["ours"] / ips["clean-fid (num_workers=0)"], 3),
        "max_relative_feature_difference": diff,
        "cache": {"first_run_s": round(t_fill, 2), "cached_run_s": round(t_hit, 3)},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
