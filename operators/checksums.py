"""Checksums and CRCs that device payloads carry: sum8, xor8, crc8, crc16 (Modbus, CCITT), crc32."""

from __future__ import annotations

import binascii
import zlib


def _crc16_modbus_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


def _crc8_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_MODBUS = _crc16_modbus_table()
_CRC8 = _crc8_table()


def sum8(data: bytes) -> int:
    """Sum of all bytes modulo 256."""
    return sum(data) & 0xFF


def xor8(data: bytes) -> int:
    """XOR of all bytes."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def crc8(data: bytes) -> int:
    """CRC-8 (SMBus): polynomial 0x07, init 0x00, no reflection."""
    crc = 0
    for byte in data:
        crc = _CRC8[crc ^ byte]
    return crc


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS: reflected polynomial 0xA001, init 0xFFFF (sent low byte first on the wire)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _MODBUS[(crc ^ byte) & 0xFF]
    return crc


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: polynomial 0x1021, init 0xFFFF."""
    return binascii.crc_hqx(data, 0xFFFF)


def crc32(data: bytes) -> int:
    """CRC-32 (ISO-HDLC, as zlib)."""
    return zlib.crc32(data) & 0xFFFFFFFF


ALGORITHMS = {
    "sum8": sum8,
    "xor8": xor8,
    "crc8": crc8,
    "crc16_modbus": crc16_modbus,
    "crc16_ccitt": crc16_ccitt,
    "crc32": crc32,
}
