"""Typed options: each command declares its options once, as a dataclass
whose fields carry the type, the default and (in the field's docstring) the
help; tyro derives the parser from it.  Defaults are layered: the
dataclass's, then a named preset's, then a YAML or JSON file given with
``--config FILE``, then the command line.  The flag of field ``mask_lr`` is
``--mask-lr``; a bool field is ``--name`` / ``--no-name``; a list field takes
``--lambdas 1e-7,5e-7`` or ``--lambdas 1e-7 5e-7``.  A field that holds
another options dataclass (an experiment's ``discovery: Discovery``) adds
that class's fields as flags of the same namespace, spelled as where the
class is declared (with its aliases); presets and files give it either as a
mapping under the field's name or by the inner fields' own names.

We chose tyro over jsonargparse after trying both on `subind discover`: tyro
keeps the flags' spelling (``--mask-lr``, where jsonargparse writes
``--mask_lr``), reads the help from the fields' docstrings with no settings,
and takes lists as words; jsonargparse's ``--config`` is built in, but ours is
a few lines here and the same for every command."""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Mapping, Optional

import tyro
from tyro.constructors import PrimitiveConstructorSpec

MISSING = tyro.MISSING


def _comma_separated(kind, what: str) -> PrimitiveConstructorSpec:
    def parse(words: list[str]) -> list:
        values = []
        for word in words:
            for item in word.split(","):
                if item.strip():
                    try:
                        values.append(kind(item.strip()))
                    except ValueError:
                        raise ValueError(f"expected comma-separated {what}, got {word!r}") \
                            from None
        return values

    return PrimitiveConstructorSpec(
        nargs="*", metavar="X,Y,...", instance_from_str=parse,
        is_instance=lambda value: isinstance(value, list),
        str_from_instance=lambda values: [",".join(str(v) for v in values)])


Ints = Annotated[list[int], _comma_separated(int, "integers")]
Floats = Annotated[list[float], _comma_separated(float, "numbers")]
Strs = Annotated[list[str], _comma_separated(str, "names")]


def json_object(text: str) -> dict:
    """A JSON object given as text, e.g. '{"num_classes": 16}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"expected a JSON object, got {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text!r}")
    return value


JsonObject = Annotated[dict, PrimitiveConstructorSpec(
    nargs=1, metavar="JSON", instance_from_str=lambda words: json_object(words[0]),
    is_instance=lambda value: isinstance(value, dict),
    str_from_instance=lambda value: [json.dumps(value)])]
# A repeatable option: --include a --include b.
Repeated = Annotated[list[str], tyro.conf.UseAppendAction]


def flag(name: str) -> str:
    """The command-line flag of field ``name``."""
    return "--" + name.replace("_", "-")


def read_config_file(path: Path) -> dict:
    """Option values from a YAML (.yaml, .yml) or JSON (.json) file: a mapping
    of field names (``mask_lr``, or ``mask-lr`` as on the command line).  A
    file that does not parse is an error naming it and where it broke."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: no file {path}")
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise ValueError(f"--config {path}: a .yaml, .yml or .json file, please")
    try:
        text = path.read_text()
        if path.suffix == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as err:  # json, yaml and decoding each raise their own kind
        where = str(err).splitlines()
        raise ValueError(f"--config {path} does not parse as "
                         f"{'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{' '.join(w.strip() for w in where)[:300]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values, got "
                         f"{type(values).__name__}")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def _marked(hint, marker) -> bool:
    return typing.get_origin(hint) is Annotated and marker in typing.get_args(hint)[1:]


def _is_positional(hint) -> bool:
    return _marked(hint, tyro.conf.Positional)


def _appends(hint) -> bool:
    return _marked(hint, tyro.conf.UseAppendAction)


def _config_words(hint, name: str, value, path: Path) -> Optional[list[str]]:
    """The command-line words that give field ``name`` the file's ``value``,
    so that a file's values are parsed and typed exactly as flags are (YAML
    reads 1e-7 as a string; "no" is not false); None where the value is None
    (set as it is)."""
    option = flag(name)
    if value is None:
        return None
    if bool in _plain_types(hint) and not isinstance(value, bool):
        raise ValueError(f"--config {path}: {name} is a switch: give true or false, got "
                         f"{value!r}")
    if isinstance(value, bool) and bool in _plain_types(hint):
        return [option if value else "--no-" + option[2:]]
    if isinstance(value, dict):
        return [option, json.dumps(value)]
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (list, dict)) for v in value):
            raise ValueError(f"--config {path}: {name} takes a list of plain values, got "
                             f"{value!r}")
        words = [str(v) for v in value]
        if _appends(hint):
            return [w for word in words for w in (option, word)]
        return [option, *words]
    return [option, str(value)]


def _field_defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = MISSING
    return out


def _nested_class(hint) -> Optional[type]:
    """The options dataclass a field holds, or None for a plain value."""
    inner = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
    return inner if isinstance(inner, type) and dataclasses.is_dataclass(inner) else None


def _aliases(hint) -> tuple[str, ...]:
    """The extra flags a field declares (``tyro.conf.arg(aliases=...)``)."""
    if typing.get_origin(hint) is not Annotated:
        return ()
    return tuple(alias for marker in typing.get_args(hint)[1:]
                 for alias in (getattr(marker, "aliases", None) or ()))


@dataclasses.dataclass(frozen=True)
class OptionField:
    """One option of a group: where it lives (field names from the group's
    class down), its type hint and its other flags."""
    path: tuple
    hint: object
    aliases: tuple = ()


def option_fields(cls) -> dict[str, OptionField]:
    """{option name: OptionField} of ``cls``, the fields of nested options
    dataclasses flattened into the same namespace."""
    out = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = _nested_class(hint)
        if inner is None:
            out[f.name] = OptionField((f.name,), hint, _aliases(hint))
            continue
        for name, option in option_fields(inner).items():
            if name in out:
                raise TypeError(f"{cls.__name__}: option {name!r} declared twice")
            out[name] = OptionField((f.name, *option.path), option.hint, option.aliases)
    return out


def canonical_names(cls) -> dict[str, str]:
    """{every name an option answers to (its own, and its aliases' as field
    names: ``discovery_epochs``): its option name}."""
    out = {}
    for name, option in option_fields(cls).items():
        out[name] = name
        for alias in option.aliases:
            out[alias.lstrip("-").replace("-", "_")] = name
    return out


def assign(cls, values: dict, updates: Mapping, source: str) -> dict:
    """``values`` (``cls``'s top-level fields) with ``updates`` applied: a
    top-level field as it is (a nested options field also from a mapping of
    its fields), an inner option by its own name or alias.  An unknown name
    is an error naming ``source``."""
    out = dict(values)
    fields = option_fields(cls)
    names = canonical_names(cls)
    hints = typing.get_type_hints(cls, include_extras=True)
    top = {f.name for f in dataclasses.fields(cls)}
    for key, value in updates.items():
        if key in top and isinstance(value, Mapping) and _nested_class(hints[key]) is not None:
            inner = type(out[key])
            nested = assign(inner, {f.name: getattr(out[key], f.name)
                                    for f in dataclasses.fields(inner)}, value,
                            f"{source} ({key})")
            out[key] = inner(**_typed(inner, nested))
        elif key in top:
            out[key] = value
        elif key in names:
            path = fields[names[key]].path
            out[path[0]] = _replaced(out[path[0]], path[1:], value)
        else:
            raise ValueError(f"{source}: unknown option {key!r}; the options are "
                             f"{sorted(fields)}")
    return out


def _replaced(instance, path: tuple, value):
    """A copy of the dataclass ``instance`` with the field at ``path`` set."""
    if len(path) == 1:
        return dataclasses.replace(instance, **{path[0]: value})
    inner = _replaced(getattr(instance, path[0]), path[1:], value)
    return dataclasses.replace(instance, **{path[0]: inner})


def _typed(cls, values: dict) -> dict:
    """Path-typed fields (and lists of paths) as Paths (a preset or a file's
    positional list gives strings)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = dict(values)
    for name, value in values.items():
        kinds = _plain_types(hints.get(name))
        if isinstance(value, str) and Path in kinds:
            out[name] = Path(value)
        elif isinstance(value, list) and any(typing.get_args(k) == (Path,) for k in kinds):
            if not all(isinstance(v, (str, Path)) for v in value):
                raise ValueError(f"{name} takes a list of paths, got {value!r}")
            out[name] = [Path(v) for v in value]
    return out


def _plain_types(hint) -> set:
    if hint is None:
        return set()
    if typing.get_origin(hint) is Annotated:
        return _plain_types(typing.get_args(hint)[0])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set().union(*(_plain_types(a) for a in typing.get_args(hint)))
    return {hint}


@dataclasses.dataclass
class Parsed:
    """What the command line gave: each group's options (``options`` is the
    first group's), the names the user set (on the command line or in the
    config file; a preset's are not) and the preset."""
    groups: dict
    given: set
    preset: Optional[str] = None

    @property
    def options(self):
        return next(iter(self.groups.values()))

    def __getattr__(self, name):
        groups = self.__dict__.get("groups", {})
        if name in groups:
            return groups[name]
        raise AttributeError(name)


def given_names(classes, argv: list[str]) -> set[str]:
    """Options of ``classes`` whose flag (or an alias) appears in ``argv``."""
    given = set()
    for cls in classes:
        for name, option in option_fields(cls).items():
            spellings = (flag(name), "--no-" + flag(name)[2:], *option.aliases)
            if any(word.split("=", 1)[0] in spellings for word in argv):
                given.add(name)
    return given


def parse(groups: Mapping[str, type], argv: list[str], *, prog: str, description: str,
          presets: Optional[Mapping[str, dict]] = None,
          default_preset: Optional[str] = None) -> Parsed:
    """An instance of each class in ``groups`` (name → dataclass; their fields
    are the command's options, one flat namespace) from ``argv``: defaults <
    ``presets[--preset]`` (first group) < ``--config FILE`` < the flags.  A
    bad value or a missing required option exits with tyro's message
    (status 2), as argparse does."""
    before = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    before.add_argument("--config", type=Path)
    if presets:
        before.add_argument("--preset", choices=list(presets), default=default_preset)
    known, _ = before.parse_known_args(argv)
    values = {name: _field_defaults(cls) for name, cls in groups.items()}
    first = next(iter(groups))
    preset = getattr(known, "preset", None)
    if preset is not None:
        values[first] = assign(groups[first], values[first], presets[preset],
                               f"preset {preset!r}")
    from_file = read_config_file(known.config) if known.config else {}
    owner, canonical = {}, {}
    for name in reversed(list(groups)):
        for alias, option in canonical_names(groups[name]).items():
            owner[option], canonical[alias] = name, option
    unknown = sorted(set(from_file) - set(canonical))
    if unknown:
        raise ValueError(f"--config {known.config}: unknown option(s) {unknown}"
                         + ("; give --preset on the command line" if "preset" in unknown else
                            f"; the command takes {sorted(owner)}"))
    from_file = {canonical[key]: value for key, value in from_file.items()}
    on_command_line = given_names(groups.values(), argv)
    file_words = []
    for field, value in from_file.items():
        hint = option_fields(groups[owner[field]])[field].hint
        words = None if _is_positional(hint) else _config_words(hint, field, value,
                                                                known.config)
        if words is None:  # None, or a positional list: set as a default (typed below)
            values[owner[field]] = assign(groups[owner[field]], values[owner[field]],
                                          {field: value}, f"--config {known.config}")
        elif not (_appends(hint) and field in on_command_line):  # the flags' own list wins
            file_words += words
    wrapper = _wrapper(groups, presets, default_preset)
    default = wrapper(**{name: cls(**_typed(cls, values[name])) for name, cls in groups.items()},
                      config=known.config, **({"preset": preset} if presets else {}))
    try:
        # The file's values go first as flags: parsed as flags are, and overridden by them.
        result = tyro.cli(wrapper, args=file_words + list(argv), default=default, prog=prog,
                          description=description, config=(tyro.conf.OmitArgPrefixes,))
    except SystemExit as stop:
        if stop.code and file_words:
            import sys

            print(f"{prog}: the values of --config {known.config} were read as the flags "
                  f"{' '.join(file_words)}", file=sys.stderr)
        raise
    for name, cls in groups.items():
        _check_required(cls, getattr(result, name))
    return Parsed({name: getattr(result, name) for name in groups},
                  on_command_line | set(from_file), preset)


def _check_required(cls, options) -> None:
    """A required list (a positional one parses as empty) must name something."""
    for f in dataclasses.fields(cls):
        value = getattr(options, f.name)
        if f.default is MISSING and (value is MISSING or value == []):
            raise ValueError(f"{f.name.upper()} is required: give at least one")


def _wrapper(groups, presets, default_preset):
    """The groups' fields as top-level options, beside --config (and --preset)."""
    fields = [(name, Annotated[cls, tyro.conf.OmitArgPrefixes]) for name, cls in groups.items()]
    fields.append(("config", Annotated[Optional[Path], tyro.conf.arg(
        help="a YAML or JSON file of option values (field names as keys); the command line "
             "overrides them")], dataclasses.field(default=None)))
    if presets:
        fields.append(("preset", Annotated[typing.Literal[tuple(presets)], tyro.conf.arg(
            help="the values the other options start from")],
            dataclasses.field(default=default_preset)))
    return dataclasses.make_dataclass("Command", fields)


def config_from_preset(config_class, presets: dict, preset: str, **overrides_given):
    """``config_class`` with the preset's values, then every override that is
    not None, checked (``validate``); used where code, not a command line,
    builds a configuration (tests, notebooks)."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(presets)}")
    given = {k: v for k, v in overrides_given.items() if v is not None}
    values = assign(config_class, _field_defaults(config_class), presets[preset],
                    f"preset {preset!r}")
    values = assign(config_class, values, given, "config_for")
    names = canonical_names(config_class)
    return config_class(**_typed(config_class, values)).validate(
        {names.get(k, k) for k in given})


def identity_of(options, leave_out: tuple = ()) -> dict:
    """``options``' values for a results directory's manifest, except the
    fields ``leave_out``; a nested options dataclass's fields as
    ``FIELD.INNER``, so a changed setting is named as such."""
    out = {}
    for f in dataclasses.fields(options):
        if f.name in leave_out:
            continue
        value = getattr(options, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in identity_of(value).items()})
        else:
            out[f.name] = value
    return out
