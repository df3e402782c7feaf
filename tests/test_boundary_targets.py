# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the SABR-Net boundary ground truth and offset refinement (sabrnet.md §8, §11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from labelless.errors import ConfigError, DataError
from labelless.transforms.boundary import (
    DIRECTION_IGNORE,
    DIRECTION_OFFSETS,
    BoundaryTargets,
    BoundaryTargetsD,
    BoundaryTargetsd,
    BoundaryTargetsDict,
    boundary_targets,
    refine_with_offsets,
)

SIZE = 96


def _disk(cy: float = 48.0, cx: float = 48.0, radius: float = 25.0) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return (np.hypot(yy - cy, xx - cx) <= radius).astype(np.int64)


def _perfect_heads(label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Boundary and direction logits that reproduce the ground truth of ``label`` exactly."""
    boundary, direction, _ = boundary_targets(label)
    b = torch.from_numpy(boundary.astype(np.int64))
    boundary_logits = (F.one_hot(b, 2).permute(2, 0, 1).float() * 10.0)[None]
    d = torch.from_numpy(np.where(direction == DIRECTION_IGNORE, 0, direction))
    direction_logits = F.one_hot(d, 8).permute(2, 0, 1).float()[None]
    return boundary_logits, direction_logits


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_direction_offsets_order():
    assert DIRECTION_OFFSETS == ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1))


@pytest.mark.parametrize("centre", [(48.0, 48.0), (40.3, 51.7)])
def test_disk_ring_and_directions(centre):
    lab = _disk(*centre)
    boundary, direction, dist = boundary_targets(lab)
    assert boundary.dtype == np.uint8 and direction.dtype == np.int64 and dist.dtype == np.float32
    # D: inside the disk the distance to the outside, outside the distance to the disk
    np.testing.assert_allclose(dist[lab == 1], ndimage.distance_transform_edt(lab)[lab == 1], rtol=1e-6)
    np.testing.assert_allclose(dist[lab == 0], ndimage.distance_transform_edt(1 - lab)[lab == 0], rtol=1e-6)
    np.testing.assert_array_equal(boundary, ((dist > 0) & (dist <= 5)).astype(np.uint8))
    # along the middle row: 5 px on each side of the contour
    row = int(round(centre[0]))
    cols = np.flatnonzero(lab[row])
    left = cols[0]
    assert boundary[row, left - 5 : left + 5].all() and not boundary[row, left - 6] and not boundary[row, left + 5]
    # directions: off the ring ignored; on the inner ring they move towards the centre, on the outer ring away
    assert (direction[boundary == 0] == DIRECTION_IGNORE).all() and (direction[boundary == 1] < 8).all()
    off = np.asarray(DIRECTION_OFFSETS)
    for side, sign in ((1, 1.0), (0, -1.0)):
        ys, xs = np.nonzero((boundary == 1) & (lab == side))
        o = off[direction[ys, xs]]
        before = np.hypot(ys - centre[0], xs - centre[1])
        after = np.hypot(ys + o[:, 0] - centre[0], xs + o[:, 1] - centre[1])
        assert ((after - before) * sign < 0).all()


def test_multiclass_and_label_forms():
    lab = np.zeros((40, 60), np.int64)
    lab[5:35, 5:30] = 1
    lab[5:35, 30:55] = 2
    boundary, direction, dist = boundary_targets(lab)
    # between classes 1 and 2 both sides are boundary; direction points into each own region
    assert boundary[20, 26:34].all()
    assert direction[20, 29] == 0 and direction[20, 30] == 4  # b0 = (0, -1) left, b4 = (0, 1) right
    onehot = np.eye(3, dtype=np.float32)[lab].transpose(2, 0, 1)
    for form in (lab[None], onehot, torch.from_numpy(lab)):
        b2, d2, _ = boundary_targets(form)
        np.testing.assert_array_equal(b2, boundary)
        np.testing.assert_array_equal(d2, direction)
    b1, d1, dist1 = boundary_targets(np.zeros((16, 16), np.int64))
    assert not b1.any() and (d1 == DIRECTION_IGNORE).all() and np.isinf(dist1).all()


def test_bad_labels():
    with pytest.raises(DataError, match="label"):
        boundary_targets(np.zeros((2, 3, 4, 5)))
    with pytest.raises(DataError, match="label.*non-integer"):
        boundary_targets(np.full((8, 8), 0.5))
    with pytest.raises(DataError, match="label.*NaN"):
        boundary_targets(np.full((8, 8), np.nan))
    with pytest.raises(ConfigError):
        boundary_targets(np.zeros((8, 8), int), width=0)


def test_dict_transform():
    lab = torch.from_numpy(_disk())[None]
    assert BoundaryTargetsD is BoundaryTargetsDict is BoundaryTargetsd
    d = BoundaryTargetsd(keys="label")({"label": lab, "image": torch.zeros(1, SIZE, SIZE)})
    assert d["label"] is lab
    assert d["label_boundary"].shape == (SIZE, SIZE) and d["label_boundary"].dtype == torch.int64
    assert d["label_direction"].shape == (SIZE, SIZE) and d["label_direction"].dtype == torch.int64
    boundary, direction, _ = boundary_targets(lab)
    np.testing.assert_array_equal(d["label_boundary"].numpy(), boundary)
    np.testing.assert_array_equal(d["label_direction"].numpy(), direction)
    b, dr = BoundaryTargets(keep_channel=True)(lab)
    assert b.shape == dr.shape == (1, SIZE, SIZE)


def test_refinement_moves_dilated_boundary_inward():
    truth = _disk()
    pred = ndimage.binary_dilation(truth.astype(bool), iterations=2).astype(np.int64)
    boundary_logits, direction_logits = _perfect_heads(truth)
    coarse = torch.from_numpy(pred)[None]
    before = _dice(pred, truth)
    refined1 = refine_with_offsets(coarse, boundary_logits, direction_logits)[0].numpy()
    refined3 = refine_with_offsets(coarse, boundary_logits, direction_logits, offset_scale=3.0)[0].numpy()
    assert _dice(refined1, truth) > before + 0.02
    assert _dice(refined3, truth) > 0.99
    assert refined1.sum() < pred.sum()
    # off-edge pixels keep their label; non-boundary logits change nothing
    edge = boundary_logits[0, 1] > boundary_logits[0, 0]
    np.testing.assert_array_equal(refined1[~edge.numpy()], pred[~edge.numpy()])
    unchanged = refine_with_offsets(coarse, torch.zeros_like(boundary_logits), direction_logits)
    assert torch.equal(unchanged, coarse)


def test_refinement_batched_clamped_and_shapes():
    labels = torch.arange(2 * 4 * 5).view(2, 4, 5)
    boundary_logits = torch.zeros(2, 2, 4, 5)
    boundary_logits[:, 1] = 1.0  # every pixel is an edge
    direction_logits = torch.zeros(2, 8, 4, 5)
    direction_logits[0, 2] = 1.0  # b2 = (-1, 0): copy from the row above (clamped at the top row)
    direction_logits[1, 4] = 1.0  # b4 = (0, 1): copy from the right (clamped at the last column)
    out = refine_with_offsets(labels, boundary_logits, direction_logits)
    assert out.dtype == labels.dtype
    assert torch.equal(out[0, 1:], labels[0, :-1]) and torch.equal(out[0, 0], labels[0, 0])
    assert torch.equal(out[1, :, :-1], labels[1, :, 1:]) and torch.equal(out[1, :, -1], labels[1, :, -1])
    with pytest.raises(DataError, match="direction_logits"):
        refine_with_offsets(labels, boundary_logits, torch.zeros(2, 4, 4, 5))
    with pytest.raises(DataError, match="labels"):
        refine_with_offsets(labels.float(), boundary_logits, direction_logits)
    with pytest.raises(ConfigError):
        refine_with_offsets(labels, boundary_logits, direction_logits, offset_scale=-1.0)
