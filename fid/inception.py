"""The FID variant of Inception-v3, as pytorch-fid defines it.

This is the network ported from the TensorFlow FID code (weights file
`pt_inception-2015-12-05-6726825d.pth`). It differs from torchvision's ImageNet Inception-v3 in:
- the average pools inside the A, C and first E blocks exclude the padding (count_include_pad=False),
- the last E block (Mixed_7c) pools its pool branch with a max-pool instead of an average pool,
- the classifier has 1008 classes (only present so the weights file loads; FID never uses it).
Inputs are images in [0, 1], resized to 299x299 bilinearly and scaled to [-1, 1].
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.inception import (
    BasicConv2d,
    Inception3,
    InceptionA,
    InceptionAux,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
)

from common import UserError

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
# the SHA-256 prefixes of weights files FID accepts: pytorch-fid's, as its name says (torch hub's convention)
TRUSTED_SHA256 = {WEIGHTS_NAME.removesuffix(".pth").rsplit("-", 1)[-1]}
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
WEIGHTS_ENV = "FID_INCEPTION_WEIGHTS"
DIMS = (64, 192, 768, 2048)


def _avg_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(InceptionA):
    """InceptionA whose pool branch averages over the unpadded window."""

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool(x))]


class FIDInceptionC(InceptionC):
    """InceptionC whose pool branch averages over the unpadded window."""

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        return [self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_avg_pool(x))]


class FIDInceptionE(InceptionE):
    """InceptionE whose pool branch averages over the unpadded window, or max-pools (the last block)."""

    def __init__(self, in_channels: int, conv_block: type[nn.Module] | None = None, max_pool: bool = False) -> None:
        super().__init__(in_channels, conv_block)
        self.max_pool = max_pool

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return [self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)]


class FIDInceptionV3(Inception3):
    """pytorch-fid's Inception-v3. `forward(images)` maps (N, 3, H, W) images in [0, 1] to (N, dims)
    features: the spatial mean of the 64/192/768-channel block outputs, or the 2048-d pool features.

    Built with random weights; use `load_inception` for the real ones. Its state dict has exactly the
    key set of the pytorch-fid weights file."""

    def __init__(self, dims: int = 2048) -> None:
        if dims not in DIMS:
            raise UserError(f"--dims must be one of {', '.join(map(str, DIMS))}, not {dims}")
        blocks = [BasicConv2d, FIDInceptionA, InceptionB, FIDInceptionC, InceptionD, FIDInceptionE, InceptionAux]
        super().__init__(num_classes=1008, aux_logits=False, inception_blocks=blocks, init_weights=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.dims = dims
        self.weights_sha256: str | None = None  # set by load_inception; keys the statistics cache

    def _stages(self) -> list[list[nn.Module]]:
        return [
            [self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.maxpool1],
            [self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, self.maxpool2],
            [self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
             self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e],
            [self.Mixed_7a, self.Mixed_7b, self.Mixed_7c],
        ]

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for stage in self._stages()[: DIMS.index(self.dims) + 1]:
            for layer in stage:
                x = layer(x)
        return x.mean(dim=(2, 3))


def find_weights(path: str | os.PathLike | None = None) -> Path:
    """Locate the weights file: `path`, then $FID_INCEPTION_WEIGHTS, then torch's hub cache
    (downloading it there from pytorch-fid's release when the network allows)."""
    for given, origin in ((path, "--inception-weights"), (os.environ.get(WEIGHTS_ENV), f"${WEIGHTS_ENV}")):
        if given:
            if not Path(given).is_file():
                raise UserError(f"Inception weights not found: {given} (from {origin})")
            return Path(given)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME
    if cached.is_file():
        return cached
    try:
        _download(WEIGHTS_URL, cached)
    except OSError as err:
        raise UserError(
            f"FID needs pytorch-fid's Inception weights {WEIGHTS_NAME} and could not download them ({err}); "
            f"get it from {WEIGHTS_URL} and put it at {cached}, or pass --inception-weights PATH "
            f"or set ${WEIGHTS_ENV}"
        ) from None
    return cached


def _download(url: str, dest: Path) -> None:
    """Download `url` to `dest`, checking the hash prefix in the file name. A failed download leaves
    nothing behind: no partial file, and no empty folder it created on the way."""
    created = [folder for folder in (dest.parent, *dest.parent.parents) if not folder.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
        if not digest.hexdigest().startswith(dest.stem.rsplit("-", 1)[-1]):
            raise OSError(f"the file downloaded from {url} has the wrong checksum")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        for folder in created if not dest.exists() else []:  # innermost first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def load_inception(
    weights: str | os.PathLike | None = None, dims: int = 2048, device: str | torch.device = "cpu"
) -> FIDInceptionV3:
    """The FID Inception with pytorch-fid's weights (see `find_weights`), in eval mode on `device`."""
    path = find_weights(weights)
    data = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise UserError(
            f"cannot read {path} as a PyTorch state dict ({type(err).__name__}); FID needs {WEIGHTS_NAME}"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a state dict (got {type(state).__name__}); FID needs {WEIGHTS_NAME}")
    model = FIDInceptionV3(dims)
    check_state_dict(state, model, path)
    sha256 = hashlib.sha256(data).hexdigest()
    if not any(sha256.startswith(prefix) for prefix in TRUSTED_SHA256):
        raise UserError(f"{path} is not pytorch-fid's {WEIGHTS_NAME} (its SHA-256 begins {sha256[:8]}, not "
                        f"{min(TRUSTED_SHA256)}): a FID from other weights compares with no other; download it again")
    model.load_state_dict(state, strict=False)
    model.weights_sha256 = sha256
    return model.eval().requires_grad_(False).to(device)


def check_state_dict(state: dict, model: FIDInceptionV3, path: str | os.PathLike) -> None:
    """Raise a UserError naming the missing, unexpected or wrongly shaped keys of a weights file.
    BatchNorm's `num_batches_tracked` counters may be absent (old PyTorch versions did not save them)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [str(k) for k in state if k not in own]
    shapes = [k for k in own if k in state and getattr(state[k], "shape", None) != own[k].shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            problems.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    if problems:
        raise UserError(
            f"{path} is not pytorch-fid's Inception weights {WEIGHTS_NAME}: keys " + "; ".join(problems)
        )
