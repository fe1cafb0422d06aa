"""A single-pass reader of a GGUF file's header: metadata, tensor directory, data offset.

``gguf.GGUFReader`` builds a numpy view per array element, which takes ~10 s on Gemma 3's
262,144-token vocabulary; this reader decodes each array with one ``np.frombuffer`` (numbers)
or one tight loop (strings) and memory-maps the tensor data. Layout (little-endian)::

    | magic "GGUF" | version u32 | n_tensors u64 | n_kv u64 | kv pairs | tensor infos | pad | data |

Dequantization is left to ``gguf.quants.dequantize``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from thinkstream.loading.errors import CorruptModelError, UnsupportedArchitectureError

_SCALARS: dict[int, tuple[str, np.dtype]] = {
    GGUFValueType.UINT8: ("<B", np.dtype("<u1")),
    GGUFValueType.INT8: ("<b", np.dtype("<i1")),
    GGUFValueType.UINT16: ("<H", np.dtype("<u2")),
    GGUFValueType.INT16: ("<h", np.dtype("<i2")),
    GGUFValueType.UINT32: ("<I", np.dtype("<u4")),
    GGUFValueType.INT32: ("<i", np.dtype("<i4")),
    GGUFValueType.FLOAT32: ("<f", np.dtype("<f4")),
    GGUFValueType.BOOL: ("<?", np.dtype("?")),
    GGUFValueType.UINT64: ("<Q", np.dtype("<u8")),
    GGUFValueType.INT64: ("<q", np.dtype("<i8")),
    GGUFValueType.FLOAT64: ("<d", np.dtype("<f8")),
}


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: outermost first (GGUF stores innermost first)
    qtype: GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    metadata: dict[str, Any]  # arrays of numbers are numpy arrays, of strings lists
    tensors: dict[str, GGUFTensorInfo]

    def raw(self, name: str) -> np.ndarray:
        """The bytes of one tensor as stored, shape ``shape[:-1] + (bytes per row,)``."""
        info = self.tensors[name]
        data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=info.offset, shape=(info.nbytes,))
        return data.reshape(*info.shape[:-1], -1)


class _Cursor:
    """Reads little-endian values from a buffer; any read past the end is a corrupt file."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise CorruptModelError(f"{self.path}: truncated GGUF header (needs byte {self.pos + n}, file has {len(self.buf)})")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def length(self, what: str, item_bytes: int = 1) -> int:
        """A u64 count of items of at least ``item_bytes`` each; one that the rest of the
        file cannot hold is a corrupt length field (not a truncated file)."""
        at, n = self.pos, self.scalar("<Q")
        if n * item_bytes > len(self.buf) - self.pos:
            raise CorruptModelError(f"{self.path}: corrupt GGUF {what} length {n} at byte {at} "
                                    f"(only {len(self.buf) - self.pos} bytes follow)")
        return n

    def string(self) -> str:
        raw = self.take(self.length("string"))
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as err:
            raise CorruptModelError(f"{self.path}: invalid UTF-8 string at byte {self.pos}") from err

    def value(self, vtype: int) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            item_type = self.scalar("<I")
            size = 8 if item_type == GGUFValueType.STRING else (
                _SCALARS[item_type][1].itemsize if item_type in _SCALARS else 1)
            count = self.length("array", size)
            if item_type == GGUFValueType.STRING:
                return [self.string() for _ in range(count)]
            if item_type in _SCALARS:
                dtype = _SCALARS[item_type][1]
                return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).copy()
            return [self.value(item_type) for _ in range(count)]
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype][0])
        raise CorruptModelError(f"{self.path}: unknown GGUF value type {vtype} at byte {self.pos}")


def read_gguf(path: Path) -> GGUFFile:
    """Parse the header of ``path``; raises ``CorruptModelError`` on any malformed or truncated part."""
    with open(path, "rb") as f:
        data = np.fromfile(f, dtype=np.uint8) if path.stat().st_size < (1 << 16) else None
    if data is None:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(memoryview(data), path)
    if bytes(cur.take(4)) != b"GGUF":
        raise CorruptModelError(f"{path}: not a GGUF file (bad magic)")
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise CorruptModelError(f"{path}: unsupported GGUF version {version}")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    entries = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        entries.append((name, tuple(reversed(dims)), cur.scalar("<I"), cur.scalar("<Q")))
    alignment = int(metadata.get("general.alignment", 32))
    start = -(-cur.pos // alignment) * alignment
    tensors = {}
    for name, shape, qtype_id, rel in entries:
        try:
            qtype = GGMLQuantizationType(qtype_id)
        except ValueError as err:
            raise UnsupportedArchitectureError(f"{path}: tensor {name} has unknown ggml type {qtype_id}") from err
        block, type_size = GGML_QUANT_SIZES[qtype]
        if not shape or shape[-1] % block:
            raise CorruptModelError(f"{path}: tensor {name} shape {shape} does not fit {qtype.name} blocks")
        nbytes = int(np.prod(shape, dtype=np.int64)) // block * type_size
        if start + rel + nbytes > len(data):
            raise CorruptModelError(f"{path}: truncated; tensor {name} ends past the end of the file")
        tensors[name] = GGUFTensorInfo(name, shape, qtype, start + rel, nbytes)
    return GGUFFile(path, metadata, tensors)
