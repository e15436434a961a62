"""Class-specific augmentation (experiment M5): a per-class table of named transforms from the config."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torchvision.transforms import v2

#: Transforms a config may name; each acts on a ``uint8 (3, s, s)`` tensor and keeps its size.
TRANSFORMS: dict[str, Callable[[int], torch.nn.Module]] = {
    "hflip": lambda size: v2.RandomHorizontalFlip(),
    "rotate": lambda size: v2.RandomRotation(15),
    "colour_jitter": lambda size: v2.ColorJitter(0.3, 0.3, 0.3, 0.05),
    "crop": lambda size: v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
    "greyscale": lambda size: v2.RandomGrayscale(0.2),
}


def build_class_augment(table: Mapping[str, Sequence[str]] | None, labels: Sequence[str],
                        size: int) -> list[torch.nn.Module | None]:
    """One composed transform per class index (``None`` where the table gives none).

    The table may cover more classes than the run has (M5's table is written for the paper's
    five); rows of other classes are unused, but every transform name is checked, and a table
    that names none of the run's classes is an error.
    """
    table = {label: list(names or []) for label, names in dict(table or {}).items()}
    for label, names in table.items():
        unknown = sorted(set(names) - set(TRANSFORMS))
        if unknown:
            raise ValueError(f"augment.{label}: unknown transform(s) {unknown}; known: {sorted(TRANSFORMS)}")
    if table and not set(table) & set(labels):
        raise ValueError(f"augment table names none of the label set's classes {list(labels)}: {sorted(table)}")
    return [v2.Compose([TRANSFORMS[name](size) for name in table[label]]) if table.get(label) else None
            for label in labels]
