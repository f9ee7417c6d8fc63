"""Causal against parallel priors for a refinement stage: does a PixelCNN over the stage's own codes pay for
its wavefront?

The shipped stage priors are fully parallel: a stage's code at a position is predicted from the three levels and
the earlier stages (known everywhere when the stage is decoded), so a stage decodes in G steps. A causal prior
adds the stage's own already-decoded neighbours (the same 5x5 type-A masked convolution as the level priors),
which costs a wavefront per stage when decoding (as many sequential steps as the bottom level). This script
trains both, the same minutes on the same codes (the code cache of a `hvqcodec train priors` run, split 90/10
by crop), and prints the held-out bits per code of each.

    python benchmarks/stage_prior_causal.py runs/priors-ecvq/codes.pt --stage 2 --minutes 4 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hvqcodec.priors import KERNEL, PriorConfig, StagePrior, bits_per_code, causal_mask, gate


class CausalStagePrior(StagePrior):
    """StagePrior plus a type-A masked convolution over the stage's own (first group's) codes."""

    def __init__(self, stage: int, level_sizes, config: PriorConfig) -> None:
        super().__init__(stage, level_sizes, config)
        c = config.stage_channels
        self.own_embedding = nn.Embedding(config.refine_codebook_size, c)
        self.masked = nn.Conv2d(c, 2 * c, KERNEL, padding=KERNEL // 2)
        self.masked_out = nn.Conv2d(c, c, 1)
        self.register_buffer("mask", causal_mask(), persistent=False)

    def context(self, codes):
        x = super().context(codes)
        own = self.own_embedding(self._own_codes[:, 0]).permute(0, 3, 1, 2)
        return x + self.masked_out(gate(F.conv2d(own, self.masked.weight * self.mask, self.masked.bias,
                                                 padding=KERNEL // 2)))

    def forward(self, codes, stage_codes):
        self._own_codes = stage_codes
        return super().forward(codes, stage_codes)


def train(model: nn.Module, train_codes, val_codes, stage: int, minutes: float, batch: int = 16) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    n = train_codes[0].shape[0]
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < minutes * 60:
        fraction = (time.perf_counter() - start) / (minutes * 60)
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(fraction * torch.pi)).item()))
        pick = torch.randint(0, n, (batch,), generator=generator)
        codes = [c[pick].long() for c in train_codes]
        loss = bits_per_code([model(codes, codes[3 + stage])], [codes[3 + stage]])[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    model.eval()
    with torch.no_grad():
        total, count = 0.0, 0
        for i in range(0, val_codes[0].shape[0], 64):
            codes = [c[i:i + 64].long() for c in val_codes]
            bits = bits_per_code([model(codes, codes[3 + stage])], [codes[3 + stage]])[0]
            total += float(bits) * codes[0].shape[0]
            count += codes[0].shape[0]
    return {"steps": steps, "val_bits_per_code": total / count,
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("codes", help="codes.pt of a `hvqcodec train priors` run")
    parser.add_argument("--stage", type=int, default=1, help="0-based refinement stage (default 1: the second)")
    parser.add_argument("--minutes", type=float, default=4.0, help="training minutes per variant")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    codes = torch.load(args.codes, weights_only=True)["codes"]
    n = codes[0].shape[0]
    split = n - max(1, n // 10)
    train_codes, val_codes = [c[:split] for c in codes], [c[split:] for c in codes]
    # Codebook sizes from the run's checkpoint beside the cache (the codes alone may not use every code).
    from hvqcodec.train import load_checkpoint
    run = PriorConfig.from_dict(load_checkpoint(Path(args.codes).with_name("checkpoint.pt"), "priors")["config"])
    config = PriorConfig(codebook_sizes=run.codebook_sizes, refine_stages=run.refine_stages,
                         refine_groups=run.refine_groups, refine_codebook_size=run.refine_codebook_size,
                         stage_channels=args.channels, stage_blocks=args.blocks)
    level_sizes = list(run.codebook_sizes)
    results = {}
    for name, cls in (("parallel", StagePrior), ("causal", CausalStagePrior)):
        torch.manual_seed(0)
        model = cls(args.stage, level_sizes, config)
        results[name] = train(model, train_codes, val_codes, args.stage, args.minutes)
        print(name, results[name], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "name": "stage-prior-causal", "description": __doc__.split("\n\n")[0],
            "results": {"codes": args.codes, "stage": args.stage, "minutes": args.minutes,
                        "train_crops": split, "val_crops": n - split, **results}}, indent=1))


if __name__ == "__main__":
    main()
