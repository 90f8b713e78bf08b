"""The mask modes: the one Python vocabulary of the op layer.

A mode says how an op forms the mask m from the logits s:

    soft      σ(β·s)                          (continuous sparsification; trains s)
    hard      1[s > 0]                        (test time)
    none      1                               (the unmasked weight)
    concrete  clamp(σ(β(s + L))(1 + 2ε) − ε, 0, 1)   (hard-concrete; sampled; trains s)
    gumbel    1[β(s + L) > 0], gradient of σ  (Gumbel-sigmoid straight-through; sampled; trains s)

with L the logistic noise of a key (ops/noise.py) and ε = STRETCH.  The
kernels' table (csrc/include/subind/mask_math.h: kModeNames, kStretch) is the
definition: loading the compiled library checks this copy against it
(ops/library.py), which Python needs without a build.  Every question about
a mode — its code, whether it samples, whether it trains the logits — is
asked here; an unknown name is an error, never a fall-through.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    code: int             # the kernels' integer (mask_math.h: MaskMode)
    sampled: bool         # draws noise from a key [seed, stream]
    trains_logits: bool   # passes a gradient to the logits (a training mode)


MODES = (Mode("soft", 0, sampled=False, trains_logits=True),
         Mode("hard", 1, sampled=False, trains_logits=False),
         Mode("none", 2, sampled=False, trains_logits=False),
         Mode("concrete", 3, sampled=True, trains_logits=True),
         Mode("gumbel", 4, sampled=True, trains_logits=True))
_BY_NAME = {m.name: m for m in MODES}
#: the names in code order, as the compiled library exports them (MODE_NAMES)
MODE_NAMES = tuple(m.name for m in MODES)
#: the training modes' names (their mask passes a gradient to the logits)
TRAINING_MODE_NAMES = tuple(m.name for m in MODES if m.trains_logits)

#: the hard-concrete stretch ε: (γ, ζ) = (−ε, 1 + ε) (Louizos et al.'s −0.1, 1.1)
STRETCH = 0.1
#: −log(−γ/ζ) = −log(ε/(1+ε)): a hard-concrete gate is non-zero with
#: probability σ(s + this/β) (mask_math.h: kZeroGateLogOdds)
ZERO_GATE_LOG_ODDS = -math.log(STRETCH / (1 + STRETCH))


def mode(name) -> Mode:
    """The Mode called ``name``; anything else is a ValueError naming the modes."""
    found = _BY_NAME.get(name) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"mode must be one of {MODE_NAMES}, got {name!r}")
    return found


def check_compiled_table(compiled_names, compiled_stretch: float) -> None:
    """The compiled library's mode table equals this one (else the build is stale)."""
    if tuple(compiled_names) != MODE_NAMES or compiled_stretch != STRETCH:
        raise ImportError(f"subind_fast._C spells the mask modes {tuple(compiled_names)} with "
                          f"stretch {compiled_stretch}, this package {MODE_NAMES} with "
                          f"{STRETCH}: the build is stale; rebuild with `make build`")
