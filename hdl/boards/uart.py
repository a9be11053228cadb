"""A plain 8N1 UART (receiver and transmitter) for the board's host link.

Amaranth 0.5's standard library has no UART and amaranth-stdio (which has one) is not released on
PyPI, so these two small components are written here. The bit time is ``divisor`` clock cycles:
``round(clock_hz / baud)`` on a board, a handful of cycles in simulation.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import io, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UartRx", "UartTx", "connect_uart_pins", "divisor_for"]


def connect_uart_pins(m, platform, system) -> None:
    """Put ``system``'s ``uart_rx`` / ``uart_tx`` on the board's ``uart`` resource (the USB serial chip)."""
    uart = platform.request("uart", 0, dir="-")
    m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
    m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
    m.d.comb += [system.uart_rx.eq(rx.i), tx.o.eq(system.uart_tx)]


def divisor_for(clock_hz: float, baud: float) -> int:
    """Clock cycles per bit for ``baud`` at ``clock_hz``; ValueError when the rate error exceeds 2 %."""
    div = round(clock_hz / baud)
    if div < 4:
        raise ValueError(f"{baud:g} baud is too fast for a {clock_hz / 1e6:g} MHz clock (at least 4 cycles per bit)")
    err = abs(clock_hz / div - baud) / baud
    if err > 0.02:
        raise ValueError(f"{baud:g} baud at {clock_hz / 1e6:g} MHz is off by {100 * err:.1f} % (more than 2 %)")
    return div


def _check(divisor):
    if divisor < 4:
        raise ValueError(f"UART divisor {divisor} must be at least 4 cycles per bit")


class UartRx(wiring.Component):
    """8N1 receiver: ``rx`` (asynchronous, idle high) → ``o_stream`` of bytes.

    The line passes a two-flip-flop synchronizer. A start bit must still be low half a bit after
    its falling edge (glitches are ignored); bits are sampled in their middle. A byte whose stop
    bit is low is dropped and pulses ``framing_error``; a byte arriving while the previous one
    still waits in ``o_stream`` is dropped and pulses ``overrun``.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least 4).
    """

    rx: In(1, init=1)
    o_stream: Out(stream.Signature(8))
    framing_error: Out(1)
    overrun: Out(1)

    def __init__(self, divisor: int):
        _check(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)
        timer = Signal(range(d))
        bits = Signal(range(9))
        shreg = Signal(8)
        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"), m.If(~line):
                m.d.sync += timer.eq(d // 2 - 1)
                m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.next = "IDLE"  # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(d - 1), bits.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(bits == 8):
                    # The stop bit's middle.
                    with m.If(~line):
                        m.d.comb += self.framing_error.eq(1)
                        m.next = "BREAK"
                    with m.Else():
                        with m.If(self.o_stream.valid & ~self.o_stream.ready):
                            m.d.comb += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.o_stream.payload.eq(shreg), self.o_stream.valid.eq(1)]
                        m.next = "IDLE"
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], line)), bits.eq(bits + 1), timer.eq(d - 1)]
            # After a framing error, wait for the line to return high before the next start bit.
            with m.State("BREAK"), m.If(line):
                m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """8N1 transmitter: ``i_stream`` of bytes → ``tx`` (idle high), least significant bit first.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least 4).
    """

    i_stream: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor: int):
        _check(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        timer = Signal(range(d))
        bits = Signal(range(10))
        shreg = Signal(10, init=0x3FF)
        busy = Signal()
        m.d.comb += [self.tx.eq(shreg[0]), self.i_stream.ready.eq(~busy)]
        with m.If(~busy):  # noqa: SIM117 - the Elifs below belong to this If
            with m.If(self.i_stream.valid):
                # Stop bit, data, start bit: shifted out from the low end.
                m.d.sync += [shreg.eq(Cat(0, self.i_stream.payload, 1)), busy.eq(1), timer.eq(d - 1),
                             bits.eq(0)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Elif(bits == 9):
            m.d.sync += [busy.eq(0), shreg.eq(0x3FF)]
        with m.Else():
            m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), bits.eq(bits + 1), timer.eq(d - 1)]
        return m

