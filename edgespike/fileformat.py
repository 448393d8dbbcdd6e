"""The ``.esnn`` model file: read and write, never pickle.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"\\x89ESN\\r\\n\\x1a\\n"   (PNG-style: catches text-mode and 7-bit mangling)
    8       2     format major version (readers refuse a newer major)
    10      2     format minor version (additive changes only)
    12      4     header length H in bytes (UTF-8 JSON)
    16      8     payload length P in bytes
    24      4     CRC-32 of the header bytes
    28      4     CRC-32 of the payload bytes
    32      H     header: JSON object (graph, tensor table, metadata)
    ...           zero padding to a multiple of 64
    S       P     payload: raw tensors, each at a 64-byte aligned offset relative to S

The file ends exactly at ``S + P``. Tensors are C-ordered raw arrays of the dtype named in the tensor table, so a
reader can memory-map them. Every failure to read raises :class:`ModelFileError` with one line that names the file
and what is wrong.

A model set (:mod:`edgespike.modelset`, format 1.2) uses the same container: its header has ``"format":
"edgespike-snn-set"``, the noise estimator, the bounds and a member table, and its payload holds each member's whole
``.esnn`` file (64-byte aligned), checked as a file of its own when the set loads. :func:`load` returns one network
and refuses a set with a message naming its members; :func:`load_any` returns either.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from edgespike.files import write_atomic
from edgespike.model import (
    NODE_TYPES,
    Decoder,
    Encoder,
    Model,
    ModelError,
    ReadoutTerm,
)

MAGIC = b"\x89ESN\r\n\x1a\n"
VERSION = (1, 3)
"""The newest version this edgespike reads and writes. 1.1 added bit-plane layers (``BitPlaneNeuron`` and the ``uwd``
and ``bias`` fields of ``Integrator``); a model that uses none of them is written as 1.0, byte for byte as before.
1.2 added model sets; a single network is still written as 1.0 or 1.1. 1.3 added dilated convolutions (``Conv``'s
``dilation``); only a model with one is written as 1.3."""
SET_VERSION = (1, 2)
"""The version a model set is written with (an older reader then says "upgrade edgespike"), or its newest member's."""
NEW_IN_1_1 = {("Integrator", "uwd"): False, ("Integrator", "bias"): None}
"""Fields added in 1.1, with the default a 1.0 file implies; written only when they differ from it."""
NEW_IN_1_3 = {("Conv", "dilation"): 1}
"""Fields added in 1.3, likewise."""
NEW_FIELDS = {**NEW_IN_1_1, **NEW_IN_1_3}
PREAMBLE = struct.Struct("<8sHHIQII")
ALIGN = 64
MAX_HEADER = 16 * 2**20
MAX_TENSOR_BYTES = 1 * 2**30
DTYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "float32": np.float32}
ARRAY_FIELDS = {"weight", "bias", "weight_extra", "scale", "threshold"}
TUPLE_FIELDS = {"inputs", "mprn"}


class ModelFileError(ModelError):
    """A model file that cannot be read: truncated, corrupted, foreign, too new, or inconsistent."""


class ModelSetError(ModelFileError):
    """A model set given where one network is needed (the accelerator, an exporter): the message names the members."""


def _pad(n: int) -> int:
    return (-n) % ALIGN


def model_to_header_and_tensors(model: Model) -> tuple[dict, dict[str, np.ndarray]]:
    """Split a model into its JSON header (without the tensor table) and its named tensors."""
    tensors: dict[str, np.ndarray] = {}
    nodes = []
    for node in model.nodes:
        entry: dict = {"type": type(node).__name__}
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            key = (type(node).__name__, f.name)
            if key in NEW_FIELDS and _is_default(value, NEW_FIELDS[key]):
                continue
            if f.name in ARRAY_FIELDS:
                if value is not None:
                    key = f"{node.name}.{f.name}"
                    tensors[key] = np.ascontiguousarray(value)
                    value = key
            elif f.name in TUPLE_FIELDS and value is not None:
                value = list(value)
            entry[f.name] = value
        nodes.append(entry)
    terms = []
    for i, term in enumerate(model.decoder.terms):
        key = f"decoder.{i}.multiplier"
        tensors[key] = np.ascontiguousarray(term.multiplier)
        terms.append({"node": term.node, "quantity": term.quantity, "multiplier": key})
    header = {
        "format": "edgespike-snn",
        "timesteps": model.timesteps,
        "membrane_bits": model.membrane_bits,
        "encoder": {"kind": model.encoder.kind, "seed": model.encoder.seed},
        "decoder": {"terms": terms, "shift": model.decoder.shift, "residual": model.decoder.residual},
        "nodes": nodes,
        "metadata": model.metadata,
    }
    return header, tensors


def _is_default(value, default) -> bool:
    return value is None if default is None else (not isinstance(value, np.ndarray) and value == default)


def format_version(model: Model) -> tuple[int, int]:
    """The oldest format version that can hold ``model``: 1.0, 1.1 with bit-plane layers, 1.3 with a dilated
    convolution."""
    if any(not _is_default(getattr(n, f, d), d) for (t, f), d in NEW_IN_1_3.items() for n in model.nodes
           if type(n).__name__ == t):
        return (1, 3)
    return (1, 1) if model.has_bitplane else (1, 0)


def to_bytes(model: Model) -> bytes:
    """Serialise ``model`` (checked first: an invalid model is never written)."""
    from edgespike.validate import analyse

    analyse(model)
    header, tensors = model_to_header_and_tensors(model)
    table, chunks, offset = {}, [], 0
    for key, arr in tensors.items():
        if arr.dtype.name not in DTYPES:
            raise ModelError(f"tensor {key!r}: dtype {arr.dtype.name} cannot be stored")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        table[key] = {"dtype": arr.dtype.name, "shape": list(arr.shape), "offset": offset, "nbytes": len(raw)}
        chunks.append(raw + b"\0" * _pad(len(raw)))
        offset += len(raw) + _pad(len(raw))
    header["tensors"] = table
    return _container(header, b"".join(chunks), format_version(model))


def _container(header: dict, payload: bytes, version: tuple[int, int]) -> bytes:
    """Preamble, JSON header, padding and payload: the bytes of a file."""
    try:
        head = json.dumps(header, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ModelError(f"metadata cannot be stored as JSON: {exc}") from None
    pre = PREAMBLE.pack(MAGIC, *version, len(head), len(payload), zlib.crc32(head), zlib.crc32(payload))
    body = pre + head
    return body + b"\0" * _pad(len(body)) + payload


def set_to_bytes(mset) -> bytes:
    """Serialise a :class:`~edgespike.modelset.ModelSet`: each member's file, 64-byte aligned, in one container."""
    table, chunks, offset = [], [], 0
    for m in mset.members:
        raw = to_bytes(m.model)
        table.append({"name": m.name, "offset": offset, "nbytes": len(raw)})
        chunks.append(raw + b"\0" * _pad(len(raw)))
        offset += len(raw) + _pad(len(raw))
    header = {"format": "edgespike-snn-set", "estimator": mset.estimator, "bounds": list(mset.bounds),
              "bands": list(mset.bands), "members": table, "metadata": mset.metadata}
    newest = max([SET_VERSION] + [format_version(m.model) for m in mset.members])  # a reader that reads them all
    return _container(header, b"".join(chunks), newest)


def save(model, path: str | os.PathLike) -> None:
    """Write a :class:`Model` or a :class:`~edgespike.modelset.ModelSet` atomically (a temporary file renamed into
    place): an interrupted save never leaves half a model."""
    from edgespike.modelset import ModelSet

    write_atomic(path, set_to_bytes(model) if isinstance(model, ModelSet) else to_bytes(model))


def load(path: str | os.PathLike) -> Model:
    """Read, verify and analyse a file of one network. Raises :class:`ModelFileError` (one line) on any fault, and
    :class:`ModelSetError` for a model set (use :func:`load_any` where a set is welcome)."""
    model = load_any(path)
    if not isinstance(model, Model):
        from edgespike.models import DEFAULTS

        shipped = [m.name for m in model.members if m.name in DEFAULTS]  # the shipped set's members are shipped too
        hint = f" (shipped by name: {', '.join(shipped)})" if shipped else ""
        raise ModelSetError(f"{path}: {model.describe()}; this command runs one network: give it one member's file "
                            f"instead{hint}")
    return model


def load_any(path: str | os.PathLike):
    """Read, verify and analyse a model file: a :class:`Model`, or a :class:`~edgespike.modelset.ModelSet`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, not a model file") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        return any_from_bytes(data)
    except ModelError as exc:
        raise ModelFileError(f"{path}: {exc}") from None


def from_bytes(data: bytes) -> Model:
    """The network in a file's bytes (a set is refused: :func:`any_from_bytes` takes both)."""
    model = any_from_bytes(data)
    if not isinstance(model, Model):
        raise ModelSetError(f"{model.describe()}; one network is needed here")
    return model


def any_from_bytes(data: bytes):
    """The :class:`Model` or :class:`~edgespike.modelset.ModelSet` in a file's bytes, verified and analysed."""
    from edgespike.validate import analyse

    if len(data) < PREAMBLE.size:
        if MAGIC.startswith(data[:8]) and data:
            raise ModelFileError(f"truncated: {len(data)} bytes, shorter than the {PREAMBLE.size}-byte preamble")
        raise ModelFileError("not an edgespike model file (too short, no ESNN signature)")
    magic, major, minor, hlen, plen, hcrc, pcrc = PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        if magic[1:4] == b"ESN":
            raise ModelFileError("signature damaged (was the file transferred in text mode?)")
        raise ModelFileError("not an edgespike model file (no ESNN signature)")
    if major != VERSION[0]:
        raise ModelFileError(
            f"format version {major}.{minor} is not readable by this edgespike (reads {VERSION[0]}.x): "
            "upgrade edgespike or re-export the model"
        )
    if minor > VERSION[1]:  # a newer minor adds fields this reader would silently ignore: refuse, do not guess
        raise ModelFileError(f"format version {major}.{minor} is newer than this edgespike reads ({VERSION[0]}."
                             f"{VERSION[1]}): upgrade edgespike")
    if hlen > MAX_HEADER:
        raise ModelFileError(f"corrupted: header length {hlen} is absurd")
    start = PREAMBLE.size + hlen
    start += _pad(start)
    if len(data) < start + plen:
        raise ModelFileError(f"truncated: {len(data)} bytes, the header announces {start + plen}")
    if len(data) > start + plen:
        raise ModelFileError(f"corrupted: {len(data) - start - plen} unexpected bytes after the payload")
    head = data[PREAMBLE.size:PREAMBLE.size + hlen]
    if zlib.crc32(head) != hcrc:
        raise ModelFileError("corrupted: header checksum mismatch")
    if any(data[PREAMBLE.size + hlen:start]):  # the padding is outside both checksums: it must be the zeros written
        raise ModelFileError("corrupted: the padding after the header is not zero")
    payload = memoryview(data)[start:start + plen]
    if zlib.crc32(payload) != pcrc:
        raise ModelFileError("corrupted: payload checksum mismatch")
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"corrupted: header is not valid JSON ({exc})") from None
    if isinstance(header, dict) and header.get("format") == "edgespike-snn-set":
        return _build_set(header, payload)
    if not isinstance(header, dict) or header.get("format") != "edgespike-snn":
        raise ModelFileError("header does not describe an edgespike-snn model")
    metadata = header.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):  # info and the commands read it as key: value
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}[type(metadata)]
        raise ModelFileError(f"corrupted: the header's metadata is a JSON {kind}, not an object; re-export the "
                             "model with metadata as a dict")
    tensors = _read_tensors(header.get("tensors"), payload)
    model = _build_model(header, tensors)
    try:
        analyse(model)
    except ModelFileError:
        raise
    except ModelError as exc:
        raise ModelFileError(str(exc)) from None
    return model


def _build_set(header: dict, payload: memoryview):
    from edgespike.modelset import Member, ModelSet

    table = header.get("members")
    if not isinstance(table, list) or not table:
        raise ModelFileError("model set: no member table")
    members = []
    for i, spec in enumerate(table):
        try:
            name, offset, nbytes = spec["name"], spec["offset"], spec["nbytes"]
        except (KeyError, TypeError):
            raise ModelFileError(f"model set: member #{i}: incomplete entry in the member table") from None
        if not (isinstance(offset, int) and isinstance(nbytes, int) and 0 <= offset and offset + nbytes <= len(payload)
                and offset % ALIGN == 0):
            raise ModelFileError(f"model set: member #{i} lies outside the payload")
        try:
            member = any_from_bytes(bytes(payload[offset:offset + nbytes]))
        except ModelError as exc:
            raise ModelFileError(f"model set: member #{i} ({name}): {exc}") from None
        if not isinstance(member, Model):
            raise ModelFileError(f"model set: member #{i} is itself a set; sets do not nest")
        members.append(Member(name, member))
    metadata = header.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ModelFileError("corrupted: the set's metadata is not a JSON object")
    try:
        return ModelSet(tuple(members), tuple(header.get("bounds") or ()), tuple(header.get("bands") or ()),
                        header.get("estimator", ""), metadata)
    except (ModelError, TypeError) as exc:
        raise ModelFileError(f"model set: {exc}") from None


def _read_tensors(table, payload: memoryview) -> dict[str, np.ndarray]:
    if not isinstance(table, dict):
        raise ModelFileError("header has no tensor table")
    out = {}
    for key, spec in table.items():
        try:
            dtype = DTYPES[spec["dtype"]]
            shape = tuple(spec["shape"])
            offset, nbytes = spec["offset"], spec["nbytes"]
        except (KeyError, TypeError):
            raise ModelFileError(f"tensor {key!r}: incomplete entry in the tensor table") from None
        if not all(isinstance(d, int) and 0 <= d <= 2**20 for d in shape) or len(shape) > 4:
            raise ModelFileError(f"tensor {key!r}: invalid shape {spec['shape']!r}")
        if not (isinstance(offset, int) and isinstance(nbytes, int) and offset >= 0 and nbytes >= 0):
            raise ModelFileError(f"tensor {key!r}: invalid offset or size")
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if expected != nbytes or nbytes > MAX_TENSOR_BYTES:
            raise ModelFileError(f"tensor {key!r}: shape {list(shape)} does not match its {nbytes} bytes")
        if offset % ALIGN or offset + nbytes > len(payload):
            raise ModelFileError(f"tensor {key!r}: lies outside the payload")
        arr = np.frombuffer(payload, dtype=np.dtype(dtype).newbyteorder("<"), count=nbytes // np.dtype(dtype).itemsize,
                            offset=offset)
        out[key] = arr.astype(dtype, copy=False).reshape(shape)
    return out


def _build_model(header: dict, tensors: dict[str, np.ndarray]) -> Model:
    def tensor(ref, where):
        if ref is None:
            return None
        if not isinstance(ref, str) or ref not in tensors:
            raise ModelFileError(f"{where}: refers to a missing tensor {ref!r}")
        return tensors[ref]

    nodes = []
    raw_nodes = header.get("nodes")
    if not isinstance(raw_nodes, list):
        raise ModelFileError("header has no node list")
    for i, entry in enumerate(raw_nodes):
        if not isinstance(entry, dict):
            raise ModelFileError(f"node #{i}: not an object")
        cls = NODE_TYPES.get(entry.get("type"))
        name = entry.get("name", f"#{i}")
        if cls is None:
            raise ModelFileError(f"node {name!r}: unknown node type {entry.get('type')!r} (a newer edgespike?)")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(entry) - set(fields) - {"type"}
        if unknown:
            raise ModelFileError(f"node {name!r}: unknown field(s) {sorted(unknown)}")
        kwargs = {}
        for fname, value in entry.items():
            if fname == "type":
                continue
            if fname in ARRAY_FIELDS:
                value = tensor(value, f"node {name!r} field {fname!r}")
            elif fname in TUPLE_FIELDS and value is not None:
                if not isinstance(value, list):
                    raise ModelFileError(f"node {name!r}: field {fname!r} must be a list")
                value = tuple(value)
            kwargs[fname] = value
        try:
            nodes.append(cls(**kwargs))
        except TypeError as exc:
            raise ModelFileError(f"node {name!r}: {exc}") from None
    try:
        enc = header["encoder"]
        dec = header["decoder"]
        terms = [
            ReadoutTerm(t["node"], t["quantity"], tensor(t["multiplier"], "decoder term"))
            for t in dec["terms"]
        ]
        return Model(
            nodes=nodes,
            timesteps=header["timesteps"],
            encoder=Encoder(kind=enc["kind"], seed=enc.get("seed", 0)),
            decoder=Decoder(terms=terms, shift=dec["shift"], residual=dec["residual"]),
            membrane_bits=header["membrane_bits"],
            metadata=header.get("metadata") or {},
        )
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"header is missing or mistypes field {exc}") from None
