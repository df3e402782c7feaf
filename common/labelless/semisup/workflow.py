# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Training workflow of the semi-supervised ultrasound bundle (SABR-Net, sabrnet.md §6–8), used by its configs.

- :func:`resolve_split`: the dataset of a run (the embedded synthetic set when ``dataset_dir`` is unset);
- :class:`PairedSemiSupDataset` and :func:`training_dataset`: the items of one stage (paired labelled/unlabelled
  images with shadow imitation for stage 1; labelled images for stages 2–3 and the supervised baseline; labelled +
  unlabelled for the mean teacher), resized to the network grid;
- :func:`build_optimizer`, :func:`build_trainer`: the stage's optimiser(s) and Ignite trainer (``train#trainer``);
- :func:`load_stage_weights`: start a stage from the previous one's model;
- :class:`SemiSupValidationHandler`: foreground Dice/IoU of the EMA model on the validation split every
  ``interval`` iterations; keeps the best as ``model.pt`` (validation split only, never the test images).

Stages (``stage``): ``pretrain`` (stage 1), ``finetune`` (stage 2), ``boundary`` (stage 3), and the baselines
``supervised`` (stage 2 from scratch: labelled images only, no shadows, no unlabelled data) and ``mean_teacher``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Compose, CopyItemsd, Randomizable
from torch import nn
from torch.utils.data import Dataset

from labelless.data.keys import SemiSupKeys
from labelless.engines.base import attach_after_engine
from labelless.engines.checkpoint import BestSoFarState
from labelless.engines.semisup import (
    EMAModel,
    MeanTeacherTrainer,
    SegmentationTrainer,
    ShadowPretrainTrainer,
    unwrap_network,
)
from labelless.errors import ConfigError, DataError
from labelless.evaluation.metrics import confusion_counts, dice_from_counts, iou_from_counts
from labelless.io.checkpoint import read_state_dict
from labelless.networks.sabrnet import build_discriminators
from labelless.semisup.data import SemiSupDataset, SemiSupSplit, build_split
from labelless.semisup.synthetic import default_ultrasound_dir
from labelless.transforms.boundary import BoundaryTargetsd
from labelless.transforms.shadow import RandShadowd
from labelless.utils import atomic_path, is_unset, write_json_atomic

__all__ = [
    "STAGES",
    "resolve_split",
    "PairedSemiSupDataset",
    "training_dataset",
    "build_optimizer",
    "build_trainer",
    "load_stage_weights",
    "predict_logits",
    "SemiSupValidationHandler",
]

logger = logging.getLogger("labelless.semisup")

STAGES = ("pretrain", "finetune", "boundary", "supervised", "mean_teacher")


def _check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
    return stage


def resolve_split(
    dataset_dir: str | os.PathLike | None,
    labeled_ratio: float = 0.2,
    seed: int = 0,
    layout: str = "auto",
    eval_split: str = "test",
    mask_dir: str = "masks",
    synthetic_kind: str = "head",
) -> SemiSupSplit:
    """The split of a run: ``dataset_dir`` (HC18/DDTI/reference/folders layouts) or, when unset, the embedded
    synthetic ultrasound set (``synthetic_kind``: ``head`` or ``nodule``) generated once in the cache."""
    root = default_ultrasound_dir(synthetic_kind) if is_unset(dataset_dir) else Path(dataset_dir)
    return build_split(root, labeled_ratio=float(labeled_ratio), seed=int(seed), layout=layout,
                       eval_split=eval_split, mask_dir=mask_dir)  # fmt: skip


class PairedSemiSupDataset(Dataset):
    """``length`` items, each a labelled item (cycled) joined with an unlabelled image drawn with a seeded
    generator (the pairing and the random transforms of item ``i`` depend on ``seed`` and ``i`` only, so runs are
    reproducible whatever the loader order).

    Args:
        labeled: dataset of labelled items (``image``, ``label``, ...).
        unlabeled: dataset of unlabelled items (``image``).
        length: number of items (an epoch).
        seed: pairing seed.
        transform: a dict transform applied to the joined item (e.g. shadow imitation).
    """

    def __init__(self, labeled: Dataset, unlabeled: Dataset, length: int, seed: int = 0, transform: Any = None) -> None:
        if len(labeled) == 0:
            raise DataError("labelled images", "no labelled image to train on")
        if len(unlabeled) == 0:
            raise DataError("unlabelled images", "no unlabelled image to train on")
        self.labeled, self.unlabeled = labeled, unlabeled
        self.length, self.seed, self.transform = int(length), int(seed), transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(index)])
        item = dict(self.labeled[int(rng.integers(len(self.labeled)))])
        item[SemiSupKeys.UNLABELED] = self.unlabeled[int(rng.integers(len(self.unlabeled)))][SemiSupKeys.IMAGE]
        if self.transform is None:
            return item
        _seed_per_item(self.transform, rng)
        return self.transform(item)


def _seed_per_item(transform: Any, rng: np.random.Generator) -> None:
    """Give every random transform of ``transform`` (a ``Compose`` or a single one) its own seed drawn from the
    item's generator, so that an item's random draws depend on the seed and its index only (any loader order, any
    number of workers) and two transforms of one item draw independently."""
    for t in getattr(transform, "transforms", [transform]):
        if isinstance(t, Randomizable):
            t.set_random_state(seed=int(rng.integers(2**31 - 1)))


class _Cycled(Dataset):
    """``length`` items drawn from ``base`` in a seeded random order (labelled-only stages)."""

    def __init__(self, base: Dataset, length: int, seed: int, transform: Any = None) -> None:
        if len(base) == 0:
            raise DataError("labelled images", "no labelled image to train on")
        self.base, self.length, self.seed, self.transform = base, int(length), int(seed), transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(index)])
        item = dict(self.base[int(rng.integers(len(self.base)))])
        return self.transform(item) if self.transform is not None else item


def training_dataset(
    split: SemiSupSplit,
    stage: str,
    image_size: int = 128,
    length: int = 1000,
    seed: int = 0,
    shadow_mode: str = "freeform",
    shadow_prob: float = 1.0,
    geometry: str = "auto",
) -> Dataset:
    """The training items of ``stage`` at ``image_size`` (see the module docstring).

    ``pretrain``: labelled + unlabelled pairs, each image with a shadow-imitation copy ``*_input`` and keep-mask
    (:class:`~labelless.transforms.shadow.RandShadowd`); ``finetune``/``supervised``: labelled images;
    ``boundary``: labelled images with boundary/direction targets; ``mean_teacher``: labelled + unlabelled pairs
    without shadows. ``shadow_mode="none"`` turns shadow imitation off (ablation): the keep-mask is all ones.

    Raises:
        ConfigError: unknown stage or shadow mode.
        DataError: no labelled (or, when needed, unlabelled) image.
    """
    _check_stage(stage)
    labeled = SemiSupDataset(split.labeled, image_size=image_size)
    if stage in ("finetune", "supervised"):
        return _Cycled(labeled, length, seed)
    if stage == "boundary":
        return _Cycled(labeled, length, seed, BoundaryTargetsd(keys=SemiSupKeys.LABEL, keep_channel=True))
    unlabeled = SemiSupDataset(split.unlabeled, image_size=image_size)
    if stage == "mean_teacher":
        return PairedSemiSupDataset(labeled, unlabeled, length, seed)
    if shadow_mode not in ("freeform", "acoustic", "none"):
        raise ConfigError(f"shadow_mode must be 'freeform', 'acoustic' or 'none', got {shadow_mode!r}")
    keys = [SemiSupKeys.IMAGE, SemiSupKeys.UNLABELED]
    inputs = [SemiSupKeys.INPUT, SemiSupKeys.UNLABELED_INPUT]
    steps: list[Any] = [CopyItemsd(keys=keys, times=1, names=inputs)]
    prob = 0.0 if shadow_mode == "none" else float(shadow_prob)
    for key in inputs:  # one transform per image: each draws its own shadow (and its own geometry)
        shadow = RandShadowd(keys=key, mode="freeform" if shadow_mode == "none" else shadow_mode, prob=prob,
                             geometry=geometry)  # fmt: skip
        steps.append(shadow)
    return PairedSemiSupDataset(labeled, unlabeled, length, seed, Compose(steps))


def _adam(params: Any, lr: float, betas: tuple[float, float], weight_decay: float = 0.0) -> torch.optim.Adam:
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, betas=betas, weight_decay=weight_decay)


def build_optimizer(stage: str, network: nn.Module, learning_rate: float | None = None) -> torch.optim.Adam:
    """The generator/network optimiser of ``stage`` (sabrnet.md §6–8): pretrain ``lr 2e-4·4/5, betas (0,
    0.99^{4/5})``; finetune/supervised ``1e-4·0.8, betas (0, 0.99^{0.8})``; boundary ``1e-4``, weight decay
    ``1e-4``; mean teacher as finetune. ``learning_rate`` overrides the learning rate."""
    _check_stage(stage)
    net = unwrap_network(network)
    if stage == "pretrain":
        lr = 2e-4 * 4 / 5 if learning_rate is None else float(learning_rate)
        return _adam(net.generator.parameters(), lr, (0.0, 0.99 ** (4 / 5)))
    if stage == "boundary":
        lr = 1e-4 if learning_rate is None else float(learning_rate)
        return _adam(net.parameters(), lr, (0.9, 0.999), weight_decay=1e-4)
    lr = 1e-4 * 0.8 if learning_rate is None else float(learning_rate)
    return _adam(net.parameters(), lr, (0.0, 0.99**0.8))


def build_trainer(
    stage: str,
    device: str | torch.device,
    network: nn.Module,
    train_data_loader: Any,
    n_steps: int,
    epoch_length: int,
    max_epochs: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    learning_rate: float | None = None,
    ema: EMAModel | None = None,
    profile: str = "lite",
    image_size: int = 128,
    n_classes: int = 2,
    warmup_steps: int = 0,
    perceptual_weight: float = 10.0,
    style_weight: float = 250.0,
    consistency: float = 1.0,
    rampup_steps: int = 1000,
    freeze_generator: bool = False,
    discriminator_profile: str | None = None,
    amp: bool = False,
    train_handlers: Sequence[Any] = (),
    **kwargs: Any,
) -> Any:
    """The Ignite trainer of ``stage`` (``train#trainer`` of train.json); ``optimizer`` defaults to
    :func:`build_optimizer` (``learning_rate`` overrides the stage's spec learning rate). The trainer gets ``ema``
    (if given) attached as a handler, so evaluation uses the EMA model; the mean teacher's teacher is ``ema``
    (required). ``max_epochs`` defaults to
    ``ceil(n_steps / epoch_length)`` (the run stops exactly at ``n_steps``).

    Raises:
        ConfigError: unknown stage or profile, ``mean_teacher`` without ``ema``.
    """
    _check_stage(stage)
    if max_epochs is None:
        max_epochs = math.ceil(int(n_steps) / int(epoch_length))
    dev = torch.device(device)
    lr = None if is_unset(learning_rate) else float(learning_rate)
    opt = build_optimizer(stage, network, lr) if optimizer is None else optimizer
    common = dict(device=dev, max_epochs=int(max_epochs), epoch_length=int(epoch_length),
                  n_steps=int(n_steps), train_data_loader=train_data_loader, network=network, optimizer=opt, amp=amp,
                  train_handlers=list(train_handlers), **kwargs)  # fmt: skip
    if stage == "pretrain":
        u_opt = build_optimizer("pretrain", network, lr)
        d_opt, dis = None, None
        if profile == "full":
            d_img, d_seg = build_discriminators(discriminator_profile or "cpu", n_classes=n_classes,
                                                image_size=image_size)  # fmt: skip
            dis = nn.ModuleDict({"image": d_img, "seg": d_seg}).to(dev)
            d_opt = _adam(dis.parameters(), 2e-4 * 16 / 17, (0.0, 0.99 ** (16 / 17)))
        trainer = ShadowPretrainTrainer(u_optimizer=u_opt, d_optimizer=d_opt, discriminators=dis, profile=profile,
                                        weights={"perceptual": perceptual_weight, "style": style_weight},
                                        warmup_steps=warmup_steps, **common)  # fmt: skip
    elif stage == "mean_teacher":
        if ema is None:
            raise ConfigError("stage 'mean_teacher' needs an EMA teacher (ema)")
        trainer = MeanTeacherTrainer(teacher=ema, consistency=consistency, rampup_steps=rampup_steps, **common)
    else:
        trainer = SegmentationTrainer(boundary=stage == "boundary", freeze_generator=freeze_generator, **common)
    if ema is not None:
        ema.attach(trainer)
    return trainer


def load_stage_weights(network: nn.Module, path: str | os.PathLike | None, part: str = "generator") -> nn.Module:
    """Start a stage from a previous stage's model: load the ``generator.*`` weights (``part="generator"``, strict on
    the generator) or the whole network (``part="all"``) from ``path``; no-op when ``path`` is unset.

    Raises:
        DataError: missing/unreadable file, or weights that do not fit (the message names the file).
    """
    if is_unset(path):
        return network
    net = unwrap_network(network)
    state = read_state_dict(path, "stage checkpoint")
    if part == "all":
        target, prefix = net, ""
    elif part == "generator":
        target, prefix = net.generator, "generator."
    else:
        raise ConfigError(f"part must be 'generator' or 'all', got {part!r}")
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} if prefix else dict(state)
    if not sub:
        raise DataError(path, f"no {prefix or 'network'} weights in the checkpoint")
    try:
        target.load_state_dict(sub, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(path, f"the weights do not fit this SABR-Net configuration ({first})") from exc
    logger.info("%s: loaded the %s weights", path, part)
    return network


@torch.no_grad()
def predict_logits(network: nn.Module, images: torch.Tensor) -> Any:
    """The network's outputs for ``[B, 3, H, W]`` images in [−1, 1] with an all-ones keep-mask (sabrnet.md §3.3)."""
    net = unwrap_network(network)
    net.eval()
    return net(images, torch.ones_like(images[:, :1]))


class SemiSupValidationHandler(BestSoFarState):
    """Foreground Dice/IoU (threshold by argmax, all-ones mask) of the EMA model on the validation images every
    ``interval`` iterations; the best is written as ``<ckpt_dir>/model.pt`` (state dict of the EMA network, atomic)
    with ``best_model.json``; ``val_mean_dice`` / ``val_mean_iou`` go to ``engine.state.metrics``. Never deletes a
    file.

    Args:
        dataset: validation items (``image``, ``label``) at the network size.
        model: the module evaluated and saved (the EMA copy, or the network).
        ckpt_dir: output folder of ``model.pt``.
        interval: iterations between evaluations (0 disables).
        device: evaluation device.
        batch_size: validation batch size.
        model_name: file name of the best model.
    """

    def __init__(
        self,
        dataset: Dataset,
        model: nn.Module | EMAModel,
        ckpt_dir: str | os.PathLike,
        interval: int = 500,
        device: str | torch.device = "cpu",
        batch_size: int = 2,
        model_name: str = "model.pt",
    ) -> None:
        self.dataset = dataset
        self.model = model.module if isinstance(model, EMAModel) else model
        self.ckpt_dir, self.interval = Path(ckpt_dir), int(interval)
        self.device, self.batch_size, self.model_name = torch.device(device), max(1, int(batch_size)), model_name
        self.best = -math.inf
        self.history: list[dict[str, float]] = []

    def attach(self, engine: Engine) -> None:
        if self.interval > 0 and len(self.dataset) > 0:
            # after the engine's own handlers (the EMA update of the teacher/model it scores)
            attach_after_engine(engine, Events.ITERATION_COMPLETED(every=self.interval), self)
            attach_after_engine(engine, Events.COMPLETED, self._final)

    def _final(self, engine: Engine) -> None:
        if engine.state.iteration % self.interval != 0:
            self(engine)

    def evaluate(self) -> dict[str, float]:
        """Mean foreground Dice and IoU over the validation images."""
        dices, ious = [], []
        for start in range(0, len(self.dataset), self.batch_size):
            items = [self.dataset[i] for i in range(start, min(start + self.batch_size, len(self.dataset)))]
            x = torch.stack([torch.as_tensor(it[SemiSupKeys.IMAGE]) for it in items]).to(self.device)
            pred = predict_logits(self.model, x).seg.argmax(1).cpu()
            for p, it in zip(pred, items, strict=True):
                c = confusion_counts(p.numpy() > 0, torch.as_tensor(it[SemiSupKeys.LABEL]).reshape(p.shape).numpy() > 0)
                dices.append(dice_from_counts(c.tp, c.fp, c.fn))
                ious.append(iou_from_counts(c.tp, c.fp, c.fn))
        return {"val_mean_dice": float(np.mean(dices)), "val_mean_iou": float(np.mean(ious))}

    def __call__(self, engine: Engine) -> None:
        scores = self.evaluate()
        it = int(engine.state.iteration)
        engine.state.metrics.update(scores)
        self.history.append({"iteration": it, **scores})
        best = scores["val_mean_dice"] > self.best
        logger.info("iteration %d: val mean Dice %.4f, IoU %.4f%s", it, scores["val_mean_dice"],
                    scores["val_mean_iou"], " (best so far)" if best else "")  # fmt: skip
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        if best:
            self.best = scores["val_mean_dice"]
            with atomic_path(self.ckpt_dir / self.model_name) as tmp:
                torch.save(unwrap_network(self.model).state_dict(), tmp)
            write_json_atomic(self.ckpt_dir / "best_model.json", {"iteration": it, **scores, "history": self.history})
        write_json_atomic(self.ckpt_dir / "validation_history.json", {"history": self.history})
