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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
            spacing=tuple(float(s) for s in spacing),
            size=int(size),
            clip_percentile=float(clip_percentile),
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
            raw_dir, out_dir, window=tuple(float(w) for w in window), border=int(border), size=int(size),
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
            raw_dir, out_dir, spacing=tuple(float(s) for s in spacing), size=int(size),
            clip_percentile=float(clip_percentile), overwrite=as_bool(overwrite, "overwrite"),
        )  # fmt: skip
        return f"prepared {res['n_cases']} MS-CMRSeg cases into {res['out_dir']}"


class LabellessCLI:
    """labelless: few-shot, weakly and semi-supervised medical image segmentation on MONAI.

    Commands: phantoms, prepare {chaos,synapse,cmr}, superpixels, episodes, evaluate, demo, fsms_classes,
    fsms_synthetic, weak_domains, weak_domains_images, weak_domains_csv, verify_metadata.
    Set LABELLESS_VERBOSE=1 for debug logging.
    """

    def __init__(self) -> None:
        level = logging.DEBUG if os.environ.get("LABELLESS_VERBOSE") else logging.INFO
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        self.prepare = PrepareCommands()

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
            out_dir, kind=kind, n_volumes=int(n_volumes), seed=int(seed),
            shape=None if shape is None else [int(s) for s in _as_list(shape)], modality=modality,
        )  # fmt: skip
        return f"wrote {n_volumes} {kind} phantoms to {out}"

    def superpixels(
        self,
        dataset_dir: str,
        out_dir: str | None = None,
        preset: str = "chaos",
        method: str = "felzenszwalb",
        workers: int | None = None,
        overwrite: bool = False,
    ) -> str:
        """Precompute superpixel pseudo-labels and body masks of a prepared dataset (cached, all cores, progress).

        Felzenszwalb per axial slice with the reference parameters (scale 1, sigma 1, min_size 400) on the
        preprocessed (not z-scored) intensities, masked by the body mask and relabelled to contiguous ids 1..R.
        Writes superpix_<id>.nii.gz and bodymask_<id>.nii.gz; the dataset folder itself is never written.

        Args:
            dataset_dir: prepared layout (image_<id>.nii.gz ...).
            out_dir: where the maps go (default: a cache folder, printed at the end).
            preset: dataset preset giving the body-mask threshold: chaos, synapse, cmr, phantom_abdomen, ...
            method: "felzenszwalb" (reference), "slic" (per slice) or "slic3d" (supervoxels).
            workers: worker processes (default: all cores).
            overwrite: recompute maps that already exist.
        """
        from labelless.fewshot.volume.superpixels import precompute_superpixels

        out = precompute_superpixels(
            dataset_dir, out_dir=out_dir, preset=preset, method=method,
            workers=None if workers is None else int(workers), overwrite=as_bool(overwrite, "overwrite"),
        )  # fmt: skip
        return f"superpixels in {out}"

    def episodes(
        self,
        dataset_dir: str,
        output_dir: str,
        derived_dir: str | None = None,
        preset: str = "chaos",
        n: int = 4,
        fold: int = 0,
        setting: int = 1,
        label_set: int = 0,
        seed: int = 1234,
    ) -> str:
        """Draw self-supervised training episodes and save them as PNGs (to check pseudo-labels and augmentation).

        Args:
            dataset_dir: prepared layout.
            output_dir: destination of episode_<i>.png.
            derived_dir: folder of precomputed superpixels (run `labelless superpixels` first).
            preset: dataset preset.
            n: number of episodes.
            fold: fold whose training scans are used.
            setting: 1 or 2 (Setting 2 removes slices of the label set's test classes).
            label_set: Setting-2 label set.
            seed: random seed.
        """
        from labelless.data.layouts import PreparedVolumeDataset
        from labelless.evaluation.overlays import write_episode_png
        from labelless.fewshot.volume.episodes import SelfSupervisedEpisodeDataset
        from labelless.fewshot.volume.folds import fold_split
        from labelless.transforms.augment import RandFewShotAugmentd

        ds = PreparedVolumeDataset(dataset_dir, preset, derived_dir=derived_dir)
        split = fold_split(ds.pids, int(fold), ds.preset.n_folds)
        eps = SelfSupervisedEpisodeDataset.from_dataset(
            ds, split.train, setting=int(setting), label_set=int(label_set), n_episodes=int(n),
            transform=RandFewShotAugmentd(keys=("image", "label")), seed=int(seed),
        )  # fmt: skip
        paths = [write_episode_png(eps[i], Path(output_dir) / f"episode_{i}.png") for i in range(int(n))]
        return f"wrote {len(paths)} episode figures to {output_dir}"

    def evaluate(
        self,
        dataset_dir: str,
        output_dir: str,
        preset: str = "chaos",
        predictions_dir: str | None = None,
        predictor: str = "baseline",
        folds: Sequence[int] = (0,),
        classes: Sequence[str] | None = None,
        modes: Sequence[str] = ("protocol", "gt_free"),
        label_map: dict | None = None,
        n_shots: int = 1,
        n_overlays: int = 3,
        save_predictions: bool = False,
        predict_outside_extent: bool = True,
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
            preset: dataset preset (chaos, synapse, cmr, phantom_abdomen, phantom_cardiac).
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
        """
        from labelless.data.layouts import PreparedVolumeDataset
        from labelless.errors import ConfigError
        from labelless.evaluation.reports import write_reports
        from labelless.fewshot.volume.baseline import IntensityPrototypePredictor
        from labelless.fewshot.volume.protocol import evaluate, score_predictions
        from labelless.fewshot.volume.workflow import fold_norm_stats

        ds = PreparedVolumeDataset(dataset_dir, preset, label_map=label_map)
        class_ids = None if classes is None else [ds.label_map.id_of(c) for c in _as_list(classes)]
        fold_list = [int(f) for f in _as_list(folds)]
        mode_list = [str(m) for m in _as_list(modes)]
        if predictions_dir is not None:
            if len(fold_list) != 1 or len(mode_list) != 1:
                raise ConfigError("scoring saved predictions takes one fold and one mode (--folds [k] --modes [m])")
            result = score_predictions(ds, predictions_dir, fold=fold_list[0], classes=class_ids, mode=mode_list[0])
        else:
            if predictor != "baseline":
                raise ConfigError(f"unknown predictor {predictor!r}; use 'baseline' or --predictions_dir")
            base = IntensityPrototypePredictor()
            result = evaluate(
                ds, lambda f: base, folds=fold_list, classes=class_ids, modes=mode_list, n_shots=int(n_shots),
                norm_stats_for_fold=lambda f: fold_norm_stats(ds, f),
                n_overlays=int(n_overlays), output_dir=output_dir,
                save_predictions=as_bool(save_predictions, "save_predictions"),
                predict_outside_extent=as_bool(predict_outside_extent, "predict_outside_extent"),
            )  # fmt: skip
        paths = write_reports(result, output_dir)
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
        print(self.superpixels(str(data), out_dir=str(derived), preset=preset))
        print(self.episodes(str(data), str(out / "episodes"), derived_dir=str(derived), preset=preset, seed=seed))
        return self.evaluate(str(data), str(out / "evaluation"), preset=preset, folds=(0,))

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
            data_root, out_dir, sources=tuple(_as_list(sources) or ()), max_instances=int(max_instances),
            min_fraction=float(min_fraction), size=int(size), seed=int(seed),
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
        classes = write_shape_classes(out / "classes", n_classes=int(n_classes), n_instances=int(n_instances),
                                      size=int(size), seed=int(seed))  # fmt: skip
        skin = write_skin_phantoms(out / "skin", n_images=int(n_skin), size=int(size), seed=int(seed))
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

        m = write_volume_domains(volumes_dir, out_dir, n_test=int(n_test), n_val=int(n_val), seed=int(seed),
                                 min_body_fraction=float(min_body_fraction), min_lesion_px=int(min_lesion_px),
                                 size=int(size), orientation=str(orientation))  # fmt: skip
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
    ) -> str:
        """Build lesion (A) / normal (B) folders from a folder of lesion images (e.g. dermoscopy), without pixel labels:
        B = lesion-free corner patches of the training images.

        Args:
            images_dir: lesion images (never written).
            out_dir: new output folder (trainA/, trainB/, testA/images [+ labels], manifest.json).
            masks_dir: masks of the images; read for the test images only (evaluation).
            test_fraction: last fraction of the sorted ids held out for testing.
            side_fraction: corner patch side as a fraction of min(H, W).
            min_mean: reject darker patches (vignetting).
            max_std: reject patches whose colour standard deviation is higher (structure, possibly lesion).
            size: output image side.
        """
        from labelless.weak.domains import write_image_domains

        m = write_image_domains(images_dir, out_dir, masks_dir=masks_dir, test_fraction=float(test_fraction),
                                side_fraction=float(side_fraction), min_mean=float(min_mean), max_std=float(max_std),
                                size=int(size))  # fmt: skip
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

        m = write_tagged_domains(csv_file, out_dir, size=None if size is None else int(size))
        counts = ", ".join(f"{k} {v}" for k, v in sorted(m["counts"].items()))
        return f"{counts}; written to {out_dir}"

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
