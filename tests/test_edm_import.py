"""Safe EDM pickle import (restricted unpickler, record walk, save) and the resumable downloader.

The EDM-format pickles are made here from our own networks: a Pickler whose reducer_override turns
every network object into `torch_utils.persistence._reconstruct_persistent_obj(meta)` with a
`module_src` string, exactly as EDM's persistence module does, while tensors, parameters, ModuleDict,
OrderedDict and numpy scalars pickle the way torch/numpy pickle them.
"""
import hashlib
import http.server
import math
import os
import pickle
import socket
import sys
import types

import numpy as np
import pytest
import torch

from pipelines.checkpoints import download, edm_pickle
from pipelines.checkpoints.native import load_model, read_metadata
from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.models import ModelConfig, build_model
from pipelines.networks import songunet as su
from pipelines.networks.songunet import songunet_config
from pipelines.precond import EDMPrecond, VPPrecond

EDM_CLASS_NAMES = {su.SongUNet: "SongUNet", su.UNetBlock: "UNetBlock", su.Conv2d: "Conv2d", su.Linear: "Linear",
                   su.GroupNorm: "GroupNorm", su.PositionalEmbedding: "PositionalEmbedding",
                   su.FourierEmbedding: "FourierEmbedding", EDMPrecond: "EDMPrecond", VPPrecond: "VPPrecond"}
MODULE_SRC = "import torch\n# stand-in for training/networks.py; never executed by the importer\n"


class FakeEDMLoss:
    """Plays EDM's persistent EDMLoss object (not a network; the importer ignores it)."""

    def __init__(self):
        self.P_mean, self.P_std, self.sigma_data = -1.2, 1.2, 0.5


@pytest.fixture
def fake_persistence(monkeypatch):
    """A `torch_utils.persistence` module so the Pickler can name EDM's reconstruct function."""
    pkg, mod = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # only its name is pickled; loading must never call it
        raise AssertionError("EDM's own loader was called")

    def _src_to_module(src):  # EDM's function that exec()s module_src
        raise AssertionError("EDM's own loader was called")

    for fn in (_reconstruct_persistent_obj, _src_to_module):
        fn.__module__, fn.__qualname__ = "torch_utils.persistence", fn.__name__
        setattr(mod, fn.__name__, fn)
    pkg.persistence = mod
    monkeypatch.setitem(sys.modules, "torch_utils", pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", mod)
    return mod


class EDMStylePickler(pickle.Pickler):
    """Pickles networks the way EDM's persistence decorator does."""

    def __init__(self, f, persistence, module_src, init_kwargs, class_names):
        super().__init__(f, protocol=4)
        self.persistence, self.module_src = persistence, module_src
        self.init_kwargs, self.class_names = init_kwargs, class_names

    def reducer_override(self, obj):
        name = self.class_names.get(type(obj))
        if name is None:
            return NotImplemented
        state = {k: v for k, v in obj.__dict__.items() if k != "config"}  # our dataclass is not EDM's
        if "skip_scale" in state:
            state["skip_scale"] = np.float64(state["skip_scale"])  # EDM stores np.sqrt(0.5)
        if isinstance(obj, EDMPrecond | VPPrecond):
            state["use_fp16"] = False
        state["_init_args"], state["_init_kwargs"] = (), self.init_kwargs.get(id(obj), {})
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=name, state=state)
        return self.persistence._reconstruct_persistent_obj, (meta,)


def damaging_pickler(damage):
    """An EDMStylePickler that pickles what `damage(obj)` returns a reduction for that way (a test's
    corruption), everything else as EDM does."""
    class Damaging(EDMStylePickler):
        def reducer_override(self, obj):
            reduction = damage(obj)
            return super().reducer_override(obj) if reduction is None else reduction
    return Damaging


def edm_init_kwargs(model, cfg: ModelConfig) -> dict:
    """The constructor kwargs EDM records on the wrapper and on the SongUNet."""
    net = dict(cfg.network)
    res, ch = net.pop("img_resolution"), net.pop("img_channels")
    return {id(model): dict(img_resolution=res, img_channels=ch, label_dim=cfg.label_dim, use_fp16=False,
                            model_type="SongUNet", **net),
            id(model.model): dict(img_resolution=res, in_channels=ch, out_channels=ch, label_dim=cfg.label_dim,
                                  **net)}


def write_edm_pickle(path, persistence, model, cfg, module_src=MODULE_SRC, class_names=None, extra=None,
                     pickler=None, init_kwargs=None):
    """Write `model` as an EDM training snapshot pickle (with `pickler`, an EDMStylePickler subclass that
    damages something on the way); returns the path."""
    top = {"ema": model, "loss_fn": FakeEDMLoss(), "augment_pipe": None,
           "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "datasets/toy.zip",
                              "use_labels": cfg.label_dim > 0, "xflip": False, "resolution": 8},
           **(extra or {})}
    names = {**EDM_CLASS_NAMES, FakeEDMLoss: "EDMLoss", **(class_names or {})}
    with open(path, "wb") as f:
        (pickler or EDMStylePickler)(f, persistence, module_src, init_kwargs or edm_init_kwargs(model, cfg),
                                     names).dump(top)
    return path


def tiny_model(label_dim=0, precond="edm", seed=0):
    """A tiny SongUNet with random non-trivial weights in every tensor."""
    torch.manual_seed(seed)
    kwargs = ({"sigma_data": 0.5} if precond == "edm"  # VP: a non-default beta_d shows it is read back
              else {"beta_d": 19.0, "beta_min": 0.1, "M": 1000, "epsilon_t": 1e-5})
    cfg = ModelConfig(backbone="songunet", network=songunet_config("tiny", img_resolution=8, augment_dim=9),
                      precond=precond, precond_kwargs=kwargs, label_dim=label_dim)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model, cfg


def outputs(model, label_dim=0):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 8, 8, generator=g)
    labels = torch.nn.functional.one_hot(torch.tensor([1, 4]), label_dim).float() if label_dim else None
    with torch.no_grad():
        return model(x, torch.tensor([0.3, 12.0]), labels, augment_labels=torch.randn(2, 9, generator=g))


# ----------------------------------------------------------------------------
# Import of well-formed files.

@pytest.mark.parametrize("precond,label_dim", [("edm", 0), ("edm", 10), ("vp", 0)])
def test_synthetic_edm_pickle_imports_identically(tmp_path, fake_persistence, precond, label_dim):
    model, cfg = tiny_model(label_dim, precond)
    path = write_edm_pickle(tmp_path / "net.pkl", fake_persistence, model, cfg)
    imported, icfg, info = edm_pickle.load_edm_pickle(path)
    assert icfg == cfg
    assert info["precond_class"] == {"edm": "EDMPrecond", "vp": "VPPrecond"}[precond]
    assert info["num_keys"] == len(model.state_dict())
    ref = model.state_dict()
    got = imported.state_dict()
    assert list(got) == list(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert torch.equal(outputs(imported, label_dim), outputs(model, label_dim))


def test_skip_scale_numpy_scalar_and_persistent_records(tmp_path, fake_persistence):
    model, cfg = tiny_model()
    path = write_edm_pickle(tmp_path / "net.pkl", fake_persistence, model, cfg)
    top = edm_pickle.read_edm_pickle(path)
    block = top["ema"].state["_modules"]["model"].state["_modules"]["enc"].state["_modules"]["8x8_block0"]
    assert isinstance(block, edm_pickle.PersistentRecord) and block.class_name == "UNetBlock"
    assert block.state["skip_scale"] == math.sqrt(0.5)
    assert top["loss_fn"].class_name == "EDMLoss" and top["loss_fn"].state["P_mean"] == -1.2
    scanned = edm_pickle.scan_globals(path)
    assert edm_pickle.disallowed_globals(scanned) == []
    for name in ["torch_utils.persistence._reconstruct_persistent_obj", "torch.nn.modules.container.ModuleDict",
                 "torch._utils._rebuild_parameter", "torch._utils._rebuild_tensor_v2",
                 "torch.storage._load_from_bytes", "collections.OrderedDict", "numpy.dtype"]:
        assert name in scanned, name
    assert any(n.endswith("multiarray.scalar") for n in scanned)


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_numpy_scalar_under_both_module_names(tmp_path, module):
    data = pickle.dumps({"skip_scale": np.float64(math.sqrt(0.5))}, protocol=3)  # text GLOBAL opcodes
    for old in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        data = data.replace(old, module.encode())
    (tmp_path / "s.pkl").write_bytes(data)
    assert edm_pickle.scan_globals(tmp_path / "s.pkl").get(f"{module}.scalar") == 1
    assert edm_pickle.read_edm_pickle(tmp_path / "s.pkl") == {"skip_scale": math.sqrt(0.5)}


def test_import_edm_saves_our_format(tmp_path, fake_persistence):
    model, cfg = tiny_model()
    path = write_edm_pickle(tmp_path / "net.pkl", fake_persistence, model, cfg)
    out = edm_pickle.import_edm(path, tmp_path / "out" / "net.safetensors")
    loaded, meta = load_model(out)
    assert torch.equal(outputs(loaded), outputs(model))
    prov = meta["provenance"]
    assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["source"] == str(path)
    assert prov["dataset_kwargs"]["path"] == "datasets/toy.zip"
    assert meta["model"] == cfg.to_dict()
    with pytest.raises(UserError, match="sha256 mismatch"):
        edm_pickle.import_edm(path, tmp_path / "x.safetensors", expected_sha256="0" * 64)
    with pytest.raises(UserError, match=".safetensors"):
        edm_pickle.import_edm(path, tmp_path / "x.pt")


def test_cli_import_and_scan(tmp_path, fake_persistence, capsys):
    model, cfg = tiny_model()
    path = write_edm_pickle(tmp_path / "net.pkl", fake_persistence, model, cfg)
    assert main(["import-edm", str(path), str(tmp_path / "net.safetensors")]) == 0
    out = capsys.readouterr().out
    assert f"state-dict keys: {len(model.state_dict())}" in out
    assert f"{sum(p.numel() for p in model.parameters()):,}" in out
    assert read_metadata(tmp_path / "net.safetensors")["model"]["backbone"] == "songunet"
    assert main(["import-edm", str(path), "--scan-only"]) == 0
    assert "allowed  torch.storage._load_from_bytes" in capsys.readouterr().out


# ----------------------------------------------------------------------------
# Hostile and broken files.

class Payload:
    """Pickles as a call to `fn(*args)`."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def shell_touch(marker):
    return Payload(os.system, f"touch '{marker}'")


def test_plain_pickle_would_run_the_payload(tmp_path):
    """Control: the payload used below is live (plain pickle runs it), so its absence later means something."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(shell_touch(marker)))
    assert marker.exists()


@pytest.mark.parametrize("where", ["top", "nested"])
def test_os_system_payload_is_refused_and_never_runs(tmp_path, fake_persistence, capsys, where):
    marker = tmp_path / "pwned"
    if where == "top":
        path = tmp_path / "evil.pkl"
        path.write_bytes(pickle.dumps({"ema": shell_touch(marker)}, protocol=4))
    else:  # hidden in a block's state inside an otherwise valid EDM pickle
        model, cfg = tiny_model()
        model.model.enc["8x8_block0"].evil = shell_touch(marker)
        path = write_edm_pickle(tmp_path / "evil.pkl", fake_persistence, model, cfg)
    system = f"{os.system.__module__}.system"
    with pytest.raises(UserError, match=rf"{system}.*nothing in it ran"):
        edm_pickle.load_edm_pickle(path)
    assert system in edm_pickle.disallowed_globals(edm_pickle.scan_globals(path))
    assert main(["import-edm", str(path), str(tmp_path / "o.safetensors")]) == 2
    assert system in capsys.readouterr().err
    assert main(["import-edm", str(path), "--scan-only"]) == 1
    assert f"REFUSED  {system}" in capsys.readouterr().out
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("make", [
    lambda m: Payload(exec, f"open({str(m)!r}, 'w')"),
    lambda m: Payload(eval, f"open({str(m)!r}, 'w')"),
    lambda m: Payload(sys.modules["torch_utils.persistence"]._src_to_module, f"open({str(m)!r}, 'w')"),
    lambda m: Payload(torch.load, str(m)),
    lambda m: Payload(pickle.loads, pickle.dumps(shell_touch(m))),
])
def test_other_code_globals_are_refused(tmp_path, fake_persistence, make):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": make(marker)}, protocol=4))
    with pytest.raises(UserError, match="Refused"):
        edm_pickle.read_edm_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("target", [b"torch._utils\n_rebuild_tensor_v2", b"collections\nOrderedDict",
                                    b"torch.nn.modules.container\nModuleDict"])
def test_build_cannot_modify_allowed_globals(tmp_path, target):
    # Hand-assembled: GLOBAL <target>; BUILD with state (None, {"__defaults__": (1,)}) i.e. setattr on it.
    data = b"\x80\x04c" + target + b"\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b."
    (tmp_path / "b.pkl").write_bytes(data)
    with pytest.raises(UserError, match="could not be read"):
        edm_pickle.read_edm_pickle(tmp_path / "b.pkl")
    assert edm_pickle._rebuild_tensor_v2.__defaults__ == (False, None, None)


def malicious_src(marker):
    return (f"import os\nopen({str(marker)!r}, 'w').write('pwned')\nos.system(\"touch '{marker}'\")\n"
            "class SongUNet: pass\n")


def test_malicious_module_src_stays_inert(tmp_path, fake_persistence):
    control = tmp_path / "control"
    exec(malicious_src(control), {})  # control: this source does write its marker when executed
    assert control.exists()
    marker = tmp_path / "pwned"
    model, cfg = tiny_model()
    src = malicious_src(marker)
    path = write_edm_pickle(tmp_path / "net.pkl", fake_persistence, model, cfg, module_src=src)
    imported, _, info = edm_pickle.load_edm_pickle(path)
    assert not marker.exists()
    assert info["module_src_sha256"] == hashlib.sha256(src.encode()).hexdigest()
    assert torch.equal(outputs(imported), outputs(model))


def test_unsupported_network_class(tmp_path, fake_persistence):
    model, cfg = tiny_model()
    path = write_edm_pickle(tmp_path / "net.pkl", fake_persistence, model, cfg,
                            class_names={su.SongUNet: "DhariwalUNet"})
    with pytest.raises(UserError, match="DhariwalUNet"):
        edm_pickle.load_edm_pickle(path)


def test_weights_that_do_not_fit_the_config(tmp_path, fake_persistence):
    model, cfg = tiny_model()
    bad = dict(cfg.network, model_channels=64)
    kwargs = edm_init_kwargs(model, ModelConfig(backbone="songunet", network=bad))
    path = tmp_path / "net.pkl"
    names = {**EDM_CLASS_NAMES, FakeEDMLoss: "EDMLoss"}
    with open(path, "wb") as f:
        EDMStylePickler(f, fake_persistence, MODULE_SRC, kwargs, names).dump({"ema": model})
    with pytest.raises(UserError, match="do not fit"):
        edm_pickle.load_edm_pickle(path)


def test_broken_files_are_user_errors(tmp_path, fake_persistence):
    model, cfg = tiny_model()
    good = write_edm_pickle(tmp_path / "net.pkl", fake_persistence, model, cfg).read_bytes()
    cases = {
        "truncated.pkl": (good[: len(good) // 2], "corrupt|truncated"),
        "empty.pkl": (b"", "not a pickle"),
        "text.pkl": (b"hello, this is not a checkpoint\n", "not a pickle"),
        "nothing.pkl": (pickle.dumps({"weights": [1, 2]}, protocol=4), "no EDM network"),
    }
    torch.save(model.state_dict(), tmp_path / "zip.pkl")
    cases["zip.pkl"] = ((tmp_path / "zip.pkl").read_bytes(), "zip archive")
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=match):
            edm_pickle.load_edm_pickle(tmp_path / name)
    with pytest.raises(UserError, match="corrupt|truncated"):
        edm_pickle.scan_globals(tmp_path / "truncated.pkl")
    with pytest.raises(UserError, match="not found"):
        edm_pickle.import_edm(tmp_path / "missing.pkl", tmp_path / "o.safetensors")


# ----------------------------------------------------------------------------
# Downloader, against a local HTTP server with Range support.

class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files`; honours `Range: bytes=N-`; can drop a response midway or ignore Range."""

    def do_GET(self):
        srv = self.server
        data = srv.files.get(self.path)
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        if data is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng and not srv.ignore_range else 0
        body = data[start:]
        self.send_response(206 if start or (rng and not srv.ignore_range) else 200)
        if rng and not srv.ignore_range:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # simulate a dropped connection
            body, srv.cut_after = body[: srv.cut_after], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(serve_http):
    return serve_http(RangeHandler, files={}, requests=[], cut_after=None, ignore_range=False)


PAYLOAD = os.urandom(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_once_into_cache(tmp_path, http_server):
    srv, base = http_server
    srv.files["/edm/net.pkl"] = PAYLOAD
    path = download.fetch(f"{base}/edm/net.pkl", cache_dir=tmp_path, expected_sha256=PAYLOAD_SHA,
                          progress=False, allow_private=True)
    assert path.read_bytes() == PAYLOAD and path.is_relative_to(tmp_path)
    assert path.with_name("net.pkl.sha256").read_text().split()[0] == PAYLOAD_SHA
    assert download.fetch(f"{base}/edm/net.pkl", cache_dir=tmp_path, progress=False, allow_private=True) == path
    assert len(srv.requests) == 1  # the second call used the cache


def test_download_resumes_after_a_dropped_connection(tmp_path, http_server):
    srv, base = http_server
    srv.files["/net.pkl"] = PAYLOAD
    srv.cut_after = 100_000
    with pytest.raises(UserError, match="resume"):
        download.fetch(f"{base}/net.pkl", cache_dir=tmp_path, progress=False, allow_private=True)
    part = download.cache_path(f"{base}/net.pkl", tmp_path).with_name("net.pkl.part")
    have = part.stat().st_size
    assert 0 < have < len(PAYLOAD)
    path = download.fetch(f"{base}/net.pkl", cache_dir=tmp_path, expected_sha256=PAYLOAD_SHA,
                          progress=False, allow_private=True)
    assert srv.requests[-1] == ("/net.pkl", f"bytes={have}-")
    assert path.read_bytes() == PAYLOAD and not part.exists()


def test_download_resumes_an_existing_part_file(tmp_path, http_server, monkeypatch):
    srv, base = http_server
    srv.files["/net.pkl"] = PAYLOAD
    monkeypatch.setenv("SIMS_CACHE_DIR", str(tmp_path / "envcache"))
    target = download.cache_path(f"{base}/net.pkl")
    assert target.is_relative_to(tmp_path / "envcache")
    target.parent.mkdir(parents=True)
    target.with_name("net.pkl.part").write_bytes(PAYLOAD[:1234])
    assert download.fetch(f"{base}/net.pkl", progress=False, allow_private=True).read_bytes() == PAYLOAD
    assert srv.requests == [("/net.pkl", "bytes=1234-")]


def test_download_restarts_when_server_ignores_range(tmp_path, http_server):
    srv, base = http_server
    srv.files["/net.pkl"], srv.ignore_range = PAYLOAD, True
    target = download.cache_path(f"{base}/net.pkl", tmp_path)
    target.parent.mkdir(parents=True)
    target.with_name("net.pkl.part").write_bytes(b"stale bytes")
    got = download.fetch(f"{base}/net.pkl", cache_dir=tmp_path, progress=False, allow_private=True)
    assert got.read_bytes() == PAYLOAD


def test_download_errors(tmp_path, http_server):
    srv, base = http_server
    srv.files["/net.pkl"] = PAYLOAD
    with pytest.raises(UserError, match="sha256 mismatch"):
        download.fetch(f"{base}/net.pkl", cache_dir=tmp_path, expected_sha256="ab" * 32,
                       progress=False, allow_private=True)
    assert not download.cache_path(f"{base}/net.pkl", tmp_path).exists()  # a bad download is not kept
    with pytest.raises(UserError, match="HTTP 404"):
        download.fetch(f"{base}/missing.pkl", cache_dir=tmp_path, progress=False, allow_private=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with pytest.raises(UserError, match="Could not reach.*by hand"):
        download.fetch(f"http://127.0.0.1:{dead_port}/net.pkl", cache_dir=tmp_path,
                       progress=False, allow_private=True)
    with pytest.raises(UserError, match="not found"):
        download.fetch(tmp_path / "nope.pkl")
    local = tmp_path / "local.pkl"
    local.write_bytes(PAYLOAD)
    assert download.fetch(local, expected_sha256=PAYLOAD_SHA) == local
    with pytest.raises(UserError, match="sha256 mismatch"):
        download.fetch(local, expected_sha256="cd" * 32)


def test_import_by_url(tmp_path, http_server, fake_persistence):
    srv, base = http_server
    model, cfg = tiny_model()
    srv.files["/pretrained/edm-toy.pkl"] = write_edm_pickle(tmp_path / "n.pkl", fake_persistence, model, cfg
                                                            ).read_bytes()
    url = f"{base}/pretrained/edm-toy.pkl"
    out = edm_pickle.import_edm(url, tmp_path / "toy.safetensors", cache_dir=tmp_path / "cache",
                                allow_private_urls=True)  # the test server is on loopback
    loaded, meta = load_model(out)
    assert meta["provenance"]["source"] == url
    assert torch.equal(outputs(loaded), outputs(model))
