# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""LabelMap: raw label values -> class ids."""

from __future__ import annotations

import numpy as np
import pytest
from parameterized import parameterized

from labelless.data.labelmap import LabelMap
from labelless.data.presets import get_preset
from labelless.errors import DataError

CMR = get_preset("cmr").label_map

APPLY_CASES = [
    ("cmr_float", CMR, np.array([0.0, 200.0, 500.0004, 599.9996]), [0, 1, 2, 3]),
    ("cmr_int", CMR, np.array([600, 0, 200], np.uint16), [3, 0, 1]),
    ("binary", LabelMap({0: 0, 255: 1}), np.array([[0, 255], [255, 255]], np.uint8), [[0, 1], [1, 1]]),
    ("identity", LabelMap.identity({0: "BG", 1: "A", 4: "B"}), np.array([4.0, 1.0, 0.0]), [4, 1, 0]),
    ("merge", LabelMap({0: 0, 1: 1, 2: 1}), np.array([2, 1, 0]), [1, 1, 0]),
]


@parameterized.expand(APPLY_CASES)
def test_apply(_, lm, raw, expected):
    out = lm.apply(raw, source="x.nii.gz")
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, expected)


ERROR_CASES = [
    ("unknown", np.array([0, 200, 300]), r"lab\.nii\.gz: label values \[300\]"),
    ("non_integer", np.array([0.0, 200.4]), "non-integer"),
    ("nan", np.array([0.0, np.nan]), "NaN"),
]


@parameterized.expand(ERROR_CASES)
def test_apply_errors(_, raw, msg):
    with pytest.raises(DataError, match=msg):
        CMR.apply(raw, source="lab.nii.gz")


def test_from_config_and_names():
    lm = LabelMap.from_config({"255": 1}, {0: "BG", 1: "LESION"})
    np.testing.assert_array_equal(lm.apply(np.array([0, 255])), [0, 1])  # 0 -> 0 implied
    assert LabelMap.from_config({"0": 0, "200.0": 1}).values == {0: 0, 200: 1}
    assert LabelMap.from_config(None) is None and LabelMap.from_config(CMR) is CMR
    assert CMR.class_ids == [0, 1, 2, 3]
    assert CMR.name(2) == "LV-BP" and CMR.name(9) == "class_9"
    synapse = get_preset("synapse").label_map
    assert synapse.id_of("kid_l") == 3 and synapse.id_of("6") == 6 and synapse.id_of(np.int64(2)) == 2
    with pytest.raises(DataError, match="'PANCREATIC'"):
        synapse.id_of("PANCREATIC")


def test_input_not_modified():
    raw = np.array([200.0, 500.0, 600.0])
    copy = raw.copy()
    CMR.apply(raw)
    np.testing.assert_array_equal(raw, copy)
