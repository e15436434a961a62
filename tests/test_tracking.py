"""What a run logs to MLflow, computed from its rows and folder (the logging itself: tests/test_main_job.py)."""
import pytest

from engine.tracking import check_tracking, flatten_config, headline_metrics, role


def test_each_printed_row_is_logged_under_its_role_and_a_fold_row_under_its_fold():
    assert role("fused (weighted, cross-fitted) · pairing: real") == "fused"
    assert role("image-only (efficientnet_lite0_frozen) · pairing: synthetic") == "image_only"
    assert role("covers-only (efficientnet_lite0_frozen)") == "image_only"  # a run without fusion names it so
    assert role("majority class (always 'rap') · pairing: real") == "majority"
    assert role("audio-only (feature_mlp) · fold 3") == "fold-3/audio_only"  # k folds, no fusion: no overwriting


def test_metrics_carry_their_interval_bounds_and_the_config_is_flat_text():
    metrics = {"accuracy": 0.75, "macro_f1": 0.5, "ci95": {"accuracy": [0.6, 0.9]}, "n": 40, "per_class": {}}
    assert headline_metrics("fused_", metrics) == {"fused_accuracy": 0.75, "fused_accuracy_low": 0.6,
                                                   "fused_accuracy_high": 0.9, "fused_macro_f1": 0.5}
    assert flatten_config({"audio": {"trainer": {"lr": 0.001}, "hidden": [256, 128]}, "seed": 42}) == \
        {"audio.trainer.lr": "0.001", "audio.hidden": "[256, 128]", "seed": "42"}


def test_an_unknown_backend_is_refused():
    from omegaconf import OmegaConf

    check_tracking(OmegaConf.create({"backend": "none"}))
    with pytest.raises(ValueError, match="tracking.backend must be one of"):
        check_tracking(OmegaConf.create({"backend": "wandb"}))
