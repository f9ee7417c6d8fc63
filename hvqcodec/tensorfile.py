"""The contents of a file written by `torch.save`, read without torch: tensors become numpy arrays.

torch.save writes a zip archive: `<root>/data.pkl`, a pickle whose tensors refer to storages by key, and
`<root>/data/<key>`, each storage's raw bytes (`<root>/byteorder` says their byte order). `torch.load(...,
weights_only=True)` reads it with a pure-Python unpickler, about 0.2 s for a shipped model's 583 tensors. This
reader uses Python's C unpickler with the same restriction, only the globals a state dict needs (tensors rebuilt
from typed storages, OrderedDict; anything else is refused), checks every tensor against its storage's bounds,
and needs no torch at all: it is also the weights reader of a torch-free runtime (docs/DESIGN.md section 8).
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

# The typed storages torch.save names in its pickles (kept for compatibility by every torch 1.x and 2.x).
STORAGE_DTYPES = {
    "HalfStorage": np.float16, "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "CharStorage": np.int8, "ShortStorage": np.int16, "IntStorage": np.int32, "LongStorage": np.int64,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
# Bounds against a hostile archive: the pickle and all storages together, uncompressed.
MAX_PICKLE_BYTES = 64 << 20
MAX_STORAGE_BYTES = 2 << 30


class TensorFileError(ValueError):
    """The file is not a torch.save archive this reader accepts (corrupt, or holding more than tensors)."""


class _StorageType:
    """What `find_class('torch', 'HalfStorage')` gives: a marker carrying the numpy dtype."""

    def __init__(self, dtype: type) -> None:
        self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, requires_grad: bool = False,
                    backward_hooks: Any = None, metadata: Any = None) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 for numpy: a copy of the strided view, after checking it stays inside its
    storage (a hostile pickle could otherwise read any memory through as_strided)."""
    if not isinstance(storage, np.ndarray) or not isinstance(offset, int) or offset < 0:
        raise TensorFileError("a tensor without a valid storage")
    if (not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride)
            or not all(isinstance(v, int) and v >= 0 for v in size + stride)):
        raise TensorFileError("a tensor with an invalid shape")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise TensorFileError("a tensor reaches past the end of its storage")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=[s * storage.itemsize for s in stride])
    return np.array(view, order="C")  # its own, writable memory (torch.from_numpy shares it)


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, byteorder: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.root, self.byteorder = archive, root, byteorder
        self.storages: dict[str, np.ndarray] = {}
        self.storage_bytes = 0

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise TensorFileError(f"holds {module}.{name}, not only tensors") from None

    def persistent_load(self, pid: Any) -> np.ndarray:
        # ('storage', storage type, key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise TensorFileError("an unknown persistent reference")
        kind, key, count = pid[1], pid[2], pid[4]
        if key not in self.storages:
            name = f"{self.root}/data/{key}"
            try:
                info = self.archive.getinfo(name)
            except KeyError:
                raise TensorFileError(f"storage {key} is missing") from None
            self.storage_bytes += info.file_size
            if self.storage_bytes > MAX_STORAGE_BYTES:
                raise TensorFileError("storages larger than any model")
            dtype = kind.dtype.newbyteorder("<" if self.byteorder == "little" else ">")
            if info.file_size != count * dtype.itemsize:
                raise TensorFileError(f"storage {key} has {info.file_size} bytes for {count} elements")
            self.storages[key] = np.frombuffer(self.archive.read(name), dtype=dtype).astype(kind.dtype, copy=False)
        return self.storages[key]


def load(path: str | Path) -> Any:
    """What torch.save wrote to `path`, tensors as numpy arrays (their dtypes: STORAGE_DTYPES). TensorFileError
    for a file that is not such an archive, or holds anything but containers, plain values and tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise TensorFileError("not a torch.save archive")
            root = pickles[0].split("/")[0]
            if archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
                raise TensorFileError("an index larger than any model's")
            byteorder = "little"
            if f"{root}/byteorder" in archive.namelist():
                byteorder = archive.read(f"{root}/byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise TensorFileError(f"unknown byte order {byteorder!r}")
            return _Unpickler(archive.read(pickles[0]), archive, root, byteorder).load()
    except TensorFileError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise TensorFileError(f"unreadable ({type(exc).__name__})") from None
