"""Multi-fMRI fusion (paper 3.4): neighbouring test clips joined into continuous videos."""


rule train_fusion:
    """Pair classifier on CLIP embeddings of neighbouring training keyframes (shared by all
    subjects: it sees only the stimuli)."""
    input:
        clip_images="results/cache/clip_images.zarr",
        frames=training_frame_stores,
        classifiers=classifier_dir(),
    output:
        directory("results/fusion/classifier"),
    log:
        "logs/train_fusion/train_fusion.log",
    benchmark:
        "benchmarks/train_fusion/train_fusion.tsv"
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
    params:
        settings=fusion_json(),
        precision=precision("caches"),
    shell:
        "python -m pipeline train-fusion --clip-images {input.clip_images:q}"
        " --frames {input.frames:q} --classifier {input.classifiers:q}/frame_classifier"
        " --output {output:q} --settings {params.settings:q}"
        " --device {resources.device} --dtype {params.precision[caches]} > {log:q} 2>&1"


rule fuse_videos:
    """Chains of neighbouring test clips called "same", later clips regenerated from the
    previous video's tail frame; one continuous mp4 per chain, chains.csv and pairs.csv.
    """
    input:
        videos="results/{subject}/videos",
        blurry="results/{subject}/perception/blurry.zarr",
        fusion="results/fusion/classifier",
        encoders=preset_dir(),
        models=generation_dir(),
    output:
        directory("results/{subject}/fused"),
    log:
        "logs/fuse_videos/{subject}.log",
    benchmark:
        "benchmarks/fuse_videos/{subject}.tsv"
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        batch_size=config["video"]["batch_size"],
    params:
        fusion=config_values("fusion", "threshold", "max_chain"),
        precision=precision("videos"),
    shell:
        "python -m pipeline fuse-videos --videos {input.videos:q} --blurry {input.blurry:q}"
        " --clip {input.encoders:q}/clip --generation {input.models:q}"
        " --fusion {input.fusion:q} --output {output:q}"
        " --threshold {params.fusion[threshold]} --max-chain {params.fusion[max_chain]}"
        " --batch-size {resources.batch_size} --device {resources.device}"
        " --dtype {params.precision[videos]} > {log:q} 2>&1"
