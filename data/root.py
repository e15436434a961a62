"""Where the datasets live: one setting, checked before anything reads from it."""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "GENREFUSION_DATA"
#: Beside the project root, as the shared datasets are laid out on the project's machines.
DEFAULT_RELATIVE = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


class DataRootError(FileNotFoundError):
    """The data root, or something expected inside it, is missing."""


def resolve_data_root(configured: str | os.PathLike | None = None) -> Path:
    """Return the data root.

    Order: the ``GENREFUSION_DATA`` environment variable, else ``configured`` (the config's
    ``paths.data_root``), else ``../shared/datasets`` beside the project when present.
    Raises :class:`DataRootError` naming every place it looked.
    """
    looked: list[str] = []
    env = os.environ.get(ENV_VAR)
    candidates: list[tuple[str, Path]] = []
    if env:
        candidates.append((f"${ENV_VAR}", Path(env)))
    if configured:
        candidates.append(("config paths.data_root", Path(configured)))
    candidates.append(("default beside the project", DEFAULT_RELATIVE))
    for origin, path in candidates:
        path = path.expanduser()
        if path.is_dir():
            return path.resolve()
        looked.append(f"  {origin}: {path} (not a directory)")
        if origin != "default beside the project":
            # An explicit setting that points nowhere is an error, not a cue to guess.
            break
    raise DataRootError(
        "No data root found. Looked at:\n" + "\n".join(looked) + "\n"
        f"Set {ENV_VAR}=/path/to/datasets or paths.data_root=/path/to/datasets "
        "(the folder holding covers/, gtzan/, musicoset/)."
    )
