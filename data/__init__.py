"""Data: the default Twemoji dataset builder, the lab's folder layout, masks and PyTorch loaders.

Names are imported from their module on first use, so that `python -m data.prepare` and
`python -m data.masks` do not find their module already imported by the package (runpy warns)."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "data.ground_truth": ("IMAGE_SUFFIXES", "list_images", "load_ground_truth", "read_gt_csv", "write_gt_csv"),
    "data.images": ("FITS", "read_image", "restore_size", "save_png"),
    "data.masks": ("MASK_KINDS", "apply_mask", "generate_mask", "hole_fraction", "read_hole", "write_masks"),
    "data.prepare": ("assign_splits", "group_key", "load_stats", "prepare_dataset"),
    "data.datasets": (
        "COLOUR_ORDERS",
        "ImageFolderDataset",
        "InpaintingDataset",
        "denormalize",
        "normalize",
        "pixel_to_token_mask",
        "to_uint8_image",
        "training_views",
        "view_pixels",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
