"""Mean pooling (paint order, fill, folders) and the procedural image generator."""

import numpy as np
import pytest
import torch

from subind.shape_bias import pooling as P
from subind.experiments.vision import synthetic as S
from subind.shape_bias.stimuli import read_image, scan


def test_fill_segments_matches_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 9, 7, generator=g)
    labels = torch.randint(0, 5, (9, 7), generator=g) * 3  # sparse label values
    got = P.fill_segments(image, labels)
    ref = image.double().clone()
    for value in labels.unique():
        where = labels == value
        ref[:, where] = image.double()[:, where].mean(dim=1, keepdim=True)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        P.fill_segments(image, labels[:, :3])


def test_paint_order_largest_first_smaller_win_uncovered_own_segment():
    big = np.zeros((20, 20), bool)
    big[:, :15] = True
    small = np.zeros((20, 20), bool)
    small[5:15, 5:15] = True
    tiny = np.zeros((20, 20), bool)
    tiny[0, 0] = True
    labels = P.paint_masks([small, big, tiny], (20, 20), min_area=10)
    assert labels[10, 10] == 2          # the smaller mask is painted over the larger
    assert labels[0, 10] == 1           # the larger one keeps what the smaller leaves
    assert labels[0, 0] == 1            # masks under min_area are dropped
    assert (labels[:, 15:] == 0).all()  # uncovered pixels: a segment of their own
    with pytest.raises(ValueError, match="shape"):
        P.paint_masks([np.zeros((3, 3), bool)], (20, 20))


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
def test_scikit_image_segmenters_give_piecewise_constant_images(method):
    image = S.make_set("independent", 1, 0).images[0]
    labels = P.segmenter(method, segments=16)(image.permute(1, 2, 0).numpy())
    pooled = P.fill_segments(image, torch.from_numpy(labels))
    for value in np.unique(labels):
        pixels = pooled[:, torch.from_numpy(labels == value)]
        assert torch.allclose(pixels, pixels[:, :1].expand_as(pixels))
    assert len(np.unique(labels)) > 1


def test_mean_pool_folder_is_lossless_with_preview_and_masks(tmp_path):
    source = tmp_path / "images" / "cls"
    source.mkdir(parents=True)
    masks = tmp_path / "masks" / "cls"
    masks.mkdir(parents=True)
    data = S.make_set("independent", 3, 1)
    for i, (image, mask) in enumerate(zip(data.images, data.masks)):
        P.write_png(image, source / f"im{i}.png")
        P.write_png(mask.float()[None].expand(3, -1, -1), masks / f"im{i}.png")
    method = lambda path, image: P.mask_labels(  # noqa: E731
        tmp_path / "masks" / path.relative_to(tmp_path / "images"), image.shape[:2])
    assert P.mean_pool_folder(tmp_path / "images", tmp_path / "pooled", method, preview=2) == 3
    for i in range(3):
        written = read_image(tmp_path / "pooled" / "cls" / f"im{i}.png")
        expected = S.mean_pool_with_masks(read_image(source / f"im{i}.png")[None],
                                          data.masks[i:i + 1])[0]
        assert (written * 255 - (expected * 255).round()).abs().max() <= 1  # PNG: 8 bit, lossless
    assert (tmp_path / "pooled" / "preview.png").is_file()
    with pytest.raises(ValueError, match="overlap"):
        P.mean_pool_folder(tmp_path / "images", tmp_path / "images", method)


def test_generator_sets_are_seeded_balanced_and_named():
    a, b = S.make_set("aligned", 64, 3), S.make_set("aligned", 64, 3)
    assert torch.equal(a.images, b.images) and not torch.equal(
        a.images, S.make_set("aligned", 64, 4).images)
    assert torch.equal(a.shapes, a.textures)
    assert torch.bincount(a.shapes, minlength=16).tolist() == [4] * 16
    conflict = S.make_set("conflict", 64, 0)
    assert (conflict.shapes != conflict.textures).all()
    independent = S.make_set("independent", 256, 0)
    assert (independent.shapes != independent.textures).any() and (
        independent.shapes == independent.textures).any()
    assert a.images.shape == (64, 3, 32, 32) and 0 <= a.images.min() and a.images.max() <= 1
    assert len(set(S.SHAPES)) == len(set(S.TEXTURES)) == 16
    assert all(name.isalpha() and name.islower() for name in S.CLASS_NAMES)
    with pytest.raises(ValueError, match="kind"):
        S.make_set("natural", 4, 0)


def test_pooled_images_keep_only_the_silhouette():
    pooled = S.make_set("pooled", 32, 0)
    for image, mask in zip(pooled.images, pooled.masks):
        for region in (mask, ~mask):
            pixels = image[:, region]
            assert torch.allclose(pixels, pixels[:, :1].expand_as(pixels), atol=1e-6)
        assert (image[:, mask][:, 0] - image[:, ~mask][:, 0]).abs().max() > 0.02  # visible


def test_object_colour_says_nothing_about_the_texture_class():
    data = S.make_set("independent", 1600, 0)
    mean = torch.stack([im[:, m].mean(dim=1) for im, m in zip(data.images, data.masks)])
    per_texture = torch.stack([mean[data.textures == t].mean(0) for t in range(16)])
    # every texture class's average object colour is the same grey within sampling noise
    assert (per_texture - per_texture.mean(0)).abs().max() < 0.06


def test_geirhos_layout_round_trips_through_scan(tmp_path):
    data = S.make_set("conflict", 20, 0)
    stimuli = S.write_geirhos_layout(data, tmp_path)
    found = scan(tmp_path, S.CLASS_NAMES)
    assert sorted(s.path for s in stimuli) == [s.path for s in found]
    by_path = {s.path: s for s in found}
    for stimulus, shape, texture in zip(stimuli, data.shapes, data.textures):
        assert by_path[stimulus.path].shape == S.CLASS_NAMES[shape]
        assert by_path[stimulus.path].texture == S.CLASS_NAMES[texture]
