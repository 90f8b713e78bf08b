"""The driver names its extra when it is missing; the kernel library needs none of it."""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_driver_names_the_missing_extra():
    code = ("import importlib.util\n"
            "real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, package=None: (\n"
            "    None if name == 'tyro' else real(name, package))\n"
            "try:\n"
            "    import subind\n"
            "except ImportError as err:\n"
            "    print('RAISED', err)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RAISED" in out.stdout and "missing: tyro)" in out.stdout
    assert "pip install 'subind-fast[experiments]'" in out.stdout


def test_the_extra_the_driver_checks_is_the_one_pyproject_declares():
    import subind

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["experiments"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in declared}
    assert names == set(subind.EXPERIMENTS_EXTRA.values())
