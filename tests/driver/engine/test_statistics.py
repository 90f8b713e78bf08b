"""The experiments' statistics (engine/statistics.py) on synthetic records
with known answers: interval coverage, the exact sign test, the interpolated
N on a known curve, and "not reached"."""
import math

import numpy as np
import pytest

from subind.engine import statistics as S


@pytest.mark.parametrize("n", [5, 8])
def test_the_95_percent_interval_covers_the_truth_in_at_least_90_of_100_draws(n):
    rng = np.random.default_rng(0)
    covered = 0
    for draw in range(100):
        values = rng.normal(0.8, 0.05, size=n)
        estimate = S.mean_ci(values, seed=draw)
        covered += estimate.low <= 0.8 <= estimate.high
    assert covered >= 90, covered


def test_a_paired_interval_covers_a_known_difference():
    rng = np.random.default_rng(1)
    covered = 0
    for draw in range(100):
        seeds = range(6)
        base = {s: rng.normal(0.7, 0.1) for s in seeds}  # a seed's shared difficulty
        a = {s: base[s] + 0.05 + rng.normal(0, 0.02) for s in seeds}
        b = {s: base[s] + rng.normal(0, 0.02) for s in seeds}
        result = S.paired(a, b, seed=draw)
        covered += result.difference.low <= 0.05 <= result.difference.high
    assert covered >= 90


def test_sign_test_exact_p_values():
    # 5 of 5: 2 · (1/32); 9 of 10: 2 · 11/1024; ties are dropped before the test
    assert S.sign_test_p(5, 0) == pytest.approx(2 / 32)
    assert S.sign_test_p(9, 1) == pytest.approx(2 * 11 / 1024)
    assert S.sign_test_p(3, 3) == 1.0 and S.sign_test_p(0, 0) == 1.0
    result = S.paired({0: 1.0, 1: 1.0, 2: 0.5, 3: 0.9}, {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.4})
    assert (result.wins, result.losses, result.ties) == (3, 0, 1)
    assert result.sign_p == pytest.approx(2 / 8)


def test_crossing_interpolates_in_log_n_and_never_extrapolates():
    ns = [0, 10, 100, 1000]
    means = [0.1, 0.5, 0.8, 1.0]
    assert S.crossing(ns, means, 0.9) == pytest.approx(10 ** 2.5)  # halfway in log N
    assert S.crossing(ns, means, 0.3) == pytest.approx(5.0)        # linear from N = 0
    assert S.crossing(ns, means, 0.05) == 0.0                      # reached at the first point
    assert S.crossing(ns, [0.1, 0.5, 0.8, 0.98], 0.99) is None     # not reached
    assert S.crossing([300, 1000], [0.95, 0.99], 0.99) == 1000.0


def test_efficiency_ratio_on_known_curves():
    ns = [100, 1000, 10000]
    # reference reaches 0.9 at N = 100 · 10^0.5, the other ten times later
    reference = {s: {100: 0.8, 1000: 1.0, 10000: 1.0} for s in range(5)}
    other = {s: {100: 0.5, 1000: 0.8, 10000: 1.0} for s in range(5)}
    ratio = S.efficiency_ratio(other, reference, ns, 0.9, draws=200)
    assert ratio.ratio == pytest.approx(10.0)
    assert ratio.low == pytest.approx(10.0) and ratio.high == pytest.approx(10.0)
    never = {s: {100: 0.3, 1000: 0.4, 10000: 0.5} for s in range(5)}
    missing = S.efficiency_ratio(never, reference, ns, 0.9, draws=50)
    assert missing.ratio is None and missing.cell() == "not reached within the grid"


def test_intervals_of_one_value_and_of_none():
    assert S.mean_ci([0.5]).cell() == "0.500 (n=1, no CI)"
    assert S.mean_ci([]).n == 0 and math.isnan(S.mean_ci([None]).mean)


def _synthetic_records():
    rng = np.random.default_rng(3)
    curves = {"subtask_induction": {0: .2, 100: .6, 300: .9, 1000: .99, 3000: 1.0},
              "random": {0: .15, 100: .4, 300: .7, 1000: .9, 3000: .99},
              "scratch": {0: .1, 100: .2, 300: .3, 1000: .5, 3000: .7}}
    return [dict(condition=c, layers=layers, n_disambiguation=n, seed=seed,
                 test_accuracy=float(min(1.0, curve[n] + rng.normal(0, 0.01))))
            for seed in range(5) for layers in (2, 4) for c, curve in curves.items()
            for n in curve]


def test_the_arithmetic_report_statistics_and_their_files(tmp_path):
    import csv
    import json

    from subind.experiments.arithmetic.report import statistics

    stats = {"test_accuracy": statistics(_synthetic_records())}
    at_1000 = {(r["condition"]): r for r in stats["test_accuracy"]["paired"]
               if r["n_disambiguation"] == 1000}
    assert at_1000["scratch"]["wins"] == 10 and at_1000["scratch"]["sign_test_p"] < 0.01
    assert at_1000["scratch"]["seeds"] == 10  # (layers, seed) units, paired
    ratio = next(r for r in stats["test_accuracy"]["efficiency"]
                 if r["threshold"] == 0.9)["ratios"]["random"]
    assert 2 < ratio["ratio"] < 4 and ratio["low"] <= ratio["ratio"] <= ratio["high"]
    text = "\n".join(S.markdown_lines(stats["test_accuracy"], "test accuracy"))
    assert "not reached within the grid" in text and "| 1000 | scratch |" in text
    S.write_tables(tmp_path, stats)
    saved = json.loads((tmp_path / "statistics.json").read_text())
    assert saved["test_accuracy"]["paired"][0]["sign_test_p"] == \
        stats["test_accuracy"]["paired"][0]["sign_test_p"]
    with open(tmp_path / "statistics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 + 10 and {r["kind"] for r in rows} == {"mean",
                                                                   "subtask_induction minus"}


def test_the_arithmetic_claims_table_gives_each_verdict_by_its_rule(tmp_path):
    from subind.experiments.arithmetic.report import claims, statistics

    text = "\n".join(claims(statistics(_synthetic_records()), tmp_path))
    assert "| subtask induction is near-perfect at N = 1,000" in text
    assert "reproduced (0.506 within 0.05 of the CI)" in text      # scratch ≈ 0.5 there
    assert "beats the same-size random subnetwork at N = 1,000" in text
    assert "reproduced (CI above 0)" in text
    assert "not testable on this grid" in text                     # random never reaches 0.99


def test_the_vision_claims_say_reproduced_only_above_zero():
    from subind.experiments.vision.report import claims

    def record(condition, seed, shape_bias):
        return dict(arch="resnet18", condition=condition, n_disambiguation=0, seed=seed,
                    original_accuracy=0.9, pooled_accuracy=0.1,
                    cue_conflict={"accuracy": 0.2, "robustness": 0.5,
                                  "shape_bias": shape_bias})

    records = [record("subtask_induction", s, 0.6 + 0.01 * s) for s in range(5)]
    records += [record("random", s, 0.3 + 0.01 * s) for s in range(5)]
    records += [record("scratch", s, 0.6 + 0.01 * (s % 2) - 0.005) for s in range(5)]
    from subind.experiments.vision.report import statistics

    text = "\n".join(claims(statistics(records)))
    lines = {line.split("|")[2].strip(): line for line in text.splitlines()
             if line.startswith("| resnet18")}
    assert "reproduced (CI above 0)" in lines[
        "subtask induction has a larger shape bias than the same-size random subnetwork"]
    assert "not reproduced (CI includes 0)" in lines[
        "subtask induction has higher accuracy on mean-pooled images than scratch"]
