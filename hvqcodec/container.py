"""The .hvq container (format version 4; versions 1-3 are read too): header, coarse-to-fine streams, checksums.

Byte layout, integers little-endian, "varint" = unsigned LEB128 (minimal encoding, at most 9 bytes):

    magic          4 bytes  b"\\x89HVQ"
    version        u8       4 when the file has a tilted residual stream, 3 a flat one (hvqcodec 0.15), else 2
                            (1: at most 3 streams, hvqcodec 0.1)
    model name     u8 length (1..64) + UTF-8 bytes
    model hash     8 bytes  first 8 bytes of the weights' sha256 (exposed as 16 hex chars)
    width, height  varint each, 1..2**24
    mode           u8       0 = RGB, 1 = L, 2 = RGBA, 3 = LA (the mode to restore on decode)
    tile size      varint   pixels; 0 = one tile covers the whole image; tiles in raster order
    streams        u8       1..11: top, mid, bottom level, then the bottom's refinement stages, coarse first,
                            then (version 3+) the residual stream
    residual       u8       version 3+ only: 1 = the last stream is the pixel residual layer (residual.py;
                            version 4: its tilted layout)
    stream lengths varint per (level, tile): all tiles of level 0, then level 1, ...
    alpha length   varint   0 when there is no alpha
    header CRC32   u32      of every header byte before it, magic included
    body           all level-0 tile streams, then level 1, then level 2, then the alpha stream
    trailer CRC32  u32      of header + body

Coarse levels come first so that a file cut short still decodes at its complete levels (a preview).
This module is standard-library only: it knows nothing of models or images beyond the header fields.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from hvqcodec.errors import HvqError

MAGIC = b"\x89HVQ"
FORMAT_VERSION = 4
RESIDUAL_VERSION = 3  # the version that can hold a residual stream; files without one are still written as 2
TILTED_RESIDUAL_VERSION = 4  # a residual stream with a frequency tilt; flat ones are still written as 3
MODES = ("RGB", "L", "RGBA", "LA")
ALPHA_MODES = ("RGBA", "LA")
MAX_LEVELS = 11  # streams: 3 levels + up to 8 refinement stages (version 1: 3)
_MAX_LEVELS_BY_VERSION = {1: 3, 2: MAX_LEVELS, 3: MAX_LEVELS, 4: MAX_LEVELS}
MAX_DIMENSION = 2 ** 24
MAX_NAME_BYTES = 64
HASH_BYTES = 8
HASH_CHARS = 2 * HASH_BYTES  # the model hash as the header exposes it: hex digits
TRAILER_BYTES = 4  # the CRC32 that ends every file
# Pixels a file may decode to (or an image be encoded from) unless the caller raises the limit; like Pillow's
# decompression-bomb guard. 100 million pixels is a 12,000 x 8,000 photo: about 300 MB of output.
DEFAULT_MAX_PIXELS = 100_000_000
TILE_SIZE = 1024  # the tiles the codec writes (a file of one smaller image has tile size 0)
_MAX_VARINT_BYTES = 9
_CRC = struct.Struct("<I")
assert _CRC.size == TRAILER_BYTES
_HEADER_INCOMPLETE = "truncated hvq file (header incomplete)"


class ContainerError(HvqError):
    """A malformed, truncated or unsupported .hvq file."""


@dataclass(frozen=True)
class Header:
    """The header fields of an .hvq file; `stream_lengths` is indexed [level][tile]."""

    model_name: str
    model_hash: str  # 16 lowercase hex chars: the first 8 bytes of the weights' sha256
    width: int
    height: int
    mode: str
    tile_size: int
    levels: int
    stream_lengths: tuple[tuple[int, ...], ...]
    alpha_length: int
    version: int = 2  # the file's format version
    residual: bool = False  # the last stream is the residual layer (version 3+)

    @property
    def tilted(self) -> bool:
        """The residual stream has the tilted layout (version 4)."""
        return self.residual and self.version >= TILTED_RESIDUAL_VERSION

    @property
    def code_streams(self) -> int:
        """Streams of codes (levels and refinement stages), the residual stream not counted."""
        return self.levels - self.residual

    @property
    def tiles_x(self) -> int:
        return _tile_count(self.width, self.tile_size)

    @property
    def tiles_y(self) -> int:
        return _tile_count(self.height, self.tile_size)

    @property
    def num_tiles(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def header_size(self) -> int:
        """Bytes this header takes when packed, magic and header CRC included."""
        return len(_encode_header(self))

    @property
    def body_size(self) -> int:
        """Bytes of all streams (every level and the alpha stream)."""
        return sum(map(sum, self.stream_lengths)) + self.alpha_length


@dataclass
class Container:
    """An unpacked file. `streams` is indexed [level][tile]; only complete levels are present."""

    header: Header
    streams: list[list[bytes]]
    alpha: bytes
    truncated_levels: int = 0  # levels dropped because the file was cut short
    truncated: bool = False  # the file was cut short (trailer missing, so the body is unchecksummed)


def pack(model_name: str, model_hash: str, width: int, height: int, mode: str, tile_size: int,
         streams: Sequence[Sequence[bytes]], alpha: bytes = b"", residual: bool = False,
         tilted: bool = False) -> bytes:
    """Serialise streams ([level][tile], top level first) and an optional alpha stream into .hvq bytes;
    `residual`: the last of the streams is the residual layer (a version 3 file, 4 when `tilted`: its
    streams have the tilted layout; otherwise version 2).

    Raises ValueError for invalid arguments (these are programming errors, not bad user input).
    """
    if not isinstance(model_hash, str) or len(model_hash) < 2 * HASH_BYTES:
        raise ValueError(f"model_hash must be a hex digest of at least {2 * HASH_BYTES} chars: {model_hash!r}")
    try:
        hash_prefix = bytes.fromhex(model_hash[:2 * HASH_BYTES]).hex()
    except ValueError:
        raise ValueError(f"model_hash is not hexadecimal: {model_hash!r}") from None
    if not isinstance(model_name, str):
        raise ValueError(f"model_name must be a str: {model_name!r}")
    for name, value in (("width", width), ("height", height), ("tile_size", tile_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int: {value!r}")
    if not isinstance(alpha, (bytes, bytearray, memoryview)):
        raise ValueError("alpha must be bytes")
    problem = _field_problem(model_name, width, height, mode, tile_size, len(streams), len(alpha))
    if problem:
        raise ValueError(problem)
    tiles = _tile_count(width, tile_size) * _tile_count(height, tile_size)
    for level, level_streams in enumerate(streams):
        if len(level_streams) != tiles:
            raise ValueError(f"level {level} has {len(level_streams)} tile streams, expected {tiles}")
        if not all(isinstance(s, (bytes, bytearray, memoryview)) for s in level_streams):
            raise ValueError(f"level {level} streams must be bytes")
    if residual and len(streams) < 2:
        raise ValueError("a residual stream needs at least one stream of codes before it")
    if tilted and not residual:
        raise ValueError("a tilted file needs a residual stream")
    header = Header(model_name, hash_prefix, width, height, mode, tile_size, len(streams),
                    tuple(tuple(len(s) for s in level) for level in streams), len(alpha),
                    (TILTED_RESIDUAL_VERSION if tilted else RESIDUAL_VERSION) if residual else 2, bool(residual))
    data = _encode_header(header) + b"".join(bytes(s) for level in streams for s in level) + bytes(alpha)
    return data + _CRC.pack(zlib.crc32(data))


def read_header(data: bytes) -> Header:
    """Parse and validate the header at the start of `data` (the body need not be present)."""
    return _parse_header(data)[0]


def unpack(data: bytes, allow_truncated: bool = True) -> Container:
    """Parse a whole .hvq file.

    A file cut short inside the body is accepted when `allow_truncated` and its complete top level is
    present: the levels that are complete are returned and the rest dropped (see Container.truncated).
    """
    data = bytes(data)
    header, body_start = _parse_header(data)
    body_end = body_start + header.body_size
    expected = body_end + _CRC.size
    if len(data) > expected:
        raise ContainerError(f"corrupt hvq file ({len(data) - expected} unexpected bytes after the end)")
    if len(data) == expected:
        if _CRC.unpack_from(data, body_end)[0] != zlib.crc32(memoryview(data)[:body_end]):
            raise ContainerError("checksum mismatch: the hvq file is corrupt")
        alpha = data[body_end - header.alpha_length:body_end]
        return Container(header, _split(data, body_start, header.stream_lengths), alpha)

    # Cut short: the trailer is gone, so keep whatever complete levels (and alpha) are there.
    short = f"truncated hvq file ({len(data)} of {expected} bytes"
    if not allow_truncated:
        raise ContainerError(short + ")")
    offset, levels = body_start, 0
    for level in header.stream_lengths:
        if offset + sum(level) > len(data):
            break
        offset += sum(level)
        levels += 1
    if levels == 0:
        raise ContainerError(short + "; the top level is incomplete)")
    has_alpha = levels == header.levels and body_end <= len(data)
    kept = replace(header, levels=levels, stream_lengths=header.stream_lengths[:levels],
                   alpha_length=header.alpha_length if has_alpha else 0,
                   residual=header.residual and levels == header.levels)
    alpha = data[body_end - header.alpha_length:body_end] if has_alpha else b""
    return Container(kept, _split(data, body_start, kept.stream_lengths), alpha,
                     truncated_levels=header.levels - levels, truncated=True)


def tile_grid(width: int, height: int, tile_size: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of each tile, raster order; tile_size 0 means one tile."""
    step_x, step_y = (tile_size, tile_size) if tile_size else (width, height)
    return [(top, left, min(step_y, height - top), min(step_x, width - left))
            for top in range(0, height, step_y) for left in range(0, width, step_x)]


def prefix_size(header: Header, streams: int) -> int:
    """Bytes of the file that keeps only the first `streams` streams: header + those streams + trailer.

    (A file written with fewer streams has a header a few varints shorter; this counts the longer one.)"""
    if streams >= header.levels:
        return header.header_size + header.body_size + TRAILER_BYTES
    return header.header_size + sum(sum(lengths) for lengths in header.stream_lengths[:streams]) + TRAILER_BYTES


def check_limits(header: Header, tile_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse, from the header alone and before any large allocation, a file that would decode to more than
    max_pixels or whose tiling is not the decoder's (tile_size, or 0 for one tile that fits in it)."""
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise ContainerError(f"hvq file decodes to {header.width}x{header.height} = {pixels:,} pixels, over the "
                             f"limit of {max_pixels:,} (raise it with --max-pixels if you trust the file)")
    if header.tile_size not in (0, tile_size):
        raise ContainerError(f"corrupt hvq header (tile size {header.tile_size}; this model codes tiles of "
                             f"{tile_size})")
    if header.tile_size == 0 and max(header.width, header.height) > tile_size:
        raise ContainerError(f"corrupt hvq header (one tile of {header.width}x{header.height}; tiles are at most "
                             f"{tile_size} pixels on a side)")


def _tile_count(size: int, tile_size: int) -> int:
    return 1 if tile_size == 0 else -(-size // tile_size)


def _field_problem(model_name: str, width: int, height: int, mode: str, tile_size: int, levels: int,
                   alpha_length: int | None) -> str | None:
    """What is wrong with these header fields, or None; shared by pack (ValueError) and unpack.

    `alpha_length` None skips the alpha check (unpack checks the other fields before that length is read).
    """
    if not 1 <= len(model_name.encode("utf-8")) <= MAX_NAME_BYTES:
        return f"model name must be 1..{MAX_NAME_BYTES} UTF-8 bytes: {model_name!r}"
    for name, value in (("width", width), ("height", height)):
        if not 1 <= value <= MAX_DIMENSION:
            return f"{name} {value} is not in 1..{MAX_DIMENSION}"
    if not 0 <= tile_size <= MAX_DIMENSION:
        return f"tile size {tile_size} is not in 0..{MAX_DIMENSION}"
    if mode not in MODES:
        return f"unknown image mode {mode!r}"
    if not 1 <= levels <= MAX_LEVELS:
        return f"{levels} levels, expected 1..{MAX_LEVELS}"
    if alpha_length is not None and (alpha_length > 0) != (mode in ALPHA_MODES):
        return f"{'an' if alpha_length else 'no'} alpha stream for mode {mode}"
    return None


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_header(header: Header) -> bytes:
    name = header.model_name.encode("utf-8")
    parts = [MAGIC, bytes([header.version, len(name)]), name, bytes.fromhex(header.model_hash),
             _varint(header.width), _varint(header.height), bytes([MODES.index(header.mode)]),
             _varint(header.tile_size), bytes([header.levels])]
    if header.version >= RESIDUAL_VERSION:
        parts.append(bytes([int(header.residual)]))
    parts += [_varint(n) for level in header.stream_lengths for n in level]
    head = b"".join(parts) + _varint(header.alpha_length)
    return head + _CRC.pack(zlib.crc32(head))


class _Reader:
    """Sequential header reader; running out of bytes means the header was cut short."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ContainerError(_HEADER_INCOMPLETE)
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self, what: str) -> int:
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            byte = self.u8()
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:  # non-minimal: the encoding must be canonical
                    break
                return value
        raise ContainerError(f"corrupt hvq header (overlong varint in {what})")


def _parse_header(data: bytes) -> tuple[Header, int]:
    """Parse and validate the header; return it with the offset where the body starts."""
    data = bytes(data)
    if not data:
        raise ContainerError("empty file, not an hvq file")
    if not data.startswith(MAGIC):
        raise ContainerError(_HEADER_INCOMPLETE if MAGIC.startswith(data) else "not an hvq file")
    reader = _Reader(data, len(MAGIC))
    version = reader.u8()
    if version > FORMAT_VERSION:
        raise ContainerError(f"unsupported hvq format version {version} (this hvqcodec reads version "
                             f"{FORMAT_VERSION}); upgrade hvqcodec")
    if version < 1:
        raise ContainerError(f"corrupt hvq header (format version {version})")
    try:
        name = reader.take(reader.u8()).decode("utf-8")
    except UnicodeDecodeError:
        raise ContainerError("corrupt hvq header (model name is not UTF-8)") from None
    model_hash = reader.take(HASH_BYTES).hex()
    width, height = reader.varint("width"), reader.varint("height")
    mode_byte = reader.u8()
    if mode_byte >= len(MODES):
        raise ContainerError(f"corrupt hvq header (unknown mode byte {mode_byte})")
    tile_size, levels = reader.varint("tile size"), reader.u8()
    if _MAX_LEVELS_BY_VERSION[version] < levels <= MAX_LEVELS:
        raise ContainerError(f"corrupt hvq header ({levels} streams in a version {version} file)")
    residual = False
    if version >= RESIDUAL_VERSION:
        residual_byte = reader.u8()
        if residual_byte > 1 or (residual_byte and levels < 2):
            raise ContainerError(f"corrupt hvq header (residual flag {residual_byte} with {levels} streams)")
        residual = bool(residual_byte)
    # Checked before reading the lengths so that a damaged count gives a clear message, not a huge loop.
    problem = _field_problem(name, width, height, MODES[mode_byte], tile_size, levels, alpha_length=None)
    if problem:
        raise ContainerError(f"corrupt hvq header ({problem})")
    tiles = _tile_count(width, tile_size) * _tile_count(height, tile_size)
    if tiles * levels > len(data):  # every length takes at least one byte
        raise ContainerError(f"corrupt hvq header ({tiles} tiles x {levels} levels cannot fit in "
                             f"a {len(data)}-byte file)")
    lengths = tuple(tuple(reader.varint("stream length") for _ in range(tiles)) for _ in range(levels))
    alpha_length = reader.varint("alpha length")
    crc_offset = reader.pos
    if _CRC.unpack(reader.take(_CRC.size))[0] != zlib.crc32(data[:crc_offset]):
        raise ContainerError("corrupt hvq header (header checksum mismatch)")
    problem = _field_problem(name, width, height, MODES[mode_byte], tile_size, levels, alpha_length)
    if problem:
        raise ContainerError(f"corrupt hvq header ({problem})")
    return Header(name, model_hash, width, height, MODES[mode_byte], tile_size, levels, lengths,
                  alpha_length, version, residual), reader.pos


def _split(data: bytes, offset: int, lengths: tuple[tuple[int, ...], ...]) -> list[list[bytes]]:
    """Cut the body into [level][tile] streams."""
    streams = []
    for level in lengths:
        streams.append([])
        for n in level:
            streams[-1].append(data[offset:offset + n])
            offset += n
    return streams
