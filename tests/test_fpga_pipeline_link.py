"""The layer pipeline behind the framed link (issue 17): a pipeline board in Amaranth's simulator behind a socket.

:func:`edgespike.fpga.sim.pipeline_server` runs :class:`edgespike.rtl.board.PipelineBoard` (UART, link, the layer
pipeline of a bit-plane model) bit by bit through its serial pins; the host is :class:`edgespike.firmware.Accelerator`.
The model is a 2-layer, 2-channel bit-plane model (halo 2) and the regions 6x8 pixels, about 7k cycles each, so a
region takes seconds here. The fault tests mirror ``tests/test_fpga_link_faults.py`` and use its fault injectors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("amaranth")
pytest.importorskip("serial")

from test_fpga_link import serve_sim  # noqa: E402
from test_fpga_link_faults import AckThenSilence, RandomFaults, raw_exchange  # noqa: E402

from edgespike import runtime  # noqa: E402
from edgespike.firmware import Accelerator, DeviceMismatch, LinkError  # noqa: E402
from edgespike.firmware import accelerator as accelerator_module  # noqa: E402
from edgespike.firmware import protocol as P  # noqa: E402
from edgespike.fpga.examples import demo_image  # noqa: E402
from edgespike.fpga.pipeline import layer_specs, pipeline_cycles, receptive_radius  # noqa: E402
from edgespike.fpga.pipelink import region_ident, worst_region_cycles  # noqa: E402
from edgespike.fpga.pipesim import default_folds  # noqa: E402
from edgespike.fpga.sim import pipeline_server  # noqa: E402
from edgespike.model import BitPlaneNeuron, Conv  # noqa: E402
from edgespike.rtl.pipeline import LayerPipeline  # noqa: E402
from edgespike.testing import bitplane_dncnn  # noqa: E402

pytestmark = pytest.mark.hw

MODEL = bitplane_dncnn(depth=2, width=2, T=8, seed=3)  # unsaturated outputs on the demo images (74 levels)
REGION = (6, 8)
TIMEOUTS = {"ack_timeout": 30.0, "result_timeout": 120.0}


@pytest.fixture(scope="module")
def server():
    srv = pipeline_server(MODEL, REGION).start()
    yield srv
    srv.close()


def test_ident_says_pipeline_and_a_region_equals_the_runtime(server):
    """IDENT: a pipeline (CAP_PIPELINE), no weight loading (built in), the model's fingerprint, the region, the
    halo and the worst case of a region; a region through the board equals the runtime, within that worst case."""
    with Accelerator(server.url, **TIMEOUTS) as acc:
        ident = acc.check_model(MODEL)
        specs = layer_specs(MODEL)
        assert ident.capabilities == P.CAP_PIPELINE and acc.pipeline
        assert ident.weights == P.WEIGHTS_BUILT_IN and ident.weight_bytes == 0
        assert ident.fingerprint == accelerator_module.model_fingerprint(MODEL)
        assert ident.tile == REGION and ident.halo == receptive_radius(specs) == 2
        assert ident.max_tile_cycles == worst_region_cycles(specs, default_folds(specs), *REGION,
                                                            LayerPipeline.LATENCY)
        x = demo_image(*REGION, seed=0)
        res = acc.run_tile(x)
        assert np.array_equal(res.out, runtime.denoise(MODEL, x))
        assert 0 < res.cycles <= ident.max_tile_cycles and res.spikes == res.sops == 0
        with pytest.raises(ValueError, match="regions of exactly 6x8"):
            acc.run_tile(x[:, :6])


def test_frames_wider_taller_and_odd_are_cut_into_regions_equal_to_the_runtime(server):
    """Vertical stripes (6x12: two regions overlapping by the halo), bands and stripes (8x11: rows cut too, the
    last region moved back to the frame's edge): the stitched frame equals the runtime bit for bit."""
    with Accelerator(server.url, **TIMEOUTS) as acc:
        acc.check_model(MODEL)
        for shape, regions in (((6, 12), 2), ((8, 11), 4)):
            x = demo_image(*shape, seed=sum(shape))
            out, results = acc.denoise(x)
            assert len(results) == regions
            assert np.array_equal(out, runtime.denoise(MODEL, x)), shape


def test_refusals_in_one_line(server):
    """A frame smaller than a region, another model, a weight load and a TILE of another shape (raw): refused."""
    with Accelerator(server.url, **TIMEOUTS) as acc:
        acc.check_model(MODEL)
        with pytest.raises(DeviceMismatch, match=r"regions of exactly 6x8 pixels do not fit a 6x6 frame"):
            acc.denoise(demo_image(6, 6))
        other = bitplane_dncnn(depth=2, width=2, T=8, seed=5)
        with pytest.raises(DeviceMismatch, match="build one for it"):
            acc.check_model(other)
        with pytest.raises(DeviceMismatch, match="built into its bitstream"):
            acc.load_weights(other)
    server_sock, exchange = raw_exchange(server.url)
    try:
        nak = lambda fs: any(f.kind in (P.NAK, P.ACK) for f in fs)  # noqa: E731
        # a weight load; a TILE of another size (refused at its header); one of the region's size but shape 2x24
        for frame in (P.encode(P.WLOAD_BEGIN, 3, bytes(4)), P.encode(P.TILE, 4, bytes([6, 6]) + bytes(36)),
                      P.encode(P.TILE, 5, bytes([2, 24]) + bytes(48))):
            got = exchange(frame, nak)
            assert [(f.kind, f.payload) for f in got] == [(P.NAK, bytes([P.NAK_FORMAT]))]
    finally:
        server_sock.close()


def test_the_announced_worst_case_bounds_a_region_where_everything_fires():
    """Every layer's codes at 2**T - 1 (zero weights, a bias far above the threshold): the board's cycles lie
    between the cycle model's worst case of the pipeline alone and the announced budget (that plus the feed)."""
    model = bitplane_dncnn(depth=2, width=2, T=8, seed=3)
    for node in model.nodes:
        if isinstance(node, Conv):
            node.weight[...] = 0
            node.bias[...] = 1000
        if isinstance(node, BitPlaneNeuron):
            node.threshold[...] = 1
    specs = layer_specs(model)
    folds = default_folds(specs)
    ident = region_ident(model, specs, folds, REGION, LayerPipeline.LATENCY, "sim")
    codes, size = [], REGION
    for spec in specs:
        codes.append(np.full((spec.c_in, *size), 255, np.int64))
        size = spec.out_size(*size)
    srv = pipeline_server(model, REGION).start()
    try:
        with Accelerator(srv.url, **TIMEOUTS) as acc:
            acc.check_model(model)
            res = acc.run_tile(np.full(REGION, 255, np.uint8))
        assert pipeline_cycles(specs, codes, folds) <= res.cycles <= ident.max_tile_cycles
        assert np.array_equal(res.out, runtime.denoise(model, np.full(REGION, 255, np.uint8)))
    finally:
        srv.close()


def test_the_host_waits_the_announced_cost_of_a_region(monkeypatch):
    """With a clock, the host waits for a region's RESULT exactly the pipeline's announced worst case plus the
    RESULT's transfer and the margin, then asks again (a device that ACKs and stays silent, fake clock)."""
    clock = [0.0]
    monkeypatch.setattr(accelerator_module.time, "monotonic", lambda: clock[0])
    specs = layer_specs(MODEL)
    ident = region_ident(MODEL, specs, default_folds(specs), REGION, LayerPipeline.LATENCY, "sim")
    ident = dataclasses.replace(ident, clock_hz=12_000_000, divisor=4, max_tile_cycles=24_000_000)  # 2 s of work
    port = AckThenSilence(ident, clock)
    acc = Accelerator(port, ack_timeout=0.5, result_timeout=10_000.0, retries=1)
    acc.check_model(MODEL)
    deadline = acc.result_deadline(P.TILE)
    transfer = (P.OVERHEAD + 1 + 48 + P.COUNTER_BYTES + P.ECHO_BYTES) * 10 / acc.baud
    assert deadline == pytest.approx((2.0 + transfer) * (1 + acc.MARGIN_FRACTION) + acc.MARGIN_S)
    with pytest.raises(LinkError, match="no RESULT, no RESULT"):
        acc.run_tile(demo_image(*REGION))
    sent = [t for t, kind in port.writes if kind == P.TILE]
    gaps = np.diff(sent + [clock[0]])
    assert len(sent) == 2 and np.all(gaps >= deadline) and np.all(gaps <= deadline + 0.1)


def test_random_faults_both_ways_never_give_a_wrong_image(server):
    """Flips, drops, insertions and forged frames (valid CRC) in both directions during an IDENT and three
    regions: every region the host returns equals the runtime (a LinkError would fail the test; never a wrong
    image)."""
    regions = [demo_image(*REGION, seed=s) for s in range(3)]
    port = RandomFaults(server.url, seed=17, to_device=4, to_host=4, frames=6, host_bytes=250)
    # a lost answer costs a timeout (the simulated board announces no clock): a 6x8 region is about 10k cycles
    # with its UART bytes, under 1.2 s here with the other core busy; the timeouts leave 10x that
    with Accelerator(port, retries=8, ack_timeout=8.0, result_timeout=15.0) as acc:
        acc.check_model(MODEL)
        for x in regions:
            assert np.array_equal(acc.run_tile(x).out, runtime.denoise(MODEL, x))
    assert port.faults == {f"{d} {k}": 1 for d in ("to device", "to host") for k in RandomFaults.KINDS}, port.faults


def test_sequence_numbers_wrap_around(server):
    """Sequence numbers 255, 0, 1: each answer is its own region's, none replayed after the wrap."""
    regions = [demo_image(*REGION, seed=20 + s) for s in range(3)]
    with Accelerator(server.url, **TIMEOUTS) as acc:
        acc.check_model(MODEL)
        acc._seq = 254
        for x in regions:
            assert np.array_equal(acc.run_tile(x).out, runtime.denoise(MODEL, x))
        assert acc._seq == 1 and acc.stats.retries == 0


def test_the_board_abandons_a_region_the_host_gave_up_on():
    """A region is ACKed and running; the host gives up and sends IDENT: the board resets the pipeline mid-region,
    answers the IDENT (never the abandoned region) and the next region is computed right from a clean pipeline."""
    srv = pipeline_server(MODEL, REGION).start()
    sock, exchange = raw_exchange(srv.url)
    try:
        x = demo_image(*REGION, seed=3)
        got = exchange(P.encode(P.TILE, 7, bytes(REGION) + x.tobytes()), lambda fs: any(f.kind == P.ACK for f in fs))
        assert [f.kind for f in got] == [P.ACK]
        got = exchange(P.encode(P.IDENT, 8), lambda fs: any(f.kind == P.IDENT_REPLY for f in fs))
        assert [f.kind for f in got] == [P.ACK, P.IDENT_REPLY] and all(f.seq == 8 for f in got)
        assert srv.sim.tiles_run == 1
        sock.close()
        with Accelerator(srv.url, **TIMEOUTS) as acc:
            acc.check_model(MODEL)
            assert np.array_equal(acc.run_tile(x).out, runtime.denoise(MODEL, x))
    finally:
        sock.close()
        srv.close()


def test_run_backend_fpga_and_serve_sim_with_a_bitplane_model(server, tmp_path, capsys):
    """``edgespike run --backend fpga --port socket://...`` on a pipeline board equals the CPU runtime (without
    ``--model``: the shipped model of the board's fingerprint, or one line), and ``edgespike fpga serve-sim`` of a
    bit-plane model serves a pipeline board the firmware identifies."""
    from edgespike.errors import UserError
    from edgespike.fileformat import load, save
    from edgespike.fpga.host import shipped_model_of
    from edgespike.live.backends import open_backend

    path = tmp_path / "m.esnn"
    save(MODEL, path)
    # without --model a pipeline board names its model by fingerprint: a shipped one is found, another refused
    small = "edgespike/models/small_bitplane_3x4_s25.esnn"
    assert shipped_model_of(accelerator_module.model_fingerprint(load(small))).endswith(small)
    with pytest.raises(UserError, match="none of the shipped models: give the model file"):
        open_backend("fpga", None, port=server.url)
    # the CLI leaves the choice to the board too (it used to ask every board for the shared engine's if-s25)
    from edgespike.cli import main

    capsys.readouterr()
    rc = main(["run", "--backend", "fpga", "--port", server.url, "--frames", "1", "-q", "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "none of the shipped models: give the model file" in err and "Traceback" not in err
    x = demo_image(6, 13, seed=9)  # three stripes, the last moved back to the frame's edge
    board = open_backend("fpga", str(path), port=server.url)
    try:
        assert board.label.startswith(f"fpga ({server.url} at 3000000 baud, layer pipeline, regions 6x8")
        out, stats = board.denoise(x)
        assert np.array_equal(out, runtime.denoise(MODEL, x)) and stats["synaptic_ops"] is None
    finally:
        board.close()
    with serve_sim("--model", str(path), "--tile", "6x8") as (port, lines):
        assert "layer pipeline" in "".join(lines) and f"socket://127.0.0.1:{port}" in lines[-1], "".join(lines)
        with Accelerator(f"socket://127.0.0.1:{port}", **TIMEOUTS) as acc:
            assert acc.check_model(MODEL).tile == REGION and acc.pipeline


def test_fpga_build_chooses_the_framed_top_where_it_fits():
    """``fpga build``'s top for the shipped small model on the iCEBreaker: its default plan (480 rows of 256
    columns or so) keeps the raw UART top, said with the reason; a 64x64 plan gets the framed link (no tools run)."""
    from edgespike.fileformat import load
    from edgespike.fpga.build import planning_sample
    from edgespike.fpga.pipeline import plan_pipeline
    from edgespike.fpga.pipelink import board_top
    from edgespike.fpga.pipesim import build_pipeline
    from edgespike.models import resolve
    from edgespike.rtl.board import PipelineLinkTop
    from edgespike.rtl.pipeline import PipelineBoardTop

    model = load(resolve("edgespike/models/small_bitplane_3x4_s25.esnn"))
    sample = planning_sample(model)
    for frame, kind, said in (((480, 640), PipelineBoardTop, "raw UART top (no framed link: regions of 480x"),
                              ((64, 64), PipelineLinkTop, "framed link: regions of exactly 64x64, halo 8")):
        plan = plan_pipeline(model, "up5k", frame, sample)
        region = (frame[0], min(plan.stripe, frame[1]))
        dut, specs, _ = build_pipeline(model, *region, plan.folds)
        top, which = board_top("icebreaker", model, dut, specs, plan, region, 3_000_000, 4, None)
        assert isinstance(top, kind) and which.startswith(said), which
        if kind is PipelineLinkTop:
            assert top.ident.fingerprint == accelerator_module.model_fingerprint(model)
        for obj in (top, dut, *dut.engines):  # made to be chosen, not elaborated: no UnusedElaboratable
            obj._MustUse__used = True


def test_regions_cover_the_frame_once_with_the_halo_and_refuse_what_cannot_be_exact():
    """``tiling.regions``: every region has exactly the board's size and lies in the frame, the cores tile the
    frame exactly once, each core has ``halo`` pixels of context inside its region except at the frame's border,
    and origins stay multiples of the size multiple; a frame smaller than a region, or a region without a core
    inside the halo, is refused."""
    from edgespike.firmware.tiling import regions

    for shape, size, halo in (((6, 8), (6, 8), 2), ((8, 11), (6, 8), 2), ((480, 640), (64, 64), 8),
                              ((20, 40), (18, 20), 8), ((100, 66), (40, 40), 18)):
        even = all(v % 2 == 0 for v in (*shape, *size, halo))  # a half-resolution model's frame, size and halo
        seen = np.zeros(shape, np.int64)
        for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in regions(shape, size, halo):
            assert (y1 - y0, x1 - x0) == size and y0 >= 0 and x0 >= 0 and y1 <= shape[0] and x1 <= shape[1]
            assert not even or y0 % 2 == x0 % 2 == 0
            seen[cy0:cy1, cx0:cx1] += 1
            for lo, hi, c_lo, c_hi, n in ((y0, y1, cy0, cy1, shape[0]), (x0, x1, cx0, cx1, shape[1])):
                assert lo <= c_lo < c_hi <= hi
                assert c_lo - lo >= halo or lo == 0
                assert hi - c_hi >= halo or hi == n
        assert np.all(seen == 1), (shape, size)
    with pytest.raises(ValueError, match="do not fit a 6x20 frame"):
        list(regions((6, 20), (8, 8), 2))
    with pytest.raises(ValueError, match="no core inside"):
        list(regions((10, 20), (4, 8), 2))
