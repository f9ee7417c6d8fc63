"""What would a float32-exact prior cost in rate? (issue 8: "an exact float32 path ... check its rate cost")

The exact prior path computes integer matrix products in float64 (16-bit weights, activations on a 2^-10 grid
clamped to 16 bits): every partial sum stays below 2^53. float32 is exact only below 2^24, which 8-bit weights
times 8-bit activations guarantee for up to 1,024 inputs per output (the widest layer here has 12 x 64 = 768).
This script measures the cross-entropy of a trained priors checkpoint with its matrix-product inputs and weights
rounded ("fake-quantised") to a given number of bits, against the float prior, on code crops of a training run:

- weights: per output channel, a power-of-two scale, `bits`-bit signed integers;
- every input of a convolution (and the embedding tables, the masked convolution's input): per layer a
  power-of-two scale from the largest value seen on a calibration batch, `bits`-bit signed integers, clamped;
- layer outputs (logits included) and the gates are left in float: they are accumulators or table lookups,
  not products, so they need not be narrow.

    python benchmarks/prior_precision.py runs/priors-vr3/checkpoint.pt runs/priors-vr3/codes.pt [--crops 400]
        [--bits 16,10,8] [--json benchmarks/results/prior-precision.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import torch
from torch import nn

from hvqcodec.autoencoder import stream_names
from hvqcodec.priors import HierarchicalPrior, PriorConfig


def quantise(x: torch.Tensor, bits: int, peak: torch.Tensor) -> torch.Tensor:
    """Round x to `bits`-bit signed integers times a power-of-two scale that keeps `peak` representable."""
    top = 2 ** (bits - 1) - 1
    scale = torch.pow(2.0, torch.floor(torch.log2(top / peak.clamp(min=1e-12))))
    return torch.round(x * scale).clamp(-top, top) / scale


def fake_quantised(prior: HierarchicalPrior, bits: int, calibration: list[torch.Tensor]) -> HierarchicalPrior:
    """A copy of the prior whose convolution weights, embedding tables and convolution inputs are rounded."""
    prior = copy.deepcopy(prior).double().eval()
    peaks: dict[nn.Module, torch.Tensor] = {}

    def record(module, inputs):
        peaks[module] = torch.maximum(peaks.get(module, torch.zeros(())), inputs[0].detach().abs().max())

    convs = [m for m in prior.modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_pre_hook(record) for m in convs]
    with torch.no_grad():
        prior(calibration)
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        for module in prior.modules():
            if isinstance(module, nn.Conv2d):
                weight = module.weight.flatten(1)
                module.weight.copy_(quantise(weight, bits, weight.abs().amax(1, keepdim=True)).view_as(module.weight))
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(quantise(module.weight, bits, module.weight.abs().max()))
    for conv in convs:
        if conv in peaks:  # the masked convolutions are applied functionally: their input is an embedding table
            conv.register_forward_pre_hook(lambda m, inputs, peak=peaks[conv]: (quantise(inputs[0], bits, peak),))
    return prior


@torch.no_grad()
def bits_per_code(prior: HierarchicalPrior, codes: list[torch.Tensor], batch: int = 50) -> list[float]:
    totals = None
    for start in range(0, codes[0].shape[0], batch):
        chunk = [c[start:start + batch].long() for c in codes]
        bits = [float(b) * c.numel() for b, c in zip(prior.bits_per_code(chunk), chunk)]
        totals = bits if totals is None else [a + b for a, b in zip(totals, bits)]
    return [t / c.numel() for t, c in zip(totals, codes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("codes", type=Path, help="codes.pt of a `hvqcodec train priors` run")
    parser.add_argument("--crops", type=int, default=400, help="last N crops of the cache are measured")
    parser.add_argument("--bits", default="16,10,8")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    prior = HierarchicalPrior(PriorConfig.from_dict(checkpoint["config"]))
    prior.load_state_dict(checkpoint["model"])
    prior.eval()
    codes = torch.load(args.codes, weights_only=True)["codes"]
    measured = [c[-args.crops:] for c in codes]
    calibration = [c[:64].long() for c in codes]  # other crops than the measured ones
    names = stream_names(prior.config.refine_stages)
    results = {"float": bits_per_code(prior.double(), measured)}
    for bits in (int(b) for b in args.bits.split(",")):
        results[f"{bits}-bit"] = bits_per_code(fake_quantised(prior, bits, calibration), measured)
    print(f"{args.checkpoint}: bits per code on the last {args.crops} crops of {args.codes}")
    print(f"{'':>8} " + " ".join(f"{n:>8}" for n in names))
    for name, values in results.items():
        change = "" if name == "float" else "  (" + ", ".join(
            f"{100 * (v / f - 1):+.2f}%" for v, f in zip(values, results["float"])) + ")"
        print(f"{name:>8} " + " ".join(f"{v:8.4f}" for v in values) + change)
    if args.json:
        record = {"name": "prior-precision",
                  "description": f"bits per code of {args.checkpoint} with matmul inputs and weights rounded to N "
                                 f"bits, last {args.crops} crops of {args.codes}; {platform.machine()}",
                  "command": "python benchmarks/prior_precision.py " + " ".join(
                      [str(args.checkpoint), str(args.codes), "--crops", str(args.crops), "--bits", args.bits]),
                  "results": {"streams": list(names), "bits_per_code": results}}
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
