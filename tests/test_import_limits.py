"""The importers refuse what would make them allocate a size a file merely declares.

- pickle memo indices (PUT/BINPUT/LONG_BINPUT): the C unpickler grows its memo to twice the index and
  zero-fills it, so a 9-byte pickle storing entry 2**27 costs 2 GB of resident memory;
- tensor views reaching past their storage: `Tensor.set_` grows the storage to fit;
- tensors sharing storage that add up to more bytes than the file;
- network configs over the parameter budget (SIMS_MAX_PARAMS), counted on the meta device before
  anything is allocated.
"""
import collections
import pickle
import struct

import pytest
import torch

from pipelines.checkpoints import edm_pickle, native
from pipelines.checkpoints.native import load_model, save_model
from pipelines.errors import UserError
from pipelines.models import ModelConfig, build_model
from pipelines.networks.songunet import songunet_config
from test_edm_import import (edm_init_kwargs,
                             damaging_pickler, fake_persistence, tiny_model, write_edm_pickle)
from test_edm_storage_sizes import storage_blob

__all__ = ["fake_persistence"]  # the fixture, imported for this module's tests

BIG_PUT = b"Nr" + struct.pack("<I", 2 ** 27) + b"0"  # None, LONG_BINPUT 2**27 (a 2 GB memo), POP


def _refuse_unpickling(monkeypatch):
    """Any C unpickler constructed from here on fails the test: the refusal must come first."""
    def forbidden(*_a, **_k):
        raise AssertionError("the file reached the C unpickler")
    for name in ("_RestrictedUnpickler", "_NoGlobals", "_StorageSizes"):
        monkeypatch.setattr(edm_pickle, name, forbidden)


@pytest.mark.parametrize("snippet", [BIG_PUT, b"Np134217728\n0", b"Nq\x05\x94\x940"],
                         ids=["LONG_BINPUT", "PUT", "BINPUT"])
def test_a_memo_index_beyond_the_entries_stored_is_refused_before_unpickling(tmp_path, snippet, monkeypatch):
    path = tmp_path / "memo.pkl"
    path.write_bytes(b"\x80\x04" + snippet + b"}.")  # MEMOIZE (0x94) stores 0, 1 after BINPUT 5: still refused
    _refuse_unpickling(monkeypatch)
    with pytest.raises(UserError, match=r"memo.pkl could not be read as an EDM pickle \(UnpicklingError: \w*PUT "
                                        r"at byte 3 stores memo entry [\d,]+, but only 0 entries"):
        edm_pickle.read_edm_pickle(path)


def test_memo_indices_in_order_still_load(tmp_path):
    path = tmp_path / "ok.pkl"
    path.write_bytes(b"\x80\x02}q\x00(X\x01\x00\x00\x00ar\x01\x00\x00\x00h\x01p2\n0h\x02u.")
    assert edm_pickle.read_edm_pickle(path) == {"a": "a"}


def test_a_memo_index_in_a_storage_blob_is_refused_before_unpickling(monkeypatch):
    blob = storage_blob()
    main = blob.index(b"\x80\x02(X\x07\x00\x00\x00storage")  # the blob's fourth pickle: the storage's id
    bad = blob[:main + 2] + BIG_PUT + blob[main + 2:]
    _refuse_unpickling(monkeypatch)
    monkeypatch.setattr(edm_pickle, "_NoGlobals", pickle.Unpickler)  # the three header pickles before it
    monkeypatch.setattr(edm_pickle.torch, "load", None)
    with pytest.raises(pickle.UnpicklingError, match=f"LONG_BINPUT at byte {main + 3} stores memo entry "
                                                     "134,217,728, but only 0 entries"):
        edm_pickle._load_storage(bad)


def _six_floats():
    return torch.storage.TypedStorage(wrap_storage=torch.arange(6, dtype=torch.float32).untyped_storage(),
                                      dtype=torch.float32, _internal=True)


@pytest.mark.parametrize("offset, size, stride, needs", [(0, (3,), (1000,), "2,001"), (5, (2,), (1,), "7"),
                                                          (0, (100,), (0,), "100"), (0, (2, 4), (4, 1), "8")])
def test_a_tensor_view_past_its_storage_is_refused_not_grown(offset, size, stride, needs):
    storage = _six_floats()
    with pytest.raises(pickle.UnpicklingError, match=f"needs {needs} elements but its storage holds 6"):
        edm_pickle._rebuild_tensor_v2(storage, offset, size, stride)
    assert storage._untyped_storage.nbytes() == 24  # set_ never ran (it would have grown the storage)


@pytest.mark.parametrize("offset, size, stride", [(-1, (2,), (1,)), (0, (-2,), (1,)), (0, (2,), (-1,)),
                                                  (0, (2, 2), (1,))])
def test_invalid_tensor_geometry_is_refused(offset, size, stride):
    with pytest.raises(pickle.UnpicklingError, match="tensor geometry is invalid"):
        edm_pickle._rebuild_tensor_v2(_six_floats(), offset, size, stride)


def test_views_inside_their_storage_still_rebuild():
    t = edm_pickle._rebuild_tensor_v2(_six_floats(), 1, (2, 2), (2, 1))
    assert t.tolist() == [[1, 2], [3, 4]]
    assert edm_pickle._rebuild_tensor_v2(_six_floats(), 6, (0,), (1,)).numel() == 0


def _dump(path, persistence, model, cfg, pickler=None, init_kwargs=None):
    return write_edm_pickle(path, persistence, model, cfg, pickler=pickler, init_kwargs=init_kwargs)


def test_a_file_whose_tensor_stride_was_damaged_is_a_user_error(tmp_path, fake_persistence):
    model, cfg = tiny_model()
    damaged = []

    def stride_1000x(obj):  # the first weight matrix, pickled with a stride 1000x its real one
        if type(obj) is torch.Tensor and obj.dim() == 2 and not damaged:
            fn, args = obj.__reduce_ex__(4)
            damaged.append(args[3])
            return fn, (args[0], args[1], args[2], (args[3][0] * 1000, args[3][1]), *args[4:])
        return None

    path = _dump(tmp_path / "strided.pkl", fake_persistence, model, cfg, damaging_pickler(stride_1000x))
    assert damaged
    with pytest.raises(UserError, match=r"strided.pkl could not be read.*a tensor of shape \[\d+, \d+\] .*needs "
                                        r"[\d,]+ elements but its storage holds [\d,]+"):
        edm_pickle.load_edm_pickle(path)


def test_tensors_sharing_a_storage_beyond_the_file_size_are_refused(tmp_path, fake_persistence):
    model, cfg = tiny_model()
    shared = torch.zeros(250_000)
    for i in range(50):  # 50 buffers, each a whole view of one 1 MB storage: 50 MB of weights declared
        model.model.register_buffer(f"extra{i}", shared[:])
    one = torch.storage.TypedStorage(wrap_storage=shared.untyped_storage(), dtype=torch.float32, _internal=True)

    def one_storage(obj):  # every view of `shared` against one storage object: the storage is in the file once
        if isinstance(obj, torch.Tensor) and obj.data_ptr() == shared.data_ptr():
            return torch._utils._rebuild_tensor_v2, (one, 0, tuple(obj.shape), obj.stride(), False,
                                                     collections.OrderedDict())
        return None

    path = _dump(tmp_path / "shared.pkl", fake_persistence, model, cfg, damaging_pickler(one_storage))
    held = path.stat().st_size
    assert held < 10 * 10 ** 6
    with pytest.raises(UserError, match=rf"shared.pkl: its tensors declare [\d,]+ bytes of weights but the file "
                                        rf"holds {held:,} bytes"):
        edm_pickle.load_edm_pickle(path)


def test_an_edm_config_over_the_parameter_budget_is_refused_before_building(tmp_path, fake_persistence,
                                                                            monkeypatch):
    model, cfg = tiny_model()
    kwargs = edm_init_kwargs(model, cfg)
    kwargs[id(model.model)]["model_channels"] = 2 ** 20  # a 2**40-scalar conv on the meta device
    path = _dump(tmp_path / "huge.pkl", fake_persistence, model, cfg, init_kwargs=kwargs)
    built = []
    monkeypatch.setattr(native, "build_model", lambda c: built.append(c))
    with pytest.raises(UserError, match=r"huge.pkl: its network config \(.*model_channels=1048576.*\) describes "
                                        r"more than 1,000,000,000 parameters.*set SIMS_MAX_PARAMS"):
        edm_pickle.load_edm_pickle(path)
    assert built == []


def test_the_parameter_budget_applies_to_our_checkpoints_and_can_be_raised(tmp_path, monkeypatch):
    model, cfg = tiny_model()
    path = save_model(tmp_path / "m.safetensors", model, cfg)
    n = sum(p.numel() for p in model.parameters())
    monkeypatch.setenv("SIMS_MAX_PARAMS", str(n // 2))
    with pytest.raises(UserError, match=rf"m.safetensors: its network config \(img_resolution=8, .*\) describes "
                                        rf"more than {n // 2:,} parameters"):
        load_model(path)
    monkeypatch.setenv("SIMS_MAX_PARAMS", str(10 * n))
    assert sum(p.numel() for p in load_model(path)[0].parameters()) == n
    monkeypatch.setenv("SIMS_MAX_PARAMS", "lots")
    with pytest.raises(UserError, match="SIMS_MAX_PARAMS='lots' is not a positive integer"):
        load_model(path)


@pytest.mark.parametrize("preset, label_dim", [("ffhq64", 0), ("cifar10", 0), ("cifar10", 10)])
def test_real_edm_network_sizes_fit_the_budget(preset, label_dim, monkeypatch):
    """EDM's FFHQ-64 (61.8M parameters) and CIFAR-10 (55.7M) SongUNets pass the meta-device count."""
    cfg = ModelConfig(backbone="songunet", network=songunet_config(preset), label_dim=label_dim)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    monkeypatch.setattr(native, "build_model", lambda c: "built")  # the real allocation is not the point
    assert native.build_for_weights(cfg, shapes, preset) == "built"
    assert native.MAX_PARAMS > 10 * 62e6
