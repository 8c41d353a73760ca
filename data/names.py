"""File names of the lab's folders: their order, and which files of two folders belong together.

Names that are one pattern with numbers in it (image_2.png, image_10.png) are ordered by those
numbers, as the lab's test_gt.csv rows are; other names (the dataset's code points, 1f194.png) by
name. Two folders' files are paired by equal names, else by the numbers in the names, else in order
with one warning."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

_NUMBER = re.compile(r"\d+")


def numbers(stem: str) -> tuple[int, ...]:
    return tuple(int(n) for n in _NUMBER.findall(stem))


def natural_order(files: list[Path]) -> list[Path]:
    """`files` ordered by the numbers in their names when all names are one pattern with numbers
    (image_2 before image_10), otherwise by name."""
    patterns = {_NUMBER.sub("#", f.name) for f in files}
    if len(patterns) == 1 and "#" in next(iter(patterns)):
        return sorted(files, key=lambda f: (numbers(f.stem), f.name))
    return sorted(files)


def names_correspond(a: str, b: str) -> bool:
    """Whether two file stems name the same picture: equal ("1f194" and "1f194"), or the same numbers
    in the same order ("image_007" and "mask_7")."""
    numbers_a, numbers_b = numbers(a), numbers(b)
    return a == b or bool(numbers_a) and numbers_a == numbers_b


def _unique(keys: list) -> bool:
    return len(set(keys)) == len(keys)


def pair_files(files: list[Path], others: list[Path], what: str, where: str | Path) -> list[Path]:
    """`others` (as many as `files`) reordered so that the i-th belongs to the i-th of `files`: by
    equal stems, else by the numbers in the stems (image_7 with mask_007) when each side's numbers
    tell its files apart; otherwise kept in order, with one warning naming an example when paired
    names do not correspond. `what` names the others ("mask") and `where` their folder."""
    for key in (lambda p: p.stem, lambda p: numbers(p.stem)):
        mine, theirs = [key(p) for p in files], [key(p) for p in others]
        if all(mine) and _unique(mine) and _unique(theirs) and set(mine) == set(theirs):
            by_key = dict(zip(theirs, others))
            return [by_key[k] for k in mine]
    unrelated = [(f, o) for f, o in zip(files, others, strict=True) if not names_correspond(f.stem, o.stem)]
    if unrelated:
        file, other = unrelated[0]
        warnings.warn(f"{len(unrelated)} of {len(files)} images are paired (in file-name order) with a {what} "
                      f"of another name in {where}, e.g. {file.name} with {other.name}; check that the pairs "
                      f"belong together, or name each {what} like its image", stacklevel=3)
    return others
