from pathlib import Path

import pytest

from longcat.config import ConfigError, load_settings


def test_defaults_serve_the_embedded_model():
    s = load_settings(env={})
    assert s.port == 8000 and s.host == "127.0.0.1"
    [model] = s.models
    assert (model.id, model.engine, model.context_window) == ("LongCat-2.0-Preview", "embedded", 8192)


def test_precedence_defaults_file_env_flags(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('port = 9000\nlog_level = "debug"\n[[models]]\nid = "m"\nengine = "mock"\nscript = [{text = "hi"}]\n')
    s = load_settings(cfg, env={"LONGCAT_PORT": "9100"})
    assert s.port == 9100 and s.log_level == "debug"
    assert s.models[0].options == {"script": [{"text": "hi"}]}
    assert load_settings(cfg, env={"LONGCAT_PORT": "9100"}, port=9200).port == 9200


def test_config_file_from_env_and_data_dir(tmp_path: Path):
    (tmp_path / "config.toml").write_text("port = 9300\n")
    assert load_settings(env={"LONGCAT_DATA_DIR": str(tmp_path)}).port == 9300
    assert load_settings(env={"LONGCAT_CONFIG": str(tmp_path / "config.toml")}).port == 9300


@pytest.mark.parametrize(
    "text, message",
    [
        ("port = 'abc'", "port"),
        ("nonsense = 1", "unknown setting"),
        ("[[models]]\nid = 'x'\n", "engine"),
        ("[[models]]\nid = 'x'\nengine = 'mock'\ncontext_window = -1\n", "context_window"),
        ("[[models]]\nid='a'\nengine='mock'\n[[models]]\nid='a'\nengine='mock'\n", "unique"),
        ("port = ", "config file"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg, env={})


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError, match="LONGCAT_PORT"):
        load_settings(env={"LONGCAT_PORT": "eighty"})
