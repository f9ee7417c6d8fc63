"""The encoder's float part without torch: the numpy encoder of the torch-free runtime (hvqcodec/npencoder.py,
`NumpyEncoder.encode_latent`: `HierarchicalVQVAE.encode_latent` in float32, and the bottom codebook's candidates
as `EMAQuantiser.candidates`), checked against torch's and timed beside it.

`hvqcodec compress` still imports torch (docs/DESIGN.md section 8); this measures what its encoder's float part
costs in numpy plus the runtime's C kernels (hvqcodec/decoderkernel.py, the ConvNeXt blocks' depthwise conv +
LayerNorm and bias + GELU; the matmuls in numpy's BLAS, on one thread):

- agreement on kodim01: top and mid codes against torch's float32 `encode_latent` (the share of equal
  positions), the bottom latent against torch's (largest difference; and against torch's for the numpy codes,
  which is the float rounding alone where a flipped code changed the context), the bottom codebook's
  ECVQ_CANDIDATES candidates on torch's latent against `EMAQuantiser.candidates` (the share of equal indices,
  the largest cost difference), with the default quality's bottom_lambda;
- time: medians of --repeats runs, interleaved in one process, of `NumpyEncoder.encode_latent` on one and on two
  Python threads (bands of rows shared out; the weights prepared once beforehand, their preparation timed
  apart) and torch's float32 `encode_latent` on torch's 2 threads (from the uint8 pixels, as
  `Codec.encode_codes` builds its input); the same for the candidate search; the 1-minute load average (this
  process included) before and after;
- where the numpy encoder's time goes: its parts (stem + /4 stage, /8 stage, /16 stage, top codes + context,
  mid codes + context, bottom latent) on one and two threads, and the ConvNeXt blocks' operations on one
  (medians over the same runs, from the encoder's timer callback).

    python benchmarks/numpy_encoder.py [--repeats 5] [--no-kernels] [--json out.json]

hvqcodec.npencoder needs numpy (and hvqcodec.decoderkernel, hvqcodec.npdecoder) but not torch; torch and
hvqcodec's model zoo are imported by the measurement functions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

# numpy's BLAS (OpenBLAS) on one thread, set before numpy is imported (a caller's own setting wins): the numpy
# encoder shares bands of rows out over Python threads instead (benchmarks/numpy_decoder.py says why).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from hvqcodec import decoderkernel  # noqa: E402  (numpy only)
from hvqcodec.npdecoder import Timings  # noqa: E402  (numpy only)
from hvqcodec.npencoder import PARTS, NumpyEncoder  # noqa: E402  (numpy only)

ROOT = Path(__file__).resolve().parents[1]
KODIM01 = ROOT.parent / "shared" / "datasets" / "kodak" / "kodim01.png"
ECVQ_CANDIDATES = 8  # codec.ECVQ_CANDIDATES
TORCH_THREADS = 2


def load_average() -> float:
    return os.getloadavg()[0]


def default_bottom_lambda() -> float:
    """The default quality's bottom_lambda (the codec's candidates are searched with it)."""
    from hvqcodec.codec import DEFAULT_QUALITY, quality_point
    from hvqcodec.manifest import model_entry

    return quality_point(model_entry(None).ladder, DEFAULT_QUALITY).bottom_lam


def agreement(encoder: NumpyEncoder, autoencoder, rgb: np.ndarray, bottom_lambda: float) -> dict:
    import torch

    from hvqcodec.autoencoder import pad_to_multiple

    x = torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255)
    with torch.no_grad():
        top, mid, latent = autoencoder.encode_latent(x)
    top, mid, latent = top[0].numpy(), mid[0].numpy(), latent[0].permute(1, 2, 0).numpy()
    ours = encoder.encode_latent(rgb, threads=1)
    ours_two = encoder.encode_latent(rgb, threads=2)
    with torch.no_grad():  # torch's latent for the numpy codes: the float rounding alone
        f1 = autoencoder.features(pad_to_multiple(x))[0]
        c1 = autoencoder.bottom_context(torch.from_numpy(ours[0])[None], torch.from_numpy(ours[1])[None])
        same_codes = autoencoder.pre_quant[2](torch.cat([f1, c1], 1))[0].permute(1, 2, 0).numpy()
    flat = torch.from_numpy(latent.reshape(-1, latent.shape[-1]))
    lambdas = flat.new_full((flat.shape[0],), bottom_lambda) if bottom_lambda > 0 else None
    with torch.no_grad():
        reference_costs, reference = (t.numpy() for t in autoencoder.quantisers[2].candidates(
            flat, ECVQ_CANDIDATES, lambdas))
    costs, indices = encoder.candidates(latent, ECVQ_CANDIDATES, bottom_lambda, threads=1)
    found = {
        "top_codes_equal": float(np.mean(ours[0] == top)), "top_codes_differing": int(np.sum(ours[0] != top)),
        "mid_codes_equal": float(np.mean(ours[1] == mid)), "mid_codes_differing": int(np.sum(ours[1] != mid)),
        "latent_max_abs_difference": float(np.abs(ours[2] - latent).max()),
        "latent_share_within_1e-4": float(np.mean(np.abs(ours[2] - latent) <= 1e-4)),
        "latent_max_abs_difference_same_codes": float(np.abs(ours[2] - same_codes).max()),
        "latent_max_abs": float(np.abs(latent).max()),
        "candidates": {"count": ECVQ_CANDIDATES, "bottom_lambda": bottom_lambda,
                       "indices_equal": float(np.mean(indices == reference)),
                       "rows_all_equal": float(np.mean((indices == reference).all(1))),
                       "first_equal": float(np.mean(indices[:, 0] == reference[:, 0])),
                       "max_abs_cost_difference": float(np.abs(costs - reference_costs).max())},
        "two_threads_identical_to_one": all(np.array_equal(a, b) for a, b in zip(ours, ours_two))}
    print(f"agreement with torch float32: top codes {100 * found['top_codes_equal']:.3f}% equal "
          f"({found['top_codes_differing']} differ), mid {100 * found['mid_codes_equal']:.3f}% "
          f"({found['mid_codes_differing']} differ); bottom latent max |diff| "
          f"{found['latent_max_abs_difference']:.2e} ({100 * found['latent_share_within_1e-4']:.3f}% within 1e-4), "
          f"{found['latent_max_abs_difference_same_codes']:.2e} against torch's for the same codes; "
          f"candidates ({ECVQ_CANDIDATES}, bottom_lambda {bottom_lambda}): "
          f"{100 * found['candidates']['indices_equal']:.3f}% of indices equal, first "
          f"{100 * found['candidates']['first_equal']:.3f}%, max cost |diff| "
          f"{found['candidates']['max_abs_cost_difference']:.1e}; two threads identical to one: "
          f"{found['two_threads_identical_to_one']}")
    return found, latent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-kernels", action="store_true",
                        help="plain numpy only, without the C kernels (hvqcodec.decoderkernel)")
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from hvqcodec import tensorfile
    from hvqcodec.manifest import model_entry
    from hvqcodec.zoo import load_bundle

    torch.set_num_threads(TORCH_THREADS)
    kernels = decoderkernel.available() and not args.no_kernels
    entry = model_entry(None)
    payload = tensorfile.load(entry.path)  # the numpy state as the torch-free runtime reads it (float16)
    autoencoder = load_bundle().autoencoder.eval()
    rgb = np.array(Image.open(KODIM01).convert("RGB"))
    bottom_lambda = default_bottom_lambda()

    prepare_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        NumpyEncoder(payload["config"], payload["state_dict"], kernels=kernels)
        prepare_times.append(time.perf_counter() - start)
    encoder = NumpyEncoder(payload["config"], payload["state_dict"], kernels=kernels)
    found, latent = agreement(encoder, autoencoder, rgb, bottom_lambda)
    flat = torch.from_numpy(latent.reshape(-1, latent.shape[-1]))
    lambdas = flat.new_full((flat.shape[0],), bottom_lambda) if bottom_lambda > 0 else None

    part_times: dict[str, list[Timings]] = {}

    def run_numpy(label: str, threads: int) -> None:
        timings = Timings(PARTS)
        encoder.encode_latent(rgb, threads=threads, timer=timings)
        part_times.setdefault(label, []).append(timings)

    def run_torch() -> None:
        with torch.no_grad():
            autoencoder.encode_latent(torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255))

    def run_torch_candidates() -> None:
        with torch.no_grad():
            autoencoder.quantisers[2].candidates(flat, ECVQ_CANDIDATES, lambdas)

    runners = {"numpy encode_latent, 1 thread": lambda: run_numpy("1 thread", 1),
               "numpy encode_latent, 2 threads": lambda: run_numpy("2 threads", 2),
               f"torch float32 encode_latent, {TORCH_THREADS} threads": run_torch,
               "numpy candidates, 1 thread": lambda: encoder.candidates(latent, ECVQ_CANDIDATES, bottom_lambda, 1),
               "numpy candidates, 2 threads": lambda: encoder.candidates(latent, ECVQ_CANDIDATES, bottom_lambda, 2),
               f"torch candidates, {TORCH_THREADS} threads": run_torch_candidates}
    for runner in runners.values():  # warm-up
        runner()
    part_times.clear()
    seconds: dict[str, list[float]] = {label: [] for label in runners}
    load_before = load_average()
    for _ in range(args.repeats):
        for label, runner in runners.items():
            start = time.perf_counter()
            runner()
            seconds[label].append(time.perf_counter() - start)
    load_after = load_average()
    encoder.close()
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    parts = {label: {part: statistics.median(t.parts[part] for t in runs) for part in PARTS}
             for label, runs in part_times.items()}
    single = part_times["1 thread"]
    operations = {op: statistics.median(t.operations.get(op, 0.0) for t in single) for op in single[0].operations}
    height, width = rgb.shape[:2]
    torch_label = f"torch float32 encode_latent, {TORCH_THREADS} threads"
    print(f"kodim01 ({width}x{height}), median of {args.repeats} interleaved (load average {load_before:.2f} "
          f"before, {load_after:.2f} after):")
    for label, values in seconds.items():
        print(f"  {label:40s} {medians[label]:.3f} s  (runs: {', '.join(f'{v:.3f}' for v in values)})")
    for label, part_seconds in parts.items():
        print(f"  numpy encode_latent, {label}, by part: "
              + ", ".join(f"{part} {value:.3f}" for part, value in part_seconds.items()))
    print("  numpy encode_latent, 1 thread, ConvNeXt blocks by operation: " + ", ".join(
        f"{op} {value:.3f}" for op, value in sorted(operations.items(), key=lambda item: -item[1])))
    print(f"  weights prepared in {statistics.median(prepare_times):.4f} s (median of {args.repeats}; not in "
          "the times above)")
    results = {"model": entry.name, "torch": torch.__version__, "numpy": np.__version__,
               "torch_threads": torch.get_num_threads(), "numpy_blas_threads": os.environ["OPENBLAS_NUM_THREADS"],
               "machine": platform.machine(), "cpus": os.cpu_count(),
               "decoder_kernels": decoderkernel.path() if kernels else None,
               "image": "kodim01", "width": width, "height": height, "agreement": found,
               "load_average_before_after": [load_before, load_after],
               "seconds_median": medians, "seconds": seconds,
               "numpy_relative_to_torch": {label: medians[label] / medians[torch_label]
                                           for label in runners if label.startswith("numpy encode_latent")},
               "numpy_parts_seconds_median": parts,
               "numpy_1_thread_block_operations_seconds_median": operations,
               "numpy_prepare_weights_seconds_median": statistics.median(prepare_times)}
    if args.json:
        command = "python benchmarks/numpy_encoder.py" + "".join(
            flag for flag, on in ((f" --repeats {args.repeats}", args.repeats != 5),
                                  (" --no-kernels", args.no_kernels), (f" --json {args.json}", True)) if on)
        Path(args.json).write_text(json.dumps({
            "name": "numpy-encoder", "description": " ".join(__doc__.split("\n\n")[0].split()),
            "command": command, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
