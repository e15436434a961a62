"""A catalogue whose covers or previews are URLs → the same catalogue with local files.

Each URL is fetched once into the download folder (named by the URL's digest, verified to decode,
written atomically), so a second run, or a run that was interrupted, fetches only what is not
there yet. A URL that cannot be had leaves that modality empty with the reason in
``cover_error`` / ``audio_error``; the row stays, and the other modality still serves it.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pandas as pd

from acquire.http import Downloader
from acquire.verify import verify_audio, verify_cover
from data.paired import read_catalogue
from engine.io import atomic_path

log = logging.getLogger(__name__)
#: (URL column, path column, error column, download kind, check).
URL_COLUMNS = (("cover_url", "cover_path", "cover_error", "cover", verify_cover),
               ("audio_url", "audio_path", "audio_error", "audio", verify_audio))


def has_urls(path: str | Path) -> bool:
    """Whether a catalogue has a URL column to fetch."""
    frame, _ = read_catalogue(path)
    return any(url in frame.columns and (frame[url].str.strip() != "").any() for url, *_ in URL_COLUMNS)


def fetch_catalogue(path: str | Path, download_dir: str | Path, max_parallel: int = 8) -> Path:
    """Fetch the URL rows of catalogue ``path``; returns a local catalogue (CSV) to load instead.

    Rows that already name a local file keep it; relative paths are made absolute, so the local
    catalogue can live in ``download_dir`` (``catalogue-<digest of the source path>.csv``).
    """
    path = Path(path).resolve()
    frame, _ = read_catalogue(path)  # malformed rows are dropped here and listed again by the loader
    downloader = Downloader(download_dir, max_parallel=max_parallel)
    wanted = []
    for url_column, path_column, _, kind, verify in URL_COLUMNS:
        if url_column not in frame.columns:
            continue
        local = frame[path_column] if path_column in frame.columns else pd.Series("", index=frame.index)
        wanted += [(url.strip(), kind, verify) for url, file in zip(frame[url_column], local)
                   if url.strip() and not file.strip()]
    fetched = downloader.fetch_many(wanted)
    for url_column, path_column, error_column, kind, _ in URL_COLUMNS:
        if url_column not in frame.columns:
            continue
        paths = frame[path_column].tolist() if path_column in frame.columns else [""] * len(frame)
        errors = frame[error_column].tolist() if error_column in frame.columns else [""] * len(frame)
        for i, (url, file) in enumerate(zip(frame[url_column].str.strip(), paths)):
            if url and not file.strip():
                result = fetched[(url, kind)]
                paths[i], errors[i] = ("", result[1:]) if result.startswith("!") else (result, "")
            elif file.strip() and not Path(file.strip()).is_absolute():
                paths[i] = str(path.parent / file.strip())
        frame[path_column], frame[error_column] = paths, errors
    failed = sum(result.startswith("!") for result in fetched.values())
    log.info("catalogue %s: %d URLs, %d fetched or already here, %d failed", path, len(fetched),
             len(fetched) - failed, failed)
    target = Path(download_dir) / f"catalogue-{hashlib.sha1(str(path).encode()).hexdigest()[:12]}.csv"
    with atomic_path(target) as temporary:
        frame.to_csv(temporary, index=False)
    return target
