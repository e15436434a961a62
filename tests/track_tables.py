"""Track tables for the scoring tests: every kind of row, good and broken (cover URLs: the ``cover_server`` fixture)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf


def track_table(tmp_path: Path, covers_loaded, data_root: Path, base_url: str,
                rows: int | None = None) -> tuple[Path, Path, dict[str, str]]:
    """A track table with one row of each kind below (every way a row can go wrong included), and its catalogue.

    ``rows``: that many rows, the kinds repeated in turn with distinct track ids (a larger table).
    Returns ``(table, catalogue, the GTZAN clip of each genre)``."""
    covers = covers_loaded.items[covers_loaded.items["source"] == "discogs"]
    cover = {g: covers[covers["label"] == g]["cover_path"].iloc[70] for g in ("hiphop", "country", "pop")}
    audio = {g: str(sorted((data_root / "gtzan" / "audio" / g).glob("*.ogg"))[0]) for g in ("hiphop", "country", "pop")}
    (tmp_path / "corrupt.jpg").write_text("not an image")
    (tmp_path / "corrupt.ogg").write_bytes(b"OggS" + bytes(200))
    sf.write(tmp_path / "silent.wav", np.zeros(22050 * 5, dtype=np.float32), 22050)
    catalogue = tmp_path / "catalogue.csv"
    (tmp_path / "known.ogg").write_bytes(Path(audio["pop"]).read_bytes())
    pd.DataFrame({"item_id": ["known-track"], "cover_path": [cover["pop"]], "audio_path": ["known.ogg"]}).to_csv(
        catalogue, index=False)  # a relative path: relative to the catalogue
    header = "track_id,cover_path,cover_url,audio_path\n"
    lines = [
        f"t0,{cover['hiphop']},,",                   # 0 cover only
        f"t1,,,{audio['hiphop']}",                   # 1 audio only
        f"t2,{cover['hiphop']},,{audio['hiphop']}",  # 2 both: the fused value of rows 0 and 1
        f"t3,{cover['country']},,{audio['country']}",
        f"t4,{tmp_path / 'missing.jpg'},,{audio['pop']}",  # 4 cover missing: audio carries it
        f"t5,{tmp_path / 'corrupt.jpg'},,",          # 5 corrupt image only → not ok
        f"t6,,,{tmp_path / 'corrupt.ogg'}",          # 6 unreadable audio → not ok
        f"t7,,,{tmp_path / 'silent.wav'}",           # 7 silent clip → not ok
        ",,,",                                       # 8 empty row
        "t9,a,b,c,d,e",                              # 9 malformed row
        "no-such-track,,,",                          # 10 unknown id
        "known-track,,,",                            # 11 resolved through the catalogue
        f"t12,,{base_url}/cover.jpg,",               # 12 cover by URL
        f"t13,,{base_url}/absent.jpg,",              # 13 URL that 404s
    ]
    if rows is not None:
        lines = [_renamed(lines[i % len(lines)], i) for i in range(rows)]
    table = tmp_path / "tracks.csv"
    table.write_text(header + "\n".join(lines) + "\n")
    return table, catalogue, audio


def _renamed(line: str, i: int) -> str:
    """A row of the table with a track id of its own (rows that give an id to look up keep theirs)."""
    first, _, rest = line.partition(",")
    if not first or first in ("no-such-track", "known-track") or line.count(",") != 3:
        return line
    return f"t{i},{rest}"
