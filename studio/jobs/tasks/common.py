"""Pieces several tasks share: loading a registered model, filling the pool, labelling samples."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sqlalchemy import select

from ...models import Label, LabelSource, Model, Sample
from ...services.attributes import load_classifier
from ...services.labels import store_classifier_labels
from ...storage import read_pngs, sample_relpath, write_png


def set_threads() -> None:
    """Leave a core for the web process (SIMS_JOB_THREADS overrides).

    Oversubscribed intra-op threads are catastrophic on small CPUs (measured 40x slower
    sampling with 2 threads on 2 busy cores), so a worker takes cores - 1.
    """
    import os
    n = int(os.environ.get("SIMS_JOB_THREADS") or max(1, len(os.sched_getaffinity(0)) - 1))
    torch.set_num_threads(n)


def load_registered_model(ctx, model_id: int):
    """(model on the job's device, model row) for a registered model id."""
    from pipelines.checkpoints.native import load_model
    with ctx.db.session(read_only=True) as s:
        row = s.get(Model, int(model_id))
        if row is None:
            raise ValueError(f"model #{model_id} no longer exists")
        s.expunge(row)
    model, _ = load_model(ctx.settings.abs(row.path), device=ctx.device)
    return model, row


def generate_into_pool(ctx, model, model_id: int, seeds: Sequence[int], steps: int, batch_size: int = 64,
                       progress=None) -> list[int]:
    """Sample `seeds` not yet in the pool, write PNGs, insert Sample rows; returns the new sample ids."""
    from pipelines.generate import generate_images
    from pipelines.sampler import SamplerConfig
    with ctx.db.session(read_only=True) as s:
        have = set(s.scalars(select(Sample.seed).where(Sample.model_id == model_id, Sample.seed.in_(list(seeds)))))
    todo = [int(x) for x in seeds if int(x) not in have]  # resume: skip what an earlier attempt wrote
    new_ids: list[int] = []
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        images = generate_images(model, chunk, SamplerConfig(num_steps=int(steps)), batch_size=batch_size,
                                 device=ctx.device)
        rows = []
        for seed, img in zip(chunk, images):
            rel = sample_relpath(model_id, seed)
            digest = write_png(ctx.settings.abs(rel), img)
            rows.append(Sample(model_id=model_id, seed=seed, steps=int(steps), path=rel, content_hash=digest,
                               job_id=ctx.job_id))
        with ctx.db.session() as s:
            s.add_all(rows)
            s.flush()
            new_ids += [r.id for r in rows]
        if progress is not None:
            progress(start + len(chunk), len(todo))
    return new_ids


def unlabelled_ids(ctx, model_id: int, classifier: str, limit: int) -> list[int]:
    """Up to `limit` pool samples without a label from `classifier`."""
    with ctx.db.session(read_only=True) as s:
        labelled = select(Label.sample_id).where(Label.classifier == classifier,
                                                 Label.source == LabelSource.classifier)
        return list(s.scalars(select(Sample.id).where(Sample.model_id == model_id, Sample.id.not_in(labelled))
                              .order_by(Sample.id).limit(limit)))


def label_samples(ctx, clf, classifier: str, sample_ids: Sequence[int], batch_size: int = 256,
                  progress=None) -> int:
    """Classify samples by id in batches and store the labels; returns how many."""
    done = 0
    for start in range(0, len(sample_ids), batch_size):
        chunk = list(sample_ids[start:start + batch_size])
        with ctx.db.session(read_only=True) as s:
            paths = dict(s.execute(select(Sample.id, Sample.path).where(Sample.id.in_(chunk))).all())
        images = read_pngs([ctx.settings.abs(paths[i]) for i in chunk], [f"sample #{i}" for i in chunk])
        probs = np.asarray(clf.predict_proba(images))
        with ctx.db.session() as s:
            store_classifier_labels(s, classifier, list(clf.classes), chunk, probs)
        done += len(chunk)
        if progress is not None:
            progress(done, len(sample_ids))
    return done


def label_all(ctx, model_id: int, classifier: str, progress=None) -> int:
    """Label every unlabelled sample of the pool; returns how many were labelled."""
    clf = load_classifier(ctx.db, classifier, device=ctx.device)
    total = len(unlabelled_ids(ctx, model_id, classifier, 10 ** 9))
    done = 0
    while True:
        ids = unlabelled_ids(ctx, model_id, classifier, 2048)
        if not ids:
            return done
        label_samples(ctx, clf, classifier, ids,
                      progress=(lambda k, _n: progress(done + k, total)) if progress else None)
        done += len(ids)
