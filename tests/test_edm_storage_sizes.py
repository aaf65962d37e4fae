"""An EDM pickle whose tensor storage declares more data than it holds is refused before anything is allocated.

torch's legacy loader allocates each storage at its declared size and only then reads the data, so a damaged
size field (a bit flip in a download, or a crafted file) used to allocate up to gigabytes first."""
import pickle

import pytest
import torch

from pipelines.checkpoints import edm_pickle
from pipelines.errors import UserError
from test_edm_import import damaging_pickler, fake_persistence, tiny_model, write_edm_pickle

__all__ = ["fake_persistence"]  # the fixture, imported for this module's tests


def storage_blob(numel: int | None = None) -> bytes:
    """The legacy torch.save blob EDM pickles for a 6-float storage; `numel` overrides the declared length."""
    typed = torch.storage.TypedStorage(wrap_storage=torch.arange(6, dtype=torch.float32).untyped_storage(),
                                       dtype=torch.float32, _internal=True)
    blob = typed.__reduce__()[1][0]
    if numel is None:
        return blob
    assert blob.count(b"K\x06N") == 1  # BININT1 6, then view metadata None
    return blob.replace(b"K\x06N", b"\x8a\x09" + numel.to_bytes(9, "little") + b"N")  # LONG1


def test_a_valid_blob_passes_the_check_and_loads():
    edm_pickle._check_storage_sizes(storage_blob())
    assert edm_pickle._load_storage(storage_blob()).tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("numel", [7, 10 ** 8, 2 ** 31 - 1, 2 ** 40, 2 ** 62])
def test_declared_sizes_beyond_the_blob_are_refused_before_torch_loads(numel, monkeypatch):
    calls = []
    monkeypatch.setattr(edm_pickle.torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(pickle.UnpicklingError, match=f"declares {4 * numel + 8:,} bytes of data but its blob "
                                                     f"holds 32"):
        edm_pickle._load_storage(storage_blob(numel))
    assert calls == []


def test_a_file_with_an_oversized_storage_is_a_user_error(tmp_path, fake_persistence):
    model, cfg = tiny_model()
    first = []

    def declare_2_40_floats(obj):  # the first storage declares 2**40 floats
        if isinstance(obj, torch.storage.TypedStorage) and not first:
            first.append(obj)
            fn, (blob,) = obj.__reduce__()
            n = obj.size()
            code = (b"K" + bytes([n]) if n < 256 else b"M" + n.to_bytes(2, "little") if n < 65536
                    else b"J" + n.to_bytes(4, "little")) + b"N"
            assert blob.count(code) == 1
            return fn, (blob.replace(code, b"\x8a\x09" + (2 ** 40).to_bytes(9, "little") + b"N"),)
        return None

    path = write_edm_pickle(tmp_path / "oversized.pkl", fake_persistence, model, cfg,
                            pickler=damaging_pickler(declare_2_40_floats))
    assert first
    with pytest.raises(UserError, match=r"oversized.pkl could not be read.*declares [\d,]+ bytes of data but its "
                                        r"blob holds [\d,]+.*download it again"):
        edm_pickle.load_edm_pickle(path)


def test_a_bytes_argument_longer_than_the_file_is_refused_before_unpickling(tmp_path, fake_persistence,
                                                                            monkeypatch):
    """The C unpickler allocates a BINBYTES object at its declared length before reading it."""
    import pickletools
    from test_edm_import import write_edm_pickle
    model, cfg = tiny_model()
    data = bytearray(write_edm_pickle(tmp_path / "ok.pkl", fake_persistence, model, cfg).read_bytes())
    op, _, pos = next(o for o in pickletools.genops(bytes(data)) if o[0].name in ("BINBYTES", "BINBYTES8"))
    width = 8 if op.name == "BINBYTES8" else 4
    data[pos + 1:pos + 1 + width] = (2 ** (8 * width - 2)).to_bytes(width, "little")
    path = tmp_path / "long.pkl"
    path.write_bytes(bytes(data))
    monkeypatch.setattr(edm_pickle, "_RestrictedUnpickler", None)  # calling it would raise TypeError, not this
    with pytest.raises(UserError, match=r"long.pkl could not be read as an EDM pickle \(ValueError: expected "
                                        r"\d+ bytes in a bytes"):
        edm_pickle.load_edm_pickle(path)
