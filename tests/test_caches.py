"""Feature caches of the demo run: shapes and dtypes the preset implies, and their content."""

import numpy as np
import pytest
import torch

from pipeline.caches import _ahead, _clip_preprocess, _to_tensor
from pipeline.models import load_clip
from pipeline.stores import open_store
from tests.conftest import FRAME_SIZE, SMALL_DEMO

N_SAMPLES = (SMALL_DEMO["n_train_segments"] + SMALL_DEMO["n_test_segments"]) * (
    SMALL_DEMO["segment_duration_s"] // 2
)


def test_vae_latents(early_stores):
    cache = open_store(early_stores / "results/cache/vae_latents.zarr", stage="cache_vae")
    latents = cache["latents"]
    assert latents.shape == (N_SAMPLES, 6, 4, FRAME_SIZE // 8, FRAME_SIZE // 8)
    assert latents.dtype == np.float16 and latents.chunks[0] == 1
    values = latents[:20]
    assert np.isfinite(values).all() and values.std() > 0.1
    assert list(cache["segment"][:2]) == ["seg1", "seg1"] and cache["clip"][1] == 1


def test_clip_tokens(early_stores):
    cache = open_store(early_stores / "results/cache/clip_images.zarr", stage="cache_clip_images")
    tokens, embeds = cache["tokens"], cache["image_embeds"]
    assert tokens.shape == (N_SAMPLES, 2, 64, 64) and tokens.dtype == np.float16
    assert embeds.shape == (N_SAMPLES, 2, 32) and embeds.dtype == np.float16
    first = tokens[0]
    assert not np.array_equal(first[0], first[1])  # frames 2 and 3 of a clip differ
    # the same frame gives the same tokens: recompute frame 2 of clip 0 directly
    model, _ = load_clip(early_stores / "resources/models/tiny/clip")
    frame = open_store(early_stores / "results/frames/seg1.zarr")["frames"][0, 2]
    with torch.no_grad():
        _, again = model.visual(
            _clip_preprocess(_to_tensor(frame[None], "cpu", torch.float32), model)
        )
    np.testing.assert_array_equal(again[0].numpy().astype(np.float16), first[0])


def test_captions_and_their_embeddings(early_stores):
    captions = open_store(early_stores / "results/cache/captions.zarr", stage="cache_captions")
    text = captions["captions"][:]
    assert text.shape == (N_SAMPLES, 2)
    assert all(isinstance(t, str) and t.strip() for t in text.ravel())
    embeds = open_store(early_stores / "results/cache/clip_text.zarr", stage="cache_clip_text")
    assert embeds["text_embeds"].shape == (N_SAMPLES, 2, 32)
    assert embeds["text_embeds"].dtype == np.float16


def test_tiny_vae_was_fitted(early_stores):
    import json

    meta = json.loads((early_stores / "resources/models/tiny/vae/metadata.json").read_text())
    assert meta["reconstruction_ssim"] > meta["reconstruction_ssim_unfitted"]


def test_prefetch_keeps_order_and_raises_producer_errors():
    def produce(fail_at=None):
        for i in range(7):
            if i == fail_at:
                raise ValueError(f"bad batch {i}")
            yield i

    assert list(_ahead(produce(), 2)) == list(_ahead(produce(), 0)) == list(range(7))
    seen = []
    with pytest.raises(ValueError, match="bad batch 4"):
        for item in _ahead(produce(fail_at=4), 2):
            seen.append(item)
    assert seen == [0, 1, 2, 3]
