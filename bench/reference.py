"""The NVlabs/edm reference's training step beside ours, on the same weights and batch (bench/gpu.py
--reference-dir).

The reference code is imported from the user's own checkout of github.com/NVlabs/edm (nothing
of it is copied here): `training.networks.EDMPrecond` with `model_type="SongUNet"` and the same
constructor arguments as our preset (our SongUNet takes EDM's argument and parameter names, so
our state dict loads into it with strict=True), and `training.loss.EDMLoss`.

The reference step is what its `training/training_loop.py` does per step minus the EMA update
and statistics: zero_grad, EDMLoss on the batch, `loss.sum().mul(1 / batch).backward()`,
`nan_to_num` of every gradient, `torch.optim.Adam` (not fused; betas 0.9/0.999, eps 1e-8, its
settings). With `use_fp16=True` (its `--fp16`) the network runs in float16 on CUDA; the
reference itself runs float32 on any other device, so a CPU run compares float32 paths.
Ours is bench/train.py's bare step (fused Adam on CUDA, bf16 autocast when asked).
"""
from __future__ import annotations

import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

NEEDED = ("training/networks.py", "training/loss.py", "torch_utils/persistence.py", "dnnlib/__init__.py")


def load_reference(path) -> tuple:
    """(networks module, loss module) from a checkout of NVlabs/edm at `path`; SystemExit with a
    message when it is not one."""
    root = Path(path).expanduser().resolve()
    missing = [f for f in NEEDED if not (root / f).is_file()]
    if missing:
        raise SystemExit(f"--reference-dir {path}: not a checkout of NVlabs/edm (missing {', '.join(missing)}). "
                         "Clone https://github.com/NVlabs/edm and pass its folder.")
    # Appended, not prepended: bench/train.py must stay `train` (the checkout has a train.py too).
    if str(root) not in sys.path:
        sys.path.append(str(root))
    nets, loss = importlib.import_module("training.networks"), importlib.import_module("training.loss")
    for mod in (nets, loss):
        if Path(mod.__file__).resolve().parent.parent != root:
            raise SystemExit(f"--reference-dir: Python imported {mod.__name__} from {mod.__file__}, not from "
                             f"{root}; another package named 'training' shadows it. Run from a clean environment.")
    return nets, loss


def reference_net(nets, network_kwargs: dict, use_fp16: bool):
    """The reference's EDMPrecond(SongUNet) for our SongUNet kwargs (the same names)."""
    kw = dict(network_kwargs)
    res, ch = kw.pop("img_resolution"), kw.pop("img_channels")
    return nets.EDMPrecond(img_resolution=res, img_channels=ch, label_dim=0, use_fp16=use_fp16,
                           model_type="SongUNet", **kw)


def same_weights(ours, theirs) -> float:
    """Load our weights into the reference network (strict) and return max |D_ours - D_ref| over a
    small probe in float32 eval mode (a check that both compute the same function)."""
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours_mode, theirs_mode = ours.training, theirs.training
    ours.eval(), theirs.eval()
    dev = next(ours.parameters()).device
    g = torch.Generator().manual_seed(0)
    shape = (2, theirs.img_channels, theirs.img_resolution, theirs.img_resolution)
    x = torch.randn(shape, generator=g).to(dev)
    sigma = torch.tensor([0.05, 5.0], device=dev)
    with torch.no_grad():
        diff = (ours(x, sigma) - theirs(x, sigma, force_fp32=True)).abs().max().item()
    ours.train(ours_mode), theirs.train(theirs_mode)
    return diff


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def reference_step(net, loss_fn, opt, x):
    opt.zero_grad(set_to_none=True)
    loss_fn(net=net, images=x).sum().mul(1 / len(x)).backward()
    for p in net.parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
    opt.step()


def ours_step(net, loss_fn, opt, x):
    opt.zero_grad(set_to_none=True)
    loss_fn(net, x).sum().mul(1 / len(x)).backward()
    opt.step()


def _rate(step, x, steps, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x)
    _sync(device)
    return steps * len(x) / (time.perf_counter() - t0)


def compare(model_cfg, batch: int, steps: int, repeats: int, device, reference_dir, bf16: bool) -> list[str]:
    """Lines: images/s of our step (bf16 autocast when `bf16`) and the reference's fp16 step on the
    same initial weights and batch, alternating within each repeat; medians and their ratio."""
    from pipelines.loss import make_loss
    from pipelines.models import build_model
    nets, loss_mod = load_reference(reference_dir)
    device = torch.device(device)
    torch.manual_seed(0)
    ours = build_model(model_cfg).train().to(device)
    theirs = reference_net(nets, model_cfg.network, use_fp16=True).train().to(device)
    diff = same_weights(ours, theirs)
    if bf16:
        ours.amp_dtype = torch.bfloat16
    fused = {"fused": True} if device.type == "cuda" else {}
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-4, **fused)
    opt_ref = torch.optim.Adam(theirs.parameters(), lr=1e-4, betas=[0.9, 0.999], eps=1e-8)
    loss_ours, loss_ref = make_loss(model_cfg.precond), loss_mod.EDMLoss()
    res, ch = model_cfg.network["img_resolution"], model_cfg.network["img_channels"]
    x = (torch.rand(batch, ch, res, res, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)
    run_ours = lambda b: ours_step(ours, loss_ours, opt_ours, b)  # noqa: E731
    run_ref = lambda b: reference_step(theirs, loss_ref, opt_ref, b)  # noqa: E731
    for _ in range(2):  # warm-up: cuDNN autotuning, allocations, Adam state
        run_ours(x), run_ref(x)
    rates = {"ours": [], "reference": []}
    for _ in range(repeats):
        rates["ours"].append(_rate(run_ours, x, steps, device))
        rates["reference"].append(_rate(run_ref, x, steps, device))
    o, r = statistics.median(rates["ours"]), statistics.median(rates["reference"])
    ref_prec = "fp16" if device.type == "cuda" else "fp32: its use_fp16 is CUDA-only"
    ours_prec = "bf16 autocast" if bf16 else "fp32"
    return [f"reference  NVlabs/edm from {Path(reference_dir).resolve()}: same initial weights (max |D_ours - D_ref| "
            f"= {diff:.1e} in fp32), batch {batch}, {steps} timed steps after 2 warm-up, {repeats} repeats",
            f"  {'ours (' + ours_prec + ', fused Adam' * bool(fused) + ')':<52}{o:>9.1f} images/s",
            f"  {'reference (' + ref_prec + ', Adam)':<52}{r:>9.1f} images/s",
            f"  ours / reference = {o / r:.2f}  (issue 11 target on a GPU: bf16 >= 1.3x the reference's fp16)"]
