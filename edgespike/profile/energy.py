"""Analytical energy of an edgespike SNN and of its ANN twin (Lemaire et al., ICONIP 2022, as SPIDEN uses it).

Every conv layer of the model is counted twice: as the SNN executes it (event-driven accumulates, membrane
potentials in a local SRAM) and as the same-shaped ANN executes it (dense MACs). Counts per inference:

* synaptic operations (``macs``, ``accs``),
* memory accesses by kind (input reads, weight reads, bias reads, potential reads and writes, output writes),
* addressing operations (``addr_macs``, ``addr_accs``),

and energies from a technology table (``tables/energy.json``, selectable and extensible): a MAC costs
``mul + add``, an accumulate ``add``, a memory access ``a * N * b + c`` with ``N`` the elements of THAT memory and
``b`` its bits per element (the authors' least-squares fit of Horowitz's SRAM points).

Where the paper and the authors' code (``qualia-plugin-snn`` ``EnergyEstimationMetric``) differ we follow the code,
because SPIDEN's figures come from it; each case is named in ``docs/PROFILE.md`` and where it is a switch here:

* dense SNN layer: the paper prints an extra ``N_in`` factor and no reset term; the code's form is used.
* SNN conv addressing: the paper's ``theta_in * C_out * k^2`` accumulates or the code's ``theta_in * k^2``
  (``addressing="code"``, the default; ``"paper"`` selects the other).
* non-binary first layer ("hybrid", direct pixel input): dense ANN MACs, dense input reads and ANN addressing;
  weights, biases and potentials with the SNN formulas at ``theta_in = nonzero inputs x T``; leak and reset.
* the read-out conv (into an Integrator) has no output spikes, hence no reset and no output writes.

Where both write ``theta_in * k^2`` for the synaptic work of an event (accumulates, weight reads, membrane
updates, addressing), we count, per event, the (output position, tap) pairs it really reaches
(:meth:`Layer.fanout`): ``k^2`` for a stride-1 conv away from the borders, ``(k/2)^2`` on average for a stride-2
conv, ``k^2`` for a stride-2 transposed conv; fewer at the borders.

The residual subtraction and the decoder are the same for both networks and are not counted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgespike.model import INPUT, SPIKING, Add, BitPlaneNeuron, Concat, Conv, ConvTranspose, Integrator, Model
from edgespike.profile import memory as M

TABLES_FILE = Path(__file__).with_name("tables") / "energy.json"
DEFAULT_TABLE = "stored"
PAPER_TABLE = "spiden"
MEM_KINDS = ("input", "weight", "bias", "potential", "output")
FIFO_ELEMENTS = 64
"""Size of the per-layer event FIFO that SNN inputs are read from and output spikes written to (the authors'
``fifo_size``; with the SRAM fit its size barely matters: ``1.09e-5 * 64 * 32 = 0.02 pJ`` against ``c = 13.2``)."""


# --------------------------------------------------------------------------- tables
def load_tables(extra: str | Path | None = None) -> dict[str, dict]:
    """The shipped technology tables, updated with those of the JSON file ``extra`` (same layout)."""
    tables = {k: v for k, v in json.loads(TABLES_FILE.read_text()).items() if not k.startswith("_")}
    if extra is not None:
        more = json.loads(Path(extra).read_text())
        tables.update({k: v for k, v in more.items() if not k.startswith("_")})
    return tables


def get_table(name: str | dict = DEFAULT_TABLE, extra: str | Path | None = None) -> dict:
    """One table by name (or a table dict passed through); ``KeyError`` names the choices."""
    if isinstance(name, dict):
        return name
    tables = load_tables(extra)
    if name not in tables:
        raise KeyError(f"no energy table {name!r}; choose one of {', '.join(tables)}")
    return dict(tables[name], name=name)


# Horowitz, ISSCC 2014, 45 nm: integer add and multiply by operand width (pJ). Between the published widths
# the add is interpolated linearly and the multiply as a power law (its cost grows about as bits squared).
HOROWITZ_ADD = {8: 0.03, 16: 0.05, 32: 0.1}
HOROWITZ_MUL = {8: 0.2, 32: 3.1}


def add_pJ(bits: float) -> float:
    """Horowitz 45 nm integer add of ``bits`` bits (linear between 8, 16 and 32; proportional outside)."""
    pts = sorted(HOROWITZ_ADD.items())
    if bits <= pts[0][0]:
        return pts[0][1] * bits / pts[0][0]
    for (b0, e0), (b1, e1) in zip(pts, pts[1:], strict=False):
        if bits <= b1:
            return e0 + (e1 - e0) * (bits - b0) / (b1 - b0)
    return pts[-1][1] * bits / pts[-1][0]


def mul_pJ(bits: float) -> float:
    """Horowitz 45 nm integer multiply of ``bits`` bits (power law through 8 and 32 bits)."""
    (b0, e0), (b1, e1) = sorted(HOROWITZ_MUL.items())
    return e0 * (bits / b0) ** (np.log(e1 / e0) / np.log(b1 / b0))


def stored_widths(model: Model | None) -> dict[str, dict[str, int]]:
    """The integer widths edgespike really stores: the SNN's int8 weights, int32 biases, the membrane width the
    model declares and 1-bit spikes (bit maps, one bit per neuron per step, bit-plane layers included); the int8
    twins' int8 weights and activations, int32 biases and accumulators (onnxruntime QDQ and TFLite int8)."""
    mbits = int(getattr(model, "membrane_bits", 32) or 32)
    return {"snn": {"weight": 8, "bias": 32, "membrane": mbits, "spike": 1, "pixel": 8},
            "ann": {"weight": 8, "bias": 32, "activation": 8, "accumulator": 32, "pixel": 8}}


@dataclass
class Pricing:
    """Everything a table decides, resolved for one model: widths, op costs and memory models per kind."""

    table: dict
    widths: dict  # net -> kind -> bits
    ops: dict  # net -> {"mac", "acc", "addr_mac", "addr_acc"} in pJ
    spikes: str  # "fifo" (Lemaire's event FIFOs) or "bitmap" (1-bit maps of all steps)
    memory: dict  # kind -> memory.MemoryModel, or {} for no memory term
    addressing: bool

    @property
    def name(self) -> str:
        return str(self.table.get("name", "custom"))

    def describe(self) -> dict:
        return {"widths": self.widths, "ops_pJ": self.ops, "spikes": self.spikes, "addressing": self.addressing,
                "memory": {k: {"model": m.name, "label": m.label, "range": m.range.text(), "source": m.source}
                           for k, m in self.memory.items()}}


MEM_MODEL_KINDS = ("weight", "bias", "membrane", "spike", "activation", "pixel")


def pricing(table: str | dict = DEFAULT_TABLE, model: Model | None = None, memory_model: str | None = None,
            extra: str | Path | None = None) -> Pricing:
    """Resolve ``table`` for ``model``; ``memory_model`` replaces the table's memory model (kinds the table
    prices with a constant keep it)."""
    tab = get_table(table, extra)
    widths = _widths(tab, model)
    if "mac" in tab:  # op-count model: #MAC x E_MAC + #AC x E_AC, nothing else
        ops = {net: {"mac": tab["mac"], "acc": tab["ac"], "addr_mac": 0.0, "addr_acc": 0.0} for net in ("snn", "ann")}
    elif tab.get("ops", "fixed") == "by-width" or "add" not in tab:
        ab = tab.get("addressing_bits", 16)
        snn_w, ann_w = widths["snn"], widths["ann"]
        ops = {"snn": {"mac": mul_pJ(snn_w["weight"]) + add_pJ(snn_w["membrane"]), "acc": add_pJ(snn_w["membrane"]),
                       "addr_mac": mul_pJ(ab) + add_pJ(ab), "addr_acc": add_pJ(ab)},
               "ann": {"mac": mul_pJ(ann_w["weight"]) + add_pJ(ann_w["accumulator"]),
                       "acc": add_pJ(ann_w["accumulator"]), "addr_mac": mul_pJ(ab) + add_pJ(ab),
                       "addr_acc": add_pJ(ab)}}
    else:
        mac, add = tab["mul"] + tab["add"], tab["add"]
        ops = {net: {"mac": mac, "acc": add, "addr_mac": mac, "addr_acc": add} for net in ("snn", "ann")}
    mem_spec = tab.get("memory")
    mem: dict = {}
    if mem_spec:
        base = dict(mem_spec) if isinstance(mem_spec, dict) else {"model": mem_spec}
        per_kind = base.pop("kinds", {}) or {}
        base.pop("bits", None)
        if memory_model:
            base = {"model": memory_model}
        for kind in MEM_MODEL_KINDS:
            spec = per_kind.get(kind, base)
            if memory_model and spec.get("model") != "constant":
                spec = base
            mem[kind] = M.model(spec)
    return Pricing(tab, widths, ops, tab.get("spikes", "fifo"), mem,
                   bool(tab.get("addressing", True)) and "mac" not in tab)


def _widths(tab: dict, model: Model | None) -> dict:
    w = tab.get("widths")
    if w == "stored" or (w is None and "bits" not in (tab.get("memory") or {})):
        return stored_widths(model)
    if w is None:  # an older table: memory.bits, one width or one per memory
        bits = tab["memory"]["bits"]
        if isinstance(bits, dict):
            g = lambda k, d=32: int(bits.get(k, d))  # noqa: E731
            return {"snn": {"weight": g("weight"), "bias": g("bias"), "membrane": g("potential"),
                            "spike": g("input"), "pixel": g("input")},
                    "ann": {"weight": g("weight"), "bias": g("bias"), "activation": g("input"),
                            "accumulator": g("potential"), "pixel": g("input")}}
        w = {"all": int(bits)}
    if "all" in w:
        b = int(w["all"])
        return {"snn": {"weight": b, "bias": b, "membrane": b, "spike": b, "pixel": b},
                "ann": {"weight": b, "bias": b, "activation": b, "accumulator": b, "pixel": b}}
    return {net: {k: int(v) for k, v in w[net].items()} for net in ("snn", "ann")}


# --------------------------------------------------------------------------- geometry
@dataclass
class Layer:
    """One synaptic layer (conv or transposed conv) with its shapes and how the SNN feeds and reads it."""

    name: str
    kind: str  # "conv" | "convT" | "add"
    cin: int
    cout: int
    hin: int
    win: int
    hout: int
    wout: int
    k: int = 1
    stride: int = 1
    source: tuple[str, ...] = ()  # nodes whose events are this layer's input
    binary_input: bool = True  # False: dense values (pixels, currents) -> the "hybrid" counting
    neuron: str | None = None  # the spiking neuron node this layer feeds (None: read-out / non-spiking)
    leak: bool = False
    padding: int | None = None  # None: k // 2 (a "same" conv); a ConvTranspose's own padding
    decodes_planes: bool = False  # read by a bit-plane layer or uwd Integrator (docs/SEMANTICS.md 5.5)
    dilation: int = 1  # a Conv's tap spacing (padding dilation * (k // 2))

    @property
    def n_in(self) -> int:
        return self.cin * self.hin * self.win

    @property
    def n_out(self) -> int:
        return self.cout * self.hout * self.wout

    def fanout(self) -> np.ndarray:
        """``[H_in, W_in]``: how many (output position, tap) pairs an event at each input position reaches, per
        output channel (docs/SEMANTICS.md section 4, borders included). Separable: rows times columns."""
        pad = self.dilation * (self.k // 2) if self.padding is None else self.padding
        rows = _fan_1d(self.hin, self.hout, self.k, self.stride, pad, self.kind == "convT", self.dilation)
        cols = _fan_1d(self.win, self.wout, self.k, self.stride, pad, self.kind == "convT", self.dilation)
        return np.outer(rows, cols)


def _fan_1d(n_in: int, n_out: int, k: int, stride: int, pad: int, transposed: bool, dilation: int = 1) -> np.ndarray:
    """For each input index ``a`` of one spatial axis, the number of (output index, tap) pairs it takes part in.

    Conv: output ``y`` reads input ``s*y + d*i - p`` (tap ``i``, dilation ``d``), so input ``a`` serves
    ``y = (a + p - d*i) / s`` when
    that is a whole number in ``[0, n_out)``: k per axis at stride 1 (away from the borders), and at stride 2
    ``ceil(k/2)`` or ``floor(k/2)`` depending on the parity of ``a + p``, k/2 on average. ConvTranspose: input
    ``a`` adds tap ``i`` to output ``2a - p + i``, so it reaches all k taps (away from the borders): a spike into
    a transposed conv fans out to ``k^2`` outputs per output channel, while each output gathers only
    ``(k/2)^2`` inputs per input channel.
    """
    a = np.arange(n_in)
    fan = np.zeros(n_in, np.int64)
    for i in range(k):
        if transposed:
            o = 2 * a - pad + i
            fan += (o >= 0) & (o < n_out)
        else:
            num = a + pad - dilation * i
            fan += (num >= 0) & (num % stride == 0) & (num // stride < n_out)
    return fan


def layers(model: Model, height: int, width: int) -> list[Layer]:
    """The synaptic layers of ``model`` for a ``height`` x ``width`` frame (padded as the runtime pads it)."""
    m = model.size_multiple
    height, width = -(-height // m) * m, -(-width // m) * m
    shape: dict[str, tuple[int, int, int]] = {INPUT: (1, height, width)}
    consumers: dict[str, list] = {}
    for node in model.nodes:
        for i in node.inputs:
            consumers.setdefault(i, []).append(node)
    binary = {INPUT: model.encoder.kind != "direct"}
    out: list[Layer] = []
    for node in model.nodes:
        if isinstance(node, (Conv, ConvTranspose)):
            c, h, w = shape[node.input]
            if isinstance(node, Conv):
                ho, wo = -(-h // node.stride), -(-w // node.stride)
            else:
                ho, wo = 2 * h, 2 * w
            shape[node.name] = (node.out_channels, ho, wo)
            nxt = consumers.get(node.name, [])
            neuron = nxt[0] if len(nxt) == 1 and isinstance(nxt[0], SPIKING) else None
            out.append(Layer(node.name, "conv" if isinstance(node, Conv) else "convT", c, node.out_channels, h, w,
                             ho, wo, node.kernel, node.stride, _sources(model, node.input), binary[node.input],
                             neuron.name if neuron else None, bool(neuron and getattr(neuron, "leak_shift", 0)),
                             node.padding if isinstance(node, ConvTranspose) else None,
                             bool(nxt) and all(isinstance(c, BitPlaneNeuron) or (isinstance(c, Integrator) and c.uwd)
                                               for c in nxt), getattr(node, "dilation", 1)))
            binary[node.name] = False
        elif isinstance(node, Concat):
            ch = sum(shape[i][0] for i in node.inputs)
            shape[node.name] = (ch,) + shape[node.inputs[0]][1:]
            binary[node.name] = all(binary[i] for i in node.inputs)
        elif isinstance(node, Add):
            c, h, w = shape[node.inputs[0]]
            shape[node.name] = (c, h, w)
            # An Add of spikes feeds the next conv as events (its cost is in that conv); an Add of currents is a
            # dense element-wise layer of its own.
            binary[node.name] = all(binary[i] for i in node.inputs)
            if not binary[node.name]:
                out.append(Layer(node.name, "add", c * len(node.inputs), c, h, w, h, w))
        else:  # Neuron, Integrator: element-wise, same shape
            shape[node.name] = shape[node.input]
            binary[node.name] = isinstance(node, SPIKING)
    return out


def _sources(model: Model, name: str) -> tuple[str, ...]:
    """The spiking nodes (or the input) whose events arrive at a layer that reads node ``name``."""
    if name == INPUT:
        return (INPUT,)
    node = model.node(name)
    if isinstance(node, (Concat, Add)):
        return tuple(s for i in node.inputs for s in _sources(model, i))
    return (name,)


# --------------------------------------------------------------------------- activity
@dataclass
class Activity:
    """What the SNN did on one inference: events per source node, and the input's non-zero fraction.

    ``maps`` optionally gives, per source node, where its events were (``[H, W]``, summed over channels and
    steps; for a direct-coded input, ``T`` at every non-zero pixel). With a map a layer's synaptic events are
    counted exactly per position; without one (the runtime reports totals only), each event gets the layer's
    mean fan-out over input positions, which is exact when events are spread evenly over positions.
    """

    timesteps: int
    events: dict[str, float]  # spikes of each neuron node (and "input" for spiking encoders), all steps summed
    input_nonzero: float = 1.0  # non-zero fraction of a dense (direct-coded) input frame
    maps: dict[str, np.ndarray] = field(default_factory=dict)

    def theta_in(self, layer: Layer) -> float:
        if not layer.binary_input:
            return self.input_nonzero * layer.n_in * self.timesteps
        return float(sum(self.events.get(s, 0.0) for s in layer.source))

    def synapses(self, layer: Layer) -> float:
        """Input events times the (output position, tap) pairs each reaches, for one output channel.

        ``C_out`` times this is the layer's synaptic accumulates (and weight reads, membrane updates).
        """
        fan = layer.fanout()
        sources = layer.source if layer.binary_input else ((INPUT,) if layer.source == (INPUT,) else ())
        maps = [self.maps.get(s) for s in sources]
        if maps and all(m is not None for m in maps):
            return float(sum(float((m.astype(np.float64) * fan).sum()) for m in maps))
        return self.theta_in(layer) * float(fan.mean())

    def theta_out(self, layer: Layer) -> float:
        return float(self.events.get(layer.neuron, 0.0)) if layer.neuron else 0.0


def activity_from_spikes(model: Model, spikes: dict[str, list[int] | int], frame: np.ndarray | None = None,
                         counts: dict[str, np.ndarray] | None = None) -> Activity:
    """:class:`Activity` from spikes per neuron node per step (the runtime's ``Stats`` or the reference
    ``Trace``); ``frame`` gives the input's non-zero fraction (direct) or the input events (uwe, rate), and where
    they are; ``counts`` (the reference ``Trace.counts``: spikes per neuron ``[C, H, W]`` over all steps) gives
    where every neuron's spikes are, for exact per-position synaptic counts."""
    events = {k: float(np.sum(v)) for k, v in spikes.items()}
    maps = {k: np.asarray(v).sum(axis=0) for k, v in (counts or {}).items()}
    nz = 1.0
    if frame is not None:
        from edgespike.frames import pad_to_multiple
        from edgespike.reference import encode

        x = pad_to_multiple(frame, model.size_multiple)
        if model.encoder.kind == "direct":
            nz = float(np.count_nonzero(x)) / x.size
            maps[INPUT] = model.timesteps * (x != 0)
        else:
            planes = sum(encode(model, x, t).astype(np.int64) for t in range(model.timesteps))[0]
            events[INPUT], maps[INPUT] = float(planes.sum()), planes
    return Activity(model.timesteps, events, nz, maps)


def activity_from_rates(model_layers: list[Layer], timesteps: int, rate: float | dict[str, float],
                        input_nonzero: float = 1.0) -> Activity:
    """:class:`Activity` from spike rates per neuron per timestep (one for all layers or one per neuron node):
    how the SPIDEN sparsities are fed to the model."""
    events = {}
    for layer in model_layers:
        if layer.neuron:
            r = rate[layer.neuron] if isinstance(rate, dict) else rate
            events[layer.neuron] = r * timesteps * layer.n_out
    return Activity(timesteps, events, input_nonzero)


# --------------------------------------------------------------------------- counts
@dataclass
class Counts:
    """Operation and memory-access counts of one layer for one inference (floats: activity is an average)."""

    macs: float = 0.0
    accs: float = 0.0
    rd_input: float = 0.0
    rd_weight: float = 0.0
    rd_bias: float = 0.0
    rd_potential: float = 0.0
    wr_potential: float = 0.0
    wr_output: float = 0.0
    addr_macs: float = 0.0
    addr_accs: float = 0.0
    # elements of the memory each access goes to: "input", "weight", "bias", "potential", "output" as Lemaire et
    # al. size them (SNN spikes in 64-entry FIFOs), "input_map" / "output_map" for spikes kept as bit maps of all
    # steps; "input_is" says what the input memory holds ("spike", "activation" or "pixel")
    n_mem: dict = field(default_factory=dict)

    @property
    def mem_accesses(self) -> float:
        return (self.rd_input + self.rd_weight + self.rd_bias + self.rd_potential + self.wr_potential
                + self.wr_output)


def ann_counts(layer: Layer) -> Counts:
    """Dense counts of the ANN twin's layer (Lemaire et al. eqs. 3-6, 12-14 for conv)."""
    src = "pixel" if layer.source == (INPUT,) else "activation"
    if layer.kind == "add":
        n = layer.n_out
        return Counts(accs=layer.n_in - n, rd_input=layer.n_in, wr_output=n, addr_accs=layer.n_in + n,
                      n_mem={"input": layer.n_in, "output": n, "input_is": "activation"})
    taps = layer.cin * layer.k * layer.k
    if layer.kind == "convT":
        # every input element reaches k*k outputs of every output channel
        macs = layer.n_in * layer.cout * layer.k * layer.k
    else:
        macs = layer.n_out * taps
    return Counts(
        macs=macs, accs=layer.n_out,
        rd_input=macs, rd_weight=macs, rd_bias=layer.n_out, wr_output=layer.n_out,
        addr_accs=layer.n_in + layer.n_out + layer.cout * layer.k * layer.k,
        n_mem={"input": layer.n_in, "weight": layer.cout * taps, "bias": layer.cout, "output": layer.n_out,
               "input_is": src},
    )


def _bitplane_counts(layer: Layer, act: Activity, th_in: float, th_out: float) -> Counts:
    """A conv into a bit-plane layer, as a layer-major engine runs it (docs/SEMANTICS.md 5.5): each output neuron's
    membrane stays in its accumulator register over the T input planes (the UWD doubling is a shift of that
    register), so the membrane memory sees one write and one read per neuron, not one per synaptic event; every
    (event, reached output position, tap) is one weight read and one accumulate per output channel, its spike bit
    read once per output position (shared by the output-channel lanes); the bias is added once; the UWE's
    successive approximation is T compare-subtracts per neuron. Not the Lemaire et al. accounting, which assumes
    a step-major event-driven core with the membrane in SRAM."""
    T = act.timesteps
    syn = act.synapses(layer)
    sar = T * layer.n_out if layer.neuron else 0
    n_mem = {"input": layer.n_in * T, "weight": layer.cout * layer.cin * layer.k * layer.k, "bias": layer.cout,
             "potential": layer.n_out, "output": layer.n_out * T, "input_map": layer.n_in * T,
             "output_map": layer.n_out * T, "input_is": "spike"}
    return Counts(accs=syn * layer.cout + T * layer.n_out + sar, rd_input=syn, rd_weight=syn * layer.cout,
                  rd_bias=layer.n_out, rd_potential=layer.n_out, wr_potential=layer.n_out, wr_output=th_out,
                  addr_accs=syn, n_mem=n_mem)


HYBRID = ("bcefe7d", "head")
"""How the direct-coded first layer is counted: as in the authors' commit bcefe7d (2024-05-27; dense MACs,
dense input reads, ANN addressing) or as at their HEAD 15165fe (MACs, input reads, weight reads and addressing
scaled by the input's non-zero rate, once, not T times). docs/PROFILE.md lists the differences."""


def snn_counts(layer: Layer, act: Activity, addressing: str = "code", hybrid: str = "bcefe7d") -> Counts:
    """Event-driven counts of the SNN's layer (Lemaire et al. as implemented by its authors; see module doc)."""
    T = act.timesteps
    if layer.kind == "add":  # a dense Add of currents: same as the ANN, every step
        c = ann_counts(layer)
        for f in ("accs", "rd_input", "wr_output", "addr_accs"):
            setattr(c, f, getattr(c, f) * T)
        return c
    th_in, th_out = act.theta_in(layer), act.theta_out(layer)
    if layer.decodes_planes and layer.binary_input:
        return _bitplane_counts(layer, act, th_in, th_out)
    # Every (event, reached output position, tap) triple is, per output channel, one weight read, one
    # accumulate and one membrane read-modify-write; the authors' code writes theta_in * k^2 for it, which is
    # this count for a stride-1 conv away from the borders.
    syn = act.synapses(layer)
    per_step = T * layer.n_out
    leak_macs = per_step if layer.leak else 0
    n_mem = {"input": FIFO_ELEMENTS, "weight": layer.cout * layer.cin * layer.k * layer.k, "bias": layer.cout,
             "potential": layer.n_out, "output": FIFO_ELEMENTS, "input_map": layer.n_in * T,
             "output_map": layer.n_out * T, "input_is": "spike"}
    pot = syn * layer.cout + per_step
    c = Counts(rd_weight=syn * layer.cout, rd_bias=per_step, rd_potential=pot, wr_potential=pot,
               wr_output=th_out, n_mem=n_mem)
    if layer.binary_input:
        c.macs = leak_macs
        c.accs = syn * layer.cout + per_step + th_out
        c.rd_input = th_in
        c.addr_macs = 2 * th_in
        c.addr_accs = syn * (layer.cout if addressing == "paper" else 1)
        return c
    dense = ann_counts(layer)
    c.n_mem["input_is"] = dense.n_mem["input_is"]
    if hybrid == "head":
        # HEAD: "sparse input over a single timestep but with MAC operations"; theta = non-zero inputs, once
        nz = act.input_nonzero
        c.macs = dense.macs * nz + (layer.n_out if layer.leak else 0)
        c.accs = dense.accs + th_out
        c.rd_input = nz * layer.n_in
        c.rd_weight = syn * layer.cout / T
        c.addr_macs = 2 * nz * layer.n_in
        c.addr_accs = syn / T * (layer.cout if addressing == "paper" else 1)
        c.n_mem["input"] = FIFO_ELEMENTS
        return c
    # bcefe7d: dense pixels in (FNN ops and addressing, dense input reads); the leak once, not x T
    c.macs = dense.macs + (layer.n_out if layer.leak else 0)
    c.accs = dense.accs + th_out
    c.rd_input = dense.rd_input
    c.n_mem["input"] = layer.n_in
    c.n_mem["input_map"] = layer.n_in
    c.addr_accs = dense.addr_accs
    return c


def _memories(c: Counts, pr: Pricing, net: str) -> dict[str, tuple[str, float, float, float]]:
    """Per breakdown key: (memory kind, elements, bits, accesses) of one layer's counts under ``pr``."""
    w = pr.widths[net]
    n = c.n_mem
    src = n.get("input_is", "spike" if net == "snn" else "activation")
    out: dict[str, tuple[str, float, float, float]] = {}
    if net == "snn":
        bitmap = pr.spikes == "bitmap"
        if src == "spike":
            out["mem_input"] = ("spike", n.get("input_map" if bitmap else "input", 0), w["spike"], c.rd_input)
        else:  # the frame (direct coding)
            out["mem_input"] = ("pixel", n.get("input", 0), w["pixel"], c.rd_input)
        out["mem_potential"] = ("membrane", n.get("potential", 0), w["membrane"], c.rd_potential + c.wr_potential)
        out["mem_output"] = ("spike", n.get("output_map" if bitmap else "output", 0), w["spike"], c.wr_output)
    else:
        out["mem_input"] = (src, n.get("input", 0), w[src], c.rd_input)
        out["mem_potential"] = ("activation", 0, 0, 0.0)
        out["mem_output"] = ("activation", n.get("output", 0), w["activation"], c.wr_output)
    out["mem_weight"] = ("weight", n.get("weight", 0), w["weight"], c.rd_weight)
    out["mem_bias"] = ("bias", n.get("bias", 0), w["bias"], c.rd_bias)
    return out


MEM_KEYS = ("mem_input", "mem_weight", "mem_bias", "mem_potential", "mem_output")


def energy(c: Counts, pr: Pricing | dict | str, net: str = "snn", uses: list | None = None) -> dict[str, float]:
    """Energy breakdown in pJ of one layer's counts: ops, addressing and memory by kind.

    ``uses`` (a list) receives one ``{"kind", "model", "elements", "bits", "pJ"}`` per memory touched, for the
    range verdict.
    """
    if not isinstance(pr, Pricing):
        pr = pricing(pr)
    o = pr.ops[net]
    e = {"ops": c.macs * o["mac"] + c.accs * o["acc"],
         "addr": (c.addr_macs * o["addr_mac"] + c.addr_accs * o["addr_acc"]) if pr.addressing else 0.0}
    for key, (kind, n, bits, acc) in _memories(c, pr, net).items():
        if not pr.memory or acc == 0:
            e[key] = 0.0
            continue
        m = pr.memory[kind]
        e[key] = acc * m.access_pJ(n, bits)
        if uses is not None:
            uses.append({"kind": kind, "model": m, "elements": n, "bits": bits, "pJ": e[key]})
    e["total"] = sum(e.values())
    return e


# --------------------------------------------------------------------------- whole network
@dataclass
class LayerReport:
    name: str
    kind: str
    hybrid: bool
    snn: Counts
    ann: Counts
    snn_energy: dict
    ann_energy: dict
    theta_in: float
    theta_out: float


@dataclass
class Report:
    """Per-layer and total counts and energies (pJ per inference) of the SNN and its ANN twin."""

    table: dict
    timesteps: int
    layers: list[LayerReport]
    pricing: Pricing | None = None
    uses: dict = field(default_factory=dict)  # net -> list of memory uses (see energy())

    def total(self, net: str, key: str = "total") -> float:
        return float(sum(getattr(lr, f"{net}_energy")[key] for lr in self.layers))

    def count(self, net: str, key: str) -> float:
        c = [getattr(lr, net) for lr in self.layers]
        return float(sum(x.mem_accesses if key == "mem_accesses" else getattr(x, key) for x in c))

    @property
    def ratio(self) -> float:
        """SNN energy / ANN energy (below 1: the SNN wins)."""
        return self.total("snn") / self.total("ann")

    def accesses(self, net: str) -> dict[str, float]:
        """Memory accesses per memory kind (weight, bias, membrane, spike, activation, pixel)."""
        out: dict[str, float] = {}
        pr = self.pricing or pricing(self.table)
        for lr in self.layers:
            for kind, _, _, acc in _memories(getattr(lr, net), pr, net).values():
                if acc:
                    out[kind] = out.get(kind, 0.0) + acc
        return out

    def verdict(self, net: str) -> dict:
        """Whether this net's memory energy stays inside the memory models' ranges (:func:`memory.verdict`)."""
        if not self.uses.get(net):
            return {"inside": True, "above_share": 0.0, "below_share": 0.0, "text": "no memory term"}
        return M.verdict(self.uses[net])

    def to_dict(self) -> dict:
        keys = ("macs", "accs", "mem_accesses", "addr_macs", "addr_accs", "rd_input", "rd_weight", "rd_bias",
                "rd_potential", "wr_potential", "wr_output")
        pr = self.pricing
        return {
            "table": {k: v for k, v in self.table.items()},
            "pricing": pr.describe() if pr else None,
            "timesteps": self.timesteps,
            "energy_pJ": {"snn": self.total("snn"), "ann": self.total("ann"), "snn_over_ann": self.ratio},
            "breakdown_pJ": {net: {k: self.total(net, k) for k in self.layers[0].snn_energy} for net in ("snn", "ann")}
            if self.layers else {},
            "counts": {net: {k: self.count(net, k) for k in keys} for net in ("snn", "ann")},
            "accesses": {net: self.accesses(net) for net in ("snn", "ann")},
            "range": {net: self.verdict(net) for net in ("snn", "ann")},
            "layers": [{"name": lr.name, "kind": lr.kind, "hybrid": lr.hybrid, "theta_in": lr.theta_in,
                        "theta_out": lr.theta_out,
                        "snn": {k: v for k, v in asdict(lr.snn).items() if k != "n_mem"},
                        "ann": {k: v for k, v in asdict(lr.ann).items() if k != "n_mem"},
                        "snn_energy_pJ": lr.snn_energy, "ann_energy_pJ": lr.ann_energy} for lr in self.layers],
        }


def analyse_layers(model_layers: list[Layer], act: Activity, table: str | dict | Pricing = DEFAULT_TABLE,
                   addressing: str = "code", extra_tables: str | Path | None = None, model: Model | None = None,
                   memory_model: str | None = None, hybrid: str = "bcefe7d") -> Report:
    """Counts and energies of every layer for the activity ``act`` (``model`` gives the stored widths)."""
    if addressing not in ("code", "paper"):
        raise ValueError("addressing must be 'code' or 'paper'")
    if hybrid not in HYBRID:
        raise ValueError(f"hybrid must be one of {', '.join(HYBRID)}")
    pr = table if isinstance(table, Pricing) else pricing(table, model, memory_model, extra_tables)
    out = []
    uses: dict[str, list] = {"snn": [], "ann": []}
    for layer in model_layers:
        s, a = snn_counts(layer, act, addressing, hybrid), ann_counts(layer)
        out.append(LayerReport(layer.name, layer.kind, not layer.binary_input and layer.kind != "add", s, a,
                               energy(s, pr, "snn", uses["snn"]), energy(a, pr, "ann", uses["ann"]),
                               act.theta_in(layer) if layer.kind != "add" else 0.0, act.theta_out(layer)))
    return Report(pr.table, act.timesteps, out, pr, uses)


def analyse(model: Model, height: int, width: int, spikes: dict, frame: np.ndarray | None = None,
            table: str | dict | Pricing = DEFAULT_TABLE, addressing: str = "code", counts: dict | None = None,
            memory_model: str | None = None, extra_tables: str | Path | None = None) -> Report:
    """The report for ``model`` on one ``height`` x ``width`` frame whose run produced ``spikes`` (per neuron
    node, per step or summed); ``counts`` (per-position spike counts, the reference ``Trace.counts``) makes the
    synaptic counts exact per position (see :class:`Activity`)."""
    return analyse_layers(layers(model, height, width), activity_from_spikes(model, spikes, frame, counts), table,
                          addressing, extra_tables, model, memory_model)


def estimate(stats, model: Model, shape: tuple[int, int] | None = None, table: str | dict = DEFAULT_TABLE,
             memory_model: str | None = None) -> dict:
    """Per-frame energy estimate for ``edgespike run``: ``{"snn_pJ", "ann_pJ", "ratio", "table", "memory",
    "in_range"}`` (``in_range``: both nets' memories inside the memory model's range, see :mod:`memory`).

    ``stats`` is the runtime's ``Stats`` (attribute ``spikes``: per neuron node per step) or a reference
    ``Trace``; ``shape`` is the frame's ``(height, width)`` when ``stats`` does not carry it (``shape`` or
    ``frame_shape`` attribute).
    """
    shape = shape or getattr(stats, "shape", None) or getattr(stats, "frame_shape", None)
    if shape is None:
        raise ValueError("estimate() needs the frame shape (height, width)")
    r = analyse(model, int(shape[0]), int(shape[1]), stats.spikes, None, table,
                counts=getattr(stats, "counts", None), memory_model=memory_model)
    mem = sorted({m.name for m in r.pricing.memory.values()}) if r.pricing.memory else []
    return {"snn_pJ": r.total("snn"), "ann_pJ": r.total("ann"), "ratio": r.ratio, "table": r.table["name"],
            "memory": ",".join(mem) or "none", "in_range": r.verdict("snn")["inside"] and r.verdict("ann")["inside"]}


# --------------------------------------------------------------------------- SPIDEN's networks
def dncnn_layers(depth: int = 17, width: int = 64, size: int = 256) -> list[Layer]:
    """DnCNN as SPIDEN sizes it: conv(1->C)+IF, (depth-2) x conv(C->C)+IF, conv(C->1) read-out, 3x3, same size.

    Built without weights so that width-160 nets cost nothing to describe.
    """
    chans = [1] + [width] * (depth - 1) + [1]
    out = []
    for i in range(depth):
        last = i == depth - 1
        out.append(Layer(f"conv{i + 1}", "conv", chans[i], chans[i + 1], size, size, size, size, 3, 1,
                         (INPUT,) if i == 0 else (f"if{i}",), i != 0, None if last else f"if{i + 1}"))
    return out

