"""Training throughput (images/s) of the full loop vs a bare optimiser step, measured side by side.

Usage: python bench/train.py [--preset tiny --data digits --batch 64 --steps 20 --repeats 3
                              --device auto --precision fp32 --compile]
"bare" = EDM loss + backward + Adam on one fixed batch (the network's cost alone); "loop" =
`pipelines.training.train` over the same number of steps (data order, per-chunk seeding,
lr ramp, EMA, logging, one final checkpoint). The ratio loop/bare shows the loop's overhead.
Runs alternate within each repeat so machine noise hits both alike; medians are reported.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.data import open_dataset, to_model_input  # noqa: E402
from pipelines.errors import UserError  # noqa: E402
from pipelines.loss import make_loss  # noqa: E402
from pipelines.models import ModelConfig, build_model  # noqa: E402
from pipelines.networks.songunet import songunet_config  # noqa: E402
from pipelines.precond import compile_backbone  # noqa: E402
from pipelines.training import TrainConfig, train  # noqa: E402
from pipelines.training.distributed import resolve_device  # noqa: E402


def bare_rate(model_cfg, x, steps, device, bf16, compile=False, timings: dict | None = None) -> float:
    """Images/s of loss + backward + Adam (fused on CUDA, as the loop uses) on a fixed batch.
    With `timings`, stores the warm-up's seconds there (with compile: the compilation)."""
    device = torch.device(device)
    net = build_model(model_cfg).train().to(device)
    if bf16:
        net.amp_dtype = torch.bfloat16
    if compile:
        compile_backbone(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    loss_fn = make_loss(model_cfg.precond)
    x = x.to(device)
    t_warm = time.perf_counter()
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            _sync(device)
            t0 = time.perf_counter()
            if timings is not None:
                timings["warmup_s"] = t0 - t_warm
        opt.zero_grad(set_to_none=True)
        loss_fn(net, x).sum().mul(1 / len(x)).backward()
        opt.step()
    _sync(device)
    return steps * len(x) / (time.perf_counter() - t0)


def loop_rate(model_cfg, data, batch, steps, device, precision, compile=False) -> float:
    """Images/s of the training loop (after its setup) over `steps` steps."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        cfg = TrainConfig(batch_size=batch, total_kimg=batch * steps / 1000, lr_rampup_kimg=0,
                          log_every=max(steps, 1), device=str(device), precision=precision, compile=compile)
        return train(model_cfg, data, cfg, run_dir)["images_per_s"]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--data", default="digits", help="dataset spec (digits, digits:16, a folder/zip)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network in both")
    args = ap.parse_args()
    try:
        args.device = resolve_device(args.device)
    except UserError as e:
        sys.exit(f"error: {e}")

    data = open_dataset(args.data)
    c, r, _ = data.shape
    model_cfg = ModelConfig(network=songunet_config(args.preset, img_resolution=r, img_channels=c))
    x = to_model_input(data.get_batch(range(args.batch))[0])
    bare, loop = [], []
    for _ in range(args.repeats):
        bare.append(bare_rate(model_cfg, x, args.steps, args.device, args.precision == "bf16", args.compile))
        loop.append(loop_rate(model_cfg, data, args.batch, args.steps, args.device, args.precision, args.compile))
    b, lo = statistics.median(bare), statistics.median(loop)
    dev = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else \
        f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.preset} on {data.name} {data.shape}, batch {args.batch}, {args.steps} steps, "
          f"{args.precision}{' + compile' if args.compile else ''}, {dev}")
    print(f"bare step : {b:8.1f} images/s")
    print(f"train loop: {lo:8.1f} images/s  (loop / bare = {lo / b:.2f})")


if __name__ == "__main__":
    main()
