"""The optional C step function of the level priors (hvqcodec/_stepkernel.c): the same integers as
`IntLevelPrior.frequencies`, one call per batch of positions instead of some 90 torch operations.

Used on the CPU for 8-bit tables at temperature 1 (what coding uses); everything else (16-bit tables, CUDA,
sampling at another temperature, an install without a C compiler) runs the torch version. HVQ_STEP_KERNEL=0
in the environment turns it off (to compare the two).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Sequence

try:
    from . import _stepkernel
except ImportError:  # built without a C compiler: the torch version runs
    _stepkernel = None

# Frequencies times 2^-20 (intprior.FREQ_TOTAL = 2^20, checked there): the range coder's probabilities, exactly.
PROBABILITY_SCALE = 2.0 ** -20

if TYPE_CHECKING:  # torch is imported where tensors are made: `hvqcodec --version` asks `available()` without it
    import numpy as np
    import torch

    from .intprior import IntLevelPrior


def _openmp_threads_sleep_soon() -> bool:
    """Whether torch's OpenMP threads were told to sleep soon after each parallel operation: the command line's
    GOMP_SPINCOUNT=3000 (cli.OPENMP_SPIN_COUNT) or less, or OMP_WAIT_POLICY=PASSIVE (read when torch loaded,
    which the command line sets them before)."""
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return True
    try:
        return int(os.environ.get("GOMP_SPINCOUNT", "")) <= 3000
    except ValueError:
        return False


# Batches of this many positions or more (the encoder's parallel passes, the lockstep steps of a large image's
# tiles) go to the torch version, unless torch's OpenMP threads sleep soon after their work: while they spin
# they compete with the helper thread: with the C function for every batch, Kodak encodes took 1.20x as long as
# with torch under libgomp's default spin, and 0.95x under the command line's GOMP_SPINCOUNT=3000 (0.99x with
# this limit): benchmarks/step_kernel.py, results/step-kernel-avx2-all-batches.json and -cli-spin*.json.
LARGE_BATCH = 512
# The limit in force: decided from the environment on first use (`max_positions`), when torch has loaded with
# the settings its OpenMP runtime read; set it to override (benchmarks, tests).
MAX_POSITIONS: int | None = None


def max_positions() -> int:
    """Batches of at least this many positions use the torch version (see LARGE_BATCH)."""
    global MAX_POSITIONS
    if MAX_POSITIONS is None:
        MAX_POSITIONS = 1 << 62 if _openmp_threads_sleep_soon() else LARGE_BATCH
    return MAX_POSITIONS


# A batch of at least this many positions is split in two halves, one computed on a helper thread (the C
# function runs without the GIL); a smaller one (a few tens of microseconds of work) is not worth the hand-off.
SPLIT_POSITIONS = 24

# The calling thread's share of a split batch: a little over half, since the helper starts some tens of
# microseconds later (Kodak levels' decode 5-10% faster than with halves: three interleaved runs of four images).
MAIN_SHARE = 0.55

_helper: ThreadPoolExecutor | None = None
_helper_lock = threading.Lock()


def _helper_thread() -> ThreadPoolExecutor:
    global _helper
    with _helper_lock:
        if _helper is None:
            _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hvqcodec-step")
        return _helper


def _forget_helper() -> None:  # a forked child process has no thread behind its parent's pool
    global _helper
    _helper = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper)


def built() -> bool:
    """Whether the C step function was built at install (a C compiler was found)."""
    return _stepkernel is not None


def available() -> bool:
    """Whether the C step function is built and not turned off (HVQ_STEP_KERNEL=0)."""
    return built() and os.environ.get("HVQ_STEP_KERNEL", "1") != "0"


def int8_supported() -> bool:
    """Whether this CPU runs the C step function's int8 path (AVX-512 VNNI; the same integers, faster)."""
    return built() and hasattr(_stepkernel, "int8_supported") and _stepkernel.int8_supported()


def int8_available() -> bool:
    """Whether new level kernels take the int8 path: supported and not turned off (HVQ_STEP_KERNEL_INT8=0)."""
    return int8_supported() and os.environ.get("HVQ_STEP_KERNEL_INT8", "1") != "0"


def amx_int8() -> bool:
    """Whether the int8 path's products run on AMX tiles (AMX-INT8, where Linux grants this process the tiles'
    state; the same integers as with AVX-512 VNNI, whose products take over elsewhere or when `set_amx(False)`)."""
    return built() and hasattr(_stepkernel, "amx_int8") and bool(_stepkernel.amx_int8())


def amx_int8_supported() -> bool:
    """Whether this CPU and OS run the int8 path's products on AMX tiles (whatever `set_amx` says now)."""
    if not built() or not hasattr(_stepkernel, "_amx"):
        return False
    previous = _stepkernel._amx(True)
    try:
        return bool(_stepkernel.amx_int8())
    finally:
        _stepkernel._amx(previous)


def set_amx(on: bool) -> bool:
    """Take AMX tiles for the int8 path's products where supported (on unless turned off, which only the tests and
    benchmarks/step_kernel.py --baseline vnni do, to compare the two: nothing computed depends on it). Returns the
    previous setting (False where the C module is not built)."""
    return built() and hasattr(_stepkernel, "_amx") and bool(_stepkernel._amx(bool(on)))


def set_prefetch(on: bool) -> bool:
    """Whether the step function prefetches the next positions' table rows while the ones before them compute (on
    unless turned off, which only `benchmarks/step_kernel.py --baseline no-prefetch` does; nothing computed
    depends on it).
    Returns the previous setting (False where the C module is not built)."""
    return built() and hasattr(_stepkernel, "_prefetch") and bool(_stepkernel._prefetch(bool(on)))


def _split(count: int, threads: int, run) -> None:
    """run(start, stop) over positions 0..count-1; with threads > 1, a batch of SPLIT_POSITIONS or more is shared
    with a helper thread, MAIN_SHARE of it here (each position's frequencies are its own: the same integers
    however it is split)."""
    if threads > 1 and count >= SPLIT_POSITIONS:
        half = int(count * MAIN_SHARE)
        second = _helper_thread().submit(run, half, count)
        run(0, half)
        if second.cancel():  # the helper has not started (the other core is busy): do it here, not wait
            run(half, count)
        else:
            second.result()
    elif count:
        run(0, count)


def smallest(table: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The k smallest values of each row of a CPU float32 (rows, columns) table, ascending (the lower column first
    among equal values), and their columns (int64); None where the C module is not built (use torch.topk)."""
    import torch

    if (_stepkernel is None or table.device.type != "cpu" or table.dtype != torch.float32 or table.dim() != 2
            or table.requires_grad or not 1 <= k <= table.shape[1]):
        return None
    table = table.contiguous()
    rows, columns = table.shape
    values = torch.empty((rows, k), dtype=torch.float32)
    indices = torch.empty((rows, k), dtype=torch.int64)

    def run(start: int, stop: int) -> None:  # rows start..stop-1
        _stepkernel.smallest(table.data_ptr() + 4 * columns * start, stop - start, columns, k,
                             values.data_ptr() + 4 * k * start, indices.data_ptr() + 8 * k * start)
    _split(rows, torch.get_num_threads(), run)
    return values, indices


def nearest_codes(rows: np.ndarray, minus_doubled_transposed: np.ndarray, squared_norms: np.ndarray,
                  bits: np.ndarray | None, lambdas: float, count: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The encoder's code search in C (numpy float32 arrays): each row's (M, D) `count` codes of least
    (x . -2c + |x|^2) + |c|^2 (+ lambdas * bits where lambdas > 0), as costs (M, count) float32 and codes (M, count)
    int64, least first, the lower code first among equal costs; None where the C module is not built (numpy's
    table then)."""
    import numpy as np

    if _stepkernel is None or not hasattr(_stepkernel, "nearest_codes"):
        return None
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    dim, codes = minus_doubled_transposed.shape
    if rows.ndim != 2 or rows.shape[1] != dim or not 1 <= count <= codes:
        raise ValueError(f"nearest_codes: rows of {dim} values and 1 <= count <= {codes} are needed")
    tables = [np.ascontiguousarray(minus_doubled_transposed, dtype=np.float32),
              np.ascontiguousarray(squared_norms, dtype=np.float32)]
    weights = np.ascontiguousarray(bits, dtype=np.float32) if lambdas > 0 and bits is not None else None
    costs = np.empty((rows.shape[0], count), np.float32)
    indices = np.empty((rows.shape[0], count), np.int64)
    _stepkernel.nearest_codes(rows.ctypes.data, rows.shape[0], dim, tables[0].ctypes.data, tables[1].ctypes.data,
                              None if weights is None else weights.ctypes.data, float(lambdas), codes, count,
                              costs.ctypes.data, indices.ctypes.data)
    return costs, indices


def _address(array: "torch.Tensor | np.ndarray") -> int:
    """Where a CPU tensor's or a numpy array's data starts (the C functions take addresses, whoever owns them:
    the torch codec and the runtime without torch share these classes)."""
    import numpy as np

    return array.ctypes.data if isinstance(array, np.ndarray) else array.data_ptr()


def _contiguous(array: "torch.Tensor | np.ndarray", dtype_name: str, copy: bool = False):
    """A C-contiguous CPU copy or view of `array` in the dtype named (numpy stays numpy, torch stays torch)."""
    import numpy as np

    if isinstance(array, np.ndarray):
        return np.array(array, dtype=dtype_name, copy=True, order="C") if copy else \
            np.ascontiguousarray(array, dtype=dtype_name)
    import torch

    return array.detach().to("cpu", getattr(torch, dtype_name), copy=copy).contiguous()


def _empty_like_input(given: "torch.Tensor | np.ndarray", shape: tuple, dtype_name: str):
    """A new CPU table of the same kind as `given` (numpy array or tensor)."""
    import numpy as np

    if isinstance(given, np.ndarray):
        return np.empty(shape, dtype=dtype_name)
    import torch

    return torch.empty(shape, dtype=getattr(torch, dtype_name))


class _Tables:
    """Holds the tables (tensors or numpy arrays) whose addresses the C function keeps."""

    def __init__(self) -> None:
        self._keep: list = []

    def _keep_tensor(self, tensor):
        self._keep.append(tensor)
        return tensor

    def _float32(self, tensor):
        return self._keep_tensor(_contiguous(tensor, "float32"))

    def _float64(self, tensor):
        return self._keep_tensor(_contiguous(tensor, "float64"))

    def _layers(self, network, names: Sequence[str]) -> tuple:
        """(inputs, outputs, weight, bias_and_half, inv_scale, input_scale) per layer, as the C function takes."""
        layers = []
        for name in names:
            weight, bias_and_half, inv_scale, input_scale, _ = network.layers[name]
            weight, bias_and_half, inv_scale = (self._float32(t) for t in (weight, bias_and_half, inv_scale))
            layers.append((weight.shape[0], weight.shape[1], _address(weight), _address(bias_and_half),
                           _address(inv_scale), float(input_scale or 0.0)))
        return tuple(layers)


class ConvKernel(_Tables):
    """A conditioning stack's 3x3 gated blocks (`_IntNetwork.conv3x3_block`, block after block) in C, on the int8
    path only: each block's neighbourhoods gathered as bytes and multiplied with vpdpbusd, fused with its gate and
    residual, instead of some fifteen torch passes over the grid. Raises ValueError where it cannot run."""

    def __init__(self, network, blocks: Sequence[str], gate_half: int, tanh: torch.Tensor,
                 sigmoid: torch.Tensor) -> None:
        super().__init__()
        names = [n for block in blocks for n in (network._tap_major(f"{block}.in"), f"{block}.out")]
        layers = self._layers(network, names)
        tables = [self._float32(t) for t in (tanh, sigmoid)]
        if [tuple(t.shape) for t in tables] != [(2 * gate_half + 1,)] * 2:
            raise ValueError("gate tables of unexpected sizes for the C conv function")
        self.channels, self.blocks = network.channels, len(blocks)
        self.handle = _stepkernel.convs(self.channels, self.blocks, gate_half, *(_address(t) for t in tables),
                                        layers)

    def run(self, x: torch.Tensor | np.ndarray, h: int, w: int, threads: int = 1) -> torch.Tensor | np.ndarray:
        """x (h * w, C) on the activation grid -> the same through every block (a new float32 table, numpy for
        numpy)."""
        if tuple(x.shape) != (h * w, self.channels):
            raise ValueError(f"a grid of {h} x {w} positions of {self.channels} values expected, got {tuple(x.shape)}")
        x = _contiguous(x, "float32", copy=True)
        grid = _empty_like_input(x, ((h + 2) * (w + 2) * self.channels,), "uint8")
        x_address, grid_address = _address(x), _address(grid)
        for block in range(self.blocks):
            _stepkernel.conv_grid(self.handle, block, x_address, h, w, grid_address)
            _split(h * w, threads, lambda start, stop: _stepkernel.conv_block(
                self.handle, block, grid_address, x_address, h, w, start, stop))
        return x


class LinearKernel(_Tables):
    """Layers applied to each row on its own (`_IntNetwork.linear`: the input rounded to 8 bits, the exact product,
    the rounding shift) in C, on the int8 path only, written as int16: one pass over the rows instead of an int8
    matmul and some six torch passes over a (rows, outputs) float32 table (a level's conditioning projections).
    Raises ValueError where it cannot run."""

    def __init__(self, network, names: Sequence[str]) -> None:
        super().__init__()
        layers = self._layers(network, names)
        self.inputs, self.outputs = [layer[0] for layer in layers], [layer[1] for layer in layers]
        self.handle = _stepkernel.linears(layers)

    def run(self, x: torch.Tensor | np.ndarray, layer: int, threads: int = 1, out: np.ndarray | None = None
            ) -> torch.Tensor | np.ndarray:
        """x (rows, inputs) on the activation grid -> layer `layer` of each row, (rows, outputs) int16 (numpy for
        numpy), written into `out` (a contiguous int16 numpy table of that shape) where given."""
        x = _contiguous(x, "float32")
        if len(x.shape) != 2 or x.shape[1] != self.inputs[layer]:
            raise ValueError(f"rows of {self.inputs[layer]} values expected, got {tuple(x.shape)}")
        if out is None:
            out = _empty_like_input(x, (x.shape[0], self.outputs[layer]), "int16")
        elif (out.dtype.name != "int16" or not out.flags.c_contiguous
              or tuple(out.shape) != (x.shape[0], self.outputs[layer])):
            raise ValueError(f"out: a contiguous int16 ({x.shape[0]}, {self.outputs[layer]}) table expected")
        x_address, out_address = _address(x), _address(out)
        _split(x.shape[0], threads, lambda start, stop: _stepkernel.linear_rows(
            self.handle, layer, x_address, start, stop, out_address))
        return out


class HeadKernel(_Tables):
    """A refinement stage group's head (`IntStagePrior.group_head`: one gated block and the head, each position
    on its own) in C, on the int8 path only (elsewhere the torch version runs, as fast as this in its own
    operations: int8 matmuls over thousands of rows). `usable` says whether it runs."""

    def __init__(self, prior, group: int, gate_half: int, exp_max: int, tanh: torch.Tensor,
                 sigmoid: torch.Tensor) -> None:
        super().__init__()
        layers = self._layers(prior, [f"group{group}.in", f"group{group}.out", f"head{group}"])
        tables = [self._float32(t) for t in (tanh, sigmoid)]
        exp = self._float64(prior.exp)
        if [tuple(t.shape) for t in tables] != [(2 * gate_half + 1,)] * 2 or tuple(exp.shape) != (exp_max + 1,):
            raise ValueError("stage prior tables of unexpected sizes for the C head function")
        self.channels, self.codebook_size = prior.channels, layers[-1][1]
        self.handle = _stepkernel.level(self.channels, self.codebook_size, 0, 1, exp_max, gate_half, 0, 0, 0,
                                        *(_address(t) for t in tables), _address(exp), layers, True)
        self.usable = int8_supported() and bool(_stepkernel.uses_int8(self.handle))

    def frequencies(self, given: torch.Tensor | np.ndarray, threads: int = 1,
                    scale: float = 1.0) -> torch.Tensor | np.ndarray:
        """Frequencies (P, K) float64 times scale for the group's context rows given (P, C) (activations); numpy
        for numpy."""
        given = _contiguous(given, "float32")
        if len(given.shape) != 2 or given.shape[1] != self.channels:
            raise ValueError(f"rows of {self.channels} values expected, got {tuple(given.shape)}")
        out = _empty_like_input(given, (given.shape[0], self.codebook_size), "float64")
        given_address, out_address = _address(given), _address(out)

        def run(start: int, stop: int) -> None:  # 4-byte rows in, 8-byte rows out
            _stepkernel.heads(self.handle, given_address + 4 * self.channels * start, stop - start,
                              out_address + 8 * self.codebook_size * start, scale)
        _split(given.shape[0], threads, run)
        return out


class LevelKernel(_Tables):
    """A level prior's tables as the C step function reads them; holds the tensors whose addresses it uses."""

    def __init__(self, prior: "IntLevelPrior", gate_half: int, exp_max: int, tanh: torch.Tensor,
                 sigmoid: torch.Tensor) -> None:
        super().__init__()
        names = [f"block{i}.{part}" for i in range(prior.causal_blocks) for part in ("in", "out")] + ["head"]
        layers = self._layers(prior, names)
        bias_and_half, inv_scale = prior.masked_scale
        tables = [self._float32(t) for t in (prior.tap_tables, bias_and_half, inv_scale, tanh, sigmoid)]
        exp = self._float64(prior.exp)
        # The C code indexes these without bounds checks: their sizes are checked here, once.
        channels, taps, codebook = prior.channels, len(prior.tap_offsets), prior.codebook_size
        expected = [(taps * (codebook + 1), 2 * channels), (2 * channels,), (2 * channels,), (2 * gate_half + 1,),
                    (2 * gate_half + 1,)]
        if [tuple(t.shape) for t in tables] != expected or tuple(exp.shape) != (exp_max + 1,):
            raise ValueError(f"level prior tables of unexpected sizes for the C step function: "
                             f"{[tuple(t.shape) for t in tables]}, exp {tuple(exp.shape)}")
        self.codebook_size = codebook
        masked = ()
        if getattr(prior, "masked_layer", None) is not None and prior.masked_layer[3] is not None:
            masked = self._masked_layer(prior.masked_layer, prior.masked_embedding, tables[1:3], taps)
        self.handle = _stepkernel.level(channels, codebook, taps, prior.causal_blocks, exp_max, gate_half,
                                        *(_address(t) for t in tables), _address(exp), tuple(layers),
                                        int8_available(), *masked)
        # Whether the products run on int8 weights (the CPU and every layer's shape allow it), and whether the
        # masked convolution is one product on AMX tiles (while `amx_int8()`) instead of the tap tables' rows.
        self.int8 = int8_supported() and bool(_stepkernel.uses_int8(self.handle))
        self.masked_tiles = hasattr(_stepkernel, "uses_masked_tiles") and bool(
            _stepkernel.uses_masked_tiles(self.handle))

    def _masked_layer(self, layer, embedding, bias_and_scale, taps: int) -> tuple[tuple, int]:
        """An 8-bit masked convolution as the C function takes it for AMX tiles (where it has them, it computes the
        first activations as one product rather than the sum of the tap tables' rows: the same integers): its
        layer tuple, the weight's inputs reordered from (channel, tap) to (tap, channel), and the address of the
        code embedding rounded to the layer's 8 bits (as masked_tap_tables rounds it) + 128, (K + 1, C) bytes,
        code K (off the grid) zero."""
        import numpy as np

        from .npprior import rounded_embedding, tap_major  # (npprior imports this module)

        def array(t) -> np.ndarray:
            return np.asarray(t.detach().cpu() if hasattr(t, "detach") else t, dtype=np.float64)

        weight, input_scale = array(layer[0]), float(layer[3])
        inputs, outputs = weight.shape
        weight = self._float32(tap_major(weight, taps))
        embedding = rounded_embedding(array(embedding), input_scale)
        rounded = np.full((embedding.shape[0] + 1, embedding.shape[1]), 128, np.uint8)
        rounded[:-1] = embedding + 128
        rounded = self._keep_tensor(rounded)
        return ((inputs, outputs, _address(weight), _address(bias_and_scale[0]), _address(bias_and_scale[1]),
                 input_scale), _address(rounded))

    def frequencies(self, canvas: torch.Tensor, neighbours: torch.Tensor, upper: torch.Tensor,
                    cond: Sequence[torch.Tensor] | None, threads: int = 1, scale: float = 1.0) -> torch.Tensor:
        """Frequencies (P, K) float64 of P positions times scale (a power of two): the arguments of
        `IntLevelPrior.frequencies`; with threads > 1, a batch of SPLIT_POSITIONS or more is shared with a helper
        thread (each position's frequencies are its own: the same integers however the batch is split)."""
        import torch

        canvas, neighbours, upper = (t.to(torch.int64).contiguous() for t in (canvas, neighbours, upper))
        out = torch.empty((neighbours.shape[0], self.codebook_size), dtype=torch.float64)
        cond_addresses = None
        if cond is not None:
            cond = [unit.to(torch.int16).contiguous() for unit in cond]
            cond_addresses = tuple(unit.data_ptr() for unit in cond)
        count, taps = out.shape[0], neighbours.shape[1]

        def run(start: int, stop: int) -> None:  # positions start..stop-1 (8-byte elements: int64, float64)
            _stepkernel.frequencies(self.handle, canvas.data_ptr(), neighbours.data_ptr() + 8 * taps * start,
                                    upper.data_ptr() + 8 * start, cond_addresses, stop - start,
                                    out.data_ptr() + 8 * self.codebook_size * start, scale)
        _split(count, threads, run)
        return out


class BoundLevel:
    """A level kernel bound to one LevelState's tensors (canvas, neighbours, upper, conditioning), converted and
    their addresses taken once: a decoding step is then one C call into a numpy table (the decoder runs some
    400 steps a Kodak image, and each conversion or tensor costs microseconds)."""

    def __init__(self, kernel: LevelKernel, canvas: torch.Tensor | np.ndarray, neighbours: torch.Tensor | np.ndarray,
                 upper: torch.Tensor | np.ndarray, cond: Sequence[torch.Tensor | np.ndarray] | None) -> None:
        import numpy as np

        if isinstance(canvas, np.ndarray):
            paints_in_place = canvas.dtype == np.int64 and canvas.flags.c_contiguous
        else:
            import torch

            paints_in_place = canvas.dtype == torch.int64 and canvas.is_contiguous() and canvas.device.type == "cpu"
        if not paints_in_place:
            raise ValueError("a bound level paints into its canvas: an int64 contiguous CPU tensor or array")
        self.kernel, self.canvas = kernel, canvas
        self.neighbours, self.upper = (_contiguous(t, "int64") for t in (neighbours, upper))
        self.cond = None if cond is None else [_contiguous(unit, "int16") for unit in cond]
        self.cond_addresses = None if self.cond is None else tuple(_address(unit) for unit in self.cond)
        self.taps = self.neighbours.shape[1]

    def probabilities(self, start: int, stop: int, threads: int = 1) -> np.ndarray:
        """The range coder's probabilities (stop - start, K) float64 of positions start..stop-1: frequencies / 2^20
        (exact), as `LevelKernel.frequencies` gives them with that scale."""
        import numpy as np

        # As slicing the state's tensors would: never past its positions (the C function reads without checks).
        total = self.neighbours.shape[0]
        start, stop = min(max(start, 0), total), min(max(stop, 0), total)
        stop = max(start, stop)
        codebook = self.kernel.codebook_size
        out = np.empty((stop - start, codebook))
        base, neighbours, upper = out.ctypes.data, _address(self.neighbours), _address(self.upper)
        canvas = _address(self.canvas)

        def run(a: int, b: int) -> None:  # positions start + a .. start + b - 1
            _stepkernel.frequencies(self.kernel.handle, canvas,
                                    neighbours + 8 * self.taps * (start + a), upper + 8 * (start + a),
                                    self.cond_addresses, b - a, base + 8 * codebook * a, PROBABILITY_SCALE)
        _split(stop - start, threads, run)
        return out

    def candidate_probabilities(self, start: int, candidates: np.ndarray, threads: int = 1,
                                cumulative: np.ndarray | None = None) -> np.ndarray:
        """The probabilities (exact frequencies / 2^20) of each position's candidate codes, (P, M) float64 for
        candidates (P, M) int64 of positions start..start+P-1: `probabilities` taken at those codes, without the
        (P, K) table (each row stays in cache). cumulative: a (P, M) uint32 table to fill with the frequencies
        below each candidate."""
        import numpy as np

        candidates = np.ascontiguousarray(candidates, dtype=np.int64)
        count, per_position = candidates.shape
        if not 0 <= start <= start + count <= self.neighbours.shape[0]:
            raise ValueError("candidate_probabilities: positions outside the state")
        if cumulative is not None and (cumulative.dtype.name != "uint32" or cumulative.shape != candidates.shape
                                       or not cumulative.flags.c_contiguous):
            raise ValueError("candidate_probabilities: cumulative must be a contiguous uint32 table like candidates")
        out = np.empty((count, per_position))
        base, given, canvas = out.ctypes.data, candidates.ctypes.data, _address(self.canvas)
        neighbours, upper = _address(self.neighbours), _address(self.upper)
        below = None if cumulative is None else cumulative.ctypes.data

        def run(a: int, b: int) -> None:
            _stepkernel.candidate_frequencies(self.kernel.handle, canvas, neighbours + 8 * self.taps * (start + a),
                                              upper + 8 * (start + a), self.cond_addresses, b - a,
                                              given + 8 * per_position * a, per_position, base + 8 * per_position * a,
                                              None if below is None else below + 4 * per_position * a)
        _split(count, threads, run)
        return out

    def symbol_frequencies(self, positions: np.ndarray, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For the given positions (int64 indices) and their codes, each code's frequency and the frequencies below
        it (uint32 each), under the canvas as it is: what the range coder needs of them, on this thread."""
        import numpy as np

        positions = np.ascontiguousarray(positions, dtype=np.int64)
        symbols = np.ascontiguousarray(symbols, dtype=np.int64)
        if positions.shape != symbols.shape or positions.ndim != 1 or (
                len(positions) and not 0 <= positions.min() <= positions.max() < self.neighbours.shape[0]):
            raise ValueError("symbol_frequencies: one code per position of the state expected")
        neighbours = np.ascontiguousarray(self.neighbours[positions])
        upper = np.ascontiguousarray(self.upper[positions])
        cums, freqs = np.empty(len(positions), np.uint32), np.empty(len(positions), np.uint32)
        _stepkernel.symbol_frequencies(self.kernel.handle, _address(self.canvas), neighbours.ctypes.data,
                                       upper.ctypes.data, self.cond_addresses, len(positions), symbols.ctypes.data,
                                       cums.ctypes.data, freqs.ctypes.data)
        return cums, freqs

    def decode(self, centres: np.ndarray, tiles: np.ndarray, fronts: np.ndarray, decoders: Sequence,
               threads: int = 1) -> None:
        """Decodes every wavefront (fronts: (F, 2) int64 [start, stop)) in one C call, each position from
        decoders[tiles[p]] (`rangecoding.CStreamDecoder`s), painting its code at canvas[centres[p]]; with threads
        2, a helper thread computes part of each large front's rows (the same codes). ValueError for a corrupt
        stream."""
        for array in (centres, tiles, fronts):
            if array.dtype.name != "int64" or not array.flags.c_contiguous:
                raise ValueError("decode: contiguous int64 centres, tiles and fronts expected")
        if len(centres) != self.neighbours.shape[0] or len(tiles) != len(centres) or (
                len(fronts) and (fronts.min() < 0 or fronts.max() > len(centres))) or (
                len(tiles) and not 0 <= tiles.min() <= tiles.max() < len(decoders)):
            raise ValueError("decode: centres, tiles or fronts do not fit the state")
        _stepkernel.decode_level(self.kernel.handle, _address(self.canvas), _address(self.neighbours),
                                 _address(self.upper), self.cond_addresses, centres.ctypes.data, tiles.ctypes.data,
                                 fronts.ctypes.data, len(fronts), tuple(decoder.handle for decoder in decoders),
                                 min(max(threads, 1), 2))

    def encode(self, symbols: np.ndarray, encoder) -> float:
        """Appends all positions' codes (symbols: int64 in decoding order, painted onto the canvas already) to a
        `rangecoding.StreamEncoder` in C, each with the probabilities its decoder will compute; their bits."""
        import numpy as np

        symbols = np.ascontiguousarray(symbols, dtype=np.int64)
        if len(symbols) != self.neighbours.shape[0]:
            raise ValueError("encode: one code per position expected")
        return _stepkernel.encode_level(self.kernel.handle, _address(self.canvas), _address(self.neighbours),
                                        _address(self.upper), self.cond_addresses, symbols.ctypes.data,
                                        len(symbols), encoder.handle)
