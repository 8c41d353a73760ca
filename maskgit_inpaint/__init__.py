"""MaskGIT inpainting as a library: settings, preparation, decoding, blending, baselines, metrics,
figures and outputs, in modules named for what they do, and the code of the command lines (`cli`,
`sweep`, `compare_runs`). inpainting.py, app.py and the scripts are thin clients of it.

    from maskgit_inpaint import inpaint
    result = inpaint("photo.png", "hole.png")   # the shipped model; result.image is (H, W, 3) uint8
"""
from maskgit_inpaint.loading import load_config, load_model, model_config
from maskgit_inpaint.one_image import Inpainted, inpaint
from maskgit_inpaint.pipeline import Result, run_inpainting
from maskgit_inpaint.settings import Decoding

__all__ = ["Decoding", "Inpainted", "Result", "inpaint", "load_config", "load_model", "model_config",
           "run_inpainting"]
