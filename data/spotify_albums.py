"""The second real pairing here: tracks of the shared Spotify-cover albums, each with its album's own cover
and Spotify's acoustic descriptors of the track (a tabular audio modality, not waveforms).

MusicOSet's ``tracks.csv`` lists which songs are on which album; ``acoustic_features.csv`` holds
the descriptors of each song. A track's genre is its album's genre in ``covers.csv`` (the seed
artist's genre). Groups tie tracks of one album and of one artist, so neither straddles a split.
"""
from __future__ import annotations

from pathlib import Path


from data.covers import load_covers_table
from data.items import LoadResult, connected_groups, finish_table, problems_frame
from data.musicoset import load_musicoset_tables

#: Spotify's acoustic descriptors in ``acoustic_features.csv`` (every column but the song id).
ACOUSTIC_FEATURES = ["duration_ms", "key", "mode", "time_signature", "acousticness", "danceability", "energy",
                     "instrumentalness", "liveness", "loudness", "speechiness", "valence", "tempo"]


def load_spotify_album_tracks(covers_csv: str | Path, musicoset_root: str | Path) -> LoadResult:
    """One row per (track of a shared Spotify-cover album): ``item_id`` = the song id, the album's cover
    and genre, ``album_id``, ``artist_ids`` and the :data:`ACOUSTIC_FEATURES` columns.

    An album filed under two genres, or a song found on two of these albums, is left out and listed.
    """
    covers = load_covers_table(covers_csv, sources=["spotify"]).items
    covers = covers[covers["album_id"] != ""]
    problems: list[dict] = []
    genres_per_album = covers.groupby("album_id")["label"].nunique()
    for album_id in genres_per_album.index[genres_per_album > 1]:
        problems.append({"where": "covers.csv", "item_id": album_id, "reason": "album filed under two genres"})
    covers = covers[covers["album_id"].map(genres_per_album) == 1].drop_duplicates("album_id")
    tables, table_problems = load_musicoset_tables(musicoset_root, ["tracks", "acoustic_features"])
    tracks = tables["tracks"][["song_id", "album_id"]].merge(
        covers[["album_id", "artist_id", "label", "cover_path", "md5"]], on="album_id", how="inner")
    on_two_albums = tracks["song_id"].duplicated(keep=False)
    for song_id in sorted(set(tracks.loc[on_two_albums, "song_id"])):
        problems.append({"where": "tracks.csv", "item_id": song_id, "reason": "song on two of these albums"})
    tracks = tracks[~on_two_albums]
    features = tables["acoustic_features"][["song_id", *ACOUSTIC_FEATURES]].drop_duplicates("song_id")
    items = tracks.merge(features, on="song_id", how="left").fillna("")
    items = items.rename(columns={"song_id": "item_id", "artist_id": "artist_ids"})
    items["group"] = connected_groups(items[["album_id", "artist_ids"]]).values
    items["source"] = "spotify_albums"
    items["audio_path"] = ""
    return LoadResult(finish_table(items), problems_frame(problems + table_problems.to_dict(orient="records")))
