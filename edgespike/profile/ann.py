"""The SNN's ANN twin, for real: float ONNX, ONNX QDQ int8 (onnxruntime) and TFLite int8 (written without TensorFlow).

The twin is read from the model's integers (no training-side state needed). An IF neuron (soft reset) that sees
the current ``I`` at every step fires ``clip(round(T I / Theta), 0, T)`` times (``v0 = Theta >> 1``; ``floor``
for ``v0 = 0``), so in the rate domain each conv + IF pair is the ANN layer

    a = clip((W a_in + b) / Theta, 0, 1)        (a conv of the pixels sees 255 a_0, a_0 = x / 255),

and the read-out conv into the decoder's Integrator gives the residual ``r = (m / 2**s) * T * (W a + b) / 255``,
``y = clip(a_0 - r, 0, 1)``. Every activation lies in [0, 1] (good for int8) with ``1 / Theta`` folded into each
conv per output channel. The ``quant`` variant replaces ``clip`` by SPIDEN's T-level quantised ReLU
``round(T clip(z, 0, 1)) / T`` (``b = log2(T + 1)`` bits).

Supported graphs: Convs (odd k, stride 1 or 2) and ConvTransposes (stride 2) each feeding exactly one IF neuron
or the read-out Integrator; Add and Concat of spikes (or of the frame, for Concat); direct coding; one residual
``membrane`` read-out. The layer description is the shared one of :func:`edgespike.twin.layers` (which refuses
LIF, MPRN and hard-reset neurons); this module folds it into int8-friendly form and exports it. Frames whose
sides are not a multiple of ``model.size_multiple`` are edge-padded and cropped back inside the exported graphs,
exactly as the runtime does, so every file takes a frame of any size.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgespike.errors import UserError, need_extra
from edgespike.frames import pad_to_multiple
from edgespike.model import Model, ModelError
from edgespike.twin import conv2d, conv_transpose2d

OPSET = 17
FRAME = "frame"
"""Name of the twin's input (the frame in [0, 1]) in layer inputs and in the exported graphs."""


@dataclass
class TwinLayer:
    """One node of the float twin, in topological order.

    Attributes
    ----------
    name, op
        The model's node name; ``op`` is ``"conv"``, ``"conv_transpose"``, ``"add"`` or ``"concat"``.
    inputs
        Names of earlier twin layers, or :data:`FRAME` for the (padded) frame.
    weight, bias
        Convs: real weights ``[O, I, k, k]`` (model layout, also for ``conv_transpose``) and bias ``[O]``, with
        ``1 / Theta`` (or the read-out gain) folded in.
    act
        ``"relu"`` (clip to [0, 1]), ``"quant"`` (T-level) or ``"none"`` (the read-out, Add, Concat).
    stride, padding, output_padding, dilation
        Conv: stride 1 or 2, taps ``dilation`` apart, zero padding ``dilation * (k // 2)``; ConvTranspose: stride
        2 and the PyTorch paddings.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    act: str = "none"
    stride: int = 1
    padding: int = 0
    output_padding: int = 0
    dilation: int = 1


@dataclass
class Twin:
    """The float ANN twin (input and output: frames scaled to [0, 1]; ``output`` is the read-out layer).

    ``multiple`` is the model's size multiple: frames are edge-padded to it and the result cropped back.
    """

    layers: list[TwinLayer]
    timesteps: int  # levels above 0 of a quantised activation: T (rate-coded IF), 2**T - 1 (bit-plane layers)
    output: str
    multiple: int = 1

    def forward(self, frame01: np.ndarray, return_acts: bool = False):
        """Float64 numpy evaluation on one ``[H, W]`` frame in [0, 1]; optionally every layer's output
        (``{name: [C, H', W']}`` on the padded frame)."""
        h, w = frame01.shape
        x = pad_to_multiple(frame01.astype(np.float64), self.multiple)
        vals = {FRAME: x[None]}
        for layer in self.layers:
            ins = [vals[i] for i in layer.inputs]
            if layer.op == "conv":
                z = conv2d(ins[0], layer.weight, layer.stride, layer.dilation) + layer.bias[:, None, None]
            elif layer.op == "conv_transpose":
                z = conv_transpose2d(ins[0], layer.weight, layer.padding) + layer.bias[:, None, None]
            elif layer.op == "add":
                z = sum(ins)
            else:  # concat
                z = np.concatenate(ins, axis=0)
            vals[layer.name] = _act(z, layer.act, self.timesteps)
        y = np.clip(x - vals[self.output][0], 0, 1)[:h, :w]
        if return_acts:
            return y, {k: v for k, v in vals.items() if k != FRAME}
        return y


def _act(z: np.ndarray, kind: str, T: int) -> np.ndarray:
    if kind == "relu":
        return np.clip(z, 0, 1)
    if kind == "quant":
        return np.floor(np.clip(z, 0, 1) * T + 0.5) / T
    return z


def _unsupported(msg: str) -> UserError:
    return UserError(f"the int8 ANN twins cannot model this: {msg}")


def twin(model: Model, activation: str = "relu") -> Twin:
    """The float ANN twin of ``model`` with ``1 / theta`` folded into the convs (int8-friendly [0, 1] ranges).

    Reads the shared layer description of :func:`edgespike.twin.layers` (which refuses LIF, MPRN, hard reset and
    non-direct encoders); ``activation`` is ``"relu"`` (clipped ReLU) or ``"quant"`` (T-level), the modes of
    :class:`edgespike.twin.Twin`. Unsupported graphs raise :class:`UserError` with one line naming the node.
    """
    from edgespike import twin as shared

    if activation not in ("relu", "quant"):
        raise UserError(f"unknown twin activation {activation!r}: use relu or quant")
    try:
        desc = shared.layers(model)
        terms = shared.readout(model)
    except ModelError as exc:
        raise UserError(str(exc)) from None
    if not (len(terms) == 1 and terms[0].quantity == "membrane" and model.decoder.residual):
        raise _unsupported("the decoder must be one residual membrane read-out of an Integrator")
    readout = terms[0].node
    by_name = {d.name: d for d in desc}
    consumers: dict[str, list] = {}
    for d in desc:
        for i in d.inputs:
            consumers.setdefault(i, []).append(d)
    T = model.timesteps
    # Bit-plane layers: the decoded value q (0 .. 2**T - 1) is L * a with L = 2**T - 1 levels, and the read-out is
    # already the total over the steps; rate-coded IF: T + 1 levels, spike rates are a, the read-out sums T steps.
    bitplane = model.has_bitplane
    levels = 2**T - 1 if bitplane else T
    # What a twin layer reads for each model node, and per channel the factor f with SNN value = f * ANN value
    # (pixels 0..255 are 255 * a_0; spikes counted per step are the rates themselves).
    alias = {"input": FRAME}
    factor = {"input": np.array([255.0])}
    layers, output = [], None
    for d in desc:
        if d.op in ("conv", "conv_transpose"):
            nxt = consumers.get(d.name, [])
            if len(nxt) != 1 or nxt[0].op not in ("rate", "integrator"):
                raise _unsupported(f"conv {d.name!r} must feed exactly one IF neuron or the read-out Integrator")
            src = d.inputs[0]
            if src not in alias:
                raise _unsupported(f"conv {d.name!r} reads {src!r}, which is not spikes, the frame, Add or Concat")
            w = d.weight * factor[src][None, :, None, None]
            b = d.bias.copy()
            n = nxt[0]
            if n.op == "rate":
                span = levels if bitplane else 1  # ANN activation a = value / span, in [0, 1]
                w = w / (n.theta * span)[:, None, None, None]
                b = b / (n.theta * span)
                if n.v_init == "zero":
                    b = b - 0.5 / levels  # the count floors instead of rounding: half a level lower
                act = activation
            else:
                if n.name != readout:
                    raise _unsupported(f"Integrator {n.name!r} is not the decoder's read-out")
                g = terms[0].multiplier / 2.0**model.decoder.shift * (1 if bitplane else T) / 255.0
                w, b, act, output = w * g, b * g, "none", d.name
            layers.append(TwinLayer(d.name, d.op, (alias[src],), w, b, act, d.stride, d.padding, d.output_padding,
                                    d.dilation))
        elif d.op == "rate":
            src = by_name.get(d.inputs[0])
            if src is None or src.op not in ("conv", "conv_transpose"):
                raise _unsupported(f"neuron {d.name!r} must follow a conv")
            alias[d.name] = d.inputs[0]
            factor[d.name] = np.full(src.weight.shape[0], float(levels) if bitplane else 1.0)
        elif d.op == "integrator":
            if consumers.get(d.name):
                raise _unsupported(f"Integrator {d.name!r} feeds other nodes (it passes 0 to them)")
            src = by_name.get(d.inputs[0])
            if src is None or src.op not in ("conv", "conv_transpose"):
                raise _unsupported(f"Integrator {d.name!r} must follow a conv")
        else:  # add, concat
            missing = [i for i in d.inputs if i not in alias]
            if missing:
                raise _unsupported(f"{d.op} {d.name!r} reads {missing[0]!r}, which is not spikes or the frame")
            fs = [factor[i] for i in d.inputs]
            if d.op == "add" and not all(np.array_equal(f, fs[0]) for f in fs):
                raise _unsupported(f"Add {d.name!r} sums pixels and spikes (different units)")
            layers.append(TwinLayer(d.name, d.op, tuple(alias[i] for i in d.inputs)))
            alias[d.name] = d.name
            factor[d.name] = fs[0] if d.op == "add" else np.concatenate(fs)
    if output is None:  # pragma: no cover - readout() requires an Integrator, and each follows a conv (above)
        raise _unsupported("no read-out conv")
    return Twin(layers, levels, output, model.size_multiple)


# --------------------------------------------------------------------------- ONNX
def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ModuleNotFoundError as exc:
        raise need_extra("onnx", "profile") from exc
    return onnx, TensorProto, helper, numpy_helper


def to_onnx(tw: Twin, path: str | Path | None = None):
    """The float twin as an ONNX model: input ``frame`` float32 ``[1, 1, H, W]`` in [0, 1] (H, W symbolic, any
    size), output ``denoised`` of the same shape. Returns the ``ModelProto`` (and saves it when ``path``).

    Conv (strides, pads ``k // 2``), ConvTranspose (its ``[C_in, C_out, k, k]`` weight layout, strides 2, the
    PyTorch pads and output_padding, which ONNX defines the same way), Add, Concat and Clip. For a size multiple
    M > 1 the frame is edge-padded in the graph (Shape -> pads ``(-H) mod M`` bottom, ``(-W) mod M`` right ->
    Pad "edge") and the result sliced back to H x W.
    """
    onnx, TensorProto, helper, numpy_helper = _onnx()
    inits, nodes = [], []

    def const(name: str, value, dtype=np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    x = FRAME
    if tw.multiple > 1:
        const("pad.starts", [2], np.int64)
        const("pad.ends", [4], np.int64)
        const("pad.m", [tw.multiple], np.int64)
        const("pad.begin", [0] * 6, np.int64)
        nodes += [helper.make_node("Shape", [FRAME], ["pad.shape"]),
                  helper.make_node("Slice", ["pad.shape", "pad.starts", "pad.ends"], ["pad.hw"]),
                  helper.make_node("Neg", ["pad.hw"], ["pad.neg"]),
                  helper.make_node("Mod", ["pad.neg", "pad.m"], ["pad.hw_extra"]),  # integer mod: >= 0
                  helper.make_node("Concat", ["pad.begin", "pad.hw_extra"], ["pad.pads"], axis=0),
                  helper.make_node("Pad", [FRAME, "pad.pads"], ["frame.padded"], mode="edge")]
        x = "frame.padded"
    out = {FRAME: x}
    const("zero", 0.0)
    const("one", 1.0)
    if any(layer.act == "quant" for layer in tw.layers):
        const("T", float(tw.timesteps))
        const("half", 0.5)
    for layer in tw.layers:
        ins = [out[i] for i in layer.inputs]
        z = f"{layer.name}.z"
        if layer.op in ("conv", "conv_transpose"):
            k = layer.weight.shape[2]
            w = layer.weight if layer.op == "conv" else layer.weight.transpose(1, 0, 2, 3)  # ONNX: [C_in, C_out]
            wn, bn = const(f"{layer.name}.w", w), const(f"{layer.name}.b", layer.bias)
            if layer.op == "conv":
                dil = layer.dilation
                nodes.append(helper.make_node("Conv", [ins[0], wn, bn], [z], name=layer.name, kernel_shape=[k, k],
                                              pads=[dil * (k // 2)] * 4, strides=[layer.stride] * 2,
                                              dilations=[dil, dil]))
            else:
                nodes.append(helper.make_node("ConvTranspose", [ins[0], wn, bn], [z], name=layer.name,
                                              kernel_shape=[k, k], pads=[layer.padding] * 4, strides=[2, 2],
                                              output_padding=[layer.output_padding] * 2))
        elif layer.op == "add":
            acc = ins[0]
            for j, other in enumerate(ins[1:]):
                nxt = z if j == len(ins) - 2 else f"{layer.name}.add{j}"
                nodes.append(helper.make_node("Add", [acc, other], [nxt], name=f"{layer.name}.{j}"))
                acc = nxt
            if len(ins) == 1:
                nodes.append(helper.make_node("Identity", ins, [z], name=layer.name))
        else:
            nodes.append(helper.make_node("Concat", ins, [z], name=layer.name, axis=1))
        a = z
        if layer.act != "none":
            a = f"{layer.name}.a"
            nodes.append(helper.make_node("Clip", [z, "zero", "one"], [a], name=f"{layer.name}.clip"))
            if layer.act == "quant":
                # round(T a) / T with round half up, as the IF neuron with v0 = Theta >> 1 does
                n = layer.name
                for op, i, o in (("Mul", [a, "T"], f"{n}.t"), ("Add", [f"{n}.t", "half"], f"{n}.h"),
                                 ("Floor", [f"{n}.h"], f"{n}.f"), ("Div", [f"{n}.f", "T"], f"{n}.q")):
                    nodes.append(helper.make_node(op, i, [o]))
                a = f"{n}.q"
        out[layer.name] = a
    nodes.append(helper.make_node("Sub", [x, out[tw.output]], ["y"], name="residual"))
    last = "denoised" if tw.multiple == 1 else "y.clipped"
    nodes.append(helper.make_node("Clip", ["y", "zero", "one"], [last], name="out.clip"))
    if tw.multiple > 1:  # crop back to the frame's size
        const("crop.starts", [0, 0], np.int64)
        const("crop.axes", [2, 3], np.int64)
        nodes.append(helper.make_node("Slice", [last, "crop.starts", "pad.hw", "crop.axes"], ["denoised"],
                                      name="crop"))
    shape = [1, 1, "H", "W"]
    graph = helper.make_graph(nodes, "edgespike_twin",
                              [helper.make_tensor_value_info(FRAME, TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("denoised", TensorProto.FLOAT, shape)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgespike")
    m.ir_version = 8
    onnx.checker.check_model(m)
    if path is not None:
        onnx.save(m, str(path))
    return m


def quantize_onnx(float_path: str | Path, out_path: str | Path, calibration: list[np.ndarray]) -> Path:
    """ONNX QDQ int8 with onnxruntime: ``quant_pre_process`` then ``quantize_static`` (per-channel symmetric
    int8 weights, QInt8 activations, MinMax calibration on ``calibration`` frames in [0, 1])."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ModuleNotFoundError as exc:
        raise need_extra("onnxruntime", "profile") from exc

    class Reader(CalibrationDataReader):
        def __init__(self, frames):
            self.it = iter([{"frame": f[None, None].astype(np.float32)} for f in frames])

        def get_next(self):
            return next(self.it, None)

    out_path = Path(out_path)
    pre = out_path.with_suffix(".pre.onnx")
    # ONNX shape inference suffices for Conv/Clip/Sub; the symbolic pass costs ~20 s of sympy for nothing
    quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out_path), Reader(calibration), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    pre.unlink(missing_ok=True)
    return out_path


class OnnxRunner:
    """Runs an ONNX twin on uint8 frames with a fixed thread count."""

    def __init__(self, path: str | Path, threads: int = 1):
        try:
            import onnxruntime as ort
        except ModuleNotFoundError as exc:
            raise need_extra("onnxruntime", "profile") from exc
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.label = f"onnxruntime {ort.__version__} CPU"

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        x = (frame.astype(np.float32) / 255.0)[None, None]
        y = self.session.run(None, {"frame": x})[0][0, 0]
        return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- TFLite
def calibrate_ranges(tw: Twin, frames: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """Min and max of every layer's output over the calibration frames (in [0, 1]), for TFLite's int8 scales."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for f in frames:
        _, acts = tw.forward(f, return_acts=True)
        for name, a in acts.items():
            lo[name] = min(lo.get(name, np.inf), float(a.min()))
            hi[name] = max(hi.get(name, -np.inf), float(a.max()))
    return {name: (lo[name], hi[name]) for name in lo}


def _act_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 scale and zero point for [lo, hi] (0 always representable, as TFLite requires)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    zp = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
    return scale, zp


def to_tflite(tw: Twin, frames: list[np.ndarray], height: int, width: int,
              ranges: dict[str, tuple[float, float]] | None = None, int8: bool = True) -> bytes:
    """An int8 .tflite flatbuffer of the twin for ``height`` x ``width`` frames, built with the ai-edge-litert
    object API (no TensorFlow). ``int8=False`` writes the same graph in float32 (input and output frames in
    [0, 1], activations by RELU_0_TO_1 and, for ``quant``, MUL/ADD/FLOOR/MUL): it checks the layouts and paddings
    below without quantisation in the way.

    Input ``frame`` int8 ``[1, H, W, 1]`` = pixel - 128 (scale 1/255, zero point -128); output the same coding.
    Hidden activations: scale 1/255, zero point -128 (exactly [0, 1]: int8 saturation is the clip), or 1/T for
    ``quant`` with a fused RELU_N1_TO_1 capping at 1 (then the int8 rounding IS the T-level quantiser). Weights
    int8 per output channel, symmetric in [-127, 127]; biases int32 at scale ``s_in * s_w``. The read-out's
    int8 range comes from ``ranges`` (default: calibrated on ``frames``); the residual is a SUB.

    Layouts and paddings, each exact:

    * stride-1 Conv: CONV_2D SAME (TFLite pads ``(k - 1) / 2`` both sides for odd k, as edgespike does; with
      dilation d, ``d (k - 1) / 2``, also edgespike's);
    * stride-2 Conv: PAD ``k // 2`` on every side (with the zero point, i.e. real 0) then CONV_2D VALID, because
      TFLite's SAME puts the odd pixel of padding at the bottom/right where edgespike pads symmetrically;
    * ConvTranspose: TRANSPOSE_CONV SAME with output shape ``[1, 2H', 2W', C_out]``. TFLite pads its full
      ``2(H'-1) + k`` output by ``(k - 2) // 2`` at the top/left, which is edgespike's ``padding`` whenever
      ``output_padding == 0`` (then k is even and ``k - 2 * padding == 2``); a kernel with ``output_padding == 1``
      is first extended by a zero row and column at the far end (``k + 1``, ``output_padding`` 0: the same map);
    * Add: ADD (rescaling); Concat: CONCATENATION, inputs requantised to one scale first where they differ;
    * frame sizes that are not a multiple of the model's: edge rows/columns appended by SLICE + CONCATENATION,
      and the output cropped back by SLICE.

    A TRANSPOSE_CONV output shape is a constant, so the file holds one frame size: :class:`TfliteRunner` rebuilds
    it for other sizes when given a builder.
    """
    try:
        from ai_edge_litert import schema_py_generated as fb
        from ai_edge_litert.tools import flatbuffer_utils
    except ModuleNotFoundError as exc:
        raise need_extra("ai-edge-litert", "profile") from exc
    if int8 and ranges is None:
        ranges = calibrate_ranges(tw, frames)
    model = fb.ModelT()
    model.version = 3
    model.description = "edgespike ANN twin, int8"
    model.buffers = [fb.BufferT()]
    sg = fb.SubGraphT()
    sg.tensors, sg.operators = [], []
    codes = []
    I8, I32, F32 = fb.TensorType.INT8, fb.TensorType.INT32, fb.TensorType.FLOAT32

    def buffer(arr: np.ndarray | None) -> int:
        b = fb.BufferT()
        if arr is not None:
            b.data = np.frombuffer(np.ascontiguousarray(arr).tobytes(), np.uint8)
        model.buffers.append(b)
        return len(model.buffers) - 1

    def tensor(name, shape, ttype=I8, scale=None, zp=None, data=None, qdim=0) -> int:
        t = fb.TensorT()
        t.name, t.shape, t.type = name, [int(s) for s in shape], ttype
        t.buffer = buffer(data)
        if scale is not None:
            q = fb.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(scale)]
            q.zeroPoint = [int(z) for z in np.atleast_1d(zp)]
            q.quantizedDimension = qdim
            t.quantization = q
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    def int32_const(name, values) -> int:
        arr = np.asarray(values, np.int32)
        return tensor(name, arr.shape, I32, data=arr)

    def operator(code: int, version: int, inputs, outputs, opt_type=0, opt=None) -> None:
        key = (code, version)
        idx = next((i for i, c in enumerate(codes) if (c.builtinCode, c.version) == key), None)
        if idx is None:
            c = fb.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), version
            codes.append(c)
            idx = len(codes) - 1
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = idx, list(inputs), list(outputs)
        if opt is not None:
            op.builtinOptionsType, op.builtinOptions = opt_type, opt
        sg.operators.append(op)

    B = fb.BuiltinOperator
    BO = fb.BuiltinOptions
    shapes: dict[int, list[int]] = {}  # NHWC shape of every activation tensor
    qparams: dict[int, tuple[float, int]] = {}

    def act_tensor(name, shape, scale, zp) -> int:
        t = tensor(name, shape, I8, scale, zp) if int8 else tensor(name, shape, F32)
        shapes[t], qparams[t] = list(shape), (scale, zp)
        return t

    def float_ops(name, src, kind) -> int:
        """Float mode: ``clip(z, 0, 1)`` and, for ``quant``, ``floor(T z + 1/2) / T`` as separate ops."""
        chain = [(B.RELU_0_TO_1, [])]
        if kind == "quant":
            T = float(tw.timesteps)
            chain += [(B.MUL, [T]), (B.ADD, [0.5]), (B.FLOOR, []), (B.MUL, [1.0 / T])]
        for j, (code, consts) in enumerate(chain):
            y = act_tensor(f"{name}.{j}", shapes[src], 1.0, 0)
            ins = [src] + [tensor(f"{name}.{j}.c", [1], F32, data=np.array(consts, np.float32)) for _ in consts[:1]]
            opt_type, opt = {B.MUL: (BO.MulOptions, fb.MulOptionsT()), B.ADD: (BO.AddOptions, fb.AddOptionsT())}.get(
                code, (0, None))
            operator(code, 1, ins, [y], opt_type, opt)
            src = y
        return src

    def concat(name, ins, axis, scale, zp) -> int:
        shape = list(shapes[ins[0]])
        shape[axis] = sum(shapes[i][axis] for i in ins)
        out = act_tensor(name, shape, scale, zp)
        opt = fb.ConcatenationOptionsT()
        opt.axis, opt.fusedActivationFunction = axis, fb.ActivationFunctionType.NONE
        operator(B.CONCATENATION, 2, ins, [out], BO.ConcatenationOptions, opt)
        return out

    def slice_(name, src, begin, size) -> int:
        out = act_tensor(name, size, *qparams[src])
        operator(B.SLICE, 2, [src, int32_const(f"{name}.begin", begin), int32_const(f"{name}.size", size)], [out],
                 BO.SliceOptions, fb.SliceOptionsT())
        return out

    H, W, M = height, width, tw.multiple
    Hp, Wp = -(-H // M) * M, -(-W // M) * M
    x_in = act_tensor(FRAME, [1, H, W, 1], 1 / 255.0, -128)
    x = x_in
    if Hp > H:  # edge replication, exactly pad_to_multiple
        row = slice_("pad.row", x, [0, H - 1, 0, 0], [1, 1, W, 1])
        x = concat("pad.rows", [x] + [row] * (Hp - H), 1, 1 / 255.0, -128)
    if Wp > W:
        col = slice_("pad.col", x, [0, 0, W - 1, 0], [1, Hp, 1, 1])
        x = concat("pad.cols", [x] + [col] * (Wp - W), 2, 1 / 255.0, -128)
    out = {FRAME: x}
    for layer in tw.layers:
        ins = [out[i] for i in layer.inputs]
        if layer.op in ("conv", "conv_transpose"):
            src = ins[0]
            s_in = qparams[src][0]
            wf = layer.weight
            if layer.op == "conv_transpose" and layer.output_padding:
                wf = np.pad(wf, ((0, 0), (0, 0), (0, 1), (0, 1)))  # same map, output_padding 0, even kernel
            wf = wf.transpose(0, 2, 3, 1)  # OIHW -> OHWI (TRANSPOSE_CONV's filter layout too)
            o, k = wf.shape[0], wf.shape[1]
            s_w = np.maximum(np.abs(wf).reshape(o, -1).max(axis=1), 1e-12) / 127.0
            wq = np.clip(np.rint(wf / s_w[:, None, None, None]), -127, 127).astype(np.int8)
            bq = np.clip(np.rint(layer.bias / (s_in * s_w)), -(2**31), 2**31 - 1).astype(np.int32)
            if int8:
                wt = tensor(f"{layer.name}.w", wq.shape, I8, s_w, np.zeros(o, int), wq, 0)
                bt = tensor(f"{layer.name}.b", [o], I32, s_in * s_w, np.zeros(o, int), bq, 0)
            else:
                wt = tensor(f"{layer.name}.w", wf.shape, F32, data=wf.astype(np.float32))
                bt = tensor(f"{layer.name}.b", [o], F32, data=layer.bias.astype(np.float32))
            fused = fb.ActivationFunctionType.NONE
            if not int8:
                s_out, zp_out = 1.0, 0  # float: the activation ops follow the conv
            elif layer.act == "relu":
                s_out, zp_out = 1 / 255.0, -128
            elif layer.act == "quant":
                s_out, zp_out = 1.0 / tw.timesteps, -128
                fused = fb.ActivationFunctionType.RELU_N1_TO_1
            else:  # the read-out
                s_out, zp_out = _act_qparams(*ranges[layer.name])
            n, h, w, _ = shapes[src]
            if layer.op == "conv_transpose":
                y = act_tensor(f"{layer.name}.out", [n, 2 * h, 2 * w, o], s_out, zp_out)
                opt = fb.TransposeConvOptionsT()
                opt.padding, opt.strideH, opt.strideW = fb.Padding.SAME, 2, 2
                opt.fusedActivationFunction = fused
                operator(B.TRANSPOSE_CONV, 4 if fused else 3,
                         [int32_const(f"{layer.name}.shape", [n, 2 * h, 2 * w, o]), wt, src, bt], [y],
                         BO.TransposeConvOptions, opt)
            else:
                padding = fb.Padding.SAME
                if layer.stride == 2:
                    p = k // 2
                    padded = act_tensor(f"{layer.name}.pad", [n, h + 2 * p, w + 2 * p, shapes[src][3]],
                                        *qparams[src])
                    operator(B.PAD, 2, [src, int32_const(f"{layer.name}.pads", [[0, 0], [p, p], [p, p], [0, 0]])],
                             [padded], BO.PadOptions, fb.PadOptionsT())
                    src, padding = padded, fb.Padding.VALID
                y = act_tensor(f"{layer.name}.out", [n, -(-h // layer.stride), -(-w // layer.stride), o], s_out,
                               zp_out)
                opt = fb.Conv2DOptionsT()
                opt.padding, opt.strideH, opt.strideW = padding, layer.stride, layer.stride
                # SAME with dilation d pads (d * (k - 1)) / 2 both sides for odd k: edgespike's d * (k // 2)
                opt.dilationHFactor = opt.dilationWFactor = layer.dilation
                opt.fusedActivationFunction = fused
                operator(B.CONV_2D, 3, [src, wt, bt], [y], BO.Conv2DOptions, opt)
        elif layer.op == "add":  # sums of non-negative rates: [0, sum of the inputs' maxima]
            y = ins[0]
            for j, other in enumerate(ins[1:]):
                top = sum(qparams[i][0] * (127 - qparams[i][1]) for i in ins[:j + 2])
                t = act_tensor(f"{layer.name}.{j}", shapes[y], top / 255.0, -128)
                opt = fb.AddOptionsT()
                opt.fusedActivationFunction = fb.ActivationFunctionType.NONE
                operator(B.ADD, 2, [y, other], [t], BO.AddOptions, opt)
                y = t
        else:  # concat: one scale for all inputs (TFLite's int8 CONCATENATION does not rescale)
            target = qparams[ins[0]]
            if int8 and any(qparams[i] != target for i in ins):
                target = (max(qparams[i][0] * (127 - qparams[i][1]) for i in ins) / 255.0, -128)
            same = []
            for j, i in enumerate(ins):
                if int8 and qparams[i] != target:
                    r = act_tensor(f"{layer.name}.requant{j}", shapes[i], *target)
                    operator(B.QUANTIZE, 2, [i], [r])
                    i = r
                same.append(i)
            y = concat(f"{layer.name}.out", same, 3, *target)
        if not int8 and layer.act != "none":
            y = float_ops(layer.name, y, layer.act)
        out[layer.name] = y
    y = act_tensor("denoised" if (Hp, Wp) == (H, W) and int8 else "denoised.padded", [1, Hp, Wp, 1], 1 / 255.0,
                   -128)
    opt = fb.SubOptionsT()
    opt.fusedActivationFunction = fb.ActivationFunctionType.NONE
    operator(B.SUB, 2, [x, out[tw.output]], [y], BO.SubOptions, opt)
    if not int8:  # int8 saturation clips to [0, 1]; float needs the op
        y = float_ops("denoised.clip", y, "relu")
    if (Hp, Wp) != (H, W):
        y = slice_("denoised", y, [0, 0, 0, 0], [1, H, W, 1])
    sg.inputs, sg.outputs, sg.name = [x_in], [y], "main"
    model.subgraphs, model.operatorCodes = [sg], codes
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


@contextlib.contextmanager
def _without_native_info():
    """Drop TFLite's native ``INFO:`` lines ("Created TensorFlow Lite XNNPACK delegate for CPU") while inside.

    The C++ logger writes them straight to file descriptor 2, once per interpreter, and no option or variable
    turns them off; in the middle of the profile's report they look like a problem. File descriptor 2 goes to a
    temporary file meanwhile, and every other line (a warning, an error) is written back to stderr afterwards.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [ln for ln in caught.read().decode(errors="replace").splitlines() if not ln.startswith("INFO: ")]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


class TfliteRunner:
    """Runs a .tflite twin on uint8 frames: tflite-runtime where installed, else ai-edge-litert.

    ``content`` is the flatbuffer, or a builder ``(height, width) -> bytes`` (e.g. a partial of
    :func:`to_tflite`) for graphs that hold one frame size (transposed convs, in-graph padding): a frame of
    another size then gets a model built for it (kept for later frames of that size). Plain flatbuffers are
    resized instead. ``size`` builds for that ``(height, width)`` at once (so that a timed run does not).
    """

    def __init__(self, content: bytes | Callable[[int, int], bytes], threads: int = 1, xnnpack: bool = True,
                 size: tuple[int, int] | None = None):
        try:
            from tflite_runtime.interpreter import Interpreter, OpResolverType  # type: ignore[import-not-found]
            self.label = "tflite-runtime"
        except (ModuleNotFoundError, ImportError):
            try:
                from ai_edge_litert.interpreter import Interpreter, OpResolverType
            except ModuleNotFoundError as exc:
                raise need_extra("ai-edge-litert", "profile") from exc
            import ai_edge_litert

            self.label = f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '')}".strip()
        self._resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self._make = Interpreter
        self.threads = threads
        self.label += " (XNNPACK)" if xnnpack else " (builtin kernels)"
        self.builder = content if callable(content) else None
        self._built: dict[tuple[int, int], bytes] = {}
        self.shape = None
        if self.builder is None:
            self._load(content)
        elif size is not None:
            self._load(self._content(*size))

    def _content(self, h: int, w: int) -> bytes:
        if (h, w) not in self._built:
            self._built[(h, w)] = self.builder(h, w)
        return self._built[(h, w)]

    def _load(self, content: bytes) -> None:
        with _without_native_info():
            self.interp = self._make(model_content=content, num_threads=self.threads,
                                     experimental_op_resolver_type=self._resolver)
            self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]["index"]
        self.out = self.interp.get_output_details()[0]["index"]
        self.shape = tuple(self.interp.get_input_details()[0]["shape"])
        self.int8 = self.interp.get_input_details()[0]["dtype"] == np.int8

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        shape = (1,) + frame.shape + (1,)
        if shape != self.shape:
            if self.builder is not None:
                self._load(self._content(*frame.shape))
            else:
                self.interp.resize_tensor_input(self.inp, list(shape), strict=False)
                self.interp.allocate_tensors()
                self.shape = shape
        if not self.int8:  # a float32 graph (to_tflite(int8=False)): frames in [0, 1]
            self.interp.set_tensor(self.inp, (frame.astype(np.float32) / 255.0).reshape(shape))
            self.interp.invoke()
            y = self.interp.get_tensor(self.out)[0, :, :, 0]
            return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
        x = (frame.astype(np.int16) - 128).astype(np.int8).reshape(shape)
        self.interp.set_tensor(self.inp, x)
        self.interp.invoke()
        return (self.interp.get_tensor(self.out)[0, :, :, 0].astype(np.int16) + 128).astype(np.uint8)
