"""The appended-archive reader reads what `zipfile` reads, without `zipfile`.

`edge_runtime.model_file.bounded_zip` parses the end record, the central directory and the local headers
itself (importing zipfile cost every start of edge-classify about as much as click). `zipfile` is
the reference here: on archives it writes (stored and deflated entries, UTF-8 and cp437 names,
comments, bytes before the archive, zip64 records, a name written twice), both give the same names
and the same bytes; on mutated archives, ours raises nothing but ModelError and, where both read
an entry, both read the same bytes. The hostile cases (bombs, size lies, too many entries) are in
test_hostile_models.py.
"""

from __future__ import annotations

import io
import random
import warnings
import zipfile

import pytest

from edge_runtime.errors import ModelError
from edge_runtime.model_file.bounded_zip import open_archive
from edge_runtime.model_file.limits import LABELS

PREFIX = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4  # stands in for a model's flatbuffer
MUTANTS = 600
MUTATION_SEED = 20


def archive(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED, comment: bytes = b"",
            prefix: bytes = PREFIX) -> bytes:
    """`prefix` followed by a zip archive that zipfile writes in append mode (as embed_metadata does)."""
    buffer = io.BytesIO(prefix)
    buffer.seek(0, 2)
    with zipfile.ZipFile(buffer, mode="a", compression=method) as writer:
        for name, data in entries.items():
            writer.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
        writer.comment = comment
    return buffer.getvalue()


def zip64_archive(entries: dict[str, bytes]) -> bytes:
    """An archive in zip64 form throughout (sizes and offsets in extra fields, the zip64 end records):
    zipfile writes it so when its limits are lowered, as CPython's own tests do."""
    limits = (zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT)
    zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = 8, 1
    try:
        data = archive(entries)
    finally:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = limits
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data
    return data


def reference(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as reader:
        return {name: reader.read(name) for name in reader.namelist()}


def ours(data: bytes) -> dict[str, bytes] | None:
    handle = io.BytesIO(data)
    found = open_archive(handle)
    if found is None:
        return None
    with found as reader:
        return {name: reader.read(name, LABELS) for name in reader.names()}


LABEL_TEXT = "".join(f"class {index}\n" for index in range(500)).encode()
CASES = {
    "deflated": archive({"labels.txt": LABEL_TEXT, "preprocess.json": b'{"height": 32}'}),
    "stored": archive({"labels.txt": LABEL_TEXT, "empty.txt": b""}, method=zipfile.ZIP_STORED),
    "utf-8 and cp437 names": archive({"étiquettes.txt": b"chat\nchien\n", "plain.txt": b"x"}),
    "archive comment": archive({"labels.txt": b"a\nb\n"}, comment=b"made by a tool " * 100),
    "no bytes before it": archive({"labels.txt": b"a\nb\n"}, prefix=b""),
    "zip64 records": zip64_archive({"labels.txt": LABEL_TEXT, "calibration.csv": b"1,2,3\n"}),
}


def _written_twice() -> bytes:
    """An archive holding two entries of one name (zipfile warns, and reads the last)."""
    buffer = io.BytesIO(PREFIX)
    buffer.seek(0, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buffer, mode="a") as writer:
            writer.writestr("labels.txt", b"first\n")
            writer.writestr("labels.txt", b"second\n")
    return buffer.getvalue()


CASES["a name written twice"] = _written_twice()


@pytest.mark.parametrize("case", sorted(CASES))
def test_reads_what_zipfile_reads(case: str) -> None:
    data = CASES[case]
    expected = reference(data)
    assert ours(data) == expected
    assert expected  # the case holds entries: the comparison is not of two empty archives


def test_a_model_without_an_archive_has_none() -> None:
    assert ours(PREFIX) is None
    assert ours(b"") is None


def test_a_name_written_twice_reads_its_last_entry_as_zipfile_does() -> None:
    assert ours(CASES["a name written twice"]) == {"labels.txt": b"second\n"}


def test_entry_data_that_lies_about_its_crc_is_damaged() -> None:
    data = bytearray(CASES["stored"])
    data[data.index(b"class 7")] ^= 0x01
    with pytest.raises(ModelError, match=r"^embedded metadata is damaged \(labels.txt: Bad CRC-32 for file "
                                         r"'labels.txt'\)$"):
        ours(bytes(data))


def test_local_header_that_names_another_file_is_damaged() -> None:
    data = bytearray(CASES["stored"])
    local = data.index(b"PK\x03\x04")
    name_at = local + 30
    assert data[name_at:name_at + 10] == b"labels.txt"
    data[name_at] = ord("L")
    with pytest.raises(ModelError, match=r"labels.txt: file name in directory 'labels.txt' and header "
                                         r"'Labels.txt' differ"):
        ours(bytes(data))


def test_mutated_archives_raise_only_model_errors_and_agree_with_zipfile_where_both_read() -> None:
    """Byte flips and truncations in the archive part: ModelError (one line) or the bytes zipfile reads."""
    generator = random.Random(MUTATION_SEED)
    bases = [CASES["deflated"], CASES["stored"], CASES["zip64 records"]]
    agreed = refused = 0
    for _ in range(MUTANTS):
        data = bytearray(generator.choice(bases))
        archive_start = len(PREFIX)
        if generator.random() < 0.2:
            del data[generator.randrange(archive_start, len(data)):]
        for _ in range(generator.randint(1, 4)):
            if len(data) > archive_start:
                data[generator.randrange(archive_start, len(data))] = generator.randrange(256)
        mutant = bytes(data)
        handle = io.BytesIO(mutant)
        try:
            found = open_archive(handle)
        except ModelError as error:
            assert "\n" not in str(error)
            refused += 1
            continue
        if found is None:
            continue
        for name in sorted(found.names()):
            try:
                mine = found.read(name, LABELS)
            except ModelError as error:
                assert "\n" not in str(error)
                refused += 1
                continue
            try:
                with zipfile.ZipFile(io.BytesIO(mutant)) as reader:
                    theirs = reader.read(name)
            except Exception:  # zipfile refuses some archives this reader reads: nothing to compare
                continue
            assert mine == theirs, name
            agreed += 1
    # Both outcomes happened: the mutations reached the reader's checks and left readable archives too.
    assert agreed > 50 and refused > 50, (agreed, refused)
