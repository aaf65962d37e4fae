"""Importer robustness: thousands of mutated EDM pickles and checkpoints of ours, each import must end in a
valid model or a clear UserError: no other exception, no crash, no hang, no memory blow-up, nothing run.

A valid EDM-format pickle and a valid .safetensors checkpoint of a tiny SongUNet are mutated (byte flips,
truncations, inserted opcodes including GLOBAL/REDUCE calls of os.system and of a canary function, huge
declared lengths, memo indices and network sizes). The imports run in a child process whose address space
is capped and whose every file has a time limit; it records its peak RSS after every file, and the parent
checks what it reports. Both files are the same bytes in every run, so the mutants are too.
"""
import json
import multiprocessing as mp
import pickletools
import random
import re
import resource
import signal
import struct
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from pipelines.models import ModelConfig, build_model
from pipelines.networks.songunet import songunet_config

pytestmark = pytest.mark.slow

N_PICKLE, N_NATIVE = 1200, 900
PER_FILE_S = 5.0
EXTRA_MEMORY = 3 << 30  # the child may map this much beyond what it holds at the start
PEAK_RSS_KB = 1 << 20  # 1 GB: torch + the tiny models + a few copies of the files (705-728 MB measured)
CANARY_MODULE = "fuzz_canary"


def _peak_rss_kb() -> int:
    """This process's own resident peak (VmHWM). Not ru_maxrss: Linux carries that across exec, so a spawned
    child reports the pytest parent's size at the fork (4.7 GB late in a full run) instead of its own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: the best figure there is


class _Timeout(BaseException):
    """Raised by the per-file alarm (a BaseException, so no importer `except Exception` swallows it)."""


def _tiny():
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="songunet", network=songunet_config(
        "tiny", img_resolution=8, img_channels=1, model_channels=8, channel_mult=[1], num_blocks=1))
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model, cfg


def _install_fake_modules(marker: Path):
    """EDM's persistence module (for pickling) and a canary module whose function leaves a file if called."""
    pkg, mod = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # only its name is pickled
        raise AssertionError("EDM's own loader was called")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    canary = types.ModuleType(CANARY_MODULE)

    def fire(*args, **kwargs):
        marker.write_text("the importer called a function named by the file")
    canary.fire = fire
    sys.modules.update({"torch_utils": pkg, "torch_utils.persistence": mod, CANARY_MODULE: canary})
    return mod


def _stable_pickler():
    """EDM's pickler, with the storages numbered 0, 1, 2, ... instead of named by address.

    torch's legacy storage blob names each storage by its memory address (str(storage._cdata)), so the
    pickle's bytes, and its length with the digits of the addresses, changed from run to run, and with them
    which bytes the seeded mutations hit: a CI run on a clean clone met mutants no local run had."""
    from test_edm_import import EDMStylePickler

    class StableKeys(EDMStylePickler):
        count = 0

        def reducer_override(self, obj):
            if not isinstance(obj, torch.storage.TypedStorage):
                return super().reducer_override(obj)
            fn, (blob,) = obj.__reduce__()
            m = re.search(rb"ctorch\n\w+Storage\nq.X(.{4})", blob, re.S)  # the key after the storage class
            key = blob[m.end():m.end() + struct.unpack("<I", m.group(1))[0]]
            old, new = b"X" + m.group(1) + key, str(self.count).encode()
            assert blob.count(old) == 2  # in the storage's id and in the list of keys
            self.count += 1
            return fn, (blob.replace(old, b"X" + struct.pack("<I", len(new)) + new),)
    return StableKeys


# ----------------------------------------------------------------------------- mutations

def _op_positions(data: bytes) -> list[tuple[str, int]]:
    return [(op.name, pos) for op, _, pos in pickletools.genops(data)]


def _unicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _evil_snippets(pwned: Path) -> list[bytes]:
    cmd = _unicode(f"touch {pwned}")
    return [
        b"cos\nsystem\n" + cmd + b"\x85R",                                   # GLOBAL os.system + REDUCE
        b"\x8c\x02os\x8c\x06system\x93" + cmd + b"\x85R",                    # STACK_GLOBAL form
        b"\x8c\x08builtins\x8c\x04exec\x93" + _unicode("import os") + b"\x85R",
        f"c{CANARY_MODULE}\nfire\n)R".encode(),                              # a canary call
        f"(c{CANARY_MODULE}\nfire\no".encode(),                              # OBJ form
        f"(i{CANARY_MODULE}\nfire\n".encode(),                               # INST form
        f"\x8c{chr(len(CANARY_MODULE))}{CANARY_MODULE}\x8c\x04fire\x93)\x81".encode(),  # NEWOBJ form
        b"ccollections\nOrderedDict\n)R}b",                                  # allowed global, odd BUILD
        b"Nr\x00\x00\x00\x08", b"Nr\x00\x00\x00\x01", b"Np134217728\n",  # memos of 2 GB, 256 MB, 2 GB
        b"\x82\x01", b"P1\n", b"Q", b"R", b"b", b"0", b"(", b"\x81", b"t", b"s", b"u", b"a", b"e", b"2",
        b"j\xff\xff\xff\x7f", b"h\xfe", b"\x94", b"N", b"]" * 50_000, b"(" * 20_000,
    ]


def _huge(rng: random.Random) -> int:
    return rng.choice([0x7FFFFFFF, 0xFFFFFFFF, 1 << 40, 1 << 62, (1 << 64) - 1])


def mutate_pickle(data: bytes, ops, rng: random.Random, evil: list[bytes]) -> tuple[str, bytes]:
    kind = rng.choice(["flip", "flip_op", "truncate", "insert", "insert", "size", "size", "config"])
    b = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= rng.randint(1, 255)
    elif kind == "flip_op":  # at or just after an opcode: hits structure, not tensor payload
        for _ in range(rng.randint(1, 3)):
            _, pos = rng.choice(ops)
            i = min(len(b) - 1, pos + rng.randint(0, 4))
            b[i] ^= rng.randint(1, 255)
    elif kind == "truncate":
        del b[rng.randrange(len(b)):]
    elif kind == "insert":
        _, pos = rng.choice(ops)
        snippet = rng.choice(evil) if rng.random() < 0.7 else bytes([rng.randrange(256)]) + rng.randbytes(
            rng.randint(0, 8))
        b[pos:pos] = snippet
    elif kind == "size":  # a length-prefixed argument declares a huge size
        sized = [(n, p) for n, p in ops if n in ("BINBYTES", "BINUNICODE", "BINUNICODE8", "BINBYTES8", "FRAME",
                                                  "LONG4", "LONG_BINGET", "LONG_BINPUT", "SHORT_BINBYTES",
                                                  "SHORT_BINUNICODE", "BINSTRING")]
        name, pos = rng.choice(sized)
        width = 8 if name in ("BINUNICODE8", "BINBYTES8", "FRAME") else 1 if name.startswith("SHORT") else 4
        value = _huge(rng) & ((1 << (8 * width)) - 1)
        b[pos + 1:pos + 1 + width] = value.to_bytes(width, "little")
    else:  # config: an integer after a network-size key becomes huge
        keys = [k for k in (b"model_channels", b"num_blocks", b"img_resolution", b"in_channels", b"out_channels",
                            b"label_dim", b"augment_dim", b"channel_mult", b"attn_resolutions")
                if k in data]
        key = rng.choice(keys)
        starts = [i for i in range(len(data)) if data.startswith(key, i)]
        i = rng.choice(starts) + len(key)
        j = i
        while j < len(b) and b[j] not in (ord("K"), ord("J"), ord("M")):  # the next small-int opcode
            j += 1
        if j < len(b) - 5:
            width = {ord("K"): 1, ord("M"): 2, ord("J"): 4}[b[j]]
            b[j:j + 1 + width] = b"J" + struct.pack("<i", rng.choice([2 ** 31 - 1, 100_000, -1, 0, 4096]))
    return kind, bytes(b)


def mutate_native(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    kind = rng.choice(["flip", "flip_header", "truncate", "header_len", "tensor", "config", "config"])
    if kind in ("flip", "flip_header", "truncate", "header_len"):
        b = bytearray(data)
        if kind == "flip":  # in the tensor data: a valid file with other weights
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(8 + n, len(b))] ^= rng.randint(1, 255)
        elif kind == "flip_header":
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(8 + n)] ^= rng.randint(1, 255)
        elif kind == "truncate":
            del b[rng.randrange(len(b)):]
        else:
            b[:8] = struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, len(data), _huge(rng)]))
        return kind, bytes(b)
    if kind == "tensor":  # shapes, dtypes and offsets that disagree with the data
        name = rng.choice([k for k in header if k != "__metadata__"])
        t = header[name]
        field = rng.choice(["shape", "dtype", "data_offsets"])
        if field == "shape":
            t["shape"] = rng.choice([[1 << 40], [0], [-1], [3, 1 << 31], [], [2] * 40, "8"])
        elif field == "dtype":
            t["dtype"] = rng.choice(["F64", "I8", "BOOL", "X9", 7])
        else:
            t["data_offsets"] = rng.choice([[0, 1 << 62], [10, 5], [0, len(body) + 4], [-1, 4], [0]])
    else:  # the model config in our metadata
        meta = json.loads(header["__metadata__"]["sims"])
        net = meta["model"]["network"]
        key = rng.choice(sorted(net) + ["backbone", "precond", "label_dim", "drop"])
        value = rng.choice([1 << 40, 100_000, 2 ** 31 - 1, -3, 0, None, "x", [1] * 1000, {"a": 1}, 1e308, True])
        if key == "drop":
            meta["model"].pop(rng.choice(sorted(meta["model"])), None)
        elif key in net:
            net[key] = value
        else:
            meta["model"][key] = value
        header["__metadata__"]["sims"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    return kind, struct.pack("<Q", len(raw)) + raw + body


# ----------------------------------------------------------------------------- the child process

def _alarm(_signum, _frame):
    raise _Timeout()


def _classify(fn, path) -> str:
    from pipelines.errors import UserError
    from pipelines.precond import Precond
    signal.setitimer(signal.ITIMER_REAL, PER_FILE_S)
    try:
        out = fn(path)
        model = out[0]
        return "model" if isinstance(model, Precond) else f"other: returned {type(model).__name__}"
    except UserError as e:
        return f"usererror: {str(e)[:300]}"
    except _Timeout:
        return "timeout"
    except Exception as e:  # the point: any other exception is a finding
        return f"other: {type(e).__name__}: {str(e)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _child(pkl_bytes: bytes, st_bytes: bytes, workdir: str, marker: str, pwned: str, conn) -> None:
    torch.set_num_threads(1)
    _install_fake_modules(Path(marker))
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + EXTRA_MEMORY, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, _alarm)
    from pipelines.checkpoints import edm_pickle, native
    work = Path(workdir)
    progress = work / "progress.txt"
    results = []
    rng = random.Random(1234)
    ops = _op_positions(pkl_bytes)
    evil = _evil_snippets(Path(pwned))
    for data, name, fn in ((pkl_bytes, "orig.pkl", edm_pickle.load_edm_pickle),
                           (st_bytes, "orig.safetensors", native.load_model)):
        (work / name).write_bytes(data)
        fn(work / name)  # the unmutated files import here too (and lazy imports are done before timing)
    cases = [("pkl", i) for i in range(N_PICKLE)] + [("native", i) for i in range(N_NATIVE)]
    for fmt, i in cases:
        if fmt == "pkl":
            kind, data = mutate_pickle(pkl_bytes, ops, rng, evil)
            path, fn = work / "m.pkl", edm_pickle.load_edm_pickle
        else:
            kind, data = mutate_native(st_bytes, rng)
            path, fn = work / "m.safetensors", native.load_model
        path.write_bytes(data)
        progress.write_text(f"{fmt} #{i} ({kind})")
        t0 = time.perf_counter()
        outcome = _classify(fn, path)
        results.append((fmt, i, kind, outcome, time.perf_counter() - t0,
                        _peak_rss_kb()))
    conn.send((results, _peak_rss_kb()))
    conn.close()


# ----------------------------------------------------------------------------- the test

def test_mutated_imports_end_in_a_model_or_a_user_error(tmp_path):
    from pipelines.checkpoints.native import load_model, save_model
    from test_edm_import import EDM_CLASS_NAMES, FakeEDMLoss, MODULE_SRC, edm_init_kwargs
    marker, pwned = tmp_path / "canary-fired", tmp_path / "pwned"
    persistence = _install_fake_modules(marker)
    try:
        model, cfg = _tiny()
        top = {"ema": model, "loss_fn": FakeEDMLoss(), "augment_pipe": None,
               "dataset_kwargs": {"path": "datasets/toy.zip", "resolution": 8}}
        pkl = tmp_path / "edm.pkl"
        with open(pkl, "wb") as f:
            _stable_pickler()(f, persistence, MODULE_SRC, edm_init_kwargs(model, cfg),
                              {**EDM_CLASS_NAMES, FakeEDMLoss: "EDMLoss"}).dump(top)
        st = save_model(tmp_path / "ours.safetensors", model, cfg, provenance={"git_commit": "0" * 40})
    finally:
        for name in ("torch_utils", "torch_utils.persistence", CANARY_MODULE):
            sys.modules.pop(name, None)
    from pipelines.checkpoints import edm_pickle
    # both originals import (the mutants start from valid files)
    _install_fake_modules(marker)
    try:
        edm_pickle.load_edm_pickle(pkl)
        load_model(st)
    finally:
        for name in ("torch_utils", "torch_utils.persistence", CANARY_MODULE):
            sys.modules.pop(name, None)

    work = tmp_path / "work"
    work.mkdir()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(pkl.read_bytes(), st.read_bytes(), str(work), str(marker),
                                            str(pwned), child))
    t0 = time.monotonic()
    proc.start()
    child.close()
    budget = 30 + (N_PICKLE + N_NATIVE) * 0.5  # generous: a hang shows as the child never answering
    got = parent.recv() if parent.poll(budget) else None
    proc.join(30)
    wall = time.monotonic() - t0
    last = (work / "progress.txt").read_text() if (work / "progress.txt").exists() else "?"
    assert got is not None, f"the importer child died or hung (exit {proc.exitcode}) at {last}"
    results, maxrss_kb = got
    assert not marker.exists(), "a function named by a mutated file was called"
    assert not pwned.exists(), "a mutated file ran os.system"
    assert len(results) == N_PICKLE + N_NATIVE >= 2000
    bad = [r for r in results if r[3] != "model" and not r[3].startswith("usererror")]
    counts = {}
    for fmt, _, kind, outcome, *_ in results:
        key = (fmt, kind, outcome.split(":")[0])
        counts[key] = counts.get(key, 0) + 1
    slowest = max(results, key=lambda r: r[4])
    print(f"\n{len(results)} mutated files in {wall:.1f} s (child peak RSS {maxrss_kb / 1024:.0f} MB, "
          f"slowest {slowest[4]:.2f} s: {slowest[:3]})")
    for key in sorted(counts):
        print(f"  {key}: {counts[key]}")
    assert not bad, "imports that ended otherwise:\n" + "\n".join(map(str, bad[:25]))
    # A length-prefixed pickle argument or a tensor storage declaring more bytes than the file holds is refused
    # before anything is allocated at that size, so no import reaches the child's address-space cap (before the
    # checks, 27 of these mutants ended in a MemoryError there) and the resident peak stays small.
    capped = [r for r in results if "MemoryError" in r[3]]
    assert not capped, "imports that allocated a declared size first:\n" + "\n".join(map(str, capped[:10]))
    # A memo index beyond the entries stored is refused too: the C unpickler zero-fills a memo of twice the
    # index, so before that check a misparsed LONG_BINPUT took CI runs to a 4.7 GB peak below the cap.
    rises = sorted(((b[5] - a[5], b[:4]) for a, b in zip(results, results[1:])), reverse=True)[:5]
    assert maxrss_kb < PEAK_RSS_KB, (f"the importer child peaked at {maxrss_kb / 1024:.0f} MB; largest rises "
                                     "(kB, file): " + "; ".join(f"{d} {r}" for d, r in rises))
    # every kind of mutation was refused at least once (the test exercises what it claims)
    for fmt in ("pkl", "native"):
        assert any(r[0] == fmt and r[3].startswith("usererror") for r in results)
