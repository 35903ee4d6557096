"""Perception and Semantic Reconstructors: training per subject, then test-set predictions."""


rule train_perception:
    """Perception Reconstructor (fMRI to VAE latents); resumes from its last checkpoint."""
    input:
        aligned="results/{subject}/aligned.zarr",
        latents="results/cache/vae_latents.zarr",
    output:
        directory("results/{subject}/perception/model"),
    log:
        "logs/train_perception/{subject}.log",
    benchmark:
        "benchmarks/train_perception/{subject}.tsv"
    # before the stages beside it: the keyframes and every video wait for the blurry video
    priority: 5
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        checkpoint_every=config["perception"]["checkpoint_every"],
    params:
        settings=reconstructor_json("perception"),
        checkpoints="results/{subject}/checkpoints/perception",
    shell:
        "python -m pipeline train-perception --aligned {input.aligned:q}"
        " --vae-cache {input.latents:q} --output {output:q} --settings {params.settings:q}"
        " --checkpoints {params.checkpoints:q} --checkpoint-every {resources.checkpoint_every}"
        " --device {resources.device} > {log:q} 2>&1"


rule predict_perception:
    """Predicted latents and VAE-decoded blurry frames of every test clip."""
    input:
        model="results/{subject}/perception/model",
        aligned="results/{subject}/aligned.zarr",
        models=preset_dir(),
    output:
        directory("results/{subject}/perception/blurry.zarr"),
    log:
        "logs/predict_perception/{subject}.log",
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        batch_size=config["models"]["batch_size"],
    params:
        precision=precision("training"),
    shell:
        "python -m pipeline predict-perception --model-dir {input.model:q}"
        " --aligned {input.aligned:q} --vae {input.models:q}/vae --output {output:q}"
        " --dtype {params.precision[training]} --device {resources.device}"
        " --batch-size {resources.batch_size} > {log:q} 2>&1"


rule train_semantic:
    """Semantic Reconstructor: BiMixCo/SoftCLIP + Reftm alignment, then the diffusion prior."""
    input:
        aligned="results/{subject}/aligned.zarr",
        tokens="results/cache/clip_images.zarr",
        text="results/cache/clip_text.zarr",
    output:
        directory("results/{subject}/semantic/model"),
    log:
        "logs/train_semantic/{subject}.log",
    benchmark:
        "benchmarks/train_semantic/{subject}.tsv"
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        checkpoint_every=config["semantic"]["checkpoint_every"],
    params:
        settings=reconstructor_json("semantic"),
        checkpoints="results/{subject}/checkpoints/semantic",
    shell:
        "python -m pipeline train-semantic --aligned {input.aligned:q}"
        " --clip-cache {input.tokens:q} --text-cache {input.text:q} --output {output:q}"
        " --settings {params.settings:q} --checkpoints {params.checkpoints:q}"
        " --checkpoint-every {resources.checkpoint_every} --device {resources.device}"
        " > {log:q} 2>&1"


rule predict_semantic:
    """fMRI embeddings and prior-reconstructed CLIP tokens of every test clip."""
    input:
        model="results/{subject}/semantic/model",
        aligned="results/{subject}/aligned.zarr",
        tokens="results/cache/clip_images.zarr",
    output:
        directory("results/{subject}/semantic/embeddings.zarr"),
    log:
        "logs/predict_semantic/{subject}.log",
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        batch_size=config["models"]["batch_size"],
    params:
        sampling=config_values("semantic", "sampling_steps", "guidance", "seed"),
        precision=precision("training"),
    shell:
        "python -m pipeline predict-semantic --model-dir {input.model:q}"
        " --aligned {input.aligned:q} --clip-cache {input.tokens:q} --output {output:q}"
        " --steps {params.sampling[sampling_steps]} --guidance {params.sampling[guidance]}"
        " --seed {params.sampling[seed]} --dtype {params.precision[training]}"
        " --device {resources.device}"
        " --batch-size {resources.batch_size} > {log:q} 2>&1"
