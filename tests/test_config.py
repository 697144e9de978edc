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


def test_every_flag_names_a_declared_field_and_its_declared_range_holds():
    """The command line maps onto the config's one declaration: each flag names a field of
    a section, and a value past a field's declared range (``bounded``) is refused with the
    field's name and its range, whether it comes from the flag or from the file."""
    import dataclasses

    import run_stream
    from stream.config import Config, ConfigError

    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    config = build_config()
    for option, (section, name) in run_stream._OPTION_FIELDS.items():
        assert section in sections and hasattr(getattr(config, section), name), option
        declared = {f.name: f for f in dataclasses.fields(getattr(config, section))}[name]
        if "range" not in declared.metadata:
            continue
        _, hi = declared.metadata["range"]
        if isinstance(hi, str):
            continue
        with pytest.raises(ConfigError, match=rf"^{section}\.{name}: expected .*\.\.{hi}, got"):
            build_config(None, {section: {name: type(declared.default)(hi * 2 + 1)}})
