"""Batch scoring: a catalogue of tracks → each branch's predict path → fusion head → one row per input row."""
