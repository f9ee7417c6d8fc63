"""Benchmark a shipped autoencoder on Kodak (or any folder): PSNR / MS-SSIM of the full reconstruction and of
both previews, per-level code usage, raw index cost, parameters, encode+decode seconds per image.

    python benchmarks/autoencoder.py                        # hvq-small on ../shared/datasets/kodak
    python benchmarks/autoencoder.py --model hvq-small --update-manifest

Prints a summary; writes JSON ({name, description, results}) only where asked: --json PATH, or --update for the
committed benchmarks/results/autoencoder-<model>.json.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from hvqcodec.data import find_images
from hvqcodec.evaluate import evaluate_autoencoder, write_report
from hvqcodec.zoo import available_models, default_model, load_model, models_dir, record_metrics

ROOT = Path(__file__).resolve().parent.parent


def _unwritten_report(path, name: str, description: str, results: dict) -> dict:
    """The report write_report would write, kept in memory (nothing in the repository changes unless asked)."""
    return {"name": name, "description": description, "results": results,
            "command": " ".join(["python"] + sys.argv)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model(), help="shipped model name (see `hvqcodec models list`)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "kodak"), help="image folder")
    parser.add_argument("--json", help="write the results JSON here")
    parser.add_argument("--update", action="store_true",
                        help="write the committed benchmarks/results/autoencoder-<model>.json")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--update-manifest", action="store_true",
                        help="record the mean figures as the model's measured metrics in models/manifest.json")
    args = parser.parse_args()
    console = Console(stderr=True)
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    paths = find_images(args.data)
    results = evaluate_autoencoder(model, list(track(paths, description="evaluating", console=console)))
    entry = available_models()[args.model]
    out = (Path(args.json) if args.json else
           ROOT / "benchmarks" / "results" / f"autoencoder-{args.model}.json" if args.update else None)
    report = (write_report if out is not None else _unwritten_report)(out, f"hvqcodec-autoencoder-{args.model}", (
        f"Autoencoder of {args.model} ({entry['sha256'][:12]}) on {Path(args.data).name}: 8-bit RGB reconstruction "
        f"from 3 levels and previews from top+mid and top; {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, torch {torch.__version__}"), results)

    table = Table(title=f"{args.model} on {args.data} ({results['images']} images)")
    for column in ("levels", "PSNR dB", "MS-SSIM"):
        table.add_column(column)
    for key, label in (("full", "top+mid+bottom"), ("top_mid", "top+mid (preview)"), ("top", "top (preview)")):
        ms = results["ms_ssim"][key]
        table.add_row(label, f"{results['psnr'][key]:.2f}", f"{ms:.4f}" if ms is not None else "-")
    console.print(table)
    usage = ", ".join(f"{n}: {u['used']}/{u['codebook_size']} used ({100 * u['dead_fraction']:.1f}% dead), "
                      f"perplexity {u['perplexity']:.0f}" for n, u in results["code_usage"].items())
    console.print(f"code usage: {usage}")
    console.print(f"raw index cost {results['raw_index_bpp']:.4f} bpp; {results['parameters'] / 1e6:.2f}M parameters; "
                  f"encode+decode {results['encode_decode_seconds_median']:.3f} s/image (median, {args.threads} threads)")
    if out is not None:
        console.print(f"wrote {out}")

    if args.update_manifest:
        record_metrics(args.model, {
            "dataset": Path(args.data).name,
            "psnr": results["psnr"], "ms_ssim": results["ms_ssim"],
            "raw_index_bpp": results["raw_index_bpp"],
            "dead_fraction": {n: u["dead_fraction"] for n, u in results["code_usage"].items()},
            "encode_decode_seconds_median": results["encode_decode_seconds_median"],
            "command": report["command"],
        })
        console.print(f"updated {models_dir() / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
