from pathlib import Path

import pytest

from stream.config import Config, build_config
from stream.errors import ConfigError


def test_defaults_are_valid():
    config = build_config()
    assert config == Config()
    assert config.obscure.mode == "synth"


def test_file_then_overrides(tmp_path: Path):
    file = tmp_path / "c.toml"
    file.write_text('[obscure]\nmode = "mask"\ncolour = [255, 0, 0]\n[detect]\nmin_face = 10\n')
    config = build_config(file, {"obscure": {"mode": "pixelate"}})
    assert config.obscure.mode == "pixelate"  # the command line wins
    assert config.obscure.colour == (255, 0, 0)
    assert config.detect.min_face == 10


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"detect": {"min_face": 2}}, "detect.min_face: expected 4..512, got 2"),
        (
            {"obscure": {"mode": "smudge"}},
            "obscure.mode: expected one of ['blur', 'pixelate', 'mask', 'synth']",
        ),
        ({"obscure": {"strength": "strong"}}, "obscure.strength: expected a number"),
        ({"track": {"coast": 3}}, "track.coast: unknown option"),
        ({"tracker": {"x": 1}}, "tracker: unknown config section"),
        ({"obscure": {"colour": [1, 2, 300]}}, "obscure.colour: expected three values 0..255"),
        ({"sink": {"preset": "warp"}}, "sink.preset: expected one of"),
        ({"runner": {"on_failure": "ignore"}}, "runner.on_failure: expected one of ['mask', 'stop']"),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as info:
        build_config(None, overrides)
    assert message in str(info.value)


def test_bad_toml_is_a_config_error(tmp_path: Path):
    file = tmp_path / "c.toml"
    file.write_text("[obscure\nmode=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(file)
    with pytest.raises(ConfigError, match="not found"):
        build_config(tmp_path / "missing.toml")
