"""The C step function of the level priors (hvqcodec/_stepkernel.c) against the torch version: the same
integers for every position, however the positions are batched or shared between threads."""
import numpy as np
import pytest
import torch

from hvqcodec import stepkernel
from hvqcodec.entropy import _known_state, decode_level, encode_level
from hvqcodec.intprior import IntPrior, LevelState, export_prior
from hvqcodec.priors import HierarchicalPrior, PriorConfig

pytestmark = pytest.mark.skipif(not stepkernel.available(), reason="the C step function is not built here")

SIZES = [(6, 10), (12, 20), (24, 40)]  # top, mid, bottom grids of one tile


def make_prior(codebook: int, channels: int, causal_blocks: int, weight_scale: float, subpixel: bool,
               coding_block=0):
    """Random 8-bit integer priors (the shipped format) and codes to run them on. A large weight_scale drives
    activations into the clamps and the gate tables' saturated ends."""
    torch.manual_seed(codebook + channels + causal_blocks)
    prior = HierarchicalPrior(PriorConfig(codebook_sizes=(codebook,) * 3, channels=channels,
                                          causal_blocks=causal_blocks, cond_blocks=1, subpixel_cond=subpixel))
    for parameter in prior.parameters():
        parameter.data.mul_(weight_scale)
    calibration = [torch.randint(0, codebook, (2, h, w)) for h, w in SIZES]
    tables = export_prior(prior, calibration)
    int_prior = IntPrior(causal_blocks, 1, tables, "cpu", coding_block=coding_block)
    codes = [torch.randint(0, codebook, size) for size in SIZES]
    return int_prior, codes


def torch_frequencies(state: LevelState, start: int, stop: int) -> torch.Tensor:
    kernel, state.prior.kernel = state.prior.kernel, None
    try:
        return state.frequencies(start, stop)
    finally:
        state.prior.kernel = kernel


# The int8 path (AVX-512 VNNI) where this CPU has it, and the float32 path everywhere.
PATHS = [False, True] if stepkernel.int8_supported() else [False]
# The int8 path's products with AVX-512 VNNI, and on AMX tiles where this CPU and OS have them.
PRODUCTS = ["vnni", "amx"] if stepkernel.amx_int8_supported() else ["vnni"]


@pytest.fixture(params=PRODUCTS)
def products(request):
    previous = stepkernel.set_amx(request.param == "amx")
    assert stepkernel.amx_int8() == (request.param == "amx")
    yield request.param
    stepkernel.set_amx(previous)


@pytest.mark.parametrize("int8", PATHS, ids=lambda int8: "int8" if int8 else "float32")
@pytest.mark.parametrize("codebook,channels,causal_blocks,weight_scale,subpixel", [
    (16, 8, 1, 1.0, False),     # widths below one block of 32 lanes: the one-at-a-time paths (float32 only)
    (64, 32, 2, 1.0, True),     # whole blocks of lanes, as the shipped models
    (80, 48, 2, 1.0, False),    # whole blocks and a remainder (int8: three blocks of 16 outputs)
    (64, 32, 2, 40.0, True),    # saturated: clamps and the gate tables' ends
    (80, 64, 2, 1.0, False),    # int8: 64 outputs at a time, then a block of 16
    (144, 64, 1, 3.0, True),    # int8: one causal block, a codebook of 9 blocks of 16
    (70, 16, 1, 1.0, False),    # float32 only: a codebook that is no multiple of 8 (the frequencies' last codes)
])
def test_same_integers_as_torch(codebook, channels, causal_blocks, weight_scale, subpixel, int8, monkeypatch, products):
    monkeypatch.setenv("HVQ_STEP_KERNEL_INT8", "1" if int8 else "0")
    int_prior, codes = make_prior(codebook, channels, causal_blocks, weight_scale, subpixel)
    for level in range(3):
        level_prior = int_prior.levels[level]
        assert level_prior.kernel is not None
        # The int8 path needs whole quads of inputs and blocks of 16 outputs in every layer; on AMX tiles, the
        # masked convolution is one product there.
        assert level_prior.kernel.int8 == (int8 and channels % 16 == 0 and codebook % 16 == 0)
        assert level_prior.kernel.masked_tiles == (level_prior.kernel.int8 and stepkernel.amx_int8_supported())
        state, _ = _known_state(level_prior, codes[level], codes[:level])
        count = state.order.numel()
        want = torch_frequencies(state, 0, count)
        assert bool((want.sum(1) == 1 << 20).all()) and bool((want >= 1).all())
        batches = [(start, min(start + 100, count)) for start in range(0, count, 100)]
        # Odd and tiny batches too: the kernel works in pairs of positions.
        for start, stop in batches + [(0, 1), (3, 6), (5, min(count, 64)), (count - 7, count)]:
            assert stop - start < stepkernel.max_positions()
            assert torch.equal(state.frequencies(start, stop), want[start:stop])
        state.threads = 2  # batches of SPLIT_POSITIONS or more shared with a helper thread
        for start, stop in batches + state.fronts[:5]:
            assert torch.equal(state.frequencies(start, stop), want[start:stop])
        # A whole level in one batch, as the encoder's passes where large batches go to C too.
        monkeypatch.setattr(stepkernel, "MAX_POSITIONS", 1 << 62)
        assert torch.equal(state.frequencies(0, count), want)
        monkeypatch.setattr(stepkernel, "MAX_POSITIONS", None)
        # What the range coder gets: the frequencies / 2^20, written so by the C function itself.
        for start, stop in state.fronts[:5] + [(0, 100)]:
            assert np.array_equal(state.probabilities(start, stop), want[start:stop].numpy() / (1 << 20))
            kernel, level_prior.kernel = level_prior.kernel, None
            assert np.array_equal(state.probabilities(start, stop), want[start:stop].numpy() / (1 << 20))
            level_prior.kernel = kernel


@pytest.mark.parametrize("int8", PATHS, ids=lambda int8: "int8" if int8 else "float32")
def test_decodes_what_the_torch_version_encodes(int8, monkeypatch, products):
    """A coding-block prior's streams written with the torch step function decode with the C one, wavefront by
    wavefront, and the other way round: the file does not depend on which one a machine has."""
    monkeypatch.setenv("HVQ_STEP_KERNEL_INT8", "1" if int8 else "0")
    int_prior, codes = make_prior(64, 32, 2, 3.0, True, coding_block=8)
    assert all(level.kernel.int8 == int8 for level in int_prior.levels)
    for level in range(3):
        level_prior = int_prior.levels[level]
        kernel = level_prior.kernel
        level_prior.kernel = None
        torch_stream = encode_level(level_prior, codes[level], codes[:level]).data
        level_prior.kernel = kernel
        kernel_stream = encode_level(level_prior, codes[level], codes[:level]).data
        assert kernel_stream == torch_stream
        (decoded,) = decode_level(level_prior, [torch_stream], [tuple(codes[level].shape)], [codes[:level]])
        assert torch.equal(decoded, codes[level])


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("HVQ_STEP_KERNEL", "0")
    int_prior, _ = make_prior(16, 8, 1, 1.0, False)
    assert all(level.kernel is None for level in int_prior.levels)


def test_sixteen_bit_tables_stay_on_torch():
    """The older 16-bit format (float64 products) has no C version: those priors keep the torch one."""
    torch.manual_seed(0)
    prior = HierarchicalPrior(PriorConfig(codebook_sizes=(16, 16, 16), channels=8, causal_blocks=1, cond_blocks=1))
    int_prior = IntPrior(1, 1, export_prior(prior), "cpu")
    assert all(level.kernel is None for level in int_prior.levels)


@pytest.mark.parametrize("settings,sleep_soon", [
    ({}, False), ({"GOMP_SPINCOUNT": "3000"}, True), ({"GOMP_SPINCOUNT": "300000"}, False),
    ({"GOMP_SPINCOUNT": "infinite"}, False), ({"OMP_WAIT_POLICY": "passive"}, True),
])
def test_large_batches_go_to_c_only_where_openmp_threads_sleep_soon(monkeypatch, settings, sleep_soon):
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    assert stepkernel._openmp_threads_sleep_soon() is sleep_soon
    # Decided on first use, not at import (the command line sets GOMP_SPINCOUNT after importing stepkernel).
    monkeypatch.setattr(stepkernel, "MAX_POSITIONS", None)
    assert stepkernel.max_positions() == (1 << 62 if sleep_soon else stepkernel.LARGE_BATCH)


@pytest.mark.skipif(not stepkernel.int8_supported(), reason="the int8 path needs AVX-512 VNNI")
@pytest.mark.parametrize("weight_scale", [1.0, 40.0])
def test_stage_heads_same_integers_as_torch(weight_scale, monkeypatch, products):
    """A refinement stage group's head in C (int8 path) against the torch version, row by row, on contexts that
    include the activation grid's ends; any split of the rows gives the same integers."""
    monkeypatch.setenv("HVQ_STEP_KERNEL_INT8", "1")
    torch.manual_seed(int(weight_scale))
    prior = HierarchicalPrior(PriorConfig(codebook_sizes=(16, 16, 16), channels=16, causal_blocks=1, cond_blocks=1,
                                          refine_stages=2, refine_groups=2, refine_codebook_size=48,
                                          stage_channels=32, stage_blocks=1))
    for parameter in prior.parameters():
        parameter.data.mul_(weight_scale)
    calibration = [torch.randint(0, 16, (2, h, w)) for h, w in SIZES] + [torch.randint(0, 48, (2, 2, *SIZES[2]))] * 2
    int_prior = IntPrior(1, 1, export_prior(prior, calibration), "cpu", refine_stages=2, refine_groups=2,
                         stage_blocks=1)
    context = torch.randint(-3000, 3000, (300, 32)).float()
    context[:20] = 32767.0
    context[20:40] = -32767.0
    for stage in int_prior.stages:
        assert stage.head_kernels is not None
        for group in range(2):
            kernels, stage.head_kernels = stage.head_kernels, None
            want = stage.group_head(context, group)
            stage.head_kernels = kernels
            assert bool((want.sum(1) == 1 << 20).all())
            assert torch.equal(stage.group_head(context, group), want)
            assert torch.equal(kernels[group].frequencies(context, threads=2), want)
            assert torch.equal(kernels[group].frequencies(context[5:6]), want[5:6])


def test_stage_heads_stay_on_torch_without_the_int8_path(monkeypatch):
    monkeypatch.setenv("HVQ_STEP_KERNEL_INT8", "0")
    torch.manual_seed(0)
    prior = HierarchicalPrior(PriorConfig(codebook_sizes=(16, 16, 16), channels=16, causal_blocks=1, cond_blocks=1,
                                          refine_stages=1, refine_groups=1, refine_codebook_size=32,
                                          stage_channels=32, stage_blocks=1))
    calibration = [torch.randint(0, 16, (2, h, w)) for h, w in SIZES] + [torch.randint(0, 32, (2, 1, *SIZES[2]))]
    int_prior = IntPrior(1, 1, export_prior(prior, calibration), "cpu", refine_stages=1, refine_groups=1,
                         stage_blocks=1)
    assert int_prior.stages[0].dtype == torch.float32 and int_prior.stages[0].head_kernels is None


@pytest.mark.parametrize("rows,columns,k,levels", [(300, 512, 8, 0), (257, 100, 8, 5), (40, 9, 9, 3), (7, 1, 1, 0)])
def test_smallest_per_row_as_a_stable_sort(rows, columns, k, levels):
    """The encoder's candidate search: the k smallest of each row, ascending, lower columns first among equal
    values (`levels` > 0: few distinct values, many ties), over one thread or split with the helper."""
    torch.manual_seed(rows)
    table = torch.randint(0, levels, (rows, columns)).float() if levels else torch.randn(rows, columns)
    want_values, want_columns = torch.sort(table, dim=1, stable=True)
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            values, columns_found = stepkernel.smallest(table, k)
            assert torch.equal(values, want_values[:, :k]) and torch.equal(columns_found, want_columns[:, :k])
    finally:
        torch.set_num_threads(saved)
    assert stepkernel.smallest(table, columns + 1) is None  # torch.topk's error then, as before
    assert stepkernel.smallest(table.double(), k) is None


@pytest.mark.skipif(not stepkernel.int8_supported(), reason="the int8 path needs AVX-512 VNNI")
@pytest.mark.parametrize("channels,weight_scale", [(32, 1.0), (32, 40.0), (64, 3.0)])
def test_conditioning_stacks_same_integers_as_torch(channels, weight_scale, monkeypatch, products):
    """The levels' conditioning stacks (3x3 gated blocks) in C against the torch version, on one thread and
    shared with the helper; grids as small as one row or column too (the zero padding on every side)."""
    monkeypatch.setenv("HVQ_STEP_KERNEL_INT8", "1")
    int_prior, codes = make_prior(64, channels, 1, weight_scale, True)
    torch.manual_seed(channels)
    for level in (1, 2):
        prior = int_prior.levels[level]
        names = ("cond.block0",)  # make_prior: one conditioning block
        for h, w in [codes[level - 1].shape, (1, 7), (9, 1), (5, 6)]:
            x = torch.randint(-32767, 32768, (h * w, channels)).float()
            x[::3] = x[::3].sign() * 32767.0  # the activation grid's ends
            want = prior.conv3x3_block(names[0], x, h, w)
            assert prior.conv3x3_blocks(names, x, h, w) is not None
            kernel = prior._conv_kernels[names]
            assert kernel is not None
            for threads in (1, 2):
                assert torch.equal(kernel.run(x, h, w, threads), want)
        upper = [c for c in codes[:level]]
        with_c = prior.conditioning(upper)
        prior._conv_kernels = {names: None}
        prior._linear_kernels = {key: None for key in prior._linear_kernels}  # the projections in torch too
        assert all(a.dtype == torch.int16 and torch.equal(a, b) for a, b in zip(with_c, prior.conditioning(upper)))


@pytest.mark.skipif(not stepkernel.int8_supported(), reason="the int8 path needs AVX-512 VNNI")
@pytest.mark.parametrize("channels,weight_scale", [(32, 1.0), (32, 40.0), (64, 3.0)])
def test_conditioning_projections_same_integers_as_torch(channels, weight_scale, monkeypatch, products):
    """A level's conditioning projections (layers applied to each row on its own) in C, written as int16, against
    the torch version's integers: row counts in and off groups of four, one thread and two, inputs at the
    activation grid's ends and (weight_scale 40) outputs at its clamps."""
    monkeypatch.setenv("HVQ_STEP_KERNEL_INT8", "1")
    int_prior, _ = make_prior(64, channels, 2, weight_scale, True)
    torch.manual_seed(channels + 1)
    prior = int_prior.levels[2]
    names = [f"cond.proj{i}" for i in range(1 + prior.causal_blocks)]
    kernel = stepkernel.LinearKernel(prior, names)
    saturated = 0
    for rows in (1, 3, 4, 7, 130):
        x = torch.randint(-32767, 32768, (rows, channels)).float()
        x[::3] = x[::3].sign() * 32767.0
        for i, name in enumerate(names):
            want = prior.linear(name, x)
            saturated += int((want.abs() == 32767).sum())
            for threads in (1, 2):
                got = kernel.run(x, i, threads)
                assert got.dtype == torch.int16 and torch.equal(got.float(), want)
    assert saturated > 0 or weight_scale < 40
    with pytest.raises(ValueError, match="rows of"):
        kernel.run(torch.zeros(3, channels + 1), 0)


def test_conditioning_stacks_stay_on_torch_for_other_widths(monkeypatch):
    monkeypatch.setenv("HVQ_STEP_KERNEL_INT8", "1")
    int_prior, codes = make_prior(16, 8, 1, 1.0, False)  # 8 channels: no whole block of 16 outputs
    prior = int_prior.levels[2]
    prior.conditioning(codes[:2])
    assert prior._conv_kernels[("cond.block0",)] is None
