"""The compiled kernel's build (flags probed one by one, a cache keyed by compiler, flags and CPU, failures with
their reason, the numpy-fallback notice), the runtime's thread control, and the kernel cross-compiled for ARM
and run under qemu-user, bit-identical to the reference."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgespike import kernels, parallel, reference
from edgespike.model import Conv, Neuron
from edgespike.png import encode_png
from edgespike.testing import dncnn_like

HERE = Path(__file__).parent
GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed")


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty kernel cache and a module that has not loaded a kernel yet (restored afterwards)."""
    monkeypatch.setenv("EDGESPIKE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGESPIKE_NO_KERNEL", raising=False)
    monkeypatch.delenv("EDGESPIKE_CFLAGS", raising=False)
    saved = (kernels._LIB, kernels._ERROR, kernels._TRIED, kernels._INFO, kernels._NOTIFIED)
    kernels._reset()
    yield tmp_path
    kernels._LIB, kernels._ERROR, kernels._TRIED, kernels._INFO, kernels._NOTIFIED = saved


def wrapper(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def no_native(path: Path, note: str = "") -> Path:
    """A gcc that refuses ``-march=native`` and ``-mcpu=native``, as a cross compiler does."""
    return wrapper(path, f"# {note}\nfor a in \"$@\"; do case \"$a\" in -march=native|-mcpu=native)\n"
                         "  echo \"cc1: error: unknown value 'native' for '${a%%=*}'\" >&2; exit 1;; esac; done\n"
                         f"exec {GCC} \"$@\"\n")


@needs_gcc
def test_compiler_rejecting_march_native_still_builds_with_openmp(fresh, monkeypatch):
    monkeypatch.setenv("CC", str(no_native(fresh / "cc")))
    monkeypatch.setenv("EDGESPIKE_CFLAGS", "-O0")  # the flags under test, not a fast kernel: a quick build
    lib = kernels.load()
    assert lib is not None, kernels.load_error()
    info = kernels.info()
    assert "-fopenmp" in info["flags"] and info["openmp"] and lib.kernel_openmp() == 1
    assert not {"-march=native", "-mcpu=native"} & set(info["flags"])
    assert "unknown value 'native'" in info["rejected"]["-march=native"]
    assert "-mcpu=native" in info["rejected"]


@needs_gcc
def test_changed_compiler_or_flags_rebuilds(fresh, monkeypatch):
    cc = no_native(fresh / "cc", "version 1")
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("EDGESPIKE_CFLAGS", "-O0")
    first = kernels.build()
    assert first.get("built") is True, first.get("error")
    again = kernels.build()
    assert again["path"] == first["path"] and again["built"] is False  # cached: nothing compiled
    no_native(cc, "version 2 (an upgraded compiler)")
    os.utime(cc, ns=(1, 1))  # a different identity even if the file system's clock is coarse
    other = kernels.build()
    assert other["path"] != first["path"] and other["built"] is True
    monkeypatch.setenv("EDGESPIKE_CFLAGS", "-O0 -fno-tree-vectorize")
    flags = kernels.build()
    assert flags["path"] not in (first["path"], other["path"]) and flags["built"] is True
    assert "-fno-tree-vectorize" in flags["flags"]
    assert len(list((fresh / "cache").glob("kernel-*.so"))) == 3


def test_cache_key_covers_compiler_version_flags_and_cpu(fresh, monkeypatch):
    monkeypatch.setattr(kernels, "compiler", lambda: ["cc"])
    monkeypatch.setattr(kernels, "_identity", lambda cmd: "cc=/usr/bin/cc:1:1")
    probe = {"version": "cc 12", "flags": ["-march=native", "-fopenmp"], "rejected": {}}
    monkeypatch.setattr(kernels, "probe_flags", lambda cmd: dict(probe))
    base = kernels.plan()["path"]
    assert kernels.plan()["path"] == base
    monkeypatch.setattr(kernels, "cpu_id", lambda: "aarch64\nCPU part: 0xd08")
    cpu = kernels.plan()["path"]
    assert cpu != base
    monkeypatch.setattr(kernels, "_identity", lambda cmd: "cc=/usr/bin/cc:1:2")
    probe["version"] = "cc 13"
    assert kernels.plan()["path"] not in (base, cpu)


def test_compiler_failure_keeps_the_reason(fresh, monkeypatch):
    cc = wrapper(fresh / "cc", "echo 'kernel.c:1: error: the compiler is broken here' >&2\nexit 1\n")
    monkeypatch.setenv("CC", str(cc))
    assert kernels.load() is None
    assert "the compiler is broken here" in kernels.load_error()
    assert kernels.load_error() in kernels.fallback_notice()


def test_no_compiler_warns_and_runs_the_numpy_fallback(fresh, monkeypatch):
    from edgespike.runtime import Runtime

    monkeypatch.setenv("CC", str(fresh / "no-such-cc"))
    model = dncnn_like(3, 8, 2, 0)
    with pytest.warns(RuntimeWarning, match="numpy fallback.*slower") as rec:
        rt = Runtime(model)
    assert "no-such-cc" in str(rec[0].message)
    assert rt.backend == "numpy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Runtime(model)  # once per process, not per runtime


def test_cli_says_in_one_line_that_the_fallback_runs(tmp_path):
    img = tmp_path / "in.png"
    img.write_bytes(encode_png(np.random.default_rng(0).integers(0, 256, (24, 24), dtype=np.uint8)))
    env = dict(os.environ, CC=str(tmp_path / "no-such-cc"), EDGESPIKE_CACHE=str(tmp_path / "cache"))
    env.pop("EDGESPIKE_NO_KERNEL", None)
    r = subprocess.run([sys.executable, "-m", "edgespike.cli", "denoise", str(img), "-o", str(tmp_path / "o.png"),
                        "-q", "--model", "if-s25"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "numpy fallback" in lines[0] and "no-such-cc" in lines[0], r.stderr
    assert "Warning" not in r.stderr


def test_cli_refuses_a_bad_thread_count(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgespike.cli", "denoise", str(tmp_path / "x.png"), "--threads", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "at least 1" in r.stderr


def test_thread_setting(monkeypatch):
    monkeypatch.setenv("EDGESPIKE_THREADS", "3")
    assert parallel.resolve() == 3 and parallel.resolve(2) == 2
    monkeypatch.setenv("EDGESPIKE_THREADS", "two")
    with pytest.raises(ValueError, match="EDGESPIKE_THREADS"):
        parallel.resolve()
    with pytest.raises(ValueError):
        parallel.resolve(0)
    monkeypatch.delenv("EDGESPIKE_THREADS")
    assert 1 <= parallel.resolve() <= parallel.MAX_DEFAULT
    with parallel.limits(5, 1):
        assert parallel.kernel_threads() == 5 and kernels.threads(kernels.MIN_PARALLEL) == 5
        assert kernels.threads(10) == 1
    assert parallel.kernel_threads() == parallel.resolve()


@pytest.mark.skipif(parallel.blas_control() is None, reason="numpy's BLAS offers no thread control here")
def test_blas_is_limited_while_a_frame_runs_and_restored(monkeypatch):
    from edgespike.runtime import Runtime

    kind, ctl = parallel._blas()
    get = (lambda: ctl.info()[0]["num_threads"]) if kind == "threadpoolctl" else ctl.get
    old = get()
    if kind == "openblas":
        ctl.set(2)  # start from 2 threads, so that both the limit and its undoing show
    try:
        before = get()
        seen = []
        rt = Runtime(dncnn_like(3, 8, 2, 0), threads=2)
        orig = rt._strip

        def spy(*a, **k):
            seen.append((get(), parallel.kernel_threads()))
            return orig(*a, **k)

        monkeypatch.setattr(rt, "_strip", spy)
        rt.denoise(np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8))
        assert seen and all(s == (1, 2) for s in seen)
        assert get() == before
    finally:
        if kind == "openblas":
            ctl.set(old)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_thread_counts_give_identical_frames(backend):
    if backend == "c" and kernels.load() is None:
        pytest.skip(f"no compiled kernel: {kernels.load_error()}")
    from edgespike.runtime import Runtime

    model = dncnn_like(4, 16, 3, 1)
    f = np.random.default_rng(1).integers(0, 256, (67, 90), dtype=np.uint8)
    want = reference.run(model, f)
    for n in (1, 2, 3):
        assert np.array_equal(Runtime(model, backend=backend, threads=n).denoise(f)[0], want), n


# ------------------------------------------------------------------------------------------ ARM under qemu


def _cases():
    """Kernel calls covering the int16 and int32 tables, blocks of 64 pixels and a tail, stride 2 with a 5x5
    kernel, a constant (direct-coded) input, LIF with hard reset, and bit-plane decoding with empty planes."""
    rng = np.random.default_rng(7)
    out = []
    # (L, const, h, w, cin, cout, k, stride, wmax, neuron kwargs or None for uwd)
    specs = [(4, False, 13, 70, 16, 32, 3, 1, 3, {"reset": "soft", "leak_shift": 0}),
             (3, True, 11, 17, 32, 24, 5, 2, 127, {"reset": "hard", "leak_shift": 2}),
             (8, False, 9, 20, 8, 16, 3, 1, 20, None)]
    for L, const, h, w, cin, cout, k, st, wmax, nk in specs:
        x = (rng.random((1 if const else L, h, w, cin)) < 0.3).astype(np.uint8)
        if nk is None:
            x[[1, 4]] = 0  # empty planes take the kernel's shortcut
        weight = rng.integers(-wmax, wmax + 1, (cout, cin, k, k)).astype(np.int8)
        bias = rng.integers(-40, 41, cout).astype(np.int32)
        conv = Conv("c", "input", weight, bias, stride=st)
        theta = rng.integers(20, 200, cout).astype(np.int32)
        neuron = None if nk is None else Neuron("n", "c", theta, **nk)
        out.append((L, const, x, conv, neuron, theta if neuron else np.ones(cout, np.int32)))
    return out


def _reference(L, const, x, conv, neuron, theta):
    """Currents from edgespike.reference.conv2d, neurons from its IF/LIF update (or the UWD decoding)."""
    cur = [reference.conv2d(x[0 if const else t].transpose(2, 0, 1), conv.weight, conv.stride)
           + conv.bias.astype(np.int64)[:, None, None] for t in range(L)]
    if neuron is None:
        v = np.zeros_like(cur[0])
        for c in cur:
            v = 2 * v + c
        spikes = None
    else:
        res = reference._if_neuron(neuron, cur, L, lambda *a: None)
        v = res.pop()
        spikes = np.stack(res).transpose(0, 2, 3, 1).astype(np.uint8)
    return v.transpose(1, 2, 0), spikes


def _pack(cases) -> bytes:
    """The case file of tests/data/kernel_driver.c, laid out as kernels.conv_neuron passes its arguments."""
    blob = [struct.pack("<i", len(cases))]
    for L, const, x, conv, neuron, theta in cases:
        lut = kernels.build_lut(conv.weight)
        lanes = 16 if lut.dtype == np.int16 else 8
        cs = lut.shape[1] * 4
        xp = np.zeros(x.shape[:3] + (cs,), np.uint8)
        xp[..., :x.shape[3]] = x
        h, w = x.shape[1:3]
        ho, wo = -(-h // conv.stride), -(-w // conv.stride)
        hd = [L, int(const), h, w, cs, conv.kernel, conv.stride, conv.out_channels, lut.shape[3] // lanes,
              int(lanes == 16), neuron.leak_shift if neuron else 0, int(neuron is not None and neuron.reset == "hard"),
              int(neuron is None), 2, 1, ho - 1, lut.nbytes]
        blob += [struct.pack("<17i", *hd), xp.tobytes(), lut.tobytes(), conv.bias.astype("<i4").tobytes(),
                 theta.astype("<i4").tobytes(), np.zeros((ho, wo, conv.out_channels), "<i4").tobytes()]
    return b"".join(blob)


def _unpack(data: bytes, cases):
    res, pos = [], 0
    for L, _const, x, conv, _neuron, _theta in cases:
        h, w = x.shape[1:3]
        ho, wo, co = -(-h // conv.stride), -(-w // conv.stride), conv.out_channels
        n = ho * wo * co
        v = np.frombuffer(data, "<i4", n, pos).reshape(ho, wo, co)
        pos += 4 * n
        spk = np.frombuffer(data, np.uint8, L * n, pos).reshape(L, ho, wo, co)
        pos += L * n
        counts = np.frombuffer(data, "<i8", L, pos)
        pos += 8 * L
        res.append((v, spk, counts))
    assert pos == len(data)
    return res


def _check(results, cases):
    for (v, spk, counts), case in zip(results, cases, strict=True):
        want_v, want_s = _reference(*case)
        assert np.array_equal(v, want_v)
        if want_s is not None:
            assert np.array_equal(spk, want_s)
            assert np.array_equal(counts, want_s[:, 1:-1].reshape(len(counts), -1).sum(axis=1))


def test_host_kernel_matches_the_reference_on_the_cross_cases():
    lib = kernels.load()
    if lib is None:
        pytest.skip(f"no compiled kernel: {kernels.load_error()}")
    cases = _cases()
    results = []
    for L, const, x, conv, neuron, theta in cases:
        xs = np.broadcast_to(x, (L,) + x.shape[1:]) if const else x
        ho, wo = -(-x.shape[1] // conv.stride), -(-x.shape[2] // conv.stride)
        v = np.zeros((ho, wo, conv.out_channels), np.int32)
        spk, counts = kernels.conv_neuron(lib, xs, kernels.build_lut(conv.weight), conv, neuron, v, theta,
                                          rows=(1, ho - 1))
        results.append((v, spk, counts))
    _check(results, cases)


TARGETS = {
    # name: (cross compiler, flags for the board's CPU, qemu-user, target library root). One build per target: the
    # -O3 build of the kernel takes 20-50 s (-mcpu=cortex-a76, the Pi 5, passed the same test; left out for time).
    # armhf runs where its cross compiler is installed (CI installs only the aarch64 one).
    "aarch64-cortex-a72": ("aarch64-linux-gnu-gcc", ["-mcpu=cortex-a72"], "qemu-aarch64", "/usr/aarch64-linux-gnu"),
    "armhf-cortex-a72": ("arm-linux-gnueabihf-gcc", ["-mcpu=cortex-a72", "-mfpu=neon-fp-armv8", "-mfloat-abi=hard"],
                         "qemu-arm", "/usr/arm-linux-gnueabihf"),
}
APT = {"aarch64": "gcc-aarch64-linux-gnu qemu-user", "armhf": "gcc-arm-linux-gnueabihf qemu-user"}


@pytest.mark.parametrize("target", list(TARGETS))
def test_cross_compiled_kernel_runs_bit_identical_under_qemu(target, tmp_path):
    cc, cpu, qemu, root = TARGETS[target]
    missing = [t for t in (cc, qemu) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install {APT[target.split('-')[0]]})")
    exe = tmp_path / "driver"
    # The flags the build would probe for an ARM board, with its CPU named (a cross compiler has no "native")
    ok, why = kernels.compile_kernel([cc], ["-O3", *cpu, "-fopenmp"], exe, sources=(HERE / "data" / "kernel_driver.c",))
    assert ok, why
    cases = _cases()
    (tmp_path / "cases.bin").write_bytes(_pack(cases))
    r = subprocess.run([qemu, "-L", root, str(exe), str(tmp_path / "cases.bin"), str(tmp_path / "out.bin")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    _check(_unpack((tmp_path / "out.bin").read_bytes(), cases), cases)
