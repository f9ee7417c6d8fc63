"""The .hvq container: round trips, size, and a clear one-line error for every kind of malformed file."""
from __future__ import annotations

import random
import struct
import zlib

import pytest

from hvqcodec.container import Container, ContainerError, Header, pack, read_header, unpack
from hvqcodec.errors import HvqError

HASH = "0123456789abcdef" + "f" * 48  # a full sha256 hex digest


def random_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


def tiled_file(seed: int = 0) -> tuple[bytes, list[list[bytes]], bytes]:
    """A 3-level RGBA file of 3x2 tiles (100x70 pixels, 40-pixel tiles) with an alpha stream."""
    rng = random.Random(seed)
    streams = [[random_bytes(rng, rng.randrange(1, 300)) for _ in range(6)] for _ in range(3)]
    alpha = random_bytes(rng, 150)
    return pack("hvq-small", HASH, 100, 70, "RGBA", 40, streams, alpha), streams, alpha


def error_message(data: bytes, **kwargs) -> str:
    with pytest.raises(ContainerError) as info:
        unpack(data, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_round_trip_several_tiles_levels_and_alpha():
    data, streams, alpha = tiled_file()
    container = unpack(data)
    assert container.streams == streams
    assert container.alpha == alpha
    assert (container.truncated_levels, container.truncated) == (0, False)
    header = container.header
    assert (header.model_name, header.model_hash, header.width, header.height, header.mode) == \
        ("hvq-small", "0123456789abcdef", 100, 70, "RGBA")
    assert (header.tile_size, header.tiles_x, header.tiles_y, header.num_tiles, header.levels) == (40, 3, 2, 6, 3)
    assert header.stream_lengths == tuple(tuple(map(len, level)) for level in streams)
    assert header.alpha_length == len(alpha)
    assert read_header(data) == header
    assert read_header(data[:header.header_size]) == header  # the body is not needed
    assert len(data) == header.header_size + header.body_size + 4
    # Body order: every top-level stream, then mid, then bottom, then alpha; then the trailer CRC.
    assert data[header.header_size:-4] == b"".join(s for level in streams for s in level) + alpha
    assert data[-4:] == struct.pack("<I", zlib.crc32(data[:-4]))


@pytest.mark.parametrize("mode, alpha", [("RGB", b""), ("L", b""), ("LA", b"\x01\x02")])
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_round_trip_modes_and_level_counts(mode, alpha, levels):
    streams = [[bytes([level]) * (level + 1)] for level in range(levels)]
    container = unpack(pack("m", HASH, 1, 1, mode, 0, streams, alpha))
    assert (container.header.mode, container.header.levels, container.header.num_tiles) == (mode, levels, 1)
    assert (container.streams, container.alpha) == (streams, alpha)


def test_header_is_small_for_a_typical_file():
    rng = random.Random(1)
    streams = [[random_bytes(rng, n)] for n in (900, 3000, 9000)]
    data = pack("hvq-small", HASH, 768, 512, "RGB", 0, streams)
    overhead = len(data) - sum(len(level[0]) for level in streams)
    assert overhead <= 64
    assert overhead == read_header(data).header_size + 4  # header (magic, CRC included) + trailer
    assert isinstance(unpack(data), Container)


def test_large_dimensions_and_empty_streams():
    data = pack("a" * 64, HASH.upper(), 2 ** 24, 3, "L", 2 ** 23, [[b"", b"x"]])
    header = read_header(data)
    assert (header.width, header.height, header.tiles_x, header.tiles_y) == (2 ** 24, 3, 2, 1)
    assert header.model_hash == "0123456789abcdef"
    assert unpack(data).streams == [[b"", b"x"]]


def test_errors_are_hvq_errors():
    assert issubclass(ContainerError, HvqError)


def test_empty_input():
    assert error_message(b"") == "empty file, not an hvq file"


def test_random_bytes_and_wrong_magic():
    rng = random.Random(2)
    for n in (1, 3, 5, 100, 5000):
        assert error_message(b"\x00" + random_bytes(rng, n)) == "not an hvq file"
    data, _, _ = tiled_file()
    assert error_message(b"\x89PNG" + data[4:]) == "not an hvq file"
    assert error_message(b"GIF89a") == "not an hvq file"


def test_future_version():
    data, _, _ = tiled_file()
    assert error_message(data[:4] + b"\x05" + data[5:]) == \
        "unsupported hvq format version 5 (this hvqcodec reads version 4); upgrade hvqcodec"


def test_a_tilted_residual_makes_a_version_4_file():
    """Only a tilted residual layer needs version 4; a flat one stays version 3, byte for byte as 0.15 wrote it."""
    streams = [[b"a"], [b"b"], [b"r" * 5]]
    flat = pack("m", HASH, 8, 8, "RGB", 0, streams, residual=True)
    tilted = pack("m", HASH, 8, 8, "RGB", 0, streams, residual=True, tilted=True)
    assert (read_header(flat).version, read_header(flat).tilted) == (3, False)
    assert (read_header(tilted).version, read_header(tilted).tilted, read_header(tilted).residual) == (4, True, True)
    assert tilted[5:] != flat[5:] and len(tilted) == len(flat)
    assert unpack(tilted).streams == unpack(flat).streams
    cut = unpack(tilted[:-6], allow_truncated=True)  # the residual dropped: nothing tilted is left
    assert (cut.header.levels, cut.header.residual, cut.header.tilted) == (2, False, False)
    with pytest.raises(ValueError, match="tilted file needs a residual"):
        pack("m", HASH, 8, 8, "RGB", 0, streams, tilted=True)


def test_residual_stream_makes_a_version_3_file_and_goes_first_when_cut():
    """Files without a residual stream stay version 2, byte for byte; with one, version 3 carries the flag, and
    a file cut inside the residual stream keeps its streams of codes, the flag cleared."""
    data, streams, alpha = tiled_file()
    assert read_header(data).version == 2 and not read_header(data).residual
    with_residual = pack("hvq-small", HASH, 100, 70, "RGBA", 40, streams + [[b"r" * 9] * 6], alpha, residual=True)
    header = read_header(with_residual)
    assert (header.version, header.residual, header.levels, header.code_streams) == (3, True, 4, 3)
    assert len(with_residual) == len(data) + 1 + 6 * (9 + 1)  # the flag byte, then six lengths and streams
    assert unpack(with_residual).streams[-1] == [b"r" * 9] * 6
    end_of_codes = header.header_size + sum(sum(lengths) for lengths in header.stream_lengths[:3])
    cut = unpack(with_residual[:end_of_codes + 5], allow_truncated=True)
    assert (cut.header.levels, cut.header.residual, cut.truncated_levels) == (3, False, 1)
    assert cut.streams == streams
    # A residual needs streams of codes before it.
    with pytest.raises(ValueError, match="residual stream needs"):
        pack("hvq-small", HASH, 100, 70, "RGB", 40, [[b"r"] * 6], residual=True)


def test_residual_flag_is_checked():
    streams = [[b"a"], [b"b"]]
    good = pack("m", HASH, 8, 8, "RGB", 0, streams, residual=True)
    head = good[:-(4 + 2 + 4)]  # header up to its CRC: the flag byte comes right after the stream count
    flag_at = head.index(bytes([2, 1]), 4 + 1 + 1 + 1 + 8) + 1

    def with_flag(value: int) -> bytes:
        body = bytearray(good[:flag_at] + bytes([value]) + good[flag_at + 1:])
        crc_at = len(head)
        body[crc_at:crc_at + 4] = struct.pack("<I", zlib.crc32(bytes(body[:crc_at])))
        return bytes(body[:-4]) + struct.pack("<I", zlib.crc32(bytes(body[:-4])))

    assert unpack(with_flag(1)).header.residual
    assert not unpack(with_flag(0)).header.residual
    assert error_message(with_flag(2)) == "corrupt hvq header (residual flag 2 with 2 streams)"


def test_version_1_files_are_read_but_hold_at_most_3_streams():
    import zlib
    from hvqcodec.container import pack, unpack

    def as_version_1(data: bytes) -> bytes:
        header = read_header(data)
        body = data[header.header_size:-4]
        head = data[:4] + b"\x01" + data[5:header.header_size - 4]
        head += zlib.crc32(head).to_bytes(4, "little")
        return head + body + zlib.crc32(head + body).to_bytes(4, "little")

    three = pack("m", HASH, 8, 8, "RGB", 0, [[b"a"], [b"b"], [b"c"]])
    old = unpack(as_version_1(three))
    assert (old.header.version, old.header.levels, old.streams) == (1, 3, [[b"a"], [b"b"], [b"c"]])
    four = pack("m", HASH, 8, 8, "RGB", 0, [[b"a"], [b"b"], [b"c"], [b"d"]])
    assert unpack(four).header.version == 2
    assert error_message(as_version_1(four)) == "corrupt hvq header (4 streams in a version 1 file)"


def test_header_cut_short():
    data, _, _ = tiled_file()
    size = read_header(data).header_size
    for n in range(1, size):
        assert error_message(data[:n]) == "truncated hvq file (header incomplete)", n
        with pytest.raises(ContainerError, match=r"^truncated hvq file \(header incomplete\)$"):
            read_header(data[:n])


def header_bytes(name: bytes = b"m", mode: int = 0, levels: int = 1, width: bytes = b"\x01",
                 alpha_length: int = 0) -> bytes:
    """A hand-made header (1 tile) with a valid CRC, to reach the field checks behind the checksum."""
    head = b"\x89HVQ\x01" + bytes([len(name)]) + name + bytes(8) + width + b"\x01" + bytes([mode, 0, levels])
    head += b"\x00" * levels + bytes([alpha_length])
    return head + struct.pack("<I", zlib.crc32(head))


@pytest.mark.parametrize("fields, problem", [
    (dict(name=b""), "model name must be 1..64 UTF-8 bytes"),
    (dict(name=b"\xff\xfe"), "model name is not UTF-8"),
    (dict(mode=4), "unknown mode byte 4"),
    (dict(levels=0), "0 levels, expected 1..11"),
    (dict(levels=12), "12 levels, expected 1..11"),
    (dict(width=b"\x00"), "width 0 is not in 1..16777216"),
    (dict(width=b"\x81\x80\x80\x08"), "width 16777217 is not in 1..16777216"),
    (dict(width=b"\x81\x00"), "overlong varint in width"),
    (dict(width=b"\xff" * 9), "overlong varint in width"),
    (dict(mode=2), "no alpha stream for mode RGBA"),
    (dict(alpha_length=5), "an alpha stream for mode RGB"),
])
def test_invalid_header_fields(fields, problem):
    data = header_bytes(**fields)
    message = error_message(data + b"\x00" * 100)
    assert message.startswith("corrupt hvq header (") and problem in message, message


def test_header_without_errors_is_accepted():
    data = header_bytes()
    assert read_header(data).width == 1
    assert unpack(data + struct.pack("<I", zlib.crc32(data))).streams == [[b""]]


def test_unterminated_varint_is_a_truncated_header():
    assert error_message(b"\x89HVQ\x01\x01m" + bytes(8) + b"\x80\x80") == "truncated hvq file (header incomplete)"


def test_flipped_byte_anywhere_is_detected():
    data, _, _ = tiled_file()
    size = read_header(data).header_size
    rng = random.Random(3)
    for position in range(len(data)):
        corrupt = bytearray(data)
        corrupt[position] ^= rng.randrange(1, 256)
        message = error_message(bytes(corrupt))
        if position < 4:
            assert message == "not an hvq file"
        elif position == 4:
            assert message.startswith(("unsupported hvq format version", "corrupt hvq header (format version 0)"))
        elif position < size:
            assert message.startswith("corrupt hvq header ("), (position, message)
        else:
            assert message == "checksum mismatch: the hvq file is corrupt", (position, message)


def test_truncated_in_bottom_level_keeps_two_levels():
    data, streams, _ = tiled_file()
    header = read_header(data)
    bottom_start = header.header_size + sum(map(sum, header.stream_lengths[:2]))
    cut = data[:bottom_start + sum(header.stream_lengths[2]) // 2]
    container = unpack(cut)
    assert (container.truncated_levels, container.truncated, container.header.levels) == (1, True, 2)
    assert container.streams == streams[:2]
    assert container.alpha == b"" and container.header.alpha_length == 0
    assert container.header.stream_lengths == header.stream_lengths[:2]
    assert unpack(data[:bottom_start]).streams == streams[:2]  # cut exactly at a level boundary
    assert error_message(cut, allow_truncated=False) == f"truncated hvq file ({len(cut)} of {len(data)} bytes)"


def test_truncated_in_mid_level_keeps_top_level():
    data, streams, _ = tiled_file()
    header = read_header(data)
    container = unpack(data[:header.header_size + sum(header.stream_lengths[0]) + 1])
    assert (container.truncated_levels, container.header.levels, container.streams) == (2, 1, streams[:1])


def test_truncated_in_alpha_or_trailer():
    data, streams, alpha = tiled_file()
    in_alpha = unpack(data[:-10])
    assert (in_alpha.truncated_levels, in_alpha.truncated, in_alpha.streams, in_alpha.alpha) == (0, True, streams, b"")
    in_trailer = unpack(data[:-2])
    assert (in_trailer.truncated_levels, in_trailer.truncated, in_trailer.alpha) == (0, True, alpha)
    assert in_trailer.header == read_header(data)


def test_truncated_in_top_level_is_an_error():
    data, _, _ = tiled_file()
    header = read_header(data)
    for n in (header.header_size, header.header_size + sum(header.stream_lengths[0]) - 1):
        assert error_message(data[:n]) == \
            f"truncated hvq file ({n} of {len(data)} bytes; the top level is incomplete)"


def test_trailing_garbage():
    data, _, _ = tiled_file()
    assert error_message(data + b"junk") == "corrupt hvq file (4 unexpected bytes after the end)"
    assert error_message(data + b"\x00") == "corrupt hvq file (1 unexpected bytes after the end)"


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="CMYK"), "unknown image mode"),
    (dict(model_name=""), "model name"),
    (dict(model_name="x" * 65), "model name"),
    (dict(model_hash="abc"), "model_hash"),
    (dict(model_hash="z" * 64), "not hexadecimal"),
    (dict(width=0), "width 0"),
    (dict(height=2 ** 24 + 1), "height"),
    (dict(width=1.5), "width must be an int"),
    (dict(tile_size=-1), "tile size"),
    (dict(streams=[]), "0 levels"),
    (dict(streams=[[b""]] * 12), "12 levels"),
    (dict(streams=[[b"", b""]]), "expected 1"),
    (dict(streams=[["text"]]), "must be bytes"),
    (dict(alpha=b"a"), "alpha stream for mode RGB"),
    (dict(mode="RGBA"), "no alpha stream"),
])
def test_pack_validates_its_arguments(kwargs, match):
    args = dict(model_name="m", model_hash=HASH, width=8, height=8, mode="RGB", tile_size=0, streams=[[b"x"]])
    with pytest.raises(ValueError, match=match):
        pack(**{**args, **kwargs})


def test_header_is_frozen():
    header = read_header(tiled_file()[0])
    with pytest.raises(AttributeError):
        header.width = 1  # type: ignore[misc]
    assert isinstance(header, Header)
