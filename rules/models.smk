"""Model presets: the tiny preset written here, the paper preset fetched from the hub."""


localrules:
    download_models,
    download_classifiers,


rule tiny_models:
    """Tiny open_clip / diffusers / transformers models in hub layouts; VAE fitted to the frames."""
    input:
        training_frame_stores,
    output:
        directory(f"{MODELS_CONFIG['root']}/tiny"),
    log:
        "logs/tiny_models/tiny_models.log",
    benchmark:
        "benchmarks/tiny_models/tiny_models.tsv"
    conda:
        "../envs/models.yaml"
    # two threads, unlike the other tiny model stages: nearly every stage waits for the
    # fitted VAE (only the classifiers and the fMRI stages, seconds, can run beside it)
    threads: 2
    params:
        models=config_values("models", "tiny_seed", "tiny_vae_steps"),
    shell:
        "python -m pipeline tiny-models --output {output:q} --frames {input:q}"
        " --seed {params.models[tiny_seed]} --vae-steps {params.models[tiny_vae_steps]}"
        " > {log:q} 2>&1"


rule download_models:
    """Fetch the paper preset from the Hugging Face hub (the only rule that uses the network)."""
    output:
        directory(f"{MODELS_CONFIG['root']}/paper"),
    log:
        "logs/download_models/download_models.log",
    conda:
        "../envs/models.yaml"
    params:
        root=output_parent,
    shell:
        "python -m pipeline download-models --preset paper --root {params.root:q} > {log:q} 2>&1"


rule tiny_classifiers:
    """Tiny frame classifier (a ViT) fitted to k-means clusters of the training frames."""
    input:
        training_frame_stores,
    output:
        directory(f"{MODELS_CONFIG['root']}/tiny-classifiers"),
    log:
        "logs/tiny_classifiers/tiny_classifiers.log",
    benchmark:
        "benchmarks/tiny_classifiers/tiny_classifiers.tsv"
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    params:
        models=config_values(
            "models", "tiny_seed", "tiny_classifier_steps", "tiny_classifier_classes"
        ),
    shell:
        "python -m pipeline tiny-classifiers --output {output:q} --frames {input:q}"
        " --seed {params.models[tiny_seed]} --steps {params.models[tiny_classifier_steps]}"
        " --classes {params.models[tiny_classifier_classes]} > {log:q} 2>&1"


rule download_classifiers:
    """Fetch the paper preset's classifiers (the ImageNet ViT of the frame metrics)."""
    output:
        directory(f"{MODELS_CONFIG['root']}/paper-classifiers"),
    log:
        "logs/download_classifiers/download_classifiers.log",
    conda:
        "../envs/models.yaml"
    params:
        root=output_parent,
    shell:
        "python -m pipeline download-models --set classifiers --preset paper"
        " --root {params.root:q} > {log:q} 2>&1"
