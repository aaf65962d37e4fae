"""`import-edm`: convert an official NVlabs/edm network pickle (path or URL) into our .safetensors format."""
from __future__ import annotations

import json

from ..checkpoints import download, edm_pickle
from ..checkpoints.native import load_model
from ..errors import UserError


def register(sub) -> None:
    """Add the `import-edm` subcommand."""
    p = sub.add_parser(
        "import-edm", help="safely import an official EDM checkpoint (edm-*-vp.pkl) by path or URL",
        description="Read an NVlabs/edm network pickle with a restricted unpickler (nothing in the file is "
                    "executed; its embedded source code is treated as data) and save it as a SIMS "
                    ".safetensors checkpoint. URLs are downloaded once into the cache (resumable). Example: "
                    "python -m pipelines import-edm "
                    "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-ffhq-64x64-uncond-vp.pkl "
                    "models/edm-ffhq64.safetensors")
    p.add_argument("src", metavar="SRC", help="path or http(s) URL of the .pkl file")
    p.add_argument("out", metavar="OUT", nargs="?", help="output .safetensors path (not needed with --scan-only)")
    p.add_argument("--cache-dir", default=None,
                   help="download cache (default $SIMS_CACHE_DIR or ~/.cache/sims-studio)")
    p.add_argument("--sha256", default=None, help="expected sha256 of the .pkl; a mismatch is refused")
    p.add_argument("--allow-private-urls", action="store_true",
                   help="let SRC be a URL on a loopback, private or link-local address (refused by default)")
    p.add_argument("--scan-only", action="store_true",
                   help="list the Python globals the pickle references (read from its opcodes, nothing "
                        "loaded) and whether the importer allows them; write nothing")
    p.set_defaults(run=run)


def run(args) -> int:
    """Scan or import; prints what was found."""
    if args.scan_only:
        return _scan(args)
    if not args.out:
        raise UserError("Give the output path: python -m pipelines import-edm SRC OUT.safetensors "
                        "(or --scan-only to only inspect SRC).")
    out = edm_pickle.import_edm(args.src, args.out, cache_dir=args.cache_dir, expected_sha256=args.sha256,
                                allow_private_urls=args.allow_private_urls)
    model, meta = load_model(out)  # read back what was written: the saved file is what users get
    print(f"imported {args.src} -> {out}")
    print(f"  state-dict keys: {len(model.state_dict())}   parameters: "
          f"{sum(p.numel() for p in model.parameters()):,}")
    print(f"  sha256 of source: {meta['provenance'].get('sha256')}")
    print("  config: " + json.dumps(meta["model"]))
    return 0


def _scan(args) -> int:
    path = download.fetch(args.src, cache_dir=args.cache_dir, expected_sha256=args.sha256,
                          allow_private=args.allow_private_urls)
    counts = edm_pickle.scan_globals(path)
    refused = set(edm_pickle.disallowed_globals(counts))
    print(f"globals referenced by {path}:")
    for name, n in sorted(counts.items()):
        print(f"  {'REFUSED' if name in refused else 'allowed'}  {name}  x{n}")
    if refused:
        print(f"{len(refused)} global(s) are outside the EDM allowlist: the importer would refuse this file.")
        return 1
    print("all globals are on the EDM allowlist.")
    return 0
