"""The fast, bit-exact CPU runtime: layer-major, row-strip tiled, exact float32 BLAS where proved safe.

:class:`Runtime` executes a :class:`~edgespike.model.Model` with results identical, bit for bit, to
:func:`edgespike.reference.run` (the tests check this on random models of every node kind). It is fast because:

* **Layer-major execution.** Each node processes all ``T`` steps of a strip at once: a convolution is a few GEMMs
  with the ``T`` steps stacked into the rows, a neuron layer is one vectorised update per step over the strip.
  Valid because a model is feed-forward within a step (``docs/SEMANTICS.md`` section 2).
* **Work done once.** With direct coding the input is the same at every step, so a convolution of a constant is
  computed once (T-1 convolutions saved). A convolution read only by Integrators is linear and non-spiking: it is
  applied once to the *sum over steps* of its input (spike counts) plus ``T * bias``.
* **Exact floating point.** A GEMM runs in float32 only when the worst-case absolute partial sum, proved from
  :func:`edgespike.validate.analyse`'s input intervals, is below ``2**24``; float64 below ``2**53``; int64
  otherwise. No Winograd or FFT (not exact).
* **Row strips with a halo.** The frame is processed in horizontal strips (aligned to ``model.size_multiple``)
  extended by a receptive-field halo; only the strip's core rows are kept, so results equal a whole-frame run and
  peak memory is bounded (a 1920x1080 frame runs in well under 1 GiB).
* **Optional compiled kernel** (:mod:`edgespike.kernels`): a binary-input convolution fused with the neuron update
  that follows it, using per-4-channel lookup tables of weight sums (no multiplications, exact int32). It is
  compiled with the system C compiler on first use and selected automatically; the numpy path is the fallback
  (``backend="numpy"``) and is tested against the same reference.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from edgespike import parallel
from edgespike.frames import check_frame, pad_to_multiple
from edgespike.model import (
    INPUT,
    SPIKING,
    Add,
    BitPlaneNeuron,
    Conv,
    ConvTranspose,
    Integrator,
    Model,
    ModelError,
    Neuron,
)
from edgespike.reference import lowbias32
from edgespike.validate import analyse

F32_EXACT = 2**24
F64_EXACT = 2**53
DEFAULT_STRIP_BYTES = 384 * 2**20
"""Working-set budget of one strip (the estimate is conservative; see :meth:`Runtime._strip_rows`)."""


@dataclass
class Stats:
    """What one :meth:`Runtime.denoise` call did.

    Attributes
    ----------
    spikes : dict[str, numpy.ndarray]
        Spikes emitted per neuron node per step (int64, length ``steps``; the MPRN extra step last). Equal to the
        reference's ``Trace.spikes``.
    neurons : dict[str, int]
        Number of neurons of each neuron node (channels x height x width on the padded frame).
    steps : int
        ``T``, plus one with an MPRN extra step.
    synops : int
        Synaptic operations of the convolutions fed by binary spikes: per input spike event, ``ceil(k/s)**2 *
        C_out`` for a Conv and ``k**2 * C_out`` for a ConvTranspose (the accumulates an event-driven core does).
    macs : int
        Multiply-accumulates of convolutions fed by non-binary values (e.g. the direct-coded first layer), counted
        as computed: once for a constant input, per step otherwise; read-out convolutions on spike counts once.
    node_seconds : dict[str, float]
        Wall time per node summed over strips.
    total_seconds : float
        Wall time of the whole call (padding, encoding, decoding included).
    backend : str
        ``"c"`` when the compiled kernel ran, else ``"numpy"``.
    member : str or None
        Set by a model set's runtime (:class:`edgespike.modelset.SetRuntime`): the name of the member that ran.
        ``None`` for a single network.
    sigma_estimate : float or None
        The frame's estimated noise level that chose the member (a model set only).
    """

    spikes: dict[str, np.ndarray] = field(default_factory=dict)
    neurons: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    synops: int = 0
    macs: int = 0
    node_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    backend: str = "numpy"
    member: str | None = None
    sigma_estimate: float | None = None

    @property
    def total_spikes(self) -> int:
        return int(sum(int(s.sum()) for s in self.spikes.values()))

    @property
    def spike_rate(self) -> float:
        """Spikes per neuron per timestep over the whole network (extra step included in ``steps``)."""
        n = sum(self.neurons.values()) * self.steps
        return self.total_spikes / n if n else 0.0

    @property
    def synaptic_ops(self) -> int:
        """Alias of :attr:`synops` (the name the eval and live reports use)."""
        return self.synops

    @property
    def seconds(self) -> float:
        """Alias of :attr:`total_seconds`."""
        return self.total_seconds

    def rates(self) -> dict[str, float]:
        """Spikes per neuron per timestep of each neuron node."""
        return {k: float(self.spikes[k].sum()) / (self.neurons[k] * self.steps) if self.neurons[k] else 0.0
                for k in self.spikes}


@dataclass
class _Val:
    """The value of a node over the steps of one pass, channels last: ``[L, h, w, C]``.

    ``const``: one slice ``[1, h, w, C]`` stands for every step. ``summed``: the array holds the sum over the
    pass's steps (only Integrators read such values). ``binary``: values are 0/1 (uint8). ``weighted``: the
    array ``[1, h, w, C]`` holds the binary-weighted sum ``sum_t 2**(T-1-t) value[t]`` (what a bit-plane layer or
    a ``uwd`` Integrator decodes); with ``planes`` as well, those are 0/1 values, the bits of the array MSB first
    (a bit-plane layer's spikes, or the ``uwe``-coded pixel).
    """

    arr: np.ndarray
    const: bool = False
    summed: bool = False
    binary: bool = False
    pooled: bool = False  # the array is a runtime buffer: give it back after its last read
    weighted: bool = False
    planes: bool = False
    rate: float | None = None  # planes: spikes per neuron per step, when the layer that made them counted them


def _lv(rows: int, level: int) -> int:
    """``rows`` level-0 rows expressed at ``level`` (levels below 0 are up-sampled maps)."""
    return rows >> level if level >= 0 else rows << -level


def _decodes_planes(node) -> bool:
    """Nodes that read their input only as its binary-weighted sum over the steps (the UWD)."""
    return isinstance(node, BitPlaneNeuron) or (isinstance(node, Integrator) and node.uwd)


def _gemm_dtype(bound: int):
    if bound < F32_EXACT:
        return np.float32
    if bound < F64_EXACT:
        return np.float64
    return np.int64


def _abs_partial_bound(weight: np.ndarray, bias: np.ndarray | None, in_mag: list[int], scale: int = 1) -> int:
    """Largest |partial sum| any summation order can reach: sum |w| * max|x| per output channel (+ |bias|)."""
    w = np.abs(weight.astype(np.int64)).sum(axis=(2, 3))  # [Cout, Cin]
    tot = [sum(int(w[o, c]) * int(in_mag[c]) * scale for c in range(w.shape[1])) for o in range(w.shape[0])]
    if bias is not None:
        tot = [t + abs(int(b)) * scale for t, b in zip(tot, bias, strict=True)]
    return max(tot) if tot else 0


class _ConvPlan:
    """Weights of one Conv/ConvTranspose prepared as per-tap matrices ``[k, k, C_in, C_out]``."""

    def __init__(self, node, info_in, T: int):
        self.node = node
        self.k = node.kernel
        self.stride = node.stride
        mag = [max(abs(a), abs(b)) for a, b in zip(info_in.value.lo, info_in.value.hi, strict=True)]
        mag_x = [max(abs(a), abs(b)) for a, b in zip(info_in.extra.lo, info_in.extra.hi, strict=True)]
        self.bound = _abs_partial_bound(node.weight, node.bias, mag)
        # Read-out form: applied once to the sum over T steps of the input, plus T * bias.
        self.bound_sum = _abs_partial_bound(node.weight, node.bias, mag, T)
        # Bit-plane form: applied once to the binary-weighted sum of the input, plus (2**T - 1) * bias.
        self.bound_weighted = _abs_partial_bound(node.weight, node.bias, mag, 2**T - 1)
        w_extra = getattr(node, "weight_extra", None)
        self.w_extra = w_extra
        self.bound_extra = _abs_partial_bound(node.weight if w_extra is None else w_extra, None, mag_x)
        self.taps = {}
        self.packed = None  # weights packed for kernels.conv_int (int16 pairs or int8 groups), on first use
        w = node.weight
        self.int8 = w.size == 0 or (-128 <= int(w.min()) and int(w.max()) <= 127)  # the u8 x s8 kernel's weights

    def taps_for(self, extra: bool, dtype) -> np.ndarray:
        key = (extra, np.dtype(dtype).str)
        if key not in self.taps:
            w = self.w_extra if (extra and self.w_extra is not None) else self.node.weight
            self.taps[key] = np.ascontiguousarray(w.transpose(2, 3, 1, 0).astype(dtype))
        return self.taps[key]


BITPLANE_PATHS = ("auto", "dense", "spikes")
SPIKE_PATH_MAX_RATE = 0.03
"""With ``bitplane_path="auto"``, a convolution into a bit-plane layer runs spike by spike when its input fires
less than this many spikes per neuron per step; otherwise dense (always dense where the layer runs in the u8
dot-product kernel, AVX-512 VNNI, which is faster at every rate). ``tools/bench/bitplane.py`` measured the 64-channel
3x3 layers of the default model at 640x480: the spike path took 0.089-0.107 s per layer for input rates from 0.12
to 0.35 (its per-plane, per-pixel overhead dominates, so its time falls slowly with the rate), the dense integer
kernel about 0.04 s (docs/BENCHMARKS.md). The spike path only pays for nearly silent inputs."""

SMALL_GEMM = 72
"""Below this many columns (k*k*C_out) or rows (k*k*C_in) of the weight matrix, one GEMM over all taps (with
shifted adds, or im2col) beats k*k thin GEMMs."""


IM2COL_BLOCK_BYTES = 2 * 2**20
"""Size of one block of im2col rows: the patch matrix of a whole layer (177 MB for a 64-channel 3x3 layer at
320x240) would be written to memory and read back; blocks this size stay in cache and are reused (no page
faults), and the blocks are what the runtime's threads share."""

_POOLS: dict[int, object] = {}
_LOCAL = threading.local()


def _pool(threads: int):
    from concurrent.futures import ThreadPoolExecutor

    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="edgespike-gemm")
    return pool


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's reusable scratch buffer of at least ``nbytes`` bytes."""
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _LOCAL.buf = np.empty(nbytes, np.uint8)
    return buf


def im2col_conv(xp: np.ndarray, taps: np.ndarray, stride: int, ho: int, wo: int, threads: int = 1,
                dilation: int = 1) -> np.ndarray:
    """Convolution of a zero-padded ``xp [L, hp, wp, C_in]`` as im2col GEMMs, a block of output rows at a time
    (taps ``dilation`` pixels apart).

    Each block gathers its ``k*k*C_in`` patch columns into a per-thread scratch buffer (the copy also casts to the
    taps' dtype) and multiplies it with the ``[k*k*C_in, C_out]`` weight matrix straight into the output. The
    blocks are spread over ``threads`` threads; every output row is computed by exactly one GEMM, so the result
    does not depend on the block size or the thread count.
    """
    k = taps.shape[0]
    L, cin, cout = xp.shape[0], xp.shape[3], taps.shape[3]
    dt = taps.dtype
    kkc = k * k * cin
    wmat = taps.reshape(kkc, cout)
    out = np.empty((L, ho, wo, cout), dt)
    rows = max(1, IM2COL_BLOCK_BYTES // (wo * kkc * dt.itemsize))
    blocks = [(step, r, min(r + rows, ho)) for step in range(L) for r in range(0, ho, rows)]

    def run(block):
        step, r0, r1 = block
        n = r1 - r0
        cols = _scratch(n * wo * kkc * dt.itemsize)[:n * wo * kkc * dt.itemsize].view(dt).reshape(n, wo, k, k, cin)
        for i in range(k):
            for j in range(k):
                a, b = dilation * i + stride * r0, dilation * j
                cols[:, :, i, j] = xp[step, a:a + stride * (n - 1) + 1:stride, b:b + stride * (wo - 1) + 1:stride]
        np.matmul(cols.reshape(n * wo, kkc), wmat, out=out[step, r0:r1].reshape(n * wo, cout))

    if threads > 1 and len(blocks) > 1:
        list(_pool(threads).map(run, blocks))
    else:
        for b in blocks:
            run(b)
    return out


def conv_nhwc(x: np.ndarray, taps: np.ndarray, stride: int, threads: int = 1, dilation: int = 1) -> np.ndarray:
    """Zero-padded "same" convolution of ``x [L, h, w, C_in]`` with ``taps [k, k, C_in, C_out]``, its taps
    ``dilation`` pixels apart (stride 1 then; padding ``dilation * (k // 2)``).

    Three exact GEMM forms, chosen by shape (no Winograd/FFT):

    * few outputs (read-out layers, ``k*k*C_out`` small): one GEMM against all taps at once, then the taps'
      columns are added at their shifts;
    * few inputs (the direct-coded first layer, ``k*k*C_in`` small) or a single step (a decoded bit-plane
      input): im2col, a block of output rows per GEMM (:func:`im2col_conv`), blocks spread over ``threads``;
    * otherwise one GEMM per tap on shifted row slices: the padded map is flattened and tap ``(i, j)`` is the
      slice shifted by ``d * (i * W_pad + j)``; outputs land on the padded grid and the pad rows/columns (which mix
      neighbouring rows and steps) are cropped. Stride 2 gathers each tap's strided window into one buffer.
    """
    k = taps.shape[0]
    d = dilation
    p = d * (k // 2)
    L, h, w, cin = x.shape
    cout = taps.shape[3]
    dt = taps.dtype
    hp, wp = h + 2 * p, w + 2 * p
    ho, wo = (hp - d * (k - 1) - 1) // stride + 1, (wp - d * (k - 1) - 1) // stride + 1
    if k == 1:
        xs = np.ascontiguousarray(x[:, ::stride, ::stride], dtype=dt)
        return (xs.reshape(-1, cin) @ taps[0, 0]).reshape(L, ho, wo, cout)
    if k * k * cout > SMALL_GEMM and (k * k * cin <= SMALL_GEMM or (stride == 1 and L == 1)):
        # im2col: one GEMM with k*k*C_in terms per output runs near the BLAS peak, where k*k GEMMs of C_in terms
        # each would write the output k*k times (a decoded bit-plane input is one step, L == 1). The padding stays
        # in the input's dtype (bytes for decoded planes); the gather casts.
        xp = np.zeros((L, hp, wp, cin), x.dtype)
        xp[:, p:p + h, p:p + w] = x
        return im2col_conv(xp, taps, stride, ho, wo, threads, d)
    xp = np.zeros((L, hp, wp, cin), dt)
    xp[:, p:p + h, p:p + w] = x
    if k * k * cout <= SMALL_GEMM:
        wall = np.ascontiguousarray(taps.transpose(2, 0, 1, 3).reshape(cin, k * k * cout))
        y = (xp.reshape(-1, cin) @ wall).reshape(L, hp, wp, k * k, cout)
        out = np.zeros((L, ho, wo, cout), dt)
        for i in range(k):
            for j in range(k):
                out += y[:, d * i:d * i + stride * ho:stride, d * j:d * j + stride * wo:stride, i * k + j]
        return out
    if stride == 1:
        n = L * hp * wp
        flat = xp.reshape(n, cin)
        out = np.zeros((n, cout), dt)
        tmp = np.empty((n, cout), dt)
        for i in range(k):
            for j in range(k):
                off = d * (i * wp + j)
                m = n - off
                np.matmul(flat[off:], taps[i, j], out=tmp[:m])
                out[:m] += tmp[:m]
        return out.reshape(L, hp, wp, cout)[:, :h, :w]
    out = np.zeros((L * ho * wo, cout), dt)
    tmp = np.empty_like(out)
    win = np.empty((L, ho, wo, cin), dt)
    for i in range(k):
        for j in range(k):
            np.copyto(win, xp[:, i:i + 2 * ho:2, j:j + 2 * wo:2])
            np.matmul(win.reshape(-1, cin), taps[i, j], out=tmp)
            out += tmp
    return out.reshape(L, ho, wo, cout)


def conv_transpose_nhwc(x: np.ndarray, taps: np.ndarray, padding: int) -> np.ndarray:
    """Stride-2 transposed convolution (semantics section 4): per tap one GEMM, scattered on a strided view."""
    k = taps.shape[0]
    L, h, w, cin = x.shape
    cout = taps.shape[3]
    dt = taps.dtype
    full = np.zeros((L, 2 * h + k + 2, 2 * w + k + 2, cout), dt)
    flat = np.ascontiguousarray(x, dtype=dt).reshape(-1, cin)
    if k * k * cout <= SMALL_GEMM:  # few outputs (a read-out): one GEMM against all taps, read the input once
        y = (flat @ np.ascontiguousarray(taps.transpose(2, 0, 1, 3).reshape(cin, k * k * cout)))
        y = y.reshape(L, h, w, k * k, cout)
        for i in range(k):
            for j in range(k):
                full[:, i:i + 2 * h:2, j:j + 2 * w:2] += y[:, :, :, i * k + j]
        return full[:, padding:padding + 2 * h, padding:padding + 2 * w]
    tmp = np.empty((flat.shape[0], cout), dt)
    for i in range(k):
        for j in range(k):
            np.matmul(flat, taps[i, j], out=tmp)
            full[:, i:i + 2 * h:2, j:j + 2 * w:2] += tmp.reshape(L, h, w, cout)
    return full[:, padding:padding + 2 * h, padding:padding + 2 * w]


_POP8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _popcount(a: np.ndarray) -> np.ndarray:
    """Number of 1-bits of each element of a non-negative integer array (below 2**16)."""
    if a.dtype == np.uint8:
        return _POP8[a]
    a = a.astype(np.uint16, copy=False)
    return _POP8[a & 0xFF] + _POP8[a >> 8]


def _unpack_planes(val: _Val, T: int) -> _Val:
    """The per-step spikes ``[T, h, w, C]`` (uint8 0/1, MSB first) of a bit-plane value."""
    q = val.arr[0]
    out = np.empty((T,) + q.shape, np.uint8)
    for t in range(T):
        np.bitwise_and(q >> (T - 1 - t), 1, out=out[t], casting="unsafe")
    return _Val(out, binary=True)


class Runtime:
    """A model prepared for fast repeated denoising.

    Parameters
    ----------
    model : Model
        Checked with :func:`edgespike.validate.analyse` (raises :class:`ModelError` if unusable).
    backend : {"auto", "c", "numpy"}
        ``"auto"`` uses the compiled kernel when it builds and loads, numpy otherwise; ``"c"`` raises if the
        kernel is unavailable.
    bitplane_path : {"auto", "dense", "spikes"}
        How a convolution into a bit-plane layer runs: ``"dense"`` decodes its input planes and runs one integer
        GEMM; ``"spikes"`` convolves plane by plane, each plane a binary input (the compiled lookup-table kernel,
        which skips input pixels without a spike and empty planes), and shifts the results together; ``"auto"``
        chooses per layer and strip from the number of spikes (:data:`SPIKE_PATH_MAX_RATE`). Same integers.
    strip_rows : int, optional
        Core rows per strip (rounded up to ``model.size_multiple``). Default: from ``max_strip_bytes``.
    max_strip_bytes : int
        Working-set budget per strip used to choose ``strip_rows``.
    threads : int, optional
        Threads for a frame: the compiled kernel runs this many; numpy's BLAS is limited to ``blas_threads``
        (attribute, default 1) while the frame runs. Default ``EDGESPIKE_THREADS``, else the usable CPUs (at most
        8). See :mod:`edgespike.parallel`.

    Examples
    --------
    >>> rt = Runtime(model)                      # doctest: +SKIP
    >>> out, stats = rt.denoise(frame)           # doctest: +SKIP
    """

    def __init__(self, model: Model, backend: str = "auto", strip_rows: int | None = None,
                 max_strip_bytes: int = DEFAULT_STRIP_BYTES, bitplane_path: str = "auto",
                 threads: int | None = None):
        if bitplane_path not in BITPLANE_PATHS:
            raise ValueError(f"bitplane_path must be one of {BITPLANE_PATHS}, got {bitplane_path!r}")
        self.bitplane_path = bitplane_path
        self.model = model
        self.analysis = analyse(model)
        self.T = model.timesteps
        self.steps = self.T + (1 if model.has_extra_step else 0)
        self.M = model.size_multiple
        self.max_strip_bytes = int(max_strip_bytes)
        self.strip_rows = None if strip_rows is None else max(self.M, -(-int(strip_rows) // self.M) * self.M)
        if backend not in ("auto", "c", "numpy"):
            raise ValueError(f"backend must be 'auto', 'c' or 'numpy', got {backend!r}")
        self.kernels = None
        if backend != "numpy":
            from edgespike import kernels

            self.kernels = kernels.load()
            if self.kernels is None and backend == "c":
                raise ModelError(f"the compiled kernel is unavailable: {kernels.load_error()}")
            if self.kernels is None:
                kernels.warn_fallback()
        self.backend = "c" if self.kernels is not None else "numpy"
        self.threads = parallel.resolve(threads)
        # BLAS gets one thread: its GEMMs here are skinny (64 or fewer output columns), which a second OpenBLAS
        # thread slowed 1.1-4x (docs/BENCHMARKS.md, "Threads"), and its busy-waiting workers take the kernel's
        # cores (edgespike.parallel).
        self.blas_threads = 1
        if self.kernels is not None:
            parallel.check_wait_policy(self.threads)

        infos = self.analysis.nodes
        self.consumers: dict[str, list] = {INPUT: []}
        for node in model.nodes:
            self.consumers[node.name] = []
            for i in node.inputs:
                self.consumers[i].append(node)
        decoder_nodes = {t.node for t in model.decoder.terms}
        self.last_use: dict[str, int] = {}
        for idx, node in enumerate(model.nodes):
            for i in node.inputs:
                self.last_use[i] = idx
        self.plans: dict[str, _ConvPlan] = {}
        self.summed: set[str] = set()
        self.fused: dict[str, str] = {}  # conv name -> neuron name, run by the compiled kernel
        # Convolutions read only by bit-plane layers or uwd Integrators run once on the decoded (binary-weighted)
        # input: sum_t 2**(T-1-t) conv(x[t]) = conv(sum_t 2**(T-1-t) x[t]) (linearity; exact in integers).
        self.weighted: set[str] = set()
        for node in model.nodes:
            if isinstance(node, (Conv, ConvTranspose)):
                self.plans[node.name] = _ConvPlan(node, infos[node.input], self.T)
                cons = self.consumers[node.name]
                plain = all(isinstance(c, Integrator) and not c.uwd for c in cons)
                if cons and plain and node.name not in decoder_nodes:
                    self.summed.add(node.name)
                if cons and all(_decodes_planes(c) for c in cons):
                    self.weighted.add(node.name)
        # A convolution whose only reader is a bit-plane layer can hand the layer its quantised output directly
        # (the integer kernel quantises each row while it is in cache), unless the membranes are read out.
        self.quantised_by: dict[str, BitPlaneNeuron] = {}
        if self.kernels is not None:
            from edgespike import kernels

            for node in model.nodes:
                cons = self.consumers[node.name]
                # (the lookup-table kernel reads its taps as neighbours: a dilated conv runs unfused)
                if (isinstance(node, Conv) and node.dilation == 1 and infos[node.input].binary and len(cons) == 1
                        and isinstance(cons[0], Neuron) and kernels.fits(node, infos[cons[0].name])):
                    self.fused[node.name] = cons[0].name
        self.need_count = {t.node for t in model.decoder.terms if t.quantity == "count"}
        self.need_uwd = {t.node for t in model.decoder.terms if t.quantity == "uwd"}
        # Membranes needed after their layer's pass: read by the decoder, or carried into the MPRN extra step.
        # The others are released as soon as the layer has run all its steps (layer-major execution).
        self.keep_v = {n.name for n in model.nodes if isinstance(n, Neuron)} if model.has_extra_step else {
            t.node for t in model.decoder.terms if t.quantity == "membrane"}
        self.halo = self._halo()
        for name in self.weighted:
            cons = self.consumers[name]
            if (len(cons) == 1 and isinstance(cons[0], BitPlaneNeuron) and cons[0].name not in self.keep_v
                    and name not in decoder_nodes):
                self.quantised_by[name] = cons[0]
        self._lut_cache: dict = {}
        self._fast: tuple[bool, bool] | None = None  # kernels.s16_fast and u8_fast, asked once
        # Free lists of buffers by (shape, dtype), reused across layers, strips and frames (spikes and membranes
        # of kernel-run layers): allocating tens of MiB per layer costs page faults. A buffer returns to its list
        # when the value it holds has been read for the last time, so the working set stays a few layers.
        self._free: dict = {}
        self._strip_shape = None

    def _buffer(self, shape, dtype) -> np.ndarray:
        lst = self._free.get((tuple(shape), np.dtype(dtype).str))
        return lst.pop() if lst else np.empty(shape, dtype)

    def _release(self, arr: np.ndarray) -> None:
        self._free.setdefault((arr.shape, arr.dtype.str), []).append(arr)

    # ------------------------------------------------------------------ planning
    def _halo(self) -> int:
        """Rows (level 0) at a strip's cut whose values can differ from a whole-frame run, rounded up to ``M``.

        A cut acts like zero padding; the error spreads ``dilation * (k // 2)`` pixels per convolution at that node's
        resolution (``k // 2 + 1`` input pixels for a transposed one, plus one output pixel of rounding at a
        stride-2 step). Spikes and the decoder are per pixel and do not spread it.
        """
        infos = self.analysis.nodes
        d = {INPUT: 0.0}
        worst = 0.0
        for node in self.model.nodes:
            din = max(d[i] for i in node.inputs)
            if isinstance(node, Conv):
                lvl = infos[node.input].level
                din += node.dilation * (node.kernel // 2) * 2.0**lvl
                if node.stride == 2:
                    g = 2.0 ** (lvl + 1)
                    din = -(-din // g) * g + g
            elif isinstance(node, ConvTranspose):
                lvl = infos[node.input].level
                din += (node.kernel // 2 + 1) * 2.0**lvl
            d[node.name] = din
            worst = max(worst, din)
        return int(-(-int(np.ceil(worst)) // self.M) * self.M)

    def _bytes_per_row(self, width: int) -> int:
        """Working set per level-0 row of a strip, from each node's execution path (kernel, GEMM form, dtype).

        Peak ~ the largest node's temporaries plus the values alive at the same time (about two layers) plus
        the state kept for the whole strip (membranes, counts).
        """
        infos = self.analysis.nodes
        T = self.T
        const = {INPUT: self.model.encoder.kind == "direct"}
        state = 0.0
        peak = 0.0
        value = 0.0
        for node in self.model.nodes:
            info = infos[node.name]
            px = width * 4.0 ** (-info.level)  # pixels of this node per level-0 row
            C = info.channels
            ins = [infos[i] for i in node.inputs]
            const[node.name] = (not isinstance(node, SPIKING)) and all(const[i] for i in node.inputs)
            L = 1 if const[node.name] or node.name in self.summed or node.name in self.weighted else T
            if isinstance(node, BitPlaneNeuron):  # decoded membranes in, one byte of bits per neuron out
                state += px * C * 8 * (node.name in self.keep_v or node.name in self.need_uwd)
                work = px * C * 9
                value = max(value, px * C)
            elif isinstance(node, Neuron):
                keep = node.name in self.keep_v
                state += px * C * (4 * keep + 4 * (node.name in self.need_count) + 8 * (node.name in self.need_uwd))
                l_in = 0 if node.input in self.fused else 1 if const[node.input] else T
                work = px * C * (T + 4 * l_in + 4 * (not keep))  # spikes, an int32 copy of the currents, membrane
                value = max(value, px * C * T)
            elif isinstance(node, Integrator):
                state += px * C * 8
                work = px * C * T * 8
            elif isinstance(node, (Conv, ConvTranspose)):
                cin = ins[0].channels
                px_in = width * 4.0 ** (-ins[0].level)
                kk = node.kernel ** 2
                if node.name in self.fused:
                    work = px_in * T * cin / 4 + px * T * C  # nibble indices + spikes out
                elif isinstance(node, ConvTranspose):  # input copy, one tap's product, the scattered output
                    isz = np.dtype(_gemm_dtype(self.plans[node.name].bound)).itemsize
                    work = L * isz * (px_in * cin + px_in * C + px * C)
                    value = max(value, L * isz * C * px)
                else:
                    isz = np.dtype(_gemm_dtype(self.plans[node.name].bound)).itemsize
                    if kk * C <= SMALL_GEMM:
                        cols = kk * C * px_in
                    elif kk * cin <= SMALL_GEMM or node.name in self.weighted:
                        cols = 0  # im2col in blocks of IM2COL_BLOCK_BYTES per thread, whatever the strip
                    else:
                        cols = 2 * C * px
                    work = L * isz * (2 * px_in * cin + cols + C * px)
                    value = max(value, L * isz * C * px)
            else:
                work = px * C * T * 8
                value = max(value, px * C * T * 8)
            peak = max(peak, work)
        return int(peak + 2 * value + state) + 1

    def _strip_rows(self, H: int, W: int) -> int:
        """Output rows per strip: as many as the working-set budget allows, but never fewer than twice the halo.

        Each strip recomputes ``2 * halo`` rows; below ``2 * halo`` output rows that recomputation would cost more
        than the strip itself (a three-level encoder-decoder has a 72-row halo: 8-row strips made it 19x slower
        than a whole-frame run), so such a model runs over the budget instead.
        """
        if self.strip_rows is not None:
            return self.strip_rows
        rows = self.max_strip_bytes // self._bytes_per_row(W) - 2 * self.halo
        rows = max(rows, 2 * self.halo)
        rows = max(self.M, -(-rows // self.M) * self.M)
        return min(rows, H)

    # ------------------------------------------------------------------ running
    def denoise(self, frame: np.ndarray) -> tuple[np.ndarray, Stats]:
        """Denoise one uint8 grayscale frame; returns the output (same size, uint8) and :class:`Stats`."""
        t0 = time.perf_counter()
        frame = check_frame(frame)
        H, W = frame.shape
        x = pad_to_multiple(frame, self.M)
        Hp, Wp = x.shape
        stats = Stats(steps=self.steps, backend=self.backend)
        for node in self.model.nodes:
            stats.node_seconds[node.name] = 0.0
            if isinstance(node, SPIKING):
                stats.spikes[node.name] = np.zeros(self.steps, np.int64)
                info = self.analysis.nodes[node.name]
                stats.neurons[node.name] = info.channels * _lv(Hp, info.level) * _lv(Wp, info.level)
        out = np.empty((Hp, Wp), np.uint8)
        rows = self._strip_rows(Hp, Wp)
        with parallel.limits(self.threads, self.blas_threads):
            for r0 in range(0, Hp, rows):
                r1 = min(Hp, r0 + rows)
                a0, b0 = max(0, r0 - self.halo), min(Hp, r1 + self.halo)
                if (b0 - a0, Wp) != self._strip_shape:  # buffers of another strip size would only sit in memory
                    self._free.clear()
                    self._strip_shape = (b0 - a0, Wp)
                out[r0:r1] = self._strip(x, a0, b0, r0 - a0, r1 - a0, stats)
        stats.total_seconds = time.perf_counter() - t0
        return out[:H, :W], stats

    def _encode(self, x: np.ndarray, a0: int, b0: int, t0: int, L: int) -> _Val:
        """Value of node ``input`` on rows ``a0:b0`` of the padded frame for steps ``t0 .. t0+L-1``."""
        rows = x[a0:b0]
        kind = self.model.encoder.kind
        if t0 >= self.T:
            return _Val(np.zeros((1,) + rows.shape + (1,), np.uint8), const=True, binary=True)
        if kind == "direct":
            return _Val(rows[None, :, :, None], const=True, binary=False)
        if kind == "uwe":  # the pixel's bits MSB first: T = 8 steps whose binary-weighted sum is the pixel
            return _Val(rows[None, :, :, None], binary=True, weighted=True, planes=True)
        out = np.empty((L,) + rows.shape + (1,), np.uint8)
        if True:
            Hp, Wp = x.shape
            base = (np.arange(a0, b0, dtype=np.uint64)[:, None] * np.uint64(Wp)
                    + np.arange(Wp, dtype=np.uint64)[None, :])
            for i in range(L):
                idx = (np.uint64(t0 + i) * np.uint64(Hp) * np.uint64(Wp) + base) & np.uint64(0xFFFFFFFF)
                r = lowbias32(idx.astype(np.uint32) ^ np.uint32(self.model.encoder.seed))
                out[i, ..., 0] = (r >> np.uint32(24)) < rows
        return _Val(out, binary=True)

    def _strip(self, x, a0, b0, c0, c1, stats: Stats) -> np.ndarray:
        """Run the model on padded rows ``a0:b0``; return the output of core rows ``c0:c1`` (strip-relative)."""
        state: dict[str, dict] = {}
        self._pass(x, a0, b0, c0, c1, 0, self.T, state, stats)
        if self.steps > self.T:
            self._pass(x, a0, b0, c0, c1, self.T, 1, state, stats)
        out = self._decode(x[a0:b0][c0:c1], state, c0, c1)
        for st in state.values():
            if "theta" in st and "v" in st:  # a neuron's membrane buffer
                self._release(st["v"])
        return out

    def _pass(self, x, a0, b0, c0, c1, t0, L, state, stats: Stats) -> None:
        extra = t0 >= self.T
        infos = self.analysis.nodes
        self._core_events: dict[str, int] = {}  # spikes of each neuron in the strip's core rows, this pass
        vals: dict[str, _Val] = {INPUT: self._encode(x, a0, b0, t0, L)}
        done: set[str] = set()
        for idx, node in enumerate(self.model.nodes):
            if node.name in done:
                continue
            tic = time.perf_counter()
            name = node.name
            lvl = infos[name].level
            if not (_decodes_planes(node) or name in self.weighted):
                for i in node.inputs:  # this node reads the steps one by one: unpack bit planes
                    if vals[i].planes:
                        vals[i] = _unpack_planes(vals[i], self.T)
            if isinstance(node, (Conv, ConvTranspose)) and name in self.weighted:
                src = vals[node.input]
                self._count_ops(node, src, L, stats, c0, c1)
                bp = self.quantised_by.get(name)
                if bp is not None and self._integer_conv(node, src) and not self._spike_path(node, src):
                    blvl = infos[bp.name].level
                    vals[bp.name] = self._conv_bitplane(node, bp, src, state, stats, _lv(c0, blvl), _lv(c1, blvl))
                    done.add(bp.name)
                else:
                    vals[name] = self._conv_weighted(node, src)
            elif isinstance(node, BitPlaneNeuron):
                vals[name] = self._bitplane(node, vals[node.input], state, stats, _lv(c0, lvl), _lv(c1, lvl))
            elif isinstance(node, Integrator) and node.uwd:
                st = state.setdefault(name, {})
                st["v"] = self._weighted_sum(vals[node.input])
                vals[name] = _Val(np.zeros((1,) + st["v"].shape, np.uint8), const=True, binary=True)
            elif isinstance(node, (Conv, ConvTranspose)):
                src = vals[node.input]
                self._count_ops(node, src, L, stats, c0, c1)
                if name in self.fused and not extra:
                    neuron = self.model.node(self.fused[name])
                    vals[neuron.name] = self._fused(node, neuron, src, L, state, stats, _lv(c0, lvl), _lv(c1, lvl))
                    done.add(neuron.name)
                else:
                    vals[name] = self._conv(node, src, L, extra)
            elif isinstance(node, Neuron):
                vals[name] = self._neuron(node, vals[node.input], L, t0, state, stats, _lv(c0, lvl), _lv(c1, lvl))
            elif isinstance(node, Integrator):
                src = vals[node.input]
                a = src.arr
                if src.const:
                    s = a[0].astype(np.int64) * L
                elif src.summed:
                    s = a[0].astype(np.int64)
                else:
                    s = a.sum(axis=0, dtype=np.int64)
                st = state.setdefault(name, {})
                st["v"] = st["v"] + s if "v" in st else s
                vals[name] = _Val(np.zeros((1,) + a.shape[1:], np.uint8), const=True, binary=True)
            elif isinstance(node, Add):
                ins = [vals[i] for i in node.inputs]
                const = all(v.const for v in ins)
                acc = None
                for v in ins:
                    a = v.arr.astype(np.int64)
                    acc = a if acc is None else acc + a
                vals[name] = _Val(acc, const=const)
            else:  # Concat
                ins = [vals[i] for i in node.inputs]
                const = all(v.const for v in ins)
                arrs = [v.arr if (const or not v.const) else np.broadcast_to(v.arr, (L,) + v.arr.shape[1:])
                        for v in ins]
                binary = all(v.binary for v in ins)
                dt = np.uint8 if binary else np.int64
                vals[name] = _Val(np.concatenate([a.astype(dt, copy=False) for a in arrs], axis=3),
                                  const=const, binary=binary)
            for n in (name, self.fused.get(name)):
                st = state.get(n)
                if n is not None and n not in self.keep_v and st is not None and "theta" in st and "v" in st:
                    self._release(st.pop("v"))
            stats.node_seconds[name] += time.perf_counter() - tic
            # Free values nobody reads any more (keeps a strip's working set to a few layers).
            for i in node.inputs:
                if self.last_use.get(i) == idx:
                    v = vals.pop(i, None)
                    if v is not None and v.pooled:
                        self._release(v.arr)
        for v in vals.values():
            if v.pooled:
                self._release(v.arr)

    def _count_ops(self, node, src: _Val, L: int, stats: Stats, c0: int, c1: int) -> None:
        infos = self.analysis.nodes
        lvl = infos[node.input].level
        a = src.arr[:, _lv(c0, lvl):_lv(c1, lvl)]
        k, cout = node.kernel, node.out_channels
        if src.binary:
            fan = (k * k if isinstance(node, ConvTranspose) else (-(-k // node.stride)) ** 2) * cout
            if node.input in self._core_events:  # a neuron's spikes, already counted by its update
                events = self._core_events[node.input]
            elif src.planes:  # the 1-bits of the uwe-coded pixels
                events = int(_popcount(a).sum())
            else:
                events = int(np.count_nonzero(a)) * (L if src.const else 1)
            stats.synops += events * fan
        else:
            cin = a.shape[3]
            pix = a.shape[1] * a.shape[2]
            if isinstance(node, Conv):
                pix = -(-a.shape[1] // node.stride) * -(-a.shape[2] // node.stride)
            reps = 1 if (src.const or src.summed or node.name in self.summed) else a.shape[0]
            stats.macs += pix * cin * k * k * cout * reps

    def _conv(self, node, src: _Val, L: int, extra: bool) -> _Val:
        plan = self.plans[node.name]
        a = src.arr
        summed = node.name in self.summed
        if src.const and summed:
            # sum over steps of a constant input: L * x (the bound for the summed form covers it)
            a = a.astype(np.int64) * L
        elif summed and not src.summed:
            # spike counts of at most 255 steps fit uint8: a quarter of the memory traffic of int32
            small = src.binary and a.shape[0] <= 255
            a = a.sum(axis=0, keepdims=True, dtype=np.uint8 if small else np.int64)
        if extra:
            bound = plan.bound_extra
        elif summed:
            bound = plan.bound_sum
        else:
            bound = plan.bound
        dt = _gemm_dtype(bound)
        taps = plan.taps_for(extra, dt)
        if isinstance(node, Conv):
            out = conv_nhwc(a, taps, node.stride, dilation=node.dilation)
        else:
            out = conv_transpose_nhwc(a, taps, node.padding)
        if not extra:
            b = node.bias.astype(dt)
            out += b * (L if summed else 1)
        return _Val(out, const=src.const and not summed, summed=summed)

    def _weighted_sum(self, src: _Val) -> np.ndarray:
        """``sum_t 2**(T-1-t) value[t]`` of a value over the T steps, ``[h, w, C]`` (int64 unless already
        decoded)."""
        a = src.arr
        if src.weighted:
            return a[0]
        if src.const:
            return a[0].astype(np.int64) * (2**self.T - 1)
        acc = np.zeros(a.shape[1:], np.int64)
        for t in range(a.shape[0]):
            acc *= 2
            acc += a[t].astype(np.int64, copy=False)
        return acc

    def _conv_weighted(self, node, src: _Val) -> _Val:
        """A convolution read only by bit-plane layers: the binary-weighted sum over the steps of its currents."""
        if not src.const and self._spike_path(node, src):
            return self._conv_planes(node, src)
        plan = self.plans[node.name]
        T1 = 2**self.T - 1
        if self._integer_conv(node, src):
            from edgespike import kernels

            bias = node.bias.astype(np.int64) * T1  # in int32: the proved bound includes it
            v = kernels.conv_int(self.kernels, src.arr[0], self._packed(node), node.stride, bias.astype(np.int32),
                                 dilation=node.dilation)
            return _Val(v[None], weighted=True)
        # A constant input (direct coding) is convolved once and scaled after, so the GEMM sees small values.
        dt = _gemm_dtype(plan.bound if src.const else plan.bound_weighted)
        taps = plan.taps_for(False, dt)
        a = src.arr[:1] if src.const else self._weighted_sum(src)[None]
        if isinstance(node, Conv):
            out = conv_nhwc(a, taps, node.stride, self.threads, node.dilation)
        else:
            out = conv_transpose_nhwc(a, taps, node.padding)
        if np.any(node.bias):  # exact in dt: the bound includes the bias (times 2**T - 1 in the weighted form)
            out += node.bias.astype(dt) * (1 if src.const else T1)
        if src.const:
            # times 2**T - 1 can leave float32's exact range: float64 is exact below 2**53, int64 beyond
            out = out.astype(np.float64 if plan.bound_weighted < F64_EXACT else np.int64) * T1
        return _Val(out, weighted=True)

    def _kernel_speed(self) -> tuple[bool, bool]:
        """Whether the compiled integer kernels have their vector paths: (int16 on AVX2, u8 x s8 on AVX-512
        VNNI)."""
        if self._fast is None:
            from edgespike import kernels

            self._fast = (kernels.s16_fast(self.kernels), kernels.u8_fast(self.kernels))
        return self._fast

    def _u8_kernel(self, node) -> bool:
        """Whether ``node`` runs in the u8 x s8 dot-product kernel: 8-bit activations (T <= 8), int8 weights."""
        return self._kernel_speed()[1] and self.T <= 8 and self.plans[node.name].int8

    def _integer_conv(self, node, src: _Val) -> bool:
        """Whether the dense path runs in a compiled integer kernel (:func:`edgespike.kernels.conv_int`) instead of
        a float BLAS GEMM: a convolution of decoded bit planes (activations below ``2**15``), every partial sum
        proved to fit int32, and a kernel built with a vector path (AVX2 or AVX-512 VNNI; elsewhere BLAS is
        faster)."""
        if self.kernels is None or not isinstance(node, Conv) or not src.planes or self.T > 15:
            return False
        plan = self.plans[node.name]
        if plan.bound_weighted >= 2**31 or int(np.abs(node.weight).max(initial=0)) >= 2**15:
            return False
        return self._kernel_speed()[0] or self._u8_kernel(node)

    def _packed(self, conv: Conv) -> np.ndarray:
        """``conv``'s weights packed for the faster kernel that runs it exactly (int8 groups for VNNI, else int16
        pairs), once per runtime."""
        from edgespike import kernels

        plan = self.plans[conv.name]
        if plan.packed is None:
            plan.packed = kernels.pack_u8(conv.weight) if self._u8_kernel(conv) else kernels.pack_s16(conv.weight)
        return plan.packed

    def _spike_path(self, node, src: _Val) -> bool:
        if self.bitplane_path != "auto":
            return self.bitplane_path == "spikes"
        # The kernel's work follows the spikes (groups of four channels with a spike); a GEMM's does not. It only
        # wins for wide, sparse inputs: per-plane lookups do not pay for one input channel (the pixel) and the
        # transposed read-out has no kernel.
        if self.kernels is None or not isinstance(node, Conv) or not src.planes or src.arr.shape[-1] < 16:
            return False
        if self._integer_conv(node, src) and self._u8_kernel(node):
            # The dot-product kernel beats the spike path at every rate, even at none: a 64-channel 3x3 layer at
            # 320x240 took 0.008 s in it, the spike path 0.008 s on silent input and 0.014-0.089 s from 0.0001 to
            # 0.1 spikes per neuron per step (docs/BENCHMARKS.md).
            return False
        rate = src.rate
        if rate is None:
            q = src.arr
            rate = float(_popcount(q).sum(dtype=np.int64)) / (self.T * q.size)
        return rate < SPIKE_PATH_MAX_RATE

    def _conv_planes(self, node, src: _Val) -> _Val:
        """The spike-driven path: one binary convolution per step (plane), combined by doubling (the UWD)."""
        steps = _unpack_planes(src, self.T) if src.planes else src
        a = steps.arr
        T1 = 2**self.T - 1
        if self.kernels is not None and isinstance(node, Conv) and src.binary:
            from edgespike import kernels

            lut = self._lut_cache.get(node.name)
            if lut is None:
                lut = self._lut_cache[node.name] = kernels.build_lut(node.weight)
            ones = np.ones(node.out_channels, np.int32)

            def planes(part, *phase):  # the membranes the planes of ``part`` build, doubling between them
                h, w = part.shape[1], part.shape[2]
                ho, wo = -(-h // node.stride), -(-w // node.stride)
                v = np.zeros((ho, wo, node.out_channels), np.int32)
                spk = self._buffer((part.shape[0], ho, wo, node.out_channels), np.uint8)
                kernels.conv_neuron(self.kernels, np.ascontiguousarray(part), lut, node, None, v, ones, out=spk)
                self._release(spk)
                return v[None]

            if node.dilation > 1:  # the lookup-table kernel reads neighbouring taps: one phase at a time
                return _Val(kernels.dilated_by_phase(a, node.dilation, planes), weighted=True)
            return _Val(planes(a), weighted=True)
        plan = self.plans[node.name]
        dt = _gemm_dtype(plan.bound)
        taps = plan.taps_for(False, dt)
        if isinstance(node, Conv):
            cur = conv_nhwc(a, taps, node.stride, dilation=node.dilation)
        else:
            cur = conv_transpose_nhwc(a, taps, node.padding)
        v = np.zeros(cur.shape[1:], np.int64)
        for t in range(cur.shape[0]):
            v *= 2
            v += cur[t].astype(np.int64)
        v += node.bias.astype(np.int64) * T1
        return _Val(v[None], weighted=True)

    def _conv_bitplane(self, conv: Conv, node: BitPlaneNeuron, src: _Val, state, stats: Stats, c0: int,
                       c1: int) -> _Val:
        """A convolution of decoded bit planes and the bit-plane layer reading it, in one pass of the integer
        kernel (exactly :meth:`_conv_weighted` then :meth:`_bitplane`)."""
        from edgespike import kernels

        bias = (conv.bias.astype(np.int64) * (2**self.T - 1)).astype(np.int32)  # in the proved int32 bound
        q, bits = kernels.conv_int(self.kernels, src.arr[0], self._packed(conv), conv.stride, bias, neuron=node,
                                   T=self.T, rows=(c0, c1), dilation=conv.dilation)
        return self._bitplane_out(node, q, bits, None, state, stats, c0, c1)

    def _bitplane(self, node: BitPlaneNeuron, src: _Val, state, stats: Stats, c0: int, c1: int) -> _Val:
        """Section 5.5 of the semantics: decode, add the bias, quantise to T bits (the spikes, MSB first)."""
        T = self.T
        v = self._weighted_sum(src)
        # decoded GEMM output (integers, exact by the proved bound) or the spike path's int32 membranes
        q = bits = None
        if self.kernels is not None and v.dtype in (np.float32, np.float64, np.int32):
            from edgespike import kernels

            q, bits = kernels.bitplane_quantise(self.kernels, v, node.bias, node.threshold, T, rows=(c0, c1))
        if q is None:
            # floor of a float64 quotient of integers below 2**53 is the integer floor (see the C kernel)
            vb = v.astype(np.float64) + node.bias
            q = np.clip(np.floor(vb / node.threshold), 0, 2**T - 1).astype(np.uint8 if T <= 8 else np.uint16)
        return self._bitplane_out(node, q, bits, v, state, stats, c0, c1)

    def _bitplane_out(self, node: BitPlaneNeuron, q: np.ndarray, bits, v, state, stats: Stats, c0: int,
                      c1: int) -> _Val:
        """Record a bit-plane layer's output ``q``: its spikes per step in the core rows (``bits``, counted here
        when ``None``), the state the decoder reads, the value for the next layer."""
        T = self.T
        if bits is None:
            core = q[c0:c1]
            bits = np.array([np.count_nonzero((core >> (T - 1 - t)) & 1) for t in range(T)], np.int64)
        # The spikes of step t are bit T-1-t of q; the statistics count them in the strip's core rows.
        stats.spikes[node.name][:T] += bits
        self._core_events[node.name] = int(bits.sum())
        st = state.setdefault(node.name, {})
        if node.name in self.keep_v:  # the successive approximation's residue
            vb = v.astype(np.int64) + node.bias.astype(np.int64)
            st["v"] = vb - node.threshold.astype(np.int64) * q
        if node.name in self.need_uwd:
            st["uwd"] = q
        if node.name in self.need_count:
            st["count"] = _popcount(q)
        core_size = q[c0:c1].size
        rate = float(bits.sum()) / (T * core_size) if core_size else None
        return _Val(q[None], binary=True, weighted=True, planes=True, rate=rate)

    def _neuron_state(self, node: Neuron, shape, state) -> dict:
        st = state.get(node.name)
        if st is None:
            theta = node.threshold.astype(np.int32)
            v = self._buffer(shape, np.int32)
            v[...] = (theta >> 1) if node.v_init == "half" else 0
            st = state[node.name] = {"v": v, "theta": theta}
            if node.name in self.need_count:
                st["count"] = np.zeros(shape, np.int32)
            if node.name in self.need_uwd:
                st["uwd"] = np.zeros(shape, np.int64)
        return st

    def _neuron(self, node: Neuron, src: _Val, L: int, t0: int, state, stats: Stats, c0: int, c1: int) -> _Val:
        cur = src.arr
        st = self._neuron_state(node, cur.shape[1:], state)
        v, theta = st["v"], st["theta"]
        extra = t0 >= self.T
        if cur.dtype != np.int32:
            cur = cur.astype(np.int32)  # exact: analyse() bounds every current to membrane_bits <= 32
        if self.kernels is not None and not extra:
            from edgespike import kernels

            c_in = np.broadcast_to(cur, (L,) + v.shape) if src.const else cur
            spikes, counts = kernels.neuron(self.kernels, c_in, node, v, theta,
                                            out=self._buffer(c_in.shape, np.uint8), rows=(c0, c1))
            self._after_spikes(node, spikes, counts, t0, st, stats)
            return _Val(spikes, binary=True, pooled=True)
        spikes = np.empty((L,) + v.shape, np.bool_)
        tmp = np.empty_like(v) if node.leak_shift and not extra else None
        events = 0
        for i in range(L):
            t = t0 + i
            c = cur[0] if src.const else cur[i]
            s = spikes[i]
            if extra:
                v += c
                if node.mprn:
                    num, den = node.mprn
                    np.greater_equal(v.astype(np.int64) * den, theta.astype(np.int64) * num, out=s)
                else:
                    s[...] = False
            else:
                if node.leak_shift:
                    np.right_shift(v, node.leak_shift, out=tmp)
                    v -= tmp
                v += c
                np.greater_equal(v, theta, out=s)
            if node.reset == "soft":
                np.subtract(v, theta, out=v, where=s)
            else:
                np.copyto(v, 0, where=s)
            n_core = int(np.count_nonzero(s[c0:c1]))
            stats.spikes[node.name][t] += n_core
            events += n_core
            if "count" in st:
                st["count"] += s
            if "uwd" in st and not extra:
                st["uwd"][s] += np.int64(1) << (self.T - 1 - t)
        self._core_events[node.name] = events
        return _Val(spikes.view(np.uint8), binary=True)

    def _fused(self, conv: Conv, neuron: Neuron, src: _Val, L: int, state, stats: Stats, c0: int, c1: int) -> _Val:
        """Binary-input Conv + Neuron through the compiled kernel (steps t < T only)."""
        from edgespike import kernels

        a = src.arr
        if src.const:
            a = np.broadcast_to(a, (L,) + a.shape[1:])
        key = conv.name
        lut = self._lut_cache.get(key)
        if lut is None:
            lut = self._lut_cache[key] = kernels.build_lut(conv.weight)
        h, w = a.shape[1], a.shape[2]
        ho, wo = -(-h // conv.stride), -(-w // conv.stride)
        st = self._neuron_state(neuron, (ho, wo, conv.out_channels), state)
        spikes, counts = kernels.conv_neuron(self.kernels, a, lut, conv, neuron, st["v"], st["theta"],
                                             out=self._buffer((L, ho, wo, conv.out_channels), np.uint8),
                                             rows=(c0, c1))
        self._after_spikes(neuron, spikes, counts, 0, st, stats)
        return _Val(spikes, binary=True, pooled=True)

    def _after_spikes(self, neuron: Neuron, spikes: np.ndarray, counts: np.ndarray, t0: int, st: dict,
                      stats: Stats):
        """Statistics (core-row spike counts from the kernel) and decoder quantities for steps ``t0 ..``."""
        stats.spikes[neuron.name][t0:t0 + len(counts)] += counts
        self._core_events[neuron.name] = int(counts.sum())
        for i in range(spikes.shape[0]):
            s = spikes[i]
            if "count" in st:
                st["count"] += s
            if "uwd" in st:
                st["uwd"][s.view(np.bool_)] += np.int64(1) << (self.T - 1 - (t0 + i))

    def _decode(self, x_core: np.ndarray, state, c0: int, c1: int) -> np.ndarray:
        dec = self.model.decoder
        R = np.zeros(x_core.shape, np.int64)
        for term in dec.terms:
            st = state[term.node]
            key = "v" if term.quantity == "membrane" else term.quantity
            q = st[key][c0:c1, :, 0].astype(np.int64)
            node = self.model.node(term.node)
            if isinstance(node, Integrator) and node.bias is not None:
                q = q + np.int64(node.bias[0])
            R += np.int64(term.multiplier[0]) * q
        r = (R + (1 << (dec.shift - 1))) >> dec.shift if dec.shift else R
        y = x_core.astype(np.int64) - r if dec.residual else r
        return np.clip(y, 0, 255).astype(np.uint8)


def load(path=None, **kwargs):
    """A :class:`Runtime` for the model file ``path`` (a :class:`Model` is also accepted), or a
    :class:`~edgespike.modelset.SetRuntime` for a model set (the same ``denoise``).

    ``path`` may also name a shipped model (``"s25"``, ``"blind"``); ``None`` loads the shipped sigma-25 model.
    Keyword arguments go to :class:`Runtime`.
    """
    from edgespike.fileformat import load_any
    from edgespike.models import resolve
    from edgespike.modelset import ModelSet, SetRuntime

    model = path if isinstance(path, (Model, ModelSet)) else load_any(resolve(path))
    return SetRuntime(model, **kwargs) if isinstance(model, ModelSet) else Runtime(model, **kwargs)


def denoise(model: Model, frame: np.ndarray, **kwargs) -> np.ndarray:
    """One-shot convenience: ``Runtime(model, **kwargs).denoise(frame)[0]``."""
    return Runtime(model, **kwargs).denoise(frame)[0]
