# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""What the weak-supervision (CLTNet) bundle configs call: dataset resolution, the training dataset, the per-image
evaluation (cltnet.md §6–7), the validation handler that selects the model on the validation split (§8), and
:class:`WeakSegmentationEvaluationRunner`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

from labelless.data.images import load_mask, load_rgb
from labelless.engines.base import attach_after_engine
from labelless.engines.checkpoint import BestSoFarState
from labelless.errors import ConfigError, DataError
from labelless.evaluation.metrics import segmentation_scores
from labelless.evaluation.overlays import rgb_overlay
from labelless.evaluation.reports import write_image_reports
from labelless.io.checkpoint import load_network_weights
from labelless.networks.cltnet import CAMDiscriminator, CLTGenerator, CLTGeneratorEnsemble
from labelless.options import as_float, as_int
from labelless.paths import locked_output
from labelless.transforms.postprocess import SoftMaskPostprocess
from labelless.transforms.translation import TranslationInput
from labelless.utils import as_bool, atomic_path, is_unset, write_json_atomic
from labelless.weak.data import UnpairedDomainDataset
from labelless.weak.domains import WeakDomainFolders

__all__ = [
    "EVAL_SPLITS",
    "resolve_domains",
    "check_image_size",
    "check_color_constancy",
    "training_dataset",
    "FLIP_DIMS",
    "flip_average",
    "patch_input_size",
    "windowed",
    "gate_mask",
    "soft_mask",
    "inference_images",
    "export_generator",
    "load_weak_weights",
    "load_weak_ensemble",
    "weak_segmenter",
    "weight_files",
    "describe_weights",
    "load_weak_model",
    "evaluate_images",
    "WeakValidationHandler",
    "WeakSegmentationEvaluationRunner",
]

logger = logging.getLogger("labelless.weak")

EVAL_SPLITS = ("test", "val", "all")


def resolve_domains(
    dataset_dir: str | os.PathLike | None = None,
    train_a: str = "trainA",
    train_b: str = "trainB",
    test: str = "testA",
    val: str = "val",
    require_train: bool | str = True,
) -> WeakDomainFolders:
    """The weak-domain folders of ``dataset_dir``, or (not given) the embedded synthetic lesion/normal set."""
    if is_unset(dataset_dir):
        from labelless.weak.synthetic import default_weak_data

        dataset_dir = default_weak_data()
        logger.info("no dataset_dir given: using the embedded synthetic lesion/normal images in %s", dataset_dir)
    return WeakDomainFolders(dataset_dir, train_a, train_b, test, val, require_train=require_train)


def check_image_size(image_size: int, n_layers_global: int = 7, n_layers_local: int = 5) -> None:
    """Fail before training when ``image_size`` is smaller than the discriminators accept (train.json calls it
    with the other option checks; otherwise the first iteration would fail after the run started).

    Raises:
        ConfigError: naming ``image_size`` and the smallest size of the discriminators' depth.
    """
    need = max(CAMDiscriminator.min_input_size(n) for n in (n_layers_global, n_layers_local))
    if int(image_size) < need:
        raise ConfigError(
            f"image_size {image_size} is too small for the discriminators (n_layers_global={n_layers_global}, "
            f"n_layers_local={n_layers_local} need image_size >= {need}); use a larger image_size or fewer layers"
        )


def check_color_constancy(folders: WeakDomainFolders, color_constancy: float = 0.0) -> None:
    """Fail before training when the domains' ``manifest.json`` (written by ``labelless weak_domains_images``) says
    their training views were colour-corrected with another power than ``color_constancy``: the validation and every
    later reading would then show the network images unlike its training crops. Folders without a manifest (a user's
    own) are not checked.

    Raises:
        ConfigError: naming the manifest, the power it records and the option's value.
    """
    manifest = Path(folders.root) / "manifest.json"
    if not manifest.is_file():
        return
    try:
        built = float(json.loads(manifest.read_text()).get("options", {}).get("color_constancy", 0.0))
    except (ValueError, TypeError, AttributeError):
        return  # not a manifest of ours: nothing to compare
    option = as_float(color_constancy, "color_constancy", 0.0)
    if built != option:
        raise ConfigError(f"{manifest}: the training views were built with color_constancy {built:g}, but the "
                          f"option color_constancy is {option:g}; pass --color_constancy {built:g} so that the "
                          "validation, evaluation and inference read images as the crops were made")  # fmt: skip


def training_dataset(
    folders: WeakDomainFolders, image_size: int = 256, seed: int = 0, length: int | None = None, contrast: float = 0.1
) -> UnpairedDomainDataset:
    """Unpaired A/B training items of the folders' ``trainA`` / ``trainB`` images (their masks: none)."""
    n = None if is_unset(length) else int(length)
    return UnpairedDomainDataset(folders.train_a, folders.train_b, image_size=int(image_size), seed=int(seed),
                                 length=n, contrast=float(contrast))  # fmt: skip


def inference_images(images: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> Any:
    """The images of inference.json: the given folder/files, or (none given) the embedded synthetic test images."""
    if not is_unset(images):
        return images
    folders = resolve_domains(None)
    logger.info("no images given: demo on the embedded synthetic lesion images %s", Path(folders.root) / "testA")
    return [p["image"] for p in folders.test]


def export_generator(ckpt_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the A→B generator of a CLTNet checkpoint (``gen_ab.*`` of a state dict or of a training checkpoint's
    ``model``) as a plain state dict: the file inference.json loads (``models/model.pt``), written atomically.

    Raises:
        DataError: unreadable file, or no ``gen_ab`` weights in it.
    """
    from labelless.io.checkpoint import read_state_dict

    state = read_state_dict(ckpt_path, "checkpoint")
    gen = {k[len("gen_ab.") :]: v.detach().cpu() for k, v in state.items() if k.startswith("gen_ab.")}
    if not gen:
        raise DataError(ckpt_path, "no gen_ab.* weights: not a CLTNet checkpoint")
    with atomic_path(out_path) as tmp:
        torch.save(gen, tmp)
    return Path(out_path)


def _segmenter(network: torch.nn.Module) -> torch.nn.Module:
    """The A→B generator: ``network.gen_ab`` of a CLTNet, or the network itself when it is a generator (the shipped
    ``model.pt`` holds the A→B generator only)."""
    net = _plain(network)
    if hasattr(net, "gen_ab"):
        return net.gen_ab
    if isinstance(net, (CLTGenerator, CLTGeneratorEnsemble)):
        return net
    raise ConfigError(
        f"the network must be a CLTNet, a CLTGenerator or a CLTGeneratorEnsemble, got {type(net).__name__}"
    )


#: The flips of :func:`gate_mask`'s test-time averaging: none, left-right, up-down, both.
FLIP_DIMS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-1, -2))


def flip_average(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The mean of ``fn`` over the four flips of ``x`` (:data:`FLIP_DIMS`), each result flipped back: ``fn`` maps a
    ``[N, C, S, S]`` batch to ``[N, C', S, S]`` maps, and gets the four views of ``x`` as one batch of ``4 · B``."""
    views = torch.cat([torch.flip(x, d) if d else x for d in FLIP_DIMS])
    maps = fn(views).chunk(len(FLIP_DIMS))
    return torch.stack([torch.flip(m, d) if d else m for m, d in zip(maps, FLIP_DIMS)]).mean(0)


def gate_mask(
    generator: torch.nn.Module, x: torch.Tensor, flip_tta: bool = False, window: int | None = None
) -> torch.Tensor:
    """The mask gate ``M`` ``[B, 1, S, S]`` of the A→B generator on network inputs ``x`` ``[B, 3, S, S]``.

    With ``window`` smaller than ``S`` (a model trained on crops, :func:`patch_input_size`), ``M`` is read by sliding
    a ``window × window`` input over ``x`` (MONAI ``SlidingWindowInferer``, overlap 0.5, Gaussian blending).

    With ``flip_tta`` (not in the spec), the mean of ``M`` over the four flips of ``x`` (:data:`FLIP_DIMS`), each
    flipped back: a gate whose position is biased in one direction (on ISIC it sits 4–9 % of the image below and right
    of the lesion, docs/results.md) is averaged back over the lesion; an unbiased gate is smoothed. The four views go
    through the generator as one batch (its normalisations are per sample).
    """

    def mask(v: torch.Tensor) -> torch.Tensor:
        return generator(v).mask.float()

    fn = windowed(mask, window, tuple(x.shape[-2:]))
    return flip_average(fn, x) if flip_tta else fn(x)


def windowed(
    fn: Callable[[torch.Tensor], torch.Tensor], window: int | None, size: Sequence[int]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` (``[N, C, S, S]`` → ``[N, C', S, S]`` maps) applied by sliding ``window × window`` inputs over inputs of
    ``size`` (MONAI ``SlidingWindowInferer``, overlap 0.5, Gaussian blending); ``fn`` itself when ``window`` is None
    or covers ``size``."""
    if window is None or int(window) >= max(int(s) for s in size):
        return fn
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(roi_size=(int(window), int(window)), sw_batch_size=16, overlap=0.5,
                                   mode="gaussian", progress=False)  # fmt: skip

    def slide(v: torch.Tensor) -> torch.Tensor:
        return inferer(v, fn)

    return slide


def patch_input_size(image_size: int, patch_zoom: float = 1.0) -> int:
    """The side a whole image is resized to before :func:`gate_mask` slides ``image_size`` windows over it: a model
    trained on crops of side ``1 / patch_zoom`` of an image (``write_image_domains(lesion_crops=...)``) sees the
    skin at its training magnification. ``patch_zoom`` 1 (the spec): the whole image is one input."""
    zoom = as_float(patch_zoom, "patch_zoom")
    if not 1.0 <= zoom <= 16.0:
        raise ConfigError(f"patch_zoom must be in [1, 16] (1 / the crop side as a fraction of the image), got {zoom!r}")
    return int(round(int(image_size) * zoom))


@torch.no_grad()
def soft_mask(
    network: torch.nn.Module,
    image: torch.Tensor,
    image_size: int,
    device: torch.device,
    flip_tta: bool = False,
    patch_zoom: float = 1.0,
    color_constancy: float = 0.0,
) -> torch.Tensor:
    """The lesion probability map M of ``image`` (``[3, H, W]`` in [0, 1]) at its own size ``[H, W]``: the A→B
    generator's mask at ``image_size`` (averaged over flips with ``flip_tta``, :func:`gate_mask`), resized back
    bilinearly. With ``patch_zoom`` > 1 the image is resized to :func:`patch_input_size` and read with sliding
    ``image_size`` windows. ``color_constancy`` > 0 first maps the image's illuminant to grey
    (:func:`~labelless.transforms.translation.shades_of_grey` with that power; for a model trained on domains built
    with ``write_image_domains(color_constancy=...)``)."""
    x = TranslationInput(patch_input_size(image_size, patch_zoom), color_constancy)(image)[None].to(device)
    m = gate_mask(_segmenter(network), x, flip_tta, window=int(image_size))  # one window when patch_zoom is 1
    m = F.interpolate(m, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
    return m[0, 0].clamp(0.0, 1.0).cpu()


def evaluate_images(
    network: torch.nn.Module,
    pairs: Sequence[dict],
    image_size: int = 256,
    postprocess: SoftMaskPostprocess | None = None,
    device: str | torch.device = "cpu",
    n_overlays: int = 4,
    complement: bool = False,
    flip_tta: bool = False,
    patch_zoom: float = 1.0,
    soft_cache: dict[str, torch.Tensor] | None = None,
    color_constancy: float = 0.0,
    progress: bool = False,
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Per-image scores (cltnet.md §7) of the lesion images ``pairs`` (``{"name", "image", "label"}``) at each
    image's own size; images with an empty ground truth are excluded with a warning.

    With ``complement``, the result also has ``complement_mean_dice`` / ``complement_mean_ja``: the scores of the
    same post-processing with the opposite ``invert`` (a diagnostic of a gate that marks the tissue around the lesion).
    ``flip_tta`` averages M over the four flips of each image (:func:`gate_mask`); ``patch_zoom`` and
    ``color_constancy`` as in :func:`soft_mask`. ``soft_cache`` (a dict, by image path) keeps the soft masks M for
    reuse by a later call that scores the same network, ``flip_tta``, ``image_size``, ``patch_zoom`` and
    ``color_constancy`` with another post-processing; the caller owns it and must use one per such combination.
    ``progress`` logs one line per image (its DI, the time per image and the time left; an evaluation with ``crf``,
    ``patch_zoom`` and ``flip_tta`` takes tens of seconds per image on a CPU).

    Returns:
        (result with ``mean_dice``, ``mean_ja``, ``mean_ac``, ``mean_se``, ``mean_sp``, ``per_image``,
        ``n_images``, ``excluded_empty_truth``; overlays ``(name, PIL image)`` of the first ``n_overlays`` images).
    """
    post = postprocess or SoftMaskPostprocess()
    other = copy.copy(post)
    other.invert = not post.invert
    complemented: list[dict[str, float]] = []
    dev = torch.device(device)
    network.eval()
    per_image, overlays, excluded = [], [], []
    start = time.perf_counter()
    for index, p in enumerate(pairs, 1):
        if not p.get("label"):
            raise DataError(p.get("image"), "evaluation image without a mask")
        image = load_rgb(p["image"], size=None)
        truth = load_mask(p["label"], size=None)[0].numpy() > 0.5
        if truth.shape != tuple(image.shape[-2:]):
            raise DataError(p["label"], f"mask size {truth.shape} differs from the image size "
                                        f"{tuple(image.shape[-2:])} ({p['image']})")  # fmt: skip
        if not truth.any():
            excluded.append(p["name"])
            continue
        soft = None if soft_cache is None else soft_cache.get(str(p["image"]))
        if soft is None:
            soft = soft_mask(network, image, image_size, dev, flip_tta, patch_zoom, color_constancy)
            if soft_cache is not None:
                soft_cache[str(p["image"])] = soft
        _, pred = post(soft.numpy(), image * 2.0 - 1.0)
        per_image.append({"name": p["name"], **segmentation_scores(pred, truth)})
        if progress:
            each = (time.perf_counter() - start) / index
            logger.info("[%d/%d] %s: DI %.4f (%.1f s/image, about %.0f s left)", index, len(pairs), p["name"],
                        per_image[-1]["di"], each, each * (len(pairs) - index))  # fmt: skip
        if complement:
            complemented.append(segmentation_scores(other(soft.numpy(), image * 2.0 - 1.0)[1], truth))
        if len(overlays) < int(n_overlays):
            overlays.append((p["name"], rgb_overlay(image, truth=truth, prediction=pred)))
    if excluded:
        warnings.warn(f"{len(excluded)} evaluation image(s) with an empty ground truth excluded: {excluded[:5]}",
                      stacklevel=2)  # fmt: skip
    result: dict[str, Any] = {
        f"mean_{k}": (float(np.mean([r[m] for r in per_image])) if per_image else math.nan)
        for k, m in (("dice", "di"), ("ja", "ja"), ("ac", "ac"), ("se", "se"), ("sp", "sp"))
    }
    if complement:
        for k in ("dice", "ja"):
            m = "di" if k == "dice" else k
            result[f"complement_mean_{k}"] = float(np.mean([r[m] for r in complemented])) if complemented else math.nan
    result.update({"n_images": len(per_image), "excluded_empty_truth": excluded, "postprocess": post.mode,
                   "zero_black_background": post.zero_black_background, "zero_corners": post.zero_corners,
                   "crf_alpha": post.crf_alpha, "intensity_prior": post.intensity_prior, "invert_mask": post.invert,
                   "flip_tta": bool(flip_tta), "image_size": int(image_size), "patch_zoom": float(patch_zoom),
                   "color_constancy": float(color_constancy), "per_image": per_image})  # fmt: skip
    return result, overlays


def load_weak_weights(network: torch.nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
    """Load weights into a CLTNet, or into a bare A→B generator from a generator-only file (the shipped
    ``model.pt``) or from a full CLTNet checkpoint (its ``gen_ab.`` keys)."""
    net = _plain(network)
    load_network_weights(net, path, device, prefix=None if hasattr(net, "gen_ab") else "gen_ab.")


def weak_segmenter(network: torch.nn.Module, ckpt_path: Any = None) -> torch.nn.Module:
    """The module to load ``ckpt_path`` into: ``network`` itself for one weight file (or none), or, for a list of
    several files, a :class:`~labelless.networks.cltnet.CLTGeneratorEnsemble` of as many copies of ``network``'s A→B
    generator, not yet loaded (``load_network_weights`` loads file ``i`` into member ``i``; the ``network`` of
    inference.json).

    Raises:
        ConfigError: a malformed ``ckpt_path``, or the same file twice.
    """
    files = weight_files(ckpt_path)
    return network if files is None or len(files) == 1 else _unloaded_ensemble(network, files)


def _unloaded_ensemble(network: torch.nn.Module, files: Sequence[Path]) -> CLTGeneratorEnsemble:
    """A :class:`~labelless.networks.cltnet.CLTGeneratorEnsemble` of one copy of ``network``'s A→B generator per file
    of ``files`` (weights not loaded yet); the same file twice is a :class:`ConfigError`."""
    seen = [str(p.resolve()) for p in files]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"an ensemble lists the same weight file twice: {[str(p) for p in files]}")
    return CLTGeneratorEnsemble([copy.deepcopy(_segmenter(network)) for _ in files])


def load_weak_ensemble(
    network: torch.nn.Module, paths: Sequence[str | os.PathLike], device: str | torch.device = "cpu"
) -> CLTGeneratorEnsemble:
    """A :class:`~labelless.networks.cltnet.CLTGeneratorEnsemble` of copies of ``network``'s A→B generator, one per
    weight file of ``paths`` (generator-only files or full CLTNet checkpoints, as :func:`load_weak_weights`); its
    mask is the mean of the members' (not in the spec: e.g. the models of several training seeds).

    Raises:
        ConfigError: no path, or the same file twice.
        DataError: a missing or unreadable file, or weights that do not fit the network (named).
    """
    files = [Path(p) for p in paths]
    if not files:
        raise ConfigError("an ensemble needs at least one weight file")
    ens = _unloaded_ensemble(network, files)
    for member, f in zip(ens.members, files):
        load_weak_weights(member, f, device)
    return ens.to(device)


def weight_files(ckpt_path: Any) -> list[Path] | None:
    """The weight files named by a ``ckpt_path`` option: ``None`` when unset, one file for a path, several for a
    list or tuple of paths (a seed ensemble, :func:`load_weak_model`).

    Raises:
        ConfigError: an empty list, or an entry that is not a path.
    """
    if is_unset(ckpt_path):
        return None
    if isinstance(ckpt_path, (str, os.PathLike)):
        return [Path(ckpt_path)]
    if isinstance(ckpt_path, (list, tuple)):
        if not ckpt_path or not all(isinstance(p, (str, os.PathLike)) for p in ckpt_path):
            raise ConfigError(f"ckpt_path must be a weight file or a non-empty list of weight files, got {ckpt_path!r}")
        return [Path(p) for p in ckpt_path]
    raise ConfigError(f"ckpt_path must be a weight file or a list of weight files, got {type(ckpt_path).__name__}")


def describe_weights(files: Sequence[Path] | None) -> str | list[str] | None:
    """``files`` as reported in a summary: ``None``, one path, or the list of an ensemble's paths."""
    if files is None:
        return None
    return str(files[0]) if len(files) == 1 else [str(f) for f in files]


def load_weak_model(network: torch.nn.Module, ckpt_path: Any, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model to segment with: ``network`` with the weights of one file loaded into it
    (:func:`load_weak_weights`), or, for several files, the :class:`~labelless.networks.cltnet.CLTGeneratorEnsemble`
    of their A→B generators (:func:`load_weak_ensemble`; the mean of the members' masks, not in the spec; e.g. the
    models of several training seeds). Unset ``ckpt_path``: ``network`` as it is.

    Raises:
        ConfigError: a malformed ``ckpt_path`` or the same file twice in an ensemble.
        DataError: a missing or unreadable file, or weights that do not fit the network (named).
    """
    files = weight_files(ckpt_path)
    if files is None:
        return network
    if len(files) == 1:
        load_weak_weights(network, files[0], device)
        return network
    return load_weak_ensemble(network, files, device)


class WeakValidationHandler(BestSoFarState):
    """Evaluate the validation images every ``interval`` iterations during training (threshold post-processing by
    default), write overlay PNGs of M, put ``val_mean_ja`` / ``val_mean_dice`` into ``engine.state.metrics`` and keep
    the best model on the validation split only (cltnet.md §8): ``<ckpt_dir>/best_model.pt`` (state dict, atomic)
    and ``best_model.json`` (iteration, scores). Nothing is ever deleted.

    Args:
        pairs: validation lesion images with masks.
        network: the CLTNet being trained.
        ckpt_dir: where the best model is written.
        output_dir: overlays go to ``<output_dir>/val_overlays/iter_<n>/``.
        interval: iterations between evaluations (``0`` disables).
        image_size: network input side.
        n_overlays: overlays per evaluation.
        postprocess: post-processing of the masks (default: threshold 0.5 with background zeroing).
        device: device of the network.
        flip_tta: average M over the four flips of each validation image (:func:`gate_mask`).
        patch_zoom: read M with sliding windows on images zoomed by this factor (a model trained on crops,
            :func:`soft_mask`).
        color_constancy: shades-of-grey power applied to each image before the network (:func:`soft_mask`; 0: off).
    """

    def __init__(
        self,
        pairs: Sequence[dict],
        network: torch.nn.Module,
        ckpt_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        interval: int = 500,
        image_size: int = 256,
        n_overlays: int = 4,
        postprocess: SoftMaskPostprocess | None = None,
        device: str | torch.device = "cpu",
        flip_tta: bool | str = False,
        patch_zoom: float = 1.0,
        color_constancy: float = 0.0,
    ) -> None:
        self.pairs, self.network = list(pairs), network
        self.color_constancy = as_float(color_constancy, "color_constancy", 0.0)
        self.flip_tta = as_bool(flip_tta, "flip_tta")
        patch_input_size(image_size, patch_zoom)  # checks the value
        self.patch_zoom = float(patch_zoom)
        self.ckpt_dir, self.output_dir = Path(ckpt_dir), Path(output_dir)
        self.interval, self.image_size, self.n_overlays = int(interval), int(image_size), int(n_overlays)
        self.postprocess = postprocess
        self.device = device
        self.best = -math.inf
        self.history: list[dict[str, float]] = []

    def attach(self, engine: Engine) -> None:
        if self.interval > 0 and self.pairs:
            attach_after_engine(engine, Events.ITERATION_COMPLETED(every=self.interval), self)
        elif self.interval > 0:
            logger.warning("no validation images: model selection on the validation split is off")

    def __call__(self, engine: Engine) -> None:
        it = int(engine.state.iteration)
        was_training = self.network.training
        result, overlays = evaluate_images(self.network, self.pairs, self.image_size, self.postprocess, self.device,
                                           self.n_overlays, complement=True, flip_tta=self.flip_tta,
                                           patch_zoom=self.patch_zoom,
                                           color_constancy=self.color_constancy)  # fmt: skip
        if was_training:
            self.network.train()
        ja, di = result["mean_ja"], result["mean_dice"]
        cja, cdi = result["complement_mean_ja"], result["complement_mean_dice"]
        engine.state.metrics.update({"val_mean_ja": ja, "val_mean_dice": di})
        self.history.append({"iteration": it, "val_mean_ja": ja, "val_mean_dice": di, "complement_mean_ja": cja,
                             "complement_mean_dice": cdi})  # fmt: skip
        if cja > ja:  # the gate marks what surrounds the lesion: say which option would read it the other way
            logger.info("iteration %d: 1 - M scores higher on the validation images (JA %.4f, DI %.4f); "
                        "invert_mask=%s reads the mask that way", it, cja, cdi, not result["invert_mask"])  # fmt: skip
        for name, image in overlays:
            path = self.output_dir / "val_overlays" / f"iter_{it:06d}" / f"{name}.png"
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
        improved = not math.isnan(ja) and ja > self.best
        logger.info("iteration %d: val mean JA %.4f, DI %.4f%s", it, ja, di, " (best so far)" if improved else "")
        if improved:
            self.best = ja
            state = {k: v.detach().cpu() for k, v in _plain(self.network).state_dict().items()}
            with atomic_path(self.ckpt_dir / "best_model.pt") as tmp:
                torch.save(state, tmp)
            info = {"iteration": it, "val_mean_ja": ja, "val_mean_dice": di, "history": self.history}
            write_json_atomic(self.ckpt_dir / "best_model.json", info)
        # every validation, improved or not (it used to be skipped when the last one was the best)
        write_json_atomic(self.ckpt_dir / "validation_history.json", {"history": self.history})


def _plain(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if hasattr(network, "module") and not hasattr(network, "gen_ab") else network


class WeakSegmentationEvaluationRunner:
    """Per-image evaluation of a weak-supervision model (``validate#evaluator`` of evaluate.json).

    Args:
        network: the CLTNet (placed on ``device``).
        folders: the dataset (:func:`resolve_domains`).
        output_dir: report folder (metrics.json/.csv/.md, overlays/); must not lie inside the dataset.
        ckpt_path: the weights to evaluate (a plain state dict or a training checkpoint with ``model``), or a list of
            such files: their ensemble (:func:`load_weak_model`; e.g. the models of several seeds).
        eval_split: ``test`` (default), ``val`` (model selection) or ``all`` (test + val images: a separate test set).
        postprocess, zero_black_background, zero_corners, crf_alpha: :class:`SoftMaskPostprocess` options.
        invert_mask: read ``1 − M`` as the lesion (``SoftMaskPostprocess(invert=...)``).
        flip_tta: average M over the four flips of each image (:func:`gate_mask`).
        image_size: network input side.
        patch_zoom: read M with sliding ``image_size`` windows on images zoomed by this factor (a model trained on
            crops, :func:`soft_mask`); 1: the whole image is one input (the spec).
        n_overlays: overlay PNGs written.
        intensity_prior: ``none`` (the spec), ``dark`` or ``bright``: combine M with the image's grey level before
            binarising (``SoftMaskPostprocess(intensity_prior=...)``, not in the spec).
        color_constancy: shades-of-grey power applied to each image before the network (:func:`soft_mask`; 0, the
            spec: off); the value the training domains were built with.
        device: torch device.

    Raises:
        ConfigError: unknown split or post-processing, output inside the dataset, no image in the split.
        DataError: missing checkpoint or unreadable images (named).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        folders: WeakDomainFolders,
        output_dir: str | os.PathLike,
        ckpt_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        eval_split: str = "test",
        postprocess: str = "threshold",
        zero_black_background: bool | str = True,
        zero_corners: bool | str = False,
        crf_alpha: float = 1.0,
        invert_mask: bool | str = False,
        flip_tta: bool | str = False,
        image_size: int = 256,
        n_overlays: int = 8,
        device: str | torch.device = "cpu",
        patch_zoom: float = 1.0,
        intensity_prior: str = "none",
        color_constancy: float = 0.0,
    ) -> None:
        if eval_split not in EVAL_SPLITS:
            raise ConfigError(f"eval_split must be one of {EVAL_SPLITS}, got {eval_split!r}")
        self.network, self.folders = network, folders
        self.output_dir = Path(output_dir)
        root = Path(folders.root).resolve()
        if self.output_dir.resolve() == root or root in self.output_dir.resolve().parents:
            raise ConfigError(f"output_dir {self.output_dir} lies inside the dataset {root}; choose another folder")
        self.ckpt_paths = weight_files(ckpt_path)
        self.eval_split = eval_split
        self.post = SoftMaskPostprocess(postprocess, zero_black_background, zero_corners,
                                        as_float(crf_alpha, "crf_alpha", 0.0), invert_mask,
                                        intensity_prior)  # fmt: skip
        self.flip_tta = as_bool(flip_tta, "flip_tta")
        self.image_size, self.n_overlays = as_int(image_size, "image_size", 8), as_int(n_overlays, "n_overlays", 0)
        patch_input_size(self.image_size, patch_zoom)  # checks the value
        self.patch_zoom = float(patch_zoom)
        self.color_constancy = as_float(color_constancy, "color_constancy", 0.0)
        self.device = torch.device(device)
        self.pairs = {"test": folders.test, "val": folders.val, "all": folders.test + folders.val}[eval_split]
        if not self.pairs:
            raise ConfigError(f"the {eval_split!r} split of {folders.root} holds no labelled image")

    @locked_output
    def run(self) -> dict[str, Any]:
        """Evaluate, write the reports, return the summary (without ``per_image``)."""
        if self.ckpt_paths is None:
            logger.warning("no ckpt_path: evaluating the network's current (possibly random) weights")
        model = load_weak_model(self.network, self.ckpt_paths, self.device).to(self.device)
        result, overlays = evaluate_images(model, self.pairs, self.image_size, self.post, self.device,
                                           self.n_overlays, flip_tta=self.flip_tta, patch_zoom=self.patch_zoom,
                                           color_constancy=self.color_constancy, progress=True)  # fmt: skip
        result = {"split": self.eval_split, "checkpoint": describe_weights(self.ckpt_paths),
                  "dataset": str(self.folders.root), **result}  # fmt: skip
        paths = write_image_reports(result, self.output_dir, overlays, title=f"Weakly supervised segmentation, "
                                    f"{self.eval_split} split ({self.post.mode})")  # fmt: skip
        logger.info("%s split: mean DI %.4f, JA %.4f over %d images; reports in %s", self.eval_split,
                    result["mean_dice"], result["mean_ja"], result["n_images"],
                    paths["metrics_json"].parent)  # fmt: skip
        return {k: v for k, v in result.items() if k != "per_image"}
