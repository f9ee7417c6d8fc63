"""In-process coding times of the runtime without torch (`runtime.Runtime`: what `hvqcodec compress` and
`decompress` run on a CPU up to 4 megapixels) against the torch codec, interleaved image by image (these machines
drift): compress and decompress medians over a folder (Kodak), each with the autoencoder's own part beside it (the
runtime's: `NumpyEncoder.encode_latent` and `NumpyDecoder.decode` timed on the same image) so that "prior and
coding" is the rest; the files' sizes and PSNR; and exactness: the runtime's files decoded by the torch codec give
the codes the runtime chose.

    python benchmarks/runtime_codec.py [--data ../shared/datasets/kodak] [--quality 75] [--limit N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the command line runs the runtime (cli.common)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def seconds(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "kodak"))
    parser.add_argument("--quality", type=int, default=None)
    parser.add_argument("--limit", type=int, default=0, help="the first N images only")
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    from hvqcodec import runtime
    from hvqcodec.codec import load_codec
    from hvqcodec.data import find_images

    paths = find_images(args.data)[:args.limit or None]
    ours, theirs = runtime.load_runtime(), load_codec(None, "cpu")
    point = ours.operating_point(args.quality)
    encoder = None
    rows = []
    for index, path in enumerate([paths[0]] + paths):  # the first image twice: a warm-up, not counted
        rgb = np.asarray(Image.open(path).convert("RGB"))
        encode_s, ours_file = seconds(ours.compress, rgb, args.quality)
        decode_s, ours_image = seconds(ours.decompress, ours_file.data)
        torch_encode_s, theirs_file = seconds(theirs.compress, rgb, args.quality)
        torch_decode_s, theirs_image = seconds(theirs.decompress, theirs_file.data)
        if encoder is None:
            encoder = ours.tile_encoder().encoder
        latent_s, _ = seconds(encoder.encode_latent, rgb, ours.threads)
        decoder_s, _ = seconds(ours.decoder.decode, ours_file.codes[0][:point.streams], ours.threads,
                               low_precision=ours.low_precision)
        by_torch = theirs.decompress(ours_file.data)
        exact = all(np.array_equal(a, b.numpy()) for tile_a, tile_b in zip(ours_file.codes, by_torch.codes)
                    for a, b in zip(tile_a, tile_b))
        if index == 0:
            continue
        rows.append({"image": path.name, "pixels": rgb.shape[0] * rgb.shape[1],
                     "encode_seconds": encode_s, "decode_seconds": decode_s,
                     "encoder_seconds": latent_s, "decoder_seconds": decoder_s,
                     "torch_encode_seconds": torch_encode_s, "torch_decode_seconds": torch_decode_s,
                     "bytes": len(ours_file.data), "torch_bytes": len(theirs_file.data),
                     "psnr": psnr(np.asarray(ours_image.image.convert("RGB")), rgb),
                     "torch_psnr": psnr(np.asarray(theirs_image.image.convert("RGB")), rgb),
                     "codes_exact_across_runtimes": exact})
        print(f"{path.name}: runtime {encode_s:.3f} / {decode_s:.3f} s, torch {torch_encode_s:.3f} / "
              f"{torch_decode_s:.3f} s, {len(ours_file.data)} vs {len(theirs_file.data)} bytes, exact {exact}",
              file=sys.stderr)

    def median(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    pixels = sum(row["pixels"] for row in rows)
    summary = {
        "images": len(rows), "quality": args.quality, "operating_point": point.to_entry(),
        "threads": ours.threads, "torch_threads": torch.get_num_threads(), "low_precision": ours.low_precision,
        "torch_low_precision": theirs.low_precision_decoder,
        "encode_seconds_median": median("encode_seconds"), "decode_seconds_median": median("decode_seconds"),
        "encoder_seconds_median": median("encoder_seconds"), "decoder_seconds_median": median("decoder_seconds"),
        "prior_and_coding_decode_seconds_median": statistics.median(
            row["decode_seconds"] - row["decoder_seconds"] for row in rows),
        "torch_encode_seconds_median": median("torch_encode_seconds"),
        "torch_decode_seconds_median": median("torch_decode_seconds"),
        "bpp": 8 * sum(row["bytes"] for row in rows) / pixels,
        "torch_bpp": 8 * sum(row["torch_bytes"] for row in rows) / pixels,
        "psnr": statistics.mean(row["psnr"] for row in rows),
        "torch_psnr": statistics.mean(row["torch_psnr"] for row in rows),
        "all_codes_exact_across_runtimes": all(row["codes_exact_across_runtimes"] for row in rows),
    }
    for key, value in summary.items():
        print(f"{key:42s} {value:.4f}" if isinstance(value, float) else f"{key:42s} {value}")
    if args.json:
        command = "python benchmarks/runtime_codec.py " + " ".join(sys.argv[1:])
        Path(args.json).write_text(json.dumps({
            "name": "runtime-codec", "description": __doc__.split("\n\n")[0], "command": command.strip(),
            "results": {**summary, "per_image": rows}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
