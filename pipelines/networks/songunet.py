"""DDPM++ UNet ("SongUNet" in NVlabs/edm), written for SIMS.

Module tree, parameter and buffer names and forward semantics follow EDM's
`training/networks.py`, so official `edm-*-vp.pkl` weights load 1:1 with
`strict=True` once our safe importer has turned them into a state dict. Only the DDPM++
variant is built: `encoder_type`/`decoder_type` 'standard'; 'positional' (DDPM++) or
'fourier' (NCSN++) noise embedding.

The network is split for SIMS' shared-encoder mode: `encode` = mapping network + encoder
(returns `UNetFeatures`), `decode` = decoder. `decoder_parameters()` is what decoder-only
fine-tuning trains.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import strict_from_dict, to_dict
from ..errors import UserError

SKIP_SCALE = math.sqrt(0.5)  # every DDPM++ block rescales residual sums by sqrt(1/2)


def _init_weight(shape, fan_in: int, fan_out: int, gain: float) -> torch.Tensor:
    """Xavier-uniform init scaled by `gain` (EDM's 'xavier_uniform' mode with init_weight)."""
    bound = math.sqrt(6 / (fan_in + fan_out))
    return (torch.rand(*shape) * 2 - 1) * (bound * gain)


# ----------------------------------------------------------------------------
# Layers (names `weight`, `bias`, `resample_filter` as in EDM).

class Linear(nn.Module):
    """Fully connected layer; `bias=False` leaves `bias` as None (e.g. map_augment)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_weight: float = 1.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(_init_weight([out_features, in_features], in_features, out_features,
                                                init_weight))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), b)


class Conv2d(nn.Module):
    """Convolution with optional 2x up/down resampling by a fixed separable filter.

    Down: depthwise stride-2 conv with the filter (2x2 average for [1,1]), then the weight.
    Up: depthwise stride-2 transposed conv with 4x the filter (nearest x2), then the weight.
    `kernel=0` means resampling only (no weight).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter=(1, 1), init_weight: float = 1.0):
        if up and down:
            raise ValueError("Conv2d cannot both upsample and downsample.")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        fan_in, fan_out = in_channels * kernel * kernel, out_channels * kernel * kernel
        self.weight = (nn.Parameter(_init_weight([out_channels, in_channels, kernel, kernel], fan_in, fan_out,
                                                 init_weight)) if kernel else None)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()
        # Registered even when None so the module tree matches EDM's (None buffers are not saved).
        self.register_buffer("resample_filter", f if (up or down) else None)

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.up:
            x = F.conv_transpose2d(x, (f * 4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                   stride=2, padding=f_pad)
        if self.down:
            x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
        if w is not None:
            x = F.conv2d(x, w, padding=w.shape[-1] // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group norm with min(32, C // 4) groups, as in EDM."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        if self.num_groups < 1 or num_channels % self.num_groups:
            raise UserError(f"GroupNorm cannot split {num_channels} channels into {self.num_groups} groups; "
                            "use model_channels that are a multiple of 4 (e.g. 32, 64, 128).")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class PositionalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of the noise label, output [cos, sin]."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise label (NCSN++); `freqs` is a saved buffer."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


# ----------------------------------------------------------------------------
# Residual block with optional resampling and single-head self-attention.

class UNetBlock(nn.Module):
    """DDPM++ residual block: additive embedding, skip_scale sqrt(0.5), resample_proj skip."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, dropout: float = 0.0,
                 resample_filter=(1, 1)):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = 1 if attention else 0
        self.dropout = dropout
        self.skip_scale = SKIP_SCALE
        eps = 1e-6
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, init_weight=1e-5)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = Conv2d(in_channels, out_channels, kernel=1, up=up, down=down,
                               resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, init_weight=math.sqrt(0.2))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, init_weight=1e-5)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        x = F.silu(self.norm1(x + self.affine(emb)[:, :, None, None].to(x.dtype)))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self.attention(self.qkv(self.norm2(x)), x.shape)) + x) * self.skip_scale
        return x

    def attention(self, qkv: torch.Tensor, shape) -> torch.Tensor:
        """softmax(q^T k / sqrt(C)) applied to v; q, k, v interleaved per channel in `qkv`."""
        n, c, h, w = shape
        heads = self.num_heads
        # [N, 3C, H, W] -> [N*heads, C/heads, 3, HW]: channel 3i is q_i, 3i+1 is k_i, 3i+2 is v_i.
        q, k, v = qkv.reshape(n * heads, c // heads, 3, h * w).unbind(2)
        # Attention weights in fp32 even under autocast (EDM's AttentionOp does the same).
        no_autocast = (torch.autocast(qkv.device.type, enabled=False)
                       if torch.amp.is_autocast_available(qkv.device.type) else contextlib.nullcontext())
        with no_autocast:
            logits = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(k.shape[1]))
            weights = logits.softmax(dim=2).to(q.dtype)
        a = torch.einsum("nqk,nck->ncq", weights, v)
        return a.reshape(n, c, h, w)


# ----------------------------------------------------------------------------
# The network.

@dataclass
class SongUNetConfig:
    """Constructor arguments of SongUNet other than label_dim (defaults = EDM's)."""
    img_resolution: int = 32
    img_channels: int = 3
    model_channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    dropout: float = 0.10
    label_dropout: float = 0.0
    embedding_type: str = "positional"
    channel_mult_noise: int = 1
    encoder_type: str = "standard"
    decoder_type: str = "standard"
    resample_filter: list[int] = field(default_factory=lambda: [1, 1])
    augment_dim: int = 0

    def __post_init__(self):
        if self.embedding_type not in ("positional", "fourier"):
            raise UserError(f"embedding_type must be 'positional' (DDPM++) or 'fourier' (NCSN++), "
                            f"got {self.embedding_type!r}.")
        for name in ("encoder_type", "decoder_type"):
            if getattr(self, name) != "standard":
                raise UserError(f"{name}={getattr(self, name)!r} (NCSN++ skip/residual paths) is not supported; "
                                "only 'standard' (DDPM++, used by the official edm-*-vp checkpoints) is built.")
        levels = len(self.channel_mult)
        if levels < 1 or self.img_resolution < 1 or self.img_resolution % (1 << (levels - 1)):
            raise UserError(f"img_resolution {self.img_resolution} must be divisible by 2^(len(channel_mult)-1) "
                            f"= {1 << max(levels - 1, 0)} (channel_mult={self.channel_mult}).")
        if self.img_channels < 1 or self.model_channels < 4 or self.num_blocks < 1:
            raise UserError(f"SongUNet needs img_channels >= 1, model_channels >= 4, num_blocks >= 1 "
                            f"(got {self.img_channels}, {self.model_channels}, {self.num_blocks}).")


class UNetFeatures(NamedTuple):
    """What the encoder hands the decoder: embedding, skip stack, deepest activation."""
    emb: torch.Tensor
    skips: list
    x: torch.Tensor


class SongUNet(nn.Module):
    """DDPM++ UNet F(x, c_noise, class_labels, augment_labels) with EDM's parameter names."""

    Config = SongUNetConfig

    def __init__(self, img_resolution=32, img_channels=3, label_dim=0, augment_dim=0, model_channels=128,
                 channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4, attn_resolutions=(16,),
                 dropout=0.10, label_dropout=0.0, embedding_type="positional", channel_mult_noise=1,
                 encoder_type="standard", decoder_type="standard", resample_filter=(1, 1)):
        super().__init__()
        cfg = SongUNetConfig(
            img_resolution=img_resolution, img_channels=img_channels, model_channels=model_channels,
            channel_mult=list(channel_mult), channel_mult_emb=channel_mult_emb, num_blocks=num_blocks,
            attn_resolutions=list(attn_resolutions), dropout=dropout, label_dropout=label_dropout,
            embedding_type=embedding_type, channel_mult_noise=channel_mult_noise, encoder_type=encoder_type,
            decoder_type=decoder_type, resample_filter=list(resample_filter), augment_dim=augment_dim)
        self.config = cfg
        self.label_dim = label_dim
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        block = dict(emb_channels=emb_channels, dropout=dropout, resample_filter=cfg.resample_filter)

        # Mapping network (registration order = EDM's).
        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)

        # Encoder: every module's output is pushed to the skip stack.
        self.enc = nn.ModuleDict()
        cout = img_channels
        for level, mult in enumerate(cfg.channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, kernel=3)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in cfg.attn_resolutions,
                                                                **block)
        skips = [m.out_channels for m in self.enc.values()]

        # Decoder: each block after the first at a level concatenates one popped skip.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            res = img_resolution >> level
            if level == len(cfg.channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in cfg.attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
            if level == 0:
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, img_channels, kernel=3, init_weight=1e-5)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        r = self.config.img_resolution
        return (self.config.img_channels, r, r)

    def embed(self, noise_labels, class_labels=None, augment_labels=None) -> torch.Tensor:
        """Mapping network: noise (+ label, + augment) embedding -> emb [N, emb_channels]."""
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [cos, sin] -> [sin, cos]
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"This SongUNet is class-conditional (label_dim={self.label_dim}); "
                                 "pass class_labels (one-hot rows, or zeros for unconditional).")
            labels = class_labels.to(emb.dtype)
            if self.training and self.label_dropout:
                keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def encode(self, x, noise_labels, class_labels=None, augment_labels=None) -> UNetFeatures:
        """Mapping network + encoder; the shared half in SIMS' shared-encoder mode."""
        emb = self.embed(noise_labels, class_labels, augment_labels)
        skips = []
        for module in self.enc.values():
            x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
            skips.append(x)
        return UNetFeatures(emb, skips, x)

    def decode(self, feats: UNetFeatures) -> torch.Tensor:
        """Decoder; reads `feats` without changing them (two decoders may share one encoding)."""
        emb, skips, x = feats.emb, list(feats.skips), feats.x
        out = None
        for name, module in self.dec.items():
            if name.endswith("aux_norm"):
                out = module(x)
            elif name.endswith("aux_conv"):
                out = module(F.silu(out))
            else:
                if x.shape[1] != module.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
        return out

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        return self.decode(self.encode(x, noise_labels, class_labels, augment_labels))

    def decoder_parameters(self):
        """Parameters trained in decoder-only fine-tuning (everything under `dec.`)."""
        return list(self.dec.parameters())


# ----------------------------------------------------------------------------
# Presets.

SONGUNET_PRESETS: dict[str, dict] = {
    # Official edm-ffhq-64x64-uncond-vp.pkl: 553 state-dict keys, 61,805,571 parameters.
    "ffhq64": dict(img_resolution=64, img_channels=3, model_channels=128, channel_mult=[1, 2, 2, 2],
                   augment_dim=9, dropout=0.05),
    # Official edm-cifar10-32x32-uncond-vp.pkl: 425 state-dict keys, 55,733,891 parameters.
    "cifar10": dict(img_resolution=32, img_channels=3, model_channels=128, channel_mult=[2, 2, 2],
                    augment_dim=9, dropout=0.13),
    # CPU-sized model for 8x8 / 16x16 grey images (digits): 982,049 parameters at img_channels=1,
    # 178 state-dict keys (measured with count_parameters); attention only in the bottleneck's in0 block.
    "tiny": dict(img_resolution=16, img_channels=1, model_channels=32, channel_mult=[1, 2], num_blocks=2,
                 attn_resolutions=[], dropout=0.0),
}


def songunet_config(preset: str, **overrides) -> dict:
    """Network kwargs of a preset with `overrides` applied (unknown keys are refused)."""
    if preset not in SONGUNET_PRESETS:
        raise UserError(f"Unknown SongUNet preset {preset!r}; choose one of {sorted(SONGUNET_PRESETS)}.")
    kwargs = {**SONGUNET_PRESETS[preset], **overrides}
    return to_dict(strict_from_dict(SongUNetConfig, kwargs, f"SongUNet preset '{preset}'"))


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in module.parameters())
