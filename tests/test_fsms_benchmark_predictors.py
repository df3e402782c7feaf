# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The simple predictors and the shape post-processing of benchmarks/fsms_skin.py on a synthetic lesion."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fsms_skin.py"
_SPEC = importlib.util.spec_from_file_location("fsms_skin", _SCRIPT)
fsms_skin = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(fsms_skin)


def _lesion(size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A brownish disc on pinkish skin, RGB in [0, 1], and its mask."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.randint(10, size - 10, 2)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < 36).astype(np.float32)
    skin, lesion = np.array([0.9, 0.7, 0.65]), np.array([0.45, 0.3, 0.2])
    img = np.where(mask[..., None] > 0, lesion, skin) + 0.03 * rng.randn(size, size, 3)
    return torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32)), torch.from_numpy(mask)[None]


def test_colour_prototypes_and_otsu_find_the_lesion():
    (si, sm), (qi, qm) = _lesion(seed=1), _lesion(seed=2)
    for predict in (fsms_skin.colour_prototypes, fsms_skin.otsu_dark, fsms_skin.dark_region):
        pred = predict(si[None, None], sm[None, None], qi[None])
        assert pred.shape == (1, 1, 32, 32)
        inter = float((pred[0] * qm).sum())
        assert 2 * inter / float(pred.sum() + qm.sum()) > 0.9, predict.__name__
    # the colour predictor follows the support: lesion and skin colours swapped -> the skin is found instead
    swapped = fsms_skin.colour_prototypes(si[None, None], 1 - sm[None, None], qi[None])
    assert float((swapped[0] * qm).sum()) == 0.0
    # dark_region: a constant query has no region -> an empty mask, not an error
    assert float(fsms_skin.dark_region(si[None, None], sm[None, None], torch.full((1, 3, 32, 32), 0.5)).sum()) == 0


def test_shape_postprocess_fills_holes_and_keeps_the_largest_component():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5:8, 5:8] = False  # a hole
    mask[15:17, 15:17] = True  # a speck
    both = fsms_skin.shape_postprocess(mask)
    assert both[6, 6] and not both[16, 16] and both.sum() == 100
    assert not fsms_skin.shape_postprocess(mask, fill=False)[6, 6]
    assert fsms_skin.shape_postprocess(mask, largest=False)[16, 16]
    assert not fsms_skin.shape_postprocess(np.zeros((5, 5), bool)).any()


def test_in_domain_val_pool_is_the_unlabelled_split_with_masks_and_disjoint_from_test(tmp_path):
    """``reselect``'s validation pool: the ISIC-2016 ids of the unlabelled 40 % (the same split as the bundle's
    pools), with their masks; none of them is a test image."""
    from PIL import Image

    from labelless.fewshot.image.classes import skin_pools

    isic = tmp_path / "isic2016"
    (isic / "images").mkdir(parents=True)
    (isic / "masks").mkdir()
    for i in range(10):
        img, msk = _lesion(seed=i)
        name = f"ISIC_{i:07d}"
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(isic / "images" / f"{name}.jpg")
        Image.fromarray((msk[0].numpy() * 255).astype(np.uint8)).save(isic / "masks" / f"{name}.png")
    val = fsms_skin.in_domain_val_pool(tmp_path, image_size=32)
    pools = skin_pools(tmp_path, size=32)
    assert list(val.image_ids) == list(pools["isic2016_unlabeled"].image_ids) and len(val.image_ids) == 4
    assert not set(val.image_ids) & set(pools["isic2016_test"].image_ids)
    img, msk = val.load(val.image_ids[0])
    assert msk is not None and float(torch.as_tensor(msk).sum()) > 0
