"""Where in the brain: importance methods, the ROI statistics, the mesh check and the flat maps."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
import zarr
from nibabel import cifti2
from PIL import Image

from pipeline import anatomy
from pipeline.interpretation import (
    cortex_axis,
    draw_flat_map,
    gradient_x_input,
    interpret_subject,
    permutation_p,
    ridge_importance,
    roi_table,
    scale_unit,
    spread_labels,
)
from pipeline.stores import open_store


def test_ridge_importance_is_the_mean_absolute_weight_per_voxel(rng):
    weight = rng.normal(size=(16, 5))
    weight[:, 2] *= 10
    importance = ridge_importance(weight)
    np.testing.assert_allclose(importance, np.abs(weight).mean(axis=0))
    assert np.argmax(importance) == 2
    scaled = scale_unit(importance)
    assert scaled.min() == 0 and scaled.max() == 1 and np.argmax(scaled) == 2
    assert not scale_unit(np.ones(3)).any()


def test_gradient_x_input_of_a_linear_map_is_its_closed_form(rng):
    """f(x) = W x: the gradient of ½|f|² is WᵀW x, so the saliency is |x ⊙ WᵀW x|."""
    weight = torch.from_numpy(rng.normal(size=(6, 4)))
    x = torch.from_numpy(rng.normal(size=(10, 4)))
    saliency = gradient_x_input(lambda v: v @ weight.T.float(), x.float(), batch_size=3)
    expected = np.abs(x.numpy() * (x.numpy() @ weight.numpy().T @ weight.numpy())).mean(axis=0)
    np.testing.assert_allclose(saliency, expected, rtol=1e-4)
    # a module's parameters get no gradients (at paper size they would double its memory)
    layer = torch.nn.Linear(4, 6)
    gradient_x_input(layer, x.float())
    assert all(p.grad is None for p in layer.parameters())


def test_label_permutations_find_a_shifted_region_and_not_a_random_one(rng):
    differences = rng.normal(0.0, 1.0, 400)
    shifted = np.zeros(400, bool)
    shifted[:40] = True
    differences[shifted] += 1.0
    random = rng.permutation(shifted)
    means, p = permutation_p(differences, np.stack([shifted, random]), 999, rng)
    assert means[0] > 0.8 and p[0] == pytest.approx(1 / 1000)
    assert p[1] > 0.01


def test_a_region_holding_most_voxels_is_compared_with_the_rest(rng):
    """Differences z-scored over all voxels have mean 0, so a region of 90 % of them can
    only shift a little; against the other 10 % that shift is clear."""
    differences = rng.normal(0.0, 1.0, 1000)
    large = np.arange(1000) < 900
    differences[large] += 0.4
    differences = (differences - differences.mean()) / differences.std()
    means, p = permutation_p(differences, large[None], 999, rng)
    assert 0 < means[0] < 0.1 and p[0] < 0.01


def test_an_empty_region_is_refused(rng):
    with pytest.raises(ValueError, match="without voxels"):
        permutation_p(rng.normal(size=10), np.zeros((1, 10), bool), 99, rng)


def _planted(rng, n: int = 600):
    """Areas of the visual hierarchy and elsewhere; the PR weighs early areas, the SR
    object areas (plus noise)."""
    names = [a for areas in anatomy.VISUAL_AREAS.values() for a in areas] + ["PFm", "44"]
    areas = rng.choice(np.array(names, dtype=object), n)
    early = np.isin(areas, anatomy.VISUAL_AREAS["early"])
    objects = np.isin(areas, anatomy.VISUAL_AREAS["object"])
    perception = rng.normal(0, 1, n) + 1.5 * early
    semantic = rng.normal(0, 1, n) + 1.5 * objects
    return {"perception": scale_unit(perception), "semantic": scale_unit(semantic)}, areas


def test_roi_table_finds_where_each_reconstructor_weighs_and_shuffled_labels_do_not(rng):
    importance, areas = _planted(rng)
    rows = {r["roi"]: r for r in roi_table(importance, areas, permutations=999, seed=0)}
    assert rows["early"]["difference"] > 0 and rows["early"]["p"] < 0.01
    assert rows["object"]["difference"] < 0 and rows["object"]["p"] < 0.01
    assert rows["V1"]["kind"] == "area" and rows["V1"]["group"] == "early"
    assert rows["PFm"]["group"] == ""
    assert sum(r["n_selected"] for r in rows.values() if r["kind"] == "area") == len(areas)
    control = {
        r["roi"]: r
        for r in roi_table(importance, areas, permutations=999, seed=0, shuffle_labels=True)
    }
    for group in anatomy.VISUAL_AREAS:
        assert control[group]["p"] > 0.01
        assert abs(control[group]["difference"]) < abs(rows["early"]["difference"]) / 3


def test_runs_on_another_mesh_are_refused_with_the_expected_count(tmp_path):
    axis = cifti2.BrainModelAxis.from_surface(np.arange(100), 10242, "CortexLeft")
    axis += cifti2.BrainModelAxis.from_surface(np.arange(100), 10242, "CortexRight")
    series = cifti2.SeriesAxis(0, 2.0, 3)
    path = tmp_path / "run.dtseries.nii"
    cifti2.Cifti2Image(np.zeros((3, 200), np.float32), header=(series, axis)).to_filename(path)
    with pytest.raises(ValueError, match=r"run.dtseries.nii.*10242 vertices.*32492"):
        cortex_axis(path)


def test_the_flat_map_puts_v1_and_ffc_where_the_s1200_flat_mesh_has_them():
    """The drawn dots' coordinates against the GIfTI file read here with nibabel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    left, _ = anatomy.cortex_vertices()
    areas = anatomy.vertex_areas("left", left)
    v1, ffc = left[areas == "V1"][0], left[areas == "FFC"][0]
    gifti = nib.load(anatomy.data_dir() / "S1200.L.flat.32k_fs_LR.surf.gii")
    coords = gifti.agg_data("NIFTI_INTENT_POINTSET")
    fig, ax = plt.subplots()
    dots = draw_flat_map(
        ax,
        "left",
        np.array([v1, ffc]),
        np.array([0.3, 0.7]),
        vmin=0.25,
        vmax=0.75,
        border_areas=["V1", "FFC"],
    )
    np.testing.assert_allclose(dots.get_offsets(), coords[[v1, ffc], :2], rtol=1e-6)
    labels = {t.get_text() for t in ax.texts}
    assert labels == {"V1", "FFC"}
    plt.close(fig)


def test_the_area_labels_are_moved_apart_and_stay_joined_to_their_areas():
    """On the flat maps LO1-3, MT and V2/V3 lie close together: their labels are spread
    until no two rendered labels overlap, each still pointing at its area's centre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    areas = ["V1", "V2", "V3", "V4", "MT", "LO1", "LO2", "LO3", "FFC"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained", dpi=110)
    for ax, hemisphere in zip(axes, ("left", "right"), strict=True):
        draw_flat_map(
            ax, hemisphere, np.array([0]), np.array([0.5]), vmin=0, vmax=1, border_areas=areas
        )

    def overlaps(ax) -> int:
        boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in ax.texts]
        return sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])

    fig.canvas.draw()
    assert sum(overlaps(ax) for ax in axes) > 0  # the default placement: at the centres
    anchors = [[t.xy for t in ax.texts] for ax in axes]
    assert spread_labels(fig) == 0
    fig.canvas.draw()
    assert sum(overlaps(ax) for ax in axes) == 0
    assert [[t.xy for t in ax.texts] for ax in axes] == anchors
    plt.close(fig)


# --------------------------------------------------------------------------- the stage


def _folder(workspace):
    return workspace / "results/subject1/interpretation"


def test_voxel_selection_recalls_every_group_of_driven_areas(workspace):
    """Planted truth: the driven vertices of each group of visual areas are selected."""
    truth = zarr.open_group(workspace / "resources/demo/ground_truth.zarr", mode="r")
    driven = truth["subject1/driven"][:]
    group = truth["area_group"][:].astype(object)
    mask = open_store(workspace / "results/subject1/selection.zarr")["mask"][:]
    for name in anatomy.VISUAL_AREAS:
        assert mask[driven & (group == name)].mean() >= 0.9, name
    assert driven[mask].mean() >= 0.9  # precision


def _group_rows(path) -> dict[str, dict]:
    with path.open() as f:
        return {row["roi"]: row for row in csv.DictReader(f) if row["kind"] == "group"}


def test_the_ridge_weights_find_the_motion_areas_in_the_perception_reconstructor(workspace):
    """Planted truth: the motion areas carry the motion energy of the six frames, which the
    PR decodes (its targets are the clip's latents) and the SR does not (one keyframe), so
    the PR weighs them more than the SR; under shuffled area labels the same voxels do not
    differ. The small demo selects about 35 motion voxels, so the bound is p < 0.05; on
    the default demo's 50 the difference is 0.79 z with p < 0.001
    (bench/bench_tiny_training.py)."""
    rows = _group_rows(_folder(workspace) / "roi_table_ridge_weights.csv")
    motion = rows["motion"]
    assert int(motion["n_selected"]) >= 20
    assert float(motion["difference"]) > 0.3 and float(motion["p"]) < 0.05, motion
    assert float(motion["p_shuffled_labels"]) > 0.05, motion
    assert abs(float(motion["difference_shuffled_labels"])) < float(motion["difference"])


def test_the_maps_are_a_dscalar_on_the_runs_grayordinates(workspace):
    folder = _folder(workspace)
    image = nib.load(folder / "maps.dscalar.nii")
    names = list(image.header.get_axis(0).name)
    assert names[:2] == ["perception_ridge_weights", "semantic_ridge_weights"]
    assert {"selection_t", "selection_mask"} <= set(names)
    run = next((workspace / "resources/demo").rglob("*.dtseries.nii"))
    assert image.header.get_axis(1) == nib.load(run).header.get_axis(1)
    data = np.asarray(image.dataobj)
    aligned = open_store(workspace / "results/subject1/aligned.zarr")
    selected = aligned["grayordinate"][:]
    pr = data[names.index("perception_ridge_weights")]
    assert np.isfinite(pr[selected]).all() and np.isnan(np.delete(pr, selected)).all()
    assert pr[selected].min() == 0 and pr[selected].max() == 1
    store = open_store(folder / "importance.zarr")
    np.testing.assert_array_equal(store["grayordinate"][:], selected)
    for name in names:
        assert (folder / f"flatmap_{name}.png").stat().st_size > 10_000, name


def test_the_reports_interpretation_section_is_drawn(workspace, tmp_path):
    from tests.test_evaluation import _chromium

    text = (workspace / "results/report/index.html").read_text()
    start, end = text.index('<section id="interpretation">'), text.index("</section>")
    section = text[start : end + len("</section>")]
    assert section.count('<figure class="flatmap">') == 2 * 2 + 2
    style = text[text.index("<style>") : text.index("</style>") + len("</style>")]
    page = tmp_path / "interpretation.html"
    page.write_text(f"<!DOCTYPE html><html><head>{style}</head><body>{section}</body></html>")
    console = _chromium(page.as_uri(), tmp_path / "shot.png", height=1600)
    assert console == [], console
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
    # flat maps: dark sheets and coloured dots over most of the first screen
    assert (shot.min(axis=-1) < 200).mean() > 0.1
    assert shot.std() > 30


def test_an_unknown_border_area_is_named_before_anything_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"border_areas: \['V9'\]"):
        interpret_subject(
            *(tmp_path / n for n in ("pr", "sr", "aligned", "selection", "run", "out")),
            methods=["ridge_weights"],
            border_areas=["V1", "V9"],
        )
    assert not (tmp_path / "out").exists()
