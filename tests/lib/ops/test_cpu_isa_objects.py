"""The built CPU library holds vector instructions only where the running CPU
was asked first: AVX-512 (EVEX-encoded) instructions only in the avx512
loops, AVX/AVX2/FMA (VEX-encoded) ones only in the avx2 and avx512 loops —
so no inline function shared with ATen, nor anything else outside those
units, executes an instruction a baseline x86-64 CPU lacks.  Read off the
linked library's disassembly, where the linker's choice of duplicate inline
copies shows (csrc/cpu/loops/cpu_loops.h)."""
import platform
import re
import shutil
import subprocess
from collections import defaultdict

import pytest

from subind_fast.ops.extensions import load

pytestmark = [
    pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                       reason="x86-64 instruction sets"),
    pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils' objdump"),
]

FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")
INSTRUCTION = re.compile(r"^\s+[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t?(.*)$")
# In 64-bit mode 0x62 always starts an EVEX (AVX-512) instruction and 0xc4/0xc5
# a VEX one; only address-size and segment prefixes may precede them.
IGNORED_PREFIXES = {"67", "2e", "3e", "26", "64", "65", "36"}


def _encodings_by_function(path):
    """{function: {"evex": n, "vex": n, "zmm": n, "ymm": n}} over the library's code."""
    text = subprocess.run(["objdump", "-d", "-C", "--section=.text", str(path)],
                          capture_output=True, text=True, check=True).stdout
    counts = defaultdict(lambda: defaultdict(int))
    current = None
    for line in text.splitlines():
        head = FUNCTION.match(line)
        if head:
            current = head.group(1)
            continue
        ins = INSTRUCTION.match(line)
        if current is None or ins is None or not ins.group(2):
            continue  # a continuation line of a long instruction's bytes
        raw = [b for b in ins.group(1).split()]
        while raw and raw[0] in IGNORED_PREFIXES:
            raw = raw[1:]
        if raw and raw[0] == "62":
            counts[current]["evex"] += 1
        elif raw and raw[0] in ("c4", "c5"):
            counts[current]["vex"] += 1
        counts[current]["zmm"] += "%zmm" in ins.group(2)
        counts[current]["ymm"] += "%ymm" in ins.group(2)
    return counts


@pytest.fixture(scope="module")
def encodings():
    return _encodings_by_function(load("_C").__file__)


def _in(unit, name):
    return f"subind_cpu::isa_{unit}::" in name


def test_avx512_instructions_only_in_the_avx512_loops(encodings):
    outside = sorted(f for f, c in encodings.items() if c["evex"] and not _in("avx512", f))
    assert not outside, f"AVX-512 instructions outside the avx512 loops: {outside[:5]}"


def test_avx_instructions_only_in_the_avx2_and_avx512_loops(encodings):
    outside = sorted(f for f, c in encodings.items()
                     if c["vex"] and not (_in("avx2", f) or _in("avx512", f)))
    assert not outside, f"VEX (AVX/AVX2/FMA) instructions outside the vector loops: {outside[:5]}"


def test_each_unit_is_compiled_for_its_isa(encodings):
    def total(unit, key):
        return sum(c[key] for f, c in encodings.items() if _in(unit, f))

    assert total("default", "vex") == 0 and total("default", "evex") == 0
    assert total("avx2", "ymm") > 0 and total("avx2", "evex") == 0  # vectorised, 8 fp32 lanes
    assert total("avx512", "zmm") > 0  # vectorised, 16 fp32 lanes
    mask_loops = [f for f in encodings if "mask_range<float, float>" in f]
    assert {u for u in ("default", "avx2", "avx512") if any(_in(u, f) for f in mask_loops)} == {
        "default", "avx2", "avx512"}
