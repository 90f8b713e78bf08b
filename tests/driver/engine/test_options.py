"""Typed options (engine/options.py): one dataclass gives the parser, the
defaults, presets and --config files; the names the user set are known."""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

import pytest
import tyro

from subind.engine.options import MISSING, Floats, Ints, JsonObject, Repeated, parse


@dataclass
class Example:
    """An example command's options."""
    name: str = MISSING
    """required"""
    sizes: Ints = field(default_factory=lambda: [1, 2])
    """a list"""
    rate: float = 0.1
    """a number"""
    kind: Literal["a", "b"] = "a"
    """a choice"""
    flag: bool = False
    """a switch"""
    lambdas: Floats = field(default_factory=list)
    """numbers"""
    include: Repeated = field(default_factory=list)
    """repeatable"""
    kwargs: JsonObject = field(default_factory=dict)
    """JSON"""
    out: Optional[Path] = None
    """a path"""


PRESETS = {"small": {"sizes": [3], "rate": 0.5}, "big": {"sizes": [9, 10]}}


def _parse(argv, presets=None):
    return parse({"example": Example}, argv, prog="example", description="",
                 presets=presets, default_preset="small" if presets else None)


def test_flags_lists_and_types():
    parsed = _parse(["--name", "x", "--sizes", "4,5", "--lambdas", "1e-7", "2e-7", "--flag",
                     "--include", "a.*", "--include", "b", "--kwargs", '{"k": 1}',
                     "--out", "o", "--kind", "b"])
    assert parsed.example == Example("x", [4, 5], 0.1, "b", True, [1e-7, 2e-7], ["a.*", "b"],
                                     {"k": 1}, Path("o"))
    assert parsed.given == {"name", "sizes", "lambdas", "flag", "include", "kwargs", "out",
                            "kind"}


def test_defaults_preset_config_file_and_flags_in_that_order(tmp_path):
    assert _parse(["--name", "x"], PRESETS).example.sizes == [3]
    assert _parse(["--name", "x", "--preset", "big"], PRESETS).example.sizes == [9, 10]
    config = tmp_path / "run.yaml"
    config.write_text("name: from-file\nrate: 0.25\nsizes: [7]\n")
    parsed = _parse(["--config", str(config), "--sizes", "8"], PRESETS)
    assert (parsed.example.name, parsed.example.rate, parsed.example.sizes) == (
        "from-file", 0.25, [8])
    assert parsed.given == {"name", "rate", "sizes"}  # the file's and the flags', not the preset's
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"name": "j", "out": "results", "mask-lr": None} | {}))
    with pytest.raises(ValueError, match="unknown option"):
        _parse(["--config", str(as_json)])
    as_json.write_text(json.dumps({"name": "j", "out": "results"}))
    assert _parse(["--config", str(as_json)]).example.out == Path("results")


def test_bad_input_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parse([])  # --name is required
    assert exit_.value.code == 2 and "--name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--name", "x", "--sizes", "1,two"])
    with pytest.raises(SystemExit):
        _parse(["--name", "x", "--kind", "c"])
    with pytest.raises(FileNotFoundError, match="--config: no file"):
        _parse(["--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "run.toml"
    bad.write_text("")
    with pytest.raises(ValueError, match="a .yaml, .yml or .json file"):
        _parse(["--config", str(bad)])
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        _parse(["--config", str(listed)])


def test_every_command_offers_every_field_of_its_options(capsys):
    """A command's parser is its dataclasses: each field is an option in --help."""
    from subind.commands import COMMANDS, command
    from subind.engine.options import flag, option_fields

    for name in COMMANDS:
        module = command(name)
        with pytest.raises(SystemExit) as exit_:
            parse(module.OPTIONS, ["--help"], prog=f"subind {name}", description="",
                  presets=getattr(module, "PRESETS", None),
                  default_preset=getattr(module, "DEFAULT_PRESET", None))
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        for group in module.OPTIONS.values():
            for field_name in option_fields(group):  # a nested group's fields are flat flags
                positional = field_name.upper() in text.upper() and flag(field_name) not in text
                assert flag(field_name) in text or positional, (name, field_name)


def test_config_values_are_parsed_and_typed_as_flags_are(tmp_path, capsys):
    """A file's values go through the flags' parser: YAML's 1e-7 (a string
    to PyYAML) is a number, a scalar for a list is split as the flag splits
    it, and a value that is not of its option's type is refused, never
    taken for true."""
    config = tmp_path / "run.yaml"
    config.write_text("name: x\nlambdas: [1e-7, 5e-7]\nrate: 1e-2\nsizes: '4,5'\n"
                      "include: [a.*]\nkwargs: {k: 1}\nflag: true\n")
    parsed = _parse(["--config", str(config)])
    assert parsed.example == Example("x", [4, 5], 0.01, "a", True, [1e-7, 5e-7], ["a.*"],
                                     {"k": 1}, None)
    assert isinstance(parsed.example.lambdas[0], float)
    # The command line overrides the file, a repeatable option's list included.
    parsed = _parse(["--config", str(config), "--include", "b", "--no-flag"])
    assert parsed.example.include == ["b"] and parsed.example.flag is False
    for text, fragment in (('{"name": "x", "flag": "no"}', "flag is a switch"),
                           ('{"name": "x", "flag": 1}', "flag is a switch")):
        as_json = tmp_path / "bad.json"
        as_json.write_text(text)
        with pytest.raises(ValueError, match=fragment):
            _parse(["--config", str(as_json)])
    for text in ('{"name": "x", "kind": "c"}', '{"name": "x", "rate": "fast"}',
                 '{"name": "x", "sizes": [1.5]}'):
        as_json = tmp_path / "bad.json"
        as_json.write_text(text)
        with pytest.raises(SystemExit) as exit_:
            _parse(["--config", str(as_json)])
        assert exit_.value.code == 2
        assert f"--config {as_json}" in capsys.readouterr().err


@pytest.mark.parametrize("name, text, kind", [("trunc.yaml", "name: [x\n", "YAML"),
                                              ("trunc.json", '{"name": "x"', "JSON")])
def test_a_malformed_config_file_is_named(tmp_path, name, text, kind):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"--config {path} does not parse as {kind}"):
        _parse(["--config", str(path)])


def test_the_readme_yaml_example_parses_for_discover(tmp_path):
    """The README's `--config run.yaml` example, `lambdas: [1e-7, 5e-7]`."""
    from subind.commands import command

    config = tmp_path / "run.yaml"
    config.write_text("lambdas: [1e-7, 5e-7]\nmask_lr: 1e-2\ncontrols: false\n")
    module = command("discover")
    parsed = parse(module.OPTIONS, ["--config", str(config), "--model", "timm:resnet18",
                                    "--data", "imagefolder:x", "--out", str(tmp_path / "o")],
                   prog="subind discover", description="")
    assert parsed.discovery.lambdas == [1e-7, 5e-7] and parsed.discovery.mask_lr == 0.01
    assert parsed.inputs.controls is False and "controls" in parsed.given


def test_a_positional_list_from_a_config_file_is_typed(tmp_path):
    from subind.commands import command

    config = tmp_path / "an.json"
    config.write_text(json.dumps({"subnetworks": ["a.safetensors", "b.safetensors"],
                                  "out": str(tmp_path / "o")}))
    parsed = parse(command("analyze").OPTIONS, ["--config", str(config)],
                   prog="subind analyze", description="")
    assert parsed.options.subnetworks == [Path("a.safetensors"), Path("b.safetensors")]


@dataclass
class Inner:
    """Settings another command declares."""
    epochs: Annotated[int, tyro.conf.arg(aliases=("--inner-epochs",))] = 10
    """epochs"""
    rate: float = 0.5
    """a rate"""


@dataclass
class Outer:
    """A command holding the other's settings."""
    seeds: Ints = field(default_factory=lambda: [0])
    """grid"""
    inner: Inner = field(default_factory=lambda: Inner(epochs=50))
    """the other command's settings"""


def test_nested_settings_are_flags_presets_and_file_keys_of_the_same_namespace(tmp_path):
    from subind.engine.options import assign, identity_of

    presets = {"short": dict(inner=dict(epochs=3))}
    parsed = parse({"o": Outer}, ["--inner-epochs=7"], prog="t", description="",
                   presets=presets, default_preset="short")
    assert parsed.o.inner == Inner(epochs=7, rate=0.5) and parsed.given == {"epochs"}
    parsed = parse({"o": Outer}, [], prog="t", description="", presets=presets,
                   default_preset="short")
    assert parsed.o.inner == Inner(epochs=3)  # the preset's, the rest the field's default
    config = tmp_path / "c.yaml"
    config.write_text("inner_epochs: 4\nrate: 0.25\n")
    parsed = parse({"o": Outer}, ["--config", str(config), "--rate", "0.125"], prog="t",
                   description="", presets=presets, default_preset="short")
    assert parsed.o.inner == Inner(epochs=4, rate=0.125)
    assert identity_of(parsed.o, ("seeds",)) == {"inner.epochs": 4, "inner.rate": 0.125}
    with pytest.raises(ValueError, match="preset 'x': unknown option 'speed'"):
        assign(Outer, {"seeds": [0], "inner": Inner()}, {"speed": 1}, "preset 'x'")
    config.write_text("speed: 1\n")
    with pytest.raises(ValueError, match="unknown option"):
        parse({"o": Outer}, ["--config", str(config)], prog="t", description="")
