from pathlib import Path
from typing import Any, cast

import pytest

from stream.config import Config, build_config
from stream.errors import ConfigError


def test_defaults_are_valid() -> None:
    config = build_config()
    assert config == Config()
    assert config.obscure.mode == "synth"


def test_file_then_overrides(tmp_path: Path) -> None:
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
def test_bad_values_name_the_field(overrides: Any, message: Any) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(None, overrides)
    assert message in str(info.value)


def test_bad_toml_is_a_config_error(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("[obscure\nmode=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(file)
    with pytest.raises(ConfigError, match="not found"):
        build_config(tmp_path / "missing.toml")


def test_every_flag_names_a_declared_field_and_its_declared_range_holds() -> None:
    """The command line maps onto the config's one declaration: each flag names a field of
    a section, and a value past a field's declared range (``bounded``) is refused with the
    field's name and its range, whether it comes from the flag or from the file."""
    import dataclasses

    from stream.config import Config, ConfigError, flag_fields

    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    config = build_config()
    for option in flag_fields():
        section, name = option.section, option.name
        assert section in sections and hasattr(getattr(config, section), name), option
        declared = {f.name: f for f in dataclasses.fields(getattr(config, section))}[name]
        if "range" not in declared.metadata:
            continue
        _, hi = declared.metadata["range"]
        if isinstance(hi, str):
            continue
        with pytest.raises(ConfigError, match=rf"^{section}\.{name}: expected .*\.\.{hi}, got"):
            build_config(None, {section: {name: type(cast(Any, declared.default))(hi * 2 + 1)}})


def test_the_command_line_is_made_from_the_config_declaration() -> None:
    """Every field declaring a flag has it, with its default in the help, and a value given
    on the command line reaches exactly that field: a new option is one edit in config.py."""
    import typing

    import run_stream
    from stream.config import flag_fields

    parser = run_stream.anonymize_parser()
    text = parser.format_help()
    options = flag_fields()
    assert len(options) >= 29
    for option in options:
        flag = option.flag
        assert flag.names[0] in text, flag.names
        hint = option.hint
        expected: Any
        if hint is bool or bool in typing.get_args(hint):
            argv, expected = [flag.names[0]], True
        elif typing.get_origin(hint) is typing.Literal:
            expected = typing.get_args(hint)[-1]
            argv = [flag.names[0], expected]
        elif typing.get_origin(hint) is tuple:
            argv, expected = [flag.names[0], "1,2,3"], (1, 2, 3)
        elif hint in (int, float):
            expected = hint(option.default + (1 if hint is int else 0.5))
            argv = [flag.names[0], str(expected)]
        else:
            samples = {"backend": "cuda", "preset": "medium", "codec": "libx265"}
            expected = samples.get(option.name, "named.file")
            argv = [flag.names[0], expected]
        args = parser.parse_args(["in.mp4", *argv])
        config = run_stream.config_from_args(args)
        assert getattr(getattr(config, option.section), option.name) == expected, argv
        if option.flag.show_default:
            shown = (
                option.default
                if not isinstance(option.default, tuple)
                else ",".join(map(str, option.default))
            )
            assert f"(default {shown})" in " ".join(text.split()), flag.names
