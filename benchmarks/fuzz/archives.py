"""Zip archives written byte by byte, so that a case can make every header lie: the entries appended
to a model file, and deflate bombs that inflate to far more than they declare."""

from __future__ import annotations

import dataclasses
import functools
import struct
import zipfile
import zlib

from edge_runtime.model_file.limits import MIB

FIXED_DATE = (1980, 1, 1, 0, 0, 0)
# Zip records, written field by field so that the tests can make them lie.
LOCAL_HEADER = struct.Struct("<4s5H3L2H")
CENTRAL_HEADER = struct.Struct("<4s6H3L5H2L")
END_RECORD = struct.Struct("<4s4H2LH")
ZIP_VERSION = 20
DOS_DATE = (0, 33)  # 00:00, 1 January 1980
RAW_DEFLATE_BITS = -15
FINAL_EMPTY_DEFLATE_BLOCK = b"\x03\x00"
BOMB_BLOCK_BYTES = 1 * MIB


@dataclasses.dataclass(frozen=True)
class RawEntry:
    """One archive entry as written: its stored bytes and what its headers declare (which may lie)."""

    name: str
    payload: bytes  # the bytes as stored (deflated for ZIP_DEFLATED)
    method: int
    crc: int
    file_size: int  # the declared uncompressed size
    compress_size: int | None = None  # the declared stored size; None: the payload's true length
    flags: int = 0


def raw_entry(name: str, data: bytes, method: int = zipfile.ZIP_STORED) -> RawEntry:
    """An honest entry holding `data`."""
    if method == zipfile.ZIP_DEFLATED:
        compressor = zlib.compressobj(9, zlib.DEFLATED, RAW_DEFLATE_BITS)
        payload = compressor.compress(data) + compressor.flush()
    else:
        payload = data
    return RawEntry(name, payload, method, zlib.crc32(data), len(data))


def zip_archive(entries: list[RawEntry], base_offset: int, count: int | None = None) -> bytes:
    """A zip archive to append after `base_offset` bytes; `count` overrides the end record's entry count."""
    local, central = bytearray(), bytearray()
    for entry in entries:
        name = entry.name.encode("utf-8")
        declared = len(entry.payload) if entry.compress_size is None else entry.compress_size
        offset = base_offset + len(local)
        local += LOCAL_HEADER.pack(b"PK\x03\x04", ZIP_VERSION, entry.flags, entry.method, *DOS_DATE,
                                   entry.crc, declared & 0xFFFFFFFF, entry.file_size & 0xFFFFFFFF, len(name), 0)
        local += name + entry.payload
        central += CENTRAL_HEADER.pack(b"PK\x01\x02", ZIP_VERSION, ZIP_VERSION, entry.flags, entry.method, *DOS_DATE,
                                       entry.crc, declared & 0xFFFFFFFF, entry.file_size & 0xFFFFFFFF, len(name),
                                       0, 0, 0, 0, 0, offset & 0xFFFFFFFF)
        central += name
    total = len(entries) if count is None else count
    end = END_RECORD.pack(b"PK\x05\x06", 0, 0, total & 0xFFFF, total & 0xFFFF, len(central),
                          (base_offset + len(local)) & 0xFFFFFFFF, 0)
    return bytes(local + central + end)


@functools.lru_cache(maxsize=4)
def deflate_bomb(inflated_size: int) -> bytes:
    """A raw deflate stream that inflates to `inflated_size` zero bytes (a multiple of 1 MiB), built
    without inflating it: one fully flushed 1 MiB block repeated, then an empty final block."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, RAW_DEFLATE_BITS)
    block = compressor.compress(bytes(BOMB_BLOCK_BYTES)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * (inflated_size // BOMB_BLOCK_BYTES) + FINAL_EMPTY_DEFLATE_BLOCK


def bomb_entry(name: str, inflated_size: int, declared_size: int | None = None) -> RawEntry:
    """A deflate bomb named `name`: honest about its size unless `declared_size` is given (a lie).
    Its CRC is left 0: readers must refuse it long before a CRC could be checked."""
    payload = deflate_bomb(inflated_size)
    return RawEntry(name, payload, zipfile.ZIP_DEFLATED, 0,
                    inflated_size if declared_size is None else declared_size)
