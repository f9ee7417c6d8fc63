"""Rate-distortion of the refinement stages of an autoencoder checkpoint, without a trained prior: each stage's
codes chosen by entropy-constrained selection (distance + lambda * bits) with rates from the code histogram
itself, iterated to a fixed point, for several per-stage lambda schedules. The rate is each stage's empirical
code entropy (what a context-free prior would spend; a context prior spends less), the distortion the PSNR of
the float reconstruction on 16 CID22 validation crops of 256 px. Used to compare training recipes that give
different codebooks (nearest-code vs entropy-constrained training) before a prior is trained for any of them.

    python benchmarks/stage_rd.py runs/cmp-N/checkpoint.pt runs/cmp-E/checkpoint.pt [--json out.json]
    python benchmarks/stage_rd.py hvq-ladder
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hvqcodec.autoencoder import AutoencoderConfig, HierarchicalVQVAE
from hvqcodec.data import center_crops, find_images, load_rgb
from hvqcodec.metrics import psnr

VALIDATION = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "train" / "cid22" / "validation"
SCHEDULES = [(0.0, 0.0, 0.0), (0.003, 0.001, 0.0003), (0.002, 0.0007, 0.0002), (0.001, 0.0003, 0.0001),
             (0.005, 0.002, 0.0007)]


def load(source: str) -> HierarchicalVQVAE:
    if source.endswith(".pt"):
        from hvqcodec.train import load_checkpoint
        checkpoint = load_checkpoint(source)
        model = HierarchicalVQVAE(AutoencoderConfig.from_dict(checkpoint["config"]))
        model.load_state_dict(checkpoint["model"])
    else:
        from hvqcodec.zoo import load_model
        model = load_model(source).float()
    return model.eval()


def marginal_ecvq(codebook: torch.Tensor, vectors: torch.Tensor, lam: float, rounds: int = 6):
    """Codes minimising distance + lam * (-log2 of the codes' own frequencies), and their entropy in bits."""
    distances = torch.cdist(vectors, codebook).pow(2)
    bits = torch.zeros(codebook.shape[0])
    for _ in range(rounds if lam > 0 else 1):
        codes = (distances + lam * bits[None]).argmin(1)
        counts = torch.bincount(codes, minlength=codebook.shape[0]).float() + 1e-3
        bits = torch.log2(counts.sum()) - torch.log2(counts)
    p = counts / counts.sum()
    return codes, float(-(p * p.log2()).sum())


@torch.no_grad()
def stage_curve(model: HierarchicalVQVAE, images: torch.Tensor, lambdas, bottom_lambda: float = 0.0) -> list[dict]:
    """(bits per pixel so far, PSNR) after the bottom level and after each stage; the bottom codes chosen with
    `bottom_lambda` (0: nearest)."""
    top, mid, latent = model.encode_latent(images)
    c2 = model.context_top(model.quantisers[0].lookup(top))
    c1 = model.context_mid(torch.cat([model.quantisers[1].lookup(mid), c2], 1))
    n, d, h, w = latent.shape
    flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # noqa: E731
    grid = lambda f: f.view(n, h, w, -1).permute(0, 3, 1, 2)  # noqa: E731

    def quality(total):
        recon = model._decode_bottom(total, c1).clamp(0, 1)
        return sum(psnr(recon[i], images[i]) for i in range(n)) / n

    bottom_codebook = model.quantisers[2].codebook
    codes, entropy = marginal_ecvq(bottom_codebook, flat(latent), bottom_lambda)
    total, bpp = grid(bottom_codebook[codes]), entropy / 16
    curve = [{"streams": 3, "bpp": round(bpp, 4), "psnr": round(quality(total), 3)}]
    for stage, (refiner, lam) in enumerate(zip(model.refiners, lambdas)):
        residual = flat(latent - total)
        parts = []
        for group, quantiser in enumerate(refiner.quantisers):
            chunk = residual.chunk(len(refiner.quantisers), dim=1)[group]
            codes, entropy = marginal_ecvq(quantiser.codebook, chunk, lam)
            parts.append(quantiser.codebook[codes])
            bpp += entropy / 16
        total = total + grid(torch.cat(parts, 1))
        curve.append({"streams": 4 + stage, "bpp": round(bpp, 4), "psnr": round(quality(total), 3)})
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="checkpoint.pt files or shipped model names")
    parser.add_argument("--data", default=str(VALIDATION))
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--bottom-lambdas", default="0", help="comma-separated weights for the bottom codes")
    args = parser.parse_args()
    torch.set_num_threads(2)
    paths = find_images(args.data, ["*844297.png"])[:16]
    images = center_crops([load_rgb(p, 1024) for p in paths], 256)
    results = {}
    for source in args.models:
        model = load(source)
        trained = tuple(model.config.refine_lambdas)
        schedules = SCHEDULES + ([trained] if trained and trained not in SCHEDULES else [])
        results[source] = {}
        for bottom_lambda in map(float, args.bottom_lambdas.split(",")):
            for lambdas in schedules:
                curve = stage_curve(model, images, lambdas[:model.config.refine_stages], bottom_lambda)
                key = ",".join(map(str, lambdas)) + (f" bottom {bottom_lambda}" if bottom_lambda else "")
                results[source][key] = curve
                print(source, bottom_lambda, lambdas, " ".join(f"{p['bpp']:.3f}/{p['psnr']:.2f}" for p in curve),
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"name": "stage-rd", "description": __doc__.split("\n\n")[0],
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
