"""Read a TensorFlow (v1 "tensor bundle") checkpoint without TensorFlow.

A checkpoint ``<prefix>.index`` is a LevelDB-format table (an SSTable): its keys are tensor
names and its values serialised ``BundleEntryProto`` records (dtype, shape, shard, offset, size);
``<prefix>.data-00000-of-00001`` holds the tensors' raw little-endian bytes at those offsets.
Only what the musicnn checkpoints use is supported: one shard, uncompressed blocks, numeric
dtypes; anything else is a :class:`CheckpointFormatError` naming the file.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked CRC32C (4 bytes)
#: TensorFlow DataType enum → NumPy dtype (little-endian).
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 9: "<i8", 10: "?", 19: "<f2"}


class CheckpointFormatError(ValueError):
    """An index or data file that is not a readable TensorFlow checkpoint."""


def _varint(buffer: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(buffer):
            raise CheckpointFormatError("varint runs past the end of its buffer")
        byte = buffer[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if not byte & 0x80:
            return value, position
        shift += 7


def _block(table: bytes, offset: int, size: int, where: Path) -> bytes:
    if offset + size + BLOCK_TRAILER_SIZE > len(table):
        raise CheckpointFormatError(f"{where}: a block runs past the end of the file (truncated?)")
    if table[offset + size] != 0:
        raise CheckpointFormatError(f"{where}: compressed blocks are not supported")
    return table[offset:offset + size]


def _entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Key/value pairs of one table block (keys are prefix-compressed against the previous key)."""
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * n_restarts
    entries, key, position = [], b"", 0
    while position < end:
        shared, position = _varint(block, position)
        unshared, position = _varint(block, position)
        value_length, position = _varint(block, position)
        key = key[:shared] + block[position:position + unshared]
        position += unshared
        entries.append((key, block[position:position + value_length]))
        position += value_length
    return entries


def _fields(message: bytes) -> dict[int, list]:
    """A protobuf message's fields by number (varints as ints, length-delimited as bytes)."""
    fields: dict[int, list] = {}
    position = 0
    while position < len(message):
        tag, position = _varint(message, position)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, position = _varint(message, position)
        elif wire == 1:
            value, position = message[position:position + 8], position + 8
        elif wire == 2:
            length, position = _varint(message, position)
            value, position = message[position:position + length], position + length
        elif wire == 5:
            value, position = message[position:position + 4], position + 4
        else:
            raise CheckpointFormatError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def read_index(index_path: str | Path) -> dict[str, dict]:
    """``{tensor name: {"dtype", "shape", "shard", "offset", "size"}}`` from a checkpoint's ``.index``."""
    index_path = Path(index_path)
    table = index_path.read_bytes()
    if len(table) < FOOTER_SIZE or struct.unpack_from("<Q", table, len(table) - 8)[0] != TABLE_MAGIC:
        raise CheckpointFormatError(f"{index_path} is not a TensorFlow checkpoint index (no table footer)")
    footer = table[-FOOTER_SIZE:]
    _, position = _varint(footer, 0)  # metaindex handle (unused)
    _, position = _varint(footer, position)
    index_offset, position = _varint(footer, position)
    index_size, _ = _varint(footer, position)
    entries: dict[str, dict] = {}
    for _, handle in _entries(_block(table, index_offset, index_size, index_path)):
        offset, position = _varint(handle, 0)
        size, _ = _varint(handle, position)
        for key, value in _entries(_block(table, offset, size, index_path)):
            if not key:  # the bundle header
                continue
            fields = _fields(value)
            shape = [_fields(dim).get(1, [0])[0] for dim in _fields(fields.get(2, [b""])[0]).get(2, [])]
            entries[key.decode()] = {"dtype": fields.get(1, [0])[0], "shape": shape,
                                     "shard": fields.get(3, [0])[0], "offset": fields.get(4, [0])[0],
                                     "size": fields.get(5, [0])[0]}
    return entries


def read_checkpoint(prefix: str | Path, skip: tuple[str, ...] = ("/Adam",)) -> dict[str, np.ndarray]:
    """Every tensor of checkpoint ``prefix`` (``prefix.index`` + ``prefix.data-00000-of-00001``) as an array.

    Names containing any of ``skip`` (the optimiser's slots) are left out.
    """
    prefix = str(prefix)
    index_path, data_path = Path(prefix + ".index"), Path(prefix + ".data-00000-of-00001")
    for path in (index_path, data_path):
        if not path.is_file():
            raise CheckpointFormatError(f"checkpoint file missing: {path}")
    data = data_path.read_bytes()
    tensors = {}
    for name, entry in read_index(index_path).items():
        if any(part in name for part in skip):
            continue
        if entry["shard"] != 0:
            raise CheckpointFormatError(f"{index_path}: {name} is in shard {entry['shard']}; one shard is supported")
        if entry["dtype"] not in DTYPES:
            raise CheckpointFormatError(f"{index_path}: {name} has unsupported dtype {entry['dtype']}")
        end = entry["offset"] + entry["size"]
        if end > len(data):
            raise CheckpointFormatError(f"{data_path}: {name} ends at byte {end}, past the file's {len(data)} "
                                        "(truncated?)")
        array = np.frombuffer(data, dtype=DTYPES[entry["dtype"]], count=int(np.prod(entry["shape"], dtype=np.int64)),
                              offset=entry["offset"])
        tensors[name] = array.reshape(entry["shape"]).copy()
    return tensors
