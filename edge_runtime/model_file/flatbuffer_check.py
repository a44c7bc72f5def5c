"""Bounds-checked reading of flatbuffers from outside, for the parts of a model we parse ourselves.

The Python `flatbuffers` runtime has no verifier (the C++ one is what TFLite runs on a model before
its interpreter uses it), and the code flatc generates follows every offset it is given. So before
generated code touches a buffer, `verify` walks it from the root along a schema: every table's
vtable, every field, string (with its terminating zero) and vector must lie inside the buffer;
nesting is at most `FLATBUFFER_MAX_DEPTH` deep and at most `FLATBUFFER_MAX_OBJECTS` tables,
strings and vectors are visited, so a buffer that points many offsets at one table cannot make a
reader build millions of objects. Offsets in a flatbuffer only point forward, so a walk always ends.

`Table` is the same checks as a reader, for a few fields of a large buffer (a model's metadata
table) that need no full walk.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Mapping

from .limits import FLATBUFFER_MAX_DEPTH, FLATBUFFER_MAX_OBJECTS

UOFFSET = struct.Struct("<I")
SOFFSET = struct.Struct("<i")
VOFFSET = struct.Struct("<H")
VTABLE_HEADER_BYTES = 4  # vtable size, table size
FIELD_SLOT_BYTES = 2
IDENTIFIER_BYTES = 4

# Field kinds of a schema description.
SCALAR, STRING, TABLE, SCALARS, STRINGS, TABLES, UNION = "scalar", "string", "table", "scalars", "strings", "tables", "union"


class FlatbufferError(ValueError):
    """A flatbuffer is malformed: an offset or length leads outside it, or it is nested too much."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a table in a schema description.

    `slot` is the field's index in the table's vtable (its id in the .fbs); `size` the bytes of a
    scalar or of one element of a vector of scalars; `table` the table type of TABLE and TABLES;
    `union` maps a union's type values to table types (its type field is the slot before it).
    """

    slot: int
    kind: str
    size: int = 0
    table: str = ""
    union: Mapping[int, str] | None = None


Schema = Mapping[str, "tuple[Field, ...]"]


class Verifier:
    """Bounds checks over one buffer, counting the objects visited."""

    def __init__(self, buffer: bytes, max_depth: int = FLATBUFFER_MAX_DEPTH,
                 max_objects: int = FLATBUFFER_MAX_OBJECTS):
        self.buffer = buffer
        self.max_depth = max_depth
        self.max_objects = max_objects
        self.objects = 0

    def _span(self, position: int, size: int, what: str) -> None:
        if position < 0 or size < 0 or position + size > len(self.buffer):
            raise FlatbufferError(f"{what} at byte {position} ({size} bytes) lies outside the "
                                  f"{len(self.buffer)}-byte buffer")

    def _count(self) -> None:
        self.objects += 1
        if self.objects > self.max_objects:
            raise FlatbufferError(f"more than {self.max_objects:,} tables, strings and vectors")

    def uoffset_target(self, position: int, what: str) -> int:
        """Where the unsigned offset stored at `position` points."""
        self._span(position, UOFFSET.size, what)
        target = position + UOFFSET.unpack_from(self.buffer, position)[0]
        self._span(target, 0, what)
        return target

    def root(self) -> int:
        """The position of the root table."""
        return self.table(self.uoffset_target(0, "the root offset"))

    def table(self, position: int) -> int:
        """Check the table at `position` and its vtable; returns `position`."""
        self._count()
        self._span(position, SOFFSET.size, "a table")
        vtable = position - SOFFSET.unpack_from(self.buffer, position)[0]
        self._span(vtable, VTABLE_HEADER_BYTES, "a vtable")
        vtable_size, table_size = struct.unpack_from("<HH", self.buffer, vtable)
        if vtable_size < VTABLE_HEADER_BYTES or vtable_size % FIELD_SLOT_BYTES:
            raise FlatbufferError(f"a vtable at byte {vtable} declares {vtable_size} bytes")
        self._span(vtable, vtable_size, "a vtable")
        if table_size < SOFFSET.size:
            raise FlatbufferError(f"a table at byte {position} declares {table_size} bytes")
        self._span(position, table_size, "a table")
        return position

    def field(self, table: int, slot: int, size: int) -> int | None:
        """The position of field `slot` of a checked table (None when absent), checked for `size` bytes."""
        vtable = table - SOFFSET.unpack_from(self.buffer, table)[0]
        vtable_size = VOFFSET.unpack_from(self.buffer, vtable)[0]
        entry = VTABLE_HEADER_BYTES + FIELD_SLOT_BYTES * slot
        if entry + FIELD_SLOT_BYTES > vtable_size:
            return None
        offset = VOFFSET.unpack_from(self.buffer, vtable + entry)[0]
        if offset == 0:
            return None
        self._span(table + offset, size, f"field {slot} of a table")
        return table + offset

    def string(self, position: int) -> int:
        """Check the string at `position`: its length, its bytes and the zero after them."""
        self._count()
        self._span(position, UOFFSET.size, "a string")
        length = UOFFSET.unpack_from(self.buffer, position)[0]
        self._span(position + UOFFSET.size, length + 1, "a string")
        if self.buffer[position + UOFFSET.size + length] != 0:
            raise FlatbufferError(f"a string at byte {position} lacks its terminating zero")
        return position

    def vector(self, position: int, element_size: int) -> tuple[int, int]:
        """Check the vector at `position`: (where its elements start, how many there are)."""
        self._count()
        self._span(position, UOFFSET.size, "a vector")
        length = UOFFSET.unpack_from(self.buffer, position)[0]
        start = position + UOFFSET.size
        self._span(start, length * element_size, "a vector")
        return start, length


def verify(buffer: bytes, schema: Schema, root_table: str, identifier: bytes | None = None,
           max_depth: int = FLATBUFFER_MAX_DEPTH, max_objects: int = FLATBUFFER_MAX_OBJECTS) -> None:
    """Walk `buffer` from its root table of type `root_table` along `schema`; FlatbufferError when malformed."""
    if identifier is not None:
        found = bytes(buffer[UOFFSET.size:UOFFSET.size + IDENTIFIER_BYTES])
        if found != identifier:
            raise FlatbufferError(f"the buffer lacks the {identifier.decode('ascii', 'replace')!r} identifier")
    checker = Verifier(buffer, max_depth, max_objects)
    _walk(checker, schema, root_table, checker.root(), 1)


def _walk(checker: Verifier, schema: Schema, table_type: str, position: int, depth: int) -> None:
    if depth > checker.max_depth:
        raise FlatbufferError(f"tables nested more than {checker.max_depth} deep")
    fields = schema[table_type]
    for field in fields:
        if field.kind == SCALAR:
            checker.field(position, field.slot, field.size)
            continue
        at = checker.field(position, field.slot, UOFFSET.size)
        if at is None:
            continue
        target = checker.uoffset_target(at, f"field {field.slot} of {table_type}")
        if field.kind == STRING:
            checker.string(target)
        elif field.kind == TABLE:
            _walk(checker, schema, field.table, checker.table(target), depth + 1)
        elif field.kind == SCALARS:
            checker.vector(target, field.size)
        elif field.kind in (STRINGS, TABLES):
            start, length = checker.vector(target, UOFFSET.size)
            for index in range(length):
                element = checker.uoffset_target(start + UOFFSET.size * index, f"element {index} of a vector")
                if field.kind == STRINGS:
                    checker.string(element)
                else:
                    _walk(checker, schema, field.table, checker.table(element), depth + 1)
        elif field.kind == UNION:
            type_at = checker.field(position, field.slot - 1, 1)
            member = (field.union or {}).get(checker.buffer[type_at] if type_at is not None else 0)
            if member is not None:  # an unknown or NONE type: readers ignore the value, so do we
                _walk(checker, schema, member, checker.table(target), depth + 1)
        else:
            raise ValueError(f"unknown field kind {field.kind!r} in the schema of {table_type}")


class Table:
    """A checked view of one table, reading single fields without walking the whole buffer."""

    def __init__(self, checker: Verifier, position: int):
        self.checker = checker
        self.position = checker.table(position)

    @classmethod
    def root(cls, buffer: bytes) -> Table:
        checker = Verifier(buffer)
        return cls(checker, checker.uoffset_target(0, "the root offset"))

    def scalar(self, slot: int, form: str, default: int | float = 0) -> int | float:
        """Field `slot` read with struct format `form` (e.g. '<I'); `default` when absent."""
        layout = struct.Struct(form)
        at = self.checker.field(self.position, slot, layout.size)
        return default if at is None else layout.unpack_from(self.checker.buffer, at)[0]

    def string(self, slot: int) -> bytes | None:
        """Field `slot` as the bytes of a string; None when absent."""
        at = self.checker.field(self.position, slot, UOFFSET.size)
        if at is None:
            return None
        position = self.checker.string(self.checker.uoffset_target(at, f"string field {slot}"))
        length = UOFFSET.unpack_from(self.checker.buffer, position)[0]
        start = position + UOFFSET.size
        return bytes(self.checker.buffer[start:start + length])

    def vector(self, slot: int, element_size: int) -> tuple[int, int]:
        """Field `slot` as a checked vector: (where its elements start, length); (0, 0) when absent."""
        at = self.checker.field(self.position, slot, UOFFSET.size)
        if at is None:
            return 0, 0
        return self.checker.vector(self.checker.uoffset_target(at, f"vector field {slot}"), element_size)

    def table_at(self, element: int) -> Table:
        """The table an offset stored at `element` (e.g. a vector element) points to."""
        return Table(self.checker, self.checker.uoffset_target(element, "a table offset"))
