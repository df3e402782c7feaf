# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.engines.episodic (monai_bundle_conventions.md §4, §5; fewshot_protocol.md §4, §8)."""

from __future__ import annotations

import io
import os
import tempfile
import unittest
import warnings

import numpy as np
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader
from monai.handlers import CheckpointLoader, CheckpointSaver, LrScheduleHandler
from parameterized import parameterized

from labelless.engines import (
    EpisodicProgressBar,
    EpisodicTrainer,
    StopAtIteration,
    annealed_lr_schedule,
    iteration_lr_schedule,
    prepare_episode_batch,
)
from labelless.errors import ConfigError, DataError
from labelless.fewshot.volume.episodes import SelfSupervisedEpisodeDataset
from labelless.losses import ALPNetLoss
from labelless.networks.fewshot import build_fewshot_segmentor
from labelless.transforms.augment import RandFewShotAugmentd
from labelless.utils import seed_everything

SIZE = 64
# (epoch_length, max_epochs, n_steps, expected iterations, expected completed epochs)
STEP_CASES = [(4, 3, 10, 10, 2), (4, 3, 12, 12, 3), (4, 3, None, 12, 3), (5, 1, 1, 1, 0)]
_THREADS = torch.get_num_threads()


def setUpModule() -> None:  # noqa: N802 - unittest hook
    torch.set_num_threads(1)  # tiny convolutions: threads only add contention on shared CPUs


def tearDownModule() -> None:  # noqa: N802 - unittest hook
    torch.set_num_threads(_THREADS)


def _synthetic_scans() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Two 64×64 slices of a 4×4 grid of 16×16 squares ("superpixels" 1..16), each with its own intensity."""
    rng = np.random.default_rng(0)
    ids = np.arange(1, 17).reshape(4, 4).repeat(16, axis=0).repeat(16, axis=1)
    levels = rng.permutation(16).astype(np.float32) / 4.0
    images, sps = {}, {}
    for z in range(2):
        img = levels[ids - 1] + 0.2 * rng.standard_normal((SIZE, SIZE)).astype(np.float32)
        images.setdefault("1", []).append((img - img.mean()) / img.std())
        sps.setdefault("1", []).append(ids if z == 0 else ids.T.copy())
    return {k: np.stack(v) for k, v in images.items()}, {k: np.stack(v).astype(np.int32) for k, v in sps.items()}


_SCANS = _synthetic_scans()


def _dataset(n_episodes: int = 10, seed: int = 0) -> SelfSupervisedEpisodeDataset:
    images, sps = _SCANS
    return SelfSupervisedEpisodeDataset(
        images,
        sps,
        [("1", 0), ("1", 1)],
        n_shots=1,
        n_episodes=n_episodes,
        transform=RandFewShotAugmentd(keys=("image", "label")),
        seed=seed,
    )


def _trainer(
    epoch_length: int = 10,
    max_epochs: int = 3,
    n_steps: int | None = None,
    seed: int = 0,
    lr: float = 0.01,
    handlers: list | None = None,
    schedule: dict | None = None,
    **kwargs,
) -> tuple[EpisodicTrainer, torch.nn.Module, torch.optim.Optimizer, object]:
    seed_everything(seed)
    model = build_fewshot_segmentor("tiny", channels=(8, 16, 32), out_channels=32)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = iteration_lr_schedule(opt, **(schedule or {"step": 1000, "n_steps": 100_100}))
    loader = DataLoader(_dataset(epoch_length, seed), batch_size=1, num_workers=0)
    all_handlers = [LrScheduleHandler(sched, epoch_level=False, print_lr=False), *(handlers or [])]
    trainer = EpisodicTrainer(
        "cpu",
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=model,
        optimizer=opt,
        loss_function=ALPNetLoss(),
        epoch_length=epoch_length,
        n_steps=n_steps,
        train_handlers=all_handlers,
        **kwargs,
    )
    return trainer, model, opt, sched


def _record(trainer: EpisodicTrainer, key: str = "loss") -> list[float]:
    values: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: values.append(float(e.state.output[key])))
    return values


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class TestTraining(unittest.TestCase):
    def test_short_run_decreases_loss_and_is_reproducible(self):
        states, curves = [], []
        for _ in range(2):
            trainer, model, _, _ = _trainer(epoch_length=10, max_epochs=3, episode_seed=7)
            losses = _record(trainer)
            trainer.run()
            self.assertEqual(trainer.state.iteration, 30)
            states.append({k: v.clone() for k, v in model.state_dict().items()})
            curves.append(losses)
        self.assertTrue(_same_state(*states))  # bit-identical weights
        self.assertEqual(curves[0], curves[1])
        first, last = np.mean(curves[0][:10]), np.mean(curves[0][-10:])
        self.assertLess(last, 0.9 * first, f"loss did not decrease: {first:.4f} -> {last:.4f}")

    def test_output_keys(self):
        trainer, _, _, _ = _trainer(epoch_length=2, max_epochs=1)
        trainer.run()
        out = trainer.state.output
        for key in ("loss", "query_loss", "par_loss", "bg_fallbacks", "pred", "label"):
            self.assertIn(key, out)
        torch.testing.assert_close(out["loss"], out["query_loss"] + out["par_loss"])
        self.assertIsInstance(out["bg_fallbacks"], int)
        self.assertEqual(tuple(out["pred"].shape), (1, 2, SIZE, SIZE))
        self.assertGreaterEqual(trainer.bg_fallback_total, out["bg_fallbacks"])

    @parameterized.expand(STEP_CASES)
    def test_exact_n_steps(self, epoch_length, max_epochs, n_steps, iterations, epochs_completed):
        trainer, _, _, _ = _trainer(epoch_length=epoch_length, max_epochs=max_epochs, n_steps=n_steps)
        seen, epochs, done = [], [], []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs.append(e.state.epoch))
        trainer.add_event_handler(Events.COMPLETED, lambda e: done.append(True))
        trainer.run()
        self.assertEqual(seen, list(range(1, iterations + 1)))
        self.assertEqual(len(epochs), epochs_completed)
        self.assertEqual(done, [True])

    def test_n_steps_errors(self):
        with self.assertRaises(ConfigError):
            _trainer(epoch_length=4, max_epochs=2, n_steps=9)
        with self.assertRaises(ConfigError):
            StopAtIteration(0)

    def test_amp_ignored_on_cpu(self):
        with self.assertWarns(UserWarning):
            trainer, _, _, _ = _trainer(epoch_length=1, max_epochs=1, amp=True)
        self.assertFalse(trainer.amp)


class TestSchedule(unittest.TestCase):
    def test_reference_milestones(self):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = iteration_lr_schedule(opt)
        self.assertEqual(sorted(sched.milestones), list(range(1000, 99_001, 1000)))
        self.assertAlmostEqual(1e-3 * 0.95 ** len(sched.milestones), 6.2e-6, delta=0.05e-6)

    def test_annealed_schedules(self):
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
        sched = annealed_lr_schedule(opt, "cosine", n_steps=4)
        lrs = []
        for _ in range(6):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        c = 0.5 * (1 + np.cos(np.pi * np.arange(5) / 4))
        np.testing.assert_allclose(lrs, [*(1e-4 * c), 0.0], rtol=1e-9, atol=1e-15)  # held at the end
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
        floor = annealed_lr_schedule(opt, "cosine", n_steps=2, min_factor=0.1)
        for _ in range(3):
            opt.step()
            floor.step()
        self.assertAlmostEqual(opt.param_groups[0]["lr"], 1e-5)
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
        const = annealed_lr_schedule(opt, "constant", n_steps=2)
        for _ in range(3):
            opt.step()
            const.step()
        self.assertEqual(opt.param_groups[0]["lr"], 1e-4)
        with self.assertRaisesRegex(ConfigError, "lr_schedule must be one of"):
            annealed_lr_schedule(opt, "linear", n_steps=2)
        with self.assertRaisesRegex(ConfigError, "min_factor"):
            annealed_lr_schedule(opt, "cosine", n_steps=2, min_factor=2.0)

    def test_per_iteration_stepping(self):
        trainer, _, opt, _ = _trainer(epoch_length=5, max_epochs=2, schedule={"step": 3, "gamma": 0.5, "n_steps": 10})
        lrs: list[float] = []
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: lrs.append(opt.param_groups[0]["lr"]))
        trainer.run()
        expected = [0.01] * 3 + [0.005] * 3 + [0.0025] * 4  # milestones 3, 6 (n_steps // step - 1 of them)
        np.testing.assert_allclose(lrs, expected, rtol=1e-12)


class TestCheckpointResume(unittest.TestCase):
    def test_resume_reaches_the_same_weights(self):
        schedule = {"step": 2, "gamma": 0.5, "n_steps": 7}
        full, full_model, full_opt, _ = _trainer(3, 3, n_steps=7, lr=0.02, schedule=schedule, episode_seed=3)
        full.run()
        with tempfile.TemporaryDirectory() as tmp:
            first, model, opt, sched = _trainer(3, 3, n_steps=4, lr=0.02, schedule=schedule, episode_seed=3)
            saver = CheckpointSaver(
                save_dir=tmp,
                save_dict={"model": model, "optimizer": opt, "lr_scheduler": sched, "trainer": first},
                save_final=True,
                final_filename="ckpt.pt",
            )
            saver.attach(first)
            first.run()
            path = os.path.join(tmp, "ckpt.pt")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            self.assertEqual(set(ckpt), {"model", "optimizer", "lr_scheduler", "trainer"})
            self.assertEqual(ckpt["trainer"]["iteration"], 4)
            # a fresh process would build everything anew: different seed, then load
            resumed, model2, opt2, sched2 = _trainer(
                3, 3, n_steps=7, lr=0.02, schedule=schedule, seed=99, episode_seed=3
            )
            loader = CheckpointLoader(
                load_path=path,
                load_dict={"model": model2, "optimizer": opt2, "lr_scheduler": sched2, "trainer": resumed},
                map_location="cpu",
            )
            loader.attach(resumed)
            seen: list[int] = []
            resumed.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
            resumed.run()
            # resuming a run that already reached n_steps runs no further iteration
            again, model3, opt3, sched3 = _trainer(3, 3, n_steps=4, lr=0.02, schedule=schedule, episode_seed=3)
            CheckpointLoader(
                load_path=path,
                load_dict={"model": model3, "optimizer": opt3, "lr_scheduler": sched3, "trainer": again},
                map_location="cpu",
            ).attach(again)
            again_seen: list[int] = []
            again.add_event_handler(Events.ITERATION_COMPLETED, lambda e: again_seen.append(e.state.iteration))
            again.run()
        self.assertEqual(again_seen, [])
        self.assertEqual(again.state.iteration, 4)
        self.assertEqual(seen, [5, 6, 7])
        self.assertTrue(_same_state(model2.state_dict(), full_model.state_dict()))
        self.assertAlmostEqual(opt2.param_groups[0]["lr"], full_opt.param_groups[0]["lr"])
        self.assertEqual(opt2.param_groups[0]["lr"], 0.02 * 0.5**2)  # milestones 2, 4


class TestConfigAndProgress(unittest.TestCase):
    def test_bundle_config(self):
        with tempfile.TemporaryDirectory() as tmp:
            config = {
                "imports": ["$import labelless"],
                "device": "$torch.device('cpu')",
                "n_steps": 5,
                "epoch_length": 3,
                "ckpt_dir": tmp,
                "network_def": {
                    "_target_": "labelless.networks.fewshot.build_fewshot_segmentor",
                    "encoder": "tiny",
                    "channels": [8, 16, 32],
                    "out_channels": 32,
                },
                "network": "$@network_def.to(@device)",
                "optimizer": {
                    "_target_": "torch.optim.SGD",
                    "params": "$@network.parameters()",
                    "lr": 0.001,
                    "momentum": 0.9,
                    "weight_decay": 0.0005,
                },
                "lr_scheduler": {
                    "_target_": "labelless.engines.iteration_lr_schedule",
                    "optimizer": "@optimizer",
                    "step": 2,
                    "gamma": 0.95,
                    "n_steps": "@n_steps",
                },
                # a train handler referring to the trainer would be circular: attach it in "initialize"
                "checkpoint_saver": {
                    "_target_": "CheckpointSaver",
                    "save_dir": "@ckpt_dir",
                    "save_dict": {
                        "model": "@network",
                        "optimizer": "@optimizer",
                        "lr_scheduler": "@lr_scheduler",
                        "trainer": "@train#trainer",
                    },
                    "save_final": True,
                    "final_filename": "model.pt",
                },
                "initialize": ["$@checkpoint_saver.attach(@train#trainer)"],
                "loss": {"_target_": "labelless.losses.ALPNetLoss", "par_weight": 1.0, "skip_empty_fg": False},
                "train": {
                    "dataset": _dataset(3, seed=1),
                    "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 1},
                    "handlers": [
                        {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "epoch_level": False},
                        {"_target_": "StatsHandler", "tag_name": "train_loss", "output_transform": "$lambda x: None"},
                        {"_target_": "labelless.engines.EpisodicProgressBar", "every": 2, "file": io.StringIO()},
                    ],
                    "trainer": {
                        "_target_": "labelless.engines.EpisodicTrainer",
                        "device": "@device",
                        "max_epochs": "$math.ceil(@n_steps / @epoch_length)",
                        "epoch_length": "@epoch_length",
                        "n_steps": "@n_steps",
                        "train_data_loader": "@train#dataloader",
                        "network": "@network",
                        "optimizer": "@optimizer",
                        "loss_function": "@loss",
                        "train_handlers": "@train#handlers",
                        "amp": "$torch.cuda.is_available()",
                        "episode_seed": 0,
                    },
                },
            }
            parser = ConfigParser(config, globals={"math": "math"})
            parser.get_parsed_content("imports")
            trainer = parser.get_parsed_content("train#trainer")
            parser.get_parsed_content("initialize")
            self.assertIsInstance(trainer, EpisodicTrainer)
            trainer.run()
            self.assertEqual(trainer.state.iteration, 5)
            ckpt = torch.load(os.path.join(tmp, "model.pt"), map_location="cpu", weights_only=True)
            self.assertEqual(ckpt["trainer"]["iteration"], 5)

    def test_progress_bar_writes(self):
        stream = io.StringIO()
        trainer, _, _, _ = _trainer(epoch_length=3, max_epochs=1, handlers=[EpisodicProgressBar(file=stream)])
        trainer.run()
        text = stream.getvalue()
        self.assertIn("loss=", text)
        self.assertIn("par_loss=", text)


class TestPrepareBatch(unittest.TestCase):
    def test_squeezes_episode_batch(self):
        batch = {
            "support_image": torch.zeros(1, 3, 3, 16, 16),
            "support_label": torch.zeros(1, 3, 1, 16, 16),
            "query_image": torch.zeros(1, 3, 16, 16),
            "query_label": torch.zeros(1, 16, 16, dtype=torch.long),
        }
        s, m, q, y = prepare_episode_batch(batch, "cpu")
        self.assertEqual(
            [tuple(t.shape) for t in (s, m, q, y)], [(3, 3, 16, 16), (3, 1, 16, 16), (1, 3, 16, 16), (1, 16, 16)]
        )
        unbatched = {k: v[0] for k, v in batch.items()}
        self.assertEqual(
            [tuple(t.shape) for t in prepare_episode_batch(unbatched)],
            [(3, 3, 16, 16), (3, 1, 16, 16), (1, 3, 16, 16), (1, 16, 16)],
        )

    @parameterized.expand([("batch of 2", 2, None), ("missing key", 1, "query_label")])
    def test_bad_batches(self, _name, n, drop):
        batch = {
            "support_image": torch.zeros(n, 1, 3, 16, 16),
            "support_label": torch.zeros(n, 1, 1, 16, 16),
            "query_image": torch.zeros(n, 3, 16, 16),
            "query_label": torch.zeros(n, 16, 16, dtype=torch.long),
        }
        if drop:
            del batch[drop]
        with self.assertRaises(DataError):
            prepare_episode_batch(batch)

    def test_episode_seed_needs_single_process_loader(self):
        seed_everything(0)
        model = build_fewshot_segmentor("tiny", channels=(8, 16, 32), out_channels=32)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loader = DataLoader(_dataset(2), batch_size=1, num_workers=1)
        with self.assertRaises(ConfigError):
            EpisodicTrainer("cpu", 1, loader, model, opt, episode_seed=0)


if __name__ == "__main__":
    unittest.main()
