"""Settings of a run: how the holes are filled (Decoding, the one owner of every decoding default,
from which the CLI flags and inpaint()'s keyword arguments are made) and the defaults of paths and
batch sizes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch

from common import REPO_ROOT, UserError, check_number, check_seed
from maskgit_inpaint.baselines import BASELINES
from models.maskgit import READOUTS
from models.pretrained import DEFAULT_MODEL
from models.schedules import GAMMA_FUNCTIONS, SCHEDULERS

DEFAULT_TRANSFORMER = str(DEFAULT_MODEL.relative_to(REPO_ROOT))  # DEFAULT_MODEL as the flags spell it
DEFAULT_MASKED = "datasets/twemoji/masked_image"
DEFAULT_MASKS = "datasets/twemoji/mask64"
BATCH_SIZE = {"cuda": 64, "cpu": 16}
# what the VQGAN encoder sees in the hole: the input as given (gray), or each hole pixel's nearest
# known pixel, so that the known tokens next to the hole are encoded from something like the image
ENCODE_FILLS = ("gray", "nearest")
BLENDS = ("poisson", "none")  # how a pasted decode meets the known pixels: poisson_blend, or as it is
# the token hole share when none is given, by readout, chosen on the val holes of three emoji styles
# (docs/tokens.md): a mean code blends its candidates, so a mostly known token still gains from the
# transformer; a sampled code is one sharp guess, which the token's own known pixels beat more often
TOKEN_HOLE_SHARE = {"mean": 0.5, "sample": 0.75}
# nucleus sampling's top-p when none is given, by readout, chosen on the val holes of four emoji
# styles (docs/tokens.md): cutting the tail of unlikely codes keeps a sampled token from taking a
# colour the picture does not have
TOP_P = {"mean": 1.0, "sample": 0.8}
CHOICES = {"method": ("maskgit", *BASELINES), "mask_func": GAMMA_FUNCTIONS, "scheduler": SCHEDULERS,
           "readout": READOUTS, "encode_fill": ENCODE_FILLS, "blend": BLENDS}


def by_readout(defaults: dict[str, float]) -> str:
    """A readout-dependent default as a flag's help says it: "0.5 with --readout mean, ..."."""
    return ", ".join(f"{value} with --readout {readout}" for readout, value in defaults.items())


def option(default: object, *flags: str, help: str, **argparse_kwargs: object) -> object:
    """A Decoding field with its command-line flags (maskgit_inpaint.cli.add_decoding_arguments)."""
    return field(default=default, metadata={"flags": flags, "help": help, **argparse_kwargs})


@dataclass(frozen=True)
class Decoding:
    """How the holes are filled: MaskGIT's schedule and sampling, or a baseline. The defaults are the
    best setting measured on the val holes (docs/results.md). Fields left None take the model's
    config (mask_func, choice_temperature), follow T (sweet_spot) or the readout (token_hole_share,
    top_p): see `resolved`."""
    method: str = option("maskgit", "--baseline", choices=BASELINES,
                         help="fill holes without the model, for the results table")
    total_iter: int = option(1, "--total-iter", type=int, help="T: steps of the mask schedule (default: %(default)s)")
    sweet_spot: int | None = option(None, "--sweet-spot", type=int,
                                    help="S: run the first S steps of the T-step schedule and fill what is still "
                                         "masked with that step's choices (default: T)")
    mask_func: str | None = option(None, "--mask-func",
                                   help=f"mask schedule: {', '.join(GAMMA_FUNCTIONS)} (default: the config's "
                                        "gamma_type)")
    choice_temperature: float | None = option(
        None, "--choice-temperature", type=float,
        help="Gumbel noise on the confidence when choosing tokens to keep (default: the config's)")
    sample_temperature: float = option(0.7, "--sample-temperature", type=float,
                                       help="token sampling temperature (0 = argmax) (default: %(default)s)")
    seed: int = option(0, "--random-seed", type=int, help="each image's randomness comes from (seed, index)")
    paste: bool = option(True, "--no-paste", action="store_false",
                         help="write the raw VQGAN decode (what the lab scored) instead of pasting the known pixels "
                              "back (nothing is blended)")
    scheduler: str = option("confidence", "--scheduler", choices=SCHEDULERS,
                            help="which tokens each step keeps: the most confident (MaskGIT) or the next ones in a "
                                 "2-D Halton order (Halton-MaskGIT) (default: %(default)s)")
    readout: str = option("mean", "--readout", choices=READOUTS,
                          help="what the hole decodes: the sampled tokens, or for each the code vector its predicted "
                               "distribution expects (smoother, closer in PSNR) (default: %(default)s)")
    encode_fill: str = option("nearest", "--encode-fill", choices=ENCODE_FILLS,
                              help="what the VQGAN encoder sees in the hole: the gray of the input, or the nearest "
                                   "known pixel, so the known tokens around the hole look less like a gray edge "
                                   "(default: %(default)s)")
    token_hole_share: float | None = option(
        None, "--token-hole-share", type=float,
        help="regenerate only the tokens whose 4x4 patch is more than this share hole; the others keep "
             "the code the encoder gives the pre-filled image (--encode-fill) and so use their own "
             "known pixels; 0 regenerates every token with a hole pixel, as the paper does (default: "
             f"{by_readout(TOKEN_HOLE_SHARE)})")
    top_p: float | None = option(
        None, "--top-p", type=float,
        help="nucleus sampling: draw each token only from the most likely codes whose probabilities first "
             f"reach this sum (1 = every code) (default: {by_readout(TOP_P)})")
    flip_average: bool = option(True, "--flip-average", boolean=True,
                                help="also fill the mirror image and average the two results, mirrored back (twice "
                                     "the work; smoother, closer in PSNR) (default: %(default)s)")
    blend: str = option("poisson", "--blend", choices=BLENDS,
                        help="how the decoded hole meets the pasted known pixels: Poisson blending (the decode's "
                             "gradients, no colour seam at the hole's edge) or none (default: %(default)s)")

    def __post_init__(self) -> None:
        """The one check of the numbers, for the flags and inpaint()'s options alike (the upper bound
        of T, the model's token count, is checked in `resolved`)."""
        check_number(self.total_iter, "--total-iter (total_iter)", minimum=1, integer=True)
        if self.sweet_spot is not None:
            check_number(self.sweet_spot, "--sweet-spot (sweet_spot)", minimum=1, integer=True)
        check_number(self.sample_temperature, "--sample-temperature (sample_temperature; 0 = argmax)", minimum=0)
        if self.choice_temperature is not None:
            check_number(self.choice_temperature, "--choice-temperature (choice_temperature)", minimum=0)
        if self.token_hole_share is not None:
            check_number(self.token_hole_share, "--token-hole-share (token_hole_share)", minimum=0, maximum=1)
            if self.token_hole_share == 1:
                raise UserError("--token-hole-share (token_hole_share) must be below 1: at 1 no token is "
                                "regenerated")
        if self.top_p is not None:
            check_number(self.top_p, "--top-p (top_p)", minimum=0, maximum=1)
            if self.top_p == 0:
                raise UserError("--top-p (top_p) must be above 0: at 0 no code could be drawn")
        check_seed(self.seed, "--random-seed (seed)")
        for name in ("paste", "flip_average"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name, valid in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in valid:
                flag = "--mask-func" if name == "mask_func" else name.replace("_", " ")
                raise UserError(f"unknown {flag} {value!r}; valid: {', '.join(valid)}")

    @property
    def steps(self) -> int:
        """S: the steps actually run (the sweet spot, T when unset, at most T)."""
        return min(self.sweet_spot or self.total_iter, self.total_iter)

    @property
    def nucleus(self) -> float:
        """The top-p in use: the one given, else the readout's (TOP_P)."""
        return TOP_P[self.readout] if self.top_p is None else self.top_p

    @property
    def hole_share(self) -> float:
        """The token hole share in use: the one given, else the readout's (TOKEN_HOLE_SHARE)."""
        return TOKEN_HOLE_SHARE[self.readout] if self.token_hole_share is None else self.token_hole_share

    def resolved(self, mask_func: str, choice_temperature: float, num_tokens: int) -> tuple[Decoding, str | None]:
        """These settings with the model's `mask_func` and `choice_temperature` and the readout's token
        hole share and top-p where unset and the sweet spot clamped to T, and the note that says so when it was
        larger (the one clamp of the CLI, the sweep, inpaint() and the page). T above the model's
        `num_tokens` is a UserError: each step fixes at least one token."""
        check_number(self.total_iter, "--total-iter (total_iter)", minimum=1, maximum=num_tokens, integer=True)
        note = None
        if self.sweet_spot is not None and self.sweet_spot > self.total_iter:
            note = (f"--sweet-spot {self.sweet_spot} is larger than --total-iter {self.total_iter}; "
                    f"using {self.total_iter}")
        return replace(self, sweet_spot=self.steps, token_hole_share=self.hole_share, top_p=self.nucleus,
                       mask_func=self.mask_func or mask_func,
                       choice_temperature=choice_temperature if self.choice_temperature is None
                       else self.choice_temperature), note

    def settings(self) -> dict:
        """The fields that matter for this method, for metrics.json and the sweep's CSV."""
        return asdict(self) if self.method == "maskgit" else {"method": self.method, "seed": self.seed}


def default_batch_size(device: torch.device) -> int:
    return BATCH_SIZE["cuda" if device.type == "cuda" else "cpu"]
