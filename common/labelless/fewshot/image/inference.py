# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Few-shot 2D inference: segment query images from K labelled support images (the FSMS bundle's ``inference``).

:class:`FewShotImageInferenceRunner` reads the supports (RGB image + mask files) and the queries, resizes them to
``image_size`` (bilinear, antialiased; support masks thresholded at 0.5 after the resize, fsms.md §1.5), predicts
every query with all K supports as shots, resizes the probability back to the query's original size (bilinear) and
thresholds it, then writes (atomically) for each query ``<stem>_mask.png`` (0/255, original size) and
``overlays/<stem>_overlay.png`` (prediction in red on the original image), plus ``inference_summary.json``.
Reading and resizing (``preprocessing``) and resizing back and thresholding (``postprocessing``) are MONAI transforms
that a bundle config can spell out (:meth:`FewShotImageInferenceRunner.default_preprocessing`,
:meth:`~FewShotImageInferenceRunner.default_postprocessing`).

Files are read with the helpers of :mod:`labelless.data.images` (the same rules as for training and test
pools): grey images are replicated to RGB, alpha channels dropped, 8-bit data divided by 255 and 16-bit data by
65535; a mask whose maximum is ≤ 1 is taken as 0/1, otherwise ``value / 255 > 0.5`` (the reference rule for 0/255
masks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose
from monai.utils import convert_to_numpy, convert_to_tensor

from labelless.data.images import image_size as image_file_size
from labelless.data.images import list_images, load_mask, load_rgb, resize_mask
from labelless.errors import ConfigError, DataError
from labelless.evaluation.overlays import rgb_overlay
from labelless.fewshot.image.protocol import network_predictor, recentre_probabilities, support_thresholds
from labelless.io.loading import LoadFiled, loaded_meta
from labelless.io.suffixes import IMAGE_2D_SUFFIXES
from labelless.io.writers import write_image2d
from labelless.options import as_float, as_int
from labelless.paths import check_output_outside_inputs, locked_output
from labelless.transforms.postprocess import Binarized
from labelless.transforms.spatial import ResizeInPlaned
from labelless.transforms.utility import run_transform, runner_items
from labelless.utils import as_bool, atomic_path, write_json_atomic

__all__ = [
    "MIN_IMAGE_SIDE",
    "OUTPUT_SUFFIXES",
    "support_mask_at",
    "list_query_files",
    "FewShotImageInferenceRunner",
]

logger = logging.getLogger(__name__)


#: the smallest height and width of a support or query image (pixels); smaller images are refused before any work
MIN_IMAGE_SIDE = 8
#: name endings of the files this runner writes; a query folder's files named so are not taken as queries
OUTPUT_SUFFIXES = ("_mask", "_overlay")


def support_mask_at(mask: torch.Tensor, size: int, source: str | os.PathLike | None = None) -> torch.Tensor:
    """A ``[1, H, W]`` support mask at ``size × size``: bilinear resize then ``> 0.5`` (fsms.md §1.5).

    If the resized mask is empty although the input is not (a structure smaller than a pixel of the new grid),
    every pixel the resized soft mask touches (``> 0``) is kept instead, so a labelled support never becomes empty.

    Raises:
        DataError: the input mask is empty (naming ``source``).
    """
    m = mask.float()
    if not bool((m > 0.5).any()):
        raise DataError(source, "support mask is empty; every support needs a labelled foreground")
    out = resize_mask(m, size)
    if not bool(out.any()):
        soft = F.interpolate(m[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        out = (soft > 0).float()
    return out


def list_query_files(queries: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The query files: a folder's image files (``IMAGE_2D_SUFFIXES``, hidden files and this runner's outputs
    ``*_mask`` / ``*_overlay`` skipped, natural order) or a list.

    Raises:
        DataError: a missing folder/file, or no query at all.
    """
    if isinstance(queries, (str, os.PathLike)):
        q = Path(queries)
        if q.is_dir():
            files = [f for i, f in list_images(q).items() if not i.endswith(OUTPUT_SUFFIXES)]
            if not files:
                raise DataError(q, f"no query images ({', '.join(IMAGE_2D_SUFFIXES)}) in the folder")
            return files
        files = [q]
    else:
        files = [Path(p) for p in queries]
    if not files:
        raise DataError("queries", "no query images given")
    for p in files:
        if not p.is_file():
            raise DataError(p, "query image does not exist")
    return files


class FewShotImageInferenceRunner:
    """Segment query images with a few-shot network from K support (image, mask) files.

    Args:
        network: a module with the ``FSMSNet`` forward signature ``(support_images [B, K, 3, S, S], support_masks
            [B, K, 1, S, S], query_images [B, 3, S, S]) -> logits [B, 1, S, S]``; moved to ``device``.
        support_images: the K support image files.
        support_masks: their mask files, in the same order (0/1 or 0/255 PNGs; must be non-empty).
        queries: a folder of query images or a list of files.
        output_dir: where the masks, overlays and ``inference_summary.json`` are written (created).
        image_size: network input size S (224 for FSMS).
        threshold: probability threshold applied after resizing back (``p > threshold``).
        device: torch device; default CUDA when available, else CPU.
        n_overlays: overlays to write (the first queries); ``None`` = one per query, 0 = none.
        batch_size: queries per forward pass.
        input_transform: optional transform of the images before the network (e.g. ImageNet normalisation when
            the network does not apply it).
        preprocessing: callable on ``{"image": file}`` (a MONAI ``Compose`` of dict transforms) giving the network
            input ``[3, S, S]`` in ``"image"`` and the ``"image_meta_dict"`` of
            :class:`~labelless.io.loading.LoadFiled`; applied to supports and queries. Default:
            :meth:`default_preprocessing`.
        postprocessing: callable on a query item whose ``"pred"`` is the probability ``[1, S, S]``; it must leave the
            binary mask at the query's size in ``"pred"``. Default: :meth:`default_postprocessing`.
        dataloader: the preprocessed query items (e.g. a MONAI ``DataLoader`` over ``Dataset([{"image": file}, ...],
            transform=preprocessing)`` with ``collate_fn=no_collation``); every item must be one of ``queries``; they
            are predicted ``batch_size`` at a time. Default: ``preprocessing`` applied to each query in turn.
        handlers: callables called with each query's summary entry plus ``index`` and ``total`` after its files are
            written (e.g. :class:`~labelless.transforms.utility.LogItemd`); default none.
        support_threshold: fit the threshold on the supports (the one of
            :data:`~labelless.fewshot.image.protocol.SUPPORT_THRESHOLD_GRID` that segments them best: with K = 1 the
            support segments itself, with K > 1 each support is segmented from the others) and apply it instead of
            ``threshold``: the probabilities are remapped monotonically so that the fitted threshold falls on
            ``threshold`` (:func:`~labelless.fewshot.image.protocol.recentre_probabilities`), so ``postprocessing``
            is unchanged. The fitted value is logged and written to ``inference_summary.json``.

    Raises:
        DataError: no supports, different numbers of support images and masks, missing or unreadable files, an image
            smaller than :data:`MIN_IMAGE_SIDE` pixels on a side, no queries, two queries with the same file stem.
        ConfigError: invalid ``image_size``, ``threshold``, ``n_overlays`` or ``batch_size``; ``output_dir`` inside
            the folder of a query or a support.

    Examples::

        runner = FewShotImageInferenceRunner(net, ["s1.jpg"], ["s1_mask.png"], "queries/", "out", device="cuda")
        outputs = runner.run()
        outputs[0]["mask"]  # out/<stem>_mask.png
    """

    def __init__(
        self,
        network: torch.nn.Module,
        support_images: Sequence[str | os.PathLike],
        support_masks: Sequence[str | os.PathLike],
        queries: str | os.PathLike | Sequence[str | os.PathLike],
        output_dir: str | os.PathLike,
        image_size: int = 224,
        threshold: float = 0.5,
        device: str | torch.device | None = None,
        n_overlays: int | None = None,
        batch_size: int = 4,
        input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        preprocessing: Callable[[dict], dict] | None = None,
        postprocessing: Callable[[dict], dict] | None = None,
        dataloader: Iterable[Any] | None = None,
        handlers: Sequence[Callable[[dict], Any]] | None = None,
        support_threshold: bool = False,
    ) -> None:
        if isinstance(support_images, (str, os.PathLike)) or isinstance(support_masks, (str, os.PathLike)):
            raise ConfigError("support_images and support_masks must be lists of files")
        self.support_images = [Path(p) for p in support_images]
        self.support_masks = [Path(p) for p in support_masks]
        if not self.support_images:
            raise DataError("supports", "no support images given (at least one labelled image is needed)")
        if len(self.support_images) != len(self.support_masks):
            raise DataError(
                "supports", f"{len(self.support_images)} support images but {len(self.support_masks)} support masks"
            )
        for p in self.support_images + self.support_masks:
            if not p.is_file():
                raise DataError(p, "support file does not exist")
        self.queries = list_query_files(queries)
        stems: dict[str, Path] = {}
        for q in self.queries:
            if q.stem in stems:
                raise DataError(q, f"has the same stem as {stems[q.stem]}; the output masks would overwrite each other")
            stems[q.stem] = q
        self.image_size = as_int(image_size, "image_size", 8)
        self.threshold = as_float(threshold, "threshold", 0.0, 1.0, lo_open=True, hi_open=True)
        self.support_threshold = as_bool(support_threshold, "support_threshold")
        self.n_overlays = len(self.queries) if n_overlays is None else as_int(n_overlays, "n_overlays", 0)
        self.batch_size = as_int(batch_size, "batch_size", 1)
        inputs = self.queries + self.support_images + self.support_masks
        self.output_dir = check_output_outside_inputs(output_dir, inputs)
        for f in self.support_images + self.queries:  # headers only: a 1-px image fails here, not after the supports
            h, w = image_file_size(f)
            if min(h, w) < MIN_IMAGE_SIDE:
                raise DataError(f, f"image of {h}x{w} px is too small; images need at least {MIN_IMAGE_SIDE} px a side")
        self.device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.network = network.to(self.device)
        self.predict = network_predictor(self.network, self.device, input_transform)
        self.preprocessing = preprocessing or self.default_preprocessing(self.image_size)
        self.postprocessing = postprocessing or self.default_postprocessing(self.threshold)
        self.dataloader = dataloader
        self.handlers = [] if handlers is None else ([handlers] if callable(handlers) else list(handlers))
        for h in self.handlers:
            if not callable(h):
                raise ConfigError(f"handlers must be callables on a query's record, got {type(h).__name__}")

    @staticmethod
    def default_preprocessing(image_size: int = 224) -> Compose:
        """The built-in ``preprocessing``: read as RGB in [0, 1] (:func:`~labelless.data.images.load_rgb`), bilinear
        (antialiased when shrinking) to ``image_size``, clipped to [0, 1]."""
        return Compose([
            LoadFiled("image", reader=load_rgb, size=None),
            ResizeInPlaned("image", spatial_size=image_size, antialias=True, clip=(0.0, 1.0)),
        ])  # fmt: skip

    @staticmethod
    def default_postprocessing(threshold: float = 0.5) -> Compose:
        """The built-in ``postprocessing``: the probability bilinear to the query's size, then ``p > threshold``."""
        return Compose([ResizeInPlaned("pred", size_of="image"), Binarized("pred", threshold=threshold)])

    def load_supports(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The supports at ``image_size``: images ``[K, 3, S, S]`` (through ``preprocessing``) and binary masks
        ``[K, 1, S, S]``.

        Raises:
            DataError: unreadable files, image/mask size mismatch, an empty mask (naming the mask file).
        """
        imgs, msks = [], []
        for ip, mp in zip(self.support_images, self.support_masks):
            item, msk = run_transform(self.preprocessing, {"image": ip}), load_mask(mp, size=None)
            shape = tuple(loaded_meta(item, "image")["spatial_shape"])
            if shape != tuple(msk.shape[1:]):
                raise DataError(mp, f"mask size {tuple(msk.shape[1:])} differs from image {ip} {shape}")
            imgs.append(convert_to_tensor(item["image"], track_meta=False))
            msks.append(support_mask_at(msk, self.image_size, mp))
        return torch.stack(imgs), torch.stack(msks)

    def _items(self) -> Iterator[dict[Hashable, Any]]:
        """The preprocessed query items: from ``dataloader``, or ``preprocessing`` applied to each query."""
        return runner_items(self.queries, self.preprocessing, self.dataloader, "queries")

    def _batches(self) -> Iterator[list[dict[Hashable, Any]]]:
        batch: list[dict[Hashable, Any]] = []
        for item in self._items():
            batch.append(item)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    @locked_output
    def run(self) -> list[dict[str, Any]]:
        """Predict every query and write the outputs.

        Returns:
            one dict per query: ``{"query", "mask", "overlay" (or None), "height", "width",
            "foreground_fraction"}`` (paths as strings); also written to ``inference_summary.json``.

        Raises:
            DataError: unreadable support or query files, empty support masks, bad network output.
        """
        s_img, s_msk = self.load_supports()
        k = s_img.shape[0]
        size = (self.image_size, self.image_size)
        fitted = None
        if self.support_threshold:
            fitted = round(float(support_thresholds(self.predict, s_img[None], s_msk[None])[0]), 6)
            logger.info("support_threshold: %.2f fitted on the %d support(s) (applied instead of %.2f)", fitted, k,
                        self.threshold)  # fmt: skip
        self.output_dir.mkdir(parents=True, exist_ok=True)
        outputs: list[dict[str, Any]] = []
        for items in self._batches():
            metas = [loaded_meta(it, "image") for it in items]
            paths = [Path(m["filename_or_obj"]) for m in metas]
            q = torch.stack([convert_to_tensor(it["image"], track_meta=False) for it in items])
            b = q.shape[0]
            probs = self.predict(s_img[None].expand(b, k, *s_img.shape[1:]), s_msk[None].expand(b, k, 1, *size), q)
            probs = torch.as_tensor(probs, dtype=torch.float32)
            if tuple(probs.shape) != (b, 1, *size) or not bool(torch.isfinite(probs).all()):
                raise DataError(
                    "network", f"returned shape {tuple(probs.shape)} or non-finite values; expected {(b, 1, *size)}"
                )
            if fitted is not None:
                probs = recentre_probabilities(probs, torch.full((b,), fitted), at=self.threshold)
            for j, (p, meta, item) in enumerate(zip(paths, metas, items)):
                orig = meta["original"]
                h, w = orig.shape[1:]
                item["pred"] = probs[j]
                pred = np.asarray(convert_to_numpy(run_transform(self.postprocessing, item)["pred"])).astype(bool)
                if pred.size != h * w or pred.shape[-2:] != (h, w):
                    raise DataError(p, f"postprocessing gave a mask of shape {pred.shape}; expected {(h, w)}")
                pred = pred.reshape(h, w)
                mask_path = write_image2d(pred.astype(np.uint8) * 255, self.output_dir / f"{p.stem}_mask.png")
                overlay_path = None
                if len(outputs) < self.n_overlays:
                    overlay_path = self.output_dir / "overlays" / f"{p.stem}_overlay.png"
                    with atomic_path(overlay_path) as tmp:
                        rgb_overlay(orig, prediction=pred).save(tmp, format="PNG")
                outputs.append({"query": str(p), "mask": str(mask_path),
                                "overlay": None if overlay_path is None else str(overlay_path), "height": int(h),
                                "width": int(w), "foreground_fraction": float(pred.mean())})  # fmt: skip
                for handler in self.handlers:
                    handler({**outputs[-1], "index": len(outputs), "total": len(self.queries)})
        write_json_atomic(self.output_dir / "inference_summary.json", {
            "n_shots": int(k), "support_images": [str(p) for p in self.support_images],
            "support_masks": [str(p) for p in self.support_masks], "image_size": self.image_size,
            "threshold": self.threshold, "support_threshold": fitted, "outputs": outputs,
        })  # fmt: skip
        return outputs
