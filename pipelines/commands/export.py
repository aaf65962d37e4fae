"""CLI: `export bundle` (base + aux + omega in one file with a model card), `export merged` (the weight-space
merge, one network, with a card of its own measured numbers) and `export dataset` (N images of the shifted
model as a zip in EDM's layout, with classifier labels and the realised group mix).
"""
from __future__ import annotations

import json
import os
from pathlib import Path


from ..errors import UserError


def _writable(out: Path) -> None:
    """Say which folder cannot be written, and why, before any image is rendered."""
    folder = out.parent if out.parent != Path("") else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {folder}: {e.strerror}; pick another --out.") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write into {folder} (permission denied); pick another --out.")
    if out.exists():
        raise UserError(f"{out} exists; pick a new name (nothing was overwritten).")


def run_bundle(args) -> int:
    from ..checkpoints.bundle import save_bundle
    from ..guidance import parse_interval, parse_omega
    from ..sampler import SamplerConfig
    out = Path(args.out)
    _writable(out)
    card = json.loads(Path(args.card).read_text()) if args.card else {}
    if not isinstance(card, dict):
        raise UserError(f"{args.card} must hold a JSON object (the model card's fields).")
    save_bundle(out, args.base, args.aux, parse_omega(args.omega), parse_interval(args.interval),
                SamplerConfig(num_steps=args.steps), card=card)
    print(f"wrote {out} and {out.with_suffix('.md')} (omega {args.omega}, {args.steps} steps); "
          f"sample it with: python -m pipelines sample-sims --bundle {out} --seeds 0-63 --out samples.npz")
    return 0


def run_dataset(args) -> int:
    from ..checkpoints.native import load_model
    from ..generate import generate_images, generate_sims
    from ..guidance import parse_interval, parse_omega
    from ..imageio import write_image_zip
    from ..sampler import SamplerConfig
    from .attributes import _classifier
    out = Path(args.out)
    if out.suffix.lower() != ".zip":
        raise UserError(f"--out must end in .zip (EDM's dataset layout), got {out.name}")
    _writable(out)
    omega, device = parse_omega(args.omega), args.device or "cpu"
    if args.n <= 0:
        raise UserError(f"--n must be a positive number of images (got {args.n}).")
    base, _ = load_model(args.base, device=device)
    aux = load_model(args.aux, device=device)[0] if omega != 0 else None
    sampler, interval = SamplerConfig(num_steps=args.steps), parse_interval(args.interval)
    seeds = list(range(args.seed0, args.seed0 + args.n))
    if aux is None:
        images = generate_images(base, seeds, sampler, batch_size=args.batch_size, device=device)
    else:
        images = generate_sims(base, aux, omega, seeds, sampler, interval=interval, batch_size=args.batch_size,
                               device=device)[0]
    clf = _classifier(args) if args.classifier else None
    labels = clf.predict_proba(images).argmax(axis=1) if clf is not None else None
    write_image_zip(out, images, labels)
    info = {"base": args.base, "aux": args.aux, "omega": omega, "interval": interval, "steps": args.steps,
            "seeds": [args.seed0, args.seed0 + args.n - 1], "n": args.n,
            "label_classes": list(clf.classes) if clf is not None else None}
    if clf is not None:
        from ..attributes.groupings import group_fractions, label_counts, resolve_grouping
        grouping = resolve_grouping(args.grouping, args.classifier, clf.classes)
        assigned, _ = grouping.assign(clf.predict_proba(images), clf.classes, args.threshold)
        realised = {g: {"fraction": f, "ci95": [lo, hi]}
                    for g, (f, lo, hi) in group_fractions(assigned, grouping).items()}
        info.update(grouping=grouping.to_dict(), counts=label_counts(assigned, grouping), realised_mix=realised)
        if args.planned:
            info["planned_fraction"] = args.planned
        print("realised mix (by the classifier's labels): " + ", ".join(
            f"{g} {100 * v['fraction']:.1f}% [{100 * v['ci95'][0]:.1f}-{100 * v['ci95'][1]:.1f}]"
            for g, v in realised.items()) + (f"; planned: {args.planned}" if args.planned else ""))
    out.with_suffix(".json").write_text(json.dumps(info, indent=1))
    print(f"wrote {args.n} images to {out} (+ {out.with_suffix('.json').name})")
    return 0


def _confusion(args, clf, grouping):
    """The classifier's measured confusion: from --confusion-set, the digits classifier's held-out split, or None."""
    from .. import fairness
    if args.confusion_set:
        from ..attributes.labels import read_manual_labels
        from .attributes import _label
        if not args.confusion_labels:
            raise UserError("--confusion-set needs --confusion-labels CSV (columns name,label: true class or group)")
        return fairness.confusion_from_labelled_set(_label(args, clf, args.confusion_set),
                                                    read_manual_labels(args.confusion_labels), str(args.confusion_set))
    if clf.name == "digits":
        return fairness.digits_heldout_confusion(clf, grouping, args.threshold)
    return None


def _measure_seeds(args) -> list[int]:
    """--measure-seeds as a list, checked with what a measurement needs (before anything is written)."""
    from ..generate import parse_seeds
    if not args.classifier:
        raise UserError("--measure-seeds needs --classifier (and usually --grouping) to measure the group fractions.")
    try:
        return parse_seeds(args.measure_seeds)
    except ValueError as e:
        raise UserError(str(e)) from None


def _measure_merged(args, path: Path) -> dict:
    """Sample the merged file itself on --measure-seeds and measure what it generates."""
    from ..attributes.groupings import resolve_grouping
    from ..checkpoints.native import load_model
    from ..fairness import parse_target
    from ..generate import generate_images
    from ..merge_card import measure_images, seeds_text
    from ..sampler import SamplerConfig
    from .attributes import _classifier, _reference
    seeds = _measure_seeds(args)
    device = args.device or "cpu"
    model, _ = load_model(path, device=device)
    images = generate_images(model, seeds, SamplerConfig(num_steps=args.steps), batch_size=args.batch_size,
                             device=device)
    clf = _classifier(args)
    grouping = resolve_grouping(args.grouping, args.classifier, clf.classes)
    ref = None
    if args.ref:
        from ..metrics.fid import extractor_for
        ref = _reference(args, extractor_for(clf), clf)
    target = parse_target(args.target, grouping.group_names) if args.target else None
    how = {"what": f"the merged model {path.name} itself, sampled alone (one network)",
           "seeds": seeds_text(seeds), "steps": int(args.steps), "sampler": "Heun (EDM)"}
    return measure_images(images, clf, grouping, args.threshold, how, ref=ref, target=target,
                          confusion=_confusion(args, clf, grouping) if target else None,
                          n_boot=args.n_boot, boot_seed=args.boot_seed)


def run_merged(args) -> int:
    from ..checkpoints.native import read_metadata
    from ..merge import merge_checkpoints
    from ..merge_card import merged_card, render_card
    out = Path(args.out)
    _writable(out)
    if args.measure_seeds is None and (args.ref or args.target):
        raise UserError("--ref and --target describe a measurement: add --measure-seeds (e.g. 0-255) and "
                        "--classifier NAME.")
    if args.measure_seeds is not None:
        _measure_seeds(args)
    merge_checkpoints(args.base, args.aux, args.omega, out)
    measured = _measure_merged(args, out) if args.measure_seeds is not None else None
    card = merged_card(read_metadata(out)["provenance"]["merge"], measured)
    out.with_suffix(".card.json").write_text(json.dumps(card, indent=1))
    out.with_suffix(".md").write_text(render_card(card))
    if measured:
        print("measured on the merged model: " + ", ".join(
            f"{g} {100 * f['value']:.1f}% [{100 * f['ci'][0]:.1f}-{100 * f['ci'][1]:.1f}]"
            for g, f in measured["fractions"].items()) + f" (n = {measured['n']}, seeds {measured['seeds']})")
        for w in measured["warnings"]:
            print(f"WARNING: {w}")
    else:
        print("not measured (add --measure-seeds 0-255 --classifier NAME to put its own numbers in the card)")
    print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.card.json')}; sample it with: "
          f"python -m pipelines generate --model {out} --seeds 0-63 --out samples.npz")
    return 0


def register(sub) -> None:
    from .attributes import _add_common, _add_fairness_args
    p = sub.add_parser("export", help="export the shifted model: a SIMS bundle, the merged single network, or a "
                                      "dataset of its samples")
    kinds = p.add_subparsers(dest="export_kind", metavar="<bundle|merged|dataset>", required=True)

    b = kinds.add_parser("bundle", help="base + aux + omega + interval + sampler in one file, with a model card")
    b.add_argument("--base", required=True)
    b.add_argument("--aux", required=True)
    b.add_argument("--omega", required=True, help="guidance weight (0 = base, -1 = auxiliary)")
    b.add_argument("--interval", default=None, metavar="LO,HI", help="guidance interval in sigma (default: all)")
    b.add_argument("--steps", type=int, default=18, help="Heun steps recorded for sampling (default 18)")
    b.add_argument("--card", default=None, help="JSON object of extra model-card fields (measured numbers, notes)")
    b.add_argument("--out", required=True, help="bundle .safetensors (a .md card is written beside it)")
    b.set_defaults(run=run_bundle)

    m = kinds.add_parser("merged", help="weight-space merge (1+omega)*theta_base - omega*theta_aux: one network at "
                                        "the base's cost, with a card of its own measured numbers")
    m.add_argument("--base", required=True, help="base checkpoint (ours)")
    m.add_argument("--aux", "--guide", dest="aux", required=True,
                   help="auxiliary (or another same-architecture model) to merge with")
    m.add_argument("--omega", required=True, help="merge weight (0 = base, -1 = auxiliary; not score-space omega)")
    m.add_argument("--out", required=True, help="merged checkpoint .safetensors (.md and .card.json beside it)")
    m.add_argument("--measure-seeds", default=None, metavar="SEEDS",
                   help="sample the merged model on these seeds (e.g. 0-255) and put its measured group fractions "
                        "(and with --ref its per-group FD, with --target its fairness metrics) in the card")
    m.add_argument("--steps", type=int, default=18, help="Heun steps of the measurement (default 18)")
    m.add_argument("--ref", default=None, help="real reference for per-group FD in the classifier's feature space "
                                               "('digits', images, or per-group statistics .npz)")
    _add_common(m, classifier_required=False)
    _add_fairness_args(m)
    m.set_defaults(run=run_merged)

    d = kinds.add_parser("dataset", help="N images of the shifted model as an EDM-layout zip (+ labels and mix)")
    d.add_argument("--base", required=True)
    d.add_argument("--aux", required=True)
    d.add_argument("--omega", required=True)
    d.add_argument("--interval", default=None, metavar="LO,HI")
    d.add_argument("--steps", type=int, default=18, help="Heun steps (default 18; the demo numbers use 12)")
    d.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    d.add_argument("--seed0", type=int, default=0, help="first seed (one image per seed)")
    d.add_argument("--planned", default=None, help="the mix you aimed at (e.g. '5-9=0.7'), printed beside the realised")
    d.add_argument("--out", required=True, help="dataset .zip (a .json with labels' classes and mix beside it)")
    _add_common(d, classifier_required=False)
    d.set_defaults(run=run_dataset)
