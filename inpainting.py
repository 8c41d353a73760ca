"""Inpainting with MaskGIT: fill the holes of a test set, or of one image, by iterative parallel
decoding, and score the results against the ground truth.

    python inpainting.py                                   # default dataset and shipped checkpoints
    python inpainting.py --total-iter 12 --sweet-spot 8 --mask-func linear --save-history
    python inpainting.py --image photo.jpg --mask-kind center --output-dir outputs/one
    python inpainting.py --image photo.jpg --mask hole.png --mask-hole-white --fit crop
    python inpainting.py --baseline ns         # OpenCV Navier-Stokes (or telea, harmonic, nearest, mean-fill)

Outputs in --output-dir, with the lab's names: test_results/image_000.png, ... (one per input, in
input order, at the model's size), inpainted/<input name>.png (at the input's size, known pixels
kept exactly), with --save-history steps/test_{i}.png (a labelled figure of every step),
mask_scheduling/test_{i}.png and imga/test_{i}.png (the lab's unlabelled strips), overview.png, and
metrics.json when ground truth is given (--gt-path; default: test_gt.csv beside the masked images).

The pipeline is the package maskgit_inpaint; from Python, `maskgit_inpaint.inpaint(image, mask)`
fills one image (numpy or PIL, any size) and returns the image and, on request, every step.
"""
from common import run_cli
from maskgit_inpaint.cli import main

if __name__ == "__main__":
    run_cli(main)
