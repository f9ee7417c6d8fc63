import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from hvqcodec import imageio
from hvqcodec.imageio import (SIXTEEN_BIT_WARNING, ImageError, decode_alpha, encode_alpha, load_image, save_image,
                              to_pil)

RNG = np.random.default_rng(0)


def random_u8(*shape):
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def save(tmp_path, image, name="in.png", **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def png16(values: np.ndarray, color_type: int, exif: bytes = b"") -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour). color_type 0 gray, 2 RGB, 4 LA, 6 RGBA."""
    height, width = values.shape[:2]
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + (chunk(b"eXIf", exif) if exif else b"")
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def opened(path):
    """(mode, format, pixels) of an image file, closing it."""
    with Image.open(path) as image:
        return image.mode, image.format, np.array(image)


def reduce16(values):
    return np.round(values / 257).astype(np.uint8)


def check_array(array, shape):
    assert array.shape == shape and array.dtype == np.uint8
    assert array.flags.c_contiguous and array.flags.owndata and array.flags.writeable


def assert_round_trip(loaded, mode, pixels):
    restored = to_pil(loaded.rgb, loaded.mode, loaded.alpha)
    assert restored.mode == mode
    assert restored.size == (pixels.shape[1], pixels.shape[0])
    np.testing.assert_array_equal(np.asarray(restored), pixels)


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (5, 7)])
def test_rgb(tmp_path, size):
    pixels = random_u8(*size, 3)
    loaded = load_image(save(tmp_path, Image.fromarray(pixels)))
    check_array(loaded.rgb, (*size, 3))
    np.testing.assert_array_equal(loaded.rgb, pixels)
    assert (loaded.mode, loaded.alpha, loaded.warnings) == ("RGB", None, [])
    assert_round_trip(loaded, "RGB", pixels)


@pytest.mark.parametrize("size", [(1, 1), (17, 33)])
def test_gray_is_replicated_and_restored(tmp_path, size):
    gray = random_u8(*size)
    loaded = load_image(save(tmp_path, Image.fromarray(gray)))
    check_array(loaded.rgb, (*size, 3))
    np.testing.assert_array_equal(loaded.rgb, np.repeat(gray[..., None], 3, axis=-1))
    assert (loaded.mode, loaded.alpha, loaded.warnings) == ("L", None, [])
    assert_round_trip(loaded, "L", gray)


def test_bilevel(tmp_path):
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    loaded = load_image(save(tmp_path, Image.fromarray(bits).convert("1")))
    assert loaded.mode == "L" and loaded.alpha is None
    np.testing.assert_array_equal(loaded.rgb[..., 1], bits * 255)
    assert_round_trip(loaded, "L", (bits * 255).astype(np.uint8))


def palette_image(indices):
    palette = [10, 20, 30, 200, 100, 0, 0, 0, 255]
    image = Image.frombytes("P", indices.shape[::-1], indices.tobytes())
    image.putpalette(palette)
    return image, np.array(palette, dtype=np.uint8).reshape(-1, 3)[indices]


def test_palette(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    image, expected = palette_image(indices)
    loaded = load_image(save(tmp_path, image))
    np.testing.assert_array_equal(loaded.rgb, expected)
    assert (loaded.mode, loaded.alpha, loaded.warnings) == ("RGB", None, [])
    assert_round_trip(loaded, "RGB", expected)


def test_palette_with_transparency(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    image, expected = palette_image(indices)
    loaded = load_image(save(tmp_path, image, transparency=1))
    assert loaded.mode == "RGBA"
    np.testing.assert_array_equal(loaded.rgb, expected)
    np.testing.assert_array_equal(loaded.alpha, np.where(indices == 1, 0, 255))
    check_array(loaded.alpha, (2, 3))
    assert_round_trip(loaded, "RGBA", np.dstack([expected, loaded.alpha]))


def test_rgba_keeps_alpha(tmp_path):
    pixels = random_u8(6, 5, 4)
    pixels[0, 0, 3] = 0
    loaded = load_image(save(tmp_path, Image.fromarray(pixels)))
    assert loaded.mode == "RGBA" and loaded.warnings == []
    np.testing.assert_array_equal(loaded.rgb, pixels[..., :3])
    np.testing.assert_array_equal(loaded.alpha, pixels[..., 3])
    assert_round_trip(loaded, "RGBA", pixels)


def test_opaque_alpha_is_dropped(tmp_path):
    pixels = random_u8(4, 3, 4)
    pixels[..., 3] = 255
    loaded = load_image(save(tmp_path, Image.fromarray(pixels)))
    assert (loaded.mode, loaded.alpha, loaded.warnings) == ("RGB", None, [])
    np.testing.assert_array_equal(loaded.rgb, pixels[..., :3])

    gray = np.dstack([random_u8(4, 3), np.full((4, 3), 255, np.uint8)])
    loaded = load_image(save(tmp_path, Image.fromarray(gray), name="la.png"))
    assert (loaded.mode, loaded.alpha) == ("L", None)
    assert_round_trip(loaded, "L", gray[..., 0])


def test_la(tmp_path):
    pixels = random_u8(3, 4, 2)
    pixels[1, 1, 1] = 0
    loaded = load_image(save(tmp_path, Image.fromarray(pixels)))
    assert loaded.mode == "LA" and loaded.warnings == []
    np.testing.assert_array_equal(loaded.rgb, np.repeat(pixels[..., :1], 3, axis=-1))
    np.testing.assert_array_equal(loaded.alpha, pixels[..., 1])
    assert_round_trip(loaded, "LA", pixels)


def test_gray_transparency_key_becomes_alpha(tmp_path):
    gray = np.array([[7, 8], [9, 7]], dtype=np.uint8)
    loaded = load_image(save(tmp_path, Image.fromarray(gray), transparency=7))
    assert loaded.mode == "LA"
    np.testing.assert_array_equal(loaded.alpha, [[0, 255], [255, 0]])
    assert_round_trip(loaded, "LA", np.dstack([gray, loaded.alpha]))


SIXTEEN = np.array([[0, 65535, 1385], [1000, 128, 129]], dtype=np.uint16)  # -> 0 255 5 / 4 0 1 when rounded


def test_sixteen_bit_gray(tmp_path):
    path = save(tmp_path, Image.fromarray(SIXTEEN))
    assert opened(path)[0] == "I;16"
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.rgb[..., 0], [[0, 255, 5], [4, 0, 1]])
    np.testing.assert_array_equal(loaded.rgb[..., 2], loaded.rgb[..., 0])
    assert (loaded.mode, loaded.alpha, loaded.warnings) == ("L", None, [SIXTEEN_BIT_WARNING])
    assert_round_trip(loaded, "L", reduce16(SIXTEEN))


@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_int32_and_float_gray_within_8_bits_is_not_reduced(dtype):
    values = np.array([[0, 17.4], [254.6, -3]], dtype=dtype)
    loaded = load_image(Image.fromarray(values))
    assert (loaded.mode, loaded.warnings) == ("L", [])
    np.testing.assert_array_equal(loaded.rgb[..., 0], np.clip(np.rint(values), 0, 255))


@pytest.mark.parametrize("color_type, mode", [(2, "RGB"), (6, "RGBA"), (4, "LA")])
def test_sixteen_bit_colour_png_is_rounded(color_type, mode):
    channels = {2: 3, 6: 4, 4: 2}[color_type]
    values = np.stack([SIXTEEN[:, ::-1] if c % 2 else SIXTEEN for c in range(channels)], axis=-1)
    values[0, 0, -1] = 0 if channels != 3 else values[0, 0, -1]  # one transparent pixel
    loaded = load_image(png16(values, color_type))
    expected = reduce16(values)
    assert loaded.mode == mode and loaded.warnings == [SIXTEEN_BIT_WARNING]
    colour = expected[..., [0, 0, 0]] if mode == "LA" else expected[..., :3]
    np.testing.assert_array_equal(loaded.rgb, colour)
    if mode == "RGB":
        assert loaded.alpha is None
    else:
        np.testing.assert_array_equal(loaded.alpha, expected[..., -1])
    assert_round_trip(loaded, mode, expected)


def test_cmyk(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    loaded = load_image(save(tmp_path, Image.frombytes("CMYK", (3, 1), cmyk.tobytes()), name="in.tiff"))
    assert (loaded.mode, loaded.alpha, loaded.warnings) == ("RGB", None, [])
    np.testing.assert_array_equal(loaded.rgb, [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]])


@pytest.mark.parametrize("name", ["in.png", "in.jpg"])
def test_exif_orientation_is_applied(tmp_path, name):
    pixels = random_u8(2, 3, 3)  # 2 rows, 3 columns
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    loaded = load_image(save(tmp_path, Image.fromarray(pixels), name=name, exif=exif))
    assert loaded.rgb.shape == (3, 2, 3)
    if name.endswith(".png"):
        np.testing.assert_array_equal(loaded.rgb, np.rot90(pixels, k=-1))


def test_sixteen_bit_png_with_exif_orientation():
    values = np.stack([SIXTEEN, SIXTEEN[::-1], SIXTEEN[:, ::-1]], axis=-1)
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = load_image(png16(values, 2, exif=exif.tobytes()))
    np.testing.assert_array_equal(loaded.rgb, np.rot90(reduce16(values), k=-1))


def test_animation_keeps_first_frame_with_a_warning(tmp_path):
    frames = [Image.new("L", (3, 2), 10), Image.new("L", (3, 2), 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    loaded = load_image(tmp_path / "anim.gif")
    assert loaded.warnings == ["animated image: only the first frame is kept"]
    np.testing.assert_array_equal(loaded.rgb, np.full((2, 3, 3), 10))


def test_bytes_and_pil_sources(tmp_path):
    pixels = random_u8(3, 4, 3)
    path = save(tmp_path, Image.fromarray(pixels))
    with Image.open(path) as image:
        for source in (path.read_bytes(), image, str(path)):
            np.testing.assert_array_equal(load_image(source).rgb, pixels)


def test_array_sources():
    rgb = random_u8(3, 4, 3)
    np.testing.assert_array_equal(load_image(rgb).rgb, rgb)
    np.testing.assert_array_equal(load_image(rgb[:, ::-1]).rgb, rgb[:, ::-1])  # a strided view
    gray = load_image(rgb[..., 0])
    assert gray.mode == "L"
    np.testing.assert_array_equal(gray.rgb, np.repeat(rgb[..., :1], 3, -1))
    rgba = np.concatenate([rgb, random_u8(3, 4, 1)], -1)
    loaded = load_image(rgba)
    assert loaded.mode == "RGBA"
    np.testing.assert_array_equal(loaded.alpha, rgba[..., 3])


@pytest.mark.parametrize("source, message", [
    (np.zeros((3, 4, 3), np.float32), "need uint8 values of shape (H, W), (H, W, 3) or (H, W, 4), got float32"),
    (np.zeros((3, 4, 2), np.uint8), "got uint8 (3, 4, 2)"),
    (np.zeros((0, 4, 3), np.uint8), "got uint8 (0, 4, 3)"),
    (np.zeros(5, np.uint8), "got uint8 (5,)"),
    (12, "cannot read an image from a int"),
    (None, "cannot read an image from a NoneType"),
])
def test_bad_in_memory_sources(source, message):
    with pytest.raises(ImageError) as error:
        load_image(source)
    assert message in str(error.value)


def test_to_pil_gray_is_rounded_mean():
    rgb = np.array([[[1, 2, 4], [1, 2, 2], [255, 255, 254], [9, 9, 9]]], dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(to_pil(rgb, "L")), [[2, 2, 255, 9]])


def test_to_pil_needs_alpha_for_alpha_modes():
    rgb = random_u8(2, 2, 3)
    with pytest.raises(ImageError, match="alpha"):
        to_pil(rgb, "RGBA")
    with pytest.raises(ImageError, match="alpha"):
        to_pil(rgb, "LA", random_u8(3, 2))
    with pytest.raises(ImageError, match="mode"):
        to_pil(rgb, "CMYK")


@pytest.mark.parametrize("shape", [(1, 1), (17, 33)])
def test_alpha_round_trip(shape):
    for alpha in (random_u8(*shape), np.zeros(shape, np.uint8)):
        data = encode_alpha(alpha)
        decoded = decode_alpha(data, width=shape[1], height=shape[0])
        check_array(decoded, shape)
        np.testing.assert_array_equal(decoded, alpha)


def test_alpha_compresses_flat_planes():
    assert len(encode_alpha(np.full((256, 256), 255, np.uint8))) < 1000


def test_corrupt_alpha_is_refused():
    alpha = random_u8(8, 9)
    data = encode_alpha(alpha)
    rgb_png = io.BytesIO()
    Image.new("RGB", (9, 8)).save(rgb_png, "PNG")
    for bad in (b"", b"garbage", data[: len(data) // 2], data[:40] + bytes(len(data) - 40), rgb_png.getvalue()):
        with pytest.raises(ImageError, match="corrupt alpha plane"):
            decode_alpha(bad, 9, 8)
    with pytest.raises(ImageError, match="expected 8x9"):
        decode_alpha(data, 8, 9)


def test_save_image(tmp_path):
    first, second = Image.fromarray(random_u8(4, 4, 3)), Image.fromarray(random_u8(4, 4, 3))
    target = tmp_path / "out.png"
    save_image(first, target)
    np.testing.assert_array_equal(opened(target)[2], np.asarray(first))
    with pytest.raises(ImageError) as info:
        save_image(second, target)
    assert str(info.value) == f"{target} exists (use --force to overwrite)"
    np.testing.assert_array_equal(opened(target)[2], np.asarray(first))
    save_image(second, target, force=True)
    np.testing.assert_array_equal(opened(target)[2], np.asarray(second))
    save_image(first, tmp_path / "out.JPG")
    assert opened(tmp_path / "out.JPG")[1] == "JPEG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.JPG", "out.png"]  # no temporary files left


@pytest.mark.parametrize("name, message", [("out.xyz", "unknown image format '.xyz'"), ("out", "no file suffix"),
                                           ("missing/out.png", "cannot write")])
def test_save_image_refuses(tmp_path, name, message):
    with pytest.raises(ImageError, match=message):
        save_image(Image.new("RGB", (2, 2)), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_save_image_refuses_alpha_in_jpeg(tmp_path):
    with pytest.raises(ImageError, match="cannot write a RGBA image as JPEG"):
        save_image(Image.new("RGBA", (2, 2)), tmp_path / "out.jpg")
    assert list(tmp_path.iterdir()) == []


def assert_one_line(exc_info, start):
    message = str(exc_info.value)
    assert "\n" not in message and message.startswith(start), message


def test_unreadable_inputs(tmp_path):
    with pytest.raises(ImageError) as info:
        load_image(b"not an image")
    assert_one_line(info, "image data: cannot read image (not a format Pillow reads)")
    with pytest.raises(ImageError) as info:
        load_image(b"")
    assert_one_line(info, "image data: cannot read image (empty)")

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(ImageError) as info:
        load_image(garbage)
    assert_one_line(info, f"{garbage}: cannot read image (not a format Pillow reads)")

    truncated = tmp_path / "truncated.png"
    Image.fromarray(random_u8(64, 64, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ImageError) as info:
        load_image(truncated)
    assert_one_line(info, f"{truncated}: cannot read image (")

    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "missing.png")
    assert str(info.value) == f"{tmp_path / 'missing.png'}: no such file"

    with pytest.raises(ImageError) as info:
        load_image(tmp_path)
    assert_one_line(info, f"{tmp_path}: cannot read image (is a directory)")


def test_too_large_images_are_refused(tmp_path, monkeypatch):
    path = save(tmp_path, Image.new("RGB", (5, 4)))
    monkeypatch.setattr(imageio, "MAX_PIXELS", 19)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 19)  # Pillow's own check, at open
    for source in (path, Image.new("RGB", (5, 4))):
        with pytest.raises(ImageError, match="image too large"):
            load_image(source)
    monkeypatch.setattr(imageio, "MAX_PIXELS", 20)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    assert load_image(path).rgb.shape == (4, 5, 3)


def test_large_image_limit_is_raised():
    assert Image.MAX_IMAGE_PIXELS == imageio.MAX_PIXELS == 2 ** 28
