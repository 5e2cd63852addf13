"""The real-photo experiment: data bookkeeping, the --quick pipeline end to end, metrics and the defaults' checks."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from experiments.real_photos import data as D
from experiments.real_photos import defaults as Q
from experiments.real_photos import evaluate as E
from experiments.real_photos import train as T
from PIL import Image

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss.functional import contextual_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# ----------------------------------------------------------------------------- data


def test_photos_load_offline_at_half_size():
    for name in D.PHOTOS:
        stored, work = D.load_photo(name)
        assert stored.shape[0] == work.shape[0] == 3
        assert stored.shape[-2:] == (2 * work.shape[-2], 2 * work.shape[-1])
        assert float(work.min()) >= 0.0 and float(work.max()) <= 1.0
    assert not set(D.TRAIN_PHOTOS) & set(D.TEST_PHOTOS)
    with pytest.raises(ValueError, match="name must be one of"):
        D.load_photo("lena")


def test_identity_and_integer_warps_give_the_working_pixels_exactly():
    stored, work = D.load_photo("astronaut")
    assert torch.equal(D.warp_crop(stored, 40, 50, 32, D.Warp()), work[:, 40:72, 50:82])
    # a shift by whole working pixels samples the stored photo at pixel centres: exact again
    moved = D.warp_crop(stored, 40, 50, 32, D.Warp(shift=(2.0, -1.0)))
    assert torch.equal(moved, work[:, 39:71, 52:84])
    # a rotation is a real misalignment, but as sharp as the photo (rendered at 2x, box-filtered)
    turned = D.warp_crop(stored, 40, 50, 32, D.Warp(angle_deg=1.5))
    assert float((turned - work[:, 40:72, 50:82]).abs().mean()) > 0.002  # 0.0046 measured


def test_warp_reach_bounds_every_point():
    warp = D.Warp(angle_deg=-1.5, scale=0.98, shift=(2.5, -2.5))
    crop, centre = 48, (24.0, 24.0)
    corners = torch.tensor([[0.0, 0.0], [48.0, 0.0], [0.0, 48.0], [48.0, 48.0]], dtype=torch.float64)
    moved = (warp.source(corners, centre) - corners).norm(dim=-1).max()
    assert float(moved) <= warp.reach(crop) + 1e-9
    assert D.margin(crop) >= math.ceil(warp.reach(crop))


def test_training_batches_are_pure_functions_of_seed_and_step():
    a, b = D.training_batch(0, 5, 3, 24), D.training_batch(0, 5, 3, 24)
    for key in ("camera", "target", "aligned"):
        assert torch.equal(a[key], b[key]), key
        assert a[key].shape == (3, 3, 24, 24)
        assert float(a[key].min()) >= 0.0 and float(a[key].max()) <= 1.0
    assert not torch.equal(a["camera"], D.training_batch(0, 6, 3, 24)["camera"])
    assert not torch.equal(a["camera"], D.training_batch(1, 5, 3, 24)["camera"])
    # the target is misaligned (a warp of the clean crop), the camera crop is degraded
    assert float((a["target"] - a["aligned"]).abs().mean()) > 0.005
    assert float((a["camera"] - a["aligned"]).abs().mean()) > 0.02


def test_degrade_keeps_shape_and_range_and_depends_on_the_camera():
    _, work = D.load_photo("chelsea")
    clean = work[:, :40, :40]
    rng = np.random.default_rng(0)
    camera = D.random_camera(rng)
    out = D.degrade(clean, camera, 1)
    assert out.shape == clean.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, D.degrade(clean, camera, 1))
    other = dataclasses.replace(camera, gains=(1.0, 1.0, 1.0), gamma=1.0)
    assert float((D.degrade(clean, other, 1) - out).abs().mean()) > 0.01


def test_test_images_are_held_out_and_fit_the_network():
    images = D.test_images(shots=2, size=40)
    assert [im["photo"] for im in images] == [p for p in D.TEST_PHOTOS for _ in range(2)]
    for im in images:
        assert im["camera"].shape == im["truth"].shape and im["truth"].shape[-1] % 4 == 0
    assert not torch.equal(images[0]["camera"], images[1]["camera"])  # two camera draws of one photo


# ----------------------------------------------------------------------------- runs


def test_run_configurations():
    assert T.config_for("l1-aligned", 3).target == "aligned"
    assert T.config_for("cobi", 1).seed == 1
    quick = T.config_for("cobi-defaults", 0, quick=True, band_width=1.0)
    assert quick.steps == T.QUICK["steps"] and quick.max_points is None  # --quick keeps the loss settings
    assert quick.band_width == 1.0  # explicit options win over the run's settings
    with pytest.raises(ValueError, match="run must be one of"):
        T.config_for("cx-fancy", 0)
    with pytest.raises(ValueError, match="target"):
        T.PhotoConfig(target="scan").check()
    with pytest.raises(ValueError, match="crop"):
        T.PhotoConfig(crop=30).check()
    with pytest.raises(ValueError, match="unknown runs"):
        T.run_names("l1,l3")


def test_every_contextual_run_states_its_settings():
    # a run never depends on the library's defaults at the time it is trained
    for name, settings in T.ALL_RUNS.items():
        if settings["loss"] != "l1":
            assert {"loss_type", "band_width", "max_points"} <= set(settings), name
        if settings["loss"] in ("cobi", "cobi+l1"):
            assert "weight_sp" in settings, name
    assert set(T.RUNS).isdisjoint(T.ABLATIONS)


def test_table_rows_use_the_settings_the_table_states():
    recommended = {"distance": "l2", "band_width": 0.5, "max_points": 512}
    defaults = {"distance": "l2", "band_width": 0.5, "max_points": None}
    assert T.loss_settings(T.config_for("cx", 0)) == recommended
    assert T.loss_settings(T.config_for("cobi", 0)) == recommended | {"weight_sp": 1.0}
    assert T.loss_settings(T.config_for("cobi+l1", 0)) == recommended | {"weight_sp": 1.0}
    assert T.loss_settings(T.config_for("cx-defaults", 0)) == defaults
    assert T.loss_settings(T.config_for("cobi-defaults", 0)) == defaults | {"weight_sp": 1.0}
    assert E.label("cx-defaults") == "CX (library defaults)" and E.label("cx") == "CX (recommended)"
    # the earlier choices kept as candidates are what their names say
    assert T.loss_settings(T.config_for("cx-l1-512", 0)) == recommended | {"distance": "l1"}
    old = {"distance": "cosine", "band_width": 0.5, "max_points": None, "weight_sp": 0.1}
    assert T.loss_settings(T.config_for("cobi-cosine-ws0.1-all", 0)) == old


def test_library_defaults_rows_are_the_library_defaults():
    cx, cobi = ContextualLoss(patch_size=5), ContextualBilateralLoss(patch_size=5)
    library = {"distance": cx.loss_type, "band_width": cx.band_width, "max_points": cx.max_points}
    assert T.loss_settings(T.config_for("cx-defaults", 0)) == library
    library_cobi = {"distance": cobi.loss_type, "band_width": cobi.band_width, "max_points": cobi.max_points}
    assert T.loss_settings(T.config_for("cobi-defaults", 0)) == library_cobi | {"weight_sp": cobi.weight_sp}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``run.py --quick`` of the table's runs for two seeds."""
    from experiments.real_photos import run

    root = tmp_path_factory.mktemp("photos")
    argv = ["--quick", "--runs", "table", "--out", str(root / "runs"), "--report", str(root / "RESULTS.md")]
    argv += ["--no-progress"]
    return root, argv, run.main(argv)


def test_quick_run_trains_every_run_for_two_seeds_and_writes_the_report(quick_run):
    root, _, status = quick_run
    assert status == 0
    for name in T.RUNS:
        for seed in (0, 1):
            ckpt = T.card_train.load_checkpoint(T.checkpoint(root / "runs", name, seed))
            assert ckpt["step"] == T.QUICK["steps"] and ckpt["config"]["seed"] == seed
            assert all(math.isfinite(v) for _, v in ckpt["history"])
    text = (root / "RESULTS.md").read_text()
    for name in T.RUNS:
        assert f"| {E.label(name)} |" in text
    assert "| input (camera) |" in text and "(per seed)" in text
    assert "threads" in text and "wall time" in text
    with Image.open(root / "figures" / "zoom.png") as figure:
        assert figure.format == "PNG" and figure.mode == "RGB"


def test_second_quick_run_only_reevaluates(quick_run):
    from experiments.real_photos import run

    root, argv, status = quick_run
    assert status == 0
    path = T.checkpoint(root / "runs", "cx", 0)
    before = path.stat().st_mtime_ns
    assert run.main(argv) == 0
    assert path.stat().st_mtime_ns == before


def test_no_train_rescores_and_unfinished_runs_are_left_out(quick_run, tmp_path):
    from experiments.real_photos import run

    root, argv, _ = quick_run
    assert run.main([*argv, "--no-train", "--report", str(tmp_path / "R.md")]) == 0
    assert "| CoBi (library defaults) |" in (tmp_path / "R.md").read_text()
    # an interrupted checkpoint is neither scored nor counted as finished
    ckpt = T.card_train.load_checkpoint(T.checkpoint(root / "runs", "l1", 0))
    ckpt["step"] = 2
    path = T.checkpoint(tmp_path / "runs", "l1", 0)
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    assert not run._finished(tmp_path / "runs", "l1", "0", [], quick=True)
    assert run._finished(root / "runs", "l1", "0", [], quick=True)
    assert "l1" not in E.evaluate(tmp_path / "runs", ["l1"], [0], shots=1, size=48)["runs"]


def test_quick_training_lowers_the_l1_loss(quick_run):
    root, _, _ = quick_run
    ckpt = T.card_train.load_checkpoint(T.checkpoint(root / "runs", "l1", 0))
    cfg = T.PhotoConfig(**ckpt["config"])
    model = T.card_train.UNetLite(cfg.width)
    batch = D.training_batch(cfg.seed, 0, cfg.batch_size, cfg.crop)
    with torch.no_grad():
        before = float((batch["camera"] - batch["target"]).abs().mean())  # the network starts as the identity
        model.load_state_dict(ckpt["model"])
        after = float((model(batch["camera"]) - batch["target"]).abs().mean())
    assert after < before


# ----------------------------------------------------------------------------- metrics


def test_tile_psnr_and_wins():
    gen = torch.Generator().manual_seed(0)
    truth = torch.rand(3, 20, 30, generator=gen)
    pred = truth.clone()
    pred[:, :10, :10] += 0.1  # only the first 10 x 10 crop is off
    psnr = E.tile_psnr(pred, truth, tile=10)
    assert psnr.shape == (6,)
    assert psnr[0] == pytest.approx(20.0, abs=1e-5)  # MSE 0.01 (float32 inputs)
    assert (psnr[1:] == 120.0).all()  # exact crops: MSE clamped at 1e-12
    with pytest.raises(ValueError, match="smaller than one"):
        E.tile_psnr(pred, truth, tile=40)


# ----------------------------------------------------------------------------- defaults


def test_duplicate_cap_formula_holds_on_the_constructed_example():
    text, cap, expected = Q.cap_example()
    assert cap == pytest.approx(expected, abs=1e-15)
    differences = [float(row.split("|")[4]) for row in text.splitlines() if row.startswith("| l")]
    assert max(differences) < 1e-12


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_raw_patch_distances_order_shifts_of_a_photo_crop(distance):
    stored, _ = Q.load_photo("chelsea")
    losses = []
    for shift in Q.SHIFTS:
        pred, target = Q.shifted_pair(stored, 140, 200, (24, 24), shift)
        fx, fy = Q.features(pred, "patches"), Q.features(target, "patches")
        losses.append(float(contextual_loss(fx, fy, 0.5, distance)))
    assert losses[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(losses)), losses
