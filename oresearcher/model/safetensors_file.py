"""Memory-mapped safetensors reading and streaming writing (the format: 8-byte little-endian header length,
a JSON header {name: {dtype, shape, data_offsets}}, then the raw tensor bytes).

Reading maps the file and returns numpy views, so a tensor costs no host memory until it is sliced and
copied; bf16 comes back as ml_dtypes.bfloat16 (numpy has no bf16 of its own). Every header entry is checked
against the file size up front, so a truncated download fails at open time naming the file.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class SafetensorsFile:
    """One .safetensors file, memory-mapped. `file[name]` -> read-only numpy view."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{self.path}: not a safetensors file ({size} bytes, shorter than its header); "
                                 "the file is truncated: download it again")
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                raise ValueError(f"{self.path}: header says {n} bytes but the file has {size}; the file is "
                                 "truncated: download it again")
            try:
                header = json.loads(f.read(n))
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}: unreadable safetensors header ({e}); the file is corrupt") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries = header
        self._base = 8 + n
        data_size = size - self._base
        for name, e in header.items():
            if e["dtype"] not in DTYPES:
                raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {e['dtype']}")
            start, end = e["data_offsets"]
            if end > data_size:
                raise ValueError(f"{self.path}: tensor {name!r} ends at byte {self._base + end} but the file has "
                                 f"{size} bytes; the file is truncated: download it again")
            want = int(np.prod(e["shape"], dtype=np.int64)) * np.dtype(DTYPES[e["dtype"]]).itemsize
            if end - start != want:
                raise ValueError(f"{self.path}: tensor {name!r} has {end - start} bytes, its shape {e['shape']} "
                                 f"needs {want}; the file is corrupt")
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def keys(self):
        return self.entries.keys()

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> np.ndarray:
        e = self.entries[name]
        start, end = e["data_offsets"]
        raw = self._map[self._base + start:self._base + end]
        return raw.view(DTYPES[e["dtype"]]).reshape(e["shape"])


def write_safetensors(path: str | Path, tensors: list[tuple[str, tuple[int, ...], np.dtype]], produce,
                      metadata: dict | None = None) -> None:
    """Write tensors one at a time: `tensors` lists (name, shape, dtype) and `produce(name)` returns each array
    when its turn comes, so only one tensor is on host at once."""
    header, offset = {}, 0
    for name, shape, dtype in tensors:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": NAMES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = {"__metadata__": {"format": "pt", **(metadata or {})}, **header}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in tensors:
            arr = np.ascontiguousarray(produce(name), dtype=dtype)
            if arr.shape != tuple(shape):
                raise ValueError(f"writing {path}: tensor {name!r} has shape {arr.shape}, expected {tuple(shape)}")
            f.write(arr.tobytes())
