"""CLI: `merge` — weight-space SIMS, one network at the base's sampling cost."""
from __future__ import annotations

from ..errors import UserError


def run_merge(args) -> int:
    from ..merge import merge_bundle, merge_checkpoints, merge_summary
    if args.bundle:
        if args.base or args.aux:
            raise UserError("Give either --bundle FILE or --base CKPT --aux CKPT, not both.")
        out = merge_bundle(args.bundle, args.out, args.omega)
    else:
        if not (args.base and args.aux and args.omega is not None):
            raise UserError("merge needs --base CKPT --aux CKPT --omega W (or --bundle FILE).")
        out = merge_checkpoints(args.base, args.aux, args.omega, args.out)
    print(f"wrote merged checkpoint {out}\n{merge_summary(out)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("merge", help="weight-space SIMS: theta = (1+omega)*theta_base - omega*theta_aux",
                       description="Merge the EMA weights of a base model and its SIMS auxiliary (Neon, arXiv "
                                   "2510.03597) into one ordinary checkpoint that samples at the base's cost. "
                                   "omega = 0 is the base, -1 the auxiliary; its omega scale differs from "
                                   "score-space SIMS (sample-sims), so sweep it separately.")
    p.add_argument("--base", help="base checkpoint (.safetensors, ours)")
    p.add_argument("--aux", help="auxiliary checkpoint: a fine-tuned copy of the base")
    p.add_argument("--bundle", help="a SIMS bundle: merge its base and auxiliary (at its omega unless --omega)")
    p.add_argument("--omega", default=None, help="merge weight; >0 moves away from the auxiliary")
    p.add_argument("--out", required=True, help="output checkpoint (.safetensors)")
    p.set_defaults(run=run_merge)
