# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""FSMS episodes, evaluation protocol and inference runner (fsms.md §3.3, §4, §6) with small in-memory fakes."""

from __future__ import annotations

import json
import unittest
from pathlib import Path

import numpy as np
import pytest
import torch
from parameterized import parameterized
from PIL import Image

from labelless.errors import ConfigError, DataError
from labelless.fewshot.image.episodes import MetaTrainEpisodes
from labelless.fewshot.image.inference import FewShotImageInferenceRunner
from labelless.fewshot.image.protocol import (
    draw_test_episodes,
    episode_dice,
    evaluate_episodes,
    network_predictor,
    recentre_probabilities,
    support_calibrated_predictor,
    support_thresholds,
)
from labelless.fewshot.image.workflow import FewShotImageEvaluationRunner

S = 32


def _pair(c: int, i: int, size: int = S, empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Image whose pixel (0, 0) encodes (class, instance); mask = a square whose place depends on the instance."""
    img = np.full((3, size, size), 0.2, dtype=np.float32)
    img[:, 0, 0] = [c / 10.0, i / 100.0, 0.5]
    msk = np.zeros((1, size, size), dtype=np.float32)
    if not empty:
        o = 2 + i % 5
        msk[0, o : o + 8, o + 1 : o + 10] = 1
        img[:, msk[0] > 0] = 0.9
    return img, msk


class FakeClasses:
    """Implements the ClassFolderDataset interface: classes, ids (class -> ids), load_pair(cls, position)."""

    def __init__(self, n_classes: int = 3, n_inst: int = 6, empty: tuple[str, str] | None = None) -> None:
        self.classes = [f"c{j}" for j in range(n_classes)]
        self.ids = {c: [f"i{k}" for k in range(n_inst)] for c in self.classes}
        self._table = self.ids
        self.empty = empty

    def load_pair(self, cls: str, idx: int) -> tuple[np.ndarray, np.ndarray]:
        return _pair(int(cls[1:]), int(idx), empty=(cls, self._table[cls][idx]) == self.empty)


class FakeClassesMethod(FakeClasses):
    """The same source with ``ids`` as a method (the other accepted form)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.ids = lambda cls: self._table[cls]  # noqa: E731


class FakePool:
    """Implements the ImageFolderPool interface: image_ids, has_masks, load(idx)."""

    def __init__(self, n: int = 8, empty: tuple[int, ...] = (), masks: bool = True, odd_size: int | None = None):
        self.image_ids = [f"img{k:02d}" for k in range(n)]
        self.has_masks = masks
        self.empty = set(empty)
        self.odd_size = odd_size

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        idx = self.image_ids.index(image_id)
        img, msk = _pair(9, idx, size=S + 4 if idx == self.odd_size else S, empty=idx in self.empty)
        return img, (msk if self.has_masks else None)


def _perfect(pool: FakePool):
    """Predictor returning the ground truth of each query (found by the id code in pixel (0, 0))."""

    def predict(s_img: torch.Tensor, s_msk: torch.Tensor, q_img: torch.Tensor) -> torch.Tensor:
        out = []
        for q in q_img:
            idx = int(round(float(q[1, 0, 0]) * 100))
            out.append(torch.as_tensor(pool.load(pool.image_ids[idx])[1]))
        return torch.stack(out)

    return predict


def _zeros(s_img: torch.Tensor, s_msk: torch.Tensor, q_img: torch.Tensor) -> torch.Tensor:
    return torch.zeros((q_img.shape[0], 1, *q_img.shape[2:]))


# ---------------------------------------------------------------------------------------------------- episodes
TESTS_SHAPES = [
    # (source type, n_tasks, n_shots, pool size or None, n_unlabeled, expected U)
    (FakeClasses, 5, 1, 6, 5, 5),
    (FakeClasses, 2, 5, 6, 0, 0),
    (FakeClassesMethod, 3, 2, None, 5, 0),
]


class TestMetaTrainEpisodes(unittest.TestCase):
    @parameterized.expand(TESTS_SHAPES)
    def test_shapes(self, source, t, k, pool_n, n_u, u):
        pool = FakePool(pool_n, masks=False) if pool_n else None
        ds = MetaTrainEpisodes(source(), n_episodes=4, n_tasks=t, n_shots=k, unlabeled_pool=pool, n_unlabeled=n_u)
        item = ds[1]
        self.assertEqual(len(ds), 4)
        self.assertEqual(tuple(item["support_image"].shape), (t, k, 3, S, S))
        self.assertEqual(tuple(item["support_label"].shape), (t, k, 1, S, S))
        self.assertEqual(tuple(item["query_image"].shape), (t, 3, S, S))
        self.assertEqual(tuple(item["query_label"].shape), (t, 1, S, S))
        self.assertEqual(tuple(item["unlabeled_image"].shape), (u, 3, S, S))
        self.assertEqual(len(item["classes"]), t)
        self.assertTrue(all(item["support_label"].flatten(2).amax(2).flatten() == 1))  # never empty
        self.assertEqual(set(torch.unique(item["query_label"]).tolist()), {0.0, 1.0})
        for v in ("support_image", "query_image", "unlabeled_image"):
            self.assertEqual(item[v].dtype, torch.float32)

    def test_deterministic_per_seed_and_index(self):
        a = MetaTrainEpisodes(FakeClasses(), 10, unlabeled_pool=FakePool(8, masks=False), n_unlabeled=3, seed=4)
        b = MetaTrainEpisodes(FakeClasses(), 10, unlabeled_pool=FakePool(8, masks=False), n_unlabeled=3, seed=4)
        c = MetaTrainEpisodes(FakeClasses(), 10, unlabeled_pool=FakePool(8, masks=False), n_unlabeled=3, seed=5)
        x, y = b[7], a[7]  # access order does not matter
        for key in ("support_image", "support_label", "query_image", "query_label", "unlabeled_image"):
            self.assertTrue(torch.equal(x[key], y[key]), key)
        self.assertEqual(x["classes"], y["classes"])
        self.assertNotEqual([a.draw(i) for i in range(10)], [c.draw(i) for i in range(10)])
        self.assertNotEqual(a.draw(0), a.draw(1))
        a.set_epoch(1)  # epoch 1 = episode numbers 10..19
        longer = MetaTrainEpisodes(FakeClasses(), 20, unlabeled_pool=FakePool(8, masks=False), n_unlabeled=3, seed=4)
        self.assertEqual(a.draw(3), longer.draw(13))
        self.assertNotEqual(a.draw(3), b.draw(3))

    def test_classes_with_replacement_instances_distinct(self):
        ds = MetaTrainEpisodes(FakeClasses(n_classes=2, n_inst=4), n_episodes=50, n_tasks=5, n_shots=2, seed=1)
        seen = set()
        for i in range(50):
            d = ds.draw(i)
            self.assertTrue(set(d["classes"]) <= {"c0", "c1"})
            seen.update(d["classes"])
            for sup, q in zip(d["supports"], d["queries"]):
                self.assertEqual(len(set(sup) | {q}), 3)
        self.assertEqual(seen, {"c0", "c1"})  # 5 tasks over 2 classes: classes repeat within every episode
        item, d = ds[0], ds.draw(0)  # the loaded images are the drawn instances
        for t, (cls, sup, q) in enumerate(zip(d["classes"], d["supports"], d["queries"])):
            self.assertAlmostEqual(float(item["query_image"][t, 0, 0, 0]), int(cls[1:]) / 10, places=6)
            self.assertAlmostEqual(float(item["query_image"][t, 1, 0, 0]), q / 100, places=6)
            codes = [round(float(v) * 100) for v in item["support_image"][t, :, 1, 0, 0]]
            self.assertEqual(codes, list(sup))

    def test_unlabelled_without_replacement(self):
        ds = MetaTrainEpisodes(FakeClasses(), 20, unlabeled_pool=FakePool(6, masks=False), n_unlabeled=6)
        for i in range(20):
            self.assertEqual(sorted(ds.draw(i)["unlabeled"]), list(range(6)))
        with self.assertRaises(ConfigError):
            MetaTrainEpisodes(FakeClasses(), 2, unlabeled_pool=FakePool(3, masks=False), n_unlabeled=4)

    def test_flips_switch(self):
        off = MetaTrainEpisodes(FakeClasses(), 6, flips="false", seed=2)
        ref = MetaTrainEpisodes(FakeClasses(), 6, seed=2)
        on = MetaTrainEpisodes(FakeClasses(), 6, flips="true", seed=2)
        self.assertFalse(off.flips)
        self.assertTrue(torch.equal(off[0]["query_image"], ref[0]["query_image"]))
        self.assertEqual([on.draw(i)["queries"] for i in range(6)], [ref.draw(i)["queries"] for i in range(6)])
        flipped = [on[i]["support_image"] for i in range(6)]
        plain = [ref[i]["support_image"] for i in range(6)]
        self.assertTrue(any(not torch.equal(f, p) for f, p in zip(flipped, plain)))
        self.assertTrue(all(torch.allclose(f.sum((-1, -2)), p.sum((-1, -2))) for f, p in zip(flipped, plain)))

    def test_bad_sources(self):
        with self.assertRaisesRegex(DataError, r"c0 \(2\)"):
            MetaTrainEpisodes(FakeClasses(n_inst=2), 3, n_shots=2)  # needs K + 1 = 3 pairs per class
        ds = MetaTrainEpisodes(FakeClasses(n_classes=1, n_inst=2, empty=("c0", "i1")), 8, n_tasks=1, n_shots=1)
        d = [ds.draw(i) for i in range(8)]
        bad = next(i for i, x in enumerate(d) if x["supports"][0] == [1])
        with self.assertRaisesRegex(DataError, "'c0' instance 'i1'.*support mask is empty"):
            ds[bad]
        with self.assertRaises(ConfigError):
            MetaTrainEpisodes(object(), 3)


# ---------------------------------------------------------------------------------------------------- protocol
def _m(rows: list[str]) -> np.ndarray:
    return np.array([[c == "1" for c in r] for r in rows])


TESTS_EPISODE_DICE = [
    # query 1: TP 2, FP 1, FN 0; query 2: TP 0, FP 0, FN 2 -> pooled 2*2 / (4 + 1 + 2) = 4/7 (per-image mean 0.4)
    ([_m(["110", "100"]), _m(["000", "000"])], [_m(["110", "000"]), _m(["011", "000"])], 4 / 7),
    # TP 1, FP 2, FN 1 and an empty/empty query that adds nothing -> 2 / (2 + 3) = 0.4
    ([_m(["11", "10"]), _m(["00", "00"])], [_m(["10", "01"]), _m(["00", "00"])], 0.4),
    ([_m(["00"]), _m(["00"])], [_m(["00"]), _m(["00"])], 1.0),  # both empty: defined as 1.0
    ([_m(["11"])], [_m(["00"])], 0.0),
]


class TestProtocol(unittest.TestCase):
    @parameterized.expand(TESTS_EPISODE_DICE)
    def test_episode_dice_pooled(self, preds, truths, expected):
        self.assertAlmostEqual(episode_dice(preds, truths), expected, places=9)

    def test_episode_dice_rejects_mismatch(self):
        with self.assertRaises(DataError):
            episode_dice([_m(["11"])], [_m(["1", "1"])])
        with self.assertRaises(DataError):
            episode_dice([_m(["11"])], [])

    def test_draw_test_episodes(self):
        fg = [True, False, True, True, False, True, True]
        a = draw_test_episodes(fg, n_episodes=30, n_tasks=5, n_shots=2, seed=0)
        self.assertEqual(a, draw_test_episodes(fg, n_episodes=30, n_tasks=5, n_shots=2, seed=0))
        self.assertNotEqual(a, draw_test_episodes(fg, n_episodes=30, n_tasks=5, n_shots=2, seed=1))
        self.assertEqual(a[:10], draw_test_episodes(fg, n_episodes=10, n_tasks=5, n_shots=2, seed=0))
        self.assertEqual((len(a), len(a[0])), (30, 5))
        queries = set()
        for tasks in a:
            for sup, q in tasks:
                self.assertEqual(len(sup), 2)
                self.assertTrue(all(fg[i] for i in sup))  # supports never empty-mask images
                self.assertNotIn(q, sup)
                queries.add(q)
        self.assertTrue(queries & {1, 4})  # empty-mask images may be queries
        with self.assertRaises(ConfigError):
            draw_test_episodes([0, 2, 3])  # indices, not flags
        with self.assertRaises(DataError):
            draw_test_episodes([True, False, False], n_shots=2)

    def test_evaluate_perfect_and_zero(self):
        pool = FakePool(8, empty=(2, 5))
        res = evaluate_episodes(_perfect(pool), pool, n_episodes=6, n_tasks=3, batch_tasks=2, progress=False)
        self.assertEqual(res["episode_dice_mean"], 1.0)
        self.assertEqual((res["per_image_dice_mean"], res["per_image_iou_mean"]), (1.0, 1.0))
        self.assertEqual((res["n_queries"], res["n_pool_images"], res["n_support_images"]), (18, 8, 6))
        zero = evaluate_episodes(_zeros, pool, n_episodes=6, n_tasks=3, progress=False)
        for ep in zero["episodes"]:
            truth_nonempty = any(t["fn"] > 0 for t in ep["tasks"])
            self.assertEqual(ep["dice"], 0.0 if truth_nonempty else 1.0)
            for t in ep["tasks"]:
                self.assertEqual(t["dice"], 0.0 if t["fn"] > 0 else 1.0)
        self.assertEqual(zero["per_episode_dice"], [ep["dice"] for ep in zero["episodes"]])
        self.assertLess(zero["episode_dice_mean"], 0.5)

    def test_evaluate_writes_reports(self):
        pool = FakePool(6)
        out = Path(self._tmp) / "eval"
        res = evaluate_episodes(_perfect(pool), pool, n_episodes=2, n_tasks=2, output_dir=out, n_overlays=3)
        data = json.loads((out / "metrics.json").read_text())
        self.assertEqual(data["episode_dice_mean"], 1.0)
        self.assertEqual(data["episodes"], json.loads(json.dumps(res["episodes"])))
        rows = (out / "metrics.csv").read_text().strip().splitlines()
        self.assertEqual(len(rows), 1 + 4)
        self.assertIn("episode Dice", (out / "metrics.md").read_text())
        pngs = sorted((out / "overlays").glob("*.png"))
        self.assertEqual(len(pngs), 3)
        self.assertEqual(Image.open(pngs[0]).size[0], 2 * S)

    def test_evaluate_errors(self):
        pool = FakePool(6, odd_size=3)
        with self.assertRaisesRegex(DataError, "img03"):
            evaluate_episodes(_zeros, pool, n_episodes=20, progress=False)
        with self.assertRaisesRegex(DataError, "probabilities"):
            evaluate_episodes(lambda s, m, q: _zeros(s, m, q) + 3.0, FakePool(6), n_episodes=1, progress=False)
        with self.assertRaisesRegex(DataError, "shape"):
            evaluate_episodes(lambda s, m, q: q[:, :1, :4], FakePool(6), n_episodes=1, progress=False)
        with self.assertRaisesRegex(DataError, "no masks"):
            evaluate_episodes(_zeros, FakePool(6, masks=False), n_episodes=1, progress=False)

    def test_runner_test_and_validation_splits(self):
        class Stub(torch.nn.Module):  # FSMSNet signature; a perfect logit from the fake images (lesion = 0.9)
            def __init__(self) -> None:
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(()))

            def forward(self, s, m, q):
                return self.w * (q[:, 2:3] - 0.5) * 20

        pools = {"unlabeled": None, "test": {"a": FakePool(6), "b": FakePool(7)}, "val": FakePool(6)}
        out = Path(self._tmp) / "runner"
        kw = dict(shots=[1, 5], n_episodes=2, n_tasks=2, n_overlays=0)
        test = FewShotImageEvaluationRunner(Stub(), pools, out / "test", **kw).run()
        self.assertEqual([(r["pool"], r["shots"]) for r in test["results"]], [("a", 1), ("a", 5), ("b", 1), ("b", 5)])
        self.assertEqual(test["results"][0]["episode_dice"], 1.0)
        val = FewShotImageEvaluationRunner(Stub(), pools, out / "val", split="val", **kw).run()
        # 6 images: 5-shot needs K + 1 = 6 support candidates with a mask -> runs; the pool is named "val"
        self.assertEqual([(r["pool"], r["shots"]) for r in val["results"]], [("val", 1), ("val", 5)])
        self.assertTrue((out / "val" / "val_1shot" / "metrics.json").is_file())
        self.assertFalse((out / "val" / "a_1shot").exists())
        with self.assertRaisesRegex(ConfigError, "no validation pool"):
            FewShotImageEvaluationRunner(Stub(), {**pools, "val": None}, out / "x", split="val")
        with self.assertRaisesRegex(ConfigError, "expected 'test' or 'val'"):
            FewShotImageEvaluationRunner(Stub(), pools, out / "x", split="train")
        with self.assertRaisesRegex(ConfigError, "too few|no labelled"):
            FewShotImageEvaluationRunner(Stub(), {"test": {}}, out / "x")

    @pytest.fixture(autouse=True)
    def _tmp_path(self, tmp_path):
        self._tmp = tmp_path


class TestWithClassFolders(unittest.TestCase):
    """The episodes and the protocol on the real readers (labelless.fewshot.image.classes) with tiny files."""

    @pytest.fixture(autouse=True)
    def _tmp_path(self, tmp_path):
        self._tmp = tmp_path

    def test_real_sources(self):
        from labelless.fewshot.image.classes import ClassFolderDataset, ImageFolderPool

        for c in ("cat", "dog"):
            (self._tmp / "classes" / c).mkdir(parents=True)
            for i in range(3):
                img, msk = _pair(1, i)
                folder = self._tmp / "classes" / c
                Image.fromarray((img.transpose(1, 2, 0) * 255).astype(np.uint8)).save(folder / f"{i}.jpg")
                Image.fromarray((msk[0] * 255).astype(np.uint8)).save(folder / f"{i}.png")
        for sub in ("pool", "pool_masks"):
            (self._tmp / sub).mkdir()
        for i in range(5):
            img, msk = _pair(9, i, empty=i == 2)
            Image.fromarray((img.transpose(1, 2, 0) * 255).astype(np.uint8)).save(self._tmp / "pool" / f"p{i}.png")
            Image.fromarray((msk[0] * 255).astype(np.uint8)).save(self._tmp / "pool_masks" / f"p{i}.png")
        source = ClassFolderDataset(self._tmp / "classes", min_pairs=2, size=S, grid=8)
        pool = ImageFolderPool(self._tmp / "pool", size=S, masks=self._tmp / "pool_masks", grid=8)
        ds = MetaTrainEpisodes(source, 3, n_tasks=4, n_shots=2, unlabeled_pool=pool, n_unlabeled=2, seed=3)
        item = ds[2]
        self.assertEqual(tuple(item["support_image"].shape), (4, 2, 3, S, S))
        self.assertEqual(tuple(item["unlabeled_image"].shape), (2, 3, S, S))
        self.assertTrue(set(item["classes"]) <= {"cat", "dog"})
        res = evaluate_episodes(_zeros, pool, n_episodes=5, n_tasks=2, progress=False)
        self.assertEqual((res["n_pool_images"], res["n_support_images"]), (5, 4))
        supports = {s for ep in res["episodes"] for t in ep["tasks"] for s in t["support_ids"]}
        self.assertNotIn("p2", supports)
        # the real network through network_predictor (tiny widths) and the inference runner
        from labelless.networks.fsms import FSMSNet

        torch.manual_seed(0)
        net = FSMSNet(spatial_dims=2, width=4, feature_channels=4)
        res = evaluate_episodes(network_predictor(net), pool, n_episodes=2, n_tasks=2, progress=False)
        self.assertTrue(0.0 <= res["episode_dice_mean"] <= 1.0)
        self.assertFalse(net.training)
        out = FewShotImageInferenceRunner(net, [self._tmp / "pool" / "p0.png"], [self._tmp / "pool_masks" / "p0.png"],
                                       [self._tmp / "pool" / "p1.png"], self._tmp / "inf", image_size=S).run()
        self.assertEqual(np.asarray(Image.open(out[0]["mask"])).shape, (S, S))


# ---------------------------------------------------------------------------------------------------- inference
class BrightnessNet(torch.nn.Module):
    """Fake FSMSNet: logits say 'foreground' where the query is bright; records the support shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(20.0))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, s_img: torch.Tensor, s_msk: torch.Tensor, q_img: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(s_img.shape))
        assert s_msk.shape[:2] == s_img.shape[:2] and bool(s_msk.flatten(1).amax(1).min() == 1)
        return (q_img.mean(1, keepdim=True) - 0.5) * self.scale


def _query_image(h: int, w: int, mode: str = "RGB") -> tuple[Image.Image, np.ndarray]:
    a = np.full((h, w, 3), 30, dtype=np.uint8)
    gt = np.zeros((h, w), dtype=bool)
    gt[h // 4 : 3 * h // 4, w // 3 : 5 * w // 6] = True
    a[gt] = 230
    img = Image.fromarray(a)
    return (img.convert(mode) if mode != "RGB" else img), gt


class TestInference(unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _tmp_path(self, tmp_path):
        self._tmp = tmp_path

    def _supports(self, k: int, empty_at: int | None = None) -> tuple[list[Path], list[Path]]:
        imgs, msks = [], []
        folder = self._tmp / "supports"  # an input folder: the outputs go elsewhere (never inside an input folder)
        folder.mkdir(exist_ok=True)
        for j in range(k):
            img, gt = _query_image(40 + j, 44)
            imgs.append(folder / f"s{j}.jpg")
            img.save(imgs[-1], quality=95)
            msks.append(folder / f"s{j}_mask.png")
            Image.fromarray((gt * (0 if j == empty_at else 255)).astype(np.uint8)).save(msks[-1])
        return imgs, msks

    def test_masks_at_original_size(self):
        qdir = self._tmp / "queries"
        qdir.mkdir()
        truths = {}
        for name, (h, w, mode) in {"a": (37, 51, "RGB"), "b": (64, 29, "L"), "c": (45, 45, "RGBA")}.items():
            img, truths[name] = _query_image(h, w, mode)
            img.save(qdir / f"{name}.png")
        imgs, msks = self._supports(2)
        net = BrightnessNet()
        out_dir = self._tmp / "out"
        runner = FewShotImageInferenceRunner(net, imgs, msks, qdir, out_dir, image_size=32, device="cpu", batch_size=2)
        outputs = runner.run()
        self.assertEqual([Path(o["query"]).stem for o in outputs], ["a", "b", "c"])
        self.assertTrue(all(s[1] == 2 for s in net.seen))  # K = number of supports
        for o in outputs:
            stem = Path(o["query"]).stem
            mask = np.asarray(Image.open(o["mask"]))
            self.assertEqual(mask.shape, truths[stem].shape)
            self.assertEqual(Path(o["mask"]).name, f"{stem}_mask.png")
            self.assertTrue(set(np.unique(mask).tolist()) <= {0, 255})
            pred = mask == 255
            dice = 2 * (pred & truths[stem]).sum() / (pred.sum() + truths[stem].sum())
            self.assertGreater(dice, 0.9)
            self.assertEqual(Image.open(o["overlay"]).size, truths[stem].shape[::-1])
        summary = json.loads((out_dir / "inference_summary.json").read_text())
        self.assertEqual(summary["n_shots"], 2)

    def test_errors(self):
        qdir = self._tmp / "q"
        qdir.mkdir()
        _query_image(30, 30)[0].save(qdir / "x.png")
        imgs, msks = self._supports(2, empty_at=1)
        runner = FewShotImageInferenceRunner(BrightnessNet(), imgs, msks, qdir, self._tmp / "o", image_size=16)
        with self.assertRaisesRegex(DataError, "s1_mask.png.*empty"):
            runner.run()
        self.assertFalse((self._tmp / "o" / "x_mask.png").exists())
        with self.assertRaisesRegex(DataError, "2 support images but 1 support masks"):
            FewShotImageInferenceRunner(BrightnessNet(), imgs, msks[:1], qdir, self._tmp / "o")
        (self._tmp / "none").mkdir()
        with self.assertRaisesRegex(DataError, "no query images"):
            FewShotImageInferenceRunner(BrightnessNet(), imgs, msks, self._tmp / "none", self._tmp / "o")
        (self._tmp / "badq").mkdir()
        bad = self._tmp / "badq" / "bad.png"
        bad.write_bytes(b"not an image")
        with self.assertRaisesRegex(DataError, "bad.png"):  # its header is read when the runner is built
            FewShotImageInferenceRunner(BrightnessNet(), imgs[:1], msks[:1], [bad], self._tmp / "o", image_size=16)


if __name__ == "__main__":
    unittest.main()


# ---------------------------------------------------------------------------------------------------- support threshold
def _dim_predictor(calls: list | None = None):
    """Predictor whose probability is 0.35 on the bright (lesion, 0.9) pixels of the query and 0.1 elsewhere: every
    lesion is missed at 0.5 and found exactly at 0.3. Records (support ids, query id) of each call."""

    def predict(s_img: torch.Tensor, s_msk: torch.Tensor, q_img: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            ids = lambda x: [round(float(v) * 100) for v in x[..., 1, 0, 0].flatten()]  # noqa: E731
            calls.append((ids(s_img), ids(q_img)))
        return torch.where(q_img[:, 2:3] > 0.5, 0.35, 0.1)

    return predict


class TestSupportThreshold(unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _tmp_path(self, tmp_path):
        self._tmp = tmp_path

    @staticmethod
    def _task(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [_pair(1, i) for i in ids]
        return (torch.as_tensor(np.stack([p[0] for p in pairs]))[None],
                torch.as_tensor(np.stack([p[1] for p in pairs]))[None])  # fmt: skip

    def test_one_shot_the_support_segments_itself(self):
        s, m = self._task([3])
        calls: list = []
        t = support_thresholds(_dim_predictor(calls), s, m)
        self.assertEqual(t.tolist(), [pytest.approx(0.3)])  # 0.2 marks everything, 0.4 and above nothing
        self.assertEqual(calls, [([3], [3])])

    def test_k_shot_leave_one_out(self):
        s, m = self._task([1, 2, 4])
        calls: list = []
        support_thresholds(_dim_predictor(calls), s, m)
        # each support is segmented from the other two, never from itself
        self.assertEqual(calls, [([2, 4], [1]), ([1, 4], [2]), ([1, 2], [4])])

    def test_ties_go_to_the_threshold_nearest_one_half(self):
        s, m = self._task([3])
        exact = lambda si, sm, q: torch.where(q[:, 2:3] > 0.5, 0.95, 0.05)  # noqa: E731 - every t in 0.2..0.7 is perfect
        self.assertEqual(support_thresholds(exact, s, m).tolist(), [0.5])

    def test_recentred_probabilities_threshold_like_the_original(self):
        g = torch.Generator().manual_seed(0)
        p = torch.rand((3, 1, 16, 16), generator=g)
        t = torch.tensor([0.2, 0.5, 0.7])
        for at in (0.5, 0.4):
            r = recentre_probabilities(p, t, at=at)
            away = (p - t.view(3, 1, 1, 1)).abs() > 1e-4
            self.assertTrue(torch.equal((r > at)[away], (p > t.view(3, 1, 1, 1))[away]))
        self.assertTrue(torch.allclose(recentre_probabilities(p, torch.full((3,), 0.5)), p.clamp(1e-6, 1 - 1e-6)))

    def test_calibrated_predictor_applies_each_tasks_threshold(self):
        s, m = self._task([3])
        q = torch.as_tensor(_pair(1, 5)[0])[None]
        truth = torch.as_tensor(_pair(1, 5)[1])[None] > 0.5
        plain = _dim_predictor()(s, m, q)
        self.assertFalse(bool((plain > 0.5).any()))  # the plain 0.5 threshold misses the lesion
        calibrated = support_calibrated_predictor(_dim_predictor())(s, m, q)
        self.assertTrue(torch.equal(calibrated > 0.5, truth))

    def test_errors(self):
        s, m = self._task([3])
        with self.assertRaisesRegex(ConfigError, r"grid must be thresholds in \(0, 1\)"):
            support_thresholds(_dim_predictor(), s, m, grid=(0.0, 0.5))
        with self.assertRaisesRegex(ConfigError, "grid"):
            support_thresholds(_dim_predictor(), s, m, grid=())
        with self.assertRaisesRegex(DataError, r"expected \[T, K, 3, H, W\]"):
            support_thresholds(_dim_predictor(), s[0], m[0])
        with self.assertRaisesRegex(DataError, "shape"):
            support_thresholds(lambda si, sm, q: q[:, :1, :4], s, m)

    def test_evaluation_runner_option(self):
        class Dim(torch.nn.Module):  # FSMSNet signature: the logits of _dim_predictor
            def __init__(self) -> None:
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(()))

            def forward(self, s, m, q):
                p = torch.where(q[:, 2:3] > 0.5, 0.35, 0.1)
                return self.w * torch.log(p / (1 - p))

        pools = {"test": {"a": FakePool(6)}}
        kw = dict(shots=[1, 2], n_episodes=2, n_tasks=2, n_overlays=0)
        plain = FewShotImageEvaluationRunner(Dim(), pools, self._tmp / "plain", **kw).run()
        cal = FewShotImageEvaluationRunner(Dim(), pools, self._tmp / "cal", support_threshold=True, **kw).run()
        self.assertEqual([r["episode_dice"] for r in plain["results"]], [0.0, 0.0])
        self.assertEqual([r["episode_dice"] for r in cal["results"]], [1.0, 1.0])
        saved = json.loads((self._tmp / "cal" / "metrics.json").read_text())
        self.assertIs(saved["support_threshold"], True)
        with self.assertRaisesRegex(ConfigError, "support_threshold"):
            FewShotImageEvaluationRunner(Dim(), pools, self._tmp / "x", support_threshold="maybe")

    def test_inference_runner_option(self):
        qdir = self._tmp / "queries"
        qdir.mkdir()
        img, truth = _query_image(37, 51)
        img.save(qdir / "a.png")
        imgs, msks = TestInference._supports(self, 1)
        net = BrightnessNet()
        net.forward = lambda s, m, q: torch.where(q.mean(1, keepdim=True) > 0.5, -0.6, -2.2)  # p 0.35 / 0.10
        plain = FewShotImageInferenceRunner(net, imgs, msks, qdir, self._tmp / "plain", image_size=32).run()
        self.assertEqual(plain[0]["foreground_fraction"], 0.0)
        out = FewShotImageInferenceRunner(net, imgs, msks, qdir, self._tmp / "cal", image_size=32,
                                          support_threshold=True).run()  # fmt: skip
        pred = np.asarray(Image.open(out[0]["mask"])) == 255
        self.assertGreater(2 * (pred & truth).sum() / (pred.sum() + truth.sum()), 0.85)  # 32 px back to 37 x 51
        summary = json.loads((self._tmp / "cal" / "inference_summary.json").read_text())
        self.assertEqual(summary["support_threshold"], pytest.approx(0.3))
        self.assertIsNone(json.loads((self._tmp / "plain" / "inference_summary.json").read_text())["support_threshold"])
