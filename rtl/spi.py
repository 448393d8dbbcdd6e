"""An SPI peripheral (mode 0) as a lossless, flow-controlled byte pipe with ``lib.wiring`` stream ports.

The board's link to a Raspberry Pi, the SPI master: the same byte streams as the UART (:mod:`edgespike.rtl.uart`),
so the raw pipeline top and the framed link (:mod:`edgespike.rtl.link`) run over it unchanged, at the Pi's SPI clock
(about 15.6 MHz) instead of 3 Mbaud.

SPI has no idle state and no flow control of its own: the master clocks a byte out of the board whether or not the
board has one, and into it whether or not there is room. So every transaction (chip select asserted, bytes, chip
select released) starts with a header that says how many bytes move each way::

    byte       0       1       2       3       4       5 ...
    MOSI      n lo    n hi    0       0       0       data[0] ...   n: data bytes the host sends in this transaction
    MISO      0xA5    F lo    F hi    A lo    A hi    data[0] ...   F: free bytes of the receive FIFO,
                                                                     A: bytes in the transmit FIFO (both at select)

Data slot ``i`` (byte ``5 + i``) carries a host byte that the board keeps when ``i < min(n, F)`` and a board byte
when ``i < A`` (else ``IDLE``, 0x00, which the host discards). ``F`` and ``A`` are taken when chip select falls;
during the transaction only this peripheral fills the receive FIFO and empties the transmit one, so ``F`` bytes of
room and ``A`` bytes to send stay there to the end: nothing is ever dropped and the host learns, from the header it
reads back, exactly which of its bytes were kept (the first ``min(n, F)``) and which of the bytes it read are data
(the first ``min(A, length - 5)``). A host that sends more than ``F`` sends the rest again in a later transaction.
A transmit byte leaves the FIFO only when its eighth bit has been clocked out, so a transaction cut short (chip
select released mid-byte) loses neither direction's byte: the partial received byte was never kept (the host did
not see it counted) and the partial sent byte is sent again. The constant first byte (0xA5) tells the host a board
is there: an unconnected MISO reads 0x00 or 0xFF.

The pins are sampled with the system clock through two-flip-flop synchronisers, so SCLK can be at most a quarter of
the system clock: MISO changes 2-3 clock cycles after the SCLK rising edge that took the previous bit, and must be
stable by the next one (a 75 MHz clock leaves 18.75 MHz, and 1.8 cycles of pad and wire delay at the Pi's 15.6 MHz).
Chip select must lead the first SCLK edge and stay released between transactions for at least 2 clock cycles each
(the Pi's spidev: microseconds).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

MAGIC = 0xA5  # MISO's first byte of every transaction
IDLE = 0x00  # MISO in a data slot with nothing to send
HEADER = 5  # header bytes of a transaction, both ways


class SPIPeripheral(wiring.Component):
    """SPI mode-0 peripheral: bytes from MOSI to ``rx``, from ``tx`` to MISO, with the header flow control above.

    Parameters
    ----------
    rx_depth : int
        Bytes of the receive FIFO (host to board), a power of two, at most 32768; the most a transaction can
        deliver.
    tx_depth : int
        Bytes of the transmit FIFO (board to host), a power of two, at most 32768.
    ram : str
        Where the FIFOs go: ``block`` (block RAM: an ECP5 DP16KD per 2 KB, an iCE40 EBR per 512 bytes) or
        ``distributed`` (ECP5 LUT RAM, for a design whose block RAM is all taken: per KB, 128 DPR16X4 and about 520
        LUT4); yosys's ``ram_style``.

    Attributes
    ----------
    sclk, mosi : In(1)
        The master's clock (idle low) and data; MOSI is sampled on SCLK's rising edge, MSB first.
    cs : In(1)
        Chip select, asserted high (an ``amaranth-boards`` ``PinsN`` buffer inverts the active-low pin).
    miso : Out(1)
        Data to the master, changed after SCLK's rising edge.
    miso_oe : Out(1)
        Drive MISO: ``cs`` itself, unsynchronised, so the header's first bit is on the wire at once.
    rx : Out(stream.Signature(8))
        Bytes from the host.
    tx : In(stream.Signature(8))
        Bytes to the host.
    active : Out(1)
        Selected (for an activity LED).
    refused : Out(1)
        Pulses when the host sent a data byte beyond the announced free space (it is not kept; the host sends it
        again): a host bug or a host that does not wait for the header, never needed by the protocol.
    """

    def __init__(self, rx_depth: int = 2048, tx_depth: int = 2048, ram: str = "block"):
        for name, depth in (("rx_depth", rx_depth), ("tx_depth", tx_depth)):
            if not (2 <= depth <= 32768) or depth & (depth - 1):
                self._MustUse__silence = True
                raise ValueError(f"SPI {name} must be a power of two from 2 to 32768 bytes, got {depth!r}")
        if ram not in ("block", "distributed"):
            self._MustUse__silence = True
            raise ValueError(f"SPI FIFO ram must be block or distributed, got {ram!r}")
        self.rx_depth, self.tx_depth, self.ram = rx_depth, tx_depth, ram
        super().__init__({"sclk": In(1), "mosi": In(1), "cs": In(1), "miso": Out(1), "miso_oe": Out(1),
                          "rx": Out(stream.Signature(8)), "tx": In(stream.Signature(8)), "active": Out(1),
                          "refused": Out(1)})

    def elaborate(self, platform):
        m = Module()
        sclk, mosi, cs = Signal(), Signal(), Signal()
        m.submodules.sync_sclk = FFSynchronizer(self.sclk, sclk)
        m.submodules.sync_mosi = FFSynchronizer(self.mosi, mosi)
        m.submodules.sync_cs = FFSynchronizer(self.cs, cs)
        sclk_was, cs_was = Signal(), Signal()
        m.d.sync += [sclk_was.eq(sclk), cs_was.eq(cs)]
        start = cs & ~cs_was
        rise = sclk & ~sclk_was & cs & cs_was  # an edge in the select's own first cycle is out of spec
        m.d.comb += [self.miso_oe.eq(self.cs), self.active.eq(cs)]

        attrs = {"ram_style": self.ram}

        # --- receive ring: written only in a transaction's data slots below min(n, F) ---
        r = (self.rx_depth - 1).bit_length()
        m.submodules.rx_mem = rx_mem = Memory(shape=8, depth=self.rx_depth, init=[], attrs=attrs)
        rx_w, rx_r = rx_mem.write_port(), rx_mem.read_port()
        head, tail, seen = Signal(r + 1), Signal(r + 1), Signal(r + 1)  # write, read, write as the reader sees it
        rx_level = Signal(r + 1)
        m.d.comb += rx_level.eq(head - tail)
        # a byte can be read two cycles after its write, when the (non-transparent) read port shows it; writes
        # come a byte time (at least 32 cycles) apart, so the delay costs nothing
        m.d.sync += seen.eq(head)
        # the stream's byte is a register, not the RAM's output: a block RAM's clock-to-output (5.8 ns on ECP5)
        # in front of the framed link's sync hunt, abort and the pipeline's reset made 64 MHz of the 75
        out_valid, out_byte = Signal(), Signal(8)
        load = (seen != tail) & (~out_valid | self.rx.ready)
        m.d.comb += [self.rx.valid.eq(out_valid), self.rx.payload.eq(out_byte),
                     rx_r.addr.eq((tail + load)[:r]), rx_w.addr.eq(head[:r])]
        with m.If(load):
            m.d.sync += [out_byte.eq(rx_r.data), out_valid.eq(1), tail.eq(tail + 1)]
        with m.Elif(self.rx.ready):
            m.d.sync += out_valid.eq(0)
        with m.If(rx_w.en):
            m.d.sync += head.eq(head + 1)

        # --- transmit ring: bytes leave (sent pointer) only when fully clocked out ---
        k = (self.tx_depth - 1).bit_length()
        m.submodules.tx_mem = tx_mem = Memory(shape=8, depth=self.tx_depth, init=[], attrs=attrs)
        tx_w, tx_r = tx_mem.write_port(), tx_mem.read_port()
        wptr, sent = Signal(k + 1), Signal(k + 1)
        level = Signal(k + 1)
        # ready is a register: as a subtraction of the pointers it sat at the end of the pipeline's whole output
        # handshake (decoder valid, last layer, pixel RAM enable), the SPI top's critical path. A level of at most
        # depth - 2 a cycle ago leaves room now whether or not a byte came in since.
        tx_ready = Signal()
        m.d.sync += tx_ready.eq(level <= self.tx_depth - 2)
        m.d.comb += [level.eq(wptr - sent), self.tx.ready.eq(tx_ready),
                     tx_w.addr.eq(wptr[:k]), tx_w.data.eq(self.tx.payload),
                     tx_w.en.eq(self.tx.valid & self.tx.ready)]
        with m.If(self.tx.valid & self.tx.ready):
            m.d.sync += wptr.eq(wptr + 1)

        # --- the transaction ---
        bit = Signal(3)
        idx = Signal(16)  # byte of the transaction (saturates: 65535 is past every data slot that counts)
        ishift, oshift = Signal(8), Signal(8, init=MAGIC)
        n, free, avail = Signal(16), Signal(16), Signal(16)
        # What this byte and the next one are, registered from idx, n, F and A: those change only on a byte's last
        # SCLK edge or at select, and the next byte's last edge is at least 28 cycles later, so a decision one or
        # two cycles old is the right one when it is used, and 16-bit comparisons stay off the paths into the RAMs.
        slot = idx - HEADER
        nslot = idx + 1 - HEADER
        sending = Signal()  # this byte comes from the transmit ring
        keeping = Signal()  # this byte is a host data byte within n
        room = Signal()  # ... and within F
        m.d.sync += [sending.eq((idx >= HEADER) & (slot < avail)), keeping.eq((idx >= HEADER) & (slot < n)),
                     room.eq(slot < free)]
        # the byte after this one, read ahead: the ring's head once this byte has left
        m.d.comb += tx_r.addr.eq((sent + sending)[:k])
        nxt = idx + 1
        header = [MAGIC, free[:8], free[8:], avail[:8], avail[8:]]
        following = Signal(8)  # what MISO shifts out next, loaded at this byte's last rising edge
        with m.Switch(nxt):
            for i, b in enumerate(header[1:], start=1):
                with m.Case(i):
                    m.d.sync += following.eq(b)
            with m.Default():
                m.d.sync += following.eq(Mux((nxt >= HEADER) & (nslot < avail), tx_r.data, IDLE))
        m.d.comb += self.miso.eq(oshift[7])

        with m.If(~cs):
            # released (or never selected): a partial byte is forgotten, the next transaction starts afresh
            m.d.sync += [bit.eq(0), idx.eq(0), oshift.eq(MAGIC)]
        with m.If(start):
            m.d.sync += [free.eq(self.rx_depth - rx_level), avail.eq(level), n.eq(0)]
        with m.Elif(rise):
            byte = Cat(mosi, ishift[:7])
            m.d.sync += [ishift.eq(byte), bit.eq(bit + 1), oshift.eq(oshift << 1)]
            with m.If(bit == 7):
                with m.If(idx == 0):
                    m.d.sync += n[:8].eq(byte)
                with m.If(idx == 1):
                    m.d.sync += n[8:].eq(byte)
                with m.If(keeping):
                    with m.If(room):
                        m.d.comb += [rx_w.en.eq(1), rx_w.data.eq(byte)]
                    with m.Else():
                        m.d.comb += self.refused.eq(1)
                with m.If(sending):
                    m.d.sync += sent.eq(sent + 1)
                with m.If(idx != 0xFFFF):
                    m.d.sync += idx.eq(nxt)
                m.d.sync += oshift.eq(following)
        return m
