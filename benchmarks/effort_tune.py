"""Tune encoder refinement (`--effort`): whole-file bpp and PSNR per quality, averaged over images, for one
setting of steps, rate weight and learning rate. Tune on training or validation images, never on Kodak.

    python benchmarks/effort_tune.py 0                         # no refinement: the reference
    python benchmarks/effort_tune.py 5 --rate-weight 0.25 --lr 0.02
    python benchmarks/effort_tune.py 10 --rate-weight 1 --lr 0.01 --images 6 --qualities 34,59,75,92,100

Prints one line: the setting, the seconds it took, and bpp / PSNR per quality.
"""
import argparse
import time

import numpy as np
import torch

import hvqcodec.refine as refine
from hvqcodec.codec import load_codec
from hvqcodec.data import find_images
from hvqcodec.imageio import load_image

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("effort", type=int, help="refinement steps (0: off)")
parser.add_argument("--rate-weight", type=float, default=refine.REFINE_RATE_WEIGHT)
parser.add_argument("--lr", type=float, default=refine.REFINE_LR)
parser.add_argument("--model", default="hvq-vr2")
parser.add_argument("--data", default="../shared/datasets/train/cid22/validation")
parser.add_argument("--images", type=int, default=6, help="the first N images of the folder (sorted)")
parser.add_argument("--qualities", default="34,59,75,92,100")
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(args.threads)
refine.REFINE_RATE_WEIGHT, refine.REFINE_LR = args.rate_weight, args.lr
qualities = [int(q) for q in args.qualities.split(",")]
codec = load_codec(args.model, device="cpu")
paths = sorted(find_images(args.data, ["*844297.png"]))[:args.images]
totals = {q: [0.0, 0.0] for q in qualities}
start = time.time()
for path in paths:
    image = load_image(str(path))
    reference = torch.tensor(image.rgb).float()
    for q in qualities:
        result = codec.compress(image, quality=q, effort=args.effort)
        decoded = torch.tensor(codec.reconstruct(result.codes, result.width, result.height, result.tile_size)).float()
        totals[q][0] += result.bpp / len(paths)
        totals[q][1] += 10 * np.log10(255 ** 2 / float(((decoded - reference) ** 2).mean())) / len(paths)
print(f"effort {args.effort} weight {args.rate_weight} lr {args.lr} time {time.time() - start:.0f}s",
      " ".join(f"q{q}:{totals[q][0]:.4f}/{totals[q][1]:.3f}" for q in qualities), flush=True)
