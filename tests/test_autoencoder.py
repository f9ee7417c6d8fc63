import pytest
import torch

from hvqcodec.autoencoder import AutoencoderConfig, HierarchicalVQVAE, pad_to_multiple


@pytest.mark.parametrize("height,width", [(1, 1), (17, 33), (512, 768)])
def test_shapes_for_any_size(tiny_model, height, width):
    images = torch.rand(1, 3, height, width)
    with torch.no_grad():
        codes = tiny_model.encode(images)
        padded_h, padded_w = -(-height // 16) * 16, -(-width // 16) * 16
        assert [tuple(c.shape) for c in codes] == [(1, padded_h // s, padded_w // s) for s in (16, 8, 4)]
        for c, k in zip(codes, tiny_model.config.codebook_sizes):
            assert c.dtype == torch.int64 and 0 <= int(c.min()) and int(c.max()) < k
        for levels in (1, 2, 3):
            assert tiny_model.decode(codes[:levels]).shape == (1, 3, padded_h, padded_w)
        assert tiny_model.reconstruct(images).shape == (1, 3, height, width)


def test_padding_replicates_edges():
    images = torch.arange(6.0).view(1, 1, 2, 3)
    padded = pad_to_multiple(images, 4)
    assert padded.shape == (1, 1, 4, 4)
    assert torch.equal(padded[0, 0, :2, :3], images[0, 0])
    assert torch.equal(padded[0, 0, 3], torch.tensor([3.0, 4.0, 5.0, 5.0]))


def test_previews_differ_from_full_decode(tiny_model):
    with torch.no_grad():
        codes = tiny_model.encode(torch.rand(1, 3, 32, 32))
        tiny_model.absent.data.normal_()
        full, mid, top = (tiny_model.decode(codes[:n]) for n in (3, 2, 1))
    assert not torch.equal(full, mid) and not torch.equal(mid, top)


def test_decode_rejects_wrong_level_count(tiny_model):
    with pytest.raises(ValueError):
        tiny_model.decode([])


def test_config_round_trip_and_unknown_keys(tiny_config):
    assert AutoencoderConfig.from_dict(tiny_config.to_dict()) == tiny_config
    with pytest.raises(ValueError, match="unknown autoencoder config keys"):
        AutoencoderConfig.from_dict({**tiny_config.to_dict(), "bogus": 1})


def test_raw_index_cost():
    config = AutoencoderConfig(codebook_sizes=(512, 512, 512))
    assert config.raw_index_bpp() == pytest.approx(9 / 256 + 9 / 64 + 9 / 16)


def test_level_dropout_uses_absent_vectors(tiny_config):
    config = AutoencoderConfig(**{**tiny_config.to_dict(), "drop_bottom": 0.0, "drop_bottom_mid": 1.0})
    model = HierarchicalVQVAE(config).train()
    torch.manual_seed(0)
    out = model(torch.rand(2, 3, 32, 32))
    model.eval()
    with torch.no_grad():
        preview = model.decode(out.codes[:1])
    # With every sample dropped to the top level, training reconstructs exactly the top-only preview.
    torch.testing.assert_close(out.reconstruction.detach(), preview, rtol=1e-4, atol=1e-5)



@pytest.mark.parametrize("chunk", [1, 7, 4096])  # 16 channels: chunks of 8, 56 and 32768 positions
def test_convnext_inference_in_chunks_matches_the_training_forward(monkeypatch, chunk):
    """Under no_grad a ConvNeXt block runs its MLP a chunk of positions at a time (cache-sized). It computes the
    same function as the whole-tensor forward that training uses: equal to float rounding (a matmul's blocking
    may move the last bit), and exactly equal when one chunk holds every position."""
    from hvqcodec import convnext

    torch.manual_seed(0)
    block = convnext.ConvNeXtBlock(16, layer_scale_init=0.5)
    x = torch.randn(2, 16, 9, 13)
    expected = block(x).detach()  # grad enabled: the plain path
    monkeypatch.setattr(convnext, "CHUNK_POSITIONS", chunk)
    with torch.no_grad():
        chunked = block(x)
    assert chunked.shape == expected.shape
    assert torch.allclose(chunked, expected, rtol=0, atol=1e-5)
    if convnext.chunk_positions(16) >= 2 * 9 * 13:
        assert torch.equal(chunked, expected)
    assert not torch.allclose(chunked, x, atol=1e-3)  # the block did something


def test_low_precision_decoder_runs_the_half_stage_in_bfloat16(tiny_model):
    """The bfloat16 decoder runs the half-resolution stage in bfloat16 too (hvqcodec 0.19) and makes RGB in float32,
    close to the float32 decoder; the float32 decoder stays float32; and the decode path leaves a caller's
    autocast (bfloat16 training) on for that stage."""
    dtypes = []
    tiny_model.dec_half.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    with torch.no_grad():
        codes = tiny_model.encode(torch.rand(1, 3, 32, 48))
        exact = tiny_model.decode(codes)
        low = tiny_model.decode(codes, low_precision=True)
        tiny_model.half_stage_low_precision = False
        half_in_float32 = tiny_model.decode(codes, low_precision=True)
        tiny_model.half_stage_low_precision = True
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tiny_model.decode(codes)
    assert dtypes == [torch.float32, torch.bfloat16, torch.float32, torch.bfloat16]
    assert low.dtype == torch.float32 and not torch.equal(low, half_in_float32)
    assert (low - exact).abs().max() < 0.05


def test_convnext_bfloat16_inference_matches_and_follows_weight_changes():
    """Under bfloat16 autocast a block's MLP runs all in bfloat16, its layer scale folded into cached bfloat16
    weights: the same function to bfloat16 rounding, and weights changed in place (a state dict loaded into the
    model) are picked up, not served stale from the cache."""
    from hvqcodec.convnext import ConvNeXtBlock

    torch.manual_seed(0)
    block = ConvNeXtBlock(16).eval()
    torch.nn.init.normal_(block.gamma, std=0.5)
    x = torch.randn(1, 16, 12, 10)

    def branches() -> tuple[torch.Tensor, torch.Tensor]:
        exact = block(x) - x
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(x)
        assert not torch.equal(low, exact + x)  # bfloat16 arithmetic did run
        return exact, low.float() - x

    with torch.no_grad():
        exact, low = branches()
        assert (low - exact).norm() < 0.03 * exact.norm()
        block.load_state_dict({**block.state_dict(), "pwconv2.weight": -2 * block.pwconv2.weight})
        changed, low_changed = branches()
        assert (low_changed - changed).norm() < 0.03 * changed.norm()
        assert (changed - exact).norm() > exact.norm()  # a stale cache would have matched the old branch
