"""The zip archive appended to a model, read within limits.

`zipfile` trusts an archive: it builds an object for every entry of the central directory, and its
`read()` inflates a whole entry in one go (a 4 MB deflate stream becomes 4 GiB in memory before the
declared size cuts it). Here the end record is read first and an archive with too many entries or
too large a directory is refused before `zipfile` parses it; an entry is refused before it is
opened when it declares more bytes than its kind allows or inflates more than `ARCHIVE_MAX_RATIO`
times; then it is streamed in `READ_CHUNK_BYTES` pieces with a cap at its limit, and refused when
what it holds disagrees with its directory (CRC, size): an entry that lies about its size is caught
while it is read. Only stored and deflated entries are read: the other methods `zipfile` knows
(bzip2, lzma) inflate a whole input chunk at once, with no bound on their output.
"""

from __future__ import annotations

import dataclasses
import struct
import zipfile
import zlib
from typing import IO

from .errors import ModelError
from .limits import (ARCHIVE_DIRECTORY_MAX_BYTES, ARCHIVE_MAX_ENTRIES, ARCHIVE_MAX_RATIO, ARCHIVE_RATIO_FLOOR_BYTES,
                     READ_CHUNK_BYTES, Limit, size_text)

# The zip format's end of central directory record, its zip64 locator and zip64 record.
END_RECORD = struct.Struct("<4s4H2LH")
END_SIGNATURE = b"PK\x05\x06"
ZIP64_LOCATOR = struct.Struct("<4sLQL")
ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
ZIP64_RECORD = struct.Struct("<4sQ2H2L4Q")
ZIP64_RECORD_SIGNATURE = b"PK\x06\x06"
DIRECTORY_SIGNATURE = b"PK\x01\x02"
# An archive comment is at most 65535 bytes: the end record lies within this many bytes of the end.
END_SEARCH_BYTES = (1 << 16) + END_RECORD.size
READABLE_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
ENCRYPTED_FLAG = 0x1
# What zipfile and zlib raise on damaged data while an entry is opened or read.
READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError,
               ValueError, struct.error)


@dataclasses.dataclass(frozen=True)
class Directory:
    """What the end record says about the central directory, before anything else is read."""

    entries: int
    size: int
    start: int  # where the central directory begins in the file


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
                entries, size = ZIP64_RECORD.unpack(record)[7:9]
                start = record_at - size
    if start < 0 or offset < 0:
        return None
    handle.seek(start)
    if handle.read(len(DIRECTORY_SIGNATURE)) != DIRECTORY_SIGNATURE and entries:
        return None  # not an archive zipfile could read: the model carries none
    return Directory(entries=entries, size=size, start=start)


class BoundedArchive:
    """An appended zip archive whose entries are read within limits; use `open_archive`."""

    def __init__(self, archive: zipfile.ZipFile):
        self._archive = archive

    def __enter__(self) -> BoundedArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._archive.close()

    def names(self) -> set[str]:
        """The names of the archive's entries."""
        return set(self._archive.namelist())

    def read(self, name: str, limit: Limit) -> bytes:
        """The bytes of entry `name`, refused with a one-line ModelError when over `limit` or damaged.

        KeyError when the archive has no such entry. Messages name the entry; callers add the model.
        """
        info = self._archive.getinfo(name)
        where = f"embedded {name}"
        _check_declared(info, limit, where)
        chunks, total = [], 0
        try:
            with self._archive.open(info) as stream:
                while True:
                    chunk = stream.read(min(READ_CHUNK_BYTES, limit.max_bytes + 1 - total))
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > limit.max_bytes:
                        raise ModelError(f"{where} inflates past its declared {size_text(info.file_size)} "
                                         f"and the {limit.what} limit of {size_text(limit.max_bytes)}")
                    chunks.append(chunk)
        except READ_ERRORS as error:
            raise ModelError(f"embedded metadata is damaged ({name}: {_reason(error)})") from error
        if total != info.file_size:
            raise ModelError(f"embedded metadata is damaged ({name} holds {total:,} bytes, its directory "
                             f"says {info.file_size:,})")
        return b"".join(chunks)


def _check_declared(info: zipfile.ZipInfo, limit: Limit, where: str) -> None:
    """Refuse an entry on what its directory record says, before a byte of it is read."""
    if info.flag_bits & ENCRYPTED_FLAG:
        raise ModelError(f"{where} is encrypted")
    if info.compress_type not in READABLE_METHODS:
        raise ModelError(f"{where} uses compression method {info.compress_type}; only stored and "
                         "deflate entries are read")
    if info.file_size > limit.max_bytes:
        raise ModelError(f"{where} declares {size_text(info.file_size)} uncompressed, over the "
                         f"{limit.what} limit of {size_text(limit.max_bytes)}")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise ModelError(f"embedded metadata is damaged ({info.filename} is stored in {info.compress_size:,} "
                         f"bytes, its directory says {info.file_size:,} uncompressed)")
    if (info.file_size > ARCHIVE_RATIO_FLOOR_BYTES
            and info.file_size > ARCHIVE_MAX_RATIO * max(info.compress_size, 1)):
        raise ModelError(f"{where} inflates {info.file_size / max(info.compress_size, 1):,.0f} times "
                         f"(from {info.compress_size:,} to {info.file_size:,} bytes), over the limit of "
                         f"{ARCHIVE_MAX_RATIO} times")


def open_archive(handle: IO[bytes]) -> BoundedArchive | None:
    """The zip archive appended to a model, or None when it carries none `zipfile` could read.

    An archive over the entry or directory limits raises ModelError before its directory is parsed;
    so does one whose directory holds more entries than its end record says. Callers add the model's name.
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
    handle.seek(0)
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error, NotImplementedError):
        return None
    entries = len(archive.infolist())
    if entries > ARCHIVE_MAX_ENTRIES:
        archive.close()
        raise ModelError(f"the embedded archive has {entries:,} entries, over the limit "
                         f"of {ARCHIVE_MAX_ENTRIES}")
    return BoundedArchive(archive)


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
