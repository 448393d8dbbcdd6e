"""The SNN's ANN twin, for real: float ONNX, ONNX QDQ int8 (onnxruntime) and TFLite int8 (written without TensorFlow).

The twin is read from the model's integers (no training-side state needed). For a DnCNN-shaped chain
``conv -> IF -> ... -> conv -> Integrator`` with direct coding, an IF neuron that sees the current ``I`` at every
step fires ``clip(round(T I / Theta), 0, T)`` times (``v0 = Theta >> 1``; ``floor`` for ``v0 = 0``), so in the
rate domain the network is the ANN

    a_0 = x / 255,   a_l = clip((W_l a_{l-1} + b_l) / Theta_l, 0, 1)   (first layer: W_1 (255 a_0) + b_1),
    r   = (m / 2**s) * T * (W_D a_{D-1} + b_D) / 255,   y = clip(a_0 - r, 0, 1),

with every activation in [0, 1] (good for int8) and ``1 / Theta`` folded into each conv per output channel. The
``quant`` variant replaces ``clip`` by SPIDEN's T-level quantised ReLU ``round(T clip(z, 0, 1)) / T``
(``b = log2(T + 1)`` bits). The layer description is the shared one of :func:`edgespike.twin.layers` (which
refuses LIF, MPRN and hard-reset neurons); this module only folds it into int8-friendly form and exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgespike.errors import UserError, need_extra
from edgespike.model import Model, ModelError
from edgespike.profile.floatconv import conv_same

OPSET = 17


@dataclass
class TwinLayer:
    """One conv of the float twin: real weights ``[O, I, k, k]``, bias ``[O]``, activation after it."""

    name: str
    weight: np.ndarray
    bias: np.ndarray
    act: str  # "relu" (clip to [0, 1]), "quant" (T-level) or "none" (the read-out)


@dataclass
class Twin:
    """The float ANN twin of a chain model (input and output: frames scaled to [0, 1], residual)."""

    layers: list[TwinLayer]
    timesteps: int

    def forward(self, frame01: np.ndarray, return_acts: bool = False):
        """Float64 numpy evaluation on one ``[H, W]`` frame in [0, 1]; optionally every activation."""
        a = frame01[..., None].astype(np.float64)
        acts = []
        for layer in self.layers:
            z = conv_same(a, layer.weight, np.float64) + layer.bias
            a = _act(z, layer.act, self.timesteps)
            acts.append(a)
        y = np.clip(frame01 - a[..., 0], 0, 1)
        return (y, acts) if return_acts else y


def _act(z: np.ndarray, kind: str, T: int) -> np.ndarray:
    if kind == "relu":
        return np.clip(z, 0, 1)
    if kind == "quant":
        return np.floor(np.clip(z, 0, 1) * T + 0.5) / T
    return z


def twin(model: Model, activation: str = "relu") -> Twin:
    """The float ANN twin of ``model`` with ``1 / theta`` folded into the convs (int8-friendly [0, 1] ranges).

    Reads the shared layer description of :func:`edgespike.twin.layers` (which refuses LIF, MPRN, hard reset and
    non-direct encoders) and accepts its DnCNN-shaped chains; ``activation`` is ``"relu"`` (clipped ReLU) or
    ``"quant"`` (T-level), the modes of :class:`edgespike.twin.Twin`.
    """
    from edgespike import twin as shared

    if activation not in ("relu", "quant"):
        raise UserError(f"unknown twin activation {activation!r}: use relu or quant")
    try:
        desc = shared.layers(model)
        terms = shared.readout(model)
    except ModelError as exc:
        raise UserError(str(exc)) from None
    ops = [d.op for d in desc]
    chain = (len(desc) >= 2 and len(desc) % 2 == 0 and ops[-2:] == ["conv", "integrator"]
             and ops[:-2] == ["conv", "rate"] * ((len(desc) - 2) // 2)
             and all(d.inputs == ((desc[i - 1].name,) if i else ("input",)) for i, d in enumerate(desc))
             and all(d.stride == 1 for d in desc if d.op == "conv")
             and len(terms) == 1 and terms[0].quantity == "membrane" and terms[0].node == desc[-1].name
             and model.decoder.residual)
    if not chain:
        raise UserError("the int8 ANN twins support DnCNN-shaped chains only (conv+IF ..., conv+Integrator, "
                        "residual membrane read-out); this model is not one")
    T = model.timesteps
    layers = []
    for i in range(0, len(desc), 2):
        conv, nxt = desc[i], desc[i + 1]
        w = conv.weight * (255.0 if i == 0 else 1.0)
        b = conv.bias.copy()
        if nxt.op == "rate":
            w = w / nxt.theta[:, None, None, None]
            b = b / nxt.theta
            if nxt.v_init == "zero":
                b = b - 0.5 / T  # the count floors instead of rounding: half a level lower
            layers.append(TwinLayer(conv.name, w, b, activation))
        else:
            g = terms[0].multiplier / 2.0**model.decoder.shift * T / 255.0
            layers.append(TwinLayer(conv.name, w * g, b * g, "none"))
    return Twin(layers, T)


# --------------------------------------------------------------------------- ONNX
def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ModuleNotFoundError as exc:
        raise need_extra("onnx", "profile") from exc
    return onnx, TensorProto, helper, numpy_helper


def to_onnx(tw: Twin, path: str | Path | None = None):
    """The float twin as an ONNX model: input ``frame`` float32 ``[1, 1, H, W]`` in [0, 1] (H, W symbolic),
    output ``denoised`` of the same shape. Returns the ``ModelProto`` (and saves it when ``path``)."""
    onnx, TensorProto, helper, numpy_helper = _onnx()
    inits, nodes = [], []
    prev = "frame"
    for layer in tw.layers:
        wn, bn, zn = f"{layer.name}.w", f"{layer.name}.b", f"{layer.name}.z"
        inits += [numpy_helper.from_array(layer.weight.astype(np.float32), wn),
                  numpy_helper.from_array(layer.bias.astype(np.float32), bn)]
        k = layer.weight.shape[2]
        nodes.append(helper.make_node("Conv", [prev, wn, bn], [zn], name=layer.name, kernel_shape=[k, k],
                                      pads=[k // 2] * 4, strides=[1, 1]))
        prev = zn
        if layer.act != "none":
            out = f"{layer.name}.a"
            nodes.append(helper.make_node("Clip", [zn, "zero", "one"], [out], name=f"{layer.name}.clip"))
            if layer.act == "quant":
                # round(T a) / T with round half up, as the IF neuron with v0 = Theta >> 1 does
                for op, ins, o in (("Mul", [out, "T"], f"{layer.name}.t"), ("Add", [f"{layer.name}.t", "half"],
                                   f"{layer.name}.h"), ("Floor", [f"{layer.name}.h"], f"{layer.name}.f"),
                                   ("Div", [f"{layer.name}.f", "T"], f"{layer.name}.q")):
                    nodes.append(helper.make_node(op, ins, [o]))
                out = f"{layer.name}.q"
            prev = out
    nodes.append(helper.make_node("Sub", ["frame", prev], ["y"], name="residual"))
    nodes.append(helper.make_node("Clip", ["y", "zero", "one"], ["denoised"], name="out.clip"))
    consts = {"zero": 0.0, "one": 1.0}
    if any(layer.act == "quant" for layer in tw.layers):
        consts.update(T=float(tw.timesteps), half=0.5)
    inits += [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    shape = [1, 1, "H", "W"]
    graph = helper.make_graph(nodes, "edgespike_twin", [helper.make_tensor_value_info("frame", TensorProto.FLOAT,
                                                                                      shape)],
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
def calibrate_ranges(tw: Twin, frames: list[np.ndarray]) -> list[tuple[float, float]]:
    """Min and max of every layer's output over the calibration frames (in [0, 1]), for TFLite's int8 scales."""
    lo = [np.inf] * len(tw.layers)
    hi = [-np.inf] * len(tw.layers)
    for f in frames:
        _, acts = tw.forward(f, return_acts=True)
        for i, a in enumerate(acts):
            lo[i], hi[i] = min(lo[i], float(a.min())), max(hi[i], float(a.max()))
    return list(zip(lo, hi, strict=True))


def _act_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 scale and zero point for [lo, hi] (0 always representable, as TFLite requires)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    zp = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
    return scale, zp


def to_tflite(tw: Twin, frames: list[np.ndarray], height: int, width: int) -> bytes:
    """An int8 .tflite flatbuffer of the twin, built with the ai-edge-litert object API (no TensorFlow).

    Input ``frame`` int8 ``[1, H, W, 1]`` = pixel - 128 (scale 1/255, zero point -128); output the same coding.
    Hidden activations: scale 1/255, zero point -128 (exactly [0, 1]: int8 saturation is the clip), or 1/T for
    ``quant`` with a fused RELU_N1_TO_1 capping at 1 (then the int8 rounding IS the T-level quantiser). Weights
    int8 per output channel, symmetric in [-127, 127]; biases int32 at scale ``s_in * s_w``. The read-out's
    int8 range comes from ``frames`` (calibration); the residual is a SUB.
    """
    try:
        from ai_edge_litert import schema_py_generated as fb
        from ai_edge_litert.tools import flatbuffer_utils
    except ModuleNotFoundError as exc:
        raise need_extra("ai-edge-litert", "profile") from exc
    ranges = calibrate_ranges(tw, frames)
    model = fb.ModelT()
    model.version = 3
    model.description = "edgespike ANN twin, int8"
    model.buffers = [fb.BufferT()]
    sg = fb.SubGraphT()
    sg.tensors, sg.operators = [], []
    codes = []

    def buffer(arr: np.ndarray | None) -> int:
        b = fb.BufferT()
        if arr is not None:
            b.data = np.frombuffer(arr.tobytes(), np.uint8).tolist()
        model.buffers.append(b)
        return len(model.buffers) - 1

    def tensor(name, shape, ttype, scale, zp, data=None, qdim=0) -> int:
        t = fb.TensorT()
        t.name, t.shape, t.type = name, list(shape), ttype
        t.buffer = buffer(data)
        q = fb.QuantizationParametersT()
        q.scale = [float(s) for s in np.atleast_1d(scale)]
        q.zeroPoint = [int(z) for z in np.atleast_1d(zp)]
        q.quantizedDimension = qdim
        t.quantization = q
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    def opcode(code: int, version: int) -> int:
        for i, c in enumerate(codes):
            if c.builtinCode == code:
                return i
        c = fb.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), version
        codes.append(c)
        return len(codes) - 1

    H, W = height, width
    x_in = tensor("frame", [1, H, W, 1], fb.TensorType.INT8, 1 / 255.0, -128)
    prev, s_prev = x_in, 1 / 255.0
    for layer, (lo, hi) in zip(tw.layers, ranges, strict=True):
        wf = layer.weight.transpose(0, 2, 3, 1)  # OIHW -> OHWI
        s_w = np.maximum(np.abs(wf).reshape(wf.shape[0], -1).max(axis=1), 1e-12) / 127.0
        wq = np.clip(np.rint(wf / s_w[:, None, None, None]), -127, 127).astype(np.int8)
        bq = np.rint(layer.bias / (s_prev * s_w)).astype(np.int64)
        bq = np.clip(bq, -(2**31), 2**31 - 1).astype(np.int32)
        o = wf.shape[0]
        wt = tensor(f"{layer.name}.w", wq.shape, fb.TensorType.INT8, s_w, np.zeros(o, int), wq, 0)
        bt = tensor(f"{layer.name}.b", [o], fb.TensorType.INT32, s_prev * s_w, np.zeros(o, int), bq, 0)
        fused = fb.ActivationFunctionType.NONE
        if layer.act == "relu":
            s_out, zp_out = 1 / 255.0, -128
        elif layer.act == "quant":
            s_out, zp_out = 1.0 / tw.timesteps, -128
            fused = fb.ActivationFunctionType.RELU_N1_TO_1
        else:
            s_out, zp_out = _act_qparams(lo, hi)
        out = tensor(f"{layer.name}.out", [1, H, W, o], fb.TensorType.INT8, s_out, zp_out)
        op = fb.OperatorT()
        op.opcodeIndex = opcode(fb.BuiltinOperator.CONV_2D, 3)
        op.inputs, op.outputs = [prev, wt, bt], [out]
        opt = fb.Conv2DOptionsT()
        opt.padding, opt.strideH, opt.strideW = fb.Padding.SAME, 1, 1
        opt.dilationHFactor = opt.dilationWFactor = 1
        opt.fusedActivationFunction = fused
        op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.Conv2DOptions, opt
        sg.operators.append(op)
        prev, s_prev = out, s_out
    y = tensor("denoised", [1, H, W, 1], fb.TensorType.INT8, 1 / 255.0, -128)
    op = fb.OperatorT()
    op.opcodeIndex = opcode(fb.BuiltinOperator.SUB, 2)
    op.inputs, op.outputs = [x_in, prev], [y]
    opt = fb.SubOptionsT()
    opt.fusedActivationFunction = fb.ActivationFunctionType.NONE
    op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.SubOptions, opt
    sg.operators.append(op)
    sg.inputs, sg.outputs, sg.name = [x_in], [y], "main"
    model.subgraphs, model.operatorCodes = [sg], codes
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


class TfliteRunner:
    """Runs a .tflite twin on uint8 frames: tflite-runtime where installed, else ai-edge-litert."""

    def __init__(self, content: bytes, threads: int = 1, xnnpack: bool = True):
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
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.label += " (XNNPACK)" if xnnpack else " (builtin kernels)"
        self.interp = Interpreter(model_content=content, num_threads=threads,
                                  experimental_op_resolver_type=resolver)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]["index"]
        self.out = self.interp.get_output_details()[0]["index"]
        self.shape = tuple(self.interp.get_input_details()[0]["shape"])

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        shape = (1,) + frame.shape + (1,)
        if shape != self.shape:
            self.interp.resize_tensor_input(self.inp, list(shape), strict=False)
            self.interp.allocate_tensors()
            self.shape = shape
        x = (frame.astype(np.int16) - 128).astype(np.int8).reshape(shape)
        self.interp.set_tensor(self.inp, x)
        self.interp.invoke()
        return (self.interp.get_tensor(self.out)[0, :, :, 0].astype(np.int16) + 128).astype(np.uint8)
