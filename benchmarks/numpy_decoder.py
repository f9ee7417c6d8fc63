"""Could a runtime without torch run the autoencoder's decoder? The numpy decoder of that runtime
(hvqcodec/npdecoder.py, `NumpyDecoder`: `HierarchicalVQVAE.decode` in float32), checked against torch's and timed
beside it.

The command line spends 1.5-2 s importing torch; docs/DESIGN.md section 8 plans a runtime without it. This probe
measures what its decoder costs in numpy plus the runtime's C kernels (hvqcodec/decoderkernel.py: depthwise 7x7
conv + LayerNorm, bias + GELU, the post-filter's 3x3 convs; the matmuls in numpy's BLAS; where the CPU has AMX
tiles, also with the blocks' MLPs and the post-filter's 32 -> 32 convs in bfloat16, as `decode(low_precision=True)`
and the runtime run them), and in plain numpy:

- agreement: `NumpyDecoder.decode` (with the kernels, in bfloat16, and plain) against torch's float32 decode of the same codes
  (kodim01 at the default quality): the largest difference before rounding, and the PSNR of the numpy picture
  against torch's (both through the bytes: clamped, x255, rounded to uint8);
- time: medians of --repeats runs each of the numpy decoder with the kernels and plain, each on one thread and
  on two (bands of rows shared out over two Python threads; the kernels release the GIL), torch's float32
  decoder and torch's default one (bfloat16 where native, `Codec.low_precision_decoder`), interleaved in one
  process (this 2-core machine's speed drifts and other work may be running: the 1-minute load average, this
  process included, is recorded before and after), on kodim01 (768x512) and on a 1024x1024 crop of a CLIC image
  (the codec's largest tile); each numpy run includes preparing the weights (`NumpyDecoder(config, state)`) and
  starting and stopping its threads, as a one-shot `decompress` would;
- where the numpy decoders' time goes: context path, /4 stage, /2 stage, to_rgb + detail head, post-filter, and
  per kind of operation on one thread (medians over the same runs, from the decoder's timer callback); beside
  it, torch's own kernels by kind (one profiled decode at each precision);
- `python -c "import numpy"` against `python -c "import torch"`: medians of fresh processes, interleaved.

    python benchmarks/numpy_decoder.py [--repeats 5] [--import-repeats 3] [--no-large] [--no-kernels]
                                       [--json out.json]

--no-kernels: plain numpy only (also what runs where hvqcodec._decoderkernel is not built).

hvqcodec.npdecoder needs numpy (and hvqcodec.decoderkernel) but not torch; torch and hvqcodec's codec are
imported by the measurement functions. Its GELUs (plain numpy's, the kernels') are described there and in
hvqcodec/_decoderkernel.c.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# numpy's BLAS (OpenBLAS) on one thread, set before numpy is imported (a caller's own setting wins): the two-thread
# numpy decoder shares bands of rows out over Python threads instead, and two BLAS threads under one Python
# thread were measured here 5-10% faster when the machine was idle but 2-2.7x slower while another process ran
# (OpenBLAS's threads spin, and the elementwise work between matmuls, most of the time, stays on one core anyway).
ENVIRONMENT_BEFORE = dict(os.environ)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from hvqcodec import decoderkernel  # noqa: E402  (numpy only: `import hvqcodec` does not import torch)
from hvqcodec.npdecoder import PARTS, NumpyDecoder, Timings, to_uint8  # noqa: E402  (numpy only)

ROOT = Path(__file__).resolve().parents[1]
KODIM01 = ROOT.parent / "shared" / "datasets" / "kodak" / "kodim01.png"
CLIC = ROOT.parent / "shared" / "datasets" / "train" / "clic2025_finaltest"

# Measurement functions import torch and hvqcodec's codec when called.

def import_seconds(module: str) -> float:
    """Wall time of `python -c "import module"` in a fresh process, with the environment this script started in."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, env=ENVIRONMENT_BEFORE)
    return time.perf_counter() - start


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def load_average() -> float:
    return os.getloadavg()[0]


# label -> (C kernels, bfloat16 tiles)
NUMPY_DECODERS = {"numpy + C kernels": (True, False), "numpy + C kernels, bfloat16": (True, True),
                  "numpy float32": (False, False)}


def agreement_with(reference: np.ndarray, ours: np.ndarray, ours_threaded: np.ndarray) -> dict:
    """How a numpy decode (and its two-thread run) compares with torch's float32 decode."""
    difference = np.abs(ours - reference)
    ours8, reference8 = to_uint8(ours), to_uint8(reference)
    return {"max_abs_difference": float(difference.max()), "mean_abs_difference": float(difference.mean()),
            "uint8_psnr_vs_torch_float32": psnr_uint8(ours8, reference8),
            "uint8_values_differing": float(np.mean(ours8 != reference8)),
            "uint8_max_difference": int(np.abs(ours8.astype(np.int16) - reference8).max()),
            "two_threads_max_abs_difference_vs_one": float(np.abs(ours_threaded - ours).max())}


def measure_image(codec, name: str, codes, repeats: int, kernels: bool) -> dict:
    """Agreement with torch's float32 decode, then interleaved timings of the decoders (the numpy ones with the C
    kernels if `kernels`, and plain)."""
    import torch

    autoencoder = codec.autoencoder
    state = {k: v.detach().numpy() for k, v in autoencoder.state_dict().items()}
    config = autoencoder.config.to_dict()
    numpy_codes = [c.numpy() for c in codes]
    batched = [c[None] for c in codes]
    numpy_decoders = {label: (use, low) for label, (use, low) in NUMPY_DECODERS.items()
                      if (kernels or not use) and (decoderkernel.bf16_available() or not low)}
    with torch.no_grad():
        reference = autoencoder.decode(batched, low_precision=False)[0].permute(1, 2, 0).numpy()
    agreement = {}
    for label, (use, low) in numpy_decoders.items():
        with NumpyDecoder(config, state, kernels=use) as decoder:
            ours = decoder.decode(numpy_codes, threads=1, low_precision=low)
            agreement[label] = found = agreement_with(reference, ours, decoder.decode(numpy_codes, threads=2,
                                                                                      low_precision=low))
        print(f"{name}: {label} vs torch float32: max |diff| {found['max_abs_difference']:.2e}, mean "
              f"{found['mean_abs_difference']:.2e}; uint8: PSNR {found['uint8_psnr_vs_torch_float32']:.2f} dB, "
              f"{100 * found['uint8_values_differing']:.4f}% of values differ (by <= "
              f"{found['uint8_max_difference']}); 2 threads vs 1: max |diff| "
              f"{found['two_threads_max_abs_difference_vs_one']:.1e}")

    prepare_times: list[float] = []
    part_times: dict[str, list[Timings]] = {}

    def run_numpy(label: str, threads: int, use_kernels: bool, low_precision: bool) -> None:
        """One decode as a one-shot runtime runs it: weights prepared, threads started and stopped."""
        start = time.perf_counter()
        decoder = NumpyDecoder(config, state, kernels=use_kernels)
        prepare_times.append(time.perf_counter() - start)
        timings = Timings(PARTS)
        decoder.decode(numpy_codes, threads=threads, timer=timings, low_precision=low_precision)
        decoder.close()
        part_times.setdefault(label, []).append(timings)

    def run_torch(low_precision: bool) -> None:
        with torch.no_grad():
            autoencoder.decode(batched, low_precision=low_precision)

    default_label = f"torch default ({'bfloat16' if codec.low_precision_decoder else 'float32'})"
    runners = {}
    for label, (use, low) in numpy_decoders.items():
        for threads in (1, 2):
            thread_label = f"{label}, {threads} thread{'s' if threads > 1 else ''}"
            runners[thread_label] = (lambda l=thread_label, t=threads, u=use, b=low: run_numpy(l, t, u, b))
    runners["torch float32"] = lambda: run_torch(False)
    runners[default_label] = lambda: run_torch(codec.low_precision_decoder)
    for runner in runners.values():  # warm-up: allocators, oneDNN's kernels, caches
        runner()
    prepare_times.clear()
    part_times.clear()
    seconds: dict[str, list[float]] = {label: [] for label in runners}
    load_before = load_average()
    for _ in range(repeats):
        for label, runner in runners.items():
            start = time.perf_counter()
            runner()
            seconds[label].append(time.perf_counter() - start)
    load_after = load_average()
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    parts = {label: {part: statistics.median(t.parts[part] for t in runs) for part in PARTS}
             for label, runs in part_times.items()}
    operations = {}
    for label in numpy_decoders:
        single = part_times[f"{label}, 1 thread"]
        operations[label] = {op: statistics.median(t.operations[op] for t in single)
                             for op in single[0].operations}
    height, width = reference.shape[:2]
    print(f"{name} ({width}x{height}, {len(codes)} streams), median of {repeats} (load average "
          f"{load_before:.2f} before, {load_after:.2f} after):")
    for label, values in seconds.items():
        print(f"  {label:33s} {medians[label]:.3f} s  ({medians[label] / medians[default_label]:.2f}x torch "
              f"default; runs: {', '.join(f'{v:.3f}' for v in values)})")
    for label, part_seconds in parts.items():
        print(f"  {label} by part: " + ", ".join(f"{part} {value:.3f}" for part, value in part_seconds.items()))
    print(f"  weights prepared in {statistics.median(prepare_times):.4f} s (in each numpy time)")
    for label, kinds in operations.items():
        print(f"  {label}, 1 thread, by operation: " + ", ".join(
            f"{op} {value:.3f}" for op, value in sorted(kinds.items(), key=lambda item: -item[1])))
    kernels_seconds = {label: torch_kernels(autoencoder, batched, low) for label, low in
                       (("torch float32", False), (default_label, codec.low_precision_decoder))}
    for label, kinds in kernels_seconds.items():
        print(f"  {label} kernels (profiler, one run): " + ", ".join(f"{k} {v:.3f}" for k, v in kinds.items()))
    return {"image": name, "width": width, "height": height, "streams": len(codes), "agreement": agreement,
            "load_average_before_after": [load_before, load_after],
            "seconds_median": medians, "seconds": seconds,
            "relative_to_torch_default": {label: value / medians[default_label] for label, value in medians.items()},
            "numpy_parts_seconds_median": parts,
            "numpy_prepare_weights_seconds_median": statistics.median(prepare_times),
            "numpy_1_thread_operations_seconds_median": operations,
            "torch_kernels_seconds_one_profiled_run": kernels_seconds}


def torch_kernel_kind(name: str, shapes) -> str:
    if "conv" in name:
        weight = next((shape for shape in shapes[1:2] if len(shape) == 4), None)
        if weight is not None and weight[1] == 1 and weight[2:] == [7, 7]:
            return "depthwise 7x7 convs"
        if weight is not None and weight[2:] == [3, 3]:
            return "post-filter 3x3 convs"
        return "other convs (1x1, transposed 2x2)"
    for kind, keys in (("matmuls (Linear)", ("addmm", "linear", "matmul", "aten::mm", "aten::bmm")),
                       ("GELU", ("gelu",)), ("LayerNorm", ("layer_norm",)),
                       ("copies (layouts, dtypes)", ("copy", "contiguous", "clone"))):
        if any(key in name for key in keys):
            return kind
    return "other"


def torch_kernels(autoencoder, batched, low_precision: bool) -> dict[str, float]:
    """Seconds of torch's own (C) kernels in one decode by kind: the profiler's self time of each aten op on the
    calling thread (its intra-op threads work inside that time), what C kernels reach on these shapes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        autoencoder.decode(batched, low_precision=low_precision)
    kinds: dict[str, float] = {}
    for event in profiler.key_averages(group_by_input_shape=True):
        if event.key.startswith("aten::"):
            kind = torch_kernel_kind(event.key, event.input_shapes)
            kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
    return dict(sorted(kinds.items(), key=lambda item: -item[1]))


def large_tile_codes(codec, size: int = 1024) -> tuple[str, list]:
    """Codes of a size x size centre crop of the first CLIC image at the default quality (what compress codes)."""
    from PIL import Image

    path = sorted(CLIC.glob("*.png"))[0]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    top, left = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
    crop = np.ascontiguousarray(rgb[top:top + size, left:left + size])
    return f"{path.name[:12]} {size}x{size} centre crop", codec.encode_codes(crop, codec.operating_point())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--import-repeats", type=int, default=3)
    parser.add_argument("--no-large", action="store_true", help="skip the 1024x1024 crop")
    parser.add_argument("--no-kernels", action="store_true",
                        help="plain numpy only, without the C kernels (hvqcodec.decoderkernel)")
    parser.add_argument("--json")
    args = parser.parse_args()

    import_times: dict[str, list[float]] = {"numpy": [], "torch": []}
    for _ in range(args.import_repeats):  # interleaved, fresh processes
        for module, values in import_times.items():
            values.append(import_seconds(module))
    imports = {f"import {module}": {"seconds_median": statistics.median(values), "seconds": values}
               for module, values in import_times.items()}
    for label, value in imports.items():
        print(f"python -c \"{label}\": {value['seconds_median']:.3f} s  "
              f"(runs: {', '.join(f'{v:.3f}' for v in value['seconds'])})")

    import torch
    from hvqcodec.codec import load_codec

    kernels = decoderkernel.available() and not args.no_kernels
    if not decoderkernel.available() and not args.no_kernels:
        print("hvqcodec._decoderkernel is not built: plain numpy only")
    codec = load_codec()
    images = [measure_image(codec, "kodim01", codec.compress(str(KODIM01)).codes[0], args.repeats, kernels)]
    if not args.no_large:
        images.append(measure_image(codec, *large_tile_codes(codec), args.repeats, kernels))
    results = {"model": codec.name, "torch": torch.__version__, "numpy": np.__version__,
               "torch_threads": torch.get_num_threads(), "numpy_blas_threads": os.environ["OPENBLAS_NUM_THREADS"],
               "machine": platform.machine(), "cpus": os.cpu_count(),
               "low_precision_decoder": codec.low_precision_decoder,
               "numpy_bfloat16_tiles": decoderkernel.bf16_available(),
               "decoder_kernels": decoderkernel.path() if kernels else None,
               "gelu": {"numpy float32": "exact (erf) form; erfc by Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7",
                        **({"numpy + C kernels": "exact (erf) form; erfc(z) = 2u exp(-z^2 + Q(u)), u = 1/(2 + z), "
                                                 "Q of degree 7 (hvqcodec/_decoderkernel.c), |error| < 2e-8 "
                                                 "before float32 rounding"} if kernels else {})},
               "imports": imports, "images": images}
    if args.json:
        command = "python benchmarks/numpy_decoder.py" + "".join(
            flag for flag, on in ((f" --repeats {args.repeats}", args.repeats != 5),
                                  (f" --import-repeats {args.import_repeats}", args.import_repeats != 3),
                                  (" --no-large", args.no_large), (" --no-kernels", args.no_kernels),
                                  (f" --json {args.json}", True)) if on)
        Path(args.json).write_text(json.dumps({
            "name": "numpy-decoder", "description": " ".join(__doc__.split("\n\n")[0].split()),
            "command": command, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
