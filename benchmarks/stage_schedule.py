"""Would per-stage rate weights give better top operating points? (issue 7: quality 83-100 are hvq's weak end)

The ladder applies one extra weight (`stage_lambda`) to every refinement stage alike. This measures points with
5 and 6 streams whose stages get their own extra weights (added to the weights they were trained with), on the
model's own calibration crops (the images and crop size recorded in the manifest by `models calibrate`), as
whole-file bpp and PSNR. A point helps only if it lies above the straight line between its neighbours on the
ladder (5 streams and 6 streams at weight 0).

    python benchmarks/stage_schedule.py [--model hvq-vr3] [--schedules "0,0,0 0,0,0.001 0.0005,0.0005,0.0005"]
"""
from __future__ import annotations

import argparse
import json

import torch

from hvqcodec.codec import Codec, OperatingPoint
from hvqcodec.data import center_crops, load_rgb
from hvqcodec.ladder import measure_points
from hvqcodec.zoo import load_bundle, models_dir, read_manifest

DEFAULT_SCHEDULES = ("0,0,0 0,0,0.0005 0,0,0.001 0,0,0.002 0,0,0.004 0,0.0005,0.001 0,0.0005,0.002 "
                     "0,0.001,0.003 0.0005,0.0005,0.0005")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--schedules", default=DEFAULT_SCHEDULES, help="extra weight per stage, space-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model)
    codec = Codec(bundle, "cpu")
    calibration = read_manifest(models_dir())["models"][bundle.name]["ladder_calibration"]
    crops = center_crops([load_rgb(p) for p in calibration["images"]], calibration["crop"])
    images = [(c.permute(1, 2, 0) * 255).round().byte().numpy() for c in crops]
    trained = list(codec.trained_stage_lambdas)
    rows = []
    for schedule in args.schedules.split():
        extra = [float(v) for v in schedule.split(",")]
        codec.trained_stage_lambdas = [t + e for t, e in zip(trained, extra)]
        measured = measure_points(codec, images, [OperatingPoint(5, 0.0, 0.0), OperatingPoint(6, 0.0, 0.0)])
        rows.append({"extra_stage_weights": extra, "points": measured})
        print(f"extra {schedule:20s} " + "  ".join(f"{p['streams']} streams {p['bpp']:.4f} bpp {p['psnr']:.3f} dB"
                                                   for p in measured), flush=True)
    codec.trained_stage_lambdas = trained
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"name": "stage-schedule", "description": __doc__.split("\n\n")[0],
                       "command": f"python benchmarks/stage_schedule.py --model {bundle.name}",
                       "results": {"trained_stage_weights": trained, "rows": rows}}, f, indent=1)


if __name__ == "__main__":
    main()
