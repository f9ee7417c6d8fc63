"""Bottom prior variants, trained side by side: does a candidate design beat the shipped one?

The bottom level's codes are most of a file, so its prior is where rate is won. This probe trains the bottom
prior of a priors checkpoint twice, on the same batches for the same number of steps, on the code cache of a
`hvqcodec train priors` run, and prints held-out bits per code for each bottom rate weight (the cache's crops were
coded with weights drawn by a seeded generator, reproduced here). Candidates (`--candidate`):

- `weight-aware`: told the bottom rate weight a file was coded with. A variable-rate autoencoder (config
  bottom_lambdas) codes each image's bottom with one of several weights and one prior serves them all, so it
  must infer the weight from the codes; a learned vector per weight added to its conditioning removes that (the
  file header would have to carry the weight's index).
- `KEY=VALUE,...`: PriorConfig fields changed (e.g. `causal_blocks=4`); the checkpoint starts it as the same
  function (priors.adapt_state: extra blocks as the identity).

    python benchmarks/bottom_prior_probe.py runs/priors-vr3/checkpoint.pt runs/priors-vr3/codes.pt \
        --candidate weight-aware --lambdas 0,0,0.003,0.01,0.02 --seed 3 --minutes 20 [--subpixel] [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from torch import nn

from hvqcodec.priors import LevelPrior, PriorConfig, bits_per_code, adapt_state


class WeightAwarePrior(LevelPrior):
    """The bottom LevelPrior plus one learned conditioning vector per rate weight (zero at the start)."""

    def __init__(self, codebook_size, upper_sizes, config, weights: int) -> None:
        super().__init__(codebook_size, upper_sizes, config)
        self.weight_embedding = nn.Embedding(weights, config.channels)
        nn.init.zeros_(self.weight_embedding.weight)
        self.weight_index: torch.Tensor | None = None
        inner = self.conditioning.forward

        def conditioning(upper_codes):
            return inner(upper_codes) + self.weight_embedding(self.weight_index)[:, :, None, None]
        self.conditioning.forward = conditioning


def reproduce_weights(count: int, choices: int, seed: int, batch: int = 16) -> torch.Tensor:
    """The weight index of each crop, as prior_training.encode_crops drew them (batches of 16, one generator)."""
    generator = torch.Generator().manual_seed(seed)
    drawn = [torch.randint(choices, (min(batch, count - s),), generator=generator) for s in range(0, count, batch)]
    return torch.cat(drawn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("codes", type=Path)
    parser.add_argument("--lambdas", default="0,0,0.003,0.01,0.02", help="the autoencoder's bottom_lambdas")
    parser.add_argument("--seed", type=int, default=3, help="the code cache's weight seed (train priors --seed + 2)")
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--subpixel", action="store_true", help="sub-position conditioning (from a plain checkpoint)")
    parser.add_argument("--candidate", default="weight-aware", help="weight-aware, or KEY=VALUE,... config changes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    lambdas = [float(x) for x in args.lambdas.split(",")]
    distinct = sorted(set(lambdas))
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    config = PriorConfig.from_dict(checkpoint["config"])
    if args.subpixel:
        config = dataclasses.replace(config, subpixel_cond=True)
    sizes = list(config.codebook_sizes)
    state = {k[len("levels.2."):]: v for k, v in checkpoint["model"].items() if k.startswith("levels.2.")}
    if args.candidate == "weight-aware":
        candidate = WeightAwarePrior(sizes[2], sizes[:2], config, len(distinct))
    else:
        changes = dict(item.split("=") for item in args.candidate.split(","))
        candidate = LevelPrior(sizes[2], sizes[:2], dataclasses.replace(
            config, **{k: type(getattr(config, k))(v) for k, v in changes.items()}))
    models = {"plain": LevelPrior(sizes[2], sizes[:2], config), args.candidate: candidate}
    for model in models.values():
        own = model.state_dict()
        loaded = adapt_state({f"levels.2.{k}": v for k, v in state.items()}, _Wrapper(model))
        own.update({k[len("levels.2."):]: v for k, v in loaded.items()})
        model.load_state_dict(own)
    codes = torch.load(args.codes, weights_only=True)["codes"][:3]
    count = codes[0].shape[0]
    weight_class = torch.tensor([distinct.index(lambdas[i]) for i in reproduce_weights(count, len(lambdas), args.seed)])
    train_n = count - args.held_out
    optimisers = {n: torch.optim.Adam(m.parameters(), lr=args.lr) for n, m in models.items()}
    generator = torch.Generator().manual_seed(1)
    start, steps = time.monotonic(), 0
    while time.monotonic() - start < args.minutes * 60:
        picks = torch.randint(train_n, (16,), generator=generator)
        batch = [c[picks].long() for c in codes]
        for name, model in models.items():
            if isinstance(model, WeightAwarePrior):
                model.weight_index = weight_class[picks]
            loss = bits_per_code([model(batch[2], batch[:2])], [batch[2]])[0]
            optimisers[name].zero_grad()
            loss.backward()
            optimisers[name].step()
        steps += 1
    results = {}
    with torch.no_grad():
        for name, model in models.items():
            model.eval()
            per_class = torch.zeros(len(distinct))
            counts = torch.zeros(len(distinct))
            for s in range(train_n, count, 50):
                batch = [c[s:s + 50].long() for c in codes]
                classes = weight_class[s:s + 50]
                if isinstance(model, WeightAwarePrior):
                    model.weight_index = classes
                logits = model(batch[2], batch[:2])
                bits = nn.functional.cross_entropy(logits, batch[2], reduction="none").mean((1, 2)) / torch.log(
                    torch.tensor(2.0))
                per_class.index_add_(0, classes, bits)
                counts.index_add_(0, classes, torch.ones_like(bits))
            results[name] = (per_class / counts).tolist()
    print(f"{steps} steps each, {args.minutes} minutes; held-out bits per bottom code by bottom weight:")
    print(f"{'':>13} " + " ".join(f"{w:>8}" for w in distinct))
    for name, values in results.items():
        print(f"{name:>13} " + " ".join(f"{v:8.4f}" for v in values))
    change = [100 * (b / a - 1) for a, b in zip(results["plain"], results[args.candidate])]
    print(f"{'change':>13} " + " ".join(f"{c:+7.2f}%" for c in change))
    if args.json:
        args.json.write_text(json.dumps({
            "name": "bottom-prior-probe",
            "description": f"held-out bits per bottom code of {args.checkpoint}'s bottom prior trained {steps} more "
                           f"steps as it is and as candidate {args.candidate}",
            "command": f"python benchmarks/bottom_prior_probe.py {args.checkpoint} {args.codes} --candidate "
                       f"{args.candidate} --lambdas "
                       f"{args.lambdas} --seed {args.seed} --minutes {args.minutes}"
                       + (" --subpixel" if args.subpixel else ""),
            "results": {"weights": distinct, "steps": steps, "bits_per_code": results, "change_percent": change},
        }, indent=1) + "\n")


class _Wrapper(nn.Module):
    """Presents a lone level prior under the name levels.2 (what adapt_state looks up)."""

    def __init__(self, level: LevelPrior) -> None:
        super().__init__()
        self.levels = nn.ModuleList([nn.Identity(), nn.Identity(), level])


if __name__ == "__main__":
    main()
