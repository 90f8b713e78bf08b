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
