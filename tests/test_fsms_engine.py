# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.engines.surrogate (fsms.md §3, §6): the FSMS episodic trainer with the denoising surrogate."""

from __future__ import annotations

import math
import unittest

import numpy as np
import torch
from ignite.engine import Events
from parameterized import parameterized
from torch.utils.data import DataLoader, Dataset

from labelless.engines.surrogate import SurrogateEpisodicTrainer, prepare_fsms_batch
from labelless.errors import ConfigError, DataError
from labelless.networks.fsms import FSMSNet
from labelless.transforms.noise import draw_sigma
from labelless.utils import seed_everything

SIZE, T, K = 32, 2, 1
ADAM = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7}
# (surrogate, mode, include_support, n_unlabeled, expected surrogate batch size)
RUN_CASES = [
    (True, "alternate", True, 2, T + 2),
    (True, "alternate", False, 2, 2),
    (True, "alternate", True, 0, T),
    (True, "sum", True, 2, T + 2),
    (False, "alternate", True, 2, 0),
    ("false", "sum", True, 2, 0),
]
_THREADS = torch.get_num_threads()


def setUpModule() -> None:  # noqa: N802 - unittest hook
    torch.set_num_threads(1)


def tearDownModule() -> None:  # noqa: N802 - unittest hook
    torch.set_num_threads(_THREADS)


class TinyEpisodes(Dataset):
    """In-memory FSMS episodes: a bright square on a darker textured background; deterministic per (seed, index)."""

    def __init__(self, length: int = 4, n_tasks: int = T, shots: int = K, n_unlabeled: int = 2, seed: int = 0):
        self.length, self.n_tasks, self.shots, self.n_unlabeled, self.seed = length, n_tasks, shots, n_unlabeled, seed

    def __len__(self) -> int:
        return self.length

    def _pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        img = 0.3 * rng.random((3, SIZE, SIZE), dtype=np.float32)
        msk = np.zeros((1, SIZE, SIZE), np.float32)
        y, x, s = int(rng.integers(0, SIZE - 12)), int(rng.integers(0, SIZE - 12)), int(rng.integers(8, 12))
        msk[:, y : y + s, x : x + s] = 1.0
        img = np.where(msk > 0, img + 0.6, img).astype(np.float32)
        return img, msk

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, index))
        s_img = np.zeros((self.n_tasks, self.shots, 3, SIZE, SIZE), np.float32)
        s_msk = np.zeros((self.n_tasks, self.shots, 1, SIZE, SIZE), np.float32)
        q_img = np.zeros((self.n_tasks, 3, SIZE, SIZE), np.float32)
        q_msk = np.zeros((self.n_tasks, 1, SIZE, SIZE), np.float32)
        for t in range(self.n_tasks):
            for k in range(self.shots):
                s_img[t, k], s_msk[t, k] = self._pair(rng)
            q_img[t], q_msk[t] = self._pair(rng)
        unl = rng.random((self.n_unlabeled, 3, SIZE, SIZE), dtype=np.float32)
        return {
            "support_image": torch.from_numpy(s_img),
            "support_label": torch.from_numpy(s_msk),
            "query_image": torch.from_numpy(q_img),
            "query_label": torch.from_numpy(q_msk),
            "unlabeled_image": torch.from_numpy(unl),
            "classes": [f"class_{t}" for t in range(self.n_tasks)],
        }


def _build(surrogate=True, mode="alternate", include_support=True, n_unlabeled=2, seed=0, n_steps=3, **kwargs):
    seed_everything(seed)
    net = FSMSNet(width=4, feature_channels=8)
    seg_params = net.parameters() if mode == "sum" else net.segmentation_parameters()
    seg_opt = torch.optim.Adam(seg_params, **ADAM)
    sur_opt = torch.optim.Adam(net.surrogate_parameters(), **ADAM)
    loader = DataLoader(TinyEpisodes(n_unlabeled=n_unlabeled), batch_size=1, shuffle=False, num_workers=0)
    trainer = SurrogateEpisodicTrainer(
        device="cpu",
        max_epochs=math.ceil(n_steps / 2),
        train_data_loader=loader,
        network=net,
        seg_optimizer=seg_opt,
        sur_optimizer=sur_opt,
        surrogate=surrogate,
        mode=mode,
        surrogate_include_support=include_support,
        epoch_length=2,
        n_steps=n_steps,
        episode_seed=seed,
        **kwargs,
    )
    outputs: list[dict] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: outputs.append({k: v for k, v in e.state.output.items() if k not in ("pred", "label")}),
    )
    return net, trainer, outputs


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p.detach(), b) for p, b in zip(module.parameters(), before, strict=True))


class TestSurrogateTrainer(unittest.TestCase):
    @parameterized.expand(RUN_CASES)
    def test_run(self, surrogate, mode, include_support, n_unlabeled, n_sur):
        net, trainer, outputs = _build(surrogate, mode, include_support, n_unlabeled)
        head, decoder = _snapshot(net.surrogate_head), _snapshot(net.decoder)
        trainer.run()
        self.assertEqual(trainer.state.iteration, 3)
        self.assertEqual(len(outputs), 3)
        on = surrogate is True
        for it, out in enumerate(outputs, start=1):
            for key in ("loss", "seg_loss", "sur_loss"):
                self.assertTrue(math.isfinite(float(out[key])), key)
            self.assertEqual(out["n_surrogate"], n_sur)
            if on:
                self.assertGreater(float(out["sur_loss"]), 0.0)
                self.assertEqual(out["sigma"], draw_sigma(trainer.noise_generator(it)))
                self.assertTrue(0.1 <= out["sigma"] <= 0.6)
                self.assertAlmostEqual(float(out["loss"]), float(out["seg_loss"]) + float(out["sur_loss"]), places=5)
            else:
                self.assertEqual(float(out["sur_loss"]), 0.0)
                self.assertEqual(out["sigma"], 0.0)
                self.assertEqual(float(out["loss"]), float(out["seg_loss"]))
        self.assertTrue(_changed(net.decoder, decoder))
        self.assertEqual(_changed(net.surrogate_head, head), on)  # the head moves only with the surrogate on

    def test_seeded_runs_identical(self):
        runs = []
        for _ in range(2):
            _, trainer, outputs = _build(True, "alternate", n_steps=2)
            trainer.run()
            runs.append([(float(o["seg_loss"]), float(o["sur_loss"]), o["sigma"]) for o in outputs])
        self.assertEqual(runs[0], runs[1])
        _, trainer, outputs = _build(True, "alternate", seed=1, n_steps=2)
        trainer.run()
        self.assertNotEqual(runs[0], [(float(o["seg_loss"]), float(o["sur_loss"]), o["sigma"]) for o in outputs])

    def test_sum_mode_and_alternate_differ(self):
        losses = {}
        for mode in ("alternate", "sum"):
            _, trainer, outputs = _build(True, mode, n_steps=2)
            trainer.run()
            losses[mode] = [float(o["seg_loss"]) for o in outputs]
        self.assertEqual(losses["alternate"][0], losses["sum"][0])  # same weights, same first episode
        self.assertNotEqual(losses["alternate"][1], losses["sum"][1])  # different updates

    def test_config_errors(self):
        net = FSMSNet(width=4, feature_channels=8)
        loader = DataLoader(TinyEpisodes(), batch_size=1)
        seg_opt = torch.optim.Adam(net.segmentation_parameters(), **ADAM)
        base = {"device": "cpu", "max_epochs": 1, "train_data_loader": loader, "network": net, "seg_optimizer": seg_opt}
        with self.assertRaises(ConfigError):  # alternate + surrogate needs sur_optimizer
            SurrogateEpisodicTrainer(**base)
        with self.assertRaises(ConfigError):  # sum mode: seg optimiser without the surrogate head
            SurrogateEpisodicTrainer(**base, mode="sum")
        with self.assertRaises(ConfigError):
            SurrogateEpisodicTrainer(**base, surrogate=False, mode="both")
        with self.assertRaises(ConfigError):
            SurrogateEpisodicTrainer(**base, surrogate="nope")
        with self.assertRaises(ConfigError):
            SurrogateEpisodicTrainer(**base, surrogate=False, epoch_length=2, n_steps=3)
        with self.assertRaises(ConfigError):
            SurrogateEpisodicTrainer(**base, surrogate=False, sigma_range=(0.6, 0.1))
        baseline = SurrogateEpisodicTrainer(**base, surrogate="false")  # baseline needs no sur_optimizer
        self.assertFalse(baseline.surrogate)

    def test_empty_surrogate_batch_raises(self):
        _, trainer, _ = _build(True, "alternate", include_support=False, n_unlabeled=0, n_steps=1)
        with self.assertRaises(DataError) as ctx:
            trainer.run()
        self.assertIn("surrogate batch is empty", str(ctx.exception))


class TestPrepareBatch(unittest.TestCase):
    def test_batched_and_unbatched(self):
        item = TinyEpisodes()[0]
        batch = next(iter(DataLoader(TinyEpisodes(), batch_size=1)))
        for data in (item, batch):
            s_img, s_msk, q_img, q_msk, unl = prepare_fsms_batch(data)
            self.assertEqual(tuple(s_img.shape), (T, K, 3, SIZE, SIZE))
            self.assertEqual(tuple(s_msk.shape), (T, K, 1, SIZE, SIZE))
            self.assertEqual(tuple(q_img.shape), (T, 3, SIZE, SIZE))
            self.assertEqual(tuple(q_msk.shape), (T, 1, SIZE, SIZE))
            self.assertEqual(tuple(unl.shape), (2, 3, SIZE, SIZE))
            self.assertTrue(torch.equal(s_img, item["support_image"]))

    def test_bad_batches_name_the_key(self):
        item = TinyEpisodes()[0]
        missing = {k: v for k, v in item.items() if k != "query_label"}
        with self.assertRaises(DataError) as ctx:
            prepare_fsms_batch(missing)
        self.assertIn("query_label", str(ctx.exception))
        nan = dict(item, unlabeled_image=item["unlabeled_image"].clone())
        nan["unlabeled_image"][0, 0, 0, 0] = float("nan")
        with self.assertRaises(DataError) as ctx:
            prepare_fsms_batch(nan)
        self.assertIn("unlabeled_image", str(ctx.exception))
        self.assertIn("non-finite", str(ctx.exception))
        two = next(iter(DataLoader(TinyEpisodes(), batch_size=2)))
        with self.assertRaises(DataError) as ctx:
            prepare_fsms_batch(two)
        self.assertIn("batch_size=1", str(ctx.exception))
        wrong = dict(item, query_label=item["query_label"][:, :, :16])
        with self.assertRaises(DataError) as ctx:
            prepare_fsms_batch(wrong)
        self.assertIn("query_label", str(ctx.exception))
        scaled = dict(item, support_label=item["support_label"] * 255)
        with self.assertRaises(DataError) as ctx:
            prepare_fsms_batch(scaled)
        self.assertIn("[0, 1]", str(ctx.exception))
        with self.assertRaises(DataError):
            prepare_fsms_batch([item])


if __name__ == "__main__":
    unittest.main()
