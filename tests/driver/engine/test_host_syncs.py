"""A discovery step never waits for the device: no value is read back to the
host per step (on a GPU each read is a stall), only at the logging boundaries.

Counted on the CPU the way torch.cuda.set_sync_debug_mode would on a GPU:
every conversion of a tensor to a Python value (item, float, int, bool,
tolist) made by our code (the subind driver or the kernel library) during a
discovery run.  Runs of one epoch with 3 and with 6 batches must read the
same number of values: what a step reads would double.  PyTorch's own reads
(the optimizers' step counters, CPU tensors even on a GPU run) are not ours
and not counted."""
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from subind.engine.protocol import Discovery, DiscoveryHooks, discover
from subind.engine.training import TensorBatches

from classify_task import ClassifyTask

ROOT = Path(__file__).resolve().parents[3]
OURS = (str(ROOT / "python_api"), str(ROOT / "subind_fast"))
CONVERSIONS = ("item", "__float__", "__int__", "__bool__", "tolist", "__index__")
#: reads our code guards to CPU tensors (never a GPU's): β's value check on a CPU β
CPU_ONLY_READS = {("checks.py", "beta_tensor")}



def _count_reads(monkeypatch) -> Counter:
    """Patch the conversions; the Counter fills with the reads our code makes."""
    reads = Counter()
    for name in CONVERSIONS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code
            where = (Path(caller.co_filename).name, caller.co_name)
            if caller.co_filename.startswith(OURS) and where not in CPU_ONLY_READS:
                reads[f"{_name} in {Path(caller.co_filename).name}: {caller.co_name}"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def _reads_in_one_epoch(monkeypatch, batches: int, settings: dict) -> Counter:
    reads = _count_reads(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    x, y = torch.randn(16 * batches, 8), torch.randint(0, 2, (16 * batches,))
    data = TensorBatches(x, y, batch_size=16)
    discover(model, ClassifyTask(), data, data, Discovery(epochs=1, **settings), DiscoveryHooks())
    monkeypatch.undo()
    return reads


@pytest.mark.parametrize("settings", [dict(lambdas=[1e-4]),
                                      dict(target_density=0.3, target_warmup=0)],
                         ids=["l0 penalty", "target density"])
def test_a_discovery_step_reads_nothing_back_to_the_host(monkeypatch, settings):
    few = _reads_in_one_epoch(monkeypatch, 3, settings)
    many = _reads_in_one_epoch(monkeypatch, 6, settings)
    assert many == few, f"reads that grow with the steps: {dict(many - few)}"


def test_the_counter_sees_a_read_by_our_code(monkeypatch):
    import subind_fast as sf

    model = nn.Sequential(nn.Linear(4, 3))
    sf.mask_model(model)
    reads = _count_reads(monkeypatch)
    sf.nn.density(model)  # counts the kept weights into a Python int
    assert sum(reads.values()) > 0, "the patched conversions saw nothing"
