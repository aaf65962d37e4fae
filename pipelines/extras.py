"""Which optional install extra provides each optional package, for a clear message when one is missing.

`pip install sims-studio` (or `pip install .`) is the engine only: torch, numpy, scipy, safetensors,
tqdm, Pillow, requests. Everything else comes with an extra (pyproject.toml lists them).
"""
from __future__ import annotations

# top-level module name -> (pip package, extra)
EXTRA_OF = {
    "cleanfid": ("clean-fid", "metrics"),
    "torchvision": ("torchvision", "metrics"),
    "sklearn": ("scikit-learn", "metrics"),
    "skimage": ("scikit-image", "metrics"),
    "matplotlib": ("matplotlib", "metrics"),
    "plotly": ("plotly", "metrics"),
    "ot": ("POT", "mad"),
    "kaleido": ("kaleido", "mad"),
    "deepface": ("deepface", "faces"),
    "facenet_pytorch": ("facenet-pytorch", "faces"),
    "gradio": ("gradio", "studio"),
    "sqlalchemy": ("SQLAlchemy", "studio"),
    "alembic": ("alembic", "studio"),
    "psycopg": ("psycopg", "studio"),
}


def missing_extra_message(err: ModuleNotFoundError) -> str | None:
    """A one-line fix for an optional package that is not installed; None for anything else."""
    top = (err.name or "").split(".")[0]
    if top not in EXTRA_OF:
        return None
    package, extra = EXTRA_OF[top]
    if top == "facenet_pytorch":  # its own pins conflict with ours: installed without dependencies
        return (f"this needs the Python package {package}: in the repository run pip install -e '.[faces]', "
                "then pip install --no-deps facenet-pytorch==2.6.0")
    return (f"this needs the Python package {package}, part of the '{extra}' extra: in the repository run "
            f"pip install -e '.[{extra}]' (pip install -r requirements.txt installs every extra)")
