"""Rate of the priors' two integer table formats, as the coder computes them (issue 8).

A priors checkpoint is exported twice, with 16-bit tables (float64, the format up to hvq-vr3) and with 8-bit
tables (float32; input scales calibrated on the first 64 crops of codes.pt, as `hvqcodec models export` does),
and every stream's bits per code are measured on the last N crops of codes.pt through the integer priors
themselves (parallel passes), beside the float prior's cross-entropy. The 8-bit frequencies are also computed
again in float64 from the same tables: they must be the same integers.

    python benchmarks/table_formats.py runs/pri-C/checkpoint.pt runs/pri-C/codes.pt [--crops 100]
        [--json benchmarks/results/table-formats.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from hvqcodec import intprior
from hvqcodec.autoencoder import stream_names
from hvqcodec.entropy import level_frequencies, stage_frequencies
from hvqcodec.intprior import FREQ_TOTAL, IntPrior, export_prior
from hvqcodec.priors import HierarchicalPrior, PriorConfig

CALIBRATION_CROPS = 64  # as hvqcodec.cli.zoo.CALIBRATION_CROPS


def integer_bits(config: PriorConfig, tables: dict, codes: list[torch.Tensor],
                 dtype: torch.dtype | None = None) -> tuple[list[float], list[torch.Tensor], float]:
    """Bits per code of each stream under the integer prior, all frequencies, and the seconds it took."""
    original = intprior.tables_dtype
    if dtype is not None:  # the same tables computed in another float type
        intprior.tables_dtype = lambda tables: dtype
    try:
        prior = IntPrior(config.causal_blocks, config.cond_blocks, tables, "cpu", config.refine_stages,
                         config.refine_groups, config.stage_blocks)
    finally:
        intprior.tables_dtype = original
    totals, frequencies = [0.0] * len(codes), []
    start = time.perf_counter()
    for n in range(codes[0].shape[0]):
        tile = [c[n] for c in codes]
        for level in range(3):
            freq, state = level_frequencies(prior.levels[level], tile[level], tile[:level])
            symbols = tile[level].flatten()[state.order]
            totals[level] += float(-torch.log2(freq.gather(1, symbols[:, None]).double() / FREQ_TOTAL).sum())
            frequencies.append(freq)
        for stage in range(config.refine_stages):
            freq = stage_frequencies(prior.stages[stage], tile, tile[3 + stage])
            chosen = freq.gather(2, tile[3 + stage].flatten(1)[..., None])
            totals[3 + stage] += float(-torch.log2(chosen.double() / FREQ_TOTAL).sum())
            frequencies.append(freq)
    seconds = time.perf_counter() - start
    return [t / c.numel() for t, c in zip(totals, codes)], frequencies, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("codes", type=Path, help="codes.pt of a `hvqcodec train priors` run")
    parser.add_argument("--crops", type=int, default=100, help="last N crops of the cache are measured")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    config = PriorConfig.from_dict(checkpoint["config"])
    prior = HierarchicalPrior(config)
    prior.load_state_dict(checkpoint["model"])
    prior.eval()
    codes = [c.long() for c in torch.load(args.codes, weights_only=True)["codes"]]
    measured = [c[-args.crops:] for c in codes]
    with torch.no_grad():
        float_bits = [float(b) for b in prior.bits_per_code(measured)]
    wide = export_prior(prior)
    narrow = export_prior(prior, [c[:CALIBRATION_CROPS] for c in codes])
    wide_bits, _, wide_seconds = integer_bits(config, wide, measured)
    narrow_bits, narrow_freq, narrow_seconds = integer_bits(config, narrow, measured)
    _, double_freq, _ = integer_bits(config, narrow, measured, torch.float64)
    identical = all(torch.equal(a, b) for a, b in zip(narrow_freq, double_freq))
    names = stream_names(config.refine_stages)
    rows = {"float prior": float_bits, "16-bit tables": wide_bits, "8-bit tables": narrow_bits}
    print(f"{args.checkpoint}: bits per code on the last {args.crops} crops of {args.codes}")
    print(f"{'':>14} " + " ".join(f"{n:>8}" for n in names))
    for name, values in rows.items():
        change = "" if name != "8-bit tables" else "  (" + ", ".join(
            f"{100 * (v / w - 1):+.2f}%" for v, w in zip(values, wide_bits)) + " against 16-bit)"
        print(f"{name:>14} " + " ".join(f"{v:8.4f}" for v in values) + change)
    print(f"parallel passes, {args.threads} thread(s): 16-bit {wide_seconds:.2f} s, 8-bit {narrow_seconds:.2f} s; "
          f"8-bit frequencies in float32 equal to float64's: {identical}")
    if args.json:
        record = {"name": "table-formats",
                  "description": f"bits per code of {args.checkpoint}'s integer priors, 16-bit (float64) and 8-bit "
                                 f"(float32) tables, last {args.crops} crops of {args.codes}; {platform.machine()}",
                  "command": "python benchmarks/table_formats.py " + " ".join(
                      [str(args.checkpoint), str(args.codes), "--crops", str(args.crops)]),
                  "results": {"streams": list(names), "bits_per_code": rows,
                              "seconds": {"16-bit": wide_seconds, "8-bit": narrow_seconds},
                              "float32_equals_float64": identical}}
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
