"""Make tests/reference/musicnn_reference.csv with the ORIGINAL musicnn package (TensorFlow), once.

Not part of the project or its tests: run it in a throw-away environment, e.g.

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install "tensorflow-cpu==2.15.1" "numpy<2" librosa==0.11.0 soundfile "pandas<2.3"
    /tmp/tfenv/bin/pip install --no-deps musicnn==0.1.0
    /tmp/tfenv/bin/python tests/reference/make_musicnn_reference.py /path/to/shared/datasets

For each model and clip it records the clip's tag probabilities as musicnn's own ``top_tags``
computes them (the mean of the per-patch sigmoid outputs over non-overlapping 3-second patches)
and the first patch's 200-d penultimate embedding. (The package's extractor repeats the first
patch's embedding for later patches, a bug of its own, so only the first is compared.)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from musicnn.extractor import extractor

CLIPS = ["gtzan/audio_lossless/rock/rock.00000.flac", "gtzan/audio_lossless/jazz/jazz.00000.flac",
         "gtzan/audio_lossless/classical/classical.00000.flac",
         "paired/previews/3SdTKo2uVsxFblQjpScoHy.mp3"]  # a 44.1 kHz stereo MP3 preview
MODELS = ["MSD_musicnn", "MTT_musicnn"]


def main(data_root: Path) -> None:
    rows = []
    for model in MODELS:
        for clip in CLIPS:
            taggram, tags, features = extractor(str(data_root / clip), model=model, extract_features=True)
            for index, (tag, value) in enumerate(zip(tags, taggram.mean(axis=0))):
                rows.append({"model": model, "clip": clip, "output": "tag", "index": index, "name": tag,
                             "value": float(value)})
            for index, value in enumerate(np.atleast_2d(features["penultimate"])[0]):
                rows.append({"model": model, "clip": clip, "output": "penultimate_first_patch", "index": index,
                             "name": "", "value": float(value)})
    out = Path(__file__).with_name("musicnn_reference.csv")
    pd.DataFrame(rows).to_csv(out, index=False, float_format="%.8g")
    print(f"wrote {len(rows)} values to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
