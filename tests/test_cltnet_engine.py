# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""CLTNet losses, trainer, data and post-processing: a CPU smoke run and the spec §10 checks outside the networks."""

from __future__ import annotations

import importlib.util
import json
import logging
from unittest import mock

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from labelless.engines.adversarial import CycleTranslationTrainer, prepare_domain_batch
from labelless.errors import ConfigError, DataError
from labelless.evaluation.metrics import segmentation_scores
from labelless.losses import CycleTranslationLoss, lsgan_loss
from labelless.networks.cltnet import LIN, AdaLIN, build_cltnet
from labelless.transforms.postprocess import (
    SoftMaskPostprocess,
    intensity_prior,
    watershed_mask,
    zero_black_background,
    zero_corners,
)
from labelless.transforms.translation import (
    RandTranslationAugment,
    RandTranslationAugmentd,
    TranslationInput,
    TranslationInputd,
)
from labelless.weak.data import UnpairedDomainDataset
from labelless.weak.synthetic import write_weak_phantoms
from labelless.weak.workflow import (
    FLIP_DIMS,
    WeakSegmentationEvaluationRunner,
    WeakValidationHandler,
    evaluate_images,
    gate_mask,
    resolve_domains,
)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return write_weak_phantoms(tmp_path_factory.mktemp("weak") / "set", n_train=6, n_test=3, n_val=3, size=64)


def _trainer(net, loader, n_steps=3, **kw):
    g_opt = torch.optim.Adam(net.generator_parameters(), lr=1e-4, betas=(0.5, 0.999), weight_decay=2e-5)
    d_opt = torch.optim.Adam(net.discriminator_parameters(), lr=1e-4, betas=(0.5, 0.999), weight_decay=2e-5)
    return CycleTranslationTrainer(device="cpu", max_epochs=n_steps, epoch_length=1, n_steps=n_steps,
                                   train_data_loader=loader, network=net, optimizer=g_opt, d_optimizer=d_opt,
                                   loss_function=CycleTranslationLoss("brats"), **kw)  # fmt: skip


def test_smoke_run_trains_keeps_rho_and_selects_on_validation(phantoms, tmp_path, caplog):
    torch.manual_seed(0)
    folders = resolve_domains(phantoms)
    ds = UnpairedDomainDataset(folders.train_a, folders.train_b, image_size=96, seed=0)
    net = build_cltnet(ngf=8, ndf=8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trainer = _trainer(net, DataLoader(ds, batch_size=1))
    handler = WeakValidationHandler(folders.val, net, tmp_path / "ckpt", tmp_path / "out", interval=3, image_size=96,
                                    n_overlays=2)  # fmt: skip
    handler.attach(trainer)
    with caplog.at_level(logging.INFO, logger="labelless.weak"):
        trainer.run()
    assert not [r for r in caplog.records if r.getMessage().startswith("[")]  # no per-image lines in validation
    out = trainer.state.output
    assert trainer.state.iteration == 3
    assert {"loss", "d_loss", "adv", "adv_c", "cycle", "ident", "cam", "recon", "mask_mean"} <= set(out)
    assert all(torch.isfinite(torch.as_tensor(out[k])) for k in ("loss", "d_loss", "cycle"))
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("gen_ab") for k in changed) and any(k.startswith("dis_ga") for k in changed)
    rhos = [m.rho for m in net.modules() if isinstance(m, (LIN, AdaLIN))]
    assert rhos and all(float(r.min()) >= 0.0 and float(r.max()) <= 1.0 for r in rhos)
    # validation: metric in the engine state, best model on the validation split, overlays of M
    assert 0.0 <= trainer.state.metrics["val_mean_ja"] <= 1.0
    assert (tmp_path / "ckpt" / "best_model.pt").is_file() and (tmp_path / "ckpt" / "best_model.json").is_file()
    assert len(list((tmp_path / "out" / "val_overlays" / "iter_000003").glob("*.png"))) == 2
    # the evaluation runner loads the selected model and writes the reports, with a progress line per image
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="labelless.weak"):
        res = WeakSegmentationEvaluationRunner(build_cltnet(ngf=8, ndf=8), folders, tmp_path / "eval",
                                               ckpt_path=tmp_path / "ckpt" / "best_model.pt", image_size=96,
                                               postprocess="watershed").run()  # fmt: skip
    assert res["n_images"] == 3 and 0.0 <= res["mean_dice"] <= 1.0 and res["postprocess"] == "watershed"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    per_image = json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_image"]
    assert [ln.split(":")[0] for ln in lines] == [f"[{i}/3] {r['name']}" for i, r in enumerate(per_image, 1)]
    assert [f"DI {r['di']:.4f}" in ln for ln, r in zip(lines, per_image)] == [True] * 3 and "s left" in lines[-1]
    assert {"metrics.json", "metrics.csv", "metrics.md"} <= {p.name for p in (tmp_path / "eval").iterdir()}
    with pytest.raises(ConfigError, match="inside the dataset"):
        WeakSegmentationEvaluationRunner(net, folders, phantoms / "eval")
    # the validation history also scores 1 - M (the diagnostic behind invert_mask); an inverted evaluation of the
    # same weights reproduces the complement's figure
    hist = json.loads((tmp_path / "ckpt" / "validation_history.json").read_text())["history"][-1]
    assert 0.0 <= hist["complement_mean_dice"] <= 1.0 and 0.0 <= hist["complement_mean_ja"] <= 1.0
    best = build_cltnet(ngf=8, ndf=8)
    best.load_state_dict(torch.load(tmp_path / "ckpt" / "best_model.pt"))
    plain, _ = evaluate_images(best, folders.val, 96, SoftMaskPostprocess("otsu"), complement=True)
    inv = WeakSegmentationEvaluationRunner(build_cltnet(ngf=8, ndf=8), folders, tmp_path / "eval_inv", eval_split="val",
                                           ckpt_path=tmp_path / "ckpt" / "best_model.pt", image_size=96,
                                           postprocess="otsu", invert_mask="true", flip_tta="true").run()  # fmt: skip
    plain, _ = evaluate_images(best, folders.val, 96, SoftMaskPostprocess("otsu"), complement=True, flip_tta=True)
    assert inv["invert_mask"] is True and plain["invert_mask"] is False and inv["flip_tta"] is plain["flip_tta"] is True
    assert inv["mean_dice"] == pytest.approx(plain["complement_mean_dice"])


def test_seeded_runs_are_reproducible(phantoms):
    def run() -> dict:
        torch.manual_seed(1)
        folders = resolve_domains(phantoms)
        ds = UnpairedDomainDataset(folders.train_a, folders.train_b, image_size=96, seed=3)
        net = build_cltnet(ngf=8, ndf=8)
        _trainer(net, DataLoader(ds, batch_size=1), n_steps=2).run()
        return net.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_rejects_mixed_optimisers_and_bad_batches():
    net = build_cltnet(ngf=8, ndf=8)
    all_params = torch.optim.Adam(net.parameters())
    with pytest.raises(ConfigError, match="generator_parameters"):
        CycleTranslationTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=net, optimizer=all_params,
                                d_optimizer=torch.optim.Adam(net.discriminator_parameters()))  # fmt: skip
    with pytest.raises(ConfigError, match="CLTNet"):
        CycleTranslationTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=torch.nn.Linear(2, 2),
                                optimizer=all_params, d_optimizer=all_params)  # fmt: skip
    with pytest.raises(DataError, match="missing keys"):
        prepare_domain_batch({"image_a": torch.zeros(1, 3, 8, 8)})
    with pytest.raises(DataError, match="non-finite"):
        prepare_domain_batch({"image_a": torch.full((1, 3, 8, 8), float("nan")), "image_b": torch.zeros(1, 3, 8, 8)})


def test_losses():
    assert float(lsgan_loss(torch.ones(2, 1, 3, 3), True)) == 0.0 and float(lsgan_loss(torch.ones(4), False)) == 1.0
    loss = CycleTranslationLoss({"adv": 1, "cycle": 0, "ident": 0, "cam": 0, "recon": 0})
    real = [(torch.ones(1, 1, 2, 2), torch.ones(1, 2))]
    fake = [(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2))]
    assert float(loss.discriminator(real, fake)) == 0.0  # a perfect discriminator
    assert float(loss.discriminator(fake, real)) == 4.0  # everything wrong: 4 terms of 1
    x = torch.zeros(1, 3, 4, 4)
    total, terms = loss.generator(real, real, [(x, x)], [(x, x)], [torch.full((1, 2), 20.0)],
                                  [torch.full((1, 2), -20.0)], [(x, x)])  # fmt: skip
    assert float(total) == 0.0 and float(terms["cam"]) < 1e-6
    with pytest.raises(ConfigError, match="unknown loss weight preset"):
        CycleTranslationLoss("chest")


def test_mask_terms_are_off_by_default_and_push_normal_masks_down():
    """The optional mask terms (not in the spec): 0 by default; with a weight, the mean mask of normal (and lesion)
    images is added, and a short run lowers the mask of normal images more than the spec's loss does."""
    x = torch.zeros(1, 3, 4, 4)
    real = [(torch.ones(1, 1, 2, 2), torch.ones(1, 2))]
    args = (real, real, [(x, x)], [(x, x)], [torch.full((1, 2), 20.0)], [torch.full((1, 2), -20.0)], [(x, x)])
    m_normal, m_lesion = torch.full((1, 1, 4, 4), 0.5), torch.full((1, 1, 4, 4), 0.25)
    spec = CycleTranslationLoss("brats")
    assert spec.weights["mask_normal"] == 0.0 and spec.weights["mask_sparsity"] == 0.0
    base, terms = spec.generator(*args, masks_normal=[m_normal], masks_lesion=[m_lesion])
    assert "mask_normal" not in terms
    both = CycleTranslationLoss("brats", mask_normal=2.0, mask_sparsity=4.0)
    total, terms = both.generator(*args, masks_normal=[m_normal], masks_lesion=[m_lesion])
    assert float(terms["mask_normal"]) == 0.5 and float(terms["mask_sparsity"]) == 0.25
    assert float(total - base) == pytest.approx(2.0 * 0.5 + 4.0 * 0.25)
    with pytest.raises(ConfigError, match="needs the generator's masks"):
        both.generator(*args)
    with pytest.raises(ConfigError, match="finite and >= 0"):
        CycleTranslationLoss("brats", mask_normal=-1.0)

    weights = {"adv": 1.0, "cycle": 1.0, "ident": 1.0, "cam": 1.0, "recon": 1.0}

    def normal_mask_after(mask_normal: float) -> float:
        torch.manual_seed(0)
        net = build_cltnet(ngf=8, ndf=8)
        x_b = torch.rand(1, 3, 96, 96) * 2 - 1
        data = [{"image_a": torch.rand(1, 3, 96, 96) * 2 - 1, "image_b": x_b}] * 6
        g_opt = torch.optim.Adam(net.generator_parameters(), lr=1e-2)
        d_opt = torch.optim.Adam(net.discriminator_parameters(), lr=1e-4)
        CycleTranslationTrainer(device="cpu", max_epochs=6, epoch_length=1, n_steps=6, train_data_loader=data,
                                network=net, optimizer=g_opt, d_optimizer=d_opt,
                                loss_function=CycleTranslationLoss(weights, mask_normal=mask_normal)).run()  # fmt: skip
        with torch.no_grad():
            return float(net.gen_ab(x_b).mask.mean())

    assert normal_mask_after(10.0) < normal_mask_after(0.0) - 0.1


def test_augment_is_seeded_and_in_range():
    img = torch.rand(3, 40, 50)
    a, b = RandTranslationAugment(32), RandTranslationAugment(32)
    a.set_random_state(5)
    b.set_random_state(5)
    xa, xb = a(img), b(img)
    assert torch.equal(xa, xb) and xa.shape == (3, 32, 32) and float(xa.min()) >= -1 and float(xa.max()) <= 1
    # the dictionary twins give the array transforms' results
    d = RandTranslationAugmentd(keys="image", image_size=32).set_random_state(5)
    assert torch.equal(d({"image": img})["image"], xa)
    t = TranslationInputd(keys="image", image_size=32)({"image": img})["image"]
    assert torch.equal(t, TranslationInput(32)(img)) and t.shape == (3, 32, 32)


def test_watershed_keeps_all_six_blobs():
    """Spec §10: every blob is foreground (the reference kept markers >= 5 as grey values)."""
    m = np.zeros((128, 128))
    yy, xx = np.ogrid[:128, :128]
    for r, c in [(15, 15), (15, 60), (15, 105), (90, 15), (90, 60), (90, 105)]:
        m[(yy - r) ** 2 + (xx - c) ** 2 < 81] = 0.95
    out = watershed_mask(m)
    assert ndimage.label(out)[1] == 6 and np.array_equal(out, m > 0.5)


def test_background_and_corner_zeroing():
    m = np.full((8, 8), 0.9)
    image = np.zeros((3, 8, 8))
    image[:, :2] = -1.0
    image[0, 0, 0] = 0.5  # one channel not black: kept (the reference tested per channel)
    z = zero_black_background(m, image)
    assert z[1, 3] == 0.0 and z[0, 0] == 0.9 and z[5, 5] == 0.9
    c = zero_corners(np.ones((256, 256)))
    assert c[0, 0] == c[255, 0] == c[0, 255] == c[255, 255] == 0.0 and c[128, 128] == 1.0 and c[0, 128] == 1.0
    post = SoftMaskPostprocess("threshold", zero_black_background="false", zero_corners="true")
    assert not post.zero_black_background and post.zero_corners
    if importlib.util.find_spec("pydensecrf") is None:  # the optional module: a one-line error naming it
        with pytest.raises(ConfigError, match="pydensecrf"):
            SoftMaskPostprocess("crf")(np.full((8, 8), 0.5), np.zeros((3, 8, 8)))


def test_crf_follows_the_image_edges_when_pydensecrf_is_installed():
    """Spec §6 crf: a blurred soft mask over a sharp dark disc comes back as the disc (skipped without the module)."""
    pytest.importorskip("pydensecrf", reason="optional module pydensecrf (pip install pydensecrf2) not installed")
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 30) ** 2 < 14**2
    image = np.where(disc, -0.6, 0.6)[None].repeat(3, 0)  # a dark lesion on bright skin, [-1, 1]
    soft = ndimage.gaussian_filter(disc.astype(float), 6)
    soft = 0.9 * soft / soft.max()
    out = SoftMaskPostprocess("crf")(soft, image)[1]
    assert segmentation_scores(out, disc)["di"] > segmentation_scores(soft >= 0.5, disc)["di"] >= 0.5


def test_inverted_mask_reads_the_complement_and_keeps_zeroed_pixels_background():
    """invert_mask (not in the spec): 1 - M is the lesion; the zeroing comes after the inversion, so the black
    background and the corners stay background; otsu splits at the same place (up to its histogram bin) with the
    sides swapped."""
    rng = np.random.default_rng(0)
    soft = rng.uniform(0.0, 1.0, (64, 64))
    image = np.zeros((3, 64, 64))
    image[:, :, :8] = -1.0  # black strip
    plain = SoftMaskPostprocess("threshold")(soft, image)[1]
    z, inv = SoftMaskPostprocess("threshold", invert=True)(soft, image)
    assert np.array_equal(inv[:, 8:], soft[:, 8:] <= 0.5) and not inv[:, :8].any() and not plain[:, :8].any()
    assert np.allclose(z[:, 8:], 1.0 - soft[:, 8:]) and np.all(z[:, :8] == 0.0)
    o = SoftMaskPostprocess("otsu")(soft, image)[1]
    oi = SoftMaskPostprocess("otsu", invert="true")(soft, image)[1]
    body = image[0] > -1.0
    assert not (o | oi)[~body].any() and o[body].mean() == pytest.approx(1.0 - oi[body].mean(), abs=0.02)
    assert (o == oi)[body].mean() < 0.02  # the two sides swap, but for the pixels in the threshold's bin
    with pytest.raises(ConfigError, match="invert_mask"):
        SoftMaskPostprocess("otsu", invert="maybe")


def test_flip_tta_makes_the_mask_flip_equivariant():
    """flip_tta (not in the spec): M averaged over the four flips, each flipped back, so that flipping the input flips
    the mask exactly; without it the mask of a random network is not flip-equivariant."""
    torch.manual_seed(0)
    gen = build_cltnet(ngf=8, ndf=8).gen_ab.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        plain = gate_mask(gen, x)
        avg = gate_mask(gen, x, flip_tta=True)
        ref = torch.stack([torch.flip(gen(torch.flip(x, d)).mask, d) if d else gen(x).mask for d in FLIP_DIMS]).mean(0)
        assert avg.shape == plain.shape == (2, 1, 32, 32) and torch.allclose(avg, ref, atol=1e-6)
        for d in FLIP_DIMS[1:]:
            assert torch.allclose(gate_mask(gen, torch.flip(x, d), flip_tta=True), torch.flip(avg, d), atol=1e-5)
        assert not torch.allclose(gate_mask(gen, torch.flip(x, (-1,))), torch.flip(plain, (-1,)), atol=1e-5)


def test_threshold_sweep_readings_match_the_bundle_mask():
    """benchmarks/cltnet_threshold_sweep.py (a diagnostic): its M reading is the bundle's soft mask (flip-averaged
    or not) at the image's size; its diff reading is |x − y| / 2 of the translation, in [0, 1], zero where y = x."""
    from pathlib import Path

    from labelless.weak.workflow import soft_mask

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cltnet_threshold_sweep.py"
    spec = importlib.util.spec_from_file_location("cltnet_threshold_sweep", script)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    torch.manual_seed(0)
    net = build_cltnet(ngf=8, ndf=8)
    net.eval()
    image = torch.rand(3, 40, 48)
    for tta in (False, True):
        maps = sweep.readings(net.gen_ab, image, 32, tta)
        assert maps["M"].shape == maps["diff"].shape == (40, 48)
        assert np.allclose(maps["M"], soft_mask(net, image, 32, torch.device("cpu"), tta).numpy(), atol=1e-5)
        assert 0.0 <= maps["diff"].min() and maps["diff"].max() <= 1.0 and maps["diff"].max() > 0.0

    class Identity(torch.nn.Module):  # a generator that changes nothing: diff is 0
        def forward(self, x):
            return type("Out", (), {"mask": torch.full_like(x[:, :1], 0.3), "y": x})()

    maps = sweep.readings(Identity(), image, 32, True)
    assert np.allclose(maps["diff"], 0.0) and np.allclose(maps["M"], 0.3)


def test_segmentation_scores_on_a_hand_built_confusion():
    pred = np.zeros((4, 5), bool)
    truth = np.zeros((4, 5), bool)
    pred[0, :3] = True  # TP 2, FP 1
    truth[0, 1:3] = True
    truth[1, 0] = True  # FN 1; TN = 20 - 4 = 16
    s = segmentation_scores(pred, truth)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (2, 1, 1, 16)
    assert s["ja"] == pytest.approx(0.5) and s["di"] == pytest.approx(4 / 6) and s["ac"] == pytest.approx(18 / 20)
    assert s["se"] == pytest.approx(2 / 3) and s["sp"] == pytest.approx(16 / 17)


def test_otsu_postprocess_splits_an_offset_mask_inside_the_brain():
    """The 'otsu' mode (not in the spec): a mask gate that ranks the lesion above tissue but is above 0.5 everywhere
    in the brain gives the lesion with a per-image Otsu threshold over the non-black pixels, and everything with 0.5."""
    yy, xx = np.mgrid[:64, :64]
    brain = (yy - 32) ** 2 + (xx - 32) ** 2 < 28**2
    lesion = (yy - 25) ** 2 + (xx - 38) ** 2 < 8**2
    image = np.where(brain, 0.2, -1.0)[None].repeat(3, 0)  # [-1, 1], black outside the brain
    soft = np.where(lesion, 0.78, np.where(brain, 0.6, 0.9))  # high on the black background too: zeroed first
    soft = soft + np.random.default_rng(0).normal(0, 0.01, soft.shape).clip(-0.03, 0.03)
    _, otsu = SoftMaskPostprocess("otsu")(soft, image)
    _, thr = SoftMaskPostprocess("threshold")(soft, image)
    assert segmentation_scores(otsu, lesion)["di"] > 0.98  # the histogram binning may add a pixel or two
    assert np.array_equal(thr, brain)
    _, flat = SoftMaskPostprocess("otsu")(np.where(brain, 0.7, 0.0), image)  # no contrast: the 0.5 rule
    assert np.array_equal(flat, brain)
    with pytest.raises(ConfigError, match="postprocess must be one of"):
        SoftMaskPostprocess("kmeans")


def test_intensity_prior_keeps_the_dark_pixels_the_gate_marks():
    """intensity_prior (not in the spec): sqrt(M · darkness). A gate that covers the lesion and a ring of skin around
    it over-segments alone; with the prior the ring (bright) and a dark spot outside the gate both drop out."""
    yy, xx = np.mgrid[:64, :64]
    lesion = (yy - 32) ** 2 + (xx - 20) ** 2 < 10**2
    spot = (yy - 32) ** 2 + (xx - 54) ** 2 < 5**2  # dark, but the gate does not mark it
    image = np.where(lesion | spot, -0.6, 0.6)[None].repeat(3, 0)  # [-1, 1]
    soft = np.where((yy - 32) ** 2 + (xx - 20) ** 2 < 18**2, 0.9, 0.05)
    alone = SoftMaskPostprocess("threshold")(soft, image)[1]
    fused_soft, fused = SoftMaskPostprocess("threshold", intensity_prior="dark")(soft, image)
    assert segmentation_scores(alone, lesion)["di"] < 0.6
    assert np.array_equal(fused, lesion) and not fused[spot].any()
    assert np.allclose(fused_soft[lesion], np.sqrt(0.9)) and np.allclose(fused_soft[~lesion & ~spot], 0.0)
    # "bright" reads the other way: the gate's bright skin ring, never the dark lesion
    bright = SoftMaskPostprocess("threshold", intensity_prior="bright")(soft, image)[1]
    assert not bright[lesion].any() and bright[~lesion & (soft > 0.5)].all()
    # the prior itself: min-max over the region, 0 outside it, all 0 on a flat region; bad inputs are named
    region = xx < 60
    p = intensity_prior(image, dark=True, region=region)
    assert p.min() == 0.0 and p.max() == 1.0 and not p[~region].any()
    assert np.array_equal(p[region] == 1.0, (lesion | spot)[region])
    assert not intensity_prior(np.zeros((3, 8, 8))).any()
    with pytest.raises(DataError, match="region"):
        intensity_prior(image, region=np.ones((8, 8), bool))
    with pytest.raises(DataError, match="image"):
        intensity_prior(np.zeros((2, 8, 8)))
    with pytest.raises(ConfigError, match="intensity_prior must be one of"):
        SoftMaskPostprocess("crf", intensity_prior="darker")


class _PixelGate(torch.nn.Module):
    """A generator whose mask is a per-pixel function of its input: reading it with sliding windows must give the
    same map as reading the whole input at once."""

    def forward(self, x):
        return type("Out", (), {"mask": torch.sigmoid(3.0 * x.mean(1, keepdim=True)), "y": x})()


def test_patch_zoom_reads_the_gate_with_sliding_windows(phantoms, tmp_path):
    """patch_zoom (not in the spec, for models trained on crops): the image is resized to image_size · zoom and M is
    read with image_size windows; a per-pixel gate gives the whole-image map, a real one a map of the image's size
    in the evaluation, the validation and the inference runner."""
    from labelless.weak.inference import WeakSegmentationInferenceRunner
    from labelless.weak.workflow import patch_input_size, soft_mask

    assert patch_input_size(32) == 32 and patch_input_size(32, 3.333) == 107 and patch_input_size(30, 2) == 60
    for bad in (0.5, 20, "abc"):
        with pytest.raises(ConfigError, match="patch_zoom"):
            patch_input_size(32, bad)
    x = torch.rand(1, 3, 80, 80) * 2 - 1
    with torch.no_grad():
        whole, slid = gate_mask(_PixelGate(), x), gate_mask(_PixelGate(), x, window=32)
        assert torch.allclose(whole, slid, atol=1e-5)
        assert torch.allclose(gate_mask(_PixelGate(), x, True), gate_mask(_PixelGate(), x, True, window=32), atol=1e-5)
        torch.manual_seed(0)
        net = build_cltnet(ngf=8, ndf=8).eval()
        real = gate_mask(net.gen_ab, x, window=32)
        assert real.shape == (1, 1, 80, 80) and not torch.allclose(real, gate_mask(net.gen_ab, x), atol=1e-4)
        image = torch.rand(3, 40, 48)
        m = soft_mask(net, image, 32, torch.device("cpu"), flip_tta=True, patch_zoom=2.5)
        assert m.shape == (40, 48) and 0.0 <= float(m.min()) and float(m.max()) <= 1.0
    folders = resolve_domains(str(phantoms))
    res, _ = evaluate_images(net, folders.test, 32, SoftMaskPostprocess("otsu"), n_overlays=0, patch_zoom=2.0)
    assert res["patch_zoom"] == 2.0 and res["n_images"] == len(folders.test)
    # the soft-mask cache: filled once, then reused (no network call) with the same scores
    cache: dict = {}
    first, _ = evaluate_images(net, folders.test, 32, SoftMaskPostprocess("otsu"), n_overlays=0, patch_zoom=2.0,
                               soft_cache=cache)  # fmt: skip
    assert sorted(cache) == sorted(str(p["image"]) for p in folders.test) and first["mean_ja"] == res["mean_ja"]
    with mock.patch("labelless.weak.workflow.soft_mask", side_effect=AssertionError("recomputed")):
        again, _ = evaluate_images(net, folders.test, 32, SoftMaskPostprocess("otsu"), n_overlays=0, patch_zoom=2.0,
                                   soft_cache=cache)  # fmt: skip
        other, _ = evaluate_images(net, folders.test, 32, SoftMaskPostprocess("threshold"), n_overlays=0,
                                   patch_zoom=2.0, soft_cache=cache)  # fmt: skip
    assert again["per_image"] == res["per_image"] and other["postprocess"] == "threshold"
    files = [p["image"] for p in folders.test]
    summary = WeakSegmentationInferenceRunner(net, files, tmp_path / "inf", image_size=32, patch_zoom=2.0,
                                              postprocess="otsu").run()  # fmt: skip
    assert summary["patch_zoom"] == 2.0
    from PIL import Image

    for rec, f in zip(summary["images"], files):
        assert Image.open(rec["mask"]).size == Image.open(f).size
    with pytest.raises(ConfigError, match="patch_zoom"):
        WeakValidationHandler(folders.val, net, tmp_path / "c", tmp_path / "o", image_size=32, patch_zoom=0.2)
    with pytest.raises(ConfigError, match="patch_zoom"):
        WeakSegmentationEvaluationRunner(net, folders, tmp_path / "e", image_size=32, patch_zoom=0.2)


def test_shades_of_grey_maps_the_illuminant_to_grey():
    """Colour constancy (not in the spec): an image lit by a coloured illuminant comes back with equal channel
    p-means, the same for tensors, [H, W, C] arrays and uint8; power 0 is the identity; bad values are named."""
    from labelless.transforms.translation import shades_of_grey

    rng = np.random.default_rng(0)
    scene = rng.uniform(0.2, 0.8, (1, 24, 30)).astype(np.float32).repeat(3, 0)  # a grey scene
    lit = torch.from_numpy(scene * np.array([0.95, 0.7, 0.55], np.float32)[:, None, None])  # under a warm light
    out = shades_of_grey(lit, 6.0)
    e = out.double().pow(6).reshape(3, -1).mean(1).pow(1 / 6)
    assert torch.allclose(e, e.mean().expand(3), rtol=1e-4) and out.shape == lit.shape
    assert torch.allclose(out[0], out[1], atol=1e-5) and torch.allclose(out[1], out[2], atol=1e-5)  # grey again
    assert abs(float(e.norm()) - float(lit.double().pow(6).reshape(3, -1).mean(1).pow(1 / 6).norm())) < 1e-4
    hwc = lit.permute(1, 2, 0).numpy()
    as_array = shades_of_grey(hwc, 6.0, channel_last=True)
    assert isinstance(as_array, np.ndarray) and as_array.dtype == np.float32
    assert np.allclose(as_array, out.permute(1, 2, 0).numpy(), atol=1e-6)
    as_bytes = shades_of_grey(np.round(hwc * 255).astype(np.uint8), 6.0, channel_last=True)
    assert as_bytes.dtype == np.uint8 and np.abs(as_bytes / 255.0 - as_array).max() < 0.01
    assert shades_of_grey(lit, 0) is lit
    black = torch.zeros(3, 4, 4)
    black[0] = 0.5  # two black channels: no illuminant to estimate, the image is left as it is
    assert torch.equal(shades_of_grey(black, 6.0), black)
    with pytest.raises(ConfigError, match="color_constancy"):
        shades_of_grey(lit, -1)
    with pytest.raises(DataError, match="non-finite"):
        shades_of_grey(torch.full((3, 4, 4), float("nan")), 6.0)
    assert torch.equal(TranslationInput(16, color_constancy=6.0)(lit), TranslationInput(16)(out))
    d = TranslationInputd("image", image_size=16, color_constancy=6.0)({"image": lit})["image"]
    assert torch.equal(d, TranslationInput(16, color_constancy=6.0)(lit))
    for bad in (-2, "abc", float("inf")):
        with pytest.raises(ConfigError, match="color_constancy"):
            TranslationInput(16, color_constancy=bad)


def test_color_constancy_in_evaluation_inference_and_validation(phantoms, tmp_path):
    """color_constancy reaches the network's input in every path that reads a gate (evaluation, validation, inference
    runner) and is reported; the CRF and the overlays still see the original colours."""
    from labelless.transforms.translation import shades_of_grey
    from labelless.weak.inference import WeakSegmentationInferenceRunner
    from labelless.weak.workflow import soft_mask

    torch.manual_seed(0)
    net = build_cltnet(ngf=8, ndf=8).eval()
    image = torch.rand(3, 40, 48) * torch.tensor([1.0, 0.7, 0.5])[:, None, None]
    dev = torch.device("cpu")
    with torch.no_grad():
        corrected = soft_mask(net, image, 32, dev, color_constancy=6.0)
        assert torch.allclose(corrected, soft_mask(net, shades_of_grey(image, 6.0), 32, dev))
        assert not torch.allclose(corrected, soft_mask(net, image, 32, dev), atol=1e-5)
    folders = resolve_domains(str(phantoms))
    plain, _ = evaluate_images(net, folders.test, 32, SoftMaskPostprocess("otsu"), n_overlays=0)
    cc, _ = evaluate_images(net, folders.test, 32, SoftMaskPostprocess("otsu"), n_overlays=0, color_constancy=6.0)
    assert cc["color_constancy"] == 6.0 and plain["color_constancy"] == 0.0
    files = [p["image"] for p in folders.test]
    summary = WeakSegmentationInferenceRunner(net, files, tmp_path / "inf", image_size=32, postprocess="otsu",
                                              color_constancy=6.0).run()  # fmt: skip
    assert summary["color_constancy"] == 6.0
    from PIL import Image

    for rec, p, score in zip(summary["images"], folders.test, cc["per_image"]):  # the same masks as the evaluation
        mask = np.asarray(Image.open(rec["mask"])) > 0
        truth = np.asarray(Image.open(p["label"]).convert("L")) > 127
        assert abs(segmentation_scores(mask, truth)["di"] - score["di"]) < 1e-6
    handler = WeakValidationHandler(folders.val, net, tmp_path / "c", tmp_path / "o", image_size=32,
                                    color_constancy=6.0)  # fmt: skip
    assert handler.color_constancy == 6.0
    for make in (
        lambda: WeakValidationHandler(folders.val, net, tmp_path / "c", tmp_path / "o", color_constancy=-1),
        lambda: WeakSegmentationEvaluationRunner(net, folders, tmp_path / "e", color_constancy="x"),
        lambda: WeakSegmentationInferenceRunner(net, files, tmp_path / "i2", color_constancy=-3),
    ):
        with pytest.raises(ConfigError, match="color_constancy"):
            make()


def test_ensemble_mask_is_the_mean_of_the_members_and_names_bad_members(tmp_path):
    """CLTGeneratorEnsemble (not in the spec): every output is the members' mean, its gate reads like a generator's
    (flip averaging, evaluation), load_weak_ensemble loads one member per file and refuses bad lists."""
    from labelless.networks.cltnet import CLTGeneratorEnsemble
    from labelless.weak.workflow import load_weak_ensemble, soft_mask

    torch.manual_seed(0)
    nets = [build_cltnet(ngf=8, ndf=8, n_layers_global=6) for _ in range(2)]
    files = []
    for i, n in enumerate(nets):
        files.append(tmp_path / f"ckpt{i}.pt")
        torch.save({"model": n.state_dict()}, files[-1])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ens = load_weak_ensemble(build_cltnet(ngf=8, ndf=8, n_layers_global=6), files).eval()
    assert isinstance(ens, CLTGeneratorEnsemble) and len(ens) == 2
    with torch.no_grad():
        outs = [n.gen_ab.eval()(x) for n in nets]
        got = ens(x)
        for field in ("y", "mask", "cam_logit", "x_rec"):
            want = (getattr(outs[0], field) + getattr(outs[1], field)) / 2
            assert torch.allclose(getattr(got, field), want, atol=1e-6), field
        assert not torch.allclose(outs[0].mask, outs[1].mask, atol=1e-3)  # the members differ: the mean is a mean
        tta = gate_mask(ens, x, flip_tta=True)
        assert torch.allclose(tta, (gate_mask(nets[0].gen_ab, x, True) + gate_mask(nets[1].gen_ab, x, True)) / 2,
                              atol=1e-6)  # fmt: skip
        image = torch.rand(3, 40, 48)
        one = soft_mask(ens, image, 32, torch.device("cpu"))
        assert one.shape == (40, 48)
    single = CLTGeneratorEnsemble([nets[0].gen_ab])
    with torch.no_grad():
        assert torch.equal(single(x).mask, nets[0].gen_ab(x).mask)
    with pytest.raises(ConfigError, match="at least one"):
        load_weak_ensemble(nets[0], [])
    with pytest.raises(ConfigError, match="twice"):
        load_weak_ensemble(nets[0], [files[0], files[0]])
    with pytest.raises(DataError, match="missing.pt"):
        load_weak_ensemble(nets[0], [files[0], tmp_path / "missing.pt"])
    with pytest.raises(ConfigError, match="CLTGenerator"):
        CLTGeneratorEnsemble([nets[0].gen_ab, torch.nn.Linear(2, 2)])
    with pytest.raises(ConfigError, match="differ"):
        CLTGeneratorEnsemble([nets[0].gen_ab, build_cltnet(in_channels=1, ngf=8, ndf=8, n_layers_global=6).gen_ab])
    # a ckpt_path option: unset, one file, or a list of files (an ensemble); anything else is named
    from labelless.weak.workflow import load_weak_model, weight_files

    assert weight_files(None) is None and weight_files(files[0]) == [files[0]] and weight_files(tuple(files)) == files
    base = build_cltnet(ngf=8, ndf=8, n_layers_global=6)
    assert load_weak_model(base, None) is base and load_weak_model(base, [files[0]]) is base
    assert isinstance(load_weak_model(base, files), CLTGeneratorEnsemble)
    for bad in ([], [files[0], 3], 3, {"a": 1}):
        with pytest.raises(ConfigError, match="ckpt_path"):
            weight_files(bad)
