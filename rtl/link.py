"""The framed link in gateware: checks the host's frames, replays intact requests to the accelerator, frames replies.

Frames, types, NAK reasons and the CRC are defined in :mod:`edgespike.firmware.protocol` (also the firmware's). A
request's payload is written to a buffer while it arrives and only replayed to :class:`~edgespike.rtl.top.Top` once
its CRC matched, so a damaged frame never reaches the accelerator; the accelerator's reply is collected in a second
buffer before it is framed, so a damaged RESULT can be sent again (a TILE with the last sequence number) without
running the tile again.

Receiver: hunt for ``A5 5A`` -> header -> payload -> CRC -> check. A header announcing a type other than IDENT
or TILE, or a length no tile can have, is answered NAK at once and the hunt restarts; so do a byte gap longer than
``timeout`` cycles mid-frame (dropped bytes) and a UART framing error. Bytes arriving while the link is busy
(computing or sending) are discarded: the host waits for an answer before it sends again.

A tile's pixel count must equal ``h * w``: the product is formed by repeated addition (one row per cycle) while
the pixels arrive, so the link needs no multiplier either.
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Signal
from amaranth.lib import crc, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from edgespike.firmware import protocol as P
from edgespike.rtl.params import Plan
from edgespike.rtl.top import CMD_TILE, PROTOCOL_VERSION, REPLY_TILE

# what the link does once it has sent a frame
_THEN_HUNT, _THEN_IDENT, _THEN_RUN, _THEN_RESEND = range(4)
# where a frame's payload comes from
_SRC_REASON, _SRC_IDENT, _SRC_RESULT = range(3)


def crc_processor() -> crc.Processor:
    """The link's CRC (CRC-16/CCITT-FALSE, the same as :func:`edgespike.firmware.protocol.crc16`)."""
    return crc.catalog.CRC16_CCITT_FALSE(data_width=8).create()


def fingerprint(model) -> int:
    """The model's identity the gateware reports: CRC-32 of its ``.esnn`` serialisation (see the firmware)."""
    from edgespike.firmware.accelerator import model_fingerprint

    return model_fingerprint(model)


class Link(wiring.Component):
    """Framing, checking and retransmission between a UART and the accelerator's byte-stream port.

    Parameters
    ----------
    plan : Plan
        The accelerator's plan (tile size for the buffers and the shape check, IDENT contents).
    divisor, clock_hz : int
        Reported by IDENT (the UART's clock cycles per bit; the board clock, 0 in simulation).
    timeout : int
        Cycles without a byte after which a partly received frame is abandoned (NAK_TIMEOUT).
    gateware_version : int
        Reported by IDENT; only tests set it (to play a device with other gateware).

    Attributes
    ----------
    rx, tx : byte streams from / to the UART.
    rx_error : In(1)
        The UART's framing-error or overrun pulse.
    acc_tx, acc_rx : byte streams to / from the accelerator (:class:`~edgespike.rtl.top.Top` ``rx`` / ``tx``).
    busy : Out(1)
        Not hunting for a frame (receiving, running a tile or sending).
    nak : Out(1)
        Pulses when a NAK is queued.
    started : Out(1)
        Pulses when a tile is handed to the accelerator (not when a stored result is sent again).
    """

    def __init__(self, plan: Plan, divisor: int, clock_hz: int = 0, timeout: int | None = None,
                 gateware_version: int = P.GATEWARE_VERSION):
        self.plan = plan
        self.pixels = plan.tile[0] * plan.tile[1]
        self.max_request = 2 + self.pixels
        self.max_result = 1 + self.pixels + P.COUNTER_BYTES
        self.timeout = timeout if timeout is not None else 40 * 10 * divisor  # 40 byte times
        self.ident = P.Ident(P.LINK_VERSION, gateware_version, PROTOCOL_VERSION, 0, fingerprint(plan.model),
                             plan.tile, plan.halo, plan.timesteps, clock_hz, divisor)
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)), "rx_error": In(1),
                          "acc_tx": Out(stream.Signature(8)), "acc_rx": In(stream.Signature(8)),
                          "busy": Out(1), "nak": Out(1), "started": Out(1)})

    def elaborate(self, platform):
        m = Module()
        th, tw = self.plan.tile
        m.submodules.req = req = Memory(shape=8, depth=self.pixels, init=[])
        m.submodules.res = res = Memory(shape=8, depth=self.max_result, init=[])
        req_w, req_r = req.write_port(), req.read_port()
        res_w, res_r = res.write_port(), res.read_port()
        m.submodules.rx_crc = rx_crc = crc_processor()
        m.submodules.tx_crc = tx_crc = crc_processor()

        # --- received frame ---
        kind, seq, length = Signal(8), Signal(8), Signal(16)
        h, w = Signal(8), Signal(8)
        got = Signal(16)  # payload bytes received
        gap = Signal(range(self.timeout + 1))  # cycles since the last byte, mid-frame
        rows, area = Signal(8), Signal(17)  # h * w by repeated addition
        last_seq, have_result, res_len = Signal(8), Signal(), Signal(16)
        byte = self.rx.payload
        take = self.rx.valid & self.rx.ready

        with m.If(rows != h):
            m.d.sync += [area.eq(area + w), rows.eq(rows + 1)]

        # --- frame being sent ---
        s_kind, s_seq, s_len, s_src, then = Signal(8), Signal(8), Signal(16), Signal(2), Signal(2)
        reason = Signal(8)
        hi = Signal(3)  # header byte index
        pi = Signal(16)  # payload byte index
        header = Array([Const(P.SYNC[0], 8), Const(P.SYNC[1], 8), s_kind, s_seq, s_len[:8], s_len[8:]])
        ident = Array(Const(b, 8) for b in self.ident.encode())
        sent = self.tx.valid & self.tx.ready
        m.d.comb += res_r.addr.eq(pi)

        # --- accelerator side: feed 'T', h, w, pixels; collect the reply into `res` ---
        feeding, fi, fresh = Signal(), Signal(16), Signal()
        collecting, ci, want = Signal(), Signal(16), Signal(16)
        npix = Signal(16)
        m.d.comb += req_r.addr.eq(fi - 3)
        with m.If(feeding):
            with m.If(fi < 3):
                m.d.comb += [self.acc_tx.valid.eq(1),
                             self.acc_tx.payload.eq(Array([Const(CMD_TILE, 8), h, w])[fi[:2]])]
            with m.Else():
                m.d.comb += [self.acc_tx.valid.eq(fresh), self.acc_tx.payload.eq(req_r.data)]
            # the RAM read is synchronous: after each pixel, one cycle for the next address's data
            m.d.sync += fresh.eq(~(self.acc_tx.valid & self.acc_tx.ready) & (fi >= 3))
            with m.If(self.acc_tx.valid & self.acc_tx.ready):
                m.d.sync += fi.eq(fi + 1)
                with m.If(fi == npix + 2):
                    m.d.sync += feeding.eq(0)
        m.d.comb += [res_w.addr.eq(ci), res_w.data.eq(self.acc_rx.payload)]
        with m.If(collecting):
            m.d.comb += [self.acc_rx.ready.eq(1), res_w.en.eq(self.acc_rx.valid)]
            with m.If(self.acc_rx.valid):
                m.d.sync += ci.eq(ci + 1)
                # the first byte says how long the reply is: 'R' + pixels + counters, else one byte ('E')
                with m.If(((ci == 0) & (self.acc_rx.payload != REPLY_TILE)) | (ci + 1 == want)):
                    m.d.sync += collecting.eq(0)

        def receive_byte():
            m.d.comb += [rx_crc.valid.eq(take), rx_crc.data.eq(byte)]
            m.d.sync += gap.eq(0)

        def send_nak(why):
            m.d.comb += self.nak.eq(1)
            m.d.sync += [reason.eq(why), s_kind.eq(P.NAK), s_seq.eq(seq), s_len.eq(1), s_src.eq(_SRC_REASON),
                         then.eq(_THEN_HUNT), hi.eq(0)]
            m.next = "TX_HEADER"

        def send(kind_, len_, src, then_):
            m.d.sync += [s_kind.eq(kind_), s_seq.eq(seq), s_len.eq(len_), s_src.eq(src), then.eq(then_), hi.eq(0)]
            m.next = "TX_HEADER"

        receiving = ("TYPE", "SEQ", "LEN0", "LEN1", "PAYLOAD", "CRC0", "CRC1")
        with m.FSM() as fsm:
            with m.State("HUNT0"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take & (byte == P.SYNC[0])):
                    m.next = "HUNT1"
            with m.State("HUNT1"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take):
                    with m.If(byte == P.SYNC[1]):
                        m.d.sync += gap.eq(0)
                        m.next = "TYPE"
                    with m.Elif(byte != P.SYNC[0]):
                        m.next = "HUNT0"
            for state in receiving:
                with m.State(state):
                    m.d.comb += self.rx.ready.eq(1)
                    m.d.sync += gap.eq(gap + 1)
                    with m.If(self.rx_error):
                        send_nak(P.NAK_UART)
                    with m.Elif(gap == self.timeout):
                        send_nak(P.NAK_TIMEOUT)
                    with m.Elif(take):
                        receive_byte()
                        if state == "TYPE":
                            m.d.comb += rx_crc.start.eq(1)
                            m.d.sync += kind.eq(byte)
                            m.next = "SEQ"
                        elif state == "SEQ":
                            m.d.sync += seq.eq(byte)
                            m.next = "LEN0"
                        elif state == "LEN0":
                            m.d.sync += length[:8].eq(byte)
                            m.next = "LEN1"
                        elif state == "LEN1":
                            n = Signal(16)
                            m.d.comb += n.eq(length[:8] | (byte << 8))
                            m.d.sync += [length[8:].eq(byte), got.eq(0)]
                            ident_ok = (kind == P.IDENT) & (n == 0)
                            tile_ok = (kind == P.TILE) & (n >= 3) & (n <= self.max_request)
                            with m.If(~ident_ok & ~tile_ok):
                                send_nak(P.NAK_FORMAT)  # at once: no point waiting for a frame we cannot use
                            with m.Elif(n == 0):
                                m.next = "CRC0"
                            with m.Else():
                                m.next = "PAYLOAD"
                        elif state == "PAYLOAD":
                            m.d.sync += got.eq(got + 1)
                            with m.If(got == 0):
                                m.d.sync += h.eq(byte)
                            with m.Elif(got == 1):
                                m.d.sync += [w.eq(byte), rows.eq(0), area.eq(0)]
                            with m.Else():
                                m.d.comb += [req_w.en.eq(1), req_w.addr.eq(got - 2), req_w.data.eq(byte)]
                            with m.If(got + 1 == length):
                                m.next = "CRC0"
                        elif state == "CRC0":
                            m.next = "CRC1"
                        else:
                            m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(~rx_crc.match_detected):
                    send_nak(P.NAK_CRC)
                with m.Elif(kind == P.IDENT):
                    m.d.sync += have_result.eq(0)  # a new host session: never resend a result it did not ask for
                    send(P.ACK, 0, _SRC_REASON, _THEN_IDENT)
                with m.Elif(rows == h):  # h * w is ready
                    shape_ok = (h != 0) & (h <= th) & (w != 0) & (w <= tw) & (area + 2 == length)
                    with m.If(~shape_ok):
                        send_nak(P.NAK_FORMAT)
                    with m.Elif(have_result & (seq == last_seq)):
                        send(P.ACK, 0, _SRC_REASON, _THEN_RESEND)  # the host lost our RESULT: send it again
                    with m.Else():
                        m.d.sync += [have_result.eq(0), npix.eq(area)]
                        send(P.ACK, 0, _SRC_REASON, _THEN_RUN)
            with m.State("RUN"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(~feeding & ~collecting):
                    m.d.sync += [have_result.eq(1), last_seq.eq(seq), res_len.eq(ci)]
                    send(P.RESULT, ci, _SRC_RESULT, _THEN_HUNT)
            with m.State("TX_HEADER"):
                m.d.comb += [self.rx.ready.eq(1), self.tx.valid.eq(1), self.tx.payload.eq(header[hi])]
                with m.If(sent):
                    m.d.sync += hi.eq(hi + 1)
                    m.d.comb += [tx_crc.start.eq(hi == 2), tx_crc.valid.eq(hi >= 2), tx_crc.data.eq(header[hi])]
                    with m.If(hi == 5):
                        m.d.sync += pi.eq(0)
                        m.next = "TX_FETCH"
                        with m.If(s_len == 0):
                            m.next = "TX_CRC0"
            with m.State("TX_FETCH"):  # the result RAM's data for address pi arrives one cycle later
                m.d.comb += self.rx.ready.eq(1)
                m.next = "TX_PAYLOAD"
            with m.State("TX_PAYLOAD"):
                m.d.comb += self.rx.ready.eq(1)
                value = Signal(8)
                with m.Switch(s_src):
                    with m.Case(_SRC_REASON):
                        m.d.comb += value.eq(reason)
                    with m.Case(_SRC_IDENT):
                        m.d.comb += value.eq(ident[pi[:5]])
                    with m.Default():
                        m.d.comb += value.eq(res_r.data)
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value)]
                with m.If(sent):
                    m.d.comb += [tx_crc.valid.eq(1), tx_crc.data.eq(value)]
                    m.d.sync += pi.eq(pi + 1)
                    m.next = "TX_FETCH"
                    with m.If(pi + 1 == s_len):
                        m.next = "TX_CRC0"
            with m.State("TX_CRC0"):
                m.d.comb += [self.rx.ready.eq(1), self.tx.valid.eq(1), self.tx.payload.eq(tx_crc.crc[8:])]
                with m.If(sent):
                    m.next = "TX_CRC1"
            with m.State("TX_CRC1"):
                m.d.comb += [self.rx.ready.eq(1), self.tx.valid.eq(1), self.tx.payload.eq(tx_crc.crc[:8])]
                with m.If(sent):
                    m.next = "HUNT0"
                    with m.Switch(then):
                        with m.Case(_THEN_IDENT):
                            send(P.IDENT_REPLY, P.IDENT_LAYOUT.size, _SRC_IDENT, _THEN_HUNT)
                        with m.Case(_THEN_RESEND):
                            send(P.RESULT, res_len, _SRC_RESULT, _THEN_HUNT)
                        with m.Case(_THEN_RUN):
                            m.d.sync += self.started.eq(1)
                            m.d.sync += [feeding.eq(1), fi.eq(0), fresh.eq(0), collecting.eq(1), ci.eq(0),
                                         want.eq(npix + 1 + P.COUNTER_BYTES)]
                            m.next = "RUN"
        with m.If(self.started):  # a registered one-cycle pulse: no combinational glitches for a watcher
            m.d.sync += self.started.eq(0)
        m.d.comb += self.busy.eq(~fsm.ongoing("HUNT0"))
        return m
