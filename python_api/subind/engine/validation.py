"""Checks every experiment runs on its configuration before any training,
so a bad value is an error naming the field, not a traceback after an hour."""
from __future__ import annotations

import math

import torch


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(name: str, value) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def positive(name: str, value) -> None:
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def in_range(name: str, value, low: float, high: float, low_open: bool = False,
             high_open: bool = False) -> None:
    ok = (_is_number(value) and (low < value if low_open else low <= value)
          and (value < high if high_open else value <= high))
    if not ok:
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low}, {high}"
                         f"{')' if high_open else ']'}, got {value!r}")


def int_list(name: str, values, minimum: int, unique: bool = True) -> None:
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must be a non-empty list of integers, got {values!r}")
    bad = [v for v in values if not _is_int(v) or v < minimum]
    if bad:
        raise ValueError(f"{name} must be integers >= {minimum}, got {bad}")
    if unique and len(set(values)) != len(values):
        raise ValueError(f"{name} lists a value twice: {values}")


def device(value: str) -> None:
    """A device string torch accepts and that exists on this machine."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {value!r} is not a torch device ({err})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {value!r}: no CUDA device is available on this machine "
                             "(torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {value!r}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device {value!r}: use cpu or cuda[:index]")


def finite(name: str, value) -> None:
    if not _is_number(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def non_negative_int(name: str, value) -> None:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def unique_positive_numbers(name: str, values) -> None:
    """A non-empty list of finite positive numbers, none twice (λ lists)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must list at least one number, got {values!r}")
    bad = [v for v in values if not _is_number(v) or v <= 0]
    if bad:
        raise ValueError(f"{name} must be finite positive numbers, got {bad}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} lists a value twice: {values}")


def rgb(name: str, values, positive: bool = False) -> None:
    """Three finite numbers, one per colour channel (normalisation mean/std)."""
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise ValueError(f"{name} needs three numbers (R,G,B), got {values}")
    bad = [v for v in values if not _is_number(v) or (positive and v <= 0)]
    if bad:
        raise ValueError(f"{name} must be three finite{' positive' if positive else ''} "
                         f"numbers, got {values}")


def choices_of(options) -> None:
    """Each field of the dataclass instance ``options`` typed Literal[...] holds
    one of its choices (a parser restricts a flag; this restricts a value set
    in code); the error names the flag."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(options), include_extras=True)
    for f in dataclasses.fields(options):
        hint = hints[f.name]
        while typing.get_origin(hint) is typing.Annotated:
            hint = typing.get_args(hint)[0]
        if typing.get_origin(hint) is typing.Literal:
            choices = typing.get_args(hint)
            value = getattr(options, f.name)
            if value not in choices:
                raise ValueError(f"--{f.name.replace('_', '-')} must be one of "
                                 f"{', '.join(map(str, choices))}, got {value!r}")
