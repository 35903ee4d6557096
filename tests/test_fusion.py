"""Multi-fMRI fusion: the pair classifier on constructed embeddings and the chain rule;
the workflow's fusion stages on the small demo."""

import csv
import json
from itertools import pairwise

import av
import numpy as np
import pytest
import torch

from pipeline.generation.fusion import (
    FusionSettings,
    fusion_chains,
    neighbour_pairs,
    train_fusion,
)
from pipeline.stores import open_store


def test_neighbour_pairs_stay_within_segments():
    segments = ["b", "a", "a", "b", "a"]
    clips = [0, 1, 0, 1, 2]
    pairs = neighbour_pairs(segments, clips)
    named = {(segments[i], clips[i], clips[j]) for i, j in pairs}
    assert named == {("a", 0, 1), ("a", 1, 2), ("b", 0, 1)}


def test_chains_follow_the_same_flags_and_never_exceed_three_clips():
    pairs = neighbour_pairs(["s"] * 10, range(10))
    chains = fusion_chains(np.ones(9, bool), pairs, 10)
    assert chains == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    same = np.array([1, 0, 1, 1, 1, 0, 0, 1, 1], bool)
    assert fusion_chains(same, pairs, 10) == [[0, 1], [2, 3, 4], [5], [6], [7, 8, 9]]
    assert fusion_chains(np.zeros(9, bool), pairs, 10) == [[i] for i in range(10)]
    assert fusion_chains(np.ones(9, bool), pairs, 10, max_chain=2)[0] == [0, 1]
    with pytest.raises(ValueError, match="max_chain"):
        fusion_chains(same, pairs, 10, max_chain=0)


def _sequence(rng, centroids, n, stay=0.6, noise=0.3):
    """Clips whose class persists with probability ``stay``; embeddings around class centroids."""
    classes = [int(rng.integers(len(centroids)))]
    for _ in range(n - 1):
        classes.append(classes[-1] if rng.random() < stay else int(rng.integers(len(centroids))))
    classes = np.array(classes)
    embeds = centroids[classes] + noise * rng.normal(size=(n, centroids.shape[1]))
    return torch.tensor(embeds, dtype=torch.float32), classes


def _expected_chains(classes):
    pairs = neighbour_pairs(["s"] * len(classes), range(len(classes)))
    return fusion_chains(classes[pairs[:, 0]] == classes[pairs[:, 1]], pairs, len(classes))


def test_classifier_chains_exactly_the_same_class_pairs_and_a_shuffled_control_cannot():
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(8, 32))
    train_x, train_c = _sequence(rng, centroids, 600)
    pairs = neighbour_pairs(["s"] * 600, range(600))
    labels = torch.tensor(train_c[pairs[:, 0]] == train_c[pairs[:, 1]])
    settings = FusionSettings(epochs=30)
    model, _ = train_fusion(train_x[pairs[:, 0]], train_x[pairs[:, 1]], labels, settings)

    test_x, test_c = _sequence(rng, centroids, 120)
    test_pairs = neighbour_pairs(["s"] * 120, range(120))
    truth = test_c[test_pairs[:, 0]] == test_c[test_pairs[:, 1]]
    with torch.no_grad():
        same = model(test_x[test_pairs[:, 0]], test_x[test_pairs[:, 1]]).numpy() > 0
    assert np.array_equal(same, truth)
    chains = fusion_chains(same, test_pairs, 120)
    assert chains == _expected_chains(test_c) and max(len(c) for c in chains) == 3

    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    control, _ = train_fusion(train_x[pairs[:, 0]], train_x[pairs[:, 1]], shuffled, settings)
    with torch.no_grad():
        guess = control(test_x[test_pairs[:, 0]], test_x[test_pairs[:, 1]]).numpy() > 0
    balanced = 0.5 * ((guess[truth]).mean() + (~guess[~truth]).mean())
    assert abs(balanced - 0.5) < 0.15  # chance


# --- the fusion stages of the workflow (the small demo) ---------------------------------


def test_fusion_classifier_beats_its_shuffled_label_control(workspace):
    config = json.loads((workspace / "results/fusion/classifier/config.json").read_text())
    validation = config["metrics"]["validation"]
    control = config["metrics"]["shuffled_label_control"]
    assert 0 < validation["positive_rate"] < 1  # both labels occur: the task is not trivial
    assert validation["auc"] >= 0.75
    assert validation["balanced_accuracy"] >= control["balanced_accuracy"] + 0.15
    assert abs(control["auc"] - 0.5) < 0.15 and abs(control["balanced_accuracy"] - 0.5) < 0.15


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_fused_videos_follow_the_chains(workspace):
    fused = workspace / "results/subject1/fused"
    store = open_store(fused / "frames.zarr", stage="fuse_videos")
    unfused = open_store(workspace / "results/subject1/videos/frames.zarr")
    segments, clips = store["segment"][:].tolist(), store["clip"][:].tolist()
    assert segments == unfused["segment"][:].tolist()
    index = {(s, c): i for i, (s, c) in enumerate(zip(segments, clips, strict=True))}
    chains = _read_csv(fused / "chains.csv")
    pairs = _read_csv(fused / "pairs.csv")
    threshold = store.attrs["provenance"]["params"]["threshold"]
    max_chain = store.attrs["provenance"]["params"]["max_chain"]

    # every test clip is in exactly one chain of consecutive clips, at most max_chain long
    members = [
        (c["segment"], k)
        for c in chains
        for k in range(int(c["first_clip"]), int(c["last_clip"]) + 1)
    ]
    assert sorted(members) == sorted(index)
    lengths = [int(c["n_clips"]) for c in chains]
    assert max(lengths) <= max_chain and max(lengths) > 1 and min(lengths) >= 1
    # a pair is joined only when called same; a same pair is left apart only at a full chain
    joined = {(p["segment"], int(p["clip_a"])) for p in pairs if p["joined"] == "True"}
    for p in pairs:
        assert (p["same"] == "True") == (float(p["score"]) >= threshold)
        if p["joined"] == "True":
            assert p["same"] == "True"
    full_ends = {
        (c["segment"], int(c["last_clip"])) for c in chains if int(c["n_clips"]) == max_chain
    }
    for p in pairs:
        key = (p["segment"], int(p["clip_a"]))
        if p["same"] == "True" and key not in joined:
            assert key in full_ends

    videos, first = store["videos"], store["first_frames"]
    for chain in chains:
        ids = [
            index[(chain["segment"], k)]
            for k in range(int(chain["first_clip"]), int(chain["last_clip"]) + 1)
        ]
        # the first clip is the unfused video; each later one starts from its predecessor's tail
        assert np.array_equal(videos[ids[0]], unfused["videos"][ids[0]])
        for previous, current in pairwise(ids):
            assert store["regenerated"][current]
            assert np.array_equal(first[current], videos[previous][-1])
            assert not np.array_equal(videos[current], unfused["videos"][current])
        with av.open(str(fused / chain["file"])) as container:
            n_frames = sum(1 for _ in container.decode(video=0))
        assert n_frames == len(ids) * videos.shape[1]
    assert sorted(c["file"] for c in chains) == sorted(p.name for p in fused.glob("*.mp4"))
