"""SongUNet (DDPM++): parameter names and counts as in EDM's checkpoints, attention, resampling, split."""
import math

import pytest
import torch
import torch.nn.functional as F

from pipelines.errors import UserError
from pipelines.models import ModelConfig, build_model
from pipelines.networks.songunet import (SONGUNET_PRESETS, Conv2d, SongUNet, UNetBlock, count_parameters,
                                         songunet_config)


def meta_model(preset):
    """The preconditioned model of an EDM preset, built without allocating weights."""
    cfg = ModelConfig(backbone="songunet", network=songunet_config(preset), precond="edm",
                      precond_kwargs={"sigma_data": 0.5})
    with torch.device("meta"):
        return build_model(cfg)


@pytest.mark.parametrize("preset,keys,params,filters,skips", [
    ("ffhq64", 553, 61_805_571, 12, 20),
    ("cifar10", 425, 55_733_891, 8, 15),
])
def test_official_config_counts(preset, keys, params, filters, skips):
    model = meta_model(preset)
    sd = model.state_dict()
    assert len(sd) == keys
    assert sum(p.numel() for p in model.parameters()) == params
    assert sum(k.endswith("resample_filter") for k in sd) == filters
    assert all(k.startswith("model.") for k in sd)
    # Every encoder output goes to the skip stack (run on the meta device: shapes only).
    r = model.model.config.img_resolution
    feats = model.model.encode(torch.empty(1, 3, r, r, device="meta"), torch.empty(1, device="meta"),
                               augment_labels=torch.empty(1, 9, device="meta"))
    assert len(feats.skips) == skips


def test_ffhq64_names_and_shapes():
    sd = meta_model("ffhq64").state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    expected = {
        "model.map_augment.weight": (128, 9),
        "model.map_layer0.weight": (512, 128),
        "model.map_layer1.bias": (512,),
        "model.enc.64x64_conv.weight": (128, 3, 3, 3),
        "model.enc.32x32_down.conv0.resample_filter": (1, 1, 2, 2),
        "model.enc.32x32_down.skip.weight": (128, 128, 1, 1),
        "model.enc.16x16_block0.qkv.weight": (768, 256, 1, 1),
        "model.enc.16x16_block3.proj.weight": (256, 256, 1, 1),
        "model.dec.8x8_in0.qkv.weight": (768, 256, 1, 1),
        "model.dec.16x16_block4.qkv.weight": (768, 256, 1, 1),
        "model.dec.64x64_block0.conv0.weight": (128, 384, 3, 3),  # 256 from below + 128 popped skip
        "model.dec.64x64_block0.skip.weight": (128, 384, 1, 1),
        "model.dec.64x64_aux_norm.weight": (128,),
        "model.dec.64x64_aux_conv.weight": (3, 128, 3, 3),
    }
    for name, shape in expected.items():
        assert shapes.get(name) == shape, name
    for absent in ["model.map_augment.bias", "model.map_label.weight", "model.map_noise.freqs",
                   "model.dec.16x16_block3.qkv.weight", "model.dec.8x8_in1.qkv.weight",
                   "model.enc.32x32_block0.qkv.weight", "model.enc.64x64_block0.skip.weight",
                   "model.enc.64x64_conv.resample_filter"]:
        assert absent not in shapes, absent
    assert [k for k in shapes if "dec." in k and "_up." in k and k.endswith("resample_filter")] == [
        "model.dec.16x16_up.conv0.resample_filter", "model.dec.16x16_up.skip.resample_filter",
        "model.dec.32x32_up.conv0.resample_filter", "model.dec.32x32_up.skip.resample_filter",
        "model.dec.64x64_up.conv0.resample_filter", "model.dec.64x64_up.skip.resample_filter"]


def test_cifar10_names():
    sd = meta_model("cifar10").state_dict()
    for name in ["model.enc.32x32_conv.weight", "model.enc.16x16_down.conv0.weight",
                 "model.enc.16x16_block3.qkv.weight", "model.dec.8x8_in0.qkv.weight",
                 "model.dec.16x16_block4.qkv.weight", "model.dec.32x32_aux_conv.weight"]:
        assert name in sd, name
    assert sd["model.enc.32x32_conv.weight"].shape == (128, 3, 3, 3)  # level-0 conv: model_channels
    assert sd["model.enc.32x32_block0.conv0.weight"].shape == (256, 128, 3, 3)  # channel_mult [2,2,2]
    assert "model.map_augment.bias" not in sd


def test_tiny_preset_size():
    net = SongUNet(**songunet_config("tiny"))
    assert count_parameters(net) == 982_049  # the figure quoted beside the preset
    assert net.sample_shape == (1, 16, 16)
    assert SONGUNET_PRESETS["tiny"]["attn_resolutions"] == []


def test_qkv_channels_are_interleaved():
    torch.manual_seed(0)
    block = UNetBlock(8, 8, emb_channels=16, attention=True)
    n, c, h, w = 2, 8, 3, 4
    qkv = torch.randn(n, 3 * c, h, w)
    out = block.attention(qkv, (n, c, h, w))
    # Reference: channel 3i is q_i, 3i+1 is k_i, 3i+2 is v_i.
    flat = qkv.reshape(n, 3 * c, h * w)
    q, k, v = flat[:, 0::3], flat[:, 1::3], flat[:, 2::3]
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=2)  # [n, query, key]
    ref = (v @ weights.transpose(1, 2)).reshape(n, c, h, w)
    torch.testing.assert_close(out, ref)
    # A blocked split (q = first C channels) must give something else, so the check discriminates.
    qb, kb, vb = flat.chunk(3, dim=1)
    blocked = (vb @ torch.softmax(qb.transpose(1, 2) @ kb / math.sqrt(c), dim=2).transpose(1, 2))
    assert not torch.allclose(out, blocked.reshape(n, c, h, w), atol=1e-3)


def test_unet_block_matches_ddpmpp_formula():
    torch.manual_seed(1)
    block = UNetBlock(8, 16, emb_channels=12, attention=True).eval()
    for p in block.parameters():  # non-trivial weights everywhere (conv1/proj start near zero)
        p.data.normal_(0, 0.2)
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 12)
    s = math.sqrt(0.5)
    h = block.conv0(F.silu(F.group_norm(x, 2, block.norm0.weight, block.norm0.bias, 1e-6)))
    h = F.silu(F.group_norm(h + block.affine(emb)[:, :, None, None], 4, block.norm1.weight, block.norm1.bias, 1e-6))
    y = (block.conv1(h) + block.skip(x)) * s
    qkv = block.qkv(F.group_norm(y, 4, block.norm2.weight, block.norm2.bias, 1e-6))
    y = (block.proj(block.attention(qkv, y.shape)) + y) * s
    torch.testing.assert_close(block(x, emb), y)


def identity_conv(channels, kernel, **kw):
    conv = Conv2d(channels, channels, kernel=kernel, **kw)
    with torch.no_grad():
        conv.weight.zero_()
        for i in range(channels):
            conv.weight[i, i, kernel // 2, kernel // 2] = 1
        conv.bias.zero_()
    return conv


@pytest.mark.parametrize("kernel", [1, 3])
def test_resample_filters(kernel):
    x = torch.randn(2, 3, 8, 8)
    down = identity_conv(3, kernel, down=True)
    up = identity_conv(3, kernel, up=True)
    torch.testing.assert_close(down.resample_filter, torch.full((1, 1, 2, 2), 0.25))
    torch.testing.assert_close(down(x), F.avg_pool2d(x, 2))                      # 2x2 average, then weight
    torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))  # nearest x2
    assert identity_conv(3, kernel).resample_filter is None


def test_bias_is_added_after_resampling():
    conv = identity_conv(2, 1, down=True)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([1.0, -2.0]))
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(conv(x), F.avg_pool2d(x, 2) + conv.bias.reshape(1, -1, 1, 1))


def test_positional_embedding_is_sin_then_cos():
    net = SongUNet(**songunet_config("tiny"))
    sigma_label = torch.tensor([0.3, -1.2])
    freqs = (1e-4) ** (torch.arange(16) / 15)  # 32 noise channels, endpoint=True
    raw = net.map_noise(sigma_label)
    torch.testing.assert_close(raw, torch.cat([(sigma_label[:, None] * freqs).cos(),
                                               (sigma_label[:, None] * freqs).sin()], dim=1))
    swapped = torch.cat([raw[:, 16:], raw[:, :16]], dim=1)
    ref = F.silu(net.map_layer1(F.silu(net.map_layer0(swapped))))
    torch.testing.assert_close(net.embed(sigma_label), ref)


def test_encode_decode_equals_forward_and_keeps_features():
    torch.manual_seed(2)
    net = SongUNet(**songunet_config("tiny", img_resolution=8, augment_dim=9)).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    x, c_noise, aug = torch.randn(3, 1, 8, 8), torch.randn(3), torch.randn(3, 9)
    feats = net.encode(x, c_noise, augment_labels=aug)
    n_skips = len(feats.skips)
    a = net.decode(feats)
    b = net.decode(feats)  # a second decoder reading the same features
    assert len(feats.skips) == n_skips
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, net(x, c_noise, augment_labels=aug), rtol=0, atol=0)
    assert not torch.allclose(a, net(x, c_noise))  # augment labels reach the output


def test_decoder_parameters_are_the_dec_subtree():
    net = SongUNet(**songunet_config("tiny"))
    dec = {id(p) for p in net.decoder_parameters()}
    named = {id(p): n for n, p in net.named_parameters()}
    assert dec and dec == {i for i, n in named.items() if n.startswith("dec.")}


def test_class_labels_and_label_dropout():
    torch.manual_seed(3)
    net = SongUNet(**songunet_config("tiny", img_resolution=8, label_dropout=1.0), label_dim=10)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    x, c_noise = torch.randn(2, 1, 8, 8), torch.randn(2)
    onehot = F.one_hot(torch.tensor([3, 7]), 10).float()
    net.eval()
    assert not torch.allclose(net(x, c_noise, onehot), net(x, c_noise, torch.zeros(2, 10)))
    with pytest.raises(ValueError, match="class_labels"):
        net(x, c_noise)
    net.train()  # label_dropout 1.0 drops every label during training (dropout 0 elsewhere)
    torch.testing.assert_close(net(x, c_noise, onehot), net(x, c_noise, torch.zeros(2, 10)))


def test_fourier_embedding_has_saved_freqs():
    net = SongUNet(**songunet_config("tiny", img_resolution=8, embedding_type="fourier", channel_mult_noise=2))
    assert net.state_dict()["map_noise.freqs"].shape == (32,)
    assert net(torch.randn(1, 1, 8, 8), torch.randn(1)).shape == (1, 1, 8, 8)


def test_bf16_autocast_runs():
    net = SongUNet(**songunet_config("tiny", img_resolution=8)).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(2, 1, 8, 8), torch.randn(2))
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("override,match", [
    ({"encoder_type": "residual"}, "encoder_type"),
    ({"decoder_type": "skip"}, "decoder_type"),
    ({"embedding_type": "rope"}, "embedding_type"),
    ({"img_resolution": 12, "channel_mult": [1, 2, 2, 2]}, "divisible"),
    ({"model_channels": 30}, "GroupNorm"),
    ({"num_blok": 2}, "num_blocks"),
])
def test_bad_config_is_a_user_error(override, match):
    with pytest.raises(UserError, match=match):
        SongUNet(**songunet_config("tiny", **override))


def test_unknown_preset():
    with pytest.raises(UserError, match="ffhq64"):
        songunet_config("imagenet")
