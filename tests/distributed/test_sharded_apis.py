"""The kernel library's model-level APIs on FSDP2-sharded parameters (L0,
density, hard masks, sf.nn.subnetwork_of, to_module, MaskedAdamW/MaskedSGD
with per-shard bits) equal the unsharded model's, 2 gloo ranks, float64."""
import os
import subprocess
import sys
from pathlib import Path


def test_sharded_model_apis_match_the_unsharded_model():
    worker = Path(__file__).with_name("sharded_worker.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(worker)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
