"""Images in and out (docs/DESIGN.md section 6).

The codec codes 8-bit RGB. `load_image` turns any readable image into that plus what is needed to give the
user back the same kind of image: the mode to restore ("RGB", "L", "RGBA" or "LA") and the alpha plane, which
is stored losslessly beside the codes (`encode_alpha` / `decode_alpha`). `to_pil` is the inverse and
`save_image` writes the result atomically, never overwriting a file without `force`.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import HvqError

# Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that, to guard against decompression bombs.
# Its default (~89 Mpixels) is below what a camera or a scan produces, so allow up to 2**28 pixels (268 Mpixels,
# 768 MiB as RGB) and refuse anything larger with a clear error (see _open).
MAX_PIXELS = 2 ** 28
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

SIXTEEN_BIT_WARNING = "16-bit image reduced to 8 bits"

# Pillow keeps only the high byte of each sample of a 16-bit colour PNG. Decoding the same data a second
# time with an unpacker that reads the low bytes instead recovers full precision, so the reduction to 8 bits
# can round rather than truncate. Maps the PNG's raw mode -> (low-byte raw mode, channels of the high-byte
# image that each low-byte channel belongs to).
_PNG16_LOW_BYTES = {
    "RGB;16B": ("RGB;16L", [0, 1, 2]),
    "RGBA;16B": ("RGBA;16L", [0, 1, 2, 3]),
    "LA;16B": ("RGBA", [1, 1, 1, 3]),  # opened as RGBA (L, L, L, A); plain RGBA unpacks bytes Lhi Llo Ahi Alo
}

# What Pillow (and zlib underneath) raise for unreadable or corrupt data.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, MemoryError,
                  Image.DecompressionBombError, Image.DecompressionBombWarning)

# Modes that hold grey, colour or alpha in a form the codec does not take directly (bilevel, premultiplied
# alpha, palette with alpha, padding byte); other unusual modes (CMYK, YCbCr, LAB, HSV) become RGB.
_CONVERSIONS = {"1": "L", "La": "LA", "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB"}
_MODES_BY_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


class ImageError(HvqError):
    """An image that cannot be read, converted or written."""


@dataclass
class LoadedImage:
    """An image ready for coding."""

    rgb: np.ndarray
    """(H, W, 3) uint8: what the codec codes (grayscale replicated into three channels)."""
    mode: str
    """Mode to restore on output: "RGB", "L", "RGBA" or "LA"."""
    alpha: np.ndarray | None = None
    """(H, W) uint8 when the source has transparency, else None."""
    warnings: list[str] = field(default_factory=list)
    """Human-readable notes on what changed, e.g. "16-bit image reduced to 8 bits"."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _open(source: str | Path | bytes | Image.Image | np.ndarray) -> tuple[str, bytes | None, Image.Image]:
    """(name for messages, raw file data or None, opened image)."""
    if isinstance(source, Image.Image):
        return "image", None, source
    if isinstance(source, np.ndarray):
        return "array", None, _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, data = "image data", bytes(source)
    elif not isinstance(source, (str, Path)):
        raise ImageError(f"cannot read an image from a {type(source).__name__} (give a path, the file's bytes, "
                         "a PIL image or a uint8 array)")
    else:
        name, path = str(source), Path(source)
        if not path.exists():
            raise ImageError(f"{name}: no such file")
        if path.is_dir():
            raise ImageError(f"{name}: cannot read image (is a directory)")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{name}: cannot read image ({exc.strerror or _one_line(exc)})") from None
    if not data:
        raise ImageError(f"{name}: cannot read image (empty)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # turned into "too large" below
            return name, data, Image.open(io.BytesIO(data))
    except UnidentifiedImageError:  # its message names the in-memory buffer, which says nothing to a user
        raise ImageError(f"{name}: cannot read image (not a format Pillow reads)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image too large (more than {MAX_PIXELS} pixels)") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{name}: cannot read image ({_one_line(exc)})") from None


def _from_array(array: np.ndarray) -> Image.Image:
    """A uint8 array (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA, as numpy and PIL lay images out."""
    channels = 1 if array.ndim == 2 else array.shape[-1] if array.ndim == 3 else 0
    if array.dtype != np.uint8 or channels not in (1, 3, 4) or 0 in array.shape:
        raise ImageError(f"array: need uint8 values of shape (H, W), (H, W, 3) or (H, W, 4), got {array.dtype} "
                         f"{tuple(array.shape)}")
    # The pixel limit is load_image's, as for any other source.
    return Image.fromarray(np.ascontiguousarray(array.reshape(array.shape[:2]) if channels == 1 else array))


def _png16_low_bytes(image: Image.Image, data: bytes | None) -> np.ndarray | None:
    """Low bytes of a 16-bit colour PNG, oriented and laid out like the (high-byte) image; else None."""
    if data is None or image.format != "PNG" or len(image.tile) != 1:
        return None
    codec, extents, offset, args = image.tile[0]  # unpacked, not by attribute: plain tuples in Pillow 10
    if codec != "zip" or args not in _PNG16_LOW_BYTES:
        return None
    rawmode, channels = _PNG16_LOW_BYTES[args]
    low = Image.open(io.BytesIO(data))
    low.tile = [(codec, extents, offset, rawmode)]
    # Same file, so the same EXIF orientation: transposing it the same way keeps the two aligned.
    return np.asarray(ImageOps.exif_transpose(low))[..., channels]


def _sample_values(image: Image.Image, data: bytes | None) -> tuple[np.ndarray, bool]:
    """EXIF-oriented pixels as an (H, W, C) array at source precision (C = 1, 2, 3 or 4), and whether
    the samples are 16 bit."""
    tiles = getattr(image, "tile", [])  # only images opened from a file have one
    tile_args = tiles[0][3] if len(tiles) == 1 else None
    high_bytes_only = isinstance(tile_args, str) and ";16" in tile_args and image.mode in ("RGB", "RGBA")
    low = _png16_low_bytes(image, data) if high_bytes_only else None
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in _CONVERSIONS:
        image = image.convert(_CONVERSIONS[mode])
    elif mode not in ("L", "LA", "RGB", "RGBA", "F") and not mode.startswith("I"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    values = np.asarray(image)
    if values.ndim == 2:
        values = values[..., None]
    if low is not None:
        values = values.astype(np.uint32) * 256 + low
        if tile_args == "LA;16B":
            values = values[..., [0, 3]]
        return values, True
    if mode.startswith("I") or mode == "F":
        return values, mode.startswith("I;16") or values.max(initial=0) > 255
    return values, high_bytes_only


def _to_uint8(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    if sixteen_bit:
        values = np.clip(values, 0, 65535)
        if values.dtype.kind in "iu":  # v / 257 is never exactly halfway, so this is exact rounding
            return ((values.astype(np.int64) + 128) // 257).astype(np.uint8)
        return np.rint(values / 257).astype(np.uint8)
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


def load_image(source: str | Path | bytes | Image.Image | np.ndarray) -> LoadedImage:
    """Read an image (a path, the file's bytes, a PIL image or a uint8 array (H, W[, 3 or 4])) and prepare it for coding.

    EXIF orientation is applied first. Grayscale (1, L, I;16, I, F) is coded as RGB and restored as "L";
    palette images become RGB (RGBA with transparency); CMYK, YCbCr and others become RGB. RGBA and LA
    keep their alpha; an alpha that is fully opaque, which carries nothing, is dropped. 16-bit samples are
    rounded to 8 bits, with a warning. Raises ImageError with a one-line message for a missing file or
    unreadable data.
    """
    name, data, image = _open(source)
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"{name}: image too large (more than {MAX_PIXELS} pixels)")
    notes = []
    if getattr(image, "n_frames", 1) > 1:
        notes.append("animated image: only the first frame is kept")
    info = dict(image.info)
    try:
        values, sixteen_bit = _sample_values(image, data)
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{name}: cannot read image ({_one_line(exc)})") from None
    # A transparency key (tRNS in grey or RGB PNGs) marks one colour as transparent: make it a real alpha.
    key = info.get("transparency")
    keyed = image.mode in ("L", "RGB") or image.mode.startswith("I")  # P handles its own in convert()
    if key is not None and keyed and values.shape[-1] in (1, 3):
        try:
            transparent = np.all(values == np.array(key).reshape(-1), axis=-1, keepdims=True)
        except ValueError:
            transparent = None  # a key that does not fit the image: ignore it
        if transparent is not None:
            opaque_value = 65535 if sixteen_bit else 255
            values = np.concatenate([values, np.where(transparent, 0, opaque_value).astype(values.dtype)], -1)
    values = _to_uint8(values, sixteen_bit)
    if sixteen_bit:
        notes.append(SIXTEEN_BIT_WARNING)

    channels = values.shape[-1]
    alpha = values[..., -1] if channels in (2, 4) else None
    if alpha is not None and alpha.min() == 255:
        alpha, channels = None, channels - 1
    colour = values[..., :3] if channels >= 3 else np.repeat(values[..., :1], 3, axis=-1)
    return LoadedImage(
        rgb=np.require(colour, np.uint8, ["C", "W", "O"]),
        mode=_MODES_BY_CHANNELS[channels],
        alpha=None if alpha is None else np.require(alpha, np.uint8, ["C", "W", "O"]),
        warnings=notes,
    )


def to_pil(rgb: np.ndarray, mode: str, alpha: np.ndarray | None = None) -> Image.Image:
    """The inverse of load_image: an (H, W, 3) uint8 array back to a PIL image of `mode`.

    For "L" and "LA" the gray value is the rounded mean of the three channels (channel 0 when they are equal).
    For "RGBA" and "LA", `alpha` ((H, W) uint8) is required.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if mode not in ("RGB", "L", "RGBA", "LA"):
        raise ImageError(f"cannot restore image mode {mode!r} (expected RGB, L, RGBA or LA)")
    if mode in ("L", "LA"):
        # The sum of three channels divided by 3 is never exactly halfway, so +1 then floor is exact rounding.
        planes = [((rgb.sum(axis=-1, dtype=np.uint16) + 1) // 3).astype(np.uint8)]
    else:
        planes = [rgb[..., i] for i in range(3)]
    if mode in ("RGBA", "LA"):
        if alpha is None or alpha.shape != rgb.shape[:2] or alpha.dtype != np.uint8:
            got = "none" if alpha is None else f"{alpha.shape} {alpha.dtype}"
            raise ImageError(f"{mode} image needs an alpha plane of shape {rgb.shape[:2]} uint8, got {got}")
        planes.append(alpha)
    return Image.fromarray(planes[0] if len(planes) == 1 else np.stack(planes, axis=-1))


def encode_alpha(alpha: np.ndarray) -> bytes:
    """Losslessly compress an (H, W) uint8 alpha plane (as an optimised grayscale PNG)."""
    if alpha.dtype != np.uint8 or alpha.ndim != 2:
        raise ValueError(f"expected an (H, W) uint8 alpha plane, got {alpha.shape} {alpha.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(alpha)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def decode_alpha(data: bytes, width: int, height: int) -> np.ndarray:
    """The (height, width) uint8 alpha plane from encode_alpha's bytes; ImageError if corrupt or the wrong size."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG" or image.mode != "L":
                raise ImageError(f"corrupt alpha plane (not an 8-bit grayscale PNG: {image.format} {image.mode})")
            if image.size != (width, height):
                raise ImageError(f"corrupt alpha plane (size {image.width}x{image.height}, "
                                 f"expected {width}x{height})")
            return np.array(image, dtype=np.uint8)
    except _DECODE_ERRORS as exc:
        raise ImageError(f"corrupt alpha plane ({_one_line(exc)})") from None


# Options per output format: keep JPEG near-transparent to the codec's output, and WebP lossless. PNG at zlib
# level 3 rather than PIL's 6: on decoded Kodak images (6 images x qualities 40/75/95) 1.1% more bytes in 37% of
# the time, 0.07 instead of 0.18 s for a 768x512 picture, a tenth of a torch-free `decompress` (level 1: 3.7% more);
# level 2 since hvqcodec 0.23 (pngwrite.LEVEL: a 12-megapixel picture's write a third sooner, 2.9% more bytes).
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}, "PNG": {"compress_level": 2}}


def encode_image(image: Image.Image, fmt: str = "PNG", name: str = "<stdout>") -> bytes:
    """`image` in a file format PIL writes (PNG, JPEG, WEBP, ...) as bytes; ImageError (naming `name`) for a
    mode the format cannot hold. 8-bit PNGs are written on two cores where the C kernel is built (`pngwrite`:
    the same filters and zlib level as Pillow's, 2.3x sooner on a 12-megapixel picture)."""
    if fmt == "PNG" and image.mode in ("L", "LA", "RGB", "RGBA"):
        from . import pngwrite

        if pngwrite.available():
            return pngwrite.encode_png(np.asarray(image))
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt, **_SAVE_OPTIONS.get(fmt, {}))
    except (OSError, ValueError, KeyError) as exc:
        raise ImageError(f"{name}: cannot write a {image.mode} image as {fmt} ({_one_line(exc)})") from None
    return buffer.getvalue()


def save_image(image: Image.Image, path: str | Path, force: bool = False) -> None:
    """Write `image` to `path` in the format its suffix names (.png, .jpg, .webp, .tiff, ...).

    The file is written atomically (a temporary file then a rename), so it is never left half-written.
    An existing file is only replaced when `force` is true. Raises ImageError for an unknown suffix, a mode
    the format cannot hold (e.g. alpha in JPEG) or a write failure.
    """
    # fileio imports torch at module level; importing it here keeps load_image & co. free of torch.
    from .fileio import atomic_write_bytes

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        what = f"unknown image format {path.suffix!r}" if path.suffix else "no file suffix to choose a format"
        raise ImageError(f"{path}: {what} (use .png, .jpg, .webp or .tiff)")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory")
    if path.exists() and not force:
        raise ImageError(f"{path} exists (use --force to overwrite)")
    data = encode_image(image, fmt, str(path))
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ImageError(f"{path}: cannot write ({exc.strerror or _one_line(exc)})") from None
