"""Where one decode's time goes: the levels' wavefront decoding, the refinement stages' priors and range
decoding, and the autoencoder's decoder (medians of a few decodes of one file, in process).

    python benchmarks/decode_split.py                                   # default model, kodim01, quality 75
    python benchmarks/decode_split.py --model hvq-vr --threads 1 --quality 100
    python benchmarks/decode_split.py --large --threads 2 --repeats 1     # codec.py's 4000x3000 photo
"""
import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import hvqcodec.codec as codec_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_split import CallTimer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--image", default="../shared/datasets/kodak/kodim01.png")
    parser.add_argument("--quality", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="the 4000x3000 photo of benchmarks/codec.py")
    args = parser.parse_args()
    if args.large:
        from codec import make_large_image

        scratch = tempfile.TemporaryDirectory()  # removed when main returns
        args.image = str(Path(scratch.name) / "large.png")
        print(make_large_image(Path(args.image)))
    torch.set_num_threads(args.threads)
    spent: dict[str, float] = collections.defaultdict(float)
    timed = CallTimer(spent)

    codec = codec_module.load_codec(args.model, "cpu")
    timed(codec_module, "decode_level", "levels (wavefronts)")
    timed(codec_module, "decode_stage", "refinement stages")
    timed(codec.autoencoder, "decode", "autoencoder decoder")
    data = codec.compress(args.image, args.quality).data
    runs: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.repeats):
        spent.clear()
        start = time.perf_counter()
        codec.decompress(data)
        runs["total"].append(time.perf_counter() - start)
        for part, seconds in spent.items():
            runs[part].append(seconds)
    total = statistics.median(runs.pop("total"))
    print(f"{codec.name}, {args.image}, quality {args.quality or 'default'}, {args.threads} thread(s): "
          f"decode {total:.3f} s (median of {args.repeats})")
    for part, values in runs.items():
        seconds = statistics.median(values)
        print(f"  {part:22s} {seconds:.3f} s  {100 * seconds / total:4.1f}%")


if __name__ == "__main__":
    main()
