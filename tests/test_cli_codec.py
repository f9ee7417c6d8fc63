"""compress / decompress / info through the CLI, with a tiny random model as the default."""
import io

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hvqcodec import container
from hvqcodec.cli import main

from test_cli import assert_one_line_error


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def photo(tmp_path, tiny_models_dir):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def hvq_file(photo):
    result = run("compress", photo)
    assert result.exit_code == 0, result.output
    return photo.with_suffix(".hvq")


def test_compress_decompress_info(photo, hvq_file, tmp_path):
    assert "bpp" in run("compress", photo, "-o", tmp_path / "other.hvq").output
    result = run("decompress", hvq_file, "-o", tmp_path / "back.png")
    assert result.exit_code == 0, result.output
    back = Image.open(tmp_path / "back.png")
    assert back.size == (56, 40) and back.mode == "RGB"
    result = run("decompress", hvq_file, "--levels", "1", "-o", tmp_path / "preview.png")
    assert result.exit_code == 0 and "1 levels" in result.output
    result = run("info", hvq_file)
    assert result.exit_code == 0
    assert "model tiny" in result.output and "56x40 RGB" in result.output and "bottom" in result.output


def test_existing_outputs_are_not_overwritten(photo, hvq_file, tmp_path):
    before = hvq_file.read_bytes()
    assert_one_line_error(run("compress", photo), "exists (use --force to overwrite)")
    assert hvq_file.read_bytes() == before
    target = tmp_path / "taken.png"
    target.write_bytes(b"precious")
    assert_one_line_error(run("decompress", hvq_file, "-o", target), "exists (use --force")
    assert target.read_bytes() == b"precious"
    assert run("decompress", hvq_file, "-o", target, "--force").exit_code == 0
    assert Image.open(target).size == (56, 40)


def test_several_inputs_into_a_folder(photo, tmp_path):
    second = tmp_path / "second.png"
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(second)
    out = tmp_path / "out"
    out.mkdir()
    assert run("compress", photo, second, "-o", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["photo.hvq", "second.hvq"]
    assert_one_line_error(run("compress", photo, second, "-o", tmp_path / "nofolder"), "is not a folder")


def _malformed(hvq_file):
    good = hvq_file.read_bytes()
    header = container.read_header(good)
    flipped = bytearray(good)
    flipped[header.header_size + 3] ^= 0x40
    future = bytearray(good)
    future[4] = 9
    other_model = container.pack("nosuchmodel", "00" * 8, 8, 8, "RGB", 0, [[b"\0" * 4]] * 3)
    other_hash = container.pack("tiny", "ab" * 8, 8, 8, "RGB", 0, [[b"\0" * 4]] * 3)
    return {
        "empty": (b"", "empty file"),
        "random": (bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)), "not an hvq file"),
        "magic": (b"PNG" + good[3:], "not an hvq file"),
        "future": (bytes(future), "unsupported hvq format version 9"),
        "unknown model": (other_model, "unknown model 'nosuchmodel'"),
        "hash": (other_hash, "has hash"),
        "truncated header": (good[:10], "truncated hvq file"),
        "truncated top": (good[:header.header_size + 2], "truncated hvq file"),
        "flipped": (bytes(flipped), "checksum mismatch"),
    }


def test_malformed_inputs_give_one_line_errors(hvq_file, tmp_path):
    for name, (data, message) in _malformed(hvq_file).items():
        path = tmp_path / f"{name.replace(' ', '_')}.hvq"
        path.write_bytes(data)
        assert_one_line_error(run("decompress", path), f"{path}: ")
        assert_one_line_error(run("decompress", path), message)
        assert not path.with_suffix(".png").exists(), name
        if name in ("empty", "random", "magic", "future", "truncated header"):  # info reads the header only
            assert_one_line_error(run("info", path), f"{path}: {message}")
    assert_one_line_error(run("decompress", tmp_path / "missing.hvq"), "no such file")
    # The inputs are read before the outputs are checked: an image given by mistake is named as such, untouched.
    picture = tmp_path / "picture.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(picture)
    before = picture.read_bytes()
    for extra in ([], ["--force"]):
        assert_one_line_error(run("decompress", picture, *extra), f"{picture}: not an hvq file")
        assert picture.read_bytes() == before
    # Of several files, the error names the bad one (after the good one was decoded).
    assert_one_line_error(run("decompress", hvq_file, tmp_path / "flipped.hvq", "-o", tmp_path, "--force"),
                          f"{tmp_path / 'flipped.hvq'}: checksum mismatch")


def test_truncated_file_gives_preview_with_warning(hvq_file, tmp_path):
    good = hvq_file.read_bytes()
    header = container.read_header(good)
    cut = tmp_path / "cut.hvq"
    cut.write_bytes(good[:header.header_size + sum(header.stream_lengths[0]) + 1])
    result = run("decompress", cut)
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "truncated" in result.output and "1 levels" in result.output
    assert Image.open(cut.with_suffix(".png")).size == (56, 40)


def test_bad_images_are_refused(tmp_path, tiny_models_dir):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    assert_one_line_error(run("compress", bad), "cannot read image")
    assert not bad.with_suffix(".hvq").exists()
    assert_one_line_error(run("compress", tmp_path / "none.png"), "no such file")
    assert_one_line_error(run("compress", bad, "--model", "nope"), "unknown model 'nope'")


def test_compress_many_files_in_worker_processes(tiny_models_dir, tmp_path):
    """Several files on two worker processes give the same bytes as one at a time, in order."""
    import hvqcodec
    from click.testing import CliRunner
    from hvqcodec.cli import main
    from conftest import synthetic_image

    sources = []
    for i in range(4):
        path = tmp_path / f"p{i}.png"
        Image.fromarray(synthetic_image(i, 32, 48)).save(path)
        sources.append(str(path))
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(main, ["compress", *sources, "-o", str(out), "--jobs", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for i, source in enumerate(sources):
        assert (out / f"p{i}.hvq").read_bytes() == hvqcodec.compress(source, device="cpu")


def test_compress_with_effort(photo, tmp_path):
    """--effort refines the encoder's latent: the file is an ordinary one (decodes to the codes chosen), the
    API gives the same bytes, and an effort outside 0..100 is a usage error."""
    import hvqcodec

    target = tmp_path / "effort.hvq"
    result = run("compress", photo, "--effort", "3", "-o", target)
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == hvqcodec.compress(str(photo), device="cpu", effort=3)
    assert target.read_bytes() != hvqcodec.compress(str(photo), device="cpu")
    result = run("decompress", target, "-o", tmp_path / "back.png")
    assert result.exit_code == 0, result.output
    result = run("compress", photo, "--effort", "101", "-o", tmp_path / "x.hvq")
    assert result.exit_code == 2 and "--effort" in result.output


@pytest.mark.parametrize("preset", [None, "OMP_WAIT_POLICY=ACTIVE", "GOMP_SPINCOUNT=0"])
def test_codec_commands_shorten_openmp_spinning_unless_told(photo, hvq_file, tmp_path, monkeypatch, preset):
    """compress and decompress let OpenMP threads spin only briefly while waiting (spinning threads make the
    codec many times slower beside any busy program, sleeping at once slows it on an idle machine); a policy or
    spin count the user set is kept."""
    import os

    from hvqcodec.cli import OPENMP_SPIN_COUNT

    for args in (["compress", photo, "-o", tmp_path / "again.hvq"], ["decompress", hvq_file, "-o", tmp_path / "b.png"]):
        for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
            monkeypatch.setenv(name, "placeholder")  # so that monkeypatch restores the original
            monkeypatch.delenv(name)
        if preset:
            monkeypatch.setenv(*preset.split("="))
        result = run(*args)
        assert result.exit_code == 0, result.output
        settings = {name: os.environ.get(name) for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        if preset is None:
            assert settings == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": str(OPENMP_SPIN_COUNT)}
        elif preset.startswith("OMP"):
            assert settings == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": None}
        else:
            assert settings == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "0"}


def test_standard_input_and_output(photo, hvq_file, tmp_path):
    """'-' reads standard input; standard output is the default for it and `-o -` asks for it: the same bytes
    as a file, and a PNG of the same pixels; messages stay on standard error."""
    result = CliRunner().invoke(main, ["compress", "-"], input=photo.read_bytes())
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == hvq_file.read_bytes()
    assert "<stdin> -> <stdout>" in result.stderr
    result = CliRunner().invoke(main, ["decompress", "-", "-o", "-"], input=hvq_file.read_bytes())
    assert result.exit_code == 0, result.output
    assert run("decompress", hvq_file, "-o", tmp_path / "file.png").exit_code == 0
    piped = Image.open(io.BytesIO(result.stdout_bytes))
    assert piped.format == "PNG" and np.array_equal(np.asarray(piped), np.asarray(Image.open(tmp_path / "file.png")))
    result = CliRunner().invoke(main, ["decompress", str(hvq_file), "-o", "-"])  # a file to standard output
    assert result.exit_code == 0 and result.stdout_bytes == piped_bytes(piped)
    result = CliRunner().invoke(main, ["compress", "-", "-o", str(tmp_path / "from-stdin.hvq")], input=photo.read_bytes())
    assert result.exit_code == 0 and (tmp_path / "from-stdin.hvq").read_bytes() == hvq_file.read_bytes()
    piped_info = CliRunner().invoke(main, ["info", "-"], input=hvq_file.read_bytes())
    file_info = CliRunner().invoke(main, ["info", str(hvq_file)])
    assert piped_info.exit_code == 0 and file_info.exit_code == 0
    assert piped_info.stdout.split()[0] == "<stdin>:"
    assert piped_info.stdout.split()[1:] == file_info.stdout.split()[1:]


def piped_bytes(image):
    """The PNG the command line writes for these pixels (its own PNG options: imageio.encode_image)."""
    from hvqcodec.imageio import encode_image

    return encode_image(image, "PNG")


def test_standard_streams_misuse_gives_one_line_errors(photo, hvq_file, monkeypatch):
    assert_one_line_error(run("compress", "-", photo), "'-' (standard input) must be the only input")
    assert_one_line_error(run("decompress", hvq_file, hvq_file, "-o", "-"), "standard output takes the result of one")
    result = CliRunner().invoke(main, ["decompress", "-"], input=b"not an hvq file at all")
    assert_one_line_error(result, "")
    assert result.stdout_bytes == b""
    # Binary data is never written to a terminal (checked before any work).
    import click

    from hvqcodec.cli import common

    class Terminal:
        @staticmethod
        def isatty() -> bool:
            return True
    monkeypatch.setattr(common.sys, "stdout", Terminal())
    with pytest.raises(click.ClickException, match="refusing to write binary data to a terminal"):
        common._check_outputs([None], force=True)
