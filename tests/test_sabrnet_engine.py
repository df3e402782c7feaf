# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""SABR-Net losses (sabrnet.md §6–8, §11) and the stage trainers on a tiny network (CPU, a few iterations)."""

from __future__ import annotations

import pytest
import torch

from labelless.engines.semisup import (
    EMAModel,
    MeanTeacherTrainer,
    SegmentationTrainer,
    ShadowPretrainTrainer,
    prepare_semisup_batch,
)
from labelless.errors import ConfigError, DataError
from labelless.losses import (
    boundary_direction_loss,
    feature_matching_loss,
    gram_matrix,
    hinge_d_loss,
    masked_l1,
    segmentation_ce_dice,
    sigmoid_rampup,
)
from labelless.networks.sabrnet import build_discriminators, build_sabrnet

S = 64


def _batch(seed: int, n: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, S, S, generator=g) * 2 - 1
    y = torch.zeros(n, 1, S, S, dtype=torch.long)
    y[..., 16:48, 20:44] = 1
    m = torch.ones(n, 1, S, S)
    m[..., 8:30, 8:40] = 0
    xu = torch.rand(n, 3, S, S, generator=g) * 2 - 1
    return {"image": x, "label": y, "image_input": x * m, "image_input_shadow_mask": m, "unlabeled": xu,
            "unlabeled_input": xu * m, "unlabeled_input_shadow_mask": m,
            "label_boundary": (torch.rand(n, 1, S, S, generator=g) > 0.8).long(),
            "label_direction": torch.randint(0, 8, (n, 1, S, S), generator=g)}  # fmt: skip


@pytest.fixture(scope="module")
def data():
    return [_batch(i) for i in range(2)]


def test_masked_l1_equals_hand_computation():
    x = torch.zeros(1, 3, 4, 4)
    y = torch.zeros(1, 3, 4, 4)
    y[:, :, 0, 0] = 2.0  # a hole pixel, error 2 on 3 channels
    y[:, :, 3, 3] = 5.0  # a kept pixel: ignored
    m = torch.ones(1, 1, 4, 4)
    m[..., 0, :2] = 0  # two hole pixels
    assert float(masked_l1(x, y, m)) == pytest.approx((2.0 * 3) / (2 * 3))
    assert float(masked_l1(x, y, torch.ones(1, 1, 4, 4))) == 0.0


def test_dice_targets_are_one_hot():
    """Perfect logits give zero Dice loss with 0/1 targets (the reference's (y + 1)/2 targets could not)."""
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[:, 2:6, 2:6] = 1
    logits = torch.stack([(y == 0).float(), (y == 1).float()], 1) * 200 - 100
    ce, dice = segmentation_ce_dice(logits, y)
    assert float(ce) < 1e-6 and float(dice) < 1e-4
    _, dice_bad = segmentation_ce_dice(-logits, y)
    assert float(dice_bad) > 0.99
    with pytest.raises(DataError, match="label values"):
        segmentation_ce_dice(logits, y + 2)


def test_gram_hinge_feature_matching_rampup():
    f = torch.ones(1, 2, 3, 3)
    assert torch.allclose(gram_matrix(f), torch.full((1, 2, 2), 9.0 / 18.0))
    assert float(hinge_d_loss(real=torch.tensor([2.0]), fake=torch.tensor([-2.0]))) == 0.0
    assert float(hinge_d_loss(real=torch.tensor([0.0]))) == 1.0
    a = [[torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]] * 2
    b = [[torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 1, 1)]] * 2
    assert float(feature_matching_loss(a, b)) == pytest.approx(1.0)  # logits excluded, mean over the 2 scales
    assert sigmoid_rampup(0, 10) == pytest.approx(torch.exp(torch.tensor(-5.0)).item())
    assert sigmoid_rampup(10, 10) == 1.0 and sigmoid_rampup(3, 0) == 1.0


def test_boundary_direction_loss_uses_boundary_pixels_only():
    bt = torch.zeros(1, 4, 4, dtype=torch.long)
    dt = torch.full((1, 4, 4), 255, dtype=torch.long)
    bl = torch.zeros(1, 2, 4, 4)
    dl = torch.zeros(1, 8, 4, 4)
    _, d = boundary_direction_loss(bl, dl, bt, dt)
    assert float(d) == 0.0  # no boundary pixel
    bt[0, 1, 1], dt[0, 1, 1] = 1, 3
    dl[0, 3, 1, 1] = 50.0
    _, d = boundary_direction_loss(bl, dl, bt, dt)
    assert float(d) < 1e-6


def test_prepare_batch_errors():
    b = _batch(0)
    with pytest.raises(DataError, match="missing key 'label'"):
        prepare_semisup_batch({"image": b["image"]})
    bad = dict(b, label=b["label"][..., :32])
    with pytest.raises(DataError, match="sizes differ"):
        prepare_semisup_batch(bad)
    nan = dict(b, image=b["image"].clone())
    nan["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="non-finite"):
        prepare_semisup_batch(nan)


@pytest.mark.parametrize("profile", ["lite", "full"])
def test_pretrain_trainer_runs_and_learns_nothing_nan(data, profile):
    torch.manual_seed(0)
    net = build_sabrnet("tiny", n_classes=2, image_size=S)
    dis, d_opt = None, None
    if profile == "full":
        d_img, d_seg = build_discriminators("tiny", n_classes=2, image_size=S)
        dis = {"image": d_img, "seg": d_seg}
        d_opt = torch.optim.Adam([*d_img.parameters(), *d_seg.parameters()], 1e-4)
    before = {k: v.clone() for k, v in net.generator.state_dict().items()}
    t = ShadowPretrainTrainer("cpu", 1, data, net, torch.optim.Adam(net.generator.parameters(), 1e-4),
                              torch.optim.Adam(net.generator.parameters(), 1e-4), d_opt, dis, profile=profile,
                              warmup_steps=1, r1_interval=2, epoch_length=2, n_steps=2)  # fmt: skip
    t.run()
    out = t.state.output
    assert t.state.iteration == 2
    for key in ("loss", "hole_l1", "ce", "dice", "perceptual", "style"):
        assert torch.isfinite(torch.as_tensor(out[key])), key
    if profile == "full":
        assert "d_loss" in out and "adv" in out and "feature_matching" in out
    # Φ was frozen from the generator at the end of the warm-up (iteration 1), then the generator moved on
    phi = t.perceptual_network.state_dict()
    assert not any(p.requires_grad for p in t.perceptual_network.parameters())
    changed = [k for k, v in net.generator.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the generator did not train"
    assert any(not torch.equal(phi[k], before[k]) for k in changed)


def test_pretrain_profile_errors(data):
    net = build_sabrnet("tiny", n_classes=2, image_size=S)
    opt = torch.optim.Adam(net.generator.parameters(), 1e-4)
    with pytest.raises(ConfigError, match="profile 'full' needs"):
        ShadowPretrainTrainer("cpu", 1, data, net, opt, opt, profile="full", epoch_length=2, n_steps=2)
    with pytest.raises(ConfigError, match="unknown stage-1 loss weights"):
        ShadowPretrainTrainer("cpu", 1, data, net, opt, opt, weights={"bogus": 1.0}, epoch_length=2, n_steps=2)


def test_finetune_boundary_and_mean_teacher(data):
    torch.manual_seed(0)
    net = build_sabrnet("tiny", n_classes=2, image_size=S)
    ema = EMAModel(net, decay=0.5)
    t = SegmentationTrainer("cpu", 1, data, net, torch.optim.Adam(net.parameters(), 1e-3), boundary=True,
                            epoch_length=2, n_steps=2)  # fmt: skip
    ema.attach(t)
    t.run()
    assert {"boundary", "direction", "ce", "dice"} <= set(t.state.output)
    # the EMA moved half-way towards the network
    p_net = next(net.parameters())
    p_ema = next(ema.module.parameters())
    assert not p_ema.requires_grad and not torch.equal(p_net, p_ema)
    mt = MeanTeacherTrainer("cpu", 1, data, net, torch.optim.Adam(net.parameters(), 1e-3), teacher=ema,
                            rampup_steps=2, epoch_length=2, n_steps=2)  # fmt: skip
    mt.run()
    assert mt.state.output["consistency_weight"] == pytest.approx(1.0 * sigmoid_rampup(2, 2))
    with pytest.raises(ConfigError, match="EMAModel"):
        MeanTeacherTrainer("cpu", 1, data, net, torch.optim.Adam(net.parameters()), teacher=net, epoch_length=2,
                           n_steps=2)  # fmt: skip


def test_seeded_finetune_is_reproducible(data):
    def run() -> torch.Tensor:
        torch.manual_seed(0)
        net = build_sabrnet("tiny", n_classes=2, image_size=S)
        SegmentationTrainer("cpu", 1, data, net, torch.optim.Adam(net.parameters(), 1e-3), epoch_length=2,
                            n_steps=2).run()  # fmt: skip
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    assert torch.equal(run(), run())
