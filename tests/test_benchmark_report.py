"""benchmarks/report.py: the README's benchmark tables come from the CSV
(latest run per device), and old rows without dtype/config columns still read."""
import csv
import pytest

from benchmarks import harness, report


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def test_latest_run_per_device_fills_the_marked_sections(tmp_path):
    old_header = [c for c in harness.CSV_COLUMNS if c not in ("dtype", "config")]
    base = ["AMD EPYC (1 thread)", "2.14", "3.8"]
    rows = []
    for stamp, ours in (("2026-01-01T00:00:00+00:00", 99.0), ("2026-02-01T00:00:00+00:00", 10.0)):
        for provider, ms in (("plain", 8.0), ("eager", 12.0), ("ours", ours)):
            rows.append([stamp, "abc", *base, "model_step", "GPT-2", provider, "step", "ms",
                         ms, ms, ms])
            rows.append([stamp, "abc", *base, "model_step", "GPT-2", provider, "step",
                         "saved_mib", 5, 5, 5])
    path = tmp_path / "results.csv"
    _write(path, old_header, rows)
    loaded = harness.read_csv(path)
    assert loaded[0]["dtype"] == "" and loaded[0]["provider"] == "plain"
    text = report.model_step_table(loaded)
    assert "**10 ms · 5 MiB**" in text and "12 ms · 5 MiB (1.20×)" in text
    assert "99" not in text  # the older run is not shown
    readme = "".join(f"<!-- bench:{n} -->\nkept {n}\n<!-- /bench:{n} -->\n"
                     for n in report.SECTIONS)
    rendered = report.render(readme, loaded)
    assert "kept model-step\n" not in rendered and "**10 ms · 5 MiB**" in rendered
    # benches without rows here keep their tables (their CSV is on the machine that ran them)
    assert "kept layers" in rendered and "kept optim" in rendered
    assert "kept model-step-paired" in rendered


def test_missing_markers_are_an_error():
    with pytest.raises(ValueError, match="bench:layers"):
        report.render("no markers here", [])


def test_case_filters_and_budgets_are_checked():
    """A --cases word that names no case, and a budget that is no positive
    number, are errors rather than an empty or endless run."""
    from types import SimpleNamespace

    cases = [SimpleNamespace(name="GPT-2 MLP"), SimpleNamespace(name="ResNet18 layer4")]
    assert harness.select_cases(cases, None) == cases
    assert harness.select_cases(cases, "ResNet") == cases[1:]
    with pytest.raises(SystemExit, match="nosuchcase"):
        harness.select_cases(cases, "GPT,nosuchcase")
    import argparse

    for budget in ("nan", "-5", "0", "inf", "soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            harness._seconds(budget)
    assert harness._seconds("0.5") == 0.5


def test_transfer_curves_names_a_directory_that_is_not_a_vision_run(tmp_path):
    from benchmarks import transfer_curves

    with pytest.raises(SystemExit, match="not a finished `subind vision` directory"):
        transfer_curves.main([f"x={tmp_path}"])


def test_the_paired_table_has_a_column_per_thread_count(tmp_path):
    rows = []
    for device, ratio in (("AMD EPYC (1 thread)", 1.02), ("AMD EPYC (2 threads)", 1.04)):
        rows.append({**{c: "" for c in harness.CSV_COLUMNS}, "timestamp": "2026-02-01T00:00:00",
                     "git_sha": "abc", "device": device, "torch": "2.14", "dtype": "float32",
                     "bench": "model_step_paired", "shape": "GPT-2", "config": "threads=1 pairs=30",
                     "provider": "ours/plain", "mode": "paired", "metric": "ratio",
                     "p20": str(ratio - 0.01), "p50": str(ratio), "p80": str(ratio + 0.01)})
    other = [{**rows[0], "provider": "ours+compile/compile", "timestamp": "2026-02-01T01:00:00",
              "p50": "0.9", "p20": "0.8", "p80": "1.0"}]
    text = report.model_step_paired_table(rows + other)
    assert text.index("**ours/plain**") < text.index("**ours+compile/compile**")
    assert "| GPT-2 | 0.900 [0.800, 1.000] (30 pairs) |" in text
    assert "| model | AMD EPYC (1 thread) | AMD EPYC (2 threads) |" in text
    assert "| GPT-2 | 1.020 [1.010, 1.030] (30 pairs) | 1.040 [1.030, 1.050] (30 pairs) |" in text


def test_a_pair_names_two_known_providers():
    import argparse

    from benchmarks import bench_model_step

    assert bench_model_step._pair("ours/plain") == ("ours", "plain")
    for text in ("ours", "ours/ours", "ours/nosuch", "a/b/c"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_model_step._pair(text)
    calls = []
    stats = bench_model_step.time_pairs(lambda: calls.append("a"), lambda: calls.append("b"),
                                        pairs=4, warmup=0)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"] and stats.p50 > 0
