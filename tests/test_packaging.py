"""The package metadata: every bundled asset is installed, the console scripts point at real functions,
and the engine-only dependency list leaves out the studio's and the extras' packages."""
import glob
import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_asset_file_is_installed_as_data():
    # data-files flattens each pattern into its folder: a new subfolder of assets/ needs its own line
    data_files = PYPROJECT["tool"]["setuptools"]["data-files"]
    installed = {}
    for dest, patterns in data_files.items():
        for pattern in patterns:
            for path in glob.glob(str(ROOT / pattern)):
                assert Path(path).is_file(), f"{pattern} matches the folder {path}; list its files instead"
                installed[Path(path).relative_to(ROOT).as_posix()] = dest
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "assets").rglob("*") if p.is_file()}
    assert files <= set(installed), f"assets not installed by pyproject.toml: {sorted(files - set(installed))}"
    for rel, dest in installed.items():  # each lands where pipelines/resources.py looks for it
        assert dest == "share/sims-studio/" + str(Path(rel).parent)


def test_console_scripts_resolve():
    for name, target in PYPROJECT["project"]["scripts"].items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_engine_install_leaves_out_the_studio_and_the_extras():
    base = {d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
            for d in PYPROJECT["project"]["dependencies"]}
    assert base == {"torch", "numpy", "scipy", "safetensors", "tqdm", "pillow", "requests"}
    assert set(PYPROJECT["project"]["optional-dependencies"]) == {"studio", "faces", "metrics", "mad", "dev"}


BLOCKER = """
import sys
for name in {BLOCKED}:  # as if not installed: importing them raises ModuleNotFoundError
    sys.modules[name] = None
from pipelines.cli import main
from pipelines.demo.assets import DEMO_MODEL
code = main(["generate", "--model", str(DEMO_MODEL), "--seeds", "0-1", "--steps", "2", "--out", sys.argv[1]])
assert code == 0
assert main(["mad", "--out", sys.argv[1] + ".mad"]) == 2   # needs the mad extra: a clear message, exit 2
"""


def test_engine_imports_and_samples_without_the_extras(tmp_path):
    import subprocess
    import sys
    blocked = {"gradio", "sqlalchemy", "alembic", "psycopg", "plotly", "kaleido", "sklearn", "matplotlib",
               "cleanfid", "torchvision", "skimage", "deepface", "facenet_pytorch", "ot", "studio"}
    out = subprocess.run([sys.executable, "-c", BLOCKER.format(BLOCKED=sorted(blocked)), str(tmp_path / "x.npz")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "x.npz").is_file()
    assert "the 'mad' extra" in out.stderr and "pip install -e '.[mad]'" in out.stderr
