"""The link's frames and CRC in Python (no simulation): the same CRC as the gateware, parsing through garbage."""

from __future__ import annotations

import numpy as np
import pytest

from edgespike.firmware import Accelerator, LinkError
from edgespike.firmware import protocol as P
from edgespike.firmware.tiling import tiles


def test_crc_is_crc16_ccitt_false_and_equals_amaranths():
    crc = pytest.importorskip("amaranth.lib.crc")
    params = crc.catalog.CRC16_CCITT_FALSE(data_width=8)
    assert P.crc16(b"123456789") == 0x29B1  # the catalogue's check value
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 300):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert P.crc16(data) == params.compute(data)


def test_a_frame_followed_by_its_crc_leaves_residue_zero():
    frame = P.encode(P.TILE, 7, b"\x02\x03abcdef")
    assert frame[:2] == P.SYNC
    assert P.crc16(frame[2:]) == 0  # what the gateware's match_detected checks


def test_parser_finds_frames_in_garbage_split_anywhere():
    frames = [P.encode(P.ACK, 1), P.encode(P.RESULT, 2, bytes(range(40))), P.encode(P.NAK, 3, b"\x01")]
    damaged = bytearray(P.encode(P.RESULT, 9, b"\xa5\x5a\xa5"))
    damaged[7] ^= 0x10
    stream = b"\x00\xa5\x13" + frames[0] + bytes(damaged) + b"\xa5" + frames[1] + b"junk\xa5\x5a" + frames[2]
    parser = P.Parser(max_payload=64)
    got = []
    for i in range(0, len(stream), 5):
        got += parser.feed(stream[i:i + 5])
    assert [(f.kind, f.seq, f.payload) for f in got] == [(P.ACK, 1, b""), (P.RESULT, 2, bytes(range(40))),
                                                         (P.NAK, 3, b"\x01")]
    assert parser.bad_crc >= 1


def test_parser_does_not_wait_for_an_impossible_length():
    parser = P.Parser(max_payload=10)
    bogus = P.SYNC + bytes([P.RESULT, 0, 0xFF, 0xFF])  # a damaged length byte: 65535
    assert parser.feed(bogus + P.encode(P.ACK, 4)) == [P.Frame(P.ACK, 4, b"")]


def test_ident_round_trip_and_bad_magic():
    ident = P.Ident(1, 1, 2, P.CAP_LOAD_WEIGHTS, 0xDEADBEEF, (16, 16), 3, 4, 12_000_000, 12, 8, 2, 4321, 256,
                    P.WEIGHTS_NONE, "up5k", 0x01234567)
    assert P.Ident.decode(ident.encode()) == ident
    with pytest.raises(ValueError, match="magic"):
        P.Ident.decode(b"XXXX" + ident.encode()[4:])
    with pytest.raises(ValueError, match="bytes"):
        P.Ident.decode(ident.encode()[:-1])


def test_tiles_cover_the_frame_with_cores_that_do_not_overlap():
    for shape, tile, halo, mult in (((13, 9), (8, 8), 2, 1), ((256, 256), (16, 16), 3, 1), ((5, 40), (16, 16), 1, 1),
                                    ((64, 48), (16, 16), 4, 2), ((30, 30), (12, 12), 2, 2)):
        covered = np.zeros(shape, int)
        for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in tiles(shape, tile, halo, mult):
            assert y1 - y0 <= tile[0] and x1 - x0 <= tile[1]
            assert y0 % mult == x0 % mult == y1 % mult == x1 % mult == 0
            # the core has the full halo of context wherever it is not at the frame border
            assert y0 == max(0, cy0 - halo) and y1 == min(shape[0], cy1 + halo)
            assert x0 == max(0, cx0 - halo) and x1 == min(shape[1], cx1 + halo)
            covered[cy0:cy1, cx0:cx1] += 1
        assert (covered == 1).all()


def test_a_device_whose_tiles_cannot_hold_the_halo_is_refused_before_any_tile_runs():
    with pytest.raises(ValueError, match="16-pixel tiles leave no core inside this model's 8-pixel halo: the model "
                                         "needs tiles of at least 17 pixels"):
        next(tiles((20, 4), (16, 16), 8))


def test_a_device_that_never_answers_is_reported_not_waited_for_forever():
    pytest.importorskip("serial")
    # loop:// sends our own frames back: an IDENT is not an answer to an IDENT, so this is a silent device
    acc = Accelerator("loop://", ack_timeout=0.15, retries=2)
    with pytest.raises(LinkError, match=r"no valid answer to IDENT after 3 attempts \(no ACK, no ACK, no ACK\)"):
        acc.identify()
    assert acc.stats.timeouts == 3 and acc.stats.retries == 2
    acc.close()


def test_an_unopenable_port_is_one_clear_error():
    pytest.importorskip("serial")
    with pytest.raises(LinkError, match="cannot open /dev/does-not-exist"):
        Accelerator("/dev/does-not-exist")
