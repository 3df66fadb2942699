"""One schema for the whole configuration: a typo anywhere is an error naming the file, the key
path and the nearest valid key; nothing runs on a profile with a bad value."""

import pytest
import yaml

from spark_pipeline.config import load_config
from spark_pipeline.corpus.settings import CorpusSettings
from spark_pipeline.evaluation.settings import EvalSettings
from spark_pipeline.release.settings import ReleaseSettings
from spark_pipeline.schema import ConfigError
from spark_pipeline.training.settings import SettingsError, TrainingSettings


def _profile(tmp_path, values: dict):
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_a_misspelt_training_key_is_an_error_not_a_default(tmp_path):
    """It used to load, and the run trained with the defaults."""
    profile = _profile(tmp_path, {"training": {"optimizer": {"learnig_rate": 0.5}, "max_stepz": 3}})
    with pytest.raises(SettingsError) as err:
        TrainingSettings.load(profile)
    text = str(err.value)
    assert profile in text and "hero.yaml" in text
    assert "training.optimizer.learnig_rate: unknown key (did you mean learning_rate?)" in text
    assert "training.max_stepz: unknown key (did you mean max_steps?)" in text


@pytest.mark.parametrize("values,expected", [
    ({"training": {"model": {"shape": {"hidden_sise": 64}}}},
     "training.model.shape.hidden_sise: unknown key (did you mean hidden_size?)"),
    ({"training": {"lora": {"target_modules": ["q_proj", "mlp"]}}}, "training.lora.target_modules[1] = 'mlp'"),
    ({"training": {"optimizer": {"learning_rate": "1e-4"}}}, "YAML read it as text"),
    ({"training": {"schedule_horizon": 0}}, "training.schedule_horizon = 0"),
    ({"training": {"mixed_precision": "fp8"}}, "expected 'bf16' or 'no'"),
])
def test_training_values_are_typed_with_ranges_and_enums(tmp_path, values, expected):
    with pytest.raises(SettingsError, match=None) as err:
        TrainingSettings.load(_profile(tmp_path, values))
    assert expected in str(err.value)


@pytest.mark.parametrize("values,loader,expected", [
    ({"corpus": {"mixture": {"recipee": "domain_only"}}}, CorpusSettings.load,
     "corpus.mixture.recipee: unknown key (did you mean recipe?)"),
    ({"corpus": {"eval": {"max_fraction": 1.5}}}, CorpusSettings.load, "corpus.eval.max_fraction = 1.5"),
    ({"evaluation": {"batch_sise": 2}}, EvalSettings.load, "evaluation.batch_sise: unknown key (did you mean batch_size?)"),
    ({"evaluation": {"external_models": [{"name": "q", "provider": "openai", "modle": "m"}]}}, EvalSettings.load,
     "evaluation.external_models[0].modle: unknown key (did you mean model?)"),
    ({"release": {"dtype": "fp8"}}, ReleaseSettings.load, "release.dtype = 'fp8'"),
    ({"trainig": {"max_steps": 3}}, load_config, "trainig: unknown key (did you mean training?)"),
])
def test_every_section_refuses_unknown_keys_and_bad_values(tmp_path, values, loader, expected):
    with pytest.raises(ConfigError) as err:
        loader(_profile(tmp_path, values))
    assert expected in str(err.value)


def test_settings_json_with_an_unknown_key_is_refused():
    values = {**TrainingSettings.load("demo").to_dict(), "max_stepz": 3}
    with pytest.raises(SettingsError, match=r"max_stepz: unknown key \(did you mean max_steps\?\)"):
        TrainingSettings.from_dict(values, source="run/settings.json")


def test_the_fingerprint_of_the_paper_settings_is_stable():
    """Runs, studies and cards compare settings by fingerprint: typing them must not change it
    (1024 stays an integer; 1.5e-5 a float)."""
    hero = TrainingSettings.load("hero")
    assert hero.to_dict()["lora_alpha"] == 1024 and isinstance(hero.to_dict()["lora_alpha"], int)
    assert TrainingSettings.from_dict(hero.to_dict()).fingerprint() == hero.fingerprint()


def test_the_cli_refuses_a_bad_or_missing_profile_before_running_anything(tmp_path, monkeypatch, capsys):
    """A profile that did not exist used to run the demo on the defaults without a word."""
    from spark_pipeline.cli import main

    monkeypatch.setenv("SPARK_STORAGE", str(tmp_path / "storage"))
    monkeypatch.setenv("SPARK_PROFILE", "no_such_profile")
    assert main(["demo"]) == 2
    assert "configuration profile 'no_such_profile'" in capsys.readouterr().err
    monkeypatch.setenv("SPARK_PROFILE", _profile(tmp_path, {"training": {"max_stepz": 3}}))
    assert main(["demo"]) == 2
    assert "did you mean max_steps?" in capsys.readouterr().err
    assert not (tmp_path / "storage" / "pairs").exists(), "nothing ran"


def test_an_edited_profile_is_read_again(tmp_path):
    """The profile used to be cached by its name: a code server that stayed up kept the old
    values after the file was edited (and a fixed typo kept failing)."""
    import os

    profile = _profile(tmp_path, {"training": {"max_steps": 3}})
    assert TrainingSettings.load(profile).max_steps == 3
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump({"training": {"max_steps": 40}}))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert TrainingSettings.load(profile).max_steps == 40
