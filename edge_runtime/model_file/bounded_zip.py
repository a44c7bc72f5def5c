"""The zip archive appended to a model, read within limits, without `zipfile`.

`zipfile` trusts an archive: it builds an object for every entry of the central directory, and its
`read()` inflates a whole entry in one go (a 4 MB deflate stream becomes 4 GiB in memory before the
declared size cuts it). It also costs every start of `edge-classify` about as much to import as
click does. So the archive is read here, as `zipfile` reads it: the end record first, and an
archive with too many entries or too large a directory refused before the directory is parsed;
then the directory (file names, methods, sizes, CRCs and local header offsets, with the zip64
extra field); an entry is refused before it is opened when it declares more bytes than its kind
allows or inflates more than `ARCHIVE_MAX_RATIO` times; then it is streamed in `READ_CHUNK_BYTES`
pieces, never past its declared size, and refused when what it holds disagrees with its directory
(CRC, size): an entry that lies about its size is caught while it is read. Only stored and
deflated entries are read: the other methods (bzip2, lzma) inflate a whole input chunk at once,
with no bound on their output. A directory `zipfile` would refuse to parse counts as no archive.
"""

from __future__ import annotations

import struct
import zlib
from typing import IO, NamedTuple

from ..errors import ModelError
from .limits import (ARCHIVE_DIRECTORY_MAX_BYTES, ARCHIVE_MAX_ENTRIES, ARCHIVE_MAX_RATIO, ARCHIVE_RATIO_FLOOR_BYTES,
                     READ_CHUNK_BYTES, Limit, size_text)

# The zip format's end of central directory record, its zip64 locator and zip64 record.
END_RECORD = struct.Struct("<4s4H2LH")
END_SIGNATURE = b"PK\x05\x06"
ZIP64_LOCATOR = struct.Struct("<4sLQL")
ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
ZIP64_RECORD = struct.Struct("<4sQ2H2L4Q")
ZIP64_RECORD_SIGNATURE = b"PK\x06\x06"
# A central directory record and a local file header, as the format (and zipfile) lay them out.
DIRECTORY_RECORD = struct.Struct("<4s4B4HL2L5H2L")
DIRECTORY_SIGNATURE = b"PK\x01\x02"
LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
LOCAL_SIGNATURE = b"PK\x03\x04"
ZIP64_EXTRA = struct.Struct("<HH")
ZIP64_EXTRA_ID = 0x0001
ZIP64_FIELD = struct.Struct("<Q")
ZIP64_MARKERS = (0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF)
# An archive comment is at most 65535 bytes: the end record lies within this many bytes of the end.
END_SEARCH_BYTES = (1 << 16) + END_RECORD.size
# The compression methods of the format, and the ones read here.
ZIP_STORED = 0
ZIP_DEFLATED = 8
READABLE_METHODS = {ZIP_STORED: "stored", ZIP_DEFLATED: "deflate"}
RAW_DEFLATE_WINDOW_BITS = -15  # zip holds deflate streams without a zlib header
# The newest "version needed to extract" zipfile handles (6.3); a newer one is not an archive it reads.
MAX_EXTRACT_VERSION = 63
ENCRYPTED_FLAG = 0x1
UTF8_NAME_FLAG = 0x800
UNREADABLE_FLAGS = {0x20: "compressed patched data", 0x40: "strong encryption"}
LEGACY_NAME_ENCODING = "cp437"  # names without the UTF-8 flag, as the format (and zipfile) read them
# What damaged data raises while an entry is opened or read.
READ_ERRORS = (zlib.error, EOFError, OSError, ValueError, struct.error)


class _Damaged(Exception):
    """What is wrong with an archive's bytes (a directory that does not parse, an entry that lies)."""


class Directory(NamedTuple):
    """What the end record says about the central directory, before anything else is read."""

    entries: int
    size: int
    start: int  # where the central directory begins in the file
    offset: int  # where the archive's own records say it begins: less when the archive follows other bytes


class Entry(NamedTuple):
    """One file of the archive, as its central directory record describes it."""

    name: str
    raw_name: str  # before a NUL cut it short: what the local header must repeat
    flag_bits: int
    method: int
    crc: int
    compress_size: int
    file_size: int
    header_offset: int  # in the file, where the entry's local header begins


def _find_directory(handle: IO[bytes]) -> Directory | None:
    """The central directory the end record describes, found as `zipfile` finds it; None when there is none."""
    handle.seek(0, 2)
    file_size = handle.tell()
    if file_size < END_RECORD.size:
        return None
    tail_start = max(file_size - END_SEARCH_BYTES, 0)
    handle.seek(tail_start)
    tail = handle.read(file_size - tail_start)
    last = tail[-END_RECORD.size:]
    if last[:4] == END_SIGNATURE and last[-2:] == b"\x00\x00":
        position = len(tail) - END_RECORD.size
    else:
        position = tail.rfind(END_SIGNATURE)
        if position < 0 or position + END_RECORD.size > len(tail):
            return None
    end_at = tail_start + position
    fields = END_RECORD.unpack_from(tail, position)
    entries, size, offset = fields[4], fields[5], fields[6]
    start = end_at - size
    locator_at = end_at - ZIP64_LOCATOR.size
    if locator_at >= 0:
        handle.seek(locator_at)
        locator = handle.read(ZIP64_LOCATOR.size)
        if len(locator) == ZIP64_LOCATOR.size and locator[:4] == ZIP64_LOCATOR_SIGNATURE:
            record_at = locator_at - ZIP64_RECORD.size
            if record_at < 0:
                return None
            handle.seek(record_at)
            record = handle.read(ZIP64_RECORD.size)
            if len(record) == ZIP64_RECORD.size and record[:4] == ZIP64_RECORD_SIGNATURE:
                entries, size, offset = ZIP64_RECORD.unpack(record)[7:10]
                start = record_at - size
    if start < 0 or offset < 0:
        return None
    handle.seek(start)
    if handle.read(len(DIRECTORY_SIGNATURE)) != DIRECTORY_SIGNATURE and entries:
        return None  # not an archive zipfile could read: the model carries none
    return Directory(entries=entries, size=size, start=start, offset=offset)


def _parse_directory(handle: IO[bytes], directory: Directory) -> list[Entry]:
    """Every record of the central directory, in order; _Damaged where `zipfile` would refuse to parse it.

    Like `zipfile`, this reads records until the directory's declared size is used up, whatever
    the end record's count says, and moves every offset by what precedes the archive in the file.
    """
    handle.seek(directory.start)
    data = handle.read(directory.size)
    # The archive's offsets count from its own start; an archive appended to a model begins later.
    shift = directory.start - directory.offset
    entries: list[Entry] = []
    position = 0
    while position < directory.size:
        if position + DIRECTORY_RECORD.size > len(data):
            raise _Damaged("truncated central directory")
        record = DIRECTORY_RECORD.unpack_from(data, position)
        if record[0] != DIRECTORY_SIGNATURE:
            raise _Damaged("bad magic number for central directory")
        extract_version, flag_bits, method = record[3], record[5], record[6]
        crc, compress_size, file_size = record[9], record[10], record[11]
        name_length, extra_length, comment_length = record[12], record[13], record[14]
        header_offset = record[18]
        position += DIRECTORY_RECORD.size
        raw = data[position:position + name_length]
        extra = data[position + name_length:position + name_length + extra_length]
        position += name_length + extra_length + comment_length
        if extract_version > MAX_EXTRACT_VERSION:
            raise _Damaged(f"zip file version {extract_version / 10:.1f}")
        raw_name = _decode_name(raw, flag_bits)
        file_size, compress_size, header_offset = _zip64_sizes(extra, file_size, compress_size, header_offset)
        entries.append(Entry(name=raw_name.split("\x00", 1)[0], raw_name=raw_name, flag_bits=flag_bits,
                             method=method, crc=crc, compress_size=compress_size, file_size=file_size,
                             header_offset=header_offset + shift))
    return entries


def _decode_name(raw: bytes, flag_bits: int) -> str:
    if raw.isascii():
        return raw.decode("ascii")  # the same text in both encodings, without loading the cp437 codec
    try:
        return raw.decode("utf-8" if flag_bits & UTF8_NAME_FLAG else LEGACY_NAME_ENCODING)
    except UnicodeDecodeError as error:
        raise _Damaged("a file name is not valid UTF-8") from error


def _zip64_sizes(extra: bytes, file_size: int, compress_size: int, header_offset: int) -> tuple[int, int, int]:
    """Sizes and offset from the zip64 extra field, for those the record marks as stored there."""
    while len(extra) >= ZIP64_EXTRA.size:
        kind, length = ZIP64_EXTRA.unpack_from(extra)
        if length + ZIP64_EXTRA.size > len(extra):
            raise _Damaged(f"corrupt extra field {kind:04x} (size={length})")
        if kind == ZIP64_EXTRA_ID:
            values = extra[ZIP64_EXTRA.size:ZIP64_EXTRA.size + length]
            fields = [file_size in ZIP64_MARKERS, compress_size == ZIP64_MARKERS[0], header_offset == ZIP64_MARKERS[0]]
            read = []
            for needed in fields:
                if not needed:
                    read.append(None)
                    continue
                if len(values) < ZIP64_FIELD.size:
                    raise _Damaged("corrupt zip64 extra field")
                read.append(ZIP64_FIELD.unpack_from(values)[0])
                values = values[ZIP64_FIELD.size:]
            file_size = read[0] if read[0] is not None else file_size
            compress_size = read[1] if read[1] is not None else compress_size
            header_offset = read[2] if read[2] is not None else header_offset
        extra = extra[ZIP64_EXTRA.size + length:]
    return file_size, compress_size, header_offset


class BoundedArchive:
    """An appended zip archive whose entries are read within limits; use `open_archive`."""

    def __init__(self, handle: IO[bytes], entries: list[Entry]):
        self._handle = handle
        # As in zipfile, a name that appears twice means its last entry.
        self._entries = {entry.name: entry for entry in entries}

    def __enter__(self) -> BoundedArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the caller owns the file the archive is read from."""

    def names(self) -> set[str]:
        """The names of the archive's entries."""
        return set(self._entries)

    def read(self, name: str, limit: Limit) -> bytes:
        """The bytes of entry `name`, refused with a one-line ModelError when over `limit` or damaged.

        KeyError when the archive has no such entry. Messages name the entry; callers add the model.
        """
        entry = self._entries[name]
        _check_declared(entry, limit, f"embedded {name}")
        try:
            data = self._read_entry(entry)
        except _Damaged as error:
            raise ModelError(f"embedded metadata is damaged ({name}: {error})") from error
        except READ_ERRORS as error:
            raise ModelError(f"embedded metadata is damaged ({name}: {_reason(error)})") from error
        if zlib.crc32(data) != entry.crc:
            raise ModelError(f"embedded metadata is damaged ({name}: Bad CRC-32 for file {name!r})")
        if len(data) != entry.file_size:
            raise ModelError(f"embedded metadata is damaged ({name} holds {len(data):,} bytes, its directory "
                             f"says {entry.file_size:,})")
        return data

    def _read_entry(self, entry: Entry) -> bytes:
        """The entry's data, never more than its declared size (what follows is not read)."""
        handle = self._handle
        handle.seek(entry.header_offset)
        header = handle.read(LOCAL_HEADER.size)
        if len(header) != LOCAL_HEADER.size:
            raise _Damaged("truncated file header")
        fields = LOCAL_HEADER.unpack(header)
        if fields[0] != LOCAL_SIGNATURE:
            raise _Damaged("bad magic number for file header")
        name_length, extra_length = fields[10], fields[11]
        local_name = _decode_name(handle.read(name_length), fields[3])
        if local_name != entry.raw_name:
            raise _Damaged(f"file name in directory {entry.raw_name!r} and header {local_name!r} differ")
        handle.seek(extra_length, 1)
        compressed_left, wanted = entry.compress_size, entry.file_size
        inflater = zlib.decompressobj(RAW_DEFLATE_WINDOW_BITS) if entry.method == ZIP_DEFLATED else None
        chunks, total = [], 0
        while total < wanted:
            if compressed_left <= 0 and (inflater is None or not inflater.unconsumed_tail):
                break  # the entry's data ends short of its declared size: told by the CRC or size check
            if inflater is not None and inflater.unconsumed_tail:
                piece = inflater.unconsumed_tail
            else:
                piece = handle.read(min(READ_CHUNK_BYTES, compressed_left))
                if not piece:
                    raise _Damaged("the file ends inside the entry's data")
                compressed_left -= len(piece)
            if inflater is None:
                chunk = piece[:wanted - total]
            else:
                chunk = inflater.decompress(piece, wanted - total)
                if not chunk and inflater.unconsumed_tail == piece:
                    raise _Damaged("the deflate stream makes no progress")
            chunks.append(chunk)
            total += len(chunk)
            if inflater is not None and inflater.eof:
                break
        return b"".join(chunks)


def _check_declared(entry: Entry, limit: Limit, where: str) -> None:
    """Refuse an entry on what its directory record says, before a byte of it is read."""
    if entry.flag_bits & ENCRYPTED_FLAG:
        raise ModelError(f"{where} is encrypted")
    for flag, what in UNREADABLE_FLAGS.items():
        if entry.flag_bits & flag:
            raise ModelError(f"{where} uses {what}, which is not read")
    if entry.method not in READABLE_METHODS:
        raise ModelError(f"{where} uses compression method {entry.method}; only stored and "
                         "deflate entries are read")
    if entry.file_size > limit.max_bytes:
        raise ModelError(f"{where} declares {size_text(entry.file_size)} uncompressed, over the "
                         f"{limit.what} limit of {size_text(limit.max_bytes)}")
    if entry.method == ZIP_STORED and entry.compress_size != entry.file_size:
        raise ModelError(f"embedded metadata is damaged ({entry.name} is stored in {entry.compress_size:,} "
                         f"bytes, its directory says {entry.file_size:,} uncompressed)")
    if (entry.file_size > ARCHIVE_RATIO_FLOOR_BYTES
            and entry.file_size > ARCHIVE_MAX_RATIO * max(entry.compress_size, 1)):
        raise ModelError(f"{where} inflates {entry.file_size / max(entry.compress_size, 1):,.0f} times "
                         f"(from {entry.compress_size:,} to {entry.file_size:,} bytes), over the limit of "
                         f"{ARCHIVE_MAX_RATIO} times")


def open_archive(handle: IO[bytes]) -> BoundedArchive | None:
    """The zip archive appended to a model, or None when it carries none `zipfile` could read.

    An archive over the entry or directory limits raises ModelError before its directory is parsed;
    so does one whose directory holds more entries than the limit, whatever its end record says.
    Callers add the model's name. The archive reads from `handle` until it is closed.
    """
    try:
        directory = _find_directory(handle)
    except (OSError, struct.error):
        return None
    if directory is None:
        return None
    if directory.entries > ARCHIVE_MAX_ENTRIES:
        raise ModelError(f"the embedded archive has {directory.entries:,} entries, over the limit "
                         f"of {ARCHIVE_MAX_ENTRIES}")
    if directory.size > ARCHIVE_DIRECTORY_MAX_BYTES:
        raise ModelError(f"the embedded archive's directory is {size_text(directory.size)}, over "
                         f"the limit of {size_text(ARCHIVE_DIRECTORY_MAX_BYTES)}")
    try:
        entries = _parse_directory(handle, directory)  # at most a few thousand: the directory is bounded
    except (_Damaged, OSError, struct.error):
        return None
    if len(entries) > ARCHIVE_MAX_ENTRIES:
        raise ModelError(f"the embedded archive has {len(entries):,} entries, over the limit "
                         f"of {ARCHIVE_MAX_ENTRIES}")
    return BoundedArchive(handle, entries)


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
