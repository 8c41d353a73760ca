"""Optional perceptual loss for stage-1 training: LPIPS-style distance between VGG16 features
(channel-normalized activations at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, squared difference,
averaged). VGG weights cannot be downloaded here, so they come from a local torchvision
`vgg16-397923af.pth`-style state dict named in the config."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torchvision.models import vgg16

from common import UserError, load_checkpoint

VGG_SLICE_ENDS = (4, 9, 16, 23, 30)  # indices in vgg16().features just after each relu*_* tap
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    def __init__(self, weights_path: str | None, mean: list[float], std: list[float]):
        super().__init__()
        if not weights_path or not Path(weights_path).is_file():
            raise UserError("perceptual_weight > 0 needs `perceptual_weights`: a local torchvision VGG16 state dict "
                            f"(vgg16-397923af.pth); got {weights_path!r}. Set perceptual_weight: 0 to train without it")
        vgg = vgg16()
        state = load_checkpoint(weights_path)
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        missing = set(vgg.features.state_dict()) - set(features)
        if missing:
            raise UserError(f"{weights_path} is not a VGG16 state dict: missing {sorted(missing)[:4]}")
        vgg.features.load_state_dict(features)
        self.features = vgg.features[:VGG_SLICE_ENDS[-1]].eval().requires_grad_(False)
        # our normalization -> [0, 1] -> ImageNet normalization, as one affine map per channel
        mean_t, std_t = torch.tensor(mean), torch.tensor(std)
        in_mean, in_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("scale", (std_t / in_std).view(1, 3, 1, 1))
        self.register_buffer("shift", ((mean_t - in_mean) / in_std).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # the VGG stays in eval mode

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        x = x * self.scale + self.shift
        for end in VGG_SLICE_ENDS:
            x = self.features[start:end](x)
            out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            start = end
        return out

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return sum(((a - b) ** 2).sum(1).mean() for a, b in zip(self.taps(real), self.taps(fake))) / len(VGG_SLICE_ENDS)
