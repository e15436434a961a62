"""A corpus of broken inputs, built on the fly (no committed binaries): covers, audio, tables, model files.

``build(folder)`` writes every case and returns their paths by name. Each name says what is wrong.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

SR = 22050
#: Longer than the 255 bytes a file name may have on Linux file systems.
LONG_NAME = "a" * 300


class Payload:
    """Unpickling this runs code: it creates the file named by ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _exif_rotated_jpeg(path: Path) -> None:
    """Stored as a 64×32 image (left half red, right half blue) with EXIF orientation 6 (rotate 90° to view):
    seen upright it is 32 wide and 64 high, red on top."""
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes(), quality=95)


def build(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, str] = {}

    def put(name: str, content: bytes | None = None) -> Path:
        path = folder / name
        if content is not None:
            path.write_bytes(content)
        cases[Path(name).stem] = str(path)
        return path

    # covers
    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(gradient).save(put("cover_grey16.png"))
    _exif_rotated_jpeg(put("cover_exif_rotated.jpg"))
    put("cover_empty.jpg", b"")
    put("cover_text.jpg", b"not an image at all")
    (folder / "cover_folder.jpg").mkdir(exist_ok=True)
    cases["cover_folder"] = str(folder / "cover_folder.jpg")
    cases["cover_device"] = "/dev/zero"
    cases["cover_long_name"] = str(folder / f"{LONG_NAME}.jpg")
    cases["cover_long_path"] = str(folder / "/".join(["d" * 200] * 25) / "cover.jpg")
    cases["cover_nul_path"] = str(folder / "cover\x00.jpg")  # a spreadsheet cell can hold one; a path cannot

    # audio
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(SR * 12) / SR).astype(np.float32)
    sf.write(put("audio_dc_offset.wav"), np.full(SR * 12, 0.5, np.float32), SR)
    sf.write(put("audio_5ms.wav"), tone[: SR // 200], SR)
    sf.write(put("audio_1s.wav"), tone[:SR], SR)
    non_finite = tone.copy()
    non_finite[SR:2 * SR] = np.nan  # a float WAV can store NaN; a decoder passes it on
    sf.write(put("audio_nan.wav"), non_finite, SR, subtype="FLOAT")
    sf.write(put("audio_12s_tone.wav"), tone, SR)  # a usable clip, for the rows beside the broken ones
    buffer = io.BytesIO()
    sf.write(buffer, tone, SR, format="MP3")
    put("audio_truncated.mp3", buffer.getvalue()[:300])
    put("audio_garbage.mp3", b"ID3" + bytes(range(256)) * 16)
    cases["audio_device"] = "/dev/zero"
    cases["audio_long_name"] = str(folder / f"{LONG_NAME}.wav")
    cases["audio_nul_path"] = str(folder / "audio\x00.wav")

    # model files
    put("model_empty.pt", b"")
    put("model_garbage.pt", b"\x00\x01 not a checkpoint" * 10)
    marker = folder / "payload_ran"
    torch.save({"model_state": {"w": torch.zeros(2)}, "labels": ["a", "b"], "extra": Payload(str(marker))},
               put("model_payload.pt"))
    put("model_payload_legacy.pt", pickle.dumps({"model_state": Payload(str(marker))}))
    cases["payload_marker"] = str(marker)
    buffer = io.BytesIO()
    torch.save({"model_state": {"w": torch.zeros(1000)}, "labels": ["a", "b"]}, buffer)
    put("model_truncated.pt", buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return cases
