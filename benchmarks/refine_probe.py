"""How far a better bottom latent takes the same decoder: Adam steps on the latent of CID22 validation crops,
decoding the latent itself (the ceiling) or its codes (what a file holds), against the encoder's own latent.

    python benchmarks/refine_probe.py                    # hvq-vr2, 4 crops of 256x256, 40 steps
    python benchmarks/refine_probe.py --rate-weight 1    # the objective `compress --effort` uses

Prints PSNR every 10 steps: of the latent decoded as it is, and of its codes with 3, 4, 5 and 6 streams, and
the share of positions whose bottom / stage codes changed.
"""
import argparse

import torch

from hvqcodec.data import center_crops, find_images, load_rgb
from hvqcodec.metrics import psnr
from hvqcodec.refine import refinement_steps
from hvqcodec.zoo import load_model

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="hvq-vr2")
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--rate-weight", type=float, default=0.0)
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(args.threads)
model = load_model(args.model).float().eval().requires_grad_(False)
paths = find_images("../shared/datasets/train/cid22/validation", ["*844297.png"])[:4]
x = center_crops([load_rgb(p, 1024) for p in paths], 256)


def mean_psnr(images):
    return sum(psnr(images[i].clamp(0, 1), x[i]) for i in range(len(x))) / len(x)


with torch.no_grad():
    top, mid, latent = model.encode_latent(x)
    context = model.bottom_context(top, mid)
    codes = [top, mid] + model.quantise_bottom(latent)


def report(label, z):
    with torch.no_grad():
        new = [top, mid] + model.quantise_bottom(z)
        print(f"{label:>8}: latent {mean_psnr(model._decode_bottom(z, context)):.2f} dB; codes",
              " ".join(f"{n}: {mean_psnr(model.decode(new[:n])):.2f}" for n in range(3, len(new) + 1)),
              "; changed", " ".join(f"{float((a != b).float().mean()):.2f}" for a, b in zip(new[2:], codes[2:])),
              flush=True)


report("encoder", latent)
for step, refined in enumerate(refinement_steps(model, x, top, mid, latent, args.steps, model.config.refine_stages,
                                                rate_weight=args.rate_weight, lr=args.lr), 1):
    if step % 10 == 0:
        report(f"step {step}", refined)
