"""Every ```python block of the README runs as printed (in a scratch directory)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    """Each block runs; where it trains or uses masks (it anneals β), every
    masked model and subnetwork it leaves keeps some weights — an example
    that ends with an empty mask shows nothing."""
    import torch

    import subind_fast as sf

    monkeypatch.chdir(tmp_path)
    names = {"__name__": "readme"}
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), names)
    if "sf.set_beta" not in BLOCKS[index]:
        return
    shown = {name: value.density() for name, value in names.items()
             if isinstance(value, sf.Subnetwork)}
    shown.update({name: sf.nn.density(value) for name, value in names.items()
                  if isinstance(value, torch.nn.Module) and sf.masked_layers(value)})
    assert shown and all(density > 0 for density in shown.values()), shown


def _command_lines() -> list[list[str]]:
    """Every `subind …` command of the README's bash blocks, as argv (continued
    lines joined, comments dropped, the README's shell variables expanded)."""
    import shlex

    text = "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S))
    text = text.replace("\\\n", " ")
    variables = {"$S": "geirhos-stimuli",
                 "$M": "--model entry:subind.experiments.arithmetic.discovery_sets:quick_gpt2 "
                       "--weights aq/base/L2/model.safetensors",
                 '"experiment:arithmetic/$t"': "experiment:arithmetic/a"}
    commands = []
    for line in text.splitlines():
        for name, value in variables.items():
            line = line.replace(name, value)
        line = line.replace("; done", "")  # the end of a shell loop around the command
        words = shlex.split(line, comments=True)
        starts = [i for i, w in enumerate(words[:-1]) if w == "subind" or
                  (w == "-m" and words[i + 1] == "subind")]
        if not starts or "…" in words:
            continue
        argv = words[starts[0] + (2 if words[starts[0]] == "-m" else 1):]
        commands.append(argv)
    return commands


def test_readme_finds_its_commands():
    assert len(_command_lines()) >= 15


@pytest.mark.parametrize("argv", _command_lines(), ids=lambda argv: " ".join(argv)[:60])
def test_readme_command_parses(argv):
    """Every command line the README shows names a command and only options it
    has, with values of the right types (parsed, not run: most need data or a GPU)."""
    from subind.commands import COMMANDS, command
    from subind.engine.options import parse

    assert argv[0] in COMMANDS, argv
    module = command(argv[0])
    parse(module.OPTIONS, argv[1:], prog=f"subind {argv[0]}", description="",
          presets=getattr(module, "PRESETS", None),
          default_preset=getattr(module, "DEFAULT_PRESET", None))
