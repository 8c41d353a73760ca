"""Stage 1: a VQGAN that maps a 64x64 image to a 16x16 grid of codebook indices and back.

Module names and the order of layers follow the lab's `VQGAN.pt`, so that checkpoint loads with
`strict=True` and computes the same function (see tests/test_vqgan_compat.py). Channel lists,
resolutions and block counts come from the `model_param` dict of a YAML config.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F


class GroupNorm(nn.Module):
    """32 groups as in the lab model; narrow layers keep at least 4 channels per group, because a
    group of one channel (instance norm) erases each image's mean colour before the output conv."""

    def __init__(self, channels: int):
        super().__init__()
        groups = math.gcd(32, max(1, channels // 4))
        self.gn = nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(x)


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            GroupNorm(in_channels), Swish(), nn.Conv2d(in_channels, out_channels, 3, 1, 1),
            GroupNorm(out_channels), Swish(), nn.Conv2d(out_channels, out_channels, 3, 1, 1),
        )
        if in_channels != out_channels:
            self.channel_up = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.channel_up(x) if hasattr(self, "channel_up") else x
        return skip + self.block(x)


class NonLocalBlock(nn.Module):
    """Single-head self-attention over the h*w positions of a feature map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = GroupNorm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        h_ = self.norm(x)
        q = self.q(h_).flatten(2).transpose(1, 2)  # (B, hw, C)
        k = self.k(h_).flatten(2)  # (B, C, hw)
        v = self.v(h_).flatten(2)  # (B, C, hw)
        attn = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)  # (B, hw queries, hw keys)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class DownSampleBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class UpSampleBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def resampling_stages(num_stages: int, num_resamples: int) -> set[int]:
    """Stages followed by a down/up-sampling block: every other stage counted from the deepest one
    (the lab's two resamplings come after stages 4 and 2 of 5), or the deepest stages when there
    are too few stages for that."""
    if num_resamples > num_stages:
        raise ValueError(f"{num_stages} channel stages cannot hold {num_resamples} resamplings")
    every_other = list(range(num_stages - 1, -1, -2))
    if len(every_other) >= num_resamples:
        return set(every_other[:num_resamples])
    return set(range(num_stages - num_resamples, num_stages))


def num_resamplings(cfg: dict) -> int:
    factor = cfg["img_resolution"] // cfg["latent_resolution"]
    if factor < 1 or factor & (factor - 1) or factor * cfg["latent_resolution"] != cfg["img_resolution"]:
        raise ValueError("img_resolution / latent_resolution must be a power of two")
    return int(math.log2(factor))


class Encoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        channels = cfg["enc_channels"]
        blocks_per_stage = cfg["enc_res_blocks"]
        downsample_after = resampling_stages(len(channels) - 1, num_resamplings(cfg))
        resolution = cfg["img_resolution"]
        layers: list[nn.Module] = [nn.Conv2d(cfg["image_channels"], channels[0], 3, 1, 1)]
        for i in range(len(channels) - 1):
            in_ch, out_ch = channels[i], channels[i + 1]
            for _ in range(blocks_per_stage):
                layers.append(ResidualBlock(in_ch, out_ch))
                in_ch = out_ch
                if resolution == cfg["latent_resolution"]:
                    layers.append(NonLocalBlock(in_ch))
            if i in downsample_after:
                layers.append(DownSampleBlock(out_ch))
                resolution //= 2
        top = channels[-1]
        layers += [ResidualBlock(top, top), NonLocalBlock(top), ResidualBlock(top, top),
                   GroupNorm(top), Swish(), nn.Conv2d(top, cfg["latent_dim"], 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each position: unlike GroupNorm it pools no statistics over
    the image, so a hole elsewhere cannot change a position's features."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PointwiseBlock(nn.Module):
    """A residual block of 1x1 convolutions: mixes channels, never positions."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(ChannelNorm(channels), Swish(), nn.Conv2d(channels, channels, 1),
                                   ChannelNorm(channels), Swish(), nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class LocalEncoder(nn.Module):
    """An encoder whose code at each position depends only on that token's patch and the
    LOCAL_MARGIN pixels around it: two 3x3 convolutions on the pixels, the patch folded into
    channels (pixel unshuffle), then 1x1 blocks with per-position norms. A hole therefore cannot
    change the code of a token more than one token away from it, whatever fills it."""

    def __init__(self, cfg: dict):
        super().__init__()
        pixel, top = cfg["enc_channels"][0], cfg["enc_channels"][-1]
        patch = cfg["img_resolution"] // cfg["latent_resolution"]
        layers: list[nn.Module] = [nn.Conv2d(cfg["image_channels"], pixel, 3, 1, 1), Swish(),
                                   nn.Conv2d(pixel, pixel, 3, 1, 1), Swish(),
                                   nn.PixelUnshuffle(patch),  # (B, pixel * patch^2, h, w)
                                   nn.Conv2d(pixel * patch * patch, top, 1)]
        layers += [PointwiseBlock(top) for _ in range(cfg["enc_res_blocks"] + 2)]
        layers += [ChannelNorm(top), Swish(), nn.Conv2d(top, cfg["latent_dim"], 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


LOCAL_MARGIN = 2  # pixels beyond its patch that a LocalEncoder code sees (its two 3x3 convolutions)


class Decoder(nn.Module):
    """Latents (B, latent_dim, h, w) -> images (B, 3, H, W). `context` (KnownPixels' output), when
    given, is added to the feature map at each of `entries`: after the input conv and after each
    upsampling, one tensor per resolution from h up to H."""

    def __init__(self, cfg: dict):
        super().__init__()
        channels = cfg["dec_channels"]
        blocks_per_stage = cfg["dec_res_blocks"]
        upsample_after = resampling_stages(len(channels), num_resamplings(cfg))
        resolution = cfg["latent_resolution"]
        in_ch = channels[-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg["latent_dim"], in_ch, 3, 1, 1),
                                   ResidualBlock(in_ch, in_ch), NonLocalBlock(in_ch), ResidualBlock(in_ch, in_ch)]
        for i in reversed(range(len(channels))):
            out_ch = channels[i]
            for _ in range(blocks_per_stage):
                layers.append(ResidualBlock(in_ch, out_ch))
                in_ch = out_ch
                if resolution == cfg["latent_resolution"]:
                    layers.append(NonLocalBlock(in_ch))
            if i in upsample_after:
                layers.append(UpSampleBlock(in_ch))
                resolution *= 2
        layers += [GroupNorm(in_ch), nn.Conv2d(in_ch, cfg["image_channels"], 3, 1, 1)]
        self.model = nn.Sequential(*layers)
        self.entries = [0] + [i for i, layer in enumerate(layers) if isinstance(layer, UpSampleBlock)]

    def entry_widths(self) -> list[int]:
        """The channels of the feature map at each entry (what KnownPixels must produce)."""
        return [self.model[i].conv.out_channels if i else self.model[0].out_channels for i in self.entries]

    def forward(self, x: torch.Tensor, context: list[torch.Tensor] | None = None) -> torch.Tensor:
        if context is None:
            return self.model(x)
        features = iter(context)
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in self.entries:
                x = x + next(features)
        return x


KNOWN_PIXEL_WIDTH = 32  # KnownPixels' channels at full resolution, doubled at each downsampling


class KnownPixels(nn.Module):
    """What a known-pixel decoder sees besides the tokens: the known pixels (hole zeroed) and the
    hole, (B, 4, H, W), as features for each Decoder entry (coarsest first). Its output convolutions
    start at zero, so a new one leaves the decoder as it was; fitted, it lets the decoded hole meet
    the pixels around it, which the tokens alone only approximate."""

    def __init__(self, cfg: dict, widths: list[int]):
        super().__init__()
        width = KNOWN_PIXEL_WIDTH
        self.stem = nn.Sequential(nn.Conv2d(cfg["image_channels"] + 1, width, 3, 1, 1), Swish(),
                                  nn.Conv2d(width, width, 3, 1, 1), Swish())
        self.down = nn.ModuleList()
        for i in range(len(widths) - 1):  # one per upsampling of the decoder
            self.down.append(nn.Sequential(nn.Conv2d(width << i, width << (i + 1), 3, 2, 1), Swish(),
                                           nn.Conv2d(width << (i + 1), width << (i + 1), 3, 1, 1), Swish()))
        out_widths = [width << i for i in range(len(widths))][::-1]  # coarsest first, as the decoder's entries
        self.out = nn.ModuleList(nn.Conv2d(c, w, 1) for c, w in zip(out_widths, widths))
        for conv in self.out:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, known: torch.Tensor, hole: torch.Tensor) -> list[torch.Tensor]:
        """known (B, C, H, W) normalized images, hole (B, 1, H, W) bool -> features for the entries."""
        features = [self.stem(torch.cat([known * ~hole, hole.to(known.dtype)], 1))]
        for down in self.down:
            features.append(down(features[-1]))
        return [out(f) for out, f in zip(self.out, features[::-1])]


def code_vectors(vectors: torch.Tensor, l2_codes: bool) -> torch.Tensor:
    """Vectors along dim 1, a codebook's stored rows (K, C) or latents (B, C, h, w), as the codes
    compare and decode them: unit vectors with `l2_codes`, else as they are."""
    return F.normalize(vectors, dim=1) if l2_codes else vectors


class Codebook(nn.Module):
    """Nearest-neighbour vector quantizer with a straight-through gradient. With `l2_codes` the
    latents and the codes are unit vectors, so the nearest code is the most similar in direction."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.num_codebook_vectors = cfg["num_codebook_vectors"]
        self.latent_dim = cfg["latent_dim"]
        self.beta = cfg["beta"]
        self.l2 = cfg.get("l2_codes", False)
        self.embedding = nn.Embedding(self.num_codebook_vectors, self.latent_dim)
        self.embedding.weight.data.uniform_(-1.0 / self.num_codebook_vectors, 1.0 / self.num_codebook_vectors)

    @property
    def vectors(self) -> torch.Tensor:
        """(K, C) the code vectors the latents are compared with and decoded from."""
        return code_vectors(self.embedding.weight, self.l2)

    def code_space(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents as the codes see them: unit vectors with `l2_codes`, else as they are."""
        return code_vectors(z, self.l2)

    def nearest_indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, h, w) indices of the nearest codes by squared L2 distance."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)  # (B*h*w, C)
        # in fp32 even inside autocast: bf16 products pick other codes for a large share of the latents
        with torch.autocast(z.device.type, enabled=False) if torch.amp.is_autocast_available(z.device.type) \
                else nullcontext():
            flat, codes = flat.float(), self.vectors.float()
            distances = (flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1)
                         - 2 * flat @ codes.t())  # (B*h*w, K)
        return distances.argmin(dim=1).reshape(b, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices -> (B, C, h, w) code vectors."""
        return F.embedding(indices, self.vectors).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (z_q with straight-through gradient, indices (B*h*w,), codebook + commitment loss)."""
        indices = self.nearest_indices(z)
        z_q = self.lookup(indices)
        loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()
        return z_q, indices.reshape(-1), loss


class VQGAN(nn.Module):
    """Encoder -> quant_conv -> Codebook -> post_quant_conv -> Decoder."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.encoder = LocalEncoder(cfg) if cfg.get("encoder", "global") == "local" else Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.known_pixels = KnownPixels(cfg, self.decoder.entry_widths()) if cfg.get("known_pixels") else None
        self.codebook = Codebook(cfg)
        self.quant_conv = nn.Conv2d(cfg["latent_dim"], cfg["latent_dim"], 1)
        self.post_quant_conv = nn.Conv2d(cfg["latent_dim"], cfg["latent_dim"], 1)

    @property
    def latent_resolution(self) -> int:
        return self.cfg["latent_resolution"]

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalized images -> (B, latent_dim, h, w) continuous latents before quantization
        (unit vectors with `l2_codes`)."""
        return self.codebook.code_space(self.quant_conv(self.encoder(x)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (z_q (B, latent_dim, h, w), indices (B*h*w,), q_loss), as the lab's VQGAN does."""
        return self.codebook(self.encode_latents(x))

    def decode(self, z_q: torch.Tensor, known: torch.Tensor | None = None, hole: torch.Tensor | None = None
               ) -> torch.Tensor:
        """(B, latent_dim, h, w) latents -> (B, 3, H, W) images. A known-pixel decoder (`known_pixels`
        in the config) also sees `known` (B, 3, H, W), normalized, outside `hole` (B, 1, H, W) bool;
        without them, or for another VQGAN, the tokens alone decide."""
        context = None if self.known_pixels is None or hole is None else self.known_pixels(known, hole)
        return self.decoder(self.post_quant_conv(z_q), context)

    def decode_indices(self, indices: torch.Tensor, known: torch.Tensor | None = None,
                       hole: torch.Tensor | None = None) -> torch.Tensor:
        """(B, h*w) or (B, h, w) token ids -> (B, 3, H, W) images (decode)."""
        side = self.latent_resolution
        return self.decode(self.codebook.lookup(indices.reshape(-1, side, side)), known, hole)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_q, indices, q_loss = self.encode(x)
        return self.decode(z_q), indices, q_loss

    def last_layer_weight(self) -> torch.Tensor:
        """The decoder's output conv weight, for the adaptive GAN loss weight."""
        return self.decoder.model[-1].weight


class Discriminator(nn.Module):
    """PatchGAN discriminator: a real/fake logit per overlapping patch."""

    def __init__(self, image_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(image_channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for i in range(1, num_layers + 1):
            prev, mult = mult, min(2 ** i, 8)
            layers += [
                nn.Conv2d(base_channels * prev, base_channels * mult, 4, 2 if i < num_layers else 1, 1, bias=False),
                nn.BatchNorm2d(base_channels * mult), nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(base_channels * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
