"""Hostile model files (issue 14): every embedded entry and the metadata flatbuffer are read within
the limits of `edge_runtime.model_file.limits`, refused in one line naming the model and the entry (exit 2),
with peak memory measured in a subprocess under an address-space cap; the converter refuses to
write what the readers would refuse.

The models are the fuzzer's seeds (benchmarks/fuzz/seeds.py): a tiny float32 classifier exported
as ours (official metadata plus labels.txt, preprocess.json, model_info.json) and a third-party-style
one (official metadata, labels and a score calibration file).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import flatbuffers
import pytest
from click.testing import CliRunner
from PIL import Image

from benchmarks.fuzz.archives import bomb_entry, deflate_bomb, raw_entry
from benchmarks.fuzz.seeds import CALIBRATION_FILE, LABELS, SIDE, Seed, build_seeds
from converter.official_metadata import ModelDescription, append_files, metadata_flatbuffer, spec_normalization
from edge_runtime.cli import main
from edge_runtime.errors import ModelError
from edge_runtime.model_file import limits
from edge_runtime.model_file.bounded_zip import open_archive
from edge_runtime.model_file.flatbuffer_check import UOFFSET, Verifier
from edge_runtime.model_file.labels import read_labels
from edge_runtime.model_file.metadata import (INFO_ENTRY, LABELS_ENTRY, PREPROCESS_ENTRY, ModelMetadata, embed_metadata,
                                              read_metadata, read_metadata_bytes)
from edge_runtime.model_file.official_metadata import METADATA_SCHEMA, parse_metadata, read_official_metadata
from edge_runtime.preprocess import PreprocessSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
BOMB_INFLATED = 4095 * limits.MIB  # 4 GiB less 1 MiB: the largest a plain (not zip64) header declares
# The address space a refusing edge-classify runs in: the report saw a MemoryError under 3 GiB.
ADDRESS_SPACE_CAP = 3 << 30
# How much more resident memory a hostile model may cost than reading a valid one. The peaks count the
# interpreter library's mapped pages, which a loaded machine may have evicted in one run and not the
# next: once, under load, a refusal peaked 45 MiB above the valid run. The bombs themselves would add GiB.
MAX_EXTRA_RSS_MIB = 64
MANY_ENTRIES = 60_000
# The ModelMetadata field that holds its subgraphs (metadata_schema.fbs id 3).
SUBGRAPHS_SLOT = 3


@pytest.fixture(scope="module")
def seeds() -> dict[str, Seed]:
    return {seed.name: seed for seed in build_seeds()}


# edge-classify under an address-space cap, writing its own peak resident memory (VmHWM) at exit.
# (Not ru_maxrss from wait4: a child keeps the peak of the process it was forked from, here pytest's.)
CAPPED_CLI = """
import atexit, resource, sys
cap, peak_file = int(sys.argv[1]), sys.argv[2]
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

def write_peak():
    with open('/proc/self/status') as status, open(peak_file, 'w') as out:
        out.write(next(line.split()[1] for line in status if line.startswith('VmHWM:')))

atexit.register(write_peak)
from edge_runtime.cli import main
main(sys.argv[3:], prog_name='edge-classify')
"""


def run_capped(*args: object, address_space: int = ADDRESS_SPACE_CAP) -> tuple[int, str, float]:
    """edge-classify in a subprocess under an address-space cap: (exit code, output, peak RSS in MiB)."""
    with tempfile.TemporaryDirectory() as folder:
        peak_file = Path(folder) / "peak"
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        completed = subprocess.run([sys.executable, "-c", CAPPED_CLI, str(address_space), str(peak_file),
                                    *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   cwd=REPO_ROOT, env=environment, timeout=300)
        peak_kib = int(peak_file.read_text())
    return completed.returncode, completed.stdout.decode("utf-8", "replace"), peak_kib / 1024


def one_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture(scope="module")
def valid_peak_mib(seeds, tmp_path_factory) -> float:
    """Peak RSS of `--info` on the valid model: what hostile ones are measured against."""
    path = tmp_path_factory.mktemp("valid") / "ours.tflite"
    path.write_bytes(seeds["ours"].data)
    code, output, peak = run_capped("--info", path)
    assert code == 0, output
    return peak


def replaced(seed: Seed, name: str, entry) -> bytes:
    return seed.rebuilt([entry if existing.name == name else existing for existing in seed.entries])


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- the four cases of the issue: one line, exit 2, bounded peak memory -----------------------------------

@pytest.mark.parametrize("seed_name, limit", [("ours", "labels"), ("official", "associated file")])
def test_labels_bomb_is_refused_before_it_inflates(seeds, valid_peak_mib, tmp_path, seed_name, limit) -> None:
    seed = seeds[seed_name]
    model = replaced(seed, LABELS_ENTRY, bomb_entry(LABELS_ENTRY, BOMB_INFLATED))
    assert len(model) < 5 * limits.MIB, "the bomb is a few MB on disk"
    path = write(tmp_path, "bomb.tflite", model)
    code, output, peak = run_capped("--info", path)
    assert code == 2
    assert one_line(output) == (f"Error: {path}: embedded labels.txt declares 4095 MiB uncompressed, "
                                f"over the {limit} limit of 1 MiB")
    assert peak < valid_peak_mib + MAX_EXTRA_RSS_MIB, (peak, valid_peak_mib)


def test_bomb_stream_really_inflates_to_what_it_declares() -> None:
    """The test's bomb is a real one: 64 MiB of zeros from a deflate stream of a few tens of KB."""
    payload = deflate_bomb(64 * limits.MIB)
    inflater = zlib_inflater()
    total = 0
    for start in range(0, len(payload), 4096):
        total += len(inflater.decompress(payload[start:start + 4096]))
    assert inflater.eof and total == 64 * limits.MIB
    assert len(payload) < 128 * 1024


def zlib_inflater():
    import zlib

    return zlib.decompressobj(-15)


@pytest.mark.parametrize("declared, message", [
    (100, "embedded metadata is damaged (labels.txt: Bad CRC-32 for file 'labels.txt')"),
    (limits.LABELS_MAX_BYTES, "embedded metadata is damaged (labels.txt: Bad CRC-32 for file 'labels.txt')"),
])
def test_directory_that_lies_about_sizes_is_caught_while_reading(seeds, valid_peak_mib, tmp_path,
                                                                 declared, message) -> None:
    """The bomb's directory declares a small size: reading stops at that size, not at 4 GiB."""
    model = replaced(seeds["ours"], LABELS_ENTRY, bomb_entry(LABELS_ENTRY, BOMB_INFLATED, declared))
    path = write(tmp_path, "liar.tflite", model)
    code, output, peak = run_capped("--info", path)
    assert code == 2
    assert one_line(output) == f"Error: {path}: {message}"
    assert peak < valid_peak_mib + MAX_EXTRA_RSS_MIB, (peak, valid_peak_mib)


def test_other_size_lies_are_one_line_each(seeds) -> None:
    seed = seeds["ours"]
    labels = next(entry for entry in seed.entries if entry.name == LABELS_ENTRY)
    cases = {
        "more than the file holds": dataclasses.replace(labels, compress_size=10 * limits.MIB,
                                                        file_size=10 * limits.MIB // 2),
        "larger uncompressed than stored": dataclasses.replace(labels, file_size=labels.file_size + 5),
        "bigger than it is": dataclasses.replace(raw_entry(LABELS_ENTRY, b"a\nb\nc\n", zipfile.ZIP_DEFLATED),
                                                 file_size=600),
    }
    for what, entry in cases.items():
        with pytest.raises(ModelError) as caught:
            read_metadata_bytes(replaced(seed, LABELS_ENTRY, entry))
        message = str(caught.value)
        assert "\n" not in message and "labels.txt" in message, (what, message)


@pytest.mark.parametrize("count, message", [
    (None, rf"the embedded archive has {MANY_ENTRIES + 3:,} entries, over the limit of 256"),
    (3, r"the embedded archive's directory is [\d,]+ bytes, over the limit of 128 KiB"),
])
def test_archive_with_a_huge_number_of_entries_is_refused_before_its_directory_is_parsed(
        seeds, valid_peak_mib, tmp_path, count, message) -> None:
    seed = seeds["ours"]
    entries = list(seed.entries) + [raw_entry(f"e{number}", b"") for number in range(MANY_ENTRIES)]
    path = write(tmp_path, "crowd.tflite", seed.rebuilt(entries, count))
    code, output, peak = run_capped("--info", path)
    assert code == 2
    assert re.fullmatch(f"Error: {re.escape(str(path))}: {message}", one_line(output)), output
    assert peak < valid_peak_mib + MAX_EXTRA_RSS_MIB, (peak, valid_peak_mib)


def test_entries_beyond_what_the_end_record_says_are_refused(seeds) -> None:
    """A directory small enough to parse, holding more entries than the limit, behind an end record that says 3."""
    seed = seeds["ours"]
    entries = list(seed.entries) + [raw_entry(f"{number}", b"") for number in range(limits.ARCHIVE_MAX_ENTRIES)]
    with pytest.raises(ModelError, match=r"^the embedded archive has 259 entries, over the limit of 256$"):
        read_metadata_bytes(seed.rebuilt(entries, count=3))


def _field_position(raw: bytes, slot: int) -> int:
    """Where the root table's field `slot` lies in a flatbuffer."""
    checker = Verifier(raw)
    position = checker.field(checker.root(), slot, UOFFSET.size)
    assert position is not None
    return position


def test_metadata_flatbuffer_with_out_of_range_offsets_is_one_line(seeds, valid_peak_mib, tmp_path) -> None:
    seed = seeds["official"]
    start, end = seed.metadata_span
    raw = seed.data[start:end]
    field = start + _field_position(raw, SUBGRAPHS_SLOT)
    vector = field + int.from_bytes(seed.data[field:field + 4], "little")
    damaged = {
        "offset": (field, 0x7FFFFFF0),  # the subgraphs vector far past the buffer
        "length": (vector, 0x10000000),  # the subgraphs vector claims 268 million elements
    }
    for what, (position, value) in damaged.items():
        model = bytearray(seed.data)
        model[position:position + 4] = value.to_bytes(4, "little")
        path = write(tmp_path, f"{what}.tflite", bytes(model))
        code, output, peak = run_capped("--info", path)
        assert code == 2, output
        line = one_line(output)
        assert re.fullmatch(rf"Error: {re.escape(str(path))}: the TFLite metadata is damaged \((a vector|field 3 of "
                            r"ModelMetadata) at byte \d+ \(\d+ bytes\) lies outside the \d+-byte buffer\)", line), line
        assert peak < valid_peak_mib + MAX_EXTRA_RSS_MIB, (what, peak, valid_peak_mib)


def test_metadata_pointing_many_offsets_at_one_table_is_refused() -> None:
    """20,000 subgraphs that are one table: the object API would build 20,000 objects (and, nested,
    their product); the verifier stops at FLATBUFFER_MAX_OBJECTS visits."""
    from edge_runtime.model_file import metadata_schema_generated as schema

    builder = flatbuffers.Builder(1024)
    schema.SubGraphMetadataStart(builder)
    subgraph = schema.SubGraphMetadataEnd(builder)
    copies = 20_000
    builder.StartVector(UOFFSET.size, copies, UOFFSET.size)
    for _ in range(copies):
        builder.PrependUOffsetTRelative(subgraph)
    subgraphs = builder.EndVector()
    schema.ModelMetadataStart(builder)
    schema.ModelMetadataAddSubgraphMetadata(builder, subgraphs)
    builder.Finish(schema.ModelMetadataEnd(builder), file_identifier=b"M001")
    with pytest.raises(ValueError, match="more than 10,000 tables, strings and vectors"):
        parse_metadata(bytes(builder.Output()), {}.__getitem__)


def test_metadata_buffer_over_its_limit_is_refused() -> None:
    description = ModelDescription(name="x" * (limits.METADATA_FLATBUFFER_MAX_BYTES + 1), description="",
                                   version="", labels=LABELS, width=SIDE, height=SIDE,
                                   normalization=spec_normalization(PreprocessSpec()))
    with pytest.raises(ModelError, match=r"^refusing to write metadata: the TFLite metadata would be "
                                         r"1,049,\d+ bytes, over the limit of 1 MiB$"):
        metadata_flatbuffer(description)


# --- every path that opens a model --------------------------------------------------------------------------

def test_every_path_that_opens_a_model_refuses_the_bomb_in_one_line(seeds, tmp_path) -> None:
    path = write(tmp_path, "bomb.tflite", replaced(seeds["ours"], LABELS_ENTRY, bomb_entry(LABELS_ENTRY, BOMB_INFLATED)))
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (SIDE, SIDE), (90, 90, 90)).save(folder / "grey.png")
    expected = f"Error: {path}: embedded labels.txt declares 4095 MiB uncompressed, over the labels limit of 1 MiB"
    runner = CliRunner()
    for args in (["--model", path, folder / "grey.png"], ["--model", path, folder], ["--info", path],
                 ["--benchmark", path, "--runs", "1"], ["--model", path, "--camera", "0", "--frames", "1"]):
        result = runner.invoke(main, [str(arg) for arg in args])
        assert result.exit_code == 2, (args, result.output)
        assert one_line(result.output) == expected, args


def test_the_report_reads_models_through_the_same_limits(seeds, tmp_path) -> None:
    from converter.report import int8_calibration, provenance_notes

    path = write(tmp_path, "model_int8.tflite",
                 replaced(seeds["ours"], LABELS_ENTRY, bomb_entry(LABELS_ENTRY, BOMB_INFLATED)))
    for read in (lambda: int8_calibration([("int8", path)]), lambda: provenance_notes([("int8", path)], None)):
        with pytest.raises(ModelError, match=rf"^{re.escape(str(path))}: embedded labels.txt declares 4095 MiB"):
            read()


def test_verify_reads_a_hostile_manifest_within_its_limit(seeds, tmp_path) -> None:
    model = write(tmp_path, "model.tflite", seeds["ours"].data)
    manifest = tmp_path / "manifest.json"
    runner = CliRunner()
    with open(manifest, "wb") as handle:
        handle.write(b'{"files": {}, "pad": "')
        handle.truncate(limits.MANIFEST_MAX_BYTES + 10)
    result = runner.invoke(main, ["--verify", str(model)])
    assert result.exit_code == 2
    assert one_line(result.output) == f"Error: {manifest}: manifest file is over the limit of 8 MiB"
    manifest.write_text("[" * 100_000)
    result = runner.invoke(main, ["--verify", str(model)])
    assert one_line(result.output) == f"Error: {manifest}: not a readable manifest (nested too deeply)"
    manifest.write_text(json.dumps({"files": {"model.tflite": ["not", "a", "table"]}}))
    result = runner.invoke(main, ["--verify", str(model)])
    assert one_line(result.output) == f"Error: {manifest}: not a manifest (the entry for model.tflite is not a table)"
    assert result.exit_code == 2


def test_labels_file_beside_the_model_is_held_to_the_labels_limits(tmp_path) -> None:
    too_big = tmp_path / "big.txt"
    too_big.write_bytes(b"x" * (limits.LABELS_MAX_BYTES + 1))
    with pytest.raises(ModelError, match=rf"^{re.escape(str(too_big))}: labels file is over the limit of 1 MiB$"):
        read_labels(too_big)
    too_many = tmp_path / "many.txt"
    too_many.write_bytes(b"a\n" * (limits.LABELS_MAX_LINES + 1))
    with pytest.raises(ModelError, match=rf"^{re.escape(str(too_many))}: more than 100,000 lines of labels"):
        read_labels(too_many)
    just_enough = tmp_path / "enough.txt"
    just_enough.write_bytes(b"a\n" * limits.LABELS_MAX_LINES)
    assert len(read_labels(just_enough)) == limits.LABELS_MAX_LINES


# --- the entries' contents --------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry, content, message", [
    (PREPROCESS_ENTRY, b"[" * 5_000, "embedded preprocess.json: JSON entry is nested too deeply to read"),
    (PREPROCESS_ENTRY, b"{" + b" " * limits.JSON_ENTRY_MAX_BYTES + b"}",
     "embedded preprocess.json declares 65,538 bytes uncompressed, over the JSON entry limit of 64 KiB"),
    (PREPROCESS_ENTRY, b'{"scale": "x"}', "embedded metadata is damaged (preprocess.json gives scale = 'x')"),
    (PREPROCESS_ENTRY, b'{"background": [1e999, 0, 0]}',
     "embedded metadata is damaged (cannot convert float infinity to integer)"),
    (PREPROCESS_ENTRY, b"[]", "embedded metadata is damaged ('list' object has no attribute 'items')"),
    (INFO_ENTRY, b"[1, 2]", "embedded metadata is damaged (model_info.json is not a JSON object)"),
    (LABELS_ENTRY, b"\xff\xfe", "embedded labels.txt: the labels text is not UTF-8"),
    (LABELS_ENTRY, b"\n" * (limits.LABELS_MAX_LINES + 1),
     "embedded labels.txt: more than 100,000 lines of labels (the limit is 100,000)"),
])
def test_hostile_entry_contents_are_one_line(seeds, tmp_path, entry, content, message) -> None:
    path = write(tmp_path, "hostile.tflite",
                 replaced(seeds["ours"], entry, raw_entry(entry, content)))
    with pytest.raises(ModelError) as caught:
        read_metadata(path)
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize("method, flags, message", [
    (zipfile.ZIP_BZIP2, 0, "embedded labels.txt uses compression method 12; only stored and deflate entries are read"),
    (zipfile.ZIP_STORED, 1, "embedded labels.txt is encrypted"),
])
def test_entries_that_cannot_be_streamed_with_a_bound_are_refused(seeds, method, flags, message) -> None:
    labels = next(entry for entry in seeds["ours"].entries if entry.name == LABELS_ENTRY)
    model = replaced(seeds["ours"], LABELS_ENTRY, dataclasses.replace(labels, method=method, flags=flags))
    with pytest.raises(ModelError, match=f"^{re.escape(message)}$"):
        read_metadata_bytes(model)


def test_compression_ratio_is_checked_before_inflating(seeds) -> None:
    """2 MiB of labels declared honestly but over the ratio: refused on the ratio, without inflating."""
    bomb = bomb_entry(LABELS_ENTRY, 2 * limits.MIB)
    big_limit = limits.LABELS._replace(max_bytes=4 * limits.MIB)
    with open_archive(io.BytesIO(replaced(seeds["ours"], LABELS_ENTRY, bomb))) as archive:
        with pytest.raises(ModelError, match=r"^embedded labels.txt inflates [\d,]+ times \(from [\d,]+ to "
                                             r"2,097,152 bytes\), over the limit of 100 times$"):
            archive.read(LABELS_ENTRY, big_limit)


def test_official_calibration_file_is_held_to_its_limit(seeds) -> None:
    model = replaced(seeds["official"], CALIBRATION_FILE,
                     raw_entry(CALIBRATION_FILE, b"1,1,1\n" * (limits.CALIBRATION_MAX_LINES + 1)))
    with pytest.raises(ModelError, match=r"^third: embedded calibration.csv: more than 100,000 lines of score "
                                         r"calibration"):
        read_official_metadata(model, "third")


# --- the writer refuses what the readers would --------------------------------------------------------------

def test_converter_refuses_to_embed_over_the_limits(seeds) -> None:
    prefix = seeds["ours"].prefix
    long_labels = ["x" * 1000] * 1100  # 1.1 MB
    many_labels = [str(number) for number in range(limits.LABELS_MAX_LINES + 1)]
    for labels, reason in ((long_labels, "labels of 1,101,100 bytes is over the limit of 1 MiB"),
                           (many_labels, "more than 100,000 lines of labels")):
        with pytest.raises(ModelError, match=f"^refusing to embed metadata: labels.txt: {reason}"):
            embed_metadata(prefix, ModelMetadata(labels, PreprocessSpec()))
        with pytest.raises(ModelError, match=f"^refusing to write metadata: labels.txt: {reason}"):
            metadata_flatbuffer(ModelDescription(name="m", description="", version="", labels=labels, width=SIDE,
                                                 height=SIDE, normalization=spec_normalization(PreprocessSpec())))
    with pytest.raises(ModelError, match="^refusing to embed metadata: model_info.json: JSON entry of "):
        embed_metadata(prefix, ModelMetadata(LABELS, PreprocessSpec(), {"note": "x" * limits.JSON_ENTRY_MAX_BYTES}))
    with pytest.raises(ModelError, match="^refusing to append big.bin: associated file of 1,048,577 bytes"):
        append_files(prefix, {"big.bin": bytes(limits.ASSOCIATED_FILE_MAX_BYTES + 1)})
    with pytest.raises(ModelError, match="^refusing to append 257 files: the limit is 256$"):
        append_files(prefix, {f"{number}": b"" for number in range(limits.ARCHIVE_MAX_ENTRIES + 1)})


def test_the_largest_labels_the_converter_writes_read_back(seeds) -> None:
    """The limits are inclusive: 100,000 labels are written and read back, by both readers."""
    labels = [f"c{number}" for number in range(limits.LABELS_MAX_LINES)]
    spec = PreprocessSpec(height=SIDE, width=SIDE)
    description = ModelDescription(name="m", description="", version="", labels=labels, width=SIDE, height=SIDE,
                                   normalization=spec_normalization(spec))
    from converter.official_metadata import attach_metadata_buffer

    # attach_metadata_buffer replaces the seed's TFLITE_METADATA entry with the new one.
    model = embed_metadata(attach_metadata_buffer(seeds["ours"].prefix, metadata_flatbuffer(description)),
                           ModelMetadata(labels, spec))
    assert read_metadata_bytes(model).labels == labels
    assert read_official_metadata(model, "m").labels == labels


# --- the verifier's schema is the generated code's ------------------------------------------------------------

def test_metadata_schema_names_every_field_the_generated_code_reads() -> None:
    """Each table's field slots, from the vtable offsets metadata_schema_generated.py reads."""
    source = (REPO_ROOT / "edge_runtime" / "model_file" / "metadata_schema_generated.py").read_text(encoding="utf-8")
    generated: dict[str, set[int]] = {}
    for block in re.split(r"^class ", source, flags=re.MULTILINE)[1:]:
        name = block.split("(", 1)[0]
        if name.endswith("T") and name[:-1] in METADATA_SCHEMA or "def Init(self, buf, pos)" not in block:
            continue
        offsets = {int(value) for value in re.findall(r"self\._tab\.Offset\((\d+)\)", block)}
        generated[name] = {(offset - 4) // 2 for offset in offsets}
    described = {name: {field.slot for field in fields} for name, fields in METADATA_SCHEMA.items()}
    assert described == generated


def test_info_shows_a_hostile_calibration_record_without_formatting_it() -> None:
    from edge_runtime.info import describe_calibration

    for hostile in ({"low": "x", "high": 1}, {"low": 1.0}, {"low": None, "high": True}):
        assert describe_calibration({"count": 5, "logit_range": hostile}) is None, hostile
    assert describe_calibration({"count": 5, "seed": 1, "logit_range": {"low": -1.5, "high": 2.0}}) == (
        "5 training images, seed 1; logits quantized from -1.5 up to at most 2 "
        "(lowest winning logit - ln 256 to highest logit)")
    for hostile in ("pool", {"layer": "p\x1b[2J", "map": [8, 8]}, {"layer": "p" * 101, "map": [8, 8]},
                    {"layer": "pool", "map": [8]}, {"layer": "pool", "map": [True, 8]}, {"layer": "pool"}):
        assert describe_calibration({"count": 5, "pooling": hostile}) is None, hostile
    assert describe_calibration({"count": 5, "seed": 1, "pooling": {"layer": "pool", "map": [8, 8]}}) == (
        "5 training images, seed 1; average pool 'pool' over the whole 8x8 map quantized as a mean")
