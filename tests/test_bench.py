"""`hvqcodec bench`: BD-rate and interpolation maths, quality metrics, and end-to-end runs on tiny images."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, features

from hvqcodec import bench
from hvqcodec.cli import main
from hvqcodec.errors import HvqError

from conftest import synthetic_image
from test_cli import assert_one_line_error

RATES = [0.2, 0.4, 0.8, 1.6, 3.2]
PSNRS = [28.0, 31.0, 34.0, 36.5, 39.0]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("method", ["cubic", "piecewise-linear"])
def test_bd_rate_against_itself_and_half_the_rate(method):
    value, used = bench.bd_rate(RATES, PSNRS, RATES, PSNRS, method)
    assert used == method and abs(value) < 1e-9
    value, _ = bench.bd_rate(RATES, PSNRS, [r / 2 for r in RATES], PSNRS, method)
    assert value == pytest.approx(-50.0, abs=1e-6)
    value, _ = bench.bd_rate(RATES, PSNRS, [r * 2 for r in RATES], PSNRS, method)
    assert value == pytest.approx(100.0, abs=1e-6)


def test_bd_rate_picks_its_method_and_needs_overlap():
    assert bench.bd_rate(RATES, PSNRS, RATES[:3], PSNRS[:3])[1] == "piecewise-linear"  # 3 points: no cubic
    assert bench.bd_rate(RATES, PSNRS, RATES[1:], PSNRS[1:])[1] == "cubic"
    assert bench.bd_rate(RATES, PSNRS, [0.1, 0.2, 0.3], [40.0, 41.0, 42.0]) == (None, "piecewise-linear")
    # Piecewise-linear on a hand-made pair: test saves a factor 2 over the lower half of the overlap only.
    value, _ = bench.bd_rate([1, 1, 1], [30, 35, 40], [0.5, 1, 1], [30, 35, 40], "piecewise-linear")
    # log-rate difference: -ln 2 falling linearly to 0 over [30, 35], 0 after; mean over [30, 40] = -ln2 / 4
    assert value == pytest.approx(100 * (2 ** -0.25 - 1), abs=1e-9)


def test_same_quality_interpolation_on_a_hand_made_curve():
    rates, psnrs = [0.5, 2.0], [30.0, 40.0]
    assert bench.rate_at_quality(rates, psnrs, 35.0) == pytest.approx(1.0)  # geometric mean of 0.5 and 2
    assert bench.rate_at_quality(rates, psnrs, 32.5) == pytest.approx(0.5 * 4 ** 0.25)
    assert bench.rate_at_quality(rates, psnrs, 29.9) is None and bench.rate_at_quality(rates, psnrs, 41) is None
    codecs = {
        "jpeg": {"lossless": False, "points": [{"bpp": b, "psnr": p, "ms_ssim": None} for b, p in zip(rates, psnrs)]},
        "png": {"lossless": True, "points": [{"bpp": 8.0, "psnr": math.inf, "ms_ssim": 1.0}]},
        "hvq:m": {"points": [{"levels": 1, "bpp": 0.25, "psnr": 35.0, "ms_ssim": None},
                             {"levels": 2, "bpp": 0.5, "psnr": 45.0, "ms_ssim": None}]},
    }
    _, same, png = bench.compare(codecs)
    assert same["hvq:m"][0]["codecs"]["jpeg"] == {"bpp": pytest.approx(1.0), "ratio": pytest.approx(0.25)}
    assert same["hvq:m"][1]["codecs"]["jpeg"] == {"bpp": None, "ratio": None}
    assert [p["fraction"] for p in png["hvq:m"]] == [pytest.approx(0.25 / 8), pytest.approx(0.5 / 8)]


def test_plot_marks_residual_points_apart_from_levels():
    from hvqcodec.rdplot import curves_from_results

    points = [{"levels": 3, "bpp": 0.3, "psnr": 29.0, "ms_ssim": None},
              {"levels": 4, "bpp": 0.4, "psnr": 30.0, "ms_ssim": None},
              {"levels": 4, "bpp": 0.6, "psnr": 32.0, "ms_ssim": None, "residual": True}]
    curve, = curves_from_results({"codecs": {"hvq:m": {"points": points}}})
    assert list(curve.point_labels) == ["L3", "L4", "R"]


def test_psnr_of_known_arrays():
    a = np.zeros((8, 8, 3), np.uint8)
    psnr, score = bench.image_quality(a, a + 10)  # mse 100
    assert psnr == pytest.approx(10 * math.log10(255 ** 2 / 100)) and score is None  # too small for MS-SSIM
    b = a.copy()
    b[0, 0, 0] = 255  # mse 255^2 / 192
    assert bench.image_quality(a, b)[0] == pytest.approx(10 * math.log10(192))
    assert bench.image_quality(a, a)[0] == math.inf


def _ms_ssim_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Independent 5-scale MS-SSIM of (H, W, 3) arrays on the 0-255 scale: explicit windows, numpy pooling."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()
    weights = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(img):  # valid separable Gaussian filtering of every channel
        return sliding_window_view(sliding_window_view(img, 11, axis=0) @ g, 11, axis=1) @ g

    result = 1.0
    for scale, weight in enumerate(weights):
        mx, my = filt(x), filt(y)
        sxx, syy, sxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        value = cs if scale < 4 else (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1) * cs
        result *= max(value.mean(), 0) ** weight
        h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
        x, y = ((t[0:h:2, 0:w:2] + t[1:h:2, 0:w:2] + t[0:h:2, 1:w:2] + t[1:h:2, 1:w:2]) / 4 for t in (x, y))
    return result


def test_ms_ssim_identical_and_of_a_known_distorted_pair():
    yy, xx = np.mgrid[0:192, 0:192]
    clean = np.stack([xx * 255 / 191, yy * 255 / 191, (xx + yy) * 255 / 382], -1).round().astype(np.uint8)
    pattern = ((xx * 7 + yy * 13) % 17 - 8)[..., None] * np.array([3, -2, 4])
    noisy = np.clip(clean.astype(int) + pattern, 0, 255).astype(np.uint8)
    assert bench.image_quality(clean, clean)[1] == pytest.approx(1.0, abs=1e-12)
    score = bench.image_quality(clean, noisy)[1]
    assert 0.5 < score < 0.999
    assert score == pytest.approx(_ms_ssim_numpy(clean.astype(float), noisy.astype(float)), abs=1e-6)
    assert bench.image_quality(clean[:175], noisy[:175])[1] is None  # the 5th scale would be under 11 px


@pytest.fixture
def tiny_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for seed in (0, 1):
        Image.fromarray(synthetic_image(seed, 48, 64)).save(folder / f"img{seed}.png")
    return folder


def _references(tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    good = {"name": "ref codec", "results": {"bpp": [0.2, 0.5, 1.0], "psnr-rgb": [26.0, 30.0, 34.0],
                                              "ms-ssim-rgb": [0.9, 0.95, 0.98]}}
    decibels = {"name": "db only", "results": {"bpp": [0.2, 0.5], "ms-ssim-db-rgb": [10.0, 20.0]}}
    (folder / "good.json").write_text(json.dumps(good))
    (folder / "db.json").write_text(json.dumps(decibels))
    (folder / "bad.json").write_text(json.dumps({"name": "no curves", "results": {"bpp": [1.0]}}))
    return folder


def test_bench_through_the_cli(tiny_models_dir, tiny_folder, tmp_path):
    codecs = ["hvq", "png", "jpeg", "webp"] + [c for c, f in (("avif", "avif"), ("jpeg2000", "jpg_2000"))
                                             if features.check(f)]
    out, plot = tmp_path / "out" / "bench.json", tmp_path / "rd.png"
    result = run("bench", tiny_folder, "--codecs", ",".join(codecs), "--repeats", "1", "--device", "cpu",
                 "--json", out, "--plot", plot, "--reference", _references(tmp_path))
    assert result.exit_code == 0, result.output
    assert "hvq:tiny" in result.output and "BD-rate" in result.output

    report = json.loads(out.read_text())
    assert report["name"] == "hvqcodec-bench" and report["description"]
    results = report["results"]
    expected = {"hvq:tiny", *(c for c in codecs if c != "hvq")}
    assert set(results["codecs"]) == expected
    counts = {"png": 1, "jpeg": 10, "webp": 10, "avif": 10, "jpeg2000": 7, "hvq:tiny": 3}
    for name, entry in results["codecs"].items():
        assert len(entry["points"]) == counts[name] and len(entry["per_image"]) == 2
        for point in entry["points"] + [p for image in entry["per_image"] for p in image["points"]]:
            assert point["bpp"] > 0 and point["encode_seconds"] >= 0 and point["decode_seconds"] > 0
            assert point["ms_ssim"] is None  # 48x64 is too small
            assert point["psnr"] is None if name == "png" else 5 < point["psnr"] < 100
    hvq = results["codecs"]["hvq:tiny"]["points"]
    assert [p["levels"] for p in hvq] == [1, 2, 3] and hvq[0]["bpp"] < hvq[1]["bpp"] < hvq[2]["bpp"]
    jpeg = results["codecs"]["jpeg"]["points"]
    assert jpeg[0]["bpp"] < jpeg[-1]["bpp"] and jpeg[0]["psnr"] < jpeg[-1]["psnr"]
    assert set(results["bd_rate"]["hvq:tiny"]) == expected - {"hvq:tiny", "png"}
    assert results["bd_rate"]["hvq:tiny"]["jpeg"]["psnr"]["method"] == "piecewise-linear"
    assert [row["levels"] for row in results["same_quality"]["hvq:tiny"]] == [1, 2, 3]
    png_bpp = results["codecs"]["png"]["points"][0]["bpp"]
    assert [f["fraction"] for f in results["png_fraction"]["hvq:tiny"]] == pytest.approx(
        [p["bpp"] / png_bpp for p in hvq])
    assert [i["name"] for i in results["images"]] == ["img0.png", "img1.png"]
    assert results["images"][0]["width"] == 64 and results["seconds_total"] > 0
    from hvqcodec import api
    assert results["settings"]["hvq_coders"] == {"hvq:tiny": type(api.coder_for("tiny", "cpu")).__name__}
    assert any("bad.json skipped" in note for note in results["notes"])

    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width >= 1000 and 500 <= image.height <= 1500
        colors = image.convert("RGB").getcolors(1 << 20)
        assert len(colors) > 20  # curves, text and a legend, not a blank canvas


def test_hvq_preview_bytes_are_a_decodable_file(tiny_codec):
    rgb = synthetic_image(3, 48, 64)
    data = tiny_codec.compress(Image.fromarray(rgb)).data
    header = bench.container.read_header(data)
    assert bench.preview_bytes(data, 3) == len(data)
    one = bench.preview_bytes(data, 1)
    assert one == header.header_size + sum(header.stream_lengths[0]) + 4
    assert bench.preview_bytes(data, 2) == one + sum(header.stream_lengths[1])
    # Header + the top level's streams (no trailer yet) is a file that decodes to the level-1 preview.
    decoded = tiny_codec.decompress(data[:one - 4])
    assert decoded.levels == 1
    assert np.array_equal(np.asarray(decoded.image), np.asarray(tiny_codec.decompress(data, levels=1).image))


def test_classic_codecs_over_a_process_pool_match_one_process(tiny_folder):
    one = bench.plan_bench(tiny_folder, ["png", "jpeg"], repeats=1)
    two = bench.plan_bench(tiny_folder, ["png", "jpeg"], jobs=2, repeats=1)
    first, second = bench.run_bench(one), bench.run_bench(two)
    for name in ("png", "jpeg"):
        assert [(p["bpp"], p["psnr"]) for p in first["codecs"][name]["points"]] == \
               [(p["bpp"], p["psnr"]) for p in second["codecs"][name]["points"]]


def test_help_has_examples():
    result = run("bench", "--help")
    assert result.exit_code == 0 and "Examples:" in result.output and "hvqcodec bench" in result.output


def test_bad_codec_names_folders_and_jobs(tmp_path, tiny_folder):
    result = run("bench", tiny_folder, "--codecs", "jpeg,foo,bar")
    assert_one_line_error(result, "unknown codec(s): foo, bar")
    assert "valid: hvq,png,jpeg,webp,avif,jpeg2000" in result.output
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("bench", tmp_path / "empty", "--codecs", "png"), "no images found")
    assert_one_line_error(run("bench", tiny_folder, "--jobs", "0"), "--jobs")


def test_missing_codecs_are_skipped_unless_asked_for(tiny_folder, monkeypatch):
    monkeypatch.setattr(bench.features, "check", lambda name: name != "avif")
    plan = bench.plan_bench(tiny_folder, None)
    assert "avif" not in plan.classic and any("avif skipped" in n for n in plan.notes)
    with pytest.raises(HvqError, match="no AVIF support"):
        bench.plan_bench(tiny_folder, ["jpeg", "avif"])


def test_default_images_are_shipped():
    folder = bench.default_images_dir()
    images = sorted(p.name for p in folder.glob("*.png"))
    assert len(images) == 3 and (folder / "README.md").is_file()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1.5e6
    for path in folder.glob("*.png"):
        with Image.open(path) as image:
            assert max(image.size) == 512 and min(image.size) >= bench.MS_SSIM_MIN_SIDE
    assert len(bench.plan_bench(None, ["png"]).images) == 3


def test_references_skip_files_without_curves(tmp_path):
    curves, notes = bench.load_references(_references(tmp_path))
    assert sorted(c.name for c in curves) == ["db only", "ref codec"]
    db = next(c for c in curves if c.name == "db only")
    assert db.psnr is None and db.ms_ssim == pytest.approx([0.9, 0.99])
    assert len(notes) == 1 and "bad.json" in notes[0]


def test_bench_models_default_list_and_unknown(tiny_folder, monkeypatch):
    monkeypatch.setattr(bench.features, "check", lambda name: True)
    from hvqcodec import zoo
    installed = sorted(n for n, e in zoo.available_models().items() if e.get("priors"))
    assert bench.plan_bench(tiny_folder, ["hvq"]).models == [zoo.default_model()]
    assert bench.plan_bench(tiny_folder, ["hvq"], model="all").models == installed
    assert bench.plan_bench(tiny_folder, ["hvq"], model=",".join(installed[::-1])).models == installed[::-1]
    with pytest.raises(HvqError, match="no-such-model not installed"):
        bench.plan_bench(tiny_folder, ["hvq"], model=f"{installed[0]},no-such-model")


def test_bench_reuses_classic_results_of_the_same_images(tiny_models_dir, tiny_folder, tmp_path):
    first = tmp_path / "first.json"
    assert run("bench", tiny_folder, "--codecs", "hvq,jpeg", "--repeats", "1", "--device", "cpu",
               "--json", first).exit_code == 0
    earlier = json.loads(first.read_text())["results"]
    second = tmp_path / "second.json"
    result = run("bench", tiny_folder, "--codecs", "hvq,jpeg,webp", "--repeats", "1", "--device", "cpu",
                 "--reuse", first, "--json", second)
    assert result.exit_code == 0, result.output
    assert "jpeg from" in result.output
    results = json.loads(second.read_text())["results"]
    assert results["codecs"]["jpeg"] == earlier["codecs"]["jpeg"]  # taken over, not measured again
    assert len(results["codecs"]["webp"]["points"]) == 10  # not in the earlier file: measured
    assert results["settings"]["reused"] == {"from": str(first), "codecs": ["jpeg"]}
    assert set(results["bd_rate"]["hvq:tiny"]) == {"jpeg", "webp"}

    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (64, 48), (9, 9, 9)).save(other / "x.png")
    result = run("bench", other, "--codecs", "hvq,jpeg", "--device", "cpu", "--reuse", first)
    assert result.exit_code != 0 and "measured on other images" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = run("bench", tiny_folder, "--codecs", "jpeg", "--reuse", bad)
    assert result.exit_code != 0 and "not a readable hvqcodec bench result" in result.output


@pytest.mark.slow
def test_hvq_points_with_the_runtime_as_with_the_torch_codec():
    """`hvqcodec bench` codes hvq with what the command line runs (the runtime without torch on a CPU): the same
    ladder of points as the torch codec gives, sizes within a few bytes (a near-tie may fall the other way) and
    PSNR within rounding."""
    from hvqcodec import api, runtime, stepkernel
    from hvqcodec.codec import load_codec

    if not (stepkernel.available() and stepkernel.int8_available()):
        pytest.skip("the runtime without torch runs on the C module's int8 path only")
    rgb = np.asarray(Image.open(Path(__file__).parent / "data" / "v1-source.png").convert("RGB"))[:48, :64]
    coder = api.coder_for(None, "cpu")
    assert isinstance(coder, runtime.Runtime)
    ours = bench.measure_hvq(coder, rgb, 0, lambda data: api.decoder_for(data, "cpu"))
    theirs = bench.measure_hvq(load_codec(None, "cpu"), rgb)
    assert [(p["quality"], p["levels"]) for p in ours] == [(p["quality"], p["levels"]) for p in theirs]
    for a, b in zip(ours, theirs):
        assert abs(a["bpp"] - b["bpp"]) * 48 * 64 / 8 <= 16 and abs(a["psnr"] - b["psnr"]) < 0.1
