"""Feature caches shared by all subjects, read from the frame stores (no second decode)."""


rule cache_vae:
    """VAE latents (times the scaling factor) of every frame of every clip."""
    input:
        frames=frame_stores,
        models=preset_dir(),
    output:
        directory("results/cache/vae_latents.zarr"),
    log:
        "logs/cache_vae/cache_vae.log",
    benchmark:
        "benchmarks/cache_vae/cache_vae.tsv"
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        batch_size=config["models"]["batch_size"],
    params:
        models=config_values("models", "preset"),
        precision=precision("caches"),
    shell:
        "python -m pipeline cache vae --frames {input.frames:q} --model {input.models:q}/vae"
        " --output {output:q} --dtype {params.precision[caches]}"
        " --device {resources.device} --batch-size {resources.batch_size}"
        " > {log:q} 2>&1"


rule cache_clip_images:
    """OpenCLIP image tokens and pooled embeddings of the keyframe candidates."""
    input:
        frames=frame_stores,
        models=preset_dir(),
    output:
        directory("results/cache/clip_images.zarr"),
    log:
        "logs/cache_clip_images/cache_clip_images.log",
    benchmark:
        "benchmarks/cache_clip_images/cache_clip_images.tsv"
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        batch_size=config["models"]["batch_size"],
    params:
        models=config_values("models", "preset"),
        precision=precision("caches"),
        keyframes=config_values("keyframes", "candidates"),
    shell:
        "python -m pipeline cache clip-images --frames {input.frames:q}"
        " --model {input.models:q}/clip --output {output:q}"
        " --candidates {params.keyframes[candidates]} --dtype {params.precision[caches]}"
        " --device {resources.device} --batch-size {resources.batch_size}"
        " > {log:q} 2>&1"


rule cache_captions:
    """BLIP-2 captions of the keyframe candidates."""
    input:
        frames=frame_stores,
        models=preset_dir(),
    output:
        directory("results/cache/captions.zarr"),
    log:
        "logs/cache_captions/cache_captions.log",
    benchmark:
        "benchmarks/cache_captions/cache_captions.tsv"
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        batch_size=config["models"]["batch_size"],
    params:
        models=config_values("models", "preset"),
        precision=precision("caches"),
        keyframes=config_values("keyframes", "candidates"),
        captions=config_values(
            "captions", "max_new_tokens", "min_new_tokens", "num_beams"
        ),
    shell:
        "python -m pipeline cache captions --frames {input.frames:q}"
        " --model {input.models:q}/captioner --output {output:q}"
        " --candidates {params.keyframes[candidates]}"
        " --max-new-tokens {params.captions[max_new_tokens]}"
        " --min-new-tokens {params.captions[min_new_tokens]}"
        " --num-beams {params.captions[num_beams]} --dtype {params.precision[caches]}"
        " --device {resources.device} --batch-size {resources.batch_size}"
        " > {log:q} 2>&1"


rule cache_clip_text:
    """OpenCLIP text embeddings of the captions."""
    input:
        captions="results/cache/captions.zarr",
        models=preset_dir(),
    output:
        directory("results/cache/clip_text.zarr"),
    log:
        "logs/cache_clip_text/cache_clip_text.log",
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
    params:
        models=config_values("models", "preset"),
        precision=precision("caches"),
    shell:
        "python -m pipeline cache clip-text --captions {input.captions:q}"
        " --model {input.models:q}/clip --output {output:q} --dtype {params.precision[caches]}"
        " --device {resources.device} > {log:q} 2>&1"
