"""Checks that a fetched file is what it claims to be, before it is put in place."""
from __future__ import annotations

from pathlib import Path

from audio.io import read_audio
from covers.images import load_cover


def verify_cover(path: Path) -> None:
    """Raise unless ``path`` decodes as a usable cover image."""
    load_cover(path, 32)


def verify_audio(path: Path) -> None:
    """Raise unless ``path`` decodes as audio."""
    read_audio(path)
