"""The board link protocol: the one definition the link's hardware and the host's driver share.

Pure Python (no Amaranth), so :mod:`tessera.host.board` imports it without the HDL. The format is
described for users in docs/synthesis.md ("Board link protocol").

Request (host → board)::

    SYNC_REQ | cmd | addr (u32 LE) | length (u16 LE) | payload (length bytes, writes only) | crc (u16 BE)

Response (board → host)::

    SYNC_RESP | cmd | status | length (u16 LE) | data (length bytes) | crc (u16 BE)

``crc`` is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no final
XOR) over every byte after the sync byte. Sent high byte first, the CRC of a frame including its
CRC is 0, which is how the hardware checks it.
"""

from __future__ import annotations

import binascii
import enum
import struct

__all__ = [
    "BOARD_IDLE_SECONDS",
    "CRC_INIT",
    "CRC_POLY",
    "CSR_BYTES",
    "DEFAULT_BAUD",
    "HEADER_BYTES",
    "MAX_PAYLOAD",
    "RESP_HEADER_BYTES",
    "SYNC_REQ",
    "SYNC_RESP",
    "Command",
    "LinkStatus",
    "crc16",
    "decode_response_header",
    "encode_request",
    "encode_response",
]

#: Default UART rate of the board bitstream and the host driver (the ULX3S's FT231X runs up to 3 Mbaud).
DEFAULT_BAUD = 3_000_000
#: Silence that ends a broken frame on the board (USB serial adapters pause up to a few ms between packets).
BOARD_IDLE_SECONDS = 0.01
SYNC_REQ = 0x5A
SYNC_RESP = 0xA5
#: Largest payload of one WRITE_MEM frame and largest READ_MEM answer (the link's frame buffer).
MAX_PAYLOAD = 256
#: CSR frames move one 32-bit register: their length field must be 4.
CSR_BYTES = 4
#: Bytes of a request before its payload (sync, cmd, addr, length) and of a response before its data.
HEADER_BYTES = 8
RESP_HEADER_BYTES = 5
CRC_INIT = 0xFFFF
CRC_POLY = 0x1021


class Command(enum.IntEnum):
    """Request commands. Memory addresses are byte addresses; CSR addresses are :class:`tessera.isa.Csr` indices."""
    WRITE_MEM = 1   # payload: ``length`` bytes written from ``addr``; answer: no data
    READ_MEM = 2    # no payload; answer: ``length`` bytes from ``addr``
    WRITE_CSR = 3   # payload: the 32-bit value (LE), length 4; answer: no data
    READ_CSR = 4    # no payload, length 4; answer: the 32-bit value (LE)


class LinkStatus(enum.IntEnum):
    """Response status. Every error answer carries no data and changes nothing on the board."""
    OK = 0
    BAD_CRC = 1       # the frame's CRC did not match
    BAD_COMMAND = 2   # unknown command byte
    BAD_ADDRESS = 3   # memory range outside external memory, or CSR index out of range
    BAD_LENGTH = 4    # memory length 0 or above MAX_PAYLOAD, or a CSR length other than 4
    BUSY = 5          # memory access while the NPU runs (the link and the NPU share the SDRAM)
    TIMEOUT = 6       # the line went idle in the middle of a frame


def crc16(data: bytes, crc: int = CRC_INIT) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (``binascii.crc_hqx`` is exactly this polynomial, unreflected)."""
    return binascii.crc_hqx(bytes(data), crc)


def _seal(body: bytes) -> bytes:
    return body + crc16(body[1:]).to_bytes(2, "big")


def encode_request(cmd: int, addr: int, length: int, payload: bytes = b"") -> bytes:
    """One request frame. ``length`` is sent as given (so tests can send bad ones); fields are masked to size."""
    return _seal(struct.pack("<BBIH", SYNC_REQ, int(cmd) & 0xFF, addr & 0xFFFFFFFF, length & 0xFFFF)
                 + bytes(payload))


def encode_response(cmd: int, status: int, data: bytes = b"") -> bytes:
    """One response frame (what the board sends; used by tests and host-side fakes)."""
    return _seal(struct.pack("<BBBH", SYNC_RESP, int(cmd) & 0xFF, int(status) & 0xFF, len(data)) + bytes(data))


def decode_response_header(header: bytes) -> tuple[int, int, int]:
    """(cmd, status, length) of a response's first RESP_HEADER_BYTES bytes; ValueError if the sync byte is wrong."""
    sync, cmd, status, length = struct.unpack("<BBBH", header)
    if sync != SYNC_RESP:
        raise ValueError(f"response starts with 0x{sync:02x}, not the sync byte 0x{SYNC_RESP:02x}")
    return cmd, status, length
