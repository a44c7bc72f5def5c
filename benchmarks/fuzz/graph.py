"""What only the interpreter reads of a model, for the fuzzer's graph writes: the elements of small
constant buffers, quantization scales and zero points, tensor shapes, the operators' tensor indices
and option fields; found through flatbuffer_check's bounds-checked reader of the model's tables, and
rewritten in place.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np

from edge_runtime.model_file.flatbuffer_check import FIELD_SLOT_BYTES, SOFFSET, UOFFSET, VTABLE_HEADER_BYTES, Table

# The fields of TFLite's schema.fbs walked to find them (field ids): Model.subgraphs and buffers,
# SubGraph.tensors and operators, Tensor.shape, type, buffer, quantization and shape_signature,
# QuantizationParameters.scale and zero_point, Operator.inputs, outputs and builtin_options, Buffer.data.
MODEL_SUBGRAPHS_SLOT, MODEL_BUFFERS_SLOT = 2, 4
SUBGRAPH_TENSORS_SLOT, SUBGRAPH_OPERATORS_SLOT = 0, 3
TENSOR_SHAPE_SLOT, TENSOR_TYPE_SLOT, TENSOR_BUFFER_SLOT = 0, 1, 2
TENSOR_QUANTIZATION_SLOT, TENSOR_SHAPE_SIGNATURE_SLOT = 4, 7
QUANTIZATION_SCALE_SLOT, QUANTIZATION_ZERO_POINT_SLOT = 2, 3
OPERATOR_INPUTS_SLOT, OPERATOR_OUTPUTS_SLOT, OPERATOR_OPTIONS_SLOT = 1, 2, 4
BUFFER_DATA_SLOT = 0
# How a constant's elements are stored, by schema.fbs TensorType (FLOAT32, FLOAT16 as its bits, INT32, UINT8,
# INT64, BOOL, INT16, INT8, FLOAT64, UINT64, UINT32, UINT16); other types are written byte by byte.
ELEMENT_FORMATS = {0: "<f", 1: "<H", 2: "<i", 3: "<B", 4: "<q", 6: "<B", 7: "<h", 9: "<b", 10: "<d", 12: "<Q",
                   15: "<I", 16: "<H"}
# Constants up to this size are written: shape constants, slice bounds, biases. Weights are larger, and
# their values change only the scores.
SMALL_CONSTANT_BYTES = 64
# An option field is read as the widest of these integers that fits it and is aligned.
OPTION_FORMATS = {4: "<i", 2: "<h", 1: "<b"}
# What a graph write rewrites (`GraphValue.kind`).
CONSTANT, SCALE, ZERO_POINT, SHAPE, OPTION, OPERAND = ("constant", "scale", "zero point", "shape", "op option",
                                                       "op tensor")
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class GraphValue:
    """One value of a model's graph that the interpreter reads and the metadata readers do not."""

    kind: str
    where: str  # for the case's steps: "tensor 3 constant [0]"
    position: int  # of its bytes in the model file
    form: str  # its struct format


def _elements(table: Table, slot: int, form: str, kind: str, where: str) -> list[GraphValue]:
    """Each element of the vector of scalars in field `slot` of `table`."""
    size = struct.calcsize(form)
    start, count = table.vector(slot, size)
    return [GraphValue(kind, f"{where} [{index}]", start + size * index, form) for index in range(count)]


def _option_fields(options: Table, where: str) -> list[GraphValue]:
    """Each field of an operator's options table. Its type is not known here (a union of some 150
    tables), so a field is read as wide as the room up to the next field allows."""
    buffer, position = options.checker.buffer, options.position
    vtable = position - SOFFSET.unpack_from(buffer, position)[0]
    vtable_size, table_size = struct.unpack_from("<HH", buffer, vtable)
    slots = (vtable_size - VTABLE_HEADER_BYTES) // FIELD_SLOT_BYTES
    fields = sorted((at, slot) for slot in range(slots)
                    if (at := options.checker.field(position, slot, 1)) is not None)
    ends = [at for at, _ in fields[1:]] + [position + table_size]
    values = []
    for (at, slot), end in zip(fields, ends):
        width = next(width for width in OPTION_FORMATS if width <= end - at and at % width == 0)
        values.append(GraphValue(OPTION, f"{where} field {slot}", at, OPTION_FORMATS[width]))
    return values


def graph_values(model: bytes) -> list[GraphValue]:
    """What the interpreter reads of a model and the metadata readers do not: the elements of small
    constant buffers, quantization scales and zero points, tensor shapes and shape signatures, the
    operators' tensor indices and the fields of their options. Found through flatbuffer_check's
    bounds-checked reader of the model's tables; each value once."""
    root = Table.root(model)
    buffers, buffer_count = root.vector(MODEL_BUFFERS_SLOT, UOFFSET.size)
    subgraphs, subgraph_count = root.vector(MODEL_SUBGRAPHS_SLOT, UOFFSET.size)
    found: dict[int, GraphValue] = {}
    for graph_index in range(subgraph_count):
        graph = root.table_at(subgraphs + UOFFSET.size * graph_index)
        prefix = f"subgraph {graph_index} " if graph_index else ""
        tensors, tensor_count = graph.vector(SUBGRAPH_TENSORS_SLOT, UOFFSET.size)
        for index in range(tensor_count):
            tensor = graph.table_at(tensors + UOFFSET.size * index)
            where = f"{prefix}tensor {index}"
            values = (_elements(tensor, TENSOR_SHAPE_SLOT, "<i", SHAPE, f"{where} shape")
                      + _elements(tensor, TENSOR_SHAPE_SIGNATURE_SLOT, "<i", SHAPE, f"{where} shape_signature"))
            buffer = int(tensor.scalar(TENSOR_BUFFER_SLOT, "<I"))
            if 0 < buffer < buffer_count:  # buffer 0 is the empty one of every tensor without data
                form = ELEMENT_FORMATS.get(int(tensor.scalar(TENSOR_TYPE_SLOT, "<b")), "<B")
                start, size = root.table_at(buffers + UOFFSET.size * buffer).vector(BUFFER_DATA_SLOT, 1)
                width = struct.calcsize(form)
                if size <= SMALL_CONSTANT_BYTES:
                    values += [GraphValue(CONSTANT, f"{where} constant [{element}]", start + width * element, form)
                               for element in range(size // width)]
            at = tensor.checker.field(tensor.position, TENSOR_QUANTIZATION_SLOT, UOFFSET.size)
            if at is not None:
                quantization = tensor.table_at(at)
                values += (_elements(quantization, QUANTIZATION_SCALE_SLOT, "<f", SCALE, f"{where} scale")
                           + _elements(quantization, QUANTIZATION_ZERO_POINT_SLOT, "<q", ZERO_POINT,
                                       f"{where} zero point"))
            found.update((value.position, value) for value in values if value.position not in found)
        operators, operator_count = graph.vector(SUBGRAPH_OPERATORS_SLOT, UOFFSET.size)
        for index in range(operator_count):
            operator = graph.table_at(operators + UOFFSET.size * index)
            where = f"{prefix}op {index}"
            values = (_elements(operator, OPERATOR_INPUTS_SLOT, "<i", OPERAND, f"{where} input")
                      + _elements(operator, OPERATOR_OUTPUTS_SLOT, "<i", OPERAND, f"{where} output"))
            at = operator.checker.field(operator.position, OPERATOR_OPTIONS_SLOT, UOFFSET.size)
            if at is not None:
                values += _option_fields(operator.table_at(at), f"{where} option")
            found.update((value.position, value) for value in values if value.position not in found)
    return sorted(found.values(), key=lambda value: value.position)


def stored_bytes(form: str, new: int | float) -> bytes:
    """`new` as a value of struct format `form` stores it (a float beyond float32's range becomes infinite)."""
    if form == "<f" and math.isfinite(new) and abs(new) > FLOAT32_MAX:
        new = math.copysign(math.inf, new)
    return struct.pack(form, new)


def write_graph_value(data: bytes, value: GraphValue, new: int | float) -> bytes:
    """`data` with `value` rewritten to `new`."""
    stored = stored_bytes(value.form, new)
    return data[:value.position] + stored + data[value.position + len(stored):]
