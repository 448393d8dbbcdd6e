"""The .esnn file: exact round trips and one clear line for every malformed file."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from edgespike import fileformat
from edgespike.fileformat import MAGIC, PREAMBLE, ModelFileError
from edgespike.model import (
    Add,
    Concat,
    Conv,
    ConvTranspose,
    Decoder,
    Encoder,
    Integrator,
    Model,
    Neuron,
    ReadoutTerm,
)


def every_node_model() -> Model:
    rng = np.random.default_rng(3)

    def w(o, i, k):
        return rng.integers(-127, 128, (o, i, k, k)).astype(np.int8)

    def b(o):
        return rng.integers(-50, 50, o).astype(np.int32)

    return Model(
        nodes=[
            Conv("c1", "input", w(4, 1, 3), b(4), scale=np.full(4, 0.01, np.float32)),
            Neuron("n1", "c1", np.full(4, 900, np.int32), v_init="half", mprn=(3, 4)),
            Conv("down", "n1", w(4, 4, 3), b(4), stride=2, weight_extra=w(4, 4, 3)),
            Neuron("n2", "down", np.arange(1, 5, dtype=np.int32) * 100, reset="hard", leak_shift=2),
            ConvTranspose("up", "n2", w(4, 4, 3), b(4), padding=1, output_padding=1),
            Neuron("n3", "up", np.full(4, 300, np.int32)),
            Add("sum", ("n3", "n1")),
            Concat("cat", ("sum", "n1")),
            Conv("out", "cat", w(1, 8, 1), b(1)),
            Integrator("o", "out"),
        ],
        timesteps=5,
        encoder=Encoder("rate", seed=1234),
        decoder=Decoder([ReadoutTerm("o", "membrane", np.array([77], np.int32))], shift=9, residual=True),
        membrane_bits=32,
        metadata={"task": "denoise", "noise": {"kind": "gaussian", "sigma": 25}, "command": "tools/train.py ..."},
    )


def test_round_trip_is_identical(tmp_path):
    model = every_node_model()
    path = tmp_path / "m.esnn"
    fileformat.save(model, path)
    again = fileformat.load(path)
    assert model.equals(again)
    assert again.metadata["noise"] == {"kind": "gaussian", "sigma": 25}
    # Saving what was read gives the same bytes.
    assert fileformat.to_bytes(again) == path.read_bytes()


def test_tensors_are_aligned_raw_little_endian(tmp_path):
    data = fileformat.to_bytes(every_node_model())
    _, _, _, hlen, plen, _, _ = PREAMBLE.unpack_from(data)
    header = json.loads(data[PREAMBLE.size:PREAMBLE.size + hlen])
    start = len(data) - plen
    assert start % 64 == 0
    spec = header["tensors"]["c1.weight"]
    raw = data[start + spec["offset"]:start + spec["offset"] + spec["nbytes"]]
    assert np.array_equal(np.frombuffer(raw, np.int8).reshape(spec["shape"]), every_node_model().nodes[0].weight)


def rebuild(header: dict, payload: bytes, major: int = 1) -> bytes:
    """A file with valid checksums around an arbitrary header, to reach the checks behind the CRCs."""
    head = json.dumps(header).encode()
    pre = PREAMBLE.pack(MAGIC, major, 0, len(head), len(payload), zlib.crc32(head), zlib.crc32(payload))
    body = pre + head
    return body + b"\0" * ((-len(body)) % 64) + payload


def parts(model: Model | None = None):
    data = fileformat.to_bytes(model or every_node_model())
    _, _, _, hlen, plen, _, _ = PREAMBLE.unpack_from(data)
    return json.loads(data[PREAMBLE.size:PREAMBLE.size + hlen]), data[len(data) - plen:]


def corrupt_header(edit):
    header, payload = parts()
    edit(header)
    return rebuild(header, payload)


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x40
    return bytes(b)


GOOD = fileformat.to_bytes(every_node_model())


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "not an edgespike model"),
        (GOOD[:5], "truncated"),
        (GOOD[:31], "truncated"),
        (GOOD[:200], "truncated"),
        (GOOD[:-1], "truncated"),
        (GOOD + b"\0", "unexpected bytes"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "not an edgespike model"),
        (b"hello, this is a text file that someone renamed\n" * 3, "not an edgespike model"),
        (GOOD.replace(b"\r\n", b"\n", 1), "signature damaged"),
        (_flip(GOOD, 40), "header checksum"),
        (_flip(GOOD, len(GOOD) - 3), "payload checksum"),
        (rebuild(*parts(), major=2), "format version 2.0"),
        (PREAMBLE.pack(MAGIC, 1, 0, 2**31, 0, 0, 0), "absurd"),
        (rebuild({"format": "edgespike-snn"}, b"")[:PREAMBLE.size] + b"x", "truncated"),
        (rebuild([1, 2], b""), "does not describe"),
        (rebuild({"format": "other"}, b""), "does not describe"),
        (corrupt_header(lambda h: h["tensors"]["c1.weight"].update(shape=[99, 1, 3, 3])), "does not match its"),
        (corrupt_header(lambda h: h["tensors"]["c1.weight"].update(shape=[2**40])), "invalid shape"),
        (corrupt_header(lambda h: h["tensors"]["c1.weight"].update(offset=10**9)), "outside the payload"),
        (corrupt_header(lambda h: h["tensors"]["c1.weight"].update(dtype="object")), "incomplete entry"),
        (corrupt_header(lambda h: h["nodes"][0].update(type="Pool")), "unknown node type 'Pool'"),
        (corrupt_header(lambda h: h["nodes"][0].update(groups=2)), "unknown field"),
        (corrupt_header(lambda h: h["nodes"][0].update(weight="missing")), "missing tensor"),
        (corrupt_header(lambda h: h.pop("timesteps")), "missing or mistypes field 'timesteps'"),
        (corrupt_header(lambda h: h["nodes"][1].update(reset="maybe")), "reset must be one of"),
        (corrupt_header(lambda h: h.update(membrane_bits=12)), "12-bit membrane_bits"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_files_give_one_clear_line(data, message):
    with pytest.raises(ModelFileError, match=message) as exc:
        fileformat.from_bytes(data)
    assert "\n" not in str(exc.value)


def test_garbage_after_valid_preamble_never_crashes():
    """Random bytes behind a valid preamble: always a ModelFileError, never a numpy or JSON exception."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        junk = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        head = junk[: len(junk) // 2]
        pre = PREAMBLE.pack(MAGIC, 1, 0, len(head), len(junk) - len(head), zlib.crc32(head), 0)
        with pytest.raises(ModelFileError):
            fileformat.from_bytes(pre + junk)


def test_load_names_the_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        fileformat.load(tmp_path / "none.esnn")
    with pytest.raises(ModelFileError, match="is a folder"):
        fileformat.load(tmp_path)


def test_invalid_model_is_never_written(tmp_path):
    model = every_node_model()
    model.nodes[1].threshold = np.zeros(4, np.int32)
    with pytest.raises(Exception, match="strictly positive"):
        fileformat.save(model, tmp_path / "bad.esnn")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, GOOD[:100]])
def test_cli_info_exits_2_with_one_line_and_no_traceback(tmp_path, content):
    path = tmp_path / "broken.esnn"
    path.write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "edgespike.cli", "info", str(path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("edgespike: error: ")
    assert str(path) in r.stderr


def test_cli_info_describes_a_model(tmp_path):
    path = tmp_path / "m.esnn"
    fileformat.save(every_node_model(), path)
    r = subprocess.run([sys.executable, "-m", "edgespike.cli", "info", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for text in ("T = 5 (+1 MPRN extra step)", "rate (seed 1234)", "IF-MPRN", "LIF", "hard reset", "task: denoise"):
        assert text in r.stdout


def test_preamble_layout_is_32_bytes():
    assert PREAMBLE.size == 32 and len(MAGIC) == 8
    assert struct.calcsize("<8sHHIQII") == 32


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os

    path = tmp_path / "m.esnn"
    fileformat.save(every_node_model(), path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_info_into_a_closed_pipe_is_quiet():
    """``edgespike info M | head -1``: the reader leaves early; no BrokenPipeError traceback, exit 0."""
    from pathlib import Path

    model = Path(fileformat.__file__).parent / "models" / "default_s25.esnn"
    proc = subprocess.Popen([sys.executable, "-m", "edgespike.cli", "info", str(model)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the table is written (Python flushes a piped stdout at exit)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err


# ------------------------------------------------------------------------------- header checks (issue 19)


def _with_preamble(header: dict, payload: bytes, minor: int = 0, padding: bytes | None = None) -> bytes:
    """Like :func:`rebuild`, with a chosen minor version and header padding (valid CRCs: neither covers them)."""
    head = json.dumps(header).encode()
    pre = PREAMBLE.pack(MAGIC, 1, minor, len(head), len(payload), zlib.crc32(head), zlib.crc32(payload))
    n = (-(len(pre) + len(head))) % 64
    return pre + head + (padding or b"\0" * n)[:n].ljust(n, b"\0") + payload


def test_metadata_that_is_not_a_json_object_is_one_line(tmp_path):
    header, payload = parts()
    header["metadata"] = ["a", "list"]
    path = tmp_path / "listmeta.esnn"
    path.write_bytes(_with_preamble(header, payload))
    with pytest.raises(ModelFileError, match="metadata is a JSON array, not an object"):
        fileformat.load(path)
    r = subprocess.run([sys.executable, "-m", "edgespike.cli", "info", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"edgespike: error: {path}: corrupted: the header's metadata is a JSON array")


def test_a_newer_minor_version_is_refused_and_the_current_one_read():
    header, payload = parts()
    assert fileformat.from_bytes(_with_preamble(header, payload, minor=fileformat.VERSION[1])) is not None
    newer = fileformat.VERSION[1] + 1
    with pytest.raises(ModelFileError, match=rf"format version 1\.{newer} is newer than this edgespike reads"):
        fileformat.from_bytes(_with_preamble(header, payload, minor=newer))


def test_non_zero_header_padding_is_corruption():
    header, payload = parts()
    header["metadata"]["pad"] = ""
    while (PREAMBLE.size + len(json.dumps(header).encode())) % 64 == 0:  # make sure there is padding to damage
        header["metadata"]["pad"] += "-"
    assert fileformat.from_bytes(_with_preamble(header, payload)) is not None
    with pytest.raises(ModelFileError, match="padding after the header is not zero"):
        fileformat.from_bytes(_with_preamble(header, payload, padding=b"x"))
