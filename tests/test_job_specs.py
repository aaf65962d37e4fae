"""Typed job specs: JSON round trip per kind, strict loading (unknown, missing, mistyped keys named),
job rows stored before specs existed, the worker's refusal, and the fine-tune's torchrun config file."""
import dataclasses
import json

import pytest

from pipelines.errors import UserError
from pipelines.training import TrainConfig
from pipelines.training.config import INHERITED_KEYS, inherited_recipe
from studio.jobs.registry import TASKS
from studio.jobs.specs import (SPECS, BuildSetSpec, EmbedSpec, ExportDatasetSpec, FindOmegaSpec, FinetuneSpec,
                               GenerateSpec, ImportModelSpec, LabelSpec, SweepSpec, VerifyPoolSpec, spec_from_json,
                               spec_to_json)

# One spec of every kind, with every optional field set away from its default where it has one.
EXAMPLES = {
    "generate": GenerateSpec(model_id=3, seed_start=128, n=64, steps=18, batch_size=16),
    "label": LabelSpec(model_id=3, classifier="digits"),
    "embed": EmbedSpec(model_id=3, classifier="digits"),
    "build_set": BuildSetSpec(set_id=2, model_id=3, grouping_id=4, classifier="digits", counts={"0-4": 10, "5-9": 30},
                              grow=True, max_pool=5000, steps=18),
    "finetune": FinetuneSpec(set_id=2, model_id=3, config=TrainConfig(total_kimg=2.0, checkpoint_kimg=0.5, lr=2e-4,
                                                                      ema_rampup_ratio=None, loss="edm", seed=7),
                             gpus=2, previews=False),
    "sweep": SweepSpec(preview_checkpoint=9, preview_seeds=(0, 1, 2), preview_steps=8, settings_key="ab12",
                       preview_omegas=(-1.0, 0.0, 2.5), preview_interval=(0.0, 1.25), shared_encoder=True,
                       checkpoint_ids=(8, 9), metric_omegas=(0.0, 1.5), grouping_id=4, n=64, steps=12,
                       metric_seed0=1_000_000, interval=(0.0, 2.5), guide_settings={"steps": 12, "n": 64}),
    "find_omega": FindOmegaSpec(checkpoint_id=9, grouping_id=4, group="5-9", target=0.7, iterations=3, n=64, steps=12,
                                metric_seed0=1_000_000, settings_key="ab12", interval=(0.0, 2.5), shared_encoder=True),
    "import_model": ImportModelSpec(src="/models/edm.pkl", name="edm", allow_private_urls=True),
    "export_dataset": ExportDatasetSpec(checkpoint_id=9, omega=1.25, n=100, steps=12, seed0=2_000_000,
                                        file="exports/x.zip", classifier="digits", interval=(0.0, 2.5),
                                        shared_encoder=True, grouping_id=4,
                                        planned={"fractions": {"5-9": [0.7, 0.6, 0.8, 45]}, "n": 64}),
    "verify_pool": VerifyPoolSpec(model_id=3),
}


def test_every_job_kind_has_a_spec_and_an_example():
    assert set(SPECS) == set(TASKS) == set(EXAMPLES)
    for kind, spec in EXAMPLES.items():
        assert type(spec) is SPECS[kind] and spec.kind == kind


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_spec_round_trips_through_stored_json(kind):
    spec = EXAMPLES[kind]
    stored = json.loads(json.dumps(spec_to_json(spec)))  # exactly what the job row holds
    loaded = spec_from_json(kind, stored)
    assert loaded == spec and type(loaded) is type(spec)
    assert spec_to_json(loaded) == stored
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(loaded, dataclasses.fields(loaded)[0].name, None)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_unknown_key_is_refused_with_its_name(kind):
    data = {**spec_to_json(EXAMPLES[kind]), "seeed": 1}
    with pytest.raises(UserError, match=r"'seeed'"):
        spec_from_json(kind, data)


def test_close_misspelling_gets_a_suggestion():
    data = {**spec_to_json(EXAMPLES["generate"]), "batchsize": 8}
    data.pop("batch_size")
    with pytest.raises(UserError, match=r"'batchsize' \(did you mean 'batch_size'\?\)"):
        spec_from_json("generate", data)


@pytest.mark.parametrize("kind, key, value", [
    ("generate", "n", "64"),                 # a string for an integer
    ("generate", "steps", True),             # a bool is not an integer
    ("generate", "seed_start", 1.5),         # a float is not an integer
    ("label", "classifier", 3),
    ("build_set", "counts", {"0-4": "ten"}),  # a value inside an object
    ("build_set", "grow", "yes"),
    ("sweep", "preview_seeds", [0, "1"]),     # an element of a list
    ("sweep", "preview_interval", [0.0]),     # a pair of the wrong length
    ("sweep", "grouping_id", "4"),
    ("find_omega", "target", "0.7"),
    ("export_dataset", "omega", None),        # null where a number is required
    ("import_model", "allow_private_urls", 1),
])
def test_wrong_type_is_refused_with_the_key_named(kind, key, value):
    data = {**spec_to_json(EXAMPLES[kind]), key: value}
    with pytest.raises(UserError, match=rf"{kind} job parameters: '{key}' must be"):
        spec_from_json(kind, data)


def test_an_int_is_a_number_and_lists_become_tuples():
    spec = spec_from_json("find_omega", {**spec_to_json(EXAMPLES["find_omega"]), "target": 1})
    assert spec.target == 1 and spec.interval == (0.0, 2.5)
    built = SweepSpec(preview_checkpoint=1, preview_seeds=[0, 1], preview_steps=4, settings_key="k")
    assert built.preview_seeds == (0, 1)


def test_keyword_construction_is_checked_too():
    with pytest.raises(UserError, match=r"'n' must be an integer, got '64'"):
        GenerateSpec(model_id=1, seed_start=0, n="64", steps=2)


def test_missing_keys_are_named():
    data = spec_to_json(EXAMPLES["find_omega"])
    del data["group"], data["settings_key"]
    with pytest.raises(UserError, match=r"missing key\(s\) 'group', 'settings_key'"):
        spec_from_json("find_omega", data)


def test_finetune_config_is_checked_as_a_training_config():
    data = spec_to_json(EXAMPLES["finetune"])
    with pytest.raises(UserError, match=r"training config: 'lrr' \(did you mean 'lr'\?\)"):
        spec_from_json("finetune", {**data, "config": {**data["config"], "lrr": 1.0}})
    with pytest.raises(UserError, match=r"finetune job parameters: config: 'seed' must be an integer"):
        spec_from_json("finetune", {**data, "config": {**data["config"], "seed": "7"}})


def test_measuring_sweep_needs_its_measurement_settings():
    with pytest.raises(UserError, match="measuring needs grouping_id, n"):
        SweepSpec(preview_checkpoint=1, preview_seeds=(0,), preview_steps=4, settings_key="k",
                  checkpoint_ids=(1,), metric_omegas=(0.0,), steps=4, metric_seed0=0)


def test_unknown_kind_is_refused():
    with pytest.raises(UserError, match="Unknown job kind 'paint'"):
        spec_from_json("paint", {})


# Parameters exactly as the services wrote them before specs existed (the newest old shape, and the
# older shapes that lacked keys added later).
LEGACY = {
    "generate": {"model_id": 3, "seed_start": 0, "n": 20, "steps": 4},  # before batch_size
    "label": {"model_id": 3, "classifier": "digits"},
    "embed": {"model_id": 3, "classifier": "digits"},
    "build_set": {"set_id": 1, "model_id": 3, "grouping_id": 2, "classifier": "digits", "counts": {"0-4": 5, "5-9": 15},
                  "grow": True, "max_pool": 20000, "steps": 18},
    "finetune": {"set_id": 1, "model_id": 3, "gpus": 1,  # before previews; config as the service built it
                 "config": {"batch_size": 64, "lr": 0.001, "lr_rampup_kimg": 10.0, "ema_halflife_kimg": 500.0,
                            "ema_rampup_ratio": 0.05, "loss": "edm", "total_kimg": 1.0, "checkpoint_kimg": 0.5,
                            "decoder_only": False, "seed": 0, "device": "cpu"}},
    "sweep": {"preview_checkpoint": 5, "preview_omegas": [0.0, 0.25], "preview_seeds": [0, 1], "preview_steps": 8,
              "preview_interval": None, "shared_encoder": False, "checkpoint_ids": [5], "metric_omegas": [0.0, 0.5],
              "grouping_id": 2, "n": 16, "steps": 8, "metric_seed0": 1000000, "interval": [0.0, 1.5],
              "settings_key": "0123456789abcdef",
              "guide": {"preview_steps": 8, "preview_count": 2, "steps": 8, "n": 16, "skip_steps": 2,
                        "shared_encoder": False}},
    "find_omega": {"checkpoint_id": 5, "grouping_id": 2, "group": "5-9", "target": 0.7, "iterations": 4, "n": 16,
                   "steps": 8, "metric_seed0": 1000000, "interval": None, "shared_encoder": False,
                   "settings_key": "0123456789abcdef"},
    "import_model": {"src": "/tmp/edm.pkl", "name": ""},  # before allow_private_urls
    "export_dataset": {"checkpoint_id": 5, "omega": 1.5, "n": 64, "classifier": "digits", "steps": 8,
                       "interval": None, "shared_encoder": False, "seed0": 2000000, "file": "exports/a.zip"},
    "verify_pool": {"model_id": 3},
}


def test_job_rows_written_the_old_way_load_into_their_specs(tmp_path):
    from studio.db import Database
    from studio.jobs.context import JobContext
    from studio.models import Job, JobState
    from studio.settings import Settings
    db = Database(f"sqlite:///{tmp_path / 'studio.db'}")
    settings = Settings(data_dir=tmp_path / "data")
    with db.session() as s:
        rows = {kind: Job(kind=kind, title=kind, params=params, state=JobState.queued, message="", log_tail="",
                          progress=0.0) for kind, params in LEGACY.items()}
        s.add_all(rows.values())
        s.flush()
        ids = {kind: job.id for kind, job in rows.items()}
    for kind, job_id in ids.items():
        ctx = JobContext(db, settings, job_id)  # what the worker does: read the row, load the spec
        spec = spec_from_json(ctx.kind, ctx.stored_params)
        assert type(spec) is SPECS[kind]
        for key, value in LEGACY[kind].items():
            if kind == "sweep" and key == "guide":
                continue
            got = getattr(spec, key)
            if key == "config":
                assert got == TrainConfig.from_dict(value)
            else:
                assert got == (tuple(value) if isinstance(value, list) else value), (kind, key)
    db.dispose()


def test_old_defaults_are_the_old_behaviour():
    assert spec_from_json("generate", LEGACY["generate"]).batch_size == 64
    assert spec_from_json("finetune", LEGACY["finetune"]).previews is True
    assert spec_from_json("import_model", LEGACY["import_model"]).allow_private_urls is False
    sweep = spec_from_json("sweep", LEGACY["sweep"])
    assert sweep.guide_settings == LEGACY["sweep"]["guide"]  # the record moved to its own name
    # sweeps queued before previews had their own interval rendered them with the measurement's
    old = {k: v for k, v in LEGACY["sweep"].items() if k != "preview_interval"}
    assert spec_from_json("sweep", old).preview_interval == (0.0, 1.5)


def test_worker_fails_a_job_whose_parameters_it_cannot_read(tmp_path):
    from studio.core import open_studio
    from studio.models import Job, JobState
    from studio.settings import Settings
    from studio.testing import run_now
    st = open_studio(Settings(data_dir=tmp_path / "data"), start_runner=False, demo=False)
    try:
        with st.db.session() as s:
            job = Job(kind="generate", title="bad", params={**LEGACY["generate"], "stepz": 3}, device="cpu",
                      state=JobState.queued, message="", log_tail="", progress=0.0)
            s.add(job)
            s.flush()
            job_id = job.id
        view = run_now(st, job_id)
        assert view.state == "failed" and "'stepz'" in view.message and not view.traceback
    finally:
        st.close()


def test_submit_stores_the_spec_and_submit_once_dedups(tmp_path):
    from studio.core import open_studio
    from studio.services import jobs
    from studio.settings import Settings
    st = open_studio(Settings(data_dir=tmp_path / "data"), start_runner=False, demo=False)
    try:
        spec = EXAMPLES["generate"]
        a, new_a = jobs.submit_once(st.db, spec, device="cpu")
        b, new_b = jobs.submit_once(st.db, GenerateSpec(**{**spec_to_json(spec)}), device="cpu")
        c, new_c = jobs.submit_once(st.db, dataclasses.replace(spec, n=65), device="cpu")
        assert (new_a, new_b, new_c) == (True, False, True) and a == b != c
        view = jobs.get(st.db, a)
        assert view.kind == "generate" and spec_from_json(view.kind, view.params) == spec
    finally:
        st.close()


def test_torchrun_gets_the_whole_config_as_one_json_file(tmp_path):
    from pipelines.cli import build_parser
    from pipelines.commands.train import _train_config
    from studio.jobs.tasks.finetune import torchrun_command
    spec = dataclasses.replace(EXAMPLES["finetune"], config=TrainConfig(
        total_kimg=3.0, checkpoint_kimg=1.0, lr=3e-4, batch_size=32, batch_gpu=8, seed=5, decoder_only=True,
        ema_rampup_ratio=None, lr_rampup_kimg=0.0, precision="bf16", grad_clip=1.0, augment_p=0.1, device="cuda"))
    cmd = torchrun_command("/m/base.safetensors", "/m/set.npz", tmp_path, spec)
    assert cmd[cmd.index("-m") + 1] == "torch.distributed.run" and "--nproc_per_node=2" in cmd
    argv = cmd[cmd.index("pipelines") + 1:]
    assert argv.count("--config") == 1 and not any(a in argv for a in ("--lr", "--batch", "--budget-kimg"))
    args = build_parser().parse_args(argv)
    # the CLI puts the base's recipe under --config: every field must come from the file, none from the base
    base = {"batch_size": 256, "lr": 1.0, "lr_rampup_kimg": 99.0, "ema_halflife_kimg": 1.0, "ema_rampup_ratio": 0.5,
            "loss": "vp"}
    assert _train_config(args, base) == spec.config


def test_the_inherited_recipe_is_one_list():
    cfg = TrainConfig(total_kimg=1.0, lr=5e-4, ema_rampup_ratio=None).to_dict()
    got = inherited_recipe({"kimg": 1.0, "lr": 9.0, "config": cfg})
    assert set(got) == set(INHERITED_KEYS) and got["lr"] == 5e-4
    assert got["ema_rampup_ratio"] is None  # a recorded null (no ramp) is inherited, not replaced by the default
    assert inherited_recipe({"lr": 2e-4, "batch_size": 32, "kimg": 3}) == {"lr": 2e-4, "batch_size": 32}
    assert inherited_recipe(None) == {}


@pytest.mark.slow
def test_finetune_job_under_torchrun_trains_with_exactly_its_spec_config(tmp_path, monkeypatch):
    # Two CPU processes (gloo) stand in for two GPUs: the job writes the config file, torchrun trains with it,
    # the job follows the log and registers both budget checkpoints.
    from pipelines.checkpoints.native import read_metadata
    from studio.services import attributes, finetune, jobs, sets
    from studio.testing import run_now, tiny_studio
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    st, mid = tiny_studio(tmp_path / "data", n_pool=40)
    try:
        g = next(g for g in attributes.list_groupings(st.db, "digits") if g["name"] == "digits 0-4 vs 5-9")
        sid, build = sets.submit_build(st.db, mid, g["id"], {"0-4": 0.5, "5-9": 0.5}, n_s=16, steps=2)
        assert run_now(st, build).state == "succeeded"
        cfg = TrainConfig(total_kimg=0.032, checkpoint_kimg=0.016, batch_size=8, batch_gpu=4, lr=1e-3, seed=3,
                          lr_rampup_kimg=0.0, log_every=1, device="cpu")
        job = jobs.submit(st.db, FinetuneSpec(set_id=sid, model_id=mid, config=cfg, gpus=2, previews=False),
                          device="cpu")
        view = run_now(st, job)
        assert view.state == "succeeded", view.message + view.log_tail
        rd = finetune.run_dir(st.settings, job)
        assert TrainConfig.from_dict(json.loads((rd / "train-config.json").read_text())) == cfg
        cks = finetune.checkpoints(st.db, job)
        assert [c["kimg"] for c in cks] == [0.016, 0.032]
        training = read_metadata(st.settings.abs(cks[-1]["path"]))["training"]
        assert training["world_size"] == 2  # augment_p None resolves to the base's recorded recipe (off)
        assert TrainConfig.from_dict(training["config"]) == dataclasses.replace(cfg, augment_p=0.0)
    finally:
        st.close()
