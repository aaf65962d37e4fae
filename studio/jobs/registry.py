"""Which job kinds exist, which module runs each, and which ones occupy a device."""
from __future__ import annotations

import importlib
from types import ModuleType

# kind -> module under studio.jobs.tasks defining `run(ctx, spec) -> dict`; each kind's spec is in specs.SPECS
TASKS = {
    "generate": "generate",
    "label": "label",
    "build_set": "build_set",
    "finetune": "finetune",
    "sweep": "sweep",
    "find_omega": "find_omega",
    "import_model": "import_model",
    "export_dataset": "export_dataset",
    "embed": "embed",
    "verify_pool": "verify_pool",
}
# Kinds that run networks on a device; at most Settings.jobs_per_device of them at once per device.
DEVICE_BOUND = {"generate", "label", "build_set", "finetune", "sweep", "find_omega", "export_dataset", "embed",
                "verify_pool"}


def task_module(kind: str) -> ModuleType:
    """The module that runs jobs of `kind`."""
    if kind not in TASKS:
        raise ValueError(f"Unknown job kind {kind!r}; known: {sorted(TASKS)}")
    return importlib.import_module(f"studio.jobs.tasks.{TASKS[kind]}")
