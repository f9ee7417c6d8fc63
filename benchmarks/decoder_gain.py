"""What a decoder trained alone buys: two models that give the same codes (same codes fingerprint), one set of
codes per image, each model's decoder on every stream prefix; mean RGB PSNR (8-bit) on the CID22 validation
images at full size, at the bottom rate weights given.

    python benchmarks/decoder_gain.py hvq-vr hvq-vr2                  # print
    python benchmarks/decoder_gain.py hvq-vr hvq-vr2 --update         # also benchmarks/results/decoder-gain.json
    python benchmarks/decoder_gain.py hvq-vr runs/dec-vr/checkpoint.pt   # a training checkpoint (as fp16)
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hvqcodec.autoencoder import AutoencoderConfig, HierarchicalVQVAE
from hvqcodec.data import find_images, load_rgb
from hvqcodec.ladder import psnr_uint8
from hvqcodec.train import load_checkpoint
from hvqcodec.zoo import codes_fingerprint, half_state, load_model

RESULTS = Path(__file__).parent / "results" / "decoder-gain.json"


def model(source: str) -> HierarchicalVQVAE:
    if not source.endswith(".pt"):
        return load_model(source).eval()
    checkpoint = load_checkpoint(source)
    built = HierarchicalVQVAE(AutoencoderConfig.from_dict(checkpoint["config"]))
    built.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in half_state(checkpoint["model"]).items()})
    return built.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference")
    parser.add_argument("candidate")
    parser.add_argument("--data", default="../shared/datasets/train/cid22/validation")
    parser.add_argument("--bottom-lambdas", default="0,0.01")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference, candidate = model(args.reference), model(args.candidate)
    if codes_fingerprint(reference) != codes_fingerprint(candidate):
        raise SystemExit("the two models give different codes: compare them with hvqcodec bench instead")
    paths = find_images(args.data, ["*844297.png"])  # a duplicate of a training picture
    lambdas = [float(x) for x in args.bottom_lambdas.split(",")]
    streams = range(3, reference.config.num_streams + 1)
    scores: dict[tuple[float, int, str], list[float]] = {}
    with torch.no_grad():
        for path in paths:
            rgb = load_rgb(path, 1024)
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
            for lam in lambdas:
                codes = reference.encode(x, lam)
                for n in streams:
                    for name, m in (("reference", reference), ("candidate", candidate)):
                        picture = m.decode(codes[:n])[0, :, :rgb.shape[0], :rgb.shape[1]].clamp(0, 1)
                        picture = picture.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                        scores.setdefault((lam, n, name), []).append(psnr_uint8(picture, rgb))
    rows = []
    for lam in lambdas:
        for n in streams:
            ref, cand = (float(np.mean(scores[(lam, n, k)])) for k in ("reference", "candidate"))
            rows.append({"bottom_lambda": lam, "streams": n, "reference_psnr": round(ref, 3),
                         "candidate_psnr": round(cand, 3), "gain_db": round(cand - ref, 3)})
            print(f"bottom lambda {lam:g}, {n} streams: {ref:.3f} -> {cand:.3f} dB ({cand - ref:+.3f})")
    if args.update:
        RESULTS.write_text(json.dumps({
            "name": "decoder-gain", "description": f"{args.candidate} against {args.reference}: same codes, "
            f"RGB PSNR (8-bit) on {len(paths)} images of {args.data}", "results": rows}, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
