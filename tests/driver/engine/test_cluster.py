"""Cluster launchers over --shard i/k: a SLURM job-array script and submitit."""
import json
import os
import subprocess

import pytest

from subind.commands import main


def _vision(out, *extra):
    return ["vision", "--preset", "smoke", "--out", str(out), "--archs", "resnet18",
            "--no-progress", *extra]


def test_slurm_array_script_runs_every_shard(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_vision(out, "--slurm", "3", "--sbatch=--gres=gpu:1",
                        "--sbatch=--time=01:00:00")) == 0
    script = out / "slurm" / "sweep.sbatch"
    assert f"sbatch {script}" in capsys.readouterr().out
    text = script.read_text()
    for line in ("#SBATCH --array=0-2", "#SBATCH --gres=gpu:1", "#SBATCH --time=01:00:00",
                 f"#SBATCH --chdir={os.getcwd()}", f"cd {os.getcwd()}"):
        assert line in text.splitlines()
    command = text.splitlines()[-1]
    assert '--shard "$SLURM_ARRAY_TASK_ID/3"' in command
    assert "--slurm" not in command and "--sbatch" not in command
    assert (out / "manifest.json").is_file()  # the configuration was checked and claimed
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    for task in range(3):  # what SLURM does, one array task at a time
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                              cwd=tmp_path)  # run from elsewhere: the script changes directory
        assert done.returncode == 0, done.stderr[-2000:]
    runs = sorted(p.relative_to(out / "runs").as_posix() for p in (out / "runs").rglob("*.json"))
    assert runs == ["pretrained/resnet18-N0-s0.json", "scratch/resnet18-N0-s0.json",
                    "subtask_induction/resnet18-N0-s0.json"]


def test_submitit_shards(tmp_path, capsys):
    pytest.importorskip("submitit", reason="the optional cluster extra")
    out = tmp_path / "run"
    assert main(_vision(out, "--submitit", "2", "--submitit-cluster", "debug",
                        "--submitit-param", "timeout_min=10")) == 0
    assert "2 submitit jobs finished" in capsys.readouterr().out
    assert len(list((out / "runs").rglob("*.json"))) == 3
    record = json.loads((out / "runs" / "scratch" / "resnet18-N0-s0.json").read_text())
    assert record["condition"] == "scratch"


@pytest.mark.parametrize("extra, message", [
    (["--slurm", "2", "--jobs", "2"], "--jobs and --slurm"),
    (["--submitit", "2", "--shard", "0/2"], "--shard and --submitit"),
    (["--slurm", "0"], "positive"),
    (["--slurm", "2", "--sbatch=gres=gpu:1"], "--name=value"),
    (["--slurm", "2", "--sbatch=--time=1\nrm -rf ~"], "without spaces or line breaks"),
    (["--submitit", "1", "--submitit-param", "timeout_min"], "key=value"),
])
def test_launcher_errors_name_the_option(tmp_path, capsys, extra, message):
    assert main(_vision(tmp_path / "x", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before the directory is claimed


def test_a_results_path_with_spaces_is_refused_for_slurm(tmp_path, capsys):
    """An #SBATCH directive ends at the first space: such a path is refused, not cut."""
    assert main(_vision(tmp_path / "with space", "--slurm", "2")) == 2
    assert "holds whitespace" in capsys.readouterr().err
    assert not (tmp_path / "with space").exists()
