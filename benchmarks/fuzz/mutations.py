"""How a fuzz case is made (`mutated_models`, a hypothesis strategy): a seed, maybe a structural
change of its archive (a lying directory, a bomb, many entries, hostile content), maybe writes into
its graph, then byte mutations (flips, interesting integers, offsets out of range, truncations,
splices).
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zipfile
from typing import Any, Callable

import numpy as np

from benchmarks.fuzz.archives import bomb_entry, raw_entry
from benchmarks.fuzz.graph import FLOAT32_MAX, stored_bytes, write_graph_value
from benchmarks.fuzz.seeds import Seed
from edge_runtime.model_file.limits import ARCHIVE_MAX_ENTRIES, LABELS_MAX_BYTES, LABELS_MAX_LINES, MIB

FLOAT32_TINY = float(np.finfo(np.float32).smallest_subnormal)
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               (1 << 63) - 1, (1 << 64) - 1)
FLOAT_FORMATS = ("<f", "<d")
GRAPH_WRITES_MAX = 2


def _replacements(form: str, current: int | float):
    """What a graph value is rewritten to: its neighbours, its negation and double, the edges of its
    type and special floats (those that change it), or anything of its type."""
    st = _st()
    if form in FLOAT_FORMATS:
        chosen: tuple[int | float, ...] = (0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, FLOAT32_TINY,
                                           FLOAT32_MAX, current * 2, -current, current / 2)
        anything = st.floats(width=32 if form == "<f" else 64)
    else:
        bits = 8 * struct.calcsize(form)
        low, high = (0, (1 << bits) - 1) if form[1].isupper() else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        chosen = tuple(sorted({min(max(value, low), high)
                               for value in (current + 1, current - 1, -current, current * 2, 0, 1, -1, low, high)}))
        anything = st.integers(low, high)
    unchanged = stored_bytes(form, current)
    changes = tuple(value for value in chosen if stored_bytes(form, value) != unchanged)
    return st.sampled_from(changes) | anything


Draw = Callable[[Any], Any]


def _st():
    from hypothesis import strategies

    return strategies


def _archive_start(seed: Seed) -> int:
    return len(seed.prefix)


def _position(draw: Draw, data: bytes, seed: Seed) -> int:
    """A byte position, drawn more often where the readers look: metadata, archive, its directory."""
    st = _st()
    if not data:
        return 0
    start, end = seed.metadata_span
    directory = data.rfind(b"PK\x01\x02")
    regions = {"anywhere": (0, len(data)), "metadata": (start, end), "archive": (_archive_start(seed), len(data)),
               "directory": (max(directory, 0), len(data)), "model tables": (0, min(256, len(data)))}
    low, high = regions[draw(st.sampled_from(sorted(regions)))]
    low, high = min(low, len(data) - 1), max(min(high, len(data)), 1)
    return draw(st.integers(low, max(low, high - 1)))


def flip_bytes(data: bytes, seed: Seed, draw: Draw) -> tuple[bytes, str]:
    st = _st()
    if not data:
        return data, "flip nothing (empty)"
    damaged = bytearray(data)
    count = draw(st.integers(1, 8))
    for _ in range(count):
        damaged[_position(draw, data, seed)] ^= draw(st.integers(1, 255))
    return bytes(damaged), f"flip {count} bytes"


def interesting_integer(data: bytes, seed: Seed, draw: Draw) -> tuple[bytes, str]:
    st = _st()
    width = draw(st.sampled_from((1, 2, 4, 8)))
    value = draw(st.sampled_from(INTERESTING) | st.integers(0, (1 << (8 * width)) - 1)) & ((1 << (8 * width)) - 1)
    position = _position(draw, data, seed)
    damaged = bytearray(data)
    damaged[position:position + width] = value.to_bytes(width, "little")
    return bytes(damaged), f"write {value:#x} ({width} bytes) at {position}"


def flatbuffer_offset(data: bytes, seed: Seed, draw: Draw) -> tuple[bytes, str]:
    """An offset or length of the metadata flatbuffer, or of the model's tables, pointing out of range."""
    st = _st()
    start, end = seed.metadata_span
    in_metadata = draw(st.booleans())
    low, high = (start, end) if in_metadata else (0, min(len(seed.prefix), 4096))
    position = low + 4 * draw(st.integers(0, max((high - low) // 4 - 1, 0)))
    room = (end - start) if in_metadata else len(data)
    value = draw(st.sampled_from((room, room + 1, room * 2, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000))
                 | st.integers(room, 0xFFFFFFFF))
    damaged = bytearray(data)
    if position + 4 <= len(damaged):
        damaged[position:position + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
    where = "metadata" if in_metadata else "model"
    return bytes(damaged), f"{where} offset at {position} -> {value:#x}"


def truncate(data: bytes, seed: Seed, draw: Draw) -> tuple[bytes, str]:
    cut = _position(draw, data, seed)
    return data[:cut], f"truncate at {cut}"


def splice(data: bytes, seed: Seed, draw: Draw) -> tuple[bytes, str]:
    st = _st()
    position = _position(draw, data, seed)
    if draw(st.booleans()):
        length = draw(st.integers(1, 64))
        return data[:position] + data[position + length:], f"delete {length} at {position}"
    inserted = draw(st.binary(min_size=1, max_size=64))
    return data[:position] + inserted + data[position:], f"insert {len(inserted)} at {position}"


BYTE_MUTATIONS = (flip_bytes, interesting_integer, flatbuffer_offset, truncate, splice)


def graph_write(data: bytes, seed: Seed, draw: Draw) -> tuple[bytes, str]:
    """One value only the interpreter reads, rewritten (`graph_values`): a kind first, so that the
    few constants and zero points are drawn as often as the many shapes, then a value of that kind.
    `data` must still hold the seed's flatbuffer where the seed has it."""
    st = _st()
    kind = draw(st.sampled_from(sorted(seed.graph)))
    value = draw(st.sampled_from(seed.graph[kind]))
    current = struct.unpack_from(value.form, data, value.position)[0]
    new = draw(_replacements(value.form, current))
    return write_graph_value(data, value, new), f"{value.where}: {current!r} -> {new!r}"


def directory_lie(seed: Seed, draw: Draw) -> tuple[bytes, str]:
    """An archive whose directory lies: sizes, method, flags, names or its entry count."""
    st = _st()
    entries = list(seed.entries)
    index = draw(st.integers(0, len(entries) - 1))
    entry = entries[index]
    field = draw(st.sampled_from(("file_size", "compress_size", "method", "flags", "name", "count")))
    size = st.sampled_from((0, 1, len(entry.payload) - 1, len(entry.payload) + 1, LABELS_MAX_BYTES,
                            LABELS_MAX_BYTES + 1, 0xFFFFFFFF)) | st.integers(0, 0xFFFFFFFF)
    count = None
    if field == "file_size":
        entry = dataclasses.replace(entry, file_size=max(draw(size), 0))
    elif field == "compress_size":
        entry = dataclasses.replace(entry, compress_size=max(draw(size), 0))
    elif field == "method":
        entry = dataclasses.replace(entry, method=draw(st.sampled_from((0, 8, 12, 14, 99))))
    elif field == "flags":
        entry = dataclasses.replace(entry, flags=draw(st.sampled_from((1, 8, 0x40, 0x800, 0xFFFF))))
    elif field == "name":
        entry = dataclasses.replace(entry, name=draw(st.sampled_from((entries[0].name, "", "../" + entry.name))))
    else:
        count = draw(st.integers(0, 0xFFFF))
    entries[index] = entry
    return seed.rebuilt(entries, count), f"directory lie: {entry.name} {field}"


def bomb(seed: Seed, draw: Draw) -> tuple[bytes, str]:
    """A deflate bomb in place of the labels (or calibration) file: honest about its size, or lying."""
    st = _st()
    entries = list(seed.entries)
    index = draw(st.integers(0, len(entries) - 1))
    inflated = draw(st.sampled_from((2 * MIB, 64 * MIB, 4096 * MIB - MIB)))
    declared = draw(st.sampled_from((None, 0, 100, LABELS_MAX_BYTES, LABELS_MAX_BYTES + 1)))
    entries[index] = bomb_entry(entries[index].name, inflated, declared)
    return seed.rebuilt(entries), f"bomb {entries[index].name}: {inflated:,} bytes, declares {declared}"


def many_entries(seed: Seed, draw: Draw) -> tuple[bytes, str]:
    st = _st()
    extra = draw(st.sampled_from((ARCHIVE_MAX_ENTRIES, ARCHIVE_MAX_ENTRIES * 4)) | st.integers(1, 3000))
    entries = list(seed.entries) + [raw_entry(f"f{number}", b"") for number in range(extra)]
    count = draw(st.sampled_from((None, len(seed.entries), 0, 0xFFFF)))
    return seed.rebuilt(entries, count), f"{len(entries)} entries, end record says {count}"


def hostile_entry(seed: Seed, draw: Draw) -> tuple[bytes, str]:
    """An entry's content replaced: deep or wrongly typed JSON, too many lines, not UTF-8, too long."""
    st = _st()
    entries = list(seed.entries)
    index = draw(st.integers(0, len(entries) - 1))
    depth = draw(st.integers(1, 100_000))
    content = draw(st.sampled_from((
        b"[" * depth, b'{"a":' * depth, b"\n" * (LABELS_MAX_LINES + 1), b"x\n" * (LABELS_MAX_LINES + 1),
        b"\xff\xfe" * 10, b"[]", b"null", b'"text"', b'{"height": "big", "scale": "x"}',
        b'{"background": [1e999, 0, 0]}', b'{"width": 1e999}', b'{"background": 5}',
        b'{"resize": [], "resample": {}}', b"1.0,2.0\n", b"nan,nan,nan\n" * 3, b"a" * (LABELS_MAX_BYTES + 1),
        b"", b"1,1,1,1,1\n",
    )))
    method = draw(st.sampled_from((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)))
    entries[index] = raw_entry(entries[index].name, content, method)
    return seed.rebuilt(entries), f"{entries[index].name} holds {content[:20]!r}... ({len(content):,} bytes)"


STRUCTURAL_MUTATIONS = (directory_lie, bomb, many_entries, hostile_entry)


@dataclasses.dataclass(frozen=True)
class Case:
    seed: str
    steps: tuple[str, ...]
    data: bytes


def mutated_models(seeds: list[Seed], graph_writes: bool = True):
    """The hypothesis strategy of fuzz cases: a seed, maybe a structural change, maybe writes into its
    graph (unless `graph_writes` is False), then byte mutations."""
    st = _st()

    @st.composite
    def cases(draw: Draw) -> Case:
        seed = draw(st.sampled_from(seeds))
        data, steps = seed.data, []
        if draw(st.integers(0, 2)) == 0:
            data, step = draw(st.sampled_from(STRUCTURAL_MUTATIONS))(seed, draw)
            steps.append(step)
        graph = graph_writes and draw(st.integers(0, 2)) == 0
        if graph:  # the archive's changes leave the flatbuffer where it was
            for _ in range(draw(st.integers(1, GRAPH_WRITES_MAX))):
                data, step = graph_write(data, seed, draw)
                steps.append(step)
        # After graph writes, few byte mutations: most of them make the readers refuse the model, and
        # the graph writes are there to reach the interpreter.
        for _ in range(draw(st.integers(0 if steps else 1, 1 if graph else 3))):
            data, step = draw(st.sampled_from(BYTE_MUTATIONS))(data, seed, draw)
            steps.append(step)
        return Case(seed.name, tuple(steps), data)

    return cases()
