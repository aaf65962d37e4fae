"""Base and auxiliary networks evaluated in one batched call (full SIMS at small batches).

At small batches a GPU runs one network pass as hundreds of small kernels; the two passes of
full SIMS then cost two full sets of launches. Stacking the two models' weights along a new
leading dimension and running the network once under `torch.vmap` evaluates both with one set
of (batched) kernels. The results equal two separate calls to float rounding, not bit for bit
(batched convolutions sum in another order), so this is an option; the two-call path stays the
default and the reference.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.func import functional_call, stack_module_state

from .errors import UserError
from .guidance import SIMSDenoiser
from .precision import amp_dtype
from .precond import strip_compiled


class PairedNetworks:
    """Callable (x, sigma, labels) -> (D_base(x), D_aux(x)) in one vmapped pass.

    The weights are copied (stacked) when this object is made: later changes to either model
    are not seen; make a new one after fine-tuning further."""

    def __init__(self, base: torch.nn.Module, aux: torch.nn.Module):
        if type(base) is not type(aux) or type(base.model) is not type(aux.model):
            raise UserError("One batched call needs base and auxiliary of the same architecture; "
                            "sample without --paired.")
        shapes_b = {k: tuple(v.shape) for k, v in base.state_dict().items()}
        shapes_a = {k: tuple(v.shape) for k, v in aux.state_dict().items()}
        if shapes_b != shapes_a:
            raise UserError("Base and auxiliary weights differ in shape; one batched call needs the same "
                            "architecture. Sample without --paired.")
        self.params, self.buffers = stack_module_state([base, aux])
        # A weightless copy of the base's structure (its config, preconditioning, precision) to run.
        # A compiled base's halves are bound to the base's own weights: the copy runs them eagerly,
        # and the whole vmapped call is compiled instead (same mode as the base).
        self.skeleton = copy.deepcopy(base).to("meta")
        strip_compiled(self.skeleton.model)
        self._run = torch.vmap(self._one, in_dims=(0, 0, None, None, None, None))
        if getattr(base.model, "_sims_compiled", False):
            mode = getattr(base.model, "_sims_compile_mode", None)
            if mode == "reduce-overhead":
                # CUDA graphs copy every non-static input into the graph's buffers on each replay:
                # the stacked weights never change, so they are marked static (no copy per call).
                for t in [*self.params.values(), *self.buffers.values()]:
                    torch._dynamo.mark_static_address(t)
            self._run = torch.compile(self._run, mode=mode)

    def _one(self, params, buffers, x, sigma, class_labels, augment_labels):
        return functional_call(self.skeleton, (params, buffers), (x, sigma, class_labels),
                               {"augment_labels": augment_labels})

    def __call__(self, x, sigma, class_labels=None, augment_labels=None):
        both = self._run(self.params, self.buffers, x, sigma, class_labels, augment_labels)
        # Under CUDA graphs `both` lives in the graph's pool; the caller combines it at once.
        return both[0], both[1]


# torch.vmap's batching rule for convolutions dispatches below autocast (torch 2.14, CPU and CUDA
# alike): under bf16 the batched convolutions would run in float32, giving neither bf16's speed nor
# its numerics. The paired call is therefore fp32 only; tests/test_sims_concurrent.py checks the
# cause, so that the refusal can go once torch autocasts batched convolutions.
BF16_REFUSAL = ("--paired (base and auxiliary as one vmapped call) runs in fp32 only: torch.vmap's batched "
                "convolutions bypass bf16 autocast. Use --paired with --precision fp32, or bf16 without --paired.")


def check_paired_precision(precision: str) -> None:
    """UserError for the one combination the paired call cannot honour (bf16)."""
    if precision != "fp32":
        raise UserError(BF16_REFUSAL)


@dataclass
class PairedSIMSDenoiser(SIMSDenoiser):
    """SIMSDenoiser whose guided full-mode evaluations run base and auxiliary as one batched call.
    Unguided steps, omega = -1 and the shared-encoder mode take SIMSDenoiser's own path."""

    def __post_init__(self):
        super().__post_init__()
        self.pair = PairedNetworks(self.base, self.aux) if self.aux is not None else None

    def __call__(self, x, sigma, class_labels=None, augment_labels=None):
        guided = self.omega != 0 and self.in_interval(sigma)
        if not guided or self.shared_encoder or self.omega == -1 or self.pair is None:
            return super().__call__(x, sigma, class_labels, augment_labels)
        if amp_dtype() is not None:
            raise UserError(BF16_REFUSAL)
        self.counts.calls += 1
        self.counts.guided += 1
        self.counts.base += 1
        self.counts.aux += 1
        d_base, d_aux = self.pair(x, sigma, class_labels, augment_labels)
        return (1 + self.omega) * d_base - self.omega * d_aux
