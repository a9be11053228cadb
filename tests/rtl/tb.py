"""The shared cocotb testbench of the per-component benches (bench_*.py, components_bench.py).

One :class:`TB` per test owns the clock phase, the agents and the scoreboards.
Each cycle it lets every agent drive its inputs at the falling edge, waits for
the design to settle (``ReadOnly``) and lets every agent sample what the
coming rising edge will see: a handshake is ``valid & ready`` at that moment,
so drivers, monitors and models never race each other. With ``TB_BACKPRESSURE=1``
every agent withholds ``valid``/``ready`` at random and memories answer after
random extra latency. Expected values come from the emulator (:func:`golden`).
"""

from __future__ import annotations

import os
import random
import zlib
from collections import deque

import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly

from tessera.arch import NpuConfig
from tessera.isa import Buffer, Instruction, encode
from tessera.numerics import pack_weights

#: Probability that an agent under backpressure withholds valid/ready in a cycle.
STALL_P = 0.4


def config() -> NpuConfig:
    """The bench's config, passed by the pytest wrapper (``TB_CONFIG``)."""
    return NpuConfig.from_json(os.environ["TB_CONFIG"])


class Scoreboard:
    """Expected items, matched in order (``key=None``) or by key; :meth:`finish` fails on leftovers."""

    def __init__(self, name: str):
        self.name = name
        self.queue = deque()
        self.keyed = {}
        self.matched = 0

    def expect(self, item, key=None):
        if key is None:
            self.queue.append(item)
        else:
            assert key not in self.keyed, f"{self.name}: {key} expected twice"
            self.keyed[key] = item

    def got(self, item, key=None):
        if key is None:
            assert self.queue, f"{self.name}: unexpected {item}"
            want = self.queue.popleft()
        else:
            assert key in self.keyed, f"{self.name}: unexpected {key} = {item}"
            want = self.keyed.pop(key)
        assert item == want, f"{self.name}: {'' if key is None else f'{key}: '}got {item}, expected {want}"
        self.matched += 1

    @property
    def pending(self) -> int:
        return len(self.queue) + len(self.keyed)

    def finish(self):
        left = list(self.queue)[:4] + list(self.keyed.items())[:4]
        assert not self.pending, f"{self.name}: {self.pending} expected items never came, e.g. {left}"


class TB:
    """Clock phase, reset, agents and scoreboards of one cocotb test."""

    count = 0

    def __init__(self, dut, seed: int | None = None):
        self.dut = dut
        self.backpressure = os.environ.get("TB_BACKPRESSURE", "0") == "1"
        # Each test of a module gets its own (reproducible) random stream.
        TB.count += 1
        self.rng = random.Random(zlib.crc32(f"{TB.count} {int(self.backpressure)}".encode()) if seed is None else seed)
        self.agents = []
        self.scoreboards = []
        self.cycle = 0

    def scoreboard(self, name: str) -> Scoreboard:
        sb = Scoreboard(name)
        self.scoreboards.append(sb)
        return sb

    def add(self, agent):
        self.agents.append(agent)
        return agent

    def stall(self) -> bool:
        """A random 'not this cycle' under backpressure, never without it."""
        return self.backpressure and self.rng.random() < STALL_P

    async def step(self):
        """One clock cycle: drive at the falling edge, then sample the settled values."""
        await FallingEdge(self.dut.clk)
        await self._cycle()

    async def _cycle(self):
        # Called just after a falling edge: the agents drive, then sample once the values settle.
        self.cycle += 1
        for a in self.agents:
            a.drive()
        await ReadOnly()
        for a in self.agents:
            a.sample()

    async def reset(self, cycles: int = 2, **inputs):
        """Hold reset for ``cycles``; ``inputs`` (port name → value) are set with it.

        The agents sit still meanwhile (what they drive would be lost); the cycle that
        releases reset is their first ordinary cycle, so it meets the first live clock edge.
        """
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 1
        for k, v in inputs.items():
            getattr(self.dut, k).value = v
        for _ in range(cycles):
            await FallingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await self._cycle()

    async def until(self, cond, limit: int, what: str):
        """Step until ``cond()`` holds (checked after sampling); fail after ``limit`` cycles."""
        for _ in range(limit):
            await self.step()
            if cond():
                return
        raise AssertionError(f"timeout after {limit} cycles waiting for {what}")

    def finish(self):
        for sb in self.scoreboards:
            sb.finish()


class Ports:
    """One component's ports in the multi-component harness: ``ports.x`` is the DUT's ``<prefix>x``."""

    def __init__(self, dut, prefix: str):
        self._dut, self._prefix = dut, prefix

    def __getattr__(self, name):
        return getattr(self._dut, self._prefix + name)


def sig_int(sig) -> int:
    return int(sig.value)


# ---- agents ----------------------------------------------------------------------------------------


class StreamSource:
    """Drives a valid/ready stream from a queue; holds valid until the item is taken.

    ``payload`` is one port, or a tuple of ports when items are tuples.
    """

    def __init__(self, tb: TB, valid, ready, payload, name: str = "source"):
        self.tb, self.valid, self.ready, self.payload, self.name = tb, valid, ready, payload, name
        self.queue = deque()
        self.offered = False
        self.sent = 0

    def send(self, item):
        self.queue.append(item)

    @property
    def idle(self) -> bool:
        return not self.queue

    def drive(self):
        if not self.offered and self.queue and not self.tb.stall():
            self.offered = True
        self.valid.value = int(self.offered)
        if self.offered:
            if isinstance(self.payload, tuple):        # several payload ports, one item field each
                for sig, v in zip(self.payload, self.queue[0]):
                    sig.value = v
            else:
                self.payload.value = self.queue[0]

    def sample(self):
        if self.offered and sig_int(self.ready):
            self.queue.popleft()
            self.offered = False
            self.sent += 1


class StreamSink:
    """Takes a valid/ready stream (random ready under backpressure) and hands each item to ``on_item``."""

    def __init__(self, tb: TB, valid, ready, payload, on_item):
        self.tb, self.valid, self.ready, self.payload, self.on_item = tb, valid, ready, payload, on_item
        self.ready_now = 1

    def drive(self):
        self.ready_now = 0 if self.tb.stall() else 1
        if self.ready is not None:
            self.ready.value = self.ready_now

    def sample(self):
        if sig_int(self.valid) and self.ready_now:
            self.on_item(sig_int(self.payload))


class ReadMemory:
    """Beat-addressed memory answering a request stream in order after ``latency`` (+ random) cycles.

    The response stream cannot be stalled (the design's ``always_ready`` port),
    at most one beat per cycle. ``on_request`` sees every accepted beat address.
    """

    def __init__(self, tb: TB, mem: np.ndarray, bus_bytes: int, latency: int, req_valid, req_ready, req_addr,
                 resp_valid, resp_data, on_request=None):
        self.tb, self.mem, self.B, self.latency = tb, mem, bus_bytes, latency
        self.sink = StreamSink(tb, req_valid, req_ready, req_addr, self._accept)
        self.resp_valid, self.resp_data = resp_valid, resp_data
        self.pending = deque()          # (cycle due, beat data)
        self.on_request = on_request
        self.last_due = 0
        self.answering = False

    def _accept(self, beat: int):
        assert 0 <= beat * self.B < self.mem.size, f"read of beat {beat} outside memory of {self.mem.size} bytes"
        if self.on_request:
            self.on_request(beat)
        extra = self.tb.rng.randrange(8) if self.tb.backpressure else 0
        due = max(self.tb.cycle + self.latency + extra, self.last_due + 1)
        self.last_due = due
        data = int.from_bytes(self.mem[beat * self.B:(beat + 1) * self.B].tobytes(), "little")
        self.pending.append((due, data))

    @property
    def idle(self) -> bool:
        return not self.pending

    def drive(self):
        self.sink.drive()
        self.answering = bool(self.pending) and self.pending[0][0] <= self.tb.cycle
        self.resp_valid.value = int(self.answering)
        if self.answering:
            self.resp_data.value = self.pending[0][1]

    def sample(self):
        if self.answering:
            self.pending.popleft()
        self.sink.sample()


class WriteMemory:
    """Sink of write requests; ``split(payload)`` gives (beat, data, strobes); ``on_byte(addr, value)`` per strobed byte."""

    def __init__(self, tb: TB, bus_bytes: int, valid, ready, payload, split, on_byte):
        self.B, self.split, self.on_byte = bus_bytes, split, on_byte
        self.sink = StreamSink(tb, valid, ready, payload, self._accept)

    def _accept(self, payload):
        beat, data, strb = self.split(payload)
        for i in range(self.B):
            if strb >> i & 1:
                self.on_byte(beat * self.B + i, data >> (8 * i) & 0xFF)

    def drive(self):
        self.sink.drive()

    def sample(self):
        self.sink.sample()


def unpack(layout, value: int) -> dict:
    """Fields of an ``amaranth.lib.data.StructLayout`` value as ints."""
    return {name: value >> f.offset & ((1 << f.width) - 1) for name, f in layout}


class BufferModel:
    """An on-chip buffer modelled in Python: synchronous read ports, lane-enabled write ports.

    Reads return the word as it was before a write in the same cycle (the
    design's non-transparent ``amaranth.lib.memory`` ports). ``on_write(addr,
    lane, value)`` sees each enabled lane of each write.
    """

    def __init__(self, tb: TB, words: list[int], width: int, reads=(), writes=(), on_write=None):
        self.tb, self.words, self.width = tb, words, width
        self.reads = [(a, d, [0]) for a, d in reads]
        self.writes = list(writes)      # (addr, data, en, lanes)
        self.on_write = on_write

    def drive(self):
        for _, data, held in self.reads:
            data.value = held[0]

    def sample(self):
        for addr, _, held in self.reads:
            a = sig_int(addr)
            held[0] = self.words[a] if a < len(self.words) else 0
        for addr, data, en, lanes in self.writes:
            e = sig_int(en)
            if not e:
                continue
            a, d = sig_int(addr), sig_int(data)
            assert a < len(self.words), f"write to word {a} of a {len(self.words)}-word buffer"
            lw = self.width // lanes
            mask = (1 << lw) - 1
            for lane in range(lanes):
                if e >> lane & 1:
                    v = d >> (lane * lw) & mask
                    self.words[a] = self.words[a] & ~(mask << (lane * lw)) | (v << (lane * lw))
                    if self.on_write:
                        self.on_write(a, lane, v)


class Unit:
    """Drives a unit's ``ctl`` port (UnitSignature) as dispatch does: a start pulse, then done or err."""

    def __init__(self, tb: TB, prefix: str):
        dut = tb.dut
        self.tb = tb
        self.start, self.instr = getattr(dut, f"{prefix}__start"), getattr(dut, f"{prefix}__instr")
        self.done, self.err = getattr(dut, f"{prefix}__done"), getattr(dut, f"{prefix}__err")
        self.err_code, self.busy = getattr(dut, f"{prefix}__err_code"), getattr(dut, f"{prefix}__busy")
        self.pending = None
        self.result = None

    def drive(self):
        if self.pending is not None:
            self.start.value = 1
            self.instr.value = self.pending
        else:
            self.start.value = 0

    def sample(self):
        if self.pending is not None:
            self.pending = None
            return
        if sig_int(self.done) or sig_int(self.err):
            assert self.result is None, "done/err twice for one instruction"
            self.result = int(self.err_code.value) if sig_int(self.err) else 0

    async def execute(self, ins: Instruction, limit: int = 20000) -> int:
        """Run one instruction; returns 0 or the unit's error code (as an int)."""
        while self.tb.stall():          # dispatch starts a unit whenever its tokens allow
            await self.tb.step()
        self.result = None
        self.pending = int.from_bytes(encode(ins, check=False), "little")
        await self.tb.until(lambda: self.result is not None, limit, f"{ins.op.name} to finish")
        await self.tb.step()
        assert not sig_int(self.busy), f"{ins.op.name}: busy after done"
        return self.result


# ---- the golden model --------------------------------------------------------------------------


def golden(emu, ins: Instruction, prog_addr: int):
    """Execute ``ins`` alone on the emulator (program ``ins; end`` at ``prog_addr``).

    Returns the :class:`~tessera.isa.ErrorCode` the emulator stopped with, or None.
    """
    from tessera.sim.emulator import NpuError
    emu.write(prog_addr, encode(ins) + encode(Instruction("end")))
    try:
        emu.run(prog_addr)
    except NpuError as e:
        return e.code
    return None


def buffer_word_bytes(c: NpuConfig, buf: Buffer, word: np.ndarray) -> bytes:
    """One emulator buffer word as the hardware holds it (its external-memory byte image)."""
    if buf == Buffer.WGT:
        return pack_weights(word.reshape(-1), c.weight_bits)
    if buf == Buffer.ACT:
        return word.astype(np.int8).tobytes()
    return word.astype("<i4").reshape(-1).tobytes()


def words_of(c: NpuConfig, buf, array: np.ndarray) -> list[int]:
    """An emulator buffer as the list of integer words the Python buffer model holds."""
    return [int.from_bytes(buffer_word_bytes(c, buf, w), "little") for w in array]



class BufferBench:
    """A unit that works on on-chip buffers: the emulator with random buffer contents, the RTL-side
    :class:`BufferModel` of each buffer mirroring it, and one keyed scoreboard of buffer writes."""

    def __init__(self, dut):
        from tessera.sim.emulator import Emulator
        self.c = config()
        self.tb = TB(dut)
        self.emu = Emulator(self.c)
        self.prog = self.c.dram_bytes - 64
        self.np_rng = np.random.default_rng(self.tb.rng.randrange(1 << 30))
        self.models = {}
        self.writes = self.tb.scoreboard("buffer writes")

    def fill(self, buf: Buffer, lo: int, hi: int, where=slice(None)):
        a = self.emu.buffers[buf]
        a[where] = self.np_rng.integers(lo, hi, a[where].shape)
        if buf in self.models:
            self.models[buf].words[:] = words_of(self.c, buf, a)

    def model(self, buf: Buffer, reads=(), writes=()) -> BufferModel:
        m = BufferModel(self.tb, words_of(self.c, buf, self.emu.buffers[buf]), self.c.word_bytes(buf) * 8,
                        reads=reads, writes=[(*w, 1) for w in writes],
                        on_write=lambda a, lane, v: self.writes.got(v, key=(buf.name, a)))
        self.models[buf] = self.tb.add(m)
        return m

    def expect(self, buf: Buffer, addrs):
        """The words ``addrs`` of ``buf`` as the emulator left them are the writes to come."""
        for a in addrs:
            self.writes.expect(int.from_bytes(buffer_word_bytes(self.c, buf, self.emu.buffers[buf][a]), "little"),
                               key=(buf.name, a))

    def check_buffers(self, what):
        for buf, m in self.models.items():
            want = words_of(self.c, buf, self.emu.buffers[buf])
            bad = [i for i, (x, y) in enumerate(zip(m.words, want)) if x != y]
            assert not bad, f"{what}: {buf.name} words {bad[:8]} differ from the emulator"
