# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The ``labelless`` command line (built on fire).

Run ``labelless --help`` for the command list and ``labelless <command> --help`` for every option of a command.
Options are given as ``--name value``; lists as ``--folds "[0,1]"``; booleans as ``--overwrite`` / ``--nooverwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labelless.errors import ConfigError
from labelless.options import as_float, as_int, as_int_list, check_folder
from labelless.utils import as_bool

__all__ = ["LabellessCLI", "PrepareCommands", "main"]

logger = logging.getLogger("labelless")


def _as_list(value: Any) -> list | None:
    """Fire gives lists as lists, tuples or comma-separated strings; normalise to a list (None stays None)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [v.strip() for v in value.strip("[]()").split(",") if v.strip()]
    return [value]


def _as_floats(value: Any, name: str, n: int | None = None) -> tuple[float, ...]:
    """Numbers of a list option (``--spacing "[1.25,1.25,7.7]"``), checked; ``n`` is the required count."""
    items = _as_list(value)
    if not isinstance(items, list) or not items or (n is not None and len(items) != n):
        count = f"{n} numbers" if n is not None else "a list of numbers"
        raise ConfigError(f'{name} must be {count}, e.g. "[1.25,1.25,7.7]", got {value!r}')
    return tuple(as_float(v, name, parse=True) for v in items)


def _dataset_preset(dataset_preset: str | None, preset: str | None, default: str = "chaos") -> str:
    """The dataset preset of a command: ``--dataset_preset`` (the bundles' name of the option), or the deprecated
    ``--preset`` (kept working, with a warning)."""
    if preset is None:
        return default if dataset_preset is None else str(dataset_preset)
    msg = "--preset is deprecated: use --dataset_preset (the option name of the bundles)"
    warnings.warn(msg, FutureWarning, stacklevel=3)
    logger.warning(msg)
    if dataset_preset is not None and str(dataset_preset) != str(preset):
        raise ConfigError(f"--preset {preset!r} (deprecated) and --dataset_preset {dataset_preset!r} disagree; give "
                          "only --dataset_preset")  # fmt: skip
    return str(preset)


def _choice_option(value: Any, name: str, choices: Sequence[str]) -> str | None:
    """A choice option checked before the slow imports (``None`` keeps the default)."""
    if value is None:
        return None
    if str(value).strip().lower() not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
    return str(value).strip().lower()


def _print_summary(metrics_json: Path) -> None:
    data = json.loads(Path(metrics_json).read_text())
    blocks = [("protocol" if data.get("mode") == "protocol" else data.get("mode", "?"), data)]
    if isinstance(data.get("gt_free"), dict):
        blocks.append(("gt_free", data["gt_free"]))
    for name, block in blocks:
        per_class = block.get("per_class", {})
        parts = ", ".join(f"{k} {100 * v['dice']:.1f}" for k, v in per_class.items() if v.get("dice") is not None)
        mean = block.get("mean_dice")
        mean_s = "n/a" if mean is None else f"{100 * mean:.1f}"
        print(f"[{name}] Dice (%): {parts} | mean {mean_s}  ({block.get('label', '')})")


class PrepareCommands:
    """Turn public raw dataset layouts into the prepared layout (image_<id>.nii.gz, label_<id>.nii.gz, classmap_1.json).

    The raw folder is never modified; the output folder must not lie inside it.
    """

    def chaos(
        self,
        raw_dir: str,
        out_dir: str,
        spacing: Sequence[float] = (1.25, 1.25, 7.7),
        size: int = 256,
        clip_percentile: float = 99.5,
        flip_rows: bool = True,
        overwrite: bool = False,
    ) -> str:
        """Prepare CHAOS T2-SPIR (<raw_dir>/<id>/T2SPIR/DICOM_anon/*.dcm + Ground/*.png).

        Args:
            raw_dir: the CHAOS "Train_Sets/MR" folder (one sub-folder per case id).
            out_dir: destination of the prepared layout.
            spacing: target voxel size (x, y, z) in mm.
            size: in-plane size after the centre crop/pad.
            clip_percentile: intensities above this percentile of the volume are clipped.
            flip_rows: flip the row axis so the result has the orientation of the reference pipeline.
            overwrite: replace an existing prepared layout in out_dir.
        """
        from labelless.prepare import prepare_chaos

        res = prepare_chaos(
            raw_dir,
            out_dir,
            spacing=_as_floats(spacing, "--spacing", 3),
            size=as_int(size, "--size", 8, parse=True),
            clip_percentile=as_float(clip_percentile, "--clip_percentile", 0, 100, lo_open=True, parse=True),
            flip_rows=as_bool(flip_rows, "flip_rows"),
            overwrite=as_bool(overwrite, "overwrite"),
        )
        return f"prepared {res['n_cases']} CHAOS cases into {res['out_dir']}"

    def synapse(
        self,
        raw_dir: str,
        out_dir: str,
        window: Sequence[float] = (-125, 275),
        border: int = 32,
        size: int = 256,
        overwrite: bool = False,
    ) -> str:
        """Prepare Synapse / BTCV abdominal CT (<raw_dir>/img/img<NNNN>.nii.gz + label/label<NNNN>.nii.gz).

        Args:
            raw_dir: folder holding img/ and label/.
            out_dir: destination of the prepared layout (pids 0..N-1 in sorted file-name order).
            window: HU window clipped and scaled to [0, 255].
            border: pixels cropped from every in-plane border before resampling.
            size: in-plane output size.
            overwrite: replace an existing prepared layout in out_dir.
        """
        from labelless.prepare import prepare_synapse

        res = prepare_synapse(
            raw_dir, out_dir, window=_as_floats(window, "--window", 2),
            border=as_int(border, "--border", 0, parse=True), size=as_int(size, "--size", 8, parse=True),
            overwrite=as_bool(overwrite, "overwrite"),
        )  # fmt: skip
        return f"prepared {res['n_cases']} Synapse cases into {res['out_dir']}"

    def cmr(
        self,
        raw_dir: str,
        out_dir: str,
        spacing: Sequence[float] = (1.25, 1.25, 7.99),
        size: int = 256,
        clip_percentile: float = 99.5,
        overwrite: bool = False,
    ) -> str:
        """Prepare MS-CMRSeg bSSFP (patient<N>_C0.nii.gz + patient<N>_C0_manual.nii.gz).

        Labels keep the raw values 200/500/600; the "cmr" preset maps them to LV-MYO/LV-BP/RV at load time.

        Args:
            raw_dir: folder with the patient files.
            out_dir: destination of the prepared layout.
            spacing: target voxel size (x, y, z) in mm.
            size: in-plane size after the centre crop.
            clip_percentile: intensities above this percentile of the volume are clipped.
            overwrite: replace an existing prepared layout in out_dir.
        """
        from labelless.prepare import prepare_cmr

        res = prepare_cmr(
            raw_dir, out_dir, spacing=_as_floats(spacing, "--spacing", 3), size=as_int(size, "--size", 8, parse=True),
            clip_percentile=as_float(clip_percentile, "--clip_percentile", 0, 100, lo_open=True, parse=True),
            overwrite=as_bool(overwrite, "overwrite"),
        )  # fmt: skip
        return f"prepared {res['n_cases']} MS-CMRSeg cases into {res['out_dir']}"


class LabellessCLI:
    """labelless: few-shot, weakly and semi-supervised medical image segmentation on MONAI.

    Commands: phantoms, prepare {chaos,synapse,cmr}, superpixels, episodes, evaluate, demo, fsms_classes,
    fsms_synthetic, weak_domains, weak_domains_images, weak_domains_csv, verify_metadata, bundle pack.
    Set LABELLESS_VERBOSE=1 for debug logging.
    """

    def __init__(self) -> None:
        level = logging.DEBUG if os.environ.get("LABELLESS_VERBOSE") else logging.INFO
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        self.prepare = PrepareCommands()
        from labelless.bundle_tools import BundleCommands

        self.bundle = BundleCommands()

    def phantoms(
        self,
        out_dir: str,
        kind: str = "abdomen",
        n_volumes: int = 8,
        seed: int = 0,
        shape: Sequence[int] | None = None,
        modality: str = "mr",
    ) -> str:
        """Write synthetic phantom volumes in the prepared layout (the embedded default data).

        Args:
            out_dir: destination folder.
            kind: "abdomen" (liver, kidneys, spleen; CHAOS label ids) or "cardiac" (MS-CMRSeg values 200/500/600).
            n_volumes: number of volumes (pids 1..n).
            seed: base seed; the same seed gives the same files.
            shape: (H, W, Z) of every volume, e.g. "[256,256,32]" (kind default when omitted).
            modality: "mr" (CHAOS-like raw intensities) or "ct" (windowed [0, 255]); abdomen only.
        """
        from labelless.data.phantoms import write_phantom_dataset

        out = write_phantom_dataset(
            out_dir, kind=kind, n_volumes=as_int(n_volumes, "--n_volumes", 1, parse=True),
            seed=as_int(seed, "--seed", 0, parse=True),
            shape=None if shape is None else as_int_list(shape, "--shape", 1, parse=True), modality=modality,
        )  # fmt: skip
        return f"wrote {n_volumes} {kind} phantoms to {out}"

    def superpixels(
        self,
        dataset_dir: str,
        out_dir: str | None = None,
        dataset_preset: str | None = None,
        method: str = "felzenszwalb",
        workers: int | None = None,
        overwrite: bool = False,
        preset: str | None = None,
    ) -> str:
        """Precompute superpixel pseudo-labels and body masks of a prepared dataset (cached, all cores, progress).

        Felzenszwalb per axial slice with the reference parameters (scale 1, sigma 1, min_size 400) on the
        preprocessed (not z-scored) intensities, masked by the body mask and relabelled to contiguous ids 1..R.
        Writes superpix_<id>.nii.gz and bodymask_<id>.nii.gz; the dataset folder itself is never written.

        Args:
            dataset_dir: prepared layout (image_<id>.nii.gz ...).
            out_dir: where the maps go (default: a cache folder, printed at the end).
            dataset_preset: dataset preset giving the body-mask threshold: chaos (default), synapse, cmr,
                phantom_abdomen, ...
            method: "felzenszwalb" (reference), "slic" (per slice) or "slic3d" (supervoxels).
            workers: worker processes (default: all cores).
            overwrite: recompute maps that already exist.
            preset: deprecated spelling of --dataset_preset.
        """
        preset = _dataset_preset(dataset_preset, preset)
        from labelless.fewshot.volume.superpixels import precompute_superpixels

        out = precompute_superpixels(
            dataset_dir, out_dir=out_dir, preset=preset, method=method,
            workers=None if workers is None else as_int(workers, "--workers", 0, parse=True),
            overwrite=as_bool(overwrite, "overwrite"),
        )  # fmt: skip
        return f"superpixels in {out}"

    def episodes(
        self,
        dataset_dir: str,
        output_dir: str,
        derived_dir: str | None = None,
        dataset_preset: str | None = None,
        n: int = 4,
        fold: int = 0,
        setting: int = 1,
        label_set: int = 0,
        seed: int = 1234,
        preset: str | None = None,
    ) -> str:
        """Draw self-supervised training episodes and save them as PNGs (to check pseudo-labels and augmentation).

        Args:
            dataset_dir: prepared layout.
            output_dir: destination of episode_<i>.png.
            derived_dir: folder of precomputed superpixels (run `labelless superpixels` first).
            dataset_preset: dataset preset (default chaos).
            n: number of episodes.
            fold: fold whose training scans are used.
            setting: 1 or 2 (Setting 2 removes slices of the label set's test classes).
            label_set: Setting-2 label set.
            seed: random seed.
            preset: deprecated spelling of --dataset_preset.
        """
        preset = _dataset_preset(dataset_preset, preset)
        from labelless.data.layouts import PreparedVolumeDataset
        from labelless.evaluation.overlays import write_episode_png
        from labelless.fewshot.volume.episodes import SelfSupervisedEpisodeDataset
        from labelless.fewshot.volume.folds import fold_split
        from labelless.paths import check_output_outside_inputs
        from labelless.transforms.augment import RandFewShotAugmentd

        n_episodes, seed = as_int(n, "--n", 1, parse=True), as_int(seed, "--seed", 0, parse=True)
        fold, setting = as_int(fold, "--fold", 0, parse=True), as_int(setting, "--setting", 1, 2, parse=True)
        label_set = as_int(label_set, "--label_set", 0, parse=True)
        ds = PreparedVolumeDataset(dataset_dir, preset, derived_dir=derived_dir)
        out = check_output_outside_inputs(output_dir, [ds.image_path(p) for p in ds.pids])
        split = fold_split(ds.pids, fold, ds.preset.n_folds)
        eps = SelfSupervisedEpisodeDataset.from_dataset(
            ds, split.train, setting=setting, label_set=label_set, n_episodes=n_episodes,
            transform=RandFewShotAugmentd(keys=("image", "label")), seed=seed,
        )  # fmt: skip
        paths = [write_episode_png(eps[i], out / f"episode_{i}.png") for i in range(n_episodes)]
        return f"wrote {len(paths)} episode figures to {output_dir}"

    def evaluate(
        self,
        dataset_dir: str,
        output_dir: str,
        dataset_preset: str | None = None,
        predictions_dir: str | None = None,
        predictor: str = "baseline",
        folds: Sequence[int] = (0,),
        classes: Sequence[str] | None = None,
        modes: Sequence[str] = ("protocol", "gt_free"),
        label_map: dict | None = None,
        n_shots: int = 1,
        n_overlays: int = 3,
        save_predictions: bool = False,
        predict_outside_extent: bool | None = None,
        extent_margin: int | None = None,
        extent_reference: str | None = None,
        foreground_threshold: str | None = None,
        presence: str | None = None,
        presence_rule: str | None = None,
        cleanup: str | None = None,
        cleanup_fraction: float | None = None,
        preset: str | None = None,
    ) -> str:
        """Run the few-shot evaluation protocol and write metrics.json, metrics.csv, metrics.md and overlays.

        Two sources of predictions:
          * --predictions_dir: score saved binary predictions pred_<id>_<CLASS>.nii.gz (query geometry) of the
            fold's test scans;
          * --predictor baseline: the training-free ALP baseline on intensity features (no weights needed). Trained
            models are evaluated through their bundle's evaluate.json.

        Args:
            dataset_dir: labelled prepared layout.
            output_dir: where the reports go.
            dataset_preset: dataset preset (chaos (default), synapse, cmr, phantom_abdomen, phantom_cardiac).
            predictions_dir: folder of saved predictions to score (instead of running a predictor).
            predictor: "baseline" (only choice here; bundles bring the trained models).
            folds: folds to evaluate, e.g. "[0]" or "[0,1,2,3,4]".
            classes: test classes by name or id (default: the preset's Setting-1 test classes).
            modes: "protocol" (published protocol, GT z-range and chunks) and/or "gt_free".
            label_map: raw label value -> class id, e.g. "{200: 1, 500: 2, 600: 3}" (default: the preset's).
            n_shots: support slices per chunk.
            n_overlays: overlay PNGs per class.
            save_predictions: also save every predicted mask as NIfTI in the query's geometry
                (``<output_dir>/predictions/<mode>/``); "false" or "true".
            predict_outside_extent: gt_free mode: "false" zeroes the prediction outside the class extent estimated
                from the support (fewshot_protocol §6.5).
            extent_margin: gt_free mode: margin in slices of the estimated extent.
            extent_reference: gt_free mode: "body" or "volume" (the z-range the support's class extent is mapped
                through; labelless.fewshot.volume.gtfree).
            foreground_threshold: gt_free mode: "support" (FG logit margin calibrated on the support) or "argmax".
            presence: gt_free mode: per-slice presence score "area", "soft_area", "max_prob" or "none".
            presence_rule: gt_free mode: calibration of the presence threshold on the support ("dice", "youden").
            cleanup: gt_free mode: 3D connected components "largest", "fraction" or "none".
            cleanup_fraction: gt_free mode: components kept by "fraction" (share of the largest).
            preset: deprecated spelling of --dataset_preset.
        """
        # every option is checked before any work (and before the slow imports), the output folder before the
        # computation, not after it
        fold_list = as_int_list(folds, "--folds", 0, parse=True)
        shots = as_int(n_shots, "--n_shots", 1, parse=True)
        overlays = as_int(n_overlays, "--n_overlays", 0, parse=True)
        save = as_bool(save_predictions, "save_predictions")
        preset = _dataset_preset(dataset_preset, preset)
        gt_free = {
            "predict_outside_extent": None if predict_outside_extent is None else as_bool(predict_outside_extent,
                                                                                           "predict_outside_extent"),
            "extent_margin": None if extent_margin is None else as_int(extent_margin, "--extent_margin", 0, parse=True),
            "extent_reference": _choice_option(extent_reference, "--extent_reference", ("volume", "body")),
            "foreground_threshold": _choice_option(foreground_threshold, "--foreground_threshold",
                                                   ("argmax", "support")),
            "presence": _choice_option(presence, "--presence", ("none", "area", "soft_area", "max_prob")),
            "presence_rule": _choice_option(presence_rule, "--presence_rule", ("dice", "youden")),
            "cleanup": _choice_option(cleanup, "--cleanup", ("none", "largest", "fraction")),
            "cleanup_fraction": None if cleanup_fraction is None else as_float(cleanup_fraction, "--cleanup_fraction",
                                                                               0, 1, parse=True),
        }  # fmt: skip
        mode_list = [str(m) for m in _as_list(modes) or []]
        if not mode_list or any(m not in ("protocol", "gt_free") for m in mode_list):  # protocol.MODES
            raise ConfigError(f"--modes must be one or more of ['protocol', 'gt_free'], got {modes!r}")
        if label_map is not None and not isinstance(label_map, dict):
            raise ConfigError(f'--label_map must be a mapping raw value -> class id, e.g. "{{200: 1, 500: 2}}", got '
                              f"{label_map!r}")  # fmt: skip
        if predictions_dir is None and predictor != "baseline":
            raise ConfigError(f"unknown predictor {predictor!r}; use 'baseline' or --predictions_dir")
        if predictions_dir is not None and (len(fold_list) != 1 or len(mode_list) != 1):
            raise ConfigError("scoring saved predictions takes one fold and one mode (--folds [k] --modes [m])")
        check_folder(output_dir, "output_dir", writable=True)
        from labelless.data.layouts import PreparedVolumeDataset
        from labelless.evaluation.reports import write_reports
        from labelless.fewshot.volume.baseline import IntensityPrototypePredictor
        from labelless.fewshot.volume.gtfree import GTFreeOptions
        from labelless.fewshot.volume.protocol import evaluate, score_predictions
        from labelless.fewshot.volume.workflow import fold_norm_stats
        from labelless.paths import OutputLock, check_output_outside_inputs

        ds = PreparedVolumeDataset(dataset_dir, preset, label_map=label_map)
        fold_list = as_int_list(fold_list, "--folds", 0, ds.preset.n_folds - 1)
        class_ids = None if classes is None else [ds.label_map.id_of(c) for c in _as_list(classes)]
        inputs = [ds.image_path(p) for p in ds.pids]
        if predictions_dir is not None:  # one (unread) name in the folder: the check compares the files' folders
            inputs.append(Path(predictions_dir) / "_")
        out = check_output_outside_inputs(output_dir, inputs)
        with OutputLock(out, "output_dir"):  # creates the folder: a file or read-only path fails here, not at the end
            if predictions_dir is not None:
                result = score_predictions(ds, predictions_dir, fold=fold_list[0], classes=class_ids, mode=mode_list[0])
            else:
                base = IntensityPrototypePredictor()
                result = evaluate(
                    ds, lambda f: base, folds=fold_list, classes=class_ids, modes=mode_list, n_shots=shots,
                    norm_stats_for_fold=lambda f: fold_norm_stats(ds, f), n_overlays=overlays, output_dir=out,
                    save_predictions=save, gt_free_options=GTFreeOptions.from_options(gt_free),
                )  # fmt: skip
            paths = write_reports(result, out)
        _print_summary(paths["metrics_json"])
        return f"reports in {output_dir}"

    def demo(self, output_dir: str = "labelless_demo", kind: str = "abdomen", seed: int = 0) -> str:
        """Run the few-shot machinery end to end on the embedded phantom data (no download, no weights).

        Steps: write (or reuse) the phantom set, precompute superpixels and body masks, draw self-supervised
        episodes (PNG), evaluate the training-free baseline with the published protocol and the GT-free mode on
        fold 0 (metrics.json, metrics.md, overlays).

        Args:
            output_dir: destination of everything the demo writes.
            kind: "abdomen" or "cardiac" phantoms.
            seed: seed of the episodes.
        """
        from labelless.data.phantoms import default_dataset_dir
        from labelless.paths import claim_output_folder

        out = claim_output_folder(output_dir, ".labelless_demo", "demo output_dir")
        preset = "phantom_abdomen" if kind == "abdomen" else "phantom_cardiac"
        data = default_dataset_dir(kind)
        print(f"phantom data: {data}")
        derived = out / "derived"
        print(self.superpixels(str(data), out_dir=str(derived), dataset_preset=preset))
        print(self.episodes(str(data), str(out / "episodes"), derived_dir=str(derived), dataset_preset=preset,
                            seed=seed))  # fmt: skip
        return self.evaluate(str(data), str(out / "evaluation"), dataset_preset=preset, folds=(0,))

    def fsms_classes(
        self,
        data_root: str,
        out_dir: str,
        sources: Any = ("chaos", "brats", "hc18", "ddti"),
        max_instances: int = 10,
        min_fraction: float = 0.01,
        size: int = 224,
        seed: int = 0,
    ) -> str:
        """Export labelled non-skin 2D structures of the shared data as FSS-1000-style classes (FSMS meta-training).

        One class per (dataset, structure): CHAOS liver / kidneys / spleen, BraTS whole tumour, HC18 fetal head, DDTI
        thyroid nodule; ``<out_dir>/<class>/<n>.jpg`` + ``<n>.png``; slices whose structure covers at least
        ``min_fraction`` of the image; min-max scaled, replicated to RGB, ``size``×``size``.

        Args:
            data_root: the shared data folder (with chaos_t2spir/, brats2015/, hc18/, ddti/).
            out_dir: output folder of the classes.
            sources: subset of chaos, brats, hc18, ddti.
            max_instances: instances per class (a seeded choice when more qualify).
            min_fraction: minimum structure area fraction.
            size: image size.
            seed: seed of the choice.
        """
        from labelless.fewshot.image.export import export_classes

        summary = export_classes(
            data_root, out_dir, sources=tuple(_as_list(sources) or ()),
            max_instances=as_int(max_instances, "--max_instances", 1, parse=True),
            min_fraction=as_float(min_fraction, "--min_fraction", 0, 1, parse=True),
            size=as_int(size, "--size", 8, parse=True), seed=as_int(seed, "--seed", 0, parse=True),
        )  # fmt: skip
        return "\n".join(f"{k}: {v} instances" for k, v in summary.items()) + f"\nwritten to {out_dir}"

    def fsms_synthetic(
        self,
        out_dir: str,
        n_classes: int = 200,
        n_instances: int = 10,
        n_skin: int = 40,
        size: int = 224,
        seed: int = 0,
    ) -> str:
        """Write the synthetic FSMS data: shape/texture classes (FSS-1000 layout, meta-training) and skin phantoms.

        Args:
            out_dir: output folder (``classes/`` and ``skin/`` are created in it).
            n_classes: number of shape classes.
            n_instances: instances per class.
            n_skin: number of skin phantom images (``skin/images`` + ``skin/masks``).
            size: image size.
            seed: seed (the same seed writes the same files).
        """
        from labelless.fewshot.image.synthetic import write_shape_classes, write_skin_phantoms

        out = Path(out_dir)
        n_classes, n_instances = as_int(n_classes, "--n_classes", 1, parse=True), as_int(n_instances, "--n_instances",
                                                                                          1, parse=True)  # fmt: skip
        n_skin, size = as_int(n_skin, "--n_skin", 1, parse=True), as_int(size, "--size", 1, parse=True)
        seed = as_int(seed, "--seed", 0, parse=True)
        classes = write_shape_classes(out / "classes", n_classes=n_classes, n_instances=n_instances, size=size,
                                      seed=seed)  # fmt: skip
        skin = write_skin_phantoms(out / "skin", n_images=n_skin, size=size, seed=seed)
        return f"shape classes: {classes}\nskin phantoms: {skin}"

    def weak_domains(
        self,
        volumes_dir: str,
        out_dir: str,
        n_test: int = 1,
        n_val: int = 0,
        seed: int = 0,
        min_body_fraction: float = 0.3,
        min_lesion_px: int = 100,
        size: int = 256,
        orientation: str = "reference",
    ) -> str:
        """Build lesion (A) / normal (B) slice folders from labelled volumes, for weakly supervised training.

        The volumes' labels decide the image-level domain of each axial slice; masks are written for the held-out
        cases only (evaluation). Layouts read: BraTS case folders (*Flair*.nii.gz, *brainmask*, *OTMultiClass*) or a
        prepared layout (image_<id>.nii.gz + label_<id>.nii.gz, > 0 = lesion).

        Args:
            volumes_dir: folder of labelled volumes (never written).
            out_dir: new output folder (trainA/, trainB/, testA/images + labels, testB/, manifest.json).
            n_test: cases held out for testing (split by case, seeded).
            n_val: cases held out for validation (val/images + labels, valB/).
            seed: seed of the case split.
            min_body_fraction: keep slices whose brain/body area is at least this fraction of the largest one.
            min_lesion_px: a slice is "lesion" (A) from this many lesion pixels; B slices have none.
            size: output image side (square RGB PNGs).
            orientation: "reference" (the CLTNet sample folders' orientation) or "display".
        """
        from labelless.weak.domains import write_volume_domains

        m = write_volume_domains(volumes_dir, out_dir, n_test=as_int(n_test, "--n_test", 0, parse=True),
                                 n_val=as_int(n_val, "--n_val", 0, parse=True), seed=as_int(seed, "--seed", parse=True),
                                 min_body_fraction=as_float(min_body_fraction, "--min_body_fraction", parse=True),
                                 min_lesion_px=as_int(min_lesion_px, "--min_lesion_px", parse=True),
                                 size=as_int(size, "--size", parse=True), orientation=str(orientation))  # fmt: skip
        counts = ", ".join(f"{k} {v}" for k, v in sorted(m["counts"].items()))
        return f"{counts}; split {m['split']}; written to {out_dir}"

    def weak_domains_images(
        self,
        images_dir: str,
        out_dir: str,
        masks_dir: str | None = None,
        test_fraction: float = 0.4,
        side_fraction: float = 0.3,
        min_mean: float = 0.2,
        max_std: float = 0.05,
        size: int = 256,
        patch_scale: str = "resize",
        val_fraction: float = 0.0,
        normals: str = "corners",
        inpaint_options: dict | str | None = None,
        lesion_crops: int = 0,
        a_crops: str = "lesion",
        color_constancy: float = 0.0,
    ) -> str:
        """Build lesion (A) / normal (B) folders from a folder of lesion images (e.g. dermoscopy), without pixel labels:
        B = lesion-free corner patches of the training images.

        Args:
            images_dir: lesion images (never written).
            out_dir: new output folder (trainA/, trainB/, testA/images [+ labels], manifest.json).
            masks_dir: masks of the images; read for the test and val images only (evaluation, selection).
            test_fraction: last fraction of the sorted ids held out for testing.
            side_fraction: corner patch side as a fraction of min(H, W).
            min_mean: reject darker patches (vignetting).
            max_std: reject patches whose colour standard deviation is higher (structure, possibly lesion).
            size: output image side.
            patch_scale: "resize" (the corner crop resized to --size, spec default) or "image" (kept at the scale of
                the A images and mirror-tiled to --size).
            val_fraction: fraction of all ids, taken just before the test ids, written with their masks as a
                labelled val/ split for model selection (not trained on; needs --masks_dir).
            normals: what trainB holds: "corners" (the corner patches, spec default), "inpaint" (the training images
                with their dark blob painted over by the skin around it: normal skin at the A images' field of view,
                not in the spec; images whose lesion touches the frame or fills it are skipped), "both", or "grid" (the
                crops of the --lesion_crops grid that pass --min_mean / --max_std; not in the spec).
            inpaint_options: options of the painting over, as a dict, e.g.
                '{"max_border": 0.5, "max_area": 0.8, "fill": "planar", "paint_corners": true}' (keeps lesions cut by
                the frame; see labelless.weak.domains.lesion_removed_image).
            lesion_crops: n > 0 writes an n x n grid of crops of side --side_fraction of each training image as trainA
                (at the corner patches' magnification; not in the spec) instead of the whole image; models trained on
                them segment whole images with --patch_zoom 1/side_fraction.
            a_crops: with --lesion_crops, which crops go to trainA: "lesion" (those that fail --min_mean / --max_std,
                i.e. may show the lesion; a crop that passes them is plain skin) or "all".
            color_constancy: p > 0 maps each training image's illuminant to grey (shades of grey, power p; 6 is usual
                for dermoscopy) before cutting its A and B views; not in the spec. Evaluate and run the model with the
                same --color_constancy / color_constancy option. 0 (default): off.
        """
        from labelless.weak.domains import write_image_domains

        if isinstance(inpaint_options, str):
            try:
                inpaint_options = json.loads(inpaint_options)
            except json.JSONDecodeError as e:
                raise ConfigError(f"--inpaint_options: not a JSON object: {inpaint_options!r} ({e})") from None
        if inpaint_options is not None and not isinstance(inpaint_options, dict):
            raise ConfigError(f"--inpaint_options: expected a dict such as '{{\"max_border\": 0.5}}', "
                              f"got {inpaint_options!r}")  # fmt: skip

        m = write_image_domains(images_dir, out_dir, masks_dir=masks_dir,
                                test_fraction=as_float(test_fraction, "--test_fraction", parse=True),
                                side_fraction=as_float(side_fraction, "--side_fraction", parse=True),
                                min_mean=as_float(min_mean, "--min_mean", parse=True),
                                max_std=as_float(max_std, "--max_std", parse=True),
                                size=as_int(size, "--size", parse=True), patch_scale=str(patch_scale),
                                val_fraction=as_float(val_fraction, "--val_fraction", parse=True),
                                normals=str(normals), inpaint_options=inpaint_options,
                                lesion_crops=as_int(lesion_crops, "--lesion_crops", 0, parse=True),
                                a_crops=str(a_crops),
                                color_constancy=as_float(color_constancy, "--color_constancy", 0.0,
                                                         parse=True))  # fmt: skip
        counts = ", ".join(f"{k} {v}" for k, v in sorted(m["counts"].items()))
        return f"{counts}; written to {out_dir}"

    def weak_domains_csv(self, csv_file: str, out_dir: str, size: int | None = None) -> str:
        """Build lesion (A) / normal (B) folders from a CSV of image-level tags.

        Columns: image (path, relative to the CSV or absolute), label (lesion/1/A/disease/... or
        normal/0/B/healthy/...),
        optional split (train, test, val) and optional mask (test/val lesion images only).

        Args:
            csv_file: the tag CSV.
            out_dir: new output folder.
            size: resize images to size × size (default: keep their size).
        """
        from labelless.weak.domains import write_tagged_domains

        side = None if size is None else as_int(size, "--size", 8, parse=True)
        m = write_tagged_domains(csv_file, out_dir, size=side)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(m["counts"].items()))
        return f"{counts}; written to {out_dir}"

    def average_checkpoints(self, out: str, *checkpoints: str, prefix: str | None = None) -> str:
        """Average the weights of several checkpoints of one run into one file (uniform weight averaging;
        labelless.io.average_checkpoints). E.g. the last checkpoints of a CLTNet run, as the generator file that
        inference.json loads: ``labelless average_checkpoints model_avg.pt ckpts/checkpoint_iteration=5*.pt
        --prefix gen_ab.``

        Args:
            out: the averaged state dict (new file, written atomically; not one of the inputs).
            checkpoints: the checkpoint files (same network), one or more.
            prefix: keep only the weights under this prefix, without it (e.g. ``gen_ab.``); default: all.
        """
        from labelless.io.checkpoint import average_checkpoints

        path = average_checkpoints([str(c) for c in checkpoints], out, prefix=None if prefix is None else str(prefix))
        return f"average of {len(checkpoints)} checkpoints written to {path}"

    def verify_metadata(self, meta_file: str) -> str:
        """Validate a bundle's configs/metadata.json against the vendored MONAI schema (works offline).

        Args:
            meta_file: path of metadata.json.
        """
        import jsonschema

        from labelless.errors import DataError
        from labelless.resources import META_SCHEMA

        schema = json.loads(META_SCHEMA.read_text())
        try:
            meta = json.loads(Path(meta_file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(meta_file, f"cannot read metadata ({e})") from e
        try:
            jsonschema.validate(meta, schema)
        except jsonschema.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "top level"
            raise DataError(meta_file, f"invalid metadata at {where}: {e.message}") from e
        return f"{meta_file}: valid against {META_SCHEMA.name}"

    def adapt(
        self,
        bundle: str,
        volumes_dir: str,
        minutes: float | None = 30,
        out: str | None = None,
        steps: int | None = None,
        init_ckpt: str | None = None,
        learning_rate: float | None = None,
        snapshot_minutes: Sequence[float] | None = None,
        resume: bool = False,
        clock: str = "wall",
        superpixel_min_size: int = 400,
        freeze_bn_stats: bool = False,
        augmentation: str | None = None,
    ) -> str:
        """Label-free adaptation: continue a few-shot volume bundle's self-supervised training on unlabelled volumes
        (labelless.fewshot.volume.adapt); writes <out>/model.pt for inference.json --ckpt_path.

        Args:
            bundle: bundle folder or name (ssl_alpnet_fewshot_segmentation, dspnet_..., psmnet_...).
            volumes_dir: folder of unlabelled volumes (NIfTI, NRRD, MHA, DICOM series, PNG); never written.
            minutes: time budget in minutes of --clock (None: --steps only).
            out: output folder (default ./adapted/<bundle>).
            steps: iteration budget (default: adapt.json's n_steps).
            init_ckpt: starting weights (default: the bundle's models/model.pt).
            learning_rate: default: adapt.json's.
            snapshot_minutes: write model_<m>min.pt at these minutes, e.g. "[15,30]".
            resume: continue an interrupted run in --out.
            clock: "wall" (wall-clock minutes) or "cpu" (CPU minutes of the process, for budgets on a shared
                machine); --minutes and --snapshot_minutes use it.
            superpixel_min_size: Felzenszwalb minimum superpixel size of the self-supervised classes (protocol 400;
                smaller for structures much smaller than an organ); each size has its own superpixel cache.
            freeze_bn_stats: keep the batch-norm running statistics of the initial weights (no re-estimation on the
                new domain's episodes).
            augmentation: episode augmentation: "strong" (wide rotations/translations and a flip, so that support and
                query differ in position), "parity" (the published ±5°/±5 px), "monai" or "none"; default adapt.json's.
        """
        from labelless.fewshot.volume.adapt import adapt_bundle

        snaps = _as_list(snapshot_minutes)
        extra = {} if augmentation is None else {"augmentation": str(augmentation)}
        path = adapt_bundle(bundle, volumes_dir, minutes=minutes, out=out, steps=steps, init_ckpt=init_ckpt,
                            learning_rate=learning_rate, snapshot_minutes=snaps, resume=resume,
                            budget_clock=clock, superpixel_min_size=superpixel_min_size,
                            freeze_bn_stats=as_bool(freeze_bn_stats, "--freeze_bn_stats"), **extra)  # fmt: skip
        return f"adapted model: {path}"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``labelless`` console script."""
    import fire

    from labelless.errors import LabellessError

    try:
        fire.Fire(LabellessCLI(), command=None if argv is None else list(argv), name="labelless")
    except LabellessError as e:
        print(f"labelless: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
