"""The torch-free reader of torch.save files (hvqcodec/tensorfile.py): the same contents as torch.load, and
nothing but tensors and plain values."""
from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch

from hvqcodec import tensorfile
from hvqcodec.manifest import models_dir


def same(read, loaded, where: str = "") -> int:
    """Asserts that tensorfile's result equals torch.load's; returns the number of tensors compared."""
    if isinstance(loaded, torch.Tensor):
        assert isinstance(read, np.ndarray), where
        assert read.dtype == loaded.numpy().dtype and read.shape == tuple(loaded.shape), where
        assert np.array_equal(read, loaded.numpy()) and read.flags.writeable, where
        return 1
    assert type(read) is type(loaded), where
    if isinstance(loaded, dict):
        assert list(read) == list(loaded), where
        return sum(same(read[key], loaded[key], f"{where}/{key}") for key in loaded)
    if isinstance(loaded, (list, tuple)):
        assert len(read) == len(loaded), where
        return sum(same(a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(read, loaded)))
    assert read == loaded, where
    return 0


@pytest.mark.parametrize("path", sorted(models_dir().glob("*.pt")), ids=lambda p: p.name)
def test_shipped_weight_files_read_as_torch_loads_them(path):
    assert same(tensorfile.load(path), torch.load(path, map_location="cpu", weights_only=True)) > 300


def test_every_dtype_views_shared_storages_and_odd_shapes(tmp_path):
    base = torch.arange(24, dtype=torch.float32).view(4, 6)
    payload = {
        "dtypes": [torch.tensor([1.5, -2], dtype=dtype) for dtype in (
            torch.float16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64,
            torch.uint8, torch.bool)],
        "transposed": base.t(), "column": base[:, 2], "offset": base[1:, 3:], "same storage": base,
        "scalar": torch.tensor(-7, dtype=torch.int8), "empty": torch.zeros(0, 3),
        "plain": {"name": "x", "sizes": (1, 2), "flag": True, "none": None, "ratio": 0.25},
    }
    path = tmp_path / "mixed.pt"
    torch.save(payload, path)
    read = tensorfile.load(path)
    assert same(read, torch.load(path, weights_only=True)) == 15
    read["same storage"][0, 0] = 100  # each tensor its own memory, as torch.from_numpy will share it
    assert read["transposed"][0, 0] == 0


def archive_with(tmp_path, pickled: bytes, storages: dict[str, bytes] | None = None):
    path = tmp_path / "made.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("made/data.pkl", pickled)
        for key, data in (storages or {}).items():
            archive.writestr(f"made/data/{key}", data)
    return path


def test_refuses_anything_but_tensors_and_plain_values(tmp_path):
    """A pickle naming any other global (here os.system) is refused before anything runs."""
    import os

    path = archive_with(tmp_path, pickle.dumps({"run": os.system}, protocol=2))
    with pytest.raises(tensorfile.TensorFileError, match="posix.system|os.system"):
        tensorfile.load(path)


def test_refuses_a_tensor_past_its_storage_and_a_short_storage(tmp_path):
    """Shapes, strides and offsets are checked against the storage (as_strided would read any memory)."""
    source = tmp_path / "small.pt"
    torch.save({"t": torch.arange(6, dtype=torch.int16)}, source)
    with zipfile.ZipFile(source) as archive:
        root = archive.namelist()[0].split("/")[0]
        pickled = archive.read(f"{root}/data.pkl")
        storage = archive.read(f"{root}/data/0")
    stretched = pickled.replace(b"K\x06\x85", b"K\x60\x85")  # the size tuple (6,) -> (96,)
    assert stretched != pickled
    with pytest.raises(tensorfile.TensorFileError):
        tensorfile.load(archive_with(tmp_path, stretched, {"0": storage}))
    with pytest.raises(tensorfile.TensorFileError, match="bytes for"):
        tensorfile.load(archive_with(tmp_path, pickled, {"0": storage[:-2]}))
    with pytest.raises(tensorfile.TensorFileError, match="missing"):
        tensorfile.load(archive_with(tmp_path, pickled))


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04" + bytes(40)])
def test_refuses_what_is_not_an_archive(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(tensorfile.TensorFileError):
        tensorfile.load(path)


def test_read_weights_falls_back_to_torch_for_what_the_reader_does_not_take(tmp_path):
    """bfloat16 (no numpy dtype): the torch-free reader refuses the file, torch.load reads it."""
    from hvqcodec.zoo import WEIGHTS_FORMAT, READABLE_WEIGHTS_VERSIONS, read_weights

    path = tmp_path / "bf16.pt"
    version = sorted(READABLE_WEIGHTS_VERSIONS)[-1]
    torch.save({"format": WEIGHTS_FORMAT, "version": version, "w": torch.ones(3, dtype=torch.bfloat16)}, path)
    with pytest.raises(tensorfile.TensorFileError, match="BFloat16Storage"):
        tensorfile.load(path)
    assert read_weights(path)["w"].dtype == torch.bfloat16
