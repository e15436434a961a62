import pytest

from data.gtzan import load_gtzan_features
from data.root import DataRootError, resolve_data_root


def test_env_var_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREFUSION_DATA", str(tmp_path))
    assert resolve_data_root("/somewhere/else") == tmp_path.resolve()


def test_configured_root_used_without_env(tmp_path, monkeypatch):
    monkeypatch.delenv("GENREFUSION_DATA", raising=False)
    assert resolve_data_root(tmp_path) == tmp_path.resolve()


def test_missing_root_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREFUSION_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataRootError) as error:
        resolve_data_root()
    assert str(tmp_path / "nope") in str(error.value)
    assert "GENREFUSION_DATA" in str(error.value)


def test_a_root_missing_a_dataset_names_the_table_it_lacks(tmp_path, monkeypatch):
    (tmp_path / "covers").mkdir()
    monkeypatch.setenv("GENREFUSION_DATA", str(tmp_path))
    features = resolve_data_root() / "gtzan" / "features_30_sec.csv"
    with pytest.raises(FileNotFoundError, match="gtzan/features_30_sec.csv"):
        load_gtzan_features(features)
