"""Safetensors checkpoints read and written one tensor at a time (the streaming init's files).

A checkpoint is transformers' layout: ``model.safetensors``, or shards listed in
``model.safetensors.index.json`` (tensor name -> shard file). ``Checkpoint.open`` reads only the
headers (and refuses a broken or foreign file with a one-line error, before any work); a tensor is
read with ``safetensors.safe_open``, opened for that one read, so that no mapping of a whole shard
stays resident: the memory held is one tensor, not one shard.

Why a writer of our own: safetensors' ``save_file`` and ``serialize_file`` take every tensor of a
file at once (in memory). The format is simple: an 8-byte little-endian header length, a JSON
header (name -> dtype, shape, byte offsets; ``__metadata__``), then the tensors' bytes back to back.
``write_shard`` writes each tensor's bytes in turn (copied through from the source file unchanged,
in the kernel, or from a tensor computed just then), after a space reserved for the header, and the
header last: a tensor's dtype may be decided only when it is computed (a residual kept in bfloat16
or float32), and the space is sized for the widest choice, the header padded with spaces to fill it
as safetensors pads its own. The header is parsed here too, for the byte offsets a copy needs.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import safe_open

from ailora.core.files import read_json
from ailora.errors import AiloraError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Bytes per element of the safetensors dtypes a checkpoint may hold (copied through whatever they are).
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
FLOAT_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
COPY_CHUNK = 16 * 2**20  # bytes per read when a tensor is copied through
MAX_HEADER = 100 * 2**20  # safetensors' own limit on a header
# Whether os.copy_file_range is tried (cleared for the process at its first refusal by the file system).
_KERNEL_COPY = [hasattr(os, "copy_file_range")]


@dataclass(frozen=True)
class Entry:
    """One tensor of a shard: its dtype (safetensors' name), shape and byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Shard:
    """One safetensors file: its tensors (in file order), metadata, and where its data section starts."""

    path: Path
    entries: dict[str, Entry]
    metadata: dict[str, str] | None
    data_start: int

    @classmethod
    def read(cls, path: Path) -> Shard:
        """The header of ``path``; a one-line error if it is not a safetensors file."""
        try:
            with open(path, "rb") as f:
                head = f.read(8)
                size = path.stat().st_size
                (n,) = struct.unpack("<Q", head) if len(head) == 8 else (None,)
                if n is None or n > min(MAX_HEADER, size - 8):
                    raise ValueError("no valid header length")
                header = json.loads(f.read(n))
        except (OSError, ValueError) as exc:
            raise AiloraError(f"cannot read weights {path}: not a safetensors file ({exc})".splitlines()[0]) from None
        metadata = header.pop("__metadata__", None) if isinstance(header, dict) else None
        try:
            entries = {name: Entry(e["dtype"], tuple(e["shape"]), *e["data_offsets"])
                       for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])}
        except (AttributeError, KeyError, TypeError, ValueError):
            raise AiloraError(f"cannot read weights {path}: its safetensors header is malformed") from None
        bad = next((name for name, e in entries.items() if e.dtype not in DTYPE_BYTES or e.end > size - 8 - n), None)
        if bad is not None:
            raise AiloraError(f"cannot read weights {path}: tensor {bad} has dtype {entries[bad].dtype} or runs past "
                              "the end of the file")
        return cls(path, entries, metadata, 8 + n)

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor, read through ``safe_open`` (its own mapping of the file, closed after the read)."""
        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(name)

    def copy(self, name: str, out: BinaryIO) -> None:
        """Write one tensor's bytes to ``out`` (an unbuffered file, at its position) unchanged:
        ``os.copy_file_range`` where the kernel can (no copy through user space), else a chunk at a time."""
        entry = self.entries[name]
        with open(self.path, "rb", buffering=0) as f:
            offset, left = self.data_start + entry.begin, entry.nbytes
            while left and _KERNEL_COPY[0]:
                try:
                    n = os.copy_file_range(f.fileno(), out.fileno(), min(COPY_CHUNK, left), offset)
                except OSError as exc:  # another file system, or a kernel without it: copy in user space
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    _KERNEL_COPY[0] = False
                    break
                if n == 0:
                    raise AiloraError(f"weights file {self.path} ended inside tensor {name}")
                offset, left = offset + n, left - n
            f.seek(offset)
            while left:
                chunk = f.read(min(COPY_CHUNK, left))
                if not chunk:
                    raise AiloraError(f"weights file {self.path} ended inside tensor {name}")
                write_all(out, chunk)
                left -= len(chunk)


@dataclass(frozen=True)
class Checkpoint:
    """The safetensors files of a model directory, by tensor name."""

    directory: Path
    shards: list[Shard]  # in file-name order
    index: dict | None  # model.safetensors.index.json, for a sharded checkpoint
    where: dict[str, Shard]  # tensor name -> its shard

    @classmethod
    def open(cls, directory) -> Checkpoint:
        """The checkpoint in ``directory`` (headers only); a one-line error if it is not one."""
        d = Path(directory)
        if (d / INDEX_FILE).is_file():
            index = read_json(d / INDEX_FILE)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise AiloraError(f"{d / INDEX_FILE} has no weight_map")
            files = sorted(set(weight_map.values()))
        elif (d / SINGLE_FILE).is_file():
            index, weight_map, files = None, None, [SINGLE_FILE]
        else:
            raise AiloraError(f"{d} is not a safetensors checkpoint: it has neither {SINGLE_FILE} nor {INDEX_FILE}")
        missing = [f for f in files if not (d / f).is_file()]
        if missing:
            raise AiloraError(f"{d / INDEX_FILE} names shard {missing[0]}, which is not in {d}")
        shards = [Shard.read(d / f) for f in files]
        where = {name: s for s in shards for name in s.entries}
        if weight_map is not None:
            stray = next((n for n, f in weight_map.items() if n not in where or where[n].path.name != f), None)
            if stray is not None:
                raise AiloraError(f"{d / INDEX_FILE} puts tensor {stray} in {weight_map[stray]}, which does not hold it")
        return cls(d, shards, index, where)

    def tensor(self, name: str) -> torch.Tensor:
        return self.where[name].tensor(name)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for s in self.shards for e in s.entries.values())


Writer = Callable[[BinaryIO], "str | None"]
"""Writes one tensor's bytes to an open file; returns the dtype it wrote when that was left open."""


def tensor_writer(t: torch.Tensor) -> Writer:
    """A writer of ``t``'s bytes (little-endian, as safetensors stores them on every platform torch runs on here)."""
    def write(out: BinaryIO) -> str:
        write_all(out, t.contiguous().view(torch.uint8).numpy().data)
        return FLOAT_DTYPES.get(t.dtype)

    return write


def write_all(out: BinaryIO, data) -> None:
    """All of ``data`` to an unbuffered file (whose ``write`` may take less than it is given: over 2 GB, say)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[out.write(view):]


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    n = DTYPE_BYTES[dtype]
    for d in shape:
        n *= d
    return n


def _header(tensors: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None) -> tuple[bytes, int]:
    """The JSON header of tensors [(name, dtype, shape)] back to back, unpadded; and the data's size."""
    header, offset = {}, 0
    for name, dtype, shape in tensors:
        n = _nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata is not None:
        header = {"__metadata__": metadata, **header}
    return json.dumps(header, separators=(",", ":")).encode(), offset


def write_shard(path: Path, tensors: list[tuple[str, str | tuple[str, ...], tuple[int, ...], Writer]],
                metadata: dict[str, str] | None) -> int:
    """Write a safetensors file tensor by tensor: ``tensors`` = [(name, dtype, shape, writer)], in the
    order their bytes go. ``dtype`` is a tuple of candidates where the writer decides it (and returns
    it). Returns the size of its data section."""
    # An upper bound on the header's length: every open dtype at its largest size (so every offset at
    # its largest, the most digits), plus, per open dtype, the longest name's extra characters.
    largest = [(n, max(d, key=DTYPE_BYTES.get) if isinstance(d, tuple) else d, s) for n, d, s, _ in tensors]
    reserved = len(_header(largest, metadata)[0]) + sum(
        max(map(len, d)) - len(big) for (_, d, _, _), (_, big, _) in zip(tensors, largest) if isinstance(d, tuple))
    reserved += -reserved % 8  # safetensors pads its header so the data section is 8-byte aligned
    written = []
    with open(path, "wb", buffering=0) as out:
        out.seek(8 + reserved)
        for name, dtype, shape, write in tensors:
            start = out.tell()
            got = write(out)
            chosen = got if isinstance(dtype, tuple) else dtype
            if isinstance(dtype, tuple) and got not in dtype:
                raise AiloraError(f"writing {path}: tensor {name} was written as {got}, not one of {dtype}")
            want = _nbytes(chosen, shape)
            if out.tell() - start != want:
                raise AiloraError(f"writing {path}: tensor {name} came to {out.tell() - start} bytes, not {want}")
            written.append((name, chosen, shape))
        text, size = _header(written, metadata)
        text += b" " * (reserved - len(text))  # never negative: ``reserved`` bounds it
        out.seek(0)
        write_all(out, struct.pack("<Q", reserved) + text)
    return size
