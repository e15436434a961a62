"""Acquisition: outside sources → files and catalogues (MusicOSet builder, crawler, HTTP, verification)."""
