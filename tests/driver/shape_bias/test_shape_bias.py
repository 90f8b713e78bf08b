"""Geirhos categories, stimulus parsing and the shape-bias metrics."""
import csv
from pathlib import Path

import pytest
import torch

from subind.shape_bias import categories as G
from subind.shape_bias.evaluation import (Decision, bootstrap_interval, summarize,
                                                  write_decisions)
from subind.shape_bias.stimuli import Stimulus, parse_name, read_image, scan

DATA = Path(__file__).parent / "data" / "geirhos"

# The authors' published ImageNet index lists (texture-vs-shape, human_categories.py).
PUBLISHED_INDICES = {
    "airplane": [404], "bear": [294, 295, 296, 297], "bicycle": [444, 671],
    "bird": [8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 80, 81, 82, 83, 87, 88, 89,
             90, 91, 92, 93, 94, 95, 96, 98, 99, 100, 127, 128, 129, 130, 131, 132, 133, 135,
             136, 137, 138, 139, 140, 141, 142, 143, 144, 145],
    "boat": [472, 554, 625, 814, 914], "bottle": [440, 720, 737, 898, 899, 901, 907],
    "car": [436, 511, 817], "cat": [281, 282, 283, 284, 285, 286],
    "chair": [423, 559, 765, 857], "clock": [409, 530, 892],
    "dog": [i for i in range(152, 269)
            if i not in (192, 204, 227, 242, 251, 258, 260, 264)],
    "elephant": [385, 386], "keyboard": [508, 878], "knife": [499], "oven": [766],
    "truck": [555, 569, 656, 675, 717, 734, 864, 867],
}


def test_indices_derived_from_wnids_match_the_published_lists():
    derived = G.imagenet_indices()
    assert set(derived) == set(PUBLISHED_INDICES) and len(G.CATEGORIES) == 16
    for category, indices in PUBLISHED_INDICES.items():
        assert list(derived[category]) == indices, category
    flat = [i for v in derived.values() for i in v]
    assert len(flat) == len(set(flat))  # no ImageNet class counts for two categories


def test_aggregation_is_the_mean_probability_over_each_category():
    p = torch.zeros(2, 1000, dtype=torch.float64)
    p[0, 281] = 0.6                       # one of cat's 6 classes
    p[0, 404] = 0.4                       # airplane's only class
    p[1, list(G.imagenet_indices()["dog"])] = 1 / 109
    scores = G.aggregate_imagenet(p)
    cat, airplane, dog = (G.CATEGORIES.index(c) for c in ("cat", "airplane", "dog"))
    assert scores[0, cat] == pytest.approx(0.1) and scores[0, airplane] == pytest.approx(0.4)
    assert scores[0].argmax() == airplane  # the mean, not the sum, decides
    assert scores[1, dog] == pytest.approx(1 / 109)
    with pytest.raises(ValueError, match="1000"):
        G.aggregate_imagenet(torch.zeros(2, 16))


@pytest.mark.parametrize("name, expected", [
    ("cat1-airplane1.png", ("cat", "airplane")), ("airplane10-airplane1.png",
                                                  ("airplane", "airplane")),
    ("cat10.png", ("cat", None)), ("knife3-bear12.jpg", ("knife", "bear"))])
def test_file_names_parse(name, expected):
    assert parse_name(Path(name)) == expected


@pytest.mark.parametrize("name", ["cat.png", "cat1-airplane.png", "Cat1-dog2.png",
                                  "cat1_dog2.png", "cat1-dog2-bear3.png"])
def test_bad_file_names_are_named(name):
    with pytest.raises(ValueError, match=name.split(".")[0]):
        parse_name(Path(name))


def test_scan_reads_the_real_stimuli_and_checks_layout(tmp_path):
    found = scan(DATA / "cue-conflict", G.CATEGORIES)
    assert [(s.shape, s.texture) for s in found] == [
        ("airplane", "cat"), ("airplane", "airplane"), ("cat", "airplane"), ("cat", "cat")]
    assert [s.same_class for s in found] == [False, True, False, True]
    image = read_image(found[0].path)
    assert image.shape == (3, 224, 224) and 0 <= image.min() and image.max() <= 1
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "cat1-dog1.png").write_bytes((found[0].path).read_bytes())
    with pytest.raises(ValueError, match="folder 'dog'"):
        scan(tmp_path)
    with pytest.raises(ValueError, match="unknown"):
        scan(DATA / "cue-conflict", ["cat", "dog"])
    with pytest.raises(FileNotFoundError):
        scan(tmp_path / "missing")


def _decisions(rows):
    return [Decision(Stimulus(Path(f"{s}/{s}{i}-{t}{i}.png"), s, t), d)
            for i, (s, t, d) in enumerate(rows)]


def test_metrics_exclude_same_class_images_and_count_both_ways():
    decisions = _decisions([
        ("cat", "dog", "cat"),      # shape hit
        ("cat", "dog", "dog"),      # texture hit (misled)
        ("dog", "cat", "cat"),      # texture hit (misled)
        ("dog", "cat", "bear"),     # neither
        ("cat", "cat", "cat"),      # same class: excluded from the Geirhos metrics
        ("dog", "dog", "bear"),     # same class, wrong
    ])
    m = summarize(decisions, ["bear", "cat", "dog"], bootstrap=0)
    assert (m["conflict_images"], m["same_class_images"]) == (4, 2)
    assert (m["shape_hits"], m["texture_hits"]) == (1, 2)
    assert m["shape_bias"] == pytest.approx(1 / 3)
    assert m["shape_accuracy"] == m["accuracy"] == pytest.approx(1 / 4)
    assert m["texture_rate"] == pytest.approx(2 / 4)
    assert m["robustness"] == pytest.approx(1 - 2 / 4)
    assert m["accuracy_with_same_class"] == pytest.approx(2 / 6)
    assert m["robustness_with_same_class"] == pytest.approx(1 - 2 / 6)
    assert m["per_category"]["cat"] == {"images": 2, "shape_hits": 1, "texture_hits": 1,
                                        "shape_bias": 0.5}
    assert m["per_category"]["dog"]["shape_bias"] == 0.0
    assert m["per_category"]["bear"]["shape_bias"] != m["per_category"]["bear"]["shape_bias"]


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    rows = [("cat", "dog", "cat")] * 30 + [("cat", "dog", "dog")] * 70
    decisions = _decisions(rows)
    low, high = bootstrap_interval(decisions, samples=500, seed=1)
    assert low < 0.3 < high and high - low < 0.25
    assert bootstrap_interval(decisions, samples=500, seed=1) == (low, high)


def test_decisions_csv(tmp_path):
    decisions = _decisions([("cat", "dog", "dog"), ("cat", "cat", "cat")])
    path = write_decisions(decisions, tmp_path / "d.csv")
    rows = list(csv.DictReader(open(path)))
    assert [(r["shape"], r["texture"], r["same_class"], r["decision"], r["shape_hit"],
             r["texture_hit"]) for r in rows] == [("cat", "dog", "0", "dog", "0", "1"),
                                                  ("cat", "cat", "1", "cat", "1", "1")]
    with pytest.raises(ValueError, match="no cue-conflict"):
        summarize([Decision(Stimulus(Path("cat/cat1.png"), "cat", None), "cat")], ["cat"])
