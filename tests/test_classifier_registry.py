"""The classifier table, the feature space each classifier carries, and one-way imports in the engine."""
import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.attributes import CLASSIFIERS, classifier_feature_space, get_classifier
from pipelines.attributes.digits import DEFAULT_PATH
from pipelines.errors import UserError
from pipelines.metrics.fid import InceptionFeatureExtractor, extractor_for, get_feature_extractor

ROOT = Path(__file__).resolve().parents[1]
# Modules whose imports must form no cycle (the plug-in table, the image-set reader and what they use).
CHECKED = sorted(str(p.relative_to(ROOT).with_suffix("")).replace("/", ".")
                 for p in [*ROOT.glob("pipelines/attributes/*.py"), ROOT / "pipelines/data.py",
                           ROOT / "pipelines/imageio.py", ROOT / "pipelines/image_source.py",
                           ROOT / "pipelines/metrics/fid.py"])


def _imports(module: str) -> set[str]:
    """pipelines.* modules imported by `module` at import time or inside its functions (every import counts)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    package = module.rsplit(".", 1)[0] if not path.name == "__init__.py" else module
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n.removesuffix(".__init__") for n in names if n in CHECKED or n + ".__init__" in CHECKED}
    out.discard(module.removesuffix(".__init__"))
    return out


def test_no_import_cycle_among_attributes_metrics_and_image_readers():
    graph = {m.removesuffix(".__init__"): _imports(m) for m in CHECKED}
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            visit(n, path + [m])
        state[m] = 2

    for m in graph:
        visit(m, [])


def test_each_module_imports_first_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n" \
           "    [sys.modules.pop(k) for k in list(sys.modules) if k.startswith('pipelines')]\n" \
           "    importlib.import_module(m)\n"
    r = subprocess.run([sys.executable, "-c", code, *CHECKED], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_classifiers_carry_their_metric():
    assert classifier_feature_space("digits").metric == "FD-digits"
    assert {classifier_feature_space(n).metric for n in CLASSIFIERS if n != "digits"} == {"FID"}
    with pytest.raises(UserError, match="unknown classifier"):
        classifier_feature_space("no-such")


def test_digits_extractor_is_the_classifiers_own_features():
    clf = get_classifier("digits", device="cpu")
    assert clf.feature_space.metric == "FD-digits" and clf.feature_space.dims == 128
    ext = extractor_for(clf)
    # The identity recorded in stored reference statistics: unchanged, so existing files stay valid.
    assert ext.feature_id == "digits-penultimate:" + hashlib.sha256(DEFAULT_PATH.read_bytes()).hexdigest()[:16]
    assert ext.metric == "FD-digits" and get_feature_extractor("digits").feature_id == ext.feature_id
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    f = ext(images)
    assert f.shape == (5, 128) and np.array_equal(f, clf.features(images))
    assert np.allclose(ext.features_of_batches([images[:2], images[2:]]), f, atol=1e-5)


def test_other_classifiers_measure_in_inception(monkeypatch):
    class Fake:  # a listed face classifier without its weights: only its feature space matters here
        feature_space = CLASSIFIERS["fairface-gender"].feature_space
        device = "cpu"

    made = []
    monkeypatch.setattr(InceptionFeatureExtractor, "__init__", lambda self, device=None: made.append(device))
    assert isinstance(extractor_for(Fake()), InceptionFeatureExtractor) and made == ["cpu"]
