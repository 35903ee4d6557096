"""Training and test-set prediction stages of the reconstructors (one subject each)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from pipeline.evaluation.metrics import retrieval_top1
from pipeline.models.loading import autocast, load_vae, resolve_device, resolve_dtype
from pipeline.reconstructors.data import cache_rows, input_identity, load_split
from pipeline.reconstructors.layers import (
    bimixco_loss,
    mix_like,
    mix_samples,
    soft_clip_loss,
)
from pipeline.reconstructors.outputs import load_into, read_model_dir, write_model_dir
from pipeline.reconstructors.perception import (
    PerceptionConfig,
    PerceptionReconstructor,
    pr_loss,
)
from pipeline.reconstructors.semantic import (
    SemanticConfig,
    SemanticReconstructor,
    fit_text_projector,
)
from pipeline.reconstructors.training import TrainSettings, remove_checkpoints, train
from pipeline.stores import atomic_output, create_array, open_store, provenance

__all__ = ["predict_perception", "predict_semantic", "train_perception", "train_semantic"]

log = logging.getLogger(__name__)

_TRAIN_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "grad_clip",
    "pct_start",
    "seed",
    "precision",
)


def _control(rows: torch.Tensor, settings: dict) -> torch.Tensor:
    """The permutation control: pair each fMRI sample with another sample's clip."""
    if not settings.get("shuffle_control"):
        return rows
    log.warning("shuffle_control: training on permuted fMRI-clip pairs (a chance-level control)")
    generator = torch.Generator().manual_seed(settings["seed"] + 1)
    return rows[torch.randperm(len(rows), generator=generator)]


def _batches(n: int, size: int):
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


def train_perception(
    aligned: str | os.PathLike,
    vae_cache: str | os.PathLike,
    output: str | os.PathLike,
    *,
    settings: dict,
    checkpoint_dir: str | os.PathLike,
    checkpoint_every: int = 1,
    device: str = "auto",
    stop_after_epoch: int | None = None,
) -> list[dict] | None:
    """Train a subject's Perception Reconstructor on its training clips.

    ``settings`` are the effective ones (:func:`pipeline.models.presets.reconstructor_settings`).
    Writes ``output`` (a model directory: weights, config, metrics.csv, loss.png)
    atomically; returns the metrics rows, or None when stopped early by
    ``stop_after_epoch`` (no output then, only the checkpoint).

    Parameters
    ----------
    aligned : str or PathLike
        The subject's aligned store: fMRI float32 (n_samples, n_voxels) per split.
    vae_cache : str or PathLike
        The ``cache_vae`` store: ``latents`` float16 (n_clips, n_frames, c, h, w), the
        targets of eq. 1.
    output : str or PathLike
        The model directory.
    settings : dict
        The effective reconstructor settings: ``architecture`` and the training keys
        (epochs, batch size, learning rate, ...), ``tau``, ``contrastive_weight``,
        ``mixup_fraction`` and ``mixup_beta``.
    checkpoint_dir : str or PathLike
        Where per-epoch checkpoints go (training resumes from them); removed on success.
    checkpoint_every : int
        Epochs between checkpoints.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    stop_after_epoch : int, optional
        Stop after this many epochs, writing only the checkpoint.

    Returns
    -------
    list of dict or None
        One metrics row per epoch (training losses and test-set scores), or None when
        stopped early.
    """
    device = resolve_device(device)
    train_split, test_split = load_split(aligned, "train"), load_split(aligned, "test")
    latents = torch.from_numpy(
        open_store(vae_cache, stage="cache_vae")["latents"][:]
    )  # float16 (clip, frame, c, h, w)
    train_rows = _control(
        torch.from_numpy(cache_rows(vae_cache, train_split, "cache_vae")), settings
    )
    test_rows = torch.from_numpy(cache_rows(vae_cache, test_split, "cache_vae"))
    config = PerceptionConfig(
        n_voxels=train_split.fmri.shape[1],
        n_frames=latents.shape[1],
        latent_shape=tuple(latents.shape[2:]),
        **settings["architecture"],
    )
    torch.manual_seed(settings["seed"])
    model = PerceptionReconstructor(config).to(device)
    log.info(
        "perception reconstructor: %s parameters, %d training / %d test samples, %s",
        f"{sum(p.numel() for p in model.parameters()):,}",
        len(train_split),
        len(test_split),
        config,
    )
    # everything the steps read lives on the device: no per-step disk reads
    fmri, latents = train_split.fmri.to(device), latents.to(device)
    train_rows, test_rows = train_rows.to(device), test_rows.to(device)
    test_fmri = test_split.fmri.to(device)
    tau, weight = settings["tau"], settings["contrastive_weight"]
    mixup_epochs = int(settings["mixup_fraction"] * settings["epochs"])
    beta = torch.distributions.Beta(settings["mixup_beta"], settings["mixup_beta"])

    def load(batch: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = batch.to(device)
        return fmri[batch], latents[train_rows[batch]].float()

    def step(data: tuple[torch.Tensor, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        x, target = data
        if epoch < mixup_epochs:
            # mixup: every sample mixed with a partner, fMRI and latents alike
            x, perm, betas, select = mix_samples(x, beta, 1.0)
            target = mix_like(target, perm, betas, select)
        return pr_loss(model(x), target, tau, weight)

    def evaluate(epoch: int) -> dict[str, float]:
        pred = torch.cat([model(test_fmri[s]).float() for s in _batches(len(test_fmri), 64)])
        target = latents[test_rows].float()
        losses = pr_loss(pred, target, tau, weight)
        forward, backward, _ = retrieval_top1(pred, target)
        return {f"test_{k}": float(v) for k, v in losses.items()} | {
            "test_latent_top1": float(forward.mean()),
            "test_fmri_top1": float(backward.mean()),
        }

    train_settings = TrainSettings(**{k: settings[k] for k in _TRAIN_KEYS})
    identity = {"settings": settings, "inputs": input_identity(aligned, vae_cache)}
    rows = train(
        model,
        load,
        step,
        len(train_split),
        train_settings,
        checkpoint_dir=checkpoint_dir,
        identity=identity,
        evaluate=evaluate,
        device=device,
        desc="perception",
        stop_after_epoch=stop_after_epoch,
        checkpoint_every=checkpoint_every,
    )
    if len(rows) < train_settings.epochs:
        log.info("stopped after epoch %d of %d", len(rows), train_settings.epochs)
        return None
    record = {
        "stage": "train_perception",
        "architecture": config.to_dict(),
        "settings": settings,
        "provenance": provenance("train_perception", settings, [str(aligned), str(vae_cache)]),
    }
    with atomic_output(output) as tmp:
        write_model_dir(tmp, model.cpu(), record, rows, "Perception Reconstructor")
    remove_checkpoints(checkpoint_dir)
    return rows


def load_perception(model_dir: str | os.PathLike, device) -> PerceptionReconstructor:
    """A trained Perception Reconstructor in eval mode."""
    record, state = read_model_dir(model_dir, "train_perception")
    architecture = record["architecture"] | {
        "latent_shape": tuple(record["architecture"]["latent_shape"])
    }
    config = PerceptionConfig(**architecture)
    return load_into(lambda: PerceptionReconstructor(config), state, model_dir).to(device).eval()


@torch.no_grad()
def predict_perception(
    model_dir: str | os.PathLike,
    aligned: str | os.PathLike,
    vae: str | os.PathLike,
    output: str | os.PathLike,
    *,
    device: str = "auto",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 32,
) -> None:
    """Predicted latents and decoded blurry frames of every test clip.

    Store: ``latents`` (sample, frame, channel, y, x) float16 (as cached: times
    the VAE's scaling factor), ``frames`` (sample, frame, y, x, channel) uint8
    RGB decoded by the VAE, ``segment`` and ``clip``.

    Parameters
    ----------
    model_dir : str or PathLike
        The ``train_perception`` model directory.
    aligned : str or PathLike
        The subject's aligned store; its ``test`` split is read.
    vae : str or PathLike
        The VAE that decodes the latents (upsampling factor f).
    output : str or PathLike
        The store (written atomically): ``frames`` are (n_clips, n_frames, f h, f w, 3).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    dtype : torch.dtype
        Precision of the model (autocast) and of the VAE.
    batch_size : int
        Samples per call.

    Raises
    ------
    StoreError
        When ``model_dir`` is not a complete ``train_perception`` model directory.
    """
    device = resolve_device(device)
    model = load_perception(model_dir, device)
    decoder = load_vae(vae, device, dtype)
    split = load_split(aligned, "test")
    n, c = len(split), model.config
    factor = 2 ** (len(decoder.config.block_out_channels) - 1)
    size = (c.latent_shape[1] * factor, c.latent_shape[2] * factor)
    params = {"model": str(model_dir), "vae": str(vae), "dtype": str(dtype)}
    with atomic_output(output) as tmp:
        store = zarr.open_group(tmp, mode="w")
        create_array(store, "segment", data=split.segment, dims=["sample"])
        create_array(store, "clip", data=split.clip.astype(np.int32), dims=["sample"])
        latents = create_array(
            store,
            "latents",
            shape=(n, c.n_frames, *c.latent_shape),
            dtype=np.float16,
            dims=["sample", "frame", "channel", "y", "x"],
            chunks=(1, c.n_frames, *c.latent_shape),
        )
        frames = create_array(
            store,
            "frames",
            shape=(n, c.n_frames, *size, 3),
            dtype=np.uint8,
            dims=["sample", "frame", "y", "x", "channel"],
            chunks=(1, c.n_frames, *size, 3),
            compression="fast",
        )
        for s in tqdm(list(_batches(n, batch_size)), desc="blurry videos", unit="batch"):
            with autocast(device, dtype):
                z = model(split.fmri[s].to(device)).float()
            latents[s] = z.cpu().numpy().astype(np.float16)
            flat = z.flatten(0, 1).to(dtype) / decoder.config.scaling_factor
            images = decoder.decode(flat).sample.float().clamp(-1, 1)
            rgb = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
            frames[s] = rgb.cpu().numpy().reshape(-1, c.n_frames, *size, 3)
        store.attrs["provenance"] = provenance(
            "predict_perception", params, [str(model_dir), str(aligned), str(vae)]
        )


def _semantic_data(aligned, clip_cache, text_cache, split_name: str):
    split = load_split(aligned, split_name)
    return (
        split,
        torch.from_numpy(cache_rows(clip_cache, split, "cache_clip_images")),
        torch.from_numpy(cache_rows(text_cache, split, "cache_clip_text")),
    )


def _phase_settings(settings: dict, phase: str) -> TrainSettings:
    """A phase's training settings; the joint schedule runs the alignment's epochs, batch
    size and learning rate."""
    keys = ("weight_decay", "grad_clip", "pct_start", "seed", "precision")
    shared = {k: settings[k] for k in keys}
    sized = "prior" if phase == "prior" else "align"
    lr = settings["lr"]
    if sized == "align" and settings.get("align_lr") is not None:
        lr = settings["align_lr"]
    return TrainSettings(
        epochs=settings[f"{sized}_epochs"],
        batch_size=settings[f"{sized}_batch_size"],
        lr=lr,
        **shared,
    )


def _soft_clip_tau(settings: dict, epoch: int, mixup_epochs: int) -> float:
    """Cosine anneal of the SoftCLIP temperature over the epochs after mixup (official)."""
    start, end = settings["soft_clip_tau"]
    span = max(1, settings["align_epochs"] - mixup_epochs)
    progress = min(1.0, (epoch - mixup_epochs) / span)
    return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2


def train_semantic(
    aligned: str | os.PathLike,
    clip_cache: str | os.PathLike,
    text_cache: str | os.PathLike,
    output: str | os.PathLike,
    *,
    settings: dict,
    checkpoint_dir: str | os.PathLike,
    checkpoint_every: int = 1,
    device: str = "auto",
    stop_after_epoch: int | None = None,
) -> list[dict] | None:
    """Train a subject's Semantic Reconstructor: alignment phase, then the diffusion prior.

    ``stop_after_epoch`` counts epochs of both phases together. Writes the
    model directory ``output`` atomically when both phases are complete.

    Parameters
    ----------
    aligned : str or PathLike
        The subject's aligned store: fMRI float32 (n_samples, n_voxels) per split.
    clip_cache : str or PathLike
        The ``cache_clip_images`` store: ``tokens`` float16 (n_clips, n_candidates,
        n_tokens, width), e.g. 256 x 1664 OpenCLIP ViT-bigG/14 tokens.
    text_cache : str or PathLike
        The ``cache_clip_text`` store: ``text_embeds`` (n_clips, n_candidates, text_dim).
    output : str or PathLike
        The model directory.
    settings : dict
        The effective reconstructor settings: ``architecture`` and the training keys
        of both phases, and the loss weights μ (``reftm_weight``) and δ
        (``prior_weight``) of eq. 4, temperatures and mixup settings.
    checkpoint_dir : str or PathLike
        Where per-epoch checkpoints go (training resumes from them); removed on success.
    checkpoint_every : int
        Epochs between checkpoints.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    stop_after_epoch : int, optional
        Stop after this many epochs, writing only the checkpoint.

    Returns
    -------
    list of dict or None
        One metrics row per epoch (training losses and test-set scores), or None when
        stopped early.
    """
    device = resolve_device(device)
    clip_store = open_store(clip_cache, stage="cache_clip_images")
    candidates = list(clip_store.attrs["candidates"])
    tokens = torch.from_numpy(clip_store["tokens"][:])  # float16 (clip, candidate, token, width)
    texts = torch.from_numpy(open_store(text_cache, stage="cache_clip_text")["text_embeds"][:])
    train_split, train_rows, train_text_rows = _semantic_data(
        aligned, clip_cache, text_cache, "train"
    )
    test_split, test_rows, test_text_rows = _semantic_data(aligned, clip_cache, text_cache, "test")
    config = SemanticConfig(
        n_voxels=train_split.fmri.shape[1],
        n_tokens=tokens.shape[2],
        width=tokens.shape[3],
        text_dim=texts.shape[2],
        **settings["architecture"],
    )
    torch.manual_seed(settings["seed"])
    model = SemanticReconstructor(config)
    # Reftm's frozen projector, fitted on the training clips' (tokens, caption) pairs of
    # every candidate frame; the mean over tokens is taken a few clips at a time
    pairs = torch.unique(torch.stack([train_rows, train_text_rows], 1), dim=0)
    mean_tokens = torch.cat([tokens[rows].float().mean(2) for rows in pairs[:, 0].split(256)])
    model.text_projection.copy_(
        fit_text_projector(mean_tokens.flatten(0, 1), texts[pairs[:, 1]].flatten(0, 1).float())
    )
    if settings.get("shuffle_control"):
        # one permutation for both, so each sample keeps a consistent (tokens, caption) pair
        perm = _control(torch.arange(len(train_rows)), settings)
        train_rows, train_text_rows = train_rows[perm], train_text_rows[perm]
    model.to(device)
    log.info(
        "semantic reconstructor: %s parameters (prior %s), %d training / %d test samples, "
        "candidates %s, %s",
        f"{sum(p.numel() for p in model.parameters()):,}",
        f"{sum(p.numel() for p in model.prior.parameters()):,}",
        len(train_split),
        len(test_split),
        candidates,
        config,
    )
    fmri, test_fmri = train_split.fmri.to(device), test_split.fmri.to(device)
    test_target = tokens[test_rows, 0].to(device).float()
    test_text = texts[test_text_rows, 0].to(device).float()
    n_cand = len(candidates)
    mixup_epochs = int(settings["mixup_fraction"] * settings["align_epochs"])
    beta = torch.distributions.Beta(settings["mixup_beta"], settings["mixup_beta"])
    mu, delta = settings["reftm_weight"], settings["prior_weight"]
    reftm_tau = settings["reftm_tau"]

    def candidate(epoch: int) -> int:
        return epoch % n_cand if settings["target_policy"] == "cycle" else 0

    def load(batch: torch.Tensor, epoch: int):
        k = candidate(epoch)
        target = tokens[train_rows[batch], k].to(device, non_blocking=True).float()
        text = texts[train_text_rows[batch], k].to(device, non_blocking=True).float()
        return fmri[batch.to(device)], target, text

    align_mu = settings.get("align_reftm_weight")
    align_mu = mu if align_mu is None else align_mu

    def contrast(x, target, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's embedding and its BiMixCo (mixup epochs) or SoftCLIP loss."""
        if epoch < mixup_epochs:
            mixed, perm, betas, select = mix_samples(x, beta, 0.5)  # MindEye's MixCo
            _, embedding = model.backbone(mixed)
            contrastive = bimixco_loss(
                embedding, target, settings["bimixco_tau"], perm, betas, select
            )
        else:
            _, embedding = model.backbone(x)
            tau = _soft_clip_tau(settings, epoch, mixup_epochs)
            contrastive = soft_clip_loss(embedding, target, tau)
        return embedding, contrastive

    def align_step(data, epoch: int) -> dict[str, torch.Tensor]:
        x, target, text = data
        embedding, contrastive = contrast(x, target, epoch)
        reftm = model.reftm_loss(embedding, text, reftm_tau)
        loss = contrastive + align_mu * reftm
        return {"loss": loss, "contrastive": contrastive, "reftm": reftm}

    def joint_step(data, epoch: int) -> dict[str, torch.Tensor]:
        # eq. 4: the prior learns from the same (in mixup epochs mixed) embedding, as in
        # MindEye2's joint training; Reftm contrasts the prior's output with the caption
        x, target, text = data
        embedding, contrastive = contrast(x, target, epoch)
        prior, pred = model.prior_loss(embedding, target)
        reftm = model.reftm_loss(pred, text, reftm_tau)
        loss = contrastive + delta * prior + mu * reftm
        return {"loss": loss, "contrastive": contrastive, "prior": prior, "reftm": reftm}

    def test_embeddings() -> torch.Tensor:
        return torch.cat(
            [model.backbone(test_fmri[s])[1].float() for s in _batches(len(test_fmri), 64)]
        )

    def align_eval(epoch: int) -> dict[str, float]:
        embedding = test_embeddings()
        keyframe, fmri_top1, _ = retrieval_top1(embedding, test_target)
        reftm = model.reftm_loss(embedding, test_text, reftm_tau)
        return {
            "test_keyframe_top1": float(keyframe.mean()),
            "test_fmri_top1": float(fmri_top1.mean()),
            "test_reftm": float(reftm),
        }

    def prior_step(data, epoch: int) -> dict[str, torch.Tensor]:
        x, target, text = data
        with torch.no_grad():
            _, embedding = model.backbone(x)
        prior, pred = model.prior_loss(embedding, target)
        reftm = model.reftm_loss(pred, text, reftm_tau)
        return {"loss": delta * prior + mu * reftm, "prior": prior, "reftm": reftm}

    def prior_eval(epoch: int) -> dict[str, float]:
        torch.manual_seed(settings["seed"])  # the same timesteps and noise every epoch
        embedding = test_embeddings()
        prior, pred = model.prior_loss(embedding, test_target)
        reftm = model.reftm_loss(pred, test_text, reftm_tau)
        return {"test_prior": float(prior), "test_reftm": float(reftm)}

    def joint_eval(epoch: int) -> dict[str, float]:
        return align_eval(epoch) | prior_eval(epoch)

    inputs = input_identity(aligned, clip_cache, text_cache)
    checkpoint_dir = Path(checkpoint_dir)
    if settings.get("schedule", "two_phase") == "joint":
        phases = (("joint", joint_step, joint_eval, (model.backbone, model.prior)),)
    else:
        phases = (
            ("align", align_step, align_eval, (model.backbone,)),
            ("prior", prior_step, prior_eval, (model.prior,)),
        )
    all_rows: list[dict] = []
    remaining = stop_after_epoch
    for phase, step, evaluate, trainable in phases:
        model.requires_grad_(False)
        for part in trainable:
            part.requires_grad_(True)
        phase_settings = _phase_settings(settings, phase)
        rows = train(
            model,
            load,
            step,
            len(train_split),
            phase_settings,
            checkpoint_dir=checkpoint_dir / phase,
            identity={"settings": settings, "inputs": inputs, "phase": phase},
            evaluate=evaluate,
            device=device,
            desc=f"semantic {phase}",
            stop_after_epoch=remaining,
            checkpoint_every=checkpoint_every,
        )
        all_rows += [{"phase": phase} | row for row in rows]
        if len(rows) < phase_settings.epochs:
            log.info("stopped in phase %s after epoch %d", phase, len(rows))
            return None
        if remaining is not None:
            remaining -= len(rows)
            if remaining <= 0 and phase == "align":
                return None
    record = {
        "stage": "train_semantic",
        "architecture": config.to_dict(),
        "candidates": candidates,
        "settings": settings,
        "provenance": provenance(
            "train_semantic", settings, [str(aligned), str(clip_cache), str(text_cache)]
        ),
    }
    with atomic_output(output) as tmp:
        write_model_dir(tmp, model.cpu(), record, all_rows, "Semantic Reconstructor")
    remove_checkpoints(checkpoint_dir)
    return all_rows


def load_semantic(model_dir: str | os.PathLike, device) -> SemanticReconstructor:
    """A trained Semantic Reconstructor in eval mode."""
    record, state = read_model_dir(model_dir, "train_semantic")
    config = SemanticConfig(**record["architecture"])
    return load_into(lambda: SemanticReconstructor(config), state, model_dir).to(device).eval()


@torch.no_grad()
def predict_semantic(
    model_dir: str | os.PathLike,
    aligned: str | os.PathLike,
    clip_cache: str | os.PathLike,
    output: str | os.PathLike,
    *,
    steps: int,
    guidance: float,
    seed: int,
    device: str = "auto",
    dtype: str = "float32",
    batch_size: int = 32,
) -> dict[str, float]:
    """fMRI embeddings and prior-reconstructed CLIP tokens of every test clip.

    Store: ``fmri_embeds`` and ``prior_embeds`` (sample, token, width) float16,
    ``segment``, ``clip``; attribute ``retrieval``: top-1 keyframe and fMRI
    retrieval of both against the cached tokens of the first candidate frame.

    Parameters
    ----------
    model_dir : str or PathLike
        The ``train_semantic`` model directory.
    aligned : str or PathLike
        The subject's aligned store; its ``test`` split is read.
    clip_cache : str or PathLike
        The ``cache_clip_images`` store (retrieval targets: the first candidate's tokens).
    output : str or PathLike
        The store (written atomically).
    steps : int
        Prior sampling steps.
    guidance : float
        Classifier-free guidance scale of the prior; 1 for none.
    seed : int
        Seed of the prior's sampling noise.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    dtype : str
        Autocast precision name, e.g. ``float32`` or ``bfloat16``.
    batch_size : int
        Samples per call.

    Returns
    -------
    dict of str to float
        Test-set top-1 retrieval, in [0, 1], within parts of at most 300 clips:
        ``{fmri_embeds,prior_embeds}_{keyframe,fmri}_top1``.

    Raises
    ------
    StoreError
        When ``model_dir`` is not a complete ``train_semantic`` model directory.
    """
    device = resolve_device(device)
    compute = resolve_dtype(dtype, device)
    model = load_semantic(model_dir, device)
    split = load_split(aligned, "test")
    rows = cache_rows(clip_cache, split, "cache_clip_images")
    target = torch.from_numpy(
        open_store(clip_cache, stage="cache_clip_images")["tokens"].oindex[rows, 0]
    ).float()
    c = model.config
    generator = torch.Generator().manual_seed(seed)
    embeds, priors = [], []
    for s in tqdm(list(_batches(len(split), batch_size)), desc="prior samples", unit="batch"):
        with autocast(device, compute):
            _, embedding = model.backbone(split.fmri[s].to(device))
            prior = model.sample(embedding, steps, guidance, generator)
        embeds.append(embedding.float().cpu())
        priors.append(prior.float().cpu())
    embeds, priors = torch.cat(embeds), torch.cat(priors)
    retrieval = {}
    for name, values in (("fmri_embeds", embeds), ("prior_embeds", priors)):
        keyframe, fmri_top1, _ = retrieval_top1(values, target)
        retrieval |= {
            f"{name}_keyframe_top1": float(keyframe.mean()),
            f"{name}_fmri_top1": float(fmri_top1.mean()),
        }
    log.info("test retrieval (chance %.4f): %s", 1 / min(300, len(split)), retrieval)
    params = {
        "model": str(model_dir),
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "dtype": dtype,
    }
    with atomic_output(output) as tmp:
        store = zarr.open_group(tmp, mode="w")
        create_array(store, "segment", data=split.segment, dims=["sample"])
        create_array(store, "clip", data=split.clip.astype(np.int32), dims=["sample"])
        for name, values in (("fmri_embeds", embeds), ("prior_embeds", priors)):
            create_array(
                store,
                name,
                data=values.numpy().astype(np.float16),
                dims=["sample", "token", "width"],
                chunks=(1, c.n_tokens, c.width),
            )
        store.attrs["retrieval"] = retrieval
        store.attrs["chance"] = 1 / min(300, len(split))
        store.attrs["provenance"] = provenance(
            "predict_semantic", params, [str(model_dir), str(aligned), str(clip_cache)]
        )
    return retrieval
