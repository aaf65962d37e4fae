"""Safe import of official NVlabs/edm network pickles (`edm-*-vp.pkl`, `baseline-*-vp.pkl`).

EDM pickles store each network object as a call to `torch_utils.persistence._reconstruct_persistent_obj(meta)`
whose `meta["module_src"]` is Python source that EDM's own loader executes. We never do: a restricted
unpickler resolves only the globals in `ALLOWED_GLOBALS` below (to inert stand-ins or small checked
functions), so the persistent objects become plain `PersistentRecord`s and the embedded source stays a
string we only hash. Any other global refuses the whole file before anything in it runs.

The record tree (`ema` -> EDMPrecond/VPPrecond -> SongUNet -> children) is then turned into our
`ModelConfig` and a state dict, loaded into `build_model(cfg)` with strict=True, and saved in our
safetensors format by `import_edm`.
"""
from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
import pickletools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..models import ModelConfig
from ..precond import Precond
from . import download
from .native import build_for_weights, save_model

SUPPORTED_PRECONDS = ("EDMPrecond", "VPPrecond")
SUPPORTED_NETWORKS = ("SongUNet",)
_NUMPY_KINDS = "biufc"  # numeric scalars only; object dtypes are refused
_STRING_OPS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING")


# ----------------------------------------------------------------------------
# Inert stand-ins for the objects an EDM pickle builds.

@dataclass
class PersistentRecord:
    """What `_reconstruct_persistent_obj(meta)` becomes: class name + object state; source only hashed."""
    class_name: str
    state: dict
    version: Any = None
    module_src_sha256: str = ""


class ModuleDictStub:
    """Stand-in for torch.nn.ModuleDict: accepts the pickle's NEWOBJ + BUILD and keeps the state."""

    def __init__(self):
        self.state: dict = {}

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("ModuleDict state is not a dict")
        self.state = state


class _Refused(Exception):
    """A global outside the allowlist; carries 'module.name'."""


def _reconstruct_persistent_obj(meta):
    """EDM's persistence hook, made inert: returns a record and never evaluates `module_src`."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError("persistent object metadata is not an EDM class record")
    state = meta.get("state")
    if not isinstance(state, dict):
        raise pickle.UnpicklingError(f"persistent object {meta['class_name']} has no state dict")
    src = meta.get("module_src")
    src_hash = hashlib.sha256(src.encode("utf-8", "replace")).hexdigest() if isinstance(src, str) else ""
    return PersistentRecord(meta["class_name"], state, meta.get("version"), src_hash)


# Storage classes a legacy torch.save blob may name, with their element size in bytes.
_STORAGE_ITEMSIZE = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2,
                     "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
                     "BoolStorage": 1}


class _NoGlobals(pickle.Unpickler):
    """The plain-data header pickles of a storage blob (magic number, protocol, system info, storage keys)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"storage header references {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("storage header uses persistent ids")


class _StorageSizes(pickle.Unpickler):
    """The blob's main pickle with nothing built: records each storage's declared size in bytes."""

    def __init__(self, f):
        super().__init__(f)
        self.nbytes: dict[str, int] = {}

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_ITEMSIZE:
            return _STORAGE_ITEMSIZE[name]
        raise pickle.UnpicklingError(f"storage blob references {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError("storage blob has an unexpected persistent id")
        _, itemsize, key, _location, numel, _view = pid
        if not (isinstance(itemsize, int) and isinstance(numel, int) and numel >= 0 and isinstance(key, (str, bytes))):
            raise pickle.UnpicklingError("storage blob declares a malformed storage")
        self.nbytes[key] = max(self.nbytes.get(key, 0), numel * itemsize)
        return None


def _check_storage_sizes(blob: bytes) -> None:
    """Refuse a legacy torch.save blob whose storages declare more bytes than the blob holds.

    torch's loader allocates each storage at its declared size before reading its data, so a damaged
    size field (say 2**62 elements) would allocate gigabytes before the short data is noticed. Every
    storage's data follows the pickles as an 8-byte count and the bytes, so together they cannot
    exceed what remains of the blob; checking that first bounds what loading allocates by the blob's length.
    Each of the blob's pickles has its opcodes checked before the C unpickler reads it (see `_check_opcodes`)."""
    f = io.BytesIO(blob)

    def checked(unpickler):
        start = f.tell()
        _check_opcodes(f)
        f.seek(start)
        return unpickler(f)

    for _ in range(3):  # magic number, protocol version, system info
        checked(_NoGlobals).load()
    sizes = checked(_StorageSizes)
    sizes.load()
    checked(_NoGlobals).load()  # the storage keys
    declared, left = sum(sizes.nbytes.values()) + 8 * len(sizes.nbytes), len(blob) - f.tell()
    if declared > left:
        raise pickle.UnpicklingError(f"a tensor storage declares {declared:,} bytes of data but its blob holds "
                                     f"{left:,}")


def _load_storage(blob):
    """torch.storage._load_from_bytes: a legacy torch.save blob of one storage, read with weights_only
    after its declared sizes were checked against its length."""
    if not isinstance(blob, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage payload is not bytes")
    _check_storage_sizes(bytes(blob))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation chatter
        storage = torch.load(io.BytesIO(bytes(blob)), weights_only=True, map_location="cpu")
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"storage payload decoded to {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """torch._utils._rebuild_tensor_v2 with its arguments checked; hooks and metadata are ignored.

    `Tensor.set_` grows a storage that is too small for the view it is given, so a damaged size, stride
    or offset would allocate up to its declared extent; a view must lie inside its storage instead."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError("tensor storage is not a torch storage")
    if not (isinstance(storage_offset, int) and _int_tuple(size) and _int_tuple(stride)):
        raise pickle.UnpicklingError("tensor geometry is not integers")
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or storage_offset < 0 or min(size + stride, default=0) < 0:
        raise pickle.UnpicklingError(f"tensor geometry is invalid (size {size}, stride {stride}, offset "
                                     f"{storage_offset})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation chatter
        numel, held = math.prod(size), storage.size()
        extent = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if numel else 0
        if max(extent, numel) > held:  # numel too: overlapping (stride-0) views would multiply the weights
            raise pickle.UnpicklingError(f"a tensor of shape {list(size)} (stride {list(stride)}, offset "
                                         f"{storage_offset}) needs {max(extent, numel):,} elements but its "
                                         f"storage holds {held:,}")
        t = torch.empty(0, dtype=storage.dtype)
        return t.set_(storage._untyped_storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """torch._utils._rebuild_parameter(_with_state): we only need the tensor."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter data is not a tensor")
    return data


def _numpy_dtype(spec, align=False, copy=False):
    """numpy.dtype, for plain numeric type codes only (e.g. 'f8')."""
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"numpy dtype spec {spec!r} is not a type code")
    dt = np.dtype(spec, align=bool(align), copy=True)  # a fresh object: BUILD must not touch numpy's singletons
    if dt.kind not in _NUMPY_KINDS or dt.hasobject:
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not numeric")
    return dt


def _numpy_scalar(dtype, raw=b""):
    """numpy scalar (e.g. skip_scale = sqrt(0.5)) decoded from its raw bytes into a Python number."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMPY_KINDS or dtype.hasobject:
        raise pickle.UnpicklingError("numpy scalar with a non-numeric dtype")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar bytes do not match its dtype")
    return np.frombuffer(bytes(raw), dtype=dtype)[0].item()


def _int_tuple(x) -> bool:
    return isinstance(x, (tuple, list, torch.Size)) and all(isinstance(i, int) for i in x)


class _Callable:
    """An allowed function as the unpickler sees it: callable, but a BUILD opcode cannot alter it
    (a bare function would accept attribute writes such as `__defaults__`)."""
    __slots__ = ("_fn",)

    def __init__(self, fn):
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __setattr__(self, name, value):
        raise pickle.UnpicklingError("the pickle tried to modify a loader function")

    def __setstate__(self, state):
        raise pickle.UnpicklingError("the pickle tried to modify a loader function")


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Callable(_reconstruct_persistent_obj),
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictStub,  # a class: NEWOBJ needs a type
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_parameter"): _Callable(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Callable(_rebuild_parameter),
    ("torch._utils", "_rebuild_tensor_v2"): _Callable(_rebuild_tensor_v2),
    ("torch.storage", "_load_from_bytes"): _Callable(_load_storage),
    ("numpy.core.multiarray", "scalar"): _Callable(_numpy_scalar),
    ("numpy._core.multiarray", "scalar"): _Callable(_numpy_scalar),
    ("numpy", "dtype"): _Callable(_numpy_dtype),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ALLOWED_GLOBALS; anything else aborts the load."""

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("the file uses persistent ids (a torch.save archive, not an EDM pickle)")


# ----------------------------------------------------------------------------
# Reading files.

def scan_globals(path) -> dict[str, int]:
    """Count the globals a pickle references, by reading its opcodes only (nothing is executed).

    For a report before loading; the restricted unpickler is what actually enforces the allowlist.
    STACK_GLOBAL names are recovered from the strings pushed just before it ('?' if not plain strings).
    """
    data = _read_pickle_bytes(path)
    counts: collections.Counter = collections.Counter()
    memo: dict[int, Any] = {}
    top2: list[Any] = [None, None]  # the last two pushed values when they are strings, else None
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in _STRING_OPS:
                top2 = [top2[1], arg]
            elif op.name == "MEMOIZE":
                memo[len(memo)] = top2[1]
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = top2[1]
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                top2 = [top2[1], memo.get(int(arg))]
            elif op.name in ("GLOBAL", "INST"):
                counts[str(arg).replace(" ", ".")] += 1
                top2 = [top2[1], None]
            elif op.name == "STACK_GLOBAL":
                mod, name = top2
                counts[f"{mod}.{name}" if isinstance(mod, str) and isinstance(name, str) else "?"] += 1
                top2 = [None, None]
            elif op.name not in ("FRAME", "PROTO"):
                top2 = [top2[1], None]
    except (ValueError, EOFError) as e:
        raise UserError(f"{path} is not a complete pickle ({e}); the file is corrupt or truncated. "
                        "Download it again.") from None
    return dict(counts)


def disallowed_globals(counts: dict[str, int]) -> list[str]:
    """Names in a `scan_globals` result that the importer would refuse."""
    allowed = {f"{m}.{n}" for m, n in ALLOWED_GLOBALS}
    return sorted(g for g in counts if g not in allowed)


_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


def _check_opcodes(f) -> None:
    """Walk one pickle's opcodes (bytes, or a stream up to its STOP) without building anything, refusing
    the two kinds of argument that make the C unpickler allocate at a size the file merely declares:

    - a length-prefixed argument longer than what is left: BINBYTES/BINBYTES8/BYTEARRAY8 objects are
      allocated at their declared length before being read. pickletools reads each argument from the
      stream, which never returns more than is there, and raises when it comes up short.
    - a memo index beyond the entries stored so far: PUT/BINPUT/LONG_BINPUT with index i grows the memo
      to 2*i slots and zero-fills them, so a damaged 4-byte index (2**28) costs 4 GB of resident memory
      for a 9-byte file. Picklers number memo entries 0, 1, 2, ... in order, so a real index is at most
      the count stored before it, which bounds the memo by the number of opcodes in the file."""
    stored = 0
    for op, arg, pos in pickletools.genops(f):
        if op.name == "MEMOIZE":
            stored += 1
        elif op.name in _MEMO_PUTS:
            if arg > stored:
                raise pickle.UnpicklingError(f"{op.name} at byte {pos} stores memo entry {arg:,}, but only "
                                             f"{stored:,} entries were stored before it")
            stored = max(stored, arg + 1)


def read_edm_pickle(path) -> Any:
    """Unpickle `path` with the restricted unpickler; returns plain containers, tensors and records."""
    data = _read_pickle_bytes(path)
    try:
        _check_opcodes(data)
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except _Refused as e:
        raise UserError(f"Refused {path}: it references the Python global {e}, which an EDM checkpoint does "
                        f"not need. The file was not loaded and nothing in it ran.") from None
    except Exception as e:  # whatever malformed bytes make the unpickler or torch raise: the file is at fault
        if isinstance(e, UserError):
            raise
        raise UserError(f"{path} could not be read as an EDM pickle ({type(e).__name__}: {e}). It is corrupt, "
                        "truncated or not an EDM checkpoint; download it again.") from None


def _read_pickle_bytes(path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"File not found: {path}.")
    data = path.read_bytes()
    if data[:2] == b"PK":
        raise UserError(f"{path} is a zip archive (torch.save or dataset), not an EDM network pickle. "
                        "Pass an edm-*.pkl file from NVlabs/edm.")
    if len(data) < 2 or data[0] != 0x80:
        raise UserError(f"{path} is not a pickle file (it does not start with a pickle header). "
                        "Pass an edm-*.pkl file from NVlabs/edm.")
    return data


# ----------------------------------------------------------------------------
# Record tree -> ModelConfig + state dict.

def records_state_dict(node, prefix: str = "", out: dict | None = None) -> dict[str, torch.Tensor]:
    """Flatten a record tree like nn.Module.state_dict: parameters, persistent buffers, then children."""
    out = {} if out is None else out
    state = node.state
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, t in (state.get(kind) or {}).items():
            if t is None or (kind == "_buffers" and name in non_persistent):
                continue
            if not isinstance(t, torch.Tensor):
                raise UserError(f"Entry {prefix}{name} of the pickle is a {type(t).__name__}, not a tensor.")
            out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, (PersistentRecord, ModuleDictStub)):
            raise UserError(f"Module {prefix}{name} in the pickle is a {type(child).__name__}, which the "
                            "EDM importer does not know.")
        records_state_dict(child, f"{prefix}{name}.", out)
    return out


def _network_kwargs(net: PersistentRecord) -> tuple[dict, int]:
    """SongUNet `_init_kwargs` -> (our SongUNetConfig kwargs, label_dim)."""
    if net.state.get("_init_args"):
        raise UserError("The SongUNet in this pickle was built with positional arguments; cannot map them.")
    kw = dict(net.state.get("_init_kwargs") or {})
    in_ch, out_ch = kw.pop("in_channels", None), kw.pop("out_channels", None)
    if in_ch is None or in_ch != out_ch:
        raise UserError(f"SongUNet with in_channels={in_ch}, out_channels={out_ch} is not supported "
                        "(expected equal image channels).")
    label_dim = int(kw.pop("label_dim", 0) or 0)
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}
    return {"img_channels": in_ch, **kw}, label_dim


def _precond_kwargs(ema: PersistentRecord) -> dict:
    """Preconditioning hyper-parameters read from the wrapper's attributes."""
    s = ema.state
    if ema.class_name == "VPPrecond":
        return {k: s[k] for k in ("beta_d", "beta_min", "M", "epsilon_t") if k in s}
    kwargs = {"sigma_data": float(s.get("sigma_data", 0.5))}
    if float(s.get("sigma_min", 0)) != 0:
        kwargs["sigma_min"] = float(s["sigma_min"])
    if math.isfinite(float(s.get("sigma_max", math.inf))):
        kwargs["sigma_max"] = float(s["sigma_max"])
    return kwargs


def model_config_from_records(ema: PersistentRecord) -> ModelConfig:
    """Our ModelConfig for the `ema` record (EDMPrecond or VPPrecond around a SongUNet)."""
    if not isinstance(ema, PersistentRecord) or ema.class_name not in SUPPORTED_PRECONDS:
        name = ema.class_name if isinstance(ema, PersistentRecord) else type(ema).__name__
        raise UserError(f"The pickle's network wrapper is {name}; supported: {', '.join(SUPPORTED_PRECONDS)}.")
    net = (ema.state.get("_modules") or {}).get("model")
    if not isinstance(net, PersistentRecord) or net.class_name not in SUPPORTED_NETWORKS:
        name = net.class_name if isinstance(net, PersistentRecord) else type(net).__name__
        raise UserError(f"The pickle's network is {name}; only {', '.join(SUPPORTED_NETWORKS)} (DDPM++, the "
                        "edm-*-vp.pkl checkpoints) can be imported.")
    network, label_dim = _network_kwargs(net)
    precond = "edm" if ema.class_name == "EDMPrecond" else "vp"
    return ModelConfig(backbone="songunet", network=network, precond=precond,
                       precond_kwargs=_precond_kwargs(ema), label_dim=label_dim)


def load_edm_pickle(path) -> tuple[Precond, ModelConfig, dict]:
    """Safely read an EDM pickle into our model (eval mode, CPU); returns (model, config, info)."""
    top = read_edm_pickle(path)
    ema = top.get("ema") if isinstance(top, dict) else top
    if not isinstance(ema, PersistentRecord):
        found = sorted(map(str, top)) if isinstance(top, dict) else type(top).__name__
        raise UserError(f"{path} holds no EDM network under 'ema' (found {found}); pass a network pickle "
                        "(edm-*.pkl) from NVlabs/edm.")
    try:
        cfg = model_config_from_records(ema)
        state = records_state_dict(ema)
    except (UserError, ImportError):
        raise
    except Exception as e:  # records whose fields have impossible types or values
        raise UserError(f"{path}: the network description in the pickle is malformed ({type(e).__name__}: "
                        f"{e}); the file is corrupt or not an EDM checkpoint.") from None
    # Each view lies inside its storage and the storages are in the file, but views sharing one storage
    # could still add up to many times the file; the network built to receive them would be that large.
    declared, held = sum(t.numel() * t.element_size() for t in state.values()), Path(path).stat().st_size
    if declared > held:
        raise UserError(f"{path}: its tensors declare {declared:,} bytes of weights but the file holds {held:,} "
                        "bytes; the file is corrupt or not an EDM checkpoint. Download it again.")
    model = build_for_weights(cfg, {k: tuple(t.shape) for k, t in state.items()}, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"The weights in {path} do not fit the network its config describes: "
                        f"{str(e).splitlines()[0]} ...") from None
    dataset_kwargs = top.get("dataset_kwargs") if isinstance(top, dict) else None
    info = {
        "precond_class": ema.class_name,
        "network_class": ema.state["_modules"]["model"].class_name,
        "num_keys": len(state),
        "num_params": sum(p.numel() for p in model.parameters()),
        "use_fp16": bool(ema.state.get("use_fp16", False)),
        "dataset_kwargs": _jsonable(dataset_kwargs or {}),
        "pickle_keys": sorted(top) if isinstance(top, dict) else [],
        "module_src_sha256": ema.module_src_sha256,
    }
    return model.eval().requires_grad_(False), cfg, info


def import_edm(src, out_path, cache_dir=None, expected_sha256: str | None = None,
               allow_private_urls: bool = False) -> Path:
    """Fetch (path or URL) an EDM pickle, import it safely and save it as our .safetensors checkpoint.

    URLs on loopback/private/link-local addresses are refused unless `allow_private_urls`."""
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise UserError(f"Output {out_path} must end in .safetensors.")
    path = download.fetch(src, cache_dir=cache_dir, expected_sha256=expected_sha256,
                          allow_private=allow_private_urls)
    sha = download.recorded_sha256(path)
    model, cfg, info = load_edm_pickle(path)
    net = cfg.network
    dataset = {"resolution": net.get("img_resolution"), "channels": net.get("img_channels"),
               "label_dim": cfg.label_dim}
    provenance = {"source": str(src), "source_file": path.name, "sha256": sha, "importer": "edm_pickle",
                  "edm_precond": info["precond_class"], "dataset_kwargs": info["dataset_kwargs"]}
    return save_model(out_path, model, cfg, dataset=dataset, provenance=provenance)


def _jsonable(obj):
    """Plain JSON data from pickle values (anything else becomes its repr)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    return repr(obj)
