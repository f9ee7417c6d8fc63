"""The autoencoder's encoder side in bfloat16, measured and not adopted (hvqcodec 0.19): whole-file bpp and RGB PSNR
over Kodak at a few qualities, and median encode times, with the encoder's float work in float32 (what ships) and
with its ConvNeXt features and context path under bfloat16 autocast (the projections into code space and every
distance in float32), interleaved in one process. Files made either way decode with the same decoder (the codec's
own precision); only which codes the encoder picks differs.

    python benchmarks/encoder_precision.py [--qualities 26,75,90] [--images 24] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hvqcodec import autoencoder as autoencoder_module
from hvqcodec.codec import load_codec

KODAK = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "kodak"
SHIPPED = autoencoder_module.HierarchicalVQVAE.encode_latent


def encode_latent_bfloat16(self, images: torch.Tensor):
    """`HierarchicalVQVAE.encode_latent` with the features and the context path in bfloat16."""
    bf16 = torch.autocast(images.device.type, dtype=torch.bfloat16)
    with bf16:
        f1, f2, f3 = self.features(autoencoder_module.pad_to_multiple(images))
    f1, f2, f3 = f1.float(), f2.float(), f3.float()
    top = self.quantisers[0](self.pre_quant[0](f3)).codes
    with bf16:
        c2 = self.context_top(self.quantisers[0].lookup(top))
    c2 = c2.float()
    mid = self.quantisers[1](self.pre_quant[1](torch.cat([f2, c2], 1))).codes
    with bf16:
        c1 = self.context_mid(torch.cat([self.quantisers[1].lookup(mid), c2], 1))
    return top, mid, self.pre_quant[2](torch.cat([f1, c1.float()], 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--qualities", default="26,75,90")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = load_codec(args.model, "cpu")
    variants = {"float32": SHIPPED, "bfloat16": encode_latent_bfloat16}
    paths = sorted(KODAK.glob("*.png"))[:args.images]
    print(f"{codec.name}, {len(paths)} Kodak images, {args.threads} threads")
    results = {"model": codec.name, "threads": args.threads, "qualities": {}}
    try:
        for quality in map(int, args.qualities.split(",")):
            bpp = {name: [] for name in variants}
            psnr = {name: [] for name in variants}
            seconds = {name: [] for name in variants}
            for path in paths:
                rgb = np.asarray(Image.open(path).convert("RGB"))
                for name, encode_latent in variants.items():
                    autoencoder_module.HierarchicalVQVAE.encode_latent = encode_latent
                    start = time.perf_counter()
                    compressed = codec.compress(rgb, quality)
                    seconds[name].append(time.perf_counter() - start)
                    decoded = np.asarray(codec.decompress(compressed.data).image.convert("RGB"), dtype=np.float64)
                    bpp[name].append(len(compressed.data) * 8 / (rgb.shape[0] * rgb.shape[1]))
                    psnr[name].append(10 * np.log10(255 ** 2 / np.mean((decoded - rgb) ** 2)))
            row = {f"{key}_{name}": value for name in variants for key, value in (
                ("bpp", float(np.mean(bpp[name]))), ("psnr", float(np.mean(psnr[name]))),
                ("encode_seconds", statistics.median(seconds[name])))}
            row["bits_change"] = row["bpp_bfloat16"] / row["bpp_float32"] - 1
            results["qualities"][quality] = row
            print(f"quality {quality:>3}: {row['bpp_float32']:.5f} bpp {row['psnr_float32']:.4f} dB -> "
                  f"{row['bpp_bfloat16']:.5f} bpp {row['psnr_bfloat16']:.4f} dB ({100 * row['bits_change']:+.2f}% "
                  f"bits), encode {row['encode_seconds_float32']:.3f} -> {row['encode_seconds_bfloat16']:.3f} s",
                  flush=True)
    finally:
        autoencoder_module.HierarchicalVQVAE.encode_latent = SHIPPED
    if args.json:
        Path(args.json).write_text(json.dumps({
            "name": "encoder-precision", "description": __doc__.split("\n\n")[0],
            "command": "python benchmarks/encoder_precision.py " + " ".join(
                f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "json"),
            "results": results}, indent=1))


if __name__ == "__main__":
    main()
