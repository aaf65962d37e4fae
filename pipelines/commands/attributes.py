"""CLI: `label`, `fid`, `ref-stats`, `fit-probe`, `build-digits-classifier`.

SRC/GEN/--ref are a folder of images (EDM layout) or an .npz with a uint8 NHWC `images` array;
--ref may also be a statistics npz (`mu`, `sigma`; ours, EDM's or clean-fid's).
Features and probabilities are cached by content hash under --cache-dir
(default $SIMS_CACHE_DIR or ~/.cache/sims; --no-cache turns it off).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from ..errors import UserError


def _default_cache() -> str:
    return os.environ.get("SIMS_CACHE_DIR", str(Path.home() / ".cache" / "sims"))


def _add_common(p, classifier_required: bool) -> None:
    g = p.add_argument_group("classifier")
    g.add_argument("--classifier", required=classifier_required, metavar="NAME",
                   help="digits, deepface-gender|race|age, fairface-race7|gender|age, facenet-probe")
    g.add_argument("--grouping", default=None, metavar="NAME|SPEC",
                   help="a built-in grouping name (e.g. 'digits 0-4 vs 5-9', 'gender') or 'A=c1+c2;B=c3'; "
                        "default: one group per class")
    g.add_argument("--threshold", type=float, default=0.5,
                   help="minimum group probability to assign a group; below it the image is 'uncertain' (default 0.5)")
    g.add_argument("--weights", default=None, metavar="PATH",
                   help="classifier weights: FairFace .pt, digits .safetensors, or facenet-probe probe .npz")
    g.add_argument("--face-gate", action="store_true", help="label images where MTCNN finds no face 'no_face'")
    g.add_argument("--crop-faces", action="store_true", help="FairFace/deepface: classify the MTCNN face crop")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-dir", default=_default_cache(), help="feature/probability cache (default %(default)s)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def _cache(args):
    return None if args.no_cache else args.cache_dir


def _classifier(args):
    from ..attributes import get_classifier

    kwargs = {"device": args.device, "weights": args.weights, "face_gate": args.face_gate}
    if args.crop_faces:
        kwargs["crop_faces"] = True
    return get_classifier(args.classifier, **kwargs)


def _label(args, clf, src):
    from ..attributes.groupings import resolve_grouping
    from ..attributes.labels import label_source

    grouping = resolve_grouping(args.grouping, args.classifier, clf.classes)
    return label_source(clf, src, grouping, args.threshold, args.batch_size, _cache(args))


def _print_fractions(result) -> None:
    counts = result.counts()
    print(f"{result.classifier} / {result.grouping.name}: {len(result.names)} images, "
          f"{counts['uncertain']} uncertain, {counts['no_face']} no face (excluded from fractions)")
    for g, (f, lo, hi) in result.fractions().items():
        print(f"  {g:>16}: {f:6.1%}  (95% CI {lo:6.1%} - {hi:6.1%}, n={counts[g]})")


# ----------------------------------------------------------------------------


def _fairness(args, clf, result) -> dict | None:
    """Fairness metrics vs --target (pipelines/fairness.py), or None without a target. The classifier's
    confusion comes from --confusion-set/--confusion-labels, or for `digits` from its held-out split."""
    if not args.target:
        return None
    from ..attributes.labels import read_manual_labels
    from .. import fairness

    target = fairness.parse_target(args.target, result.grouping.group_names)
    confusion = None
    if args.confusion_set:
        if not args.confusion_labels:
            raise UserError("--confusion-set needs --confusion-labels CSV (columns name,label: true class or group)")
        labelled = _label(args, clf, args.confusion_set)
        confusion = fairness.confusion_from_labelled_set(labelled, read_manual_labels(args.confusion_labels),
                                                         str(args.confusion_set))
    elif clf.name == "digits":
        confusion = fairness.digits_heldout_confusion(clf, result.grouping, args.threshold)
    counts = result.counts()
    report = fairness.fairness_report({g: counts[g] for g in target}, target, n_boot=args.n_boot,
                                      seed=args.boot_seed, confusion=confusion)
    if confusion is None:
        report["corrected_note"] = ("no classifier-error correction: give a labelled real set with "
                                    "--confusion-set SRC --confusion-labels CSV")
    print(fairness.format_report(report))
    return report


def run_label(args) -> int:
    """`label`: probabilities, top class and group per image -> CSV/JSON; prints group fractions."""
    from ..attributes.labels import write_labels

    from ..attributes.labels import source_seeds
    clf = _classifier(args)
    result = _label(args, clf, args.src)
    write_labels(result, args.out, seeds=source_seeds(args.src))
    _print_fractions(result)
    report = _fairness(args, clf, result)
    if report is not None:
        out = Path(args.out)
        if out.suffix.lower() == ".json":  # one document: labels + fractions + fairness
            doc = json.loads(out.read_text())
            out.write_text(json.dumps({**doc, "fairness": report}, indent=1))
        else:
            out = out.with_suffix(".fairness.json")
            out.write_text(json.dumps(report, indent=1))
            print(f"wrote {out}")
    print(f"wrote {args.out}")
    return 0


def _reference(args, extractor, clf):
    """ReferenceStats from --ref (stats npz, or images labelled per group when asked)."""
    from ..metrics.fid import ReferenceStats, compute_features, stats_from_features

    ref = builtin_reference(args.ref)
    if ref is None:
        ref = Path(args.ref)
    if isinstance(ref, Path) and ref.suffix.lower() == ".npz" and ref.is_file():
        with np.load(ref, allow_pickle=False) as d:
            is_stats = "mu" in d
        if is_stats:
            return ReferenceStats.load(ref)
    feats = compute_features(ref, extractor, _cache(args), args.batch_size)
    info = {"source": str(args.ref)}
    if clf is None:
        return stats_from_features(feats, extractor.metric, extractor.feature_id, info=info)
    result = _label(args, clf, ref)
    info.update(classifier=clf.cache_id, classifier_name=clf.name, grouping=result.grouping.to_dict(),
                threshold=args.threshold,
                counts=result.counts())
    return stats_from_features(feats, extractor.metric, extractor.feature_id, result.assigned,
                               result.grouping.group_names, info)


def builtin_reference(spec):
    """'digits' / 'digits:16' -> the real scikit-learn digits as uint8 NHWC (as `train --data digits`), else None."""
    text = str(spec)
    if text != "digits" and not text.startswith("digits:"):
        return None
    from ..data import open_dataset
    ds = open_dataset(text)
    return ds.images.permute(0, 2, 3, 1).numpy()


def _extractor(args):
    from ..metrics.fid import get_feature_extractor

    return get_feature_extractor(args.feature, device=args.device,
                                 weights=args.digits_weights if args.feature == "digits" else None)


def run_ref_stats(args) -> int:
    """`ref-stats`: mu/sigma of SRC (and per group) -> npz."""
    if args.per_group and not args.classifier:
        raise UserError("--per-group needs --classifier (and usually --grouping)")
    extractor = _extractor(args)
    args.ref = args.src
    ref = _reference(args, extractor, _classifier(args) if args.per_group else None)
    ref.save(args.out)
    print(f"{ref.metric} reference statistics of {ref.n} images ({ref.feature}) -> {args.out}")
    for g, s in ref.groups.items():
        print(f"  group {g}: {s.n} images")
    for g, k in ref.info.get("groups_without_stats", {}).items():
        print(f"  group {g}: only {k} image(s), no statistics")
    return 0


def run_fid(args) -> int:
    """`fid`: FID (or FD-digits) of GEN vs --ref, overall and per group."""
    from ..metrics.fid import compute_features, fd_report

    if args.per_group and not args.classifier:
        raise UserError("--per-group needs --classifier (and usually --grouping)")
    if args.target and not args.per_group:
        raise UserError("--target needs --per-group (and --classifier) to know each image's group")
    extractor = _extractor(args)
    clf = _classifier(args) if args.per_group else None
    ref = _reference(args, extractor, clf)
    gen_feats = compute_features(args.gen, extractor, _cache(args), args.batch_size)
    gen_groups = None
    if args.per_group:
        result = _label(args, clf, args.gen)
        ref_clf = ref.info.get("classifier_name")
        if ref_clf and ref_clf != clf.name:
            raise UserError(f"the reference groups were labelled by {ref_clf}, not {clf.name}; "
                            "use the same --classifier for both sets")
        ref_grouping = ref.info.get("grouping")
        if ref_grouping and ref_grouping != result.grouping.to_dict():
            raise UserError(f"the reference was grouped by {ref_grouping}, the generated set by "
                            f"{result.grouping.to_dict()}; use the same --classifier/--grouping")
        gen_groups = result.assigned
    report = fd_report(gen_feats, ref, gen_groups, feature=extractor.feature_id)
    _print_report(report)
    if args.per_group and args.target:
        report["fairness"] = _fairness(args, clf, result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0


def _print_report(r: dict) -> None:
    name = r["metric"] + (" (digits classifier features; not FID)" if r["metric"] == "FD-digits" else "")
    print(f"{name}: {r['overall']:.4f}  ({r['n_gen']} generated vs {r['n_ref']} reference images)")
    for g, v in r.get("per_group", {}).items():
        print(f"  {g:>16}: {v:.4f}  ({r['gen_counts'][g]} generated vs {r['ref_counts'][g]} reference)")
    if "reweighted" in r:
        print(f"  vs reference reweighted to the generated group mix: {r['reweighted']:.4f}")
    for w in r.get("warnings", []):
        print(f"WARNING: {w}")


def run_fit_probe(args) -> int:
    """`fit-probe`: train a linear probe from manual labels of some images of SRC."""
    from ..attributes.facenet import LinearProbe, make_features
    from ..image_source import ImageSource
    from ..attributes.labels import read_manual_labels

    src = ImageSource(args.src)
    labels = read_manual_labels(args.labels)
    index = {n: i for i, n in enumerate(src.names)}
    unknown = [n for n in labels if n not in index]
    if unknown:
        raise UserError(f"{len(unknown)} labelled names are not images of {args.src}, e.g. {unknown[:3]}")
    rows = sorted(index[n] for n in labels)
    images = np.stack([src.read(i, i + 1)[0] for i in rows])
    features = make_features(args.feature, args.device)(images)
    probe = LinearProbe(min_per_class=args.min_per_class, feature_name=args.feature)
    probe.fit(features, [labels[src.names[i]] for i in rows])
    probe.save(args.out)
    print(f"probe on {args.feature} features: {probe.n_labels} labels, classes {probe.classes} -> {args.out}")
    return 0


def run_build_digits(args) -> int:
    """`build-digits-classifier`: retrain the demo digits classifier and report held-out accuracy."""
    from ..attributes.digits import build_digits_classifier

    metrics = build_digits_classifier(args.out, seed=args.seed, epochs=args.epochs)
    print(json.dumps(metrics, indent=1))
    print(f"wrote {args.out} (held-out accuracy {metrics['heldout_accuracy']:.2%})")
    return 0


# ----------------------------------------------------------------------------


def _add_feature(p) -> None:
    p.add_argument("--feature", choices=["inception", "digits"], default="inception",
                   help="inception = FID (clean-fid, needs /tmp/inception-2015-12-05.pt); "
                        "digits = FD-digits on the demo classifier (offline)")
    p.add_argument("--digits-weights", default=None, metavar="PATH", help="digits classifier for --feature digits")
    p.add_argument("--per-group", action="store_true", help="also per group of --classifier/--grouping")


def _add_fairness_args(p) -> None:
    g = p.add_argument_group("fairness vs a target mix (pipelines/fairness.py)")
    g.add_argument("--target", default=None, metavar="SPEC",
                   help="target group mix, e.g. '5-9=0.7' or 'female=70%%' (unnamed groups share the rest): "
                        "adds fairness discrepancy (L2), KL and total variation with bootstrap intervals")
    g.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals (default 1000)")
    g.add_argument("--boot-seed", type=int, default=0, help="bootstrap seed (default 0)")
    g.add_argument("--confusion-set", default=None, metavar="SRC",
                   help="labelled real images for classifier-error-aware fractions (digits: its held-out split)")
    g.add_argument("--confusion-labels", default=None, metavar="CSV", help="name,label of --confusion-set")


def _groupings_epilog() -> str:
    """The built-in groupings per classifier, for `label --help` (pass one to --grouping by name)."""
    from ..attributes.groupings import _BUILTIN, builtin_groupings
    lines = ["built-in groupings (--grouping NAME):"]
    for clf in _BUILTIN:
        names = [n for n in builtin_groupings(clf) if not n.startswith("digit=")]
        if clf == "digits":
            names.insert(1, "digit=K vs rest")
        lines.append(f"  {clf}: " + "; ".join(f"'{n}'" for n in names) + (" (K = 0..9)" if clf == "digits" else ""))
    lines.append("  any classifier: 'A=c1+c2;B=c3' (your own), default one group per class")
    return "\n".join(lines)


def register(sub) -> None:
    """Add label, fid, ref-stats, fit-probe and build-digits-classifier."""
    p = sub.add_parser("label", help="classify images; write per-image probabilities and group fractions",
                       description="Classify images; write per-image probabilities, group and seed (when the "
                                   "images came from `generate`) and print group fractions with 95%% intervals.",
                       epilog=_groupings_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="folder of images or .npz with 'images'")
    p.add_argument("--out", required=True, help="labels.csv or labels.json")
    _add_common(p, classifier_required=True)
    _add_fairness_args(p)
    p.set_defaults(run=run_label)

    p = sub.add_parser("fid", help="FID (or FD-digits) of generated images, overall and per group")
    p.add_argument("gen", help="generated images: folder or .npz")
    p.add_argument("--ref", required=True, help="reference images (folder/.npz), statistics .npz, or 'digits' "
                                                "(the real scikit-learn digits, as in train --data digits)")
    p.add_argument("--out", default=None, help="write the report as JSON")
    _add_feature(p)
    _add_common(p, classifier_required=False)
    _add_fairness_args(p)
    p.set_defaults(run=run_fid)

    p = sub.add_parser("ref-stats", help="reference statistics (mu, sigma) of a real set, overall and per group")
    p.add_argument("src", help="reference images: folder, .npz, or 'digits' (the real scikit-learn digits)")
    p.add_argument("--out", required=True, help="stats.npz")
    _add_feature(p)
    _add_common(p, classifier_required=False)
    p.set_defaults(run=run_ref_stats)

    p = sub.add_parser("fit-probe", help="train a linear probe (facenet-probe) from manual labels")
    p.add_argument("src", help="images: folder or .npz")
    p.add_argument("--labels", required=True, help="CSV with columns name,label (or JSON {name: label})")
    p.add_argument("--feature", choices=["facenet", "hog", "digits"], default="facenet")
    p.add_argument("--min-per-class", type=int, default=2)
    p.add_argument("--out", required=True, help="probe.npz")
    p.add_argument("--device", default=None)
    p.set_defaults(run=run_fit_probe)

    p = sub.add_parser("build-digits-classifier", help="retrain the demo digits classifier on sklearn digits")
    p.add_argument("--out", default="assets/digits_classifier.safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default: the recorded recipe's")
    p.set_defaults(run=run_build_digits)
