"""The sequential NPU core: a PicoRV32 running the Tessera ISA in firmware, for FPGAs too small for
:class:`~tessera.hdl.npu.NpuCore` (the iCE40 UP5K: 5,280 LUT4).

:class:`SeqCore` has ``NpuCore``'s ports, so :class:`~tessera.hdl.npu.Npu` wraps it with the same
CSR block, reset between runs and memory port, and every host path (the RTL backend, the board
link) drives it unchanged. Inside, one in-order CPU executes one instruction at a time: the firmware
(``firmware/seq.c``) is the emulator's fetch, dispatch and ``exec_<op>`` in C, so results, error
codes and error pcs are the emulator's (tests/hdl/test_seq_firmware.py compares them on the host,
tests/rtl/test_seq.py on this core). CYCLES is this core's; STALL_* stay 0.

The CPU sees (``tessera.hdl.seq.firmware.MEMORY_MAP``)::

    0x0000_0000  ROM   firmware, block RAM initialised with it
    0x1000_0000  RAM   on-chip buffers, run state and stack (kept between runs: the CPU is reset,
                       the RAM is not)
    0x2000_0000  DRAM  external memory through the memory port, one 32-bit beat per access
    0x3000_0000  IO    IoReg registers

PicoRV32 comes from the ``pythondata-cpu-picorv32`` package (its Verilog, unchanged).
"""


from pathlib import Path

from amaranth.hdl import ClockSignal, Const, Instance, Module, Mux, ResetSignal, Signal, signed, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from tessera.arch import NpuConfig
from tessera.isa import ErrorCode, Unit

from ..common import ADDR_BITS, MemPortSignature, log2
from .firmware import DOT4_OPCODE, MEMORY_MAP, IoReg, build_target

__all__ = ["DOT4_OPCODE", "Dot4", "IoReg", "SeqCore", "picorv32_source", "ram_bytes", "ROM_LIMIT"]

#: Largest firmware ROM. The ROM is the firmware rounded up to a power of two: 8 KiB for the 6.7 KiB without
#: POOL's fl32 average (16 iCE40 block RAMs), 16 KiB for the 8.7 KiB with it. A 7 KiB ROM took 209 more
#: logic cells than 8 KiB on the UP5K (its address decode and output select) and lost 0.7 MHz.
ROM_LIMIT = 32 << 10


def ram_bytes(config: NpuConfig) -> int:
    """Private RAM the firmware needs for ``config`` (a power of two): the four buffers, a second copy of
    the ACT buffer for instructions that overwrite their own inputs, run state and stack."""
    c = config
    need = 2 * c.abuf_words * c.act_word_bytes + c.wbuf_words * c.wgt_word_bytes
    # 4 KiB for run state and stack, 1 KiB more for POOL fl32's taps (on the stack).
    need += c.accbuf_words * c.acc_word_bytes + c.pbuf_words * c.param_word_bytes + 4096 + 1024 * c.pool_fl32
    return 1 << (need - 1).bit_length()


def picorv32_source() -> tuple[str, str]:
    """(file name, Verilog text) of PicoRV32."""
    import pythondata_cpu_picorv32
    path = Path(pythondata_cpu_picorv32.data_location) / "picorv32.v"
    return "picorv32.v", path.read_text()


#: PicoRV32's parameters: RV32IMC without divide, interrupts or counters (firmware built to match:
#: hdl/seq/firmware.py), the small two-stage shifter (4 bits, then 1 bit a cycle; the barrel shifter missed
#: 18 MHz on the UP5K), the DSP-friendly single-cycle multiplier and the co-processor port for :class:`Dot4`.
PICORV32_PARAMS = {
    "ENABLE_COUNTERS": 0, "ENABLE_COUNTERS64": 0, "ENABLE_REGS_16_31": 1, "ENABLE_REGS_DUALPORT": 1,
    "LATCHED_MEM_RDATA": 0, "TWO_STAGE_SHIFT": 1, "BARREL_SHIFTER": 0, "TWO_CYCLE_COMPARE": 0,
    "TWO_CYCLE_ALU": 0, "COMPRESSED_ISA": 1, "CATCH_MISALIGN": 1, "CATCH_ILLINSN": 1, "ENABLE_PCPI": 1,
    "ENABLE_MUL": 0, "ENABLE_FAST_MUL": 1, "ENABLE_DIV": 0, "ENABLE_IRQ": 0, "ENABLE_TRACE": 0,
    "PROGADDR_RESET": 0, "STACKADDR": 0xFFFF_FFFF,
}


class Dot4(wiring.Component):
    """PicoRV32 co-processor: ``dot4 rd, rs1, rs2`` = Σ of the products of the four int8 bytes of rs1 and rs2.

    CONV's inner loop is one ``dot4`` per four MACs (firmware/seq.c ``mac_block``). The products and
    their sum are registered: the answer comes the cycle after the request, well inside PicoRV32's
    16-cycle co-processor timeout.
    """

    valid: In(1)
    insn: In(32)
    rs1: In(32)
    rs2: In(32)
    wr: Out(1)
    rd: Out(32)
    wait: Out(1)
    ready: Out(1)

    def elaborate(self, platform):
        m = Module()
        insn = self.insn
        match = self.valid & (insn[0:7] == DOT4_OPCODE) & (insn[12:15] == 0) & (insn[25:32] == 0)
        m.d.comb += self.wait.eq(match)
        products = [Signal(signed(16), name=f"product{i}") for i in range(4)]
        busy = Signal()
        with m.If(match & ~busy & ~self.ready):
            m.d.sync += [p.eq(self.rs1[8 * i:8 * i + 8].as_signed() * self.rs2[8 * i:8 * i + 8].as_signed())
                         for i, p in enumerate(products)]
            m.d.sync += busy.eq(1)
        m.d.sync += self.ready.eq(0)
        with m.If(busy):
            m.d.sync += [busy.eq(0), self.ready.eq(1), self.rd.eq(sum(products[1:], products[0]))]
        m.d.comb += self.wr.eq(self.ready)
        return m


class SeqCore(wiring.Component):
    """PicoRV32, its ROM and RAM, the memory-port bridge and the core registers; ``NpuCore``'s ports.

    Parameters
    ----------
    config : NpuConfig
        ``bus_bytes`` must be 4 (one CPU word per beat).
    ram : callable, optional
        ``ram(m, words) -> (addr, rdata, wdata, wstrb)``: builds the private RAM (one port, read data one
        cycle after ``addr``; ``wstrb`` a write enable per byte). Default: on an iCE40 a pair of its
        single-port RAMs (:func:`tessera.hdl.boards.ice40.spram32`), elsewhere an Amaranth memory.
    """

    def __init__(self, config: NpuConfig, *, ram=None):
        if config.bus_bytes != 4:
            raise ValueError(f"config {config.name!r}: the sequential core needs bus_bytes=4, not {config.bus_bytes}")
        self.config = c = config
        self.ram_factory = ram
        self.ram_bytes = ram_bytes(c)
        self.firmware = build_target(c, rom_bytes=ROM_LIMIT, ram_bytes=self.ram_bytes)
        self.rom_bytes = max(1024, 1 << (len(self.firmware) - 1).bit_length())
        super().__init__({
            "mem": Out(MemPortSignature(c)),
            "prog_addr": In(ADDR_BITS),
            "done": Out(1), "err": Out(1), "err_code": Out(ErrorCode), "err_pc": Out(ADDR_BITS),
            "oldest_pc": Out(ADDR_BITS), "progress": Out(1), "mac": Out(1), "stall": Out(len(Unit)),
            # PicoRV32's trap (a firmware fault, never seen in the tests): the core stops moving, so the
            # watchdog ends the run.
            "trap": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        if platform is not None and hasattr(platform, "add_file"):
            platform.add_file(*picorv32_source())

        m.submodules.dot4 = dot4 = Dot4()
        valid, instr, ready = Signal(), Signal(), Signal()
        addr, wdata, wstrb, rdata = Signal(32), Signal(32), Signal(4), Signal(32)
        # PicoRV32's look-ahead read: the address of the next read a cycle before it asks, so that a block
        # RAM's answer is there when it does (one cycle an access instead of two).
        la_read, la_addr = Signal(), Signal(32)
        port_addr = Signal(32)
        m.d.comb += port_addr.eq(Mux(la_read, la_addr, addr))
        la_rom, la_ram = Signal(), Signal()
        m.d.sync += [la_rom.eq(la_read & (la_addr[28:32] == MEMORY_MAP["rom"] >> 28)),
                     la_ram.eq(la_read & (la_addr[28:32] == MEMORY_MAP["ram"] >> 28))]
        m.submodules.cpu = Instance(
            "picorv32", **{f"p_{k}": Const(v, 32) for k, v in PICORV32_PARAMS.items()},
            i_clk=ClockSignal(), i_resetn=~ResetSignal(),
            o_trap=self.trap, o_mem_valid=valid, o_mem_instr=instr, i_mem_ready=ready,
            o_mem_la_read=la_read, o_mem_la_addr=la_addr,
            o_mem_addr=addr, o_mem_wdata=wdata, o_mem_wstrb=wstrb, i_mem_rdata=rdata,
            o_pcpi_valid=dot4.valid, o_pcpi_insn=dot4.insn, o_pcpi_rs1=dot4.rs1, o_pcpi_rs2=dot4.rs2,
            i_pcpi_wr=dot4.wr, i_pcpi_rd=dot4.rd, i_pcpi_wait=dot4.wait, i_pcpi_ready=dot4.ready, i_irq=0)

        region = addr[28:32]
        rom_words = self.rom_bytes // 4
        image = self.firmware + bytes(-len(self.firmware) % 4)
        m.submodules.rom = rom = memory.Memory(
            shape=unsigned(32), depth=rom_words,
            init=[int.from_bytes(image[i:i + 4], "little") for i in range(0, len(image), 4)])
        rom_rd = rom.read_port()
        m.d.comb += rom_rd.addr.eq(port_addr[2:2 + log2(rom_words)])

        ram_words = self.ram_bytes // 4
        ram_en = Signal(4)
        ram_factory = self.ram_factory
        if ram_factory is None and platform is not None:
            from ..boards.ice40 import is_ice40, spram32
            if is_ice40(platform):
                def ram_factory(m, words):
                    return spram32(m, words, name="ram", platform=platform,
                                   what=f"config {c.name!r}: the sequential core's RAM (buffers, stack)")
        if ram_factory is not None:
            ram_addr, ram_rdata, ram_wdata, ram_wstrb = ram_factory(m, ram_words)
            m.d.comb += [ram_addr.eq(port_addr[2:2 + log2(ram_words)]), ram_wdata.eq(wdata), ram_wstrb.eq(ram_en)]
        else:
            m.submodules.ram = ram = memory.Memory(shape=unsigned(32), depth=ram_words, init=[])
            ram_rd, ram_wr = ram.read_port(), ram.write_port(granularity=8)
            m.d.comb += [ram_rd.addr.eq(port_addr[2:2 + log2(ram_words)]), ram_wr.addr.eq(ram_rd.addr),
                         ram_wr.data.eq(wdata), ram_wr.en.eq(ram_en)]
            ram_rdata = ram_rd.data

        # Core registers (reset with the CPU at every run).
        done, err = Signal(), Signal()
        err_code, err_pc, pc = Signal(ErrorCode), Signal(ADDR_BITS), Signal(ADDR_BITS)
        macs_left = Signal(48)
        m.d.comb += [self.done.eq(done & (macs_left == 0)), self.err.eq(err), self.err_code.eq(err_code),
                     self.err_pc.eq(err_pc), self.oldest_pc.eq(pc), self.mac.eq(macs_left != 0), self.stall.eq(0)]
        with m.If(macs_left != 0):
            m.d.sync += macs_left.eq(macs_left - 1)

        port = self.mem
        io_rdata, dram_data = Signal(32), Signal(32)
        io_reg = addr[2:5]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(valid & la_rom):
                    m.d.comb += [ready.eq(1), rdata.eq(rom_rd.data)]
                with m.Elif(valid & la_ram):
                    m.d.comb += [ready.eq(1), rdata.eq(ram_rdata)]
                with m.Elif(valid):
                    with m.Switch(region):
                        with m.Case(MEMORY_MAP["rom"] >> 28):
                            m.next = "ROM"
                        with m.Case(MEMORY_MAP["ram"] >> 28):
                            m.d.comb += ram_en.eq(wstrb)
                            m.next = "RAM"
                        with m.Case(MEMORY_MAP["dram"] >> 28):
                            with m.If(wstrb != 0):
                                m.next = "DRAM_WRITE"
                            with m.Else():
                                m.next = "DRAM_READ"
                        with m.Default():
                            m.next = "IO"
            with m.State("ROM"):
                m.d.comb += [ready.eq(1), rdata.eq(rom_rd.data)]
                m.next = "IDLE"
            with m.State("RAM"):
                m.d.comb += [ready.eq(1), rdata.eq(ram_rdata)]
                m.next = "IDLE"
            with m.State("DRAM_READ"):
                m.d.comb += [port.rd_req.valid.eq(1), port.rd_req.payload.addr.eq(addr[2:]),
                             port.rd_req.payload.id.eq(0)]
                with m.If(port.rd_req.ready):
                    m.next = "DRAM_RESP"
            # The CPU gets memory answers from registers: its fetch and decode logic behind mem_ready is
            # long already (PicoRV32 with compressed instructions), and the port's handshakes come
            # through the link's arbiter and the on-chip memory's (docs/synthesis.md, session 16).
            with m.State("DRAM_RESP"):
                with m.If(port.rd_resp.valid):
                    m.d.sync += dram_data.eq(port.rd_resp.payload.data)
                    m.next = "DRAM_DONE"
            with m.State("DRAM_WRITE"):
                m.d.comb += [port.wr_req.valid.eq(1), port.wr_req.payload.addr.eq(addr[2:]),
                             port.wr_req.payload.data.eq(wdata), port.wr_req.payload.strb.eq(wstrb)]
                with m.If(port.wr_req.ready):
                    m.next = "DRAM_DONE"
            with m.State("DRAM_DONE"):
                m.d.comb += [ready.eq(1), rdata.eq(dram_data)]
                m.next = "IDLE"
            with m.State("IO"):
                m.d.comb += [ready.eq(1), rdata.eq(io_rdata)]
                with m.If(wstrb != 0):
                    with m.Switch(io_reg):
                        with m.Case(IoReg.DONE):
                            m.d.sync += done.eq(1)
                        with m.Case(IoReg.ERR_CODE):
                            m.d.sync += [err.eq(1), err_code.eq(wdata[:len(err_code.as_value())])]
                        with m.Case(IoReg.ERR_PC):
                            m.d.sync += err_pc.eq(wdata)
                        with m.Case(IoReg.PC):
                            m.d.sync += pc.eq(wdata)
                            m.d.comb += self.progress.eq(1)
                        with m.Case(IoReg.PROGRESS):
                            m.d.comb += self.progress.eq(1)
                        with m.Case(IoReg.MACS):
                            m.d.sync += macs_left.eq(macs_left + wdata - (macs_left != 0))
                m.next = "IDLE"
        m.d.comb += io_rdata.eq(self.prog_addr)
        return m
