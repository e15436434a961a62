"""Data layer: collections → one item table → label set → saved split."""
