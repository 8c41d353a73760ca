"""A page to inpaint your own image: upload one (or pick a test image), paint the hole, choose the
decoding settings, and see the result beside a labelled figure of every step.

    pip install -r requirements-demo.txt
    python app.py                       # http://127.0.0.1:7860, offline, the shipped model
    python app.py --model checkpoints/transformer_small --port 7861   # the earlier 1024-code pair

The page calls maskgit_inpaint.inpaint(), the function the CLI's single-image mode matches: the painted
layer is the mask (opaque = hole, data.masks.read_hole's rule for RGBA masks), and the result
keeps every unpainted pixel of the image exactly. It serves on 127.0.0.1 only and loads nothing
from the network.
"""
from __future__ import annotations

import os
import re
import socket
import warnings
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage reporting

import numpy as np

from common import ArgumentParser, UserError, check_number, check_readable, resolve_device, resolve_path, run_cli
from data import list_images, read_hole
from maskgit_inpaint import Decoding, Inpainted, inpaint
from maskgit_inpaint.figures import steps_figure
from maskgit_inpaint.settings import BLENDS, TOKEN_HOLE_SHARE, TOP_P
from models.maskgit import PRECISIONS, READOUTS, MaskGit
from models.pretrained import DEFAULT_MODEL
from models.schedules import GAMMA_FUNCTIONS

TEST_IMAGES = "datasets/twemoji/test"
MAX_STEPS = 32
BRUSH = "#ff00ff"
BRUSH_SIZE = 4  # in image pixels: on a 64x64 image a stroke covers a few tokens, not most of them
PANEL = 320  # px: the input, editor and result panels, so that a 64x64 image is shown at a readable size


def painted_mask(editor: dict | None) -> np.ndarray:
    """The editor's painted layers merged into one RGBA mask (H, W, 4) whose opaque pixels are the
    hole. One UserError when nothing is painted."""
    layers = [np.asarray(layer) for layer in (editor or {}).get("layers") or [] if layer is not None]
    layers = [layer for layer in layers if layer.ndim == 3 and layer.shape[2] == 4 and layer[..., 3].any()]
    if not layers:
        raise UserError("paint the hole on the image with the brush first")
    mask = np.zeros((*layers[0].shape[:2], 4), dtype=np.uint8)
    mask[..., 3] = np.max([layer[..., 3] for layer in layers], axis=0)
    return mask


def to_editor(image: np.ndarray | None) -> dict | None:
    """The editor's value for a new image: it as background, nothing painted."""
    return None if image is None else {"background": image, "layers": [], "composite": image}


# the page's widgets, in order: the Decoding fields they set (the rest keep Decoding's defaults)
WIDGET_FIELDS = ("total_iter", "sweet_spot", "mask_func", "choice_temperature", "sample_temperature", "seed",
                 "readout", "token_hole_share", "top_p", "flip_average", "blend")
CASTS = {"total_iter": int, "seed": int, "choice_temperature": float, "sample_temperature": float,
         "token_hole_share": float, "top_p": float, "flip_average": bool,
         "sweet_spot": lambda s: int(s) or None}  # a sweet spot of 0: follow T


def run(model: MaskGit, image: np.ndarray | None, editor: dict | None, *values: object
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One press of the button, with the widgets' `values` (WIDGET_FIELDS): (result at the image's
    size, the hole as read, the figure of every step, a status line ending with the last step's
    label). A UserError is shown as one message."""
    if image is None:
        raise UserError("upload an image or pick a test image first")
    mask = painted_mask(editor)
    try:
        settings = {name: CASTS.get(name, lambda v: v)(value) for name, value in zip(WIDGET_FIELDS, values)}
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"every setting needs a value: {dict(zip(WIDGET_FIELDS, values))}") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result: Inpainted = inpaint(image, mask, model, return_steps=True, **settings)
    notes = [in_page_words(str(w.message)) for w in caught]
    hole = np.where(read_hole(mask), 255, 0).astype(np.uint8)
    decoding = Decoding(**settings)
    title = f"{decoding.mask_func or model.mask_func}, T = {decoding.total_iter}, sweet spot {decoding.steps}"
    figure = steps_figure(result.steps, title=title)
    status = "\n\n".join([*(f"note: {n}" for n in notes), f"done: {result.steps[-1].label}"])
    return result.image, hole, figure, status


# the library's advice names the command line's flags; the page says what to do on the page instead
PAGE_ADVICE = {
    r"; if white marks the hole, pass --mask-hole-white \(hole_white=True\)":
        ": paint only the hole, with a smaller brush (Brush: size), or erase and paint again",
    r"; if black marks the hole, drop --mask-hole-white \(hole_white\)":
        ": paint only the hole, with a smaller brush (Brush: size), or erase and paint again",
}


def in_page_words(note: str) -> str:
    """A library warning with its command-line advice replaced by what to do on the page."""
    for pattern, advice in PAGE_ADVICE.items():
        note = re.sub(pattern, advice, note)
    return note


def refuse_non_images(widget):
    """`widget` (a gr.Image) with its decoding of an upload wrapped: gradio decodes the file before
    any handler runs, so a file that is not an image would be a server traceback; it is one message
    on the page instead. (A subclass would make gradio write a .pyi stub beside this file.)"""
    import gradio as gr

    decode = widget.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
            name = getattr(payload, "orig_name", None) or "the file"
            raise gr.Error(f"{name} is not an image this page can read (PNG, JPEG, WebP, ...): {err}",
                           print_exception=False) from None

    widget.preprocess = preprocess
    return widget


def build(model: MaskGit, test_images: list[Path]):
    """The gradio Blocks of the page."""
    import gradio as gr

    def on_run(*values):
        """A press: the outputs, or for bad input (no image, nothing painted) one friendly line in
        the status and the panels left as they were, never an error badge."""
        try:
            return run(model, *values)
        except UserError as err:
            return gr.update(), gr.update(), gr.update(), f"**{str(err)[0].upper()}{str(err)[1:]}.**"

    with gr.Blocks(title="MaskGIT inpainting") as page:
        gr.Markdown("## MaskGIT inpainting (64x64 emoji-style model)\nUpload an image or pick a test image, paint "
                    "the hole with the brush, then press **Inpaint**. Images of any size are resized to the "
                    "model's 64x64 and the result is given back at their size; unpainted pixels are kept exactly.")
        with gr.Row():
            with gr.Column():
                image = refuse_non_images(gr.Image(label="image", type="numpy", image_mode="RGB", sources=["upload"],
                                                     format="png", height=PANEL, elem_id="image"))
                if test_images:
                    picker = gr.Gallery([str(p) for p in test_images], label="or pick a test image", columns=8,
                                        height=2 * PANEL // 3, allow_preview=False, elem_id="picker")

                    def pick(evt: gr.SelectData) -> str:
                        return str(test_images[evt.index])

                    picker.select(pick, None, image)
                editor = gr.ImageEditor(label="paint the hole", type="numpy", image_mode="RGBA", sources=[],
                                        format="png", layers=False, transforms=(), height=PANEL + 80,
                                        brush=gr.Brush(default_size=BRUSH_SIZE, colors=[BRUSH], default_color=BRUSH,
                                                       color_mode="fixed"),
                                        elem_id="editor")
                image.change(to_editor, image, editor)
            with gr.Column():
                total_iter = gr.Slider(1, MAX_STEPS, value=Decoding.total_iter, step=1,
                                       label="T (steps of the mask schedule)")
                sweet_spot = gr.Slider(0, MAX_STEPS, value=Decoding.sweet_spot or 0, step=1,
                                       label="sweet spot S (steps run, at most T; 0: S = T)")
                mask_func = gr.Dropdown(list(GAMMA_FUNCTIONS), value=model.mask_func, label="mask schedule")
                choice_temperature = gr.Slider(0, 10, value=model.choice_temperature, step=0.5,
                                               label="choice temperature (Gumbel noise when choosing tokens to keep)")
                sample_temperature = gr.Slider(0, 2, value=Decoding.sample_temperature, step=0.1,
                                               label="sample temperature (0 = argmax)")
                readout = gr.Dropdown(list(READOUTS), value=Decoding.readout, elem_id="readout",
                                      label="readout: the mean code vector of each prediction, or the sampled token")
                token_hole_share = gr.Slider(0, 0.95, value=Decoding().hole_share, step=0.05,
                                             elem_id="token_hole_share",
                                             label="token hole share: regenerate the tokens more than this share "
                                                   "hole; the others keep the code of their known pixels")
                readout.change(TOKEN_HOLE_SHARE.get, readout, token_hole_share)  # the readout's default
                top_p = gr.Slider(0.05, 1, value=Decoding().nucleus, step=0.05, elem_id="top_p",
                                  label="top-p: draw tokens only from the likeliest codes that make up this share "
                                        "of the probability (1 = every code)")
                readout.change(TOP_P.get, readout, top_p)  # the readout's default
                flip_average = gr.Checkbox(Decoding.flip_average, label="average with the mirror image's result")
                blend = gr.Dropdown(list(BLENDS), value=Decoding.blend,
                                    label="blend: Poisson (no colour seam at the hole's edge) or none")
                seed = gr.Number(Decoding.seed, precision=0, label="seed")
                button = gr.Button("Inpaint", variant="primary", elem_id="run")
        with gr.Row():
            result = gr.Image(label="result", format="png", type="numpy", elem_id="result", interactive=False,
                              height=PANEL)
            hole = gr.Image(label="hole (as read: white = hole)", format="png", type="numpy", elem_id="hole",
                            interactive=False, height=PANEL)
        gr.Markdown("**Every step**: the token mask above (masked tokens dark), the image below")
        figure = gr.Image(show_label=False, format="png", type="numpy", elem_id="steps", interactive=False)
        status = gr.Markdown(elem_id="status")
        settings = [total_iter, sweet_spot, mask_func, choice_temperature, sample_temperature, seed, readout,
                    token_hole_share, top_p, flip_average, blend]  # as WIDGET_FIELDS
        button.click(on_run, [image, editor, *settings], [result, hole, figure, status])
    return page


def check_port(port: int) -> None:
    """--port: a TCP port number that no other program on this machine is listening on."""
    check_number(port, "--port", minimum=1, maximum=65535, integer=True)
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise UserError(f"--port {port} cannot be used ({err.strerror}); pick another port") from None


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="exported transformer folder (default: the shipped one)")
    p.add_argument("--vqgan", default=None, help="VQGAN weights (default: the one the model names)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the transformer's: fp32 or bf16 autocast (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--test-images", default=TEST_IMAGES, help="folder offered in the picker (default: %(default)s)")
    args = p.parse_args(argv)
    check_port(args.port)
    if args.test_images != TEST_IMAGES:  # the default may not be built yet: then the picker is left out
        check_readable(args.test_images, "--test-images", folder=True)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the page needs gradio: pip install -r requirements-demo.txt") from None
    model = MaskGit.from_pretrained(resolve_path(args.model), args.vqgan and resolve_path(args.vqgan),
                                    resolve_device(args.device), args.precision)
    folder = resolve_path(args.test_images)
    test_images = list_images(folder)[:200] if folder.is_dir() else []
    page = build(model, test_images)
    # quiet: gradio's own lines include a hint about public links, which this local page does not offer
    page.launch(server_name="127.0.0.1", server_port=args.port, share=False, quiet=True, prevent_thread_lock=True)
    print(f"the page: http://127.0.0.1:{args.port} (this computer only; Ctrl+C stops it)", flush=True)
    page.block_thread()


if __name__ == "__main__":
    run_cli(main)
