"""Benchmark the codec on Kodak (or any folder): whole-file bpp, PSNR, MS-SSIM, file bits against the integer
prior's cross-entropy, header bytes, encode/decode seconds (median), peak memory, bit-exact round trips; plus one
large (4000x3000) image in a separate process for its own time and peak memory.

    python benchmarks/codec.py                                    # default model on ../shared/datasets/kodak
    python benchmarks/codec.py --quality 90 --reference-model hvq-small   # decode time against hvq-small's
    python benchmarks/codec.py --float-priors runs/priors/checkpoint.pt   # also: integer vs float prior rate

Prints a summary; writes JSON ({name, description, results}) only where asked: --json PATH, or --update for
the committed benchmarks/results/codec-<model>[-q<quality>].json.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import track

from hvqcodec.codec import load_codec
from hvqcodec.data import find_images
from hvqcodec.evaluate import write_report
from hvqcodec.zoo import record_metrics
from hvqcodec.metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr

ROOT = Path(__file__).resolve().parent.parent
LARGE_SIZE = (4000, 3000)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(codec, path: Path, quality: int | None = None) -> dict:
    original = np.array(Image.open(path).convert("RGB"))  # a writable copy
    start = time.perf_counter()
    compressed = codec.compress(path, quality)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded = codec.decompress(compressed.data)
    decode_s = time.perf_counter() - start
    coding_peak = peak_rss_mb()  # the codec's own peak: the metrics below hold several float64 copies
    point = codec.operating_point(quality)
    codes = codec.encode_codes(original, point) if original.shape[0] * original.shape[1] <= 1024 * 1024 else None
    exact = codes is None or all(torch.equal(a, b) for a, b in zip(decoded.codes[0], codes))
    out = torch.tensor(np.asarray(decoded.image.convert("RGB"))).permute(2, 0, 1)[None].double() / 255
    ref = torch.from_numpy(original).permute(2, 0, 1)[None].double() / 255
    h, w = original.shape[:2]
    record = {
        "image": path.name, "width": w, "height": h, "bytes": len(compressed.data), "bpp": compressed.bpp,
        "psnr": psnr(out, ref), "encode_seconds": encode_s, "decode_seconds": decode_s,
        "header_bytes": compressed.header_bytes, "level_bytes": compressed.level_bytes,
        "cross_entropy_bits": compressed.cross_entropy_bits, "codes_bit_exact": exact,
        "file_over_cross_entropy": 8 * sum(compressed.level_bytes) / sum(compressed.cross_entropy_bits),
        "coding_peak_rss_mb": coding_peak,
    }
    if min(h, w) >= MS_SSIM_MIN_SIDE:
        record["ms_ssim"] = float(ms_ssim(out, ref)[0])
    return record


def float_prior_bits(checkpoint_path: str, codec, paths: list[Path]) -> dict:
    """Cross-entropy of the float (training) prior on the same codes, against the integer prior's."""
    from hvqcodec.priors import HierarchicalPrior, PriorConfig
    from hvqcodec.train import load_checkpoint

    checkpoint = load_checkpoint(checkpoint_path, "priors")
    prior = HierarchicalPrior(PriorConfig.from_dict(checkpoint["config"]))
    prior.load_state_dict(checkpoint["model"])
    prior.eval()
    names = codec.autoencoder.config.stream_names
    totals = [0.0] * len(names)
    with torch.no_grad():
        for path in paths:
            codes = codec.encode_codes(np.array(Image.open(path).convert("RGB")))
            for level, logits in enumerate(prior([c[None] for c in codes])):
                nll = torch.nn.functional.cross_entropy(logits, codes[level][None], reduction="sum")
                totals[level] += float(nll) / np.log(2)
    return dict(zip(names, totals))


def make_large_image(path: Path) -> str:
    """Write the 4000x3000 test photo to path (the first CLIC 2025 photo resized; without it a smooth
    synthetic image of the same size) and say what it is."""
    source = sorted((ROOT.parent / "shared" / "datasets" / "train" / "clic2025_finaltest").glob("*.png"))
    if source:
        Image.open(source[0]).convert("RGB").resize(LARGE_SIZE, Image.Resampling.LANCZOS).save(path)
        return f"{source[0].name} resized to {LARGE_SIZE[0]}x{LARGE_SIZE[1]}"
    y, x = np.mgrid[0:LARGE_SIZE[1], 0:LARGE_SIZE[0]]
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(path)
    return "synthetic"


def large_image(model: str | None, threads: int, quality: int | None) -> dict:
    """Compress + decompress one 4000x3000 photo in a fresh process, for its own peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.png"
        description = make_large_image(path)
        args = [sys.executable, __file__, "--single", str(path), "--threads", str(threads)]
        if model:
            args += ["--model", model]
        if quality is not None:
            args += ["--quality", str(quality)]
        result = subprocess.run(args, capture_output=True, text=True, check=True)
        record = json.loads(result.stdout)
        record["source"] = description
        return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model name (default: the default shipped model)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "kodak"), help="image folder")
    parser.add_argument("--quality", type=int, help="quality 1-100 (default: the codec's default)")
    parser.add_argument("--reference-model", help="also time this model's decode in the same run (e.g. hvq-small)")
    parser.add_argument("--json", help="write the results JSON here")
    parser.add_argument("--update", action="store_true",
                        help="write the committed benchmarks/results/codec-<model>[-q<quality>].json")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--float-priors", help="priors checkpoint: also report the integer prior's rate cost")
    parser.add_argument("--no-large", action="store_true", help="skip the 4000x3000 image")
    parser.add_argument("--update-manifest", action="store_true",
                        help="record the mean figures as the model's measured codec metrics in models/manifest.json")
    parser.add_argument("--single", help=argparse.SUPPRESS)  # internal: measure one image, print JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = load_codec(args.model, "cpu")
    if args.single:
        record = measure(codec, Path(args.single), args.quality)
        # Peak of compress + decompress in this fresh process; with the PSNR / MS-SSIM computation after them
        # (float64 copies of 12 megapixels) the process peaks higher, reported beside it.
        record["peak_rss_mb"] = record["coding_peak_rss_mb"]
        record["peak_rss_with_metrics_mb"] = peak_rss_mb()
        print(json.dumps(record))
        return 0

    console = Console(stderr=True)
    if not Path(args.data).is_dir():
        console.print(f"[red]error[/]: {args.data}: no such folder (give --data DIR)")
        return 2
    paths = find_images(args.data)
    measure(codec, paths[0], args.quality)  # warm-up: first-call allocations and lazy initialisation
    # The reference model codes each image right after this one: a machine whose speed drifts during the run (a
    # busy neighbour, these are shared machines) then slows both alike, and the ratio stays fair. The peak
    # memory is then this model's before the reference is loaded (its warm-up image's: Kodak's are all the
    # same size; for a folder of mixed sizes, run without --reference-model for the peak).
    warm_peak = peak_rss_mb()
    other = load_codec(args.reference_model, "cpu") if args.reference_model else None
    if other is not None:
        measure(other, paths[0])
    per_image: list[dict] = []
    reference: list[dict] | None = [] if other is not None else None
    described = "coding" + (f" (each image also with {other.name})" if other is not None else "")
    for path in track(paths, description=described, console=console):
        per_image.append(measure(codec, path, args.quality))
        if other is not None:
            reference.append(measure(other, path))
    kodak_peak = peak_rss_mb() if other is None else warm_peak

    def mean(key):
        values = [r[key] for r in per_image if key in r]
        return sum(values) / len(values)

    pixels = sum(r["width"] * r["height"] for r in per_image)
    file_bits = sum(8 * r["bytes"] for r in per_image)
    level_bits = sum(8 * sum(r["level_bytes"]) for r in per_image)
    xent_bits = sum(sum(r["cross_entropy_bits"]) for r in per_image)
    point = codec.operating_point(args.quality)
    names = codec.autoencoder.config.stream_names[:point.streams] + (("residual",) if point.residual_step else ())
    results = {
        "images": len(per_image),
        "quality": args.quality, "operating_point": point.to_entry(),
        "bpp": mean("bpp"), "psnr": mean("psnr"), "ms_ssim": mean("ms_ssim"),
        "bpp_per_level": {n: sum(8 * r["level_bytes"][i] for r in per_image) / pixels
                          for i, n in enumerate(names)},
        "raw_index_bpp": codec.autoencoder.config.raw_index_bpp(),
        "file_bits_over_cross_entropy": level_bits / xent_bits,
        "total_file_bits_over_cross_entropy": file_bits / xent_bits,
        "header_bytes_max": max(r["header_bytes"] for r in per_image),
        "encode_seconds_median": statistics.median(r["encode_seconds"] for r in per_image),
        "decode_seconds_median": statistics.median(r["decode_seconds"] for r in per_image),
        "peak_rss_mb": kodak_peak,
        "all_codes_bit_exact": all(r["codes_bit_exact"] for r in per_image),
        "threads": args.threads,
        "per_image": per_image,
    }
    if reference is not None:
        results["reference"] = {
            "model": args.reference_model,
            "decode_seconds_median": statistics.median(r["decode_seconds"] for r in reference),
            "encode_seconds_median": statistics.median(r["encode_seconds"] for r in reference),
            "bpp": sum(r["bpp"] for r in reference) / len(reference),
            "psnr": sum(r["psnr"] for r in reference) / len(reference)}
        results["decode_time_ratio_to_reference"] = (results["decode_seconds_median"]
                                                     / results["reference"]["decode_seconds_median"])
    if args.float_priors:
        float_bits = float_prior_bits(args.float_priors, codec, paths)
        int_bits = {n: sum(r["cross_entropy_bits"][i] for r in per_image) for i, n in enumerate(names[:point.streams])}
        float_bits = {n: float_bits[n] for n in int_bits}
        results["integer_prior_rate_cost"] = {
            "float_bits": float_bits, "integer_bits": int_bits,
            "relative": sum(int_bits.values()) / sum(float_bits.values()) - 1}
    if not args.no_large:
        console.print("coding one 4000x3000 image in a separate process ...")
        results["large_image"] = large_image(args.model, args.threads, args.quality)

    name = codec.name
    suffix = f"-q{args.quality}" if args.quality is not None else ""
    out = (Path(args.json) if args.json else
           ROOT / "benchmarks" / "results" / f"codec-{name}{suffix}.json" if args.update else None)
    description = (
        f"hvqcodec {name} ({codec.sha256[:12]}) on {Path(args.data).name} at quality {args.quality or 'default'}: "
        f"whole-file bpp, 8-bit RGB PSNR / MS-SSIM, CPU {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, torch {torch.__version__}")
    if out is not None:
        report = write_report(out, f"hvqcodec-{name}", description, results)
    else:
        report = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}

    console.print(f"[bold]{name}[/] on {args.data} ({len(per_image)} images, {args.threads} threads):")
    console.print(f"  {results['bpp']:.4f} bpp (raw index cost {results['raw_index_bpp']:.4f}), "
                  f"PSNR {results['psnr']:.2f} dB, MS-SSIM {results['ms_ssim']:.4f}")
    console.print("  per level: " + ", ".join(f"{n} {v:.4f}" for n, v in results["bpp_per_level"].items()) + " bpp")
    console.print(f"  stream bits / cross-entropy {results['file_bits_over_cross_entropy']:.5f}; whole file "
                  f"{results['total_file_bits_over_cross_entropy']:.5f}; header <= {results['header_bytes_max']} bytes")
    console.print(f"  encode {results['encode_seconds_median']:.3f} s, decode {results['decode_seconds_median']:.3f} s "
                  f"(median); peak RSS {kodak_peak:.0f} MB; codes bit-exact: {results['all_codes_bit_exact']}")
    if "integer_prior_rate_cost" in results:
        console.print(f"  integer prior vs float prior: {100 * results['integer_prior_rate_cost']['relative']:+.3f}% bits")
    if "large_image" in results:
        large = results["large_image"]
        console.print(f"  4000x3000: {large['bpp']:.4f} bpp, encode {large['encode_seconds']:.1f} s, decode "
                      f"{large['decode_seconds']:.1f} s, peak RSS {large['peak_rss_mb']:.0f} MB")
    if reference is not None:
        ref = results["reference"]
        console.print(f"  reference {ref['model']}: {ref['bpp']:.4f} bpp, PSNR {ref['psnr']:.2f} dB, decode "
                      f"{ref['decode_seconds_median']:.3f} s (median): decode time ratio "
                      f"{results['decode_time_ratio_to_reference']:.2f}x")
    if out is not None:
        console.print(f"wrote {out}")
    if args.update_manifest:
        record_metrics(name, codec_metrics(Path(args.data).name, report["command"], results), section="codec")
        console.print("updated the manifest")
    return 0


def codec_metrics(dataset: str, command: str, results: dict) -> dict:
    """The mean figures that go into the manifest."""
    keys = ("bpp", "psnr", "ms_ssim", "bpp_per_level", "file_bits_over_cross_entropy", "header_bytes_max",
            "encode_seconds_median", "decode_seconds_median", "peak_rss_mb", "all_codes_bit_exact", "threads")
    metrics = {"dataset": dataset, "command": command, **{k: results[k] for k in keys}}
    if "integer_prior_rate_cost" in results:
        metrics["integer_prior_rate_cost"] = results["integer_prior_rate_cost"]["relative"]
    return metrics


if __name__ == "__main__":
    sys.exit(main())
