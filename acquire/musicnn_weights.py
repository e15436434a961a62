"""musicnn's pretrained weights: the PyPI wheel (a file, checked by sha256) → torch state dicts, once.

The ``musicnn`` package cannot be a dependency (TensorFlow 1 graph code, NumPy < 1.17), but its
wheel carries its trained checkpoints as plain data. This reads them with
:mod:`acquire.tf_checkpoint` (no TensorFlow) and writes one state dict per model where
:func:`audio.musicnn.weights_path` looks. Usage (``make install`` runs it):

    python -m acquire.musicnn_weights            # pip download the wheel into .cache/wheels, convert
    python -m acquire.musicnn_weights WHEEL      # convert a wheel you have
"""
from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from acquire.tf_checkpoint import CheckpointFormatError, read_checkpoint
from audio.musicnn import MODELS, MusicnnNet, state_dict_from_tensorflow, weights_path
from engine.io import atomic_path

WHEEL = "musicnn-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
WHEEL_DIR = Path(__file__).resolve().parent.parent / ".cache" / "wheels"
CHECKPOINT_FILES = (".index", ".data-00000-of-00001")


class WheelError(ValueError):
    """A musicnn wheel that is not the expected file (wrong, truncated or corrupt)."""


def check_wheel(wheel: str | Path) -> None:
    """Raise :class:`WheelError` unless ``wheel`` is musicnn 0.1.0's wheel, byte for byte."""
    wheel = Path(wheel)
    if not wheel.is_file():
        raise WheelError(f"no musicnn wheel at {wheel}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise WheelError(f"{wheel} has sha256 {digest}, not musicnn 0.1.0's {WHEEL_SHA256}: a wrong, truncated or "
                         f"corrupt download; delete it and run `python -m acquire.musicnn_weights` again")


def convert_wheel(wheel: str | Path, models: tuple[str, ...] = tuple(MODELS), overwrite: bool = False) -> list[Path]:
    """Check ``wheel`` and write each model's torch state dict (skipping those already converted)."""
    check_wheel(wheel)
    written = []
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as scratch:
        for model in models:
            target = weights_path(model)
            if target.is_file() and not overwrite:
                continue
            for suffix in CHECKPOINT_FILES:
                (Path(scratch) / f"{model}{suffix}").write_bytes(archive.read(f"musicnn/{model}/{suffix}"))
            try:
                state = state_dict_from_tensorflow(read_checkpoint(Path(scratch) / model))
            except (KeyError, CheckpointFormatError) as error:
                raise WheelError(f"{wheel}: the {model} checkpoint could not be read: {error}") from None
            MusicnnNet(n_tags=len(MODELS[model])).load_state_dict(state)  # every tensor found, every shape right
            with atomic_path(target) as temporary:
                buffer = io.BytesIO()
                torch.save(state, buffer)
                temporary.write_bytes(buffer.getvalue())
            written.append(target)
    return written


def download_wheel(folder: Path = WHEEL_DIR) -> Path:
    """``pip download --no-deps musicnn==0.1.0`` into ``folder`` (once); returns the wheel's path."""
    wheel = folder / WHEEL
    if not wheel.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "musicnn==0.1.0", "-d", str(folder)], check=True)
    return wheel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", nargs="?", type=Path, help="a musicnn 0.1.0 wheel (default: pip download it)")
    parser.add_argument("--overwrite", action="store_true", help="convert again even if converted weights exist")
    args = parser.parse_args(argv)
    if not args.overwrite and all(weights_path(m).is_file() for m in MODELS):
        print(f"musicnn weights already converted: {weights_path(next(iter(MODELS))).parent}")
        return 0
    try:
        written = convert_wheel(args.wheel or download_wheel(), overwrite=args.overwrite)
    except WheelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("converted:", *written, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
