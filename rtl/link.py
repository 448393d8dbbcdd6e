"""The framed link in gateware: checks the host's frames, replays intact requests to the accelerator, frames replies.

Frames, types, NAK reasons, the IDENT layout and the CRC are defined in :mod:`edgespike.rtl.protocol` (which the
firmware re-exports). A request's payload is written to a buffer while it arrives and only replayed to
:class:`~edgespike.rtl.top.Top` once its CRC matched, so a damaged frame never reaches the accelerator; the
accelerator's reply is collected in a second buffer before it is framed, so a damaged RESULT can be sent again
(same type and sequence number) without running the tile again.

Abandoning: the host sends nothing while it waits for an answer, unless it has given up on it (its deadline, the
announced worst case of the work plus a margin, has passed). So a frame's sync bytes ``A5 5A`` arriving while a
tile runs mean the host gave up: the link pulses ``abort`` (the board resets the accelerator with it), forgets the
tile and takes the new frame at once. An abandoned weight load leaves no weights (``weights`` = 3) until the host
loads them again.

Receiver: hunt for ``A5 5A`` -> header -> payload -> CRC -> check. A header announcing an unknown type, or a
length that type cannot have, is answered NAK at once and the hunt restarts; so do a byte gap longer than
``timeout`` cycles mid-frame (dropped bytes) and a UART framing error. Bytes arriving while the link sends are
discarded: the host waits for an answer before it sends again.

The link also keeps the accelerator's byte protocol safe from a host's mistakes: it checks a tile's shape and
pixel count (``h * w`` by repeated addition, one row per cycle while the pixels arrive: no multiplier) and the
order and length of a weight load, so :class:`Top` never answers ``'E'`` or waits for bytes that do not come.

The same link serves the layer pipeline (:class:`~edgespike.rtl.top.PipelineTop`): built with its IDENT
(:func:`pipeline_ident`) and ``exact``, it takes TILEs of exactly the pipeline's region only, and without
``CAP_LOAD_WEIGHTS`` it refuses weight loads at their header and builds none of their logic.
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal
from amaranth.lib import crc, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from edgespike.rtl import protocol as P
from edgespike.rtl.params import Plan
from edgespike.rtl.top import CMD_TILE, CMD_WEIGHTS, PROTOCOL_VERSION, REPLY_TILE

# what the link does once it has sent a frame
_THEN_HUNT, _THEN_IDENT, _THEN_RUN, _THEN_RESEND, _THEN_FORWARD, _THEN_FINISH = range(6)
# where a frame's payload comes from
_SRC_REASON, _SRC_IDENT, _SRC_RESULT = range(3)
_FP_AT, _STATE_AT = 8, 30  # byte offsets of the fingerprint and the weights state in the IDENT payload


def engine_ident(plan: Plan, divisor: int, clock_hz: int = 0, gateware_version: int = P.GATEWARE_VERSION,
                 preloaded: bool = True) -> P.Ident:
    """The IDENT of the shared engine (:class:`~edgespike.rtl.top.Top`) for ``plan``.

    ``divisor`` and ``clock_hz`` are the UART's clock cycles per bit and the board clock (0 in simulation);
    ``gateware_version`` is set only by tests (to play a device with other gateware); ``preloaded`` says the
    bitstream holds the plan's weights (False for an iCE40 build, whose weight RAMs lose their initialisers: the
    link then refuses tiles until a weight load).
    """
    pixels = plan.tile[0] * plan.tile[1]
    return P.Ident(P.LINK_VERSION, gateware_version, PROTOCOL_VERSION, P.CAP_LOAD_WEIGHTS,
                   plan.fingerprint if preloaded else 0, plan.tile, plan.halo, plan.timesteps, clock_hz, divisor,
                   plan.lanes, plan.multiple, len(plan.weight_image()), pixels,
                   P.WEIGHTS_BUILT_IN if preloaded else P.WEIGHTS_NONE, plan.device_key, plan.structure,
                   plan.max_tile_cycles)


def pipeline_ident(fingerprint: int, region: tuple[int, int], halo: int, timesteps: int, multiple: int,
                   device: str, structure: int, max_cycles: int, clock_hz: int = 0, divisor: int = 0) -> P.Ident:
    """The IDENT of the layer pipeline (:class:`~edgespike.rtl.top.PipelineTop`): ``CAP_PIPELINE``, no
    ``CAP_LOAD_WEIGHTS`` (its weights are RAM initialisers, ``weights`` = built in), ``tile`` = the one region
    size it takes, ``halo`` = the model's receptive radius, ``max_tile_cycles`` = ``max_cycles``, the worst case
    of a region (computed host side from the cycle model: the gateware imports nothing from there)."""
    return P.Ident(P.LINK_VERSION, P.GATEWARE_VERSION, P.PIPELINE_PROTOCOL_VERSION, P.CAP_PIPELINE, fingerprint,
                   region, halo, timesteps, clock_hz, divisor, 0, multiple, 0, 0, P.WEIGHTS_BUILT_IN, device,
                   structure, max_cycles)


def crc_processor() -> crc.Processor:
    """The link's CRC (CRC-16/CCITT-FALSE, the same as :func:`edgespike.firmware.protocol.crc16`)."""
    return crc.catalog.CRC16_CCITT_FALSE(data_width=8).create()


class Link(wiring.Component):
    """Framing, checking and retransmission between a UART and the accelerator's byte-stream port.

    Parameters
    ----------
    ident : Ident
        What IDENT reports, and what the link checks requests against: the tile (the buffers' size and the shape
        check), size multiple, weight image bytes, capabilities (without ``CAP_LOAD_WEIGHTS`` the weight-load
        requests are refused and their logic is not built), the UART divisor (for the default ``timeout``). The
        model fingerprint and weights state are live registers for a loadable accelerator.
        :func:`engine_ident` makes it for the shared engine.
    timeout : int
        Cycles without a byte after which a partly received frame is abandoned (NAK_TIMEOUT).
    exact : bool
        A TILE must be exactly ``ident.tile`` (the layer pipeline, whose gateware is built for one region size);
        else any tile up to it whose sides are multiples of ``ident.multiple``.

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
        Pulses (registered) when a tile is handed to the accelerator (not when a stored result is sent again).
    abort : Out(1)
        Pulses when the host abandons the running tile or weight load: resets the accelerator.
    """

    def __init__(self, ident: P.Ident, timeout: int | None = None, exact: bool = False):
        self.ident = ident
        self.exact = exact
        self.loadable = bool(ident.capabilities & P.CAP_LOAD_WEIGHTS)
        self.pixels = ident.tile[0] * ident.tile[1]
        self.max_request = 2 + self.pixels
        self.max_result = 1 + self.pixels + P.COUNTER_BYTES  # the echo of the request's CRC is not stored
        self.weight_bytes = ident.weight_bytes
        self.timeout = timeout if timeout is not None else 40 * 10 * ident.divisor  # 40 byte times
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)), "rx_error": In(1),
                          "acc_tx": Out(stream.Signature(8)), "acc_rx": In(stream.Signature(8)),
                          "busy": Out(1), "nak": Out(1), "started": Out(1), "abort": Out(1)})

    def elaborate(self, platform):
        m = Module()
        th, tw = self.ident.tile
        m.submodules.req = req = Memory(shape=8, depth=self.pixels, init=[])
        m.submodules.res = res = Memory(shape=8, depth=self.max_result, init=[])
        req_w, req_r = req.write_port(), req.read_port()
        res_w, res_r = res.write_port(), res.read_port()
        m.submodules.rx_crc = rx_crc = crc_processor()
        m.submodules.tx_crc = tx_crc = crc_processor()

        # --- received frame ---
        kind, seq, length = Signal(8), Signal(8), Signal(16)
        h, w = Signal(8), Signal(8)
        fp_in = Signal(32)  # WLOAD_BEGIN's fingerprint
        got = Signal(16)  # payload bytes received
        gap = Signal(range(self.timeout + 1))  # cycles since the last byte, mid-frame
        byte = self.rx.payload
        take = self.rx.valid & self.rx.ready
        if self.exact:  # one tile shape: its pixel count is a constant
            rows, area = h, Const(self.pixels, 17)
        else:
            rows, area = Signal(8), Signal(17)  # h * w by repeated addition
            with m.If(rows != h):
                m.d.sync += [area.eq(area + w), rows.eq(rows + 1)]

        # --- what was last done, to answer a repeated request without doing it twice ---
        last_seq, last_kind, have_last, res_len = Signal(8), Signal(8), Signal(), Signal(16)
        repeat = have_last & (seq == last_seq) & (kind == last_kind)

        # --- weight load state (constants when the accelerator's weights cannot be loaded) ---
        if self.loadable:
            loading = Signal()  # 'W' sent to the accelerator, not all of the image yet
            wcount = Signal(range(self.weight_bytes + self.pixels + 1))
            model_fp = Signal(32, init=self.ident.fingerprint)
            wstate = Signal(8, init=self.ident.weights)
        else:
            loading, model_fp, wstate = Const(0, 1), Const(self.ident.fingerprint, 32), Const(self.ident.weights, 8)

        sync_half = Signal()  # RUN: the last byte was SYNC[0]
        req_crc = Signal(16)  # the CRC bytes of the last request received, echoed at the end of its RESULT

        # --- frame being sent ---
        s_kind, s_seq, s_len, s_src, then = Signal(8), Signal(8), Signal(16), Signal(2), Signal(3)
        reason = Signal(8)
        hi = Signal(3)  # header byte index
        pi = Signal(16)  # payload byte index
        header = Array([Const(P.SYNC[0], 8), Const(P.SYNC[1], 8), s_kind, s_seq, s_len[:8], s_len[8:]])
        ident_bytes: list = [Const(b, 8) for b in self.ident.encode()]
        ident_bytes[_FP_AT:_FP_AT + 4] = [model_fp[8 * i:8 * i + 8] for i in range(4)]
        ident_bytes[_STATE_AT] = wstate
        ident = Array(ident_bytes)
        sent = self.tx.valid & self.tx.ready
        m.d.comb += res_r.addr.eq(pi)
        out_byte, out_last = Signal(8), Signal()  # the payload byte being sent, and whether it is the last

        # --- accelerator side: feed a prefix ('T', h, w or 'W') and buffered bytes; collect the reply ---
        feeding, fi, fresh = Signal(), Signal(17), Signal()
        plen, npix = Signal(2), Signal(16)
        collecting, ci, want = Signal(), Signal(16), Signal(16)
        prefix = Array([Mux(kind == P.TILE, CMD_TILE, CMD_WEIGHTS), h, w])
        m.d.comb += req_r.addr.eq(fi - plen)
        acc_taken = self.acc_tx.valid & self.acc_tx.ready
        with m.If(feeding):
            with m.If(fi < plen):
                m.d.comb += [self.acc_tx.valid.eq(1), self.acc_tx.payload.eq(prefix[fi[:2]])]
            with m.Else():
                m.d.comb += [self.acc_tx.valid.eq(fresh), self.acc_tx.payload.eq(req_r.data)]
            # the RAM read is synchronous: after each byte, one cycle for the next address's data
            m.d.sync += fresh.eq(~acc_taken & (fi >= plen))
            with m.If(acc_taken):
                m.d.sync += fi.eq(fi + 1)
                with m.If(fi + 1 == plen + npix):
                    m.d.sync += feeding.eq(0)
        m.d.comb += [res_w.addr.eq(ci), res_w.data.eq(self.acc_rx.payload)]
        with m.If(collecting):
            m.d.comb += [self.acc_rx.ready.eq(1), res_w.en.eq(self.acc_rx.valid)]
            with m.If(self.acc_rx.valid):
                m.d.sync += ci.eq(ci + 1)
                # the first byte says how long the reply is: 'R' + pixels + counters, else one byte ('K')
                with m.If(((ci == 0) & (self.acc_rx.payload != REPLY_TILE)) | (ci + 1 == want)):
                    m.d.sync += collecting.eq(0)

        def feed(prefix_len, count):
            m.d.sync += [feeding.eq(1), fi.eq(0), fresh.eq(0), plen.eq(prefix_len), npix.eq(count)]

        def collect(count):
            m.d.sync += [collecting.eq(1), ci.eq(0), want.eq(count)]

        def done():  # remember the request just carried out
            m.d.sync += [have_last.eq(1), last_seq.eq(seq), last_kind.eq(kind)]

        def receive_byte():
            m.d.comb += [rx_crc.valid.eq(take), rx_crc.data.eq(byte)]
            m.d.sync += gap.eq(0)

        def send(kind_, len_, src, then_):
            m.d.sync += [s_kind.eq(kind_), s_seq.eq(seq), s_len.eq(len_), s_src.eq(src), then.eq(then_), hi.eq(0)]
            m.next = "TX_HEADER"

        def send_nak(why):
            m.d.comb += self.nak.eq(1)
            m.d.sync += reason.eq(why)
            send(P.NAK, 1, _SRC_REASON, _THEN_HUNT)

        def ack(then_):
            send(P.ACK, 0, _SRC_REASON, then_)

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
                            ok = ((kind == P.IDENT) & (n == 0)) | ((kind == P.TILE) & (
                                (n == self.max_request) if self.exact else ((n >= 3) & (n <= self.max_request))))
                            if self.loadable:
                                ok |= (((kind == P.WLOAD_END) & (n == 0)) | ((kind == P.WLOAD_BEGIN) & (n == 4))
                                       | ((kind == P.WLOAD_DATA) & (n >= 1) & (n <= self.pixels)))
                            with m.If(~ok):
                                send_nak(P.NAK_FORMAT)  # at once: no point waiting for a frame we cannot use
                            with m.Elif(n == 0):
                                m.next = "CRC0"
                            with m.Else():
                                m.next = "PAYLOAD"
                        elif state == "PAYLOAD":
                            m.d.sync += got.eq(got + 1)
                            if self.loadable:
                                with m.If(kind == P.WLOAD_BEGIN):
                                    m.d.sync += fp_in.eq((fp_in >> 8) | (byte << 24))
                            is_tile = kind == P.TILE
                            with m.If(is_tile & (got == 0)):
                                m.d.sync += h.eq(byte)
                            with m.Elif(is_tile & (got == 1)):
                                m.d.sync += w.eq(byte)
                                if not self.exact:
                                    m.d.sync += [rows.eq(0), area.eq(0)]
                            with m.Elif(is_tile | ((kind == P.WLOAD_DATA) if self.loadable else False)):
                                m.d.comb += [req_w.en.eq(1), req_w.addr.eq(Mux(is_tile, got - 2, got)),
                                             req_w.data.eq(byte)]
                            with m.If(got + 1 == length):
                                m.next = "CRC0"
                        elif state == "CRC0":
                            m.d.sync += req_crc[8:].eq(byte)
                            m.next = "CRC1"
                        else:
                            m.d.sync += req_crc[:8].eq(byte)
                            m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(~rx_crc.match_detected):
                    send_nak(P.NAK_CRC)
                with m.Elif(kind == P.IDENT):
                    m.d.sync += have_last.eq(0)  # a new host session: never replay an answer it did not ask for
                    ack(_THEN_IDENT)
                if self.loadable:
                    with m.Elif(kind == P.WLOAD_BEGIN):
                        with m.If(repeat):
                            ack(_THEN_HUNT)
                        with m.Else():
                            # a load begun while another is incomplete: the host gave up on that one; the accelerator
                            # is mid-image, so reset it and start afresh
                            m.d.comb += self.abort.eq(loading)
                            m.d.sync += [loading.eq(1), wcount.eq(0), wstate.eq(P.WEIGHTS_LOADING),
                                         model_fp.eq(fp_in)]
                            feed(1, 0)  # 'W'
                            done()
                            ack(_THEN_HUNT)
                    with m.Elif(kind == P.WLOAD_DATA):
                        with m.If(repeat):
                            ack(_THEN_HUNT)
                        with m.Elif(~loading | (wcount + length > self.weight_bytes)):
                            send_nak(P.NAK_FORMAT)
                        with m.Else():
                            m.d.sync += wcount.eq(wcount + length)
                            feed(0, length)
                            m.next = "FORWARD"
                    with m.Elif(kind == P.WLOAD_END):
                        with m.If(repeat):
                            ack(_THEN_RESEND)
                        with m.Elif(~loading | (wcount != self.weight_bytes)):
                            send_nak(P.NAK_FORMAT)  # not loading, or the image is incomplete
                        with m.Else():
                            m.d.sync += have_last.eq(0)
                            collect(1)  # 'K', once the accelerator has stored every word
                            ack(_THEN_FINISH)
                with m.Elif(rows == h):  # a TILE; h * w is ready
                    if self.exact:  # the length was checked with the header
                        shape_ok = (h == th) & (w == tw)
                    else:
                        odd = self.ident.multiple - 1  # tile sides must be multiples of the model's size multiple
                        shape_ok = ((h != 0) & (h <= th) & (w != 0) & (w <= tw) & (area + 2 == length)
                                    & ((h & odd) == 0) & ((w & odd) == 0))
                    with m.If(repeat):
                        ack(_THEN_RESEND)  # the host lost our RESULT: send it again
                    with m.Elif(~shape_ok | loading | (wstate == P.WEIGHTS_NONE)):  # no garbage images
                        send_nak(P.NAK_FORMAT)
                    with m.Else():
                        m.d.sync += [have_last.eq(0), npix.eq(area)]
                        ack(_THEN_RUN)
            if self.loadable:
                with m.State("FORWARD"):  # a weight chunk into the accelerator, then its ACK
                    m.d.comb += self.rx.ready.eq(1)
                    with m.If(~feeding):
                        done()
                        ack(_THEN_HUNT)
            with m.State("RUN"):  # a tile (or the end of a weight load) until the reply is collected
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take):
                    # the host sends only once it has given up on this work: a new frame's sync abandons it
                    m.d.sync += sync_half.eq(byte == P.SYNC[0])
                with m.If(take & sync_half & (byte == P.SYNC[1])):
                    m.d.comb += self.abort.eq(1)
                    m.d.sync += [feeding.eq(0), collecting.eq(0), gap.eq(0), sync_half.eq(0)]
                    if self.loadable:
                        with m.If(kind == P.WLOAD_END):  # the accelerator's weight load is cut short: no weights
                            m.d.sync += [loading.eq(0), wstate.eq(P.WEIGHTS_NONE), model_fp.eq(0)]
                    m.next = "TYPE"
                with m.Elif(~feeding & ~collecting):
                    if self.loadable:
                        with m.If(kind == P.WLOAD_END):
                            m.d.sync += [loading.eq(0), wstate.eq(P.WEIGHTS_LOADED)]
                    m.d.sync += res_len.eq(ci)
                    done()
                    send(P.RESULT, ci + P.ECHO_BYTES, _SRC_RESULT, _THEN_HUNT)
            with m.State("TX_HEADER"):
                m.d.comb += [self.rx.ready.eq(1), self.tx.valid.eq(1), self.tx.payload.eq(header[hi])]
                m.d.sync += sync_half.eq(0)  # RUN (always after an ACK) starts with no half sync seen
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
                m.next = "TX_LOAD"
            with m.State("TX_LOAD"):
                # the payload byte goes to a register before it is sent: the reply RAM's clock-to-output (5.8 ns
                # on ECP5) through this source mux and on into the CRC update was the SPI build's critical path
                # (71.4 MHz of 75); the extra cycle a byte is nothing beside a byte's time on the wire
                m.d.comb += self.rx.ready.eq(1)
                value = Signal(8)
                with m.Switch(s_src):
                    with m.Case(_SRC_REASON):
                        m.d.comb += value.eq(reason)
                    with m.Case(_SRC_IDENT):
                        m.d.comb += value.eq(ident[pi[:6]])
                    with m.Default():  # the reply buffer, then the request's CRC
                        m.d.comb += value.eq(Mux(pi == s_len - 2, req_crc[8:],
                                                 Mux(pi == s_len - 1, req_crc[:8], res_r.data)))
                m.d.sync += [out_byte.eq(value), out_last.eq(pi + 1 == s_len)]
                m.next = "TX_PAYLOAD"
            with m.State("TX_PAYLOAD"):
                m.d.comb += [self.rx.ready.eq(1), self.tx.valid.eq(1), self.tx.payload.eq(out_byte)]
                with m.If(sent):
                    m.d.comb += [tx_crc.valid.eq(1), tx_crc.data.eq(out_byte)]
                    m.d.sync += pi.eq(pi + 1)
                    m.next = "TX_FETCH"
                    with m.If(out_last):
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
                            send(P.RESULT, res_len + P.ECHO_BYTES, _SRC_RESULT, _THEN_HUNT)
                        with m.Case(_THEN_RUN):
                            m.d.sync += self.started.eq(1)
                            feed(3, npix)  # 'T', h, w, pixels
                            collect(npix + 1 + P.COUNTER_BYTES)
                            m.next = "RUN"
                        with m.Case(_THEN_FINISH):
                            m.next = "RUN"
        with m.If(self.started):  # a registered one-cycle pulse: no combinational glitches for a watcher
            m.d.sync += self.started.eq(0)
        m.d.comb += self.busy.eq(~fsm.ongoing("HUNT0"))
        return m
