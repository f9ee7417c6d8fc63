"""The codec API: ties the autoencoder, the integer priors, the range coder and the .hvq container together.

    data = hvqcodec.compress("photo.png")            # bytes of a .hvq file
    image = hvqcodec.decompress(data)                # PIL.Image, in the original's mode and size

Images are cut into tiles of TILE_SIZE pixels (one tile for anything up to that size) so memory stays bounded
on large images; each tile's three levels are coded as separate streams, top first, so a truncated file or a
`levels` limit still gives the preview that the complete levels allow.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from . import container
from .entropy import (STAGE_CHUNK, candidate_frequencies, decode_level, decode_stage, encode_level, encode_stage,
                      spans)
from .errors import ModelError
# Re-exported (part of this module's interface): DEFAULT_QUALITY, MAX_EFFORT, grid_sizes, shared_files.
from .filecoding import (DEFAULT_QUALITY, ECVQ_CANDIDATES, MAX_EFFORT, CompressedImage,  # noqa: F401
                         DecodedImage, OperatingPoint, Progress, decode_file, encode_file, grid_sizes, model_ladder,
                         quality_point, shared_files)
from .intprior import FREQ_TOTAL, IntPrior, LevelState
from .refine import refine_bottom_latent
from .device import decoder_low_precision, resolve_device
from .zoo import ModelBundle, default_model, load_bundle

TILE_SIZE = container.TILE_SIZE


class Codec:
    """A shipped model loaded on a device, ready to compress and decompress."""

    def __init__(self, bundle: ModelBundle, device: str | torch.device = "cpu",
                 decoder_precision: str | None = None) -> None:
        if bundle.prior_tables is None or bundle.prior_config is None:
            raise ModelError(f"model {bundle.name!r} has no trained priors, so it cannot compress "
                             "(export it with --priors)")
        self.name, self.sha256 = bundle.name, bundle.sha256
        self.device = torch.device(device)
        self.autoencoder = bundle.autoencoder.to(self.device).eval()
        # Pixels only: the bulk of the decoder in bfloat16 where that is native (device.decoder_low_precision).
        self.low_precision_decoder = decoder_low_precision(self.device, decoder_precision)
        config = bundle.prior_config
        self.prior = IntPrior(config.causal_blocks, config.cond_blocks, bundle.prior_tables, self.device,
                              config.refine_stages, config.refine_groups, config.stage_blocks, config.coding_block)
        self.num_streams = self.autoencoder.config.num_streams
        config_lambdas = tuple(self.autoencoder.config.refine_lambdas)
        self.trained_stage_lambdas = config_lambdas or (0.0,) * self.autoencoder.config.refine_stages
        self.tile_size = TILE_SIZE  # what files made with this codec use, and what decoding accepts
        # quality -> operating point, calibrated on training images; without one every quality codes everything.
        self.calibrated = bool(bundle.ladder)
        self.ladder = model_ladder(bundle.ladder, self.num_streams)

    def operating_point(self, quality: int | None = None) -> OperatingPoint:
        return quality_point(self.ladder, quality)

    @torch.no_grad()
    def encode_codes(self, rgb: np.ndarray, point: OperatingPoint | None = None,
                     known: dict[int, Any] | None = None, effort: int = 0) -> list[torch.Tensor]:
        """(H, W, 3) uint8 -> the code grids of the padded image that an operating point codes.

        With a rate weight > 0 the bottom codes and each refinement group are chosen by squared distance +
        lambda * bits under the integer prior (entropy-constrained selection); the decoder needs nothing to know
        it. A stage's weight is the point's plus the one the stage was trained with. `known`, if given, receives
        what the selection computed that coding needs again (stream index -> a selected stage's (G, h*w, K)
        frequencies, or the bottom level's LevelState), for `compress` to pass to its encoder.
        effort > 0 first refines the bottom latent with that many gradient steps (`refine`).
        """
        point = point or OperatingPoint(self.num_streams)
        x = torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255).to(self.device)  # a copy: rgb may be read-only
        model = self.autoencoder
        stage_weights = [point.stage_weight + lam for lam in self.trained_stage_lambdas[:max(0, point.streams - 3)]]
        top, mid, latent = model.encode_latent(x)
        if effort > 0 and point.streams >= 3:
            latent = refine_bottom_latent(model, x, top, mid, latent, effort, point.streams - 3, point.bottom_lam)
        if point.streams < 3 or (point.lam <= 0 and not any(w > 0 for w in stage_weights)):
            return [c[0] for c in [top, mid] + model.quantise_bottom(latent, point.bottom_lam)][:point.streams]
        latent = latent[0]  # (D, h, w)
        codes = [top[0], mid[0]]
        if point.lam > 0:
            bottom, state = self._ecvq_bottom(latent, codes, point.lam, point.bottom_lam)
            codes.append(bottom)
            if known is not None:
                known[2] = state
        else:
            codes.append(model.bottom_codes(latent[None], point.bottom_lam)[0])
        total = model.quantisers[2].lookup(codes[2][None])[0]
        for stage, weight in enumerate(stage_weights):
            stage_codes, frequencies = self._ecvq_stage(stage, latent - total, codes, weight)
            if known is not None:
                known[3 + stage] = frequencies
            total = total + model.refiners[stage].lookup(stage_codes[None])[0]
            codes.append(stage_codes)
        return codes

    def _ecvq_bottom(self, latent: torch.Tensor, codes: list[torch.Tensor], lam: float,
                     bottom_lam: float = 0.0) -> tuple[torch.Tensor, LevelState]:
        """Bottom codes minimising distance (+ bottom_lam * bits under the codebook's usage) + lam * bits among
        the best few codewords, the bits under the causal prior with the best codes as context (one parallel
        pass); and the bottom level's state from that pass (its conditioning serves the coding too)."""
        d, h, w = latent.shape
        flat = latent.permute(1, 2, 0).reshape(-1, d)
        row_lambdas = flat.new_full((flat.shape[0],), bottom_lam) if bottom_lam > 0 else None
        candidate_distances, candidates = self.autoencoder.quantisers[2].candidates(flat, ECVQ_CANDIDATES, row_lambdas)
        nearest = candidates[:, 0].view(h, w)
        freq, state = candidate_frequencies(self.prior.levels[2], nearest, codes, candidates)
        bits = -torch.log2(freq.cpu() / FREQ_TOTAL)
        cost = candidate_distances.double() + lam * bits
        return candidates.gather(1, cost.argmin(1, keepdim=True)).view(h, w), state

    def _ecvq_stage(self, stage: int, residual: torch.Tensor, codes: list[torch.Tensor],
                    lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        """A refinement stage's codes (G, h, w), group by group, each minimising distance + lam * bits under the
        stage prior (exact: a group's probabilities depend only on codes already chosen), and the frequencies
        (G, h*w, K) they are coded with (int32: below 2^FREQ_BITS). Chunk by chunk: bounded memory on large tiles."""
        prior, refiner = self.prior.stages[stage], self.autoencoder.refiners[stage]
        d, h, w = residual.shape
        context, previous, chosen = prior.context(codes), None, []
        frequencies = torch.empty((prior.groups, h * w, prior.codebook_size), dtype=torch.int32)
        for group, part in enumerate(residual.chunk(prior.groups, dim=0)):
            context = prior.group_context(context, group, previous)
            flat = part.permute(1, 2, 0).reshape(h * w, -1)
            codebook = refiner.quantisers[group].codebook
            previous = torch.empty(h * w, dtype=torch.int64, device=residual.device)
            for a, b in spans(h * w, STAGE_CHUNK):
                freq = prior.group_head(context[a:b], group)
                # distance + lam * bits, bits = -log2(freq / FREQ_TOTAL), in fewer passes over (chunk, K): the
                # same values bit for bit (scaling by 2^-20 is exact, and a + lam * (-l) == a - lam * l).
                log_p = torch.log2(freq.double().cpu() * (1.0 / FREQ_TOTAL))  # not in place: freq is coded
                distances = torch.cdist(flat[a:b], codebook).pow(2).double().cpu()
                previous[a:b] = distances.sub_(log_p.mul_(lam)).argmin(1).to(residual.device)
                frequencies[group, a:b] = freq.cpu().to(torch.int32)
            chosen.append(previous.view(h, w))
        return torch.stack(chosen), frequencies

    def reconstruct(self, tile_codes: list[list[torch.Tensor]], width: int, height: int,
                    tile_size: int, progress: Progress | None = None, float32: bool = False) -> np.ndarray:
        """Each tile's code grids (a prefix of the streams, as decoded or as `compress` returns them) -> the
        (H, W, 3) uint8 picture: what decompress gives, without range decoding. progress(done, total) is called
        as each tile is done. float32: never the bfloat16 decoder (the picture under a residual layer)."""
        rgb = np.zeros((height, width, 3), dtype=np.uint8)
        for done, ((top, left, h, w), codes) in enumerate(
                zip(container.tile_grid(width, height, tile_size), tile_codes), 1):
            rgb[top:top + h, left:left + w] = self.decode_codes(codes, h, w, float32)
            if progress is not None:
                progress(done, len(tile_codes))
        return rgb

    @torch.no_grad()
    def decode_codes(self, codes: list[torch.Tensor], height: int, width: int, float32: bool = False) -> np.ndarray:
        """Code grids (a prefix of the streams) -> (H, W, 3) uint8 (float32: never the bfloat16 decoder)."""
        image = self.autoencoder.decode([c[None].to(self.device) for c in codes],
                                        self.low_precision_decoder and not float32)[0, :, :height, :width]
        return image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    def compress(self, source, quality: int | None = None, point: OperatingPoint | None = None,
                 max_pixels: int = container.DEFAULT_MAX_PIXELS, effort: int = 0,
                 progress: Progress | None = None) -> CompressedImage:
        """Any image (path, bytes, PIL image, uint8 array) -> .hvq bytes and figures about them.

        `quality` (1-100, higher = larger and better) picks an operating point from the model's calibrated
        ladder; `point` gives one directly. Images over max_pixels are refused (ImageError). `effort` > 0 spends
        that many gradient steps per tile on a better bottom latent (`refine`): a slower encode, the same format.
        `progress(done, total)` is called as each tile is coded (large images take tens of seconds)."""
        return encode_file(self, source, point or self.operating_point(quality), max_pixels, effort, progress)

    def encode_tiles(self, tiles: Sequence[np.ndarray], point: OperatingPoint, effort: int = 0
                     ) -> Iterator[tuple[list[torch.Tensor], list[tuple[bytes, float]]]]:
        """`encode_tile` of each tile, one after the other: what `filecoding.encode_file` asks of a coder."""
        return (self.encode_tile(rgb, point, effort) for rgb in tiles)

    def encode_tile(self, rgb: np.ndarray, point: OperatingPoint, effort: int = 0
                    ) -> tuple[list[torch.Tensor], list[tuple[bytes, float]]]:
        """One tile's (h, w, 3) uint8 pixels -> its code grids (`encode_codes`) and each stream of codes as (bytes,
        information in bits)."""
        known: dict[int, Any] = {}
        codes = self.encode_codes(rgb, point, known, effort)
        encoded = []
        for index in range(point.streams):
            if index < 3:
                stream = encode_level(self.prior.levels[index], codes[index], codes[:index], state=known.get(index))
            else:
                stream = encode_stage(self.prior.stages[index - 3], codes, codes[index], known.get(index))
            encoded.append((stream.data, stream.cross_entropy_bits))
        return codes, encoded

    def decompress(self, data: bytes, levels: int | None = None,
                   max_pixels: int = container.DEFAULT_MAX_PIXELS, progress: Progress | None = None) -> DecodedImage:
        """.hvq bytes -> image; `levels` limits the reconstruction to the first streams (1 or 2: a preview).

        Files over max_pixels, or tiled otherwise than this codec tiles, are refused from their header.
        `progress(done, total)` is called as each stream (all tiles together) and then each tile's picture is
        done. The file's structure is `runtime.decode_file`'s, shared with the runtime without torch."""
        return decode_file(self, data, levels, max_pixels, progress)

    def decode_level_streams(self, level: int, streams: Sequence[bytes], sizes: Sequence[tuple[int, int]],
                             tile_codes: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        return decode_level(self.prior.levels[level], streams, sizes, tile_codes)

    def decode_stage_streams(self, stage: int, streams: Sequence[bytes], tile_codes: Sequence[Sequence[torch.Tensor]]
                             ) -> list[torch.Tensor]:
        return [decode_stage(self.prior.stages[stage], data, codes) for data, codes in zip(streams, tile_codes)]


@functools.lru_cache(maxsize=4)
def load_codec(model: str | None = None, device: str = "auto", decoder_precision: str | None = None) -> Codec:
    """A Codec for a shipped model, cached: loading and hashing the weights happens once per process.
    decoder_precision: auto, float32 or bfloat16 (`device.decoder_low_precision`; None: $HVQCODEC_DECODER_PRECISION
    as it is when the codec loads, else auto)."""
    return Codec(load_bundle(model or default_model()), resolve_device(device), decoder_precision)


def codec_for(data: bytes, device: str = "auto") -> Codec:
    """The Codec of the model that a .hvq file names (ModelError if it is not installed or differs)."""
    header = container.read_header(data)
    try:
        codec = load_codec(header.model_name, device)
    except ModelError as exc:
        raise ModelError(f"file needs model {header.model_name} ({header.model_hash}): {exc}") from None
    return codec  # Codec.decompress checks the weights hash


def sample(count: int = 1, size: tuple[int, int] = (256, 256), seed: int = 0, temperature: float = 1.0,
           model: str | None = None, source: bytes | None = None, keep_levels: int = 1,
           device: str = "auto") -> list[Image.Image]:
    """New images drawn from the model's priors (the same seed gives the same codes on any machine).

    size is (width, height). With `source` (.hvq bytes) the file's first keep_levels streams are kept and the
    rest are sampled: variations of that picture, at its size, made with the model the file names."""
    from .sampling import sample_images

    codec = codec_for(source, device) if source is not None else load_codec(model, device)
    return [Image.fromarray(rgb) for rgb in sample_images(codec, count, size, seed, temperature, source, keep_levels)]
