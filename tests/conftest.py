from __future__ import annotations

from pathlib import Path

import pytest

from data.root import resolve_data_root


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real shared datasets; a missing root fails loudly (CI has ../shared beside the clone)."""
    return resolve_data_root()


@pytest.fixture(scope="session")
def covers_loaded(data_root):
    from data.covers import load_covers_table

    return load_covers_table(data_root / "covers" / "covers.csv")


@pytest.fixture(scope="session")
def gtzan30(data_root):
    from data.gtzan import load_gtzan_features

    return load_gtzan_features(data_root / "gtzan" / "features_30_sec.csv")
