"""Evaluation under named protocols (pipeline/evaluation/protocols.py): the field's metrics
for our videos, their fusion, the ablation variants (paper Table 2) and folders made by other
systems; summary tables, paired tests and the HTML report."""


wildcard_constraints:
    system="|".join(["videos", "fused", *ABLATIONS]),
    ablation="|".join(ABLATIONS) or "^$",
    name="|".join(EXTERNAL) or "^$",


rule synthesize_ablation:
    """The video synthesis with some guidance switched off (evaluation.ablations)."""
    input:
        blurry="results/{subject}/perception/blurry.zarr",
        keyframes="results/{subject}/keyframes/keyframes.zarr",
        captions="results/{subject}/keyframes/captions.zarr",
        models=generation_dir(),
    output:
        directory("results/{subject}/ablations/{ablation}/videos"),
    log:
        "logs/synthesize_ablation/{subject}-{ablation}.log",
    benchmark:
        "benchmarks/synthesize_ablation/{subject}-{ablation}.tsv"
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        batch_size=config["video"]["batch_size"],
    params:
        settings=ablation_json,
        precision=precision("videos"),
    shell:
        "python -m pipeline synthesize-videos --blurry {input.blurry:q}"
        " --keyframes {input.keyframes:q} --captions {input.captions:q}"
        " --generation {input.models:q} --output {output:q} --settings {params.settings:q}"
        " --batch-size {resources.batch_size} --device {resources.device}"
        " --dtype {params.precision[videos]} > {log:q} 2>&1"


rule evaluate_videos:
    """Per-clip metrics of one system's videos against the test clips' frames under each
    protocol (evaluation.protocols; an ablation under evaluation.ablation_protocols), with a
    shuffled-pairing control; metrics.zarr, clips.csv and summary.csv."""
    input:
        videos=evaluated_videos,
        frames=test_frame_stores,
        classifiers=classifier_dir(),
        encoders=preset_dir(),
        vifi_clip=vifi_clip_input,
    output:
        directory("results/{subject}/evaluation/{system}"),
    log:
        "logs/evaluate_videos/{subject}-{system}.log",
    benchmark:
        "benchmarks/evaluate_videos/{subject}-{system}.tsv"
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        batch_size=config["evaluation"]["batch_size"],
    params:
        settings=video_evaluation_json,
        frames_dir="results/frames",
        precision=precision("evaluation"),
    shell:
        "python -m pipeline evaluate-videos --videos {input.videos:q}"
        " --frames-dir {params.frames_dir:q} --classifiers {input.classifiers:q}"
        " --clip {input.encoders:q}/clip --output {output:q} --settings {params.settings:q}"
        " --batch-size {resources.batch_size} --device {resources.device}"
        " --dtype {params.precision[evaluation]} > {log:q} 2>&1"


rule evaluate_retrieval:
    """Keyframe and fMRI retrieval top-1 among 300 (appendix C.6; MindEye2's random subsets)
    with a shuffled control."""
    input:
        semantic="results/{subject}/semantic/embeddings.zarr",
        clip_images="results/cache/clip_images.zarr",
    output:
        directory("results/{subject}/evaluation/retrieval"),
    log:
        "logs/evaluate_retrieval/{subject}.log",
    conda:
        "../envs/models.yaml"
    params:
        settings=evaluation_json(*RETRIEVAL_KEYS),
    shell:
        "python -m pipeline evaluate-retrieval --semantic {input.semantic:q}"
        " --clip-images {input.clip_images:q} --output {output:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"


rule evaluate_external:
    """A folder of reconstructions made elsewhere (evaluation.external), scored by the same
    code as ours."""
    input:
        unpack(external_inputs),
        classifiers=classifier_dir(),
        encoders=preset_dir(),
        vifi_clip=vifi_clip_input,
    output:
        directory("results/external/{name}/evaluation"),
    log:
        "logs/evaluate_external/{name}.log",
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        batch_size=config["evaluation"]["batch_size"],
    params:
        settings=evaluation_json(*EVALUATION_KEYS),
        folder=external_folder,
        frames_dir="results/frames",
        precision=precision("evaluation"),
    shell:
        "python -m pipeline evaluate-external --folder {input.folder:q}"
        " --layout {params.folder[layout]} --panels {params.folder[panels]}"
        " --gt-panel {params.folder[gt_panel]} --pred-panel {params.folder[pred_panel]}"
        " --border {params.folder[border]}"
        " --frames-dir {params.frames_dir:q} --classifiers {input.classifiers:q}"
        " --clip {input.encoders:q}/clip --output {output:q} --settings {params.settings:q}"
        " --batch-size {resources.batch_size} --device {resources.device}"
        " --dtype {params.precision[evaluation]} > {log:q} 2>&1"


rule evaluation_tables:
    """Per-subject summaries combined: paper Table 1 (videos, fused), Table 2 (ablations),
    every protocol's columns, the retrieval table and paired tests between systems, as CSV
    and Markdown."""
    input:
        evaluation_dirs,
        expand("results/external/{name}/evaluation", name=sorted(EXTERNAL)),
    output:
        directory("results/evaluation"),
    log:
        "logs/evaluation_tables/evaluation_tables.log",
    conda:
        "../envs/models.yaml"
    params:
        n_way=EVALUATION_CONFIG["n_way"],
        subjects=SUBJECTS,
        ablations=ABLATIONS,
        ablation_subjects=ABLATION_SUBJECTS,
        external=sorted(EXTERNAL),
        settings=evaluation_json("protocols", "n_way", "bootstrap_resamples", "seed"),
    shell:
        "python -m pipeline evaluation-tables --results results --output {output:q}"
        " --subjects {params.subjects:q} --ablation-subjects {params.ablation_subjects:q}"
        " --ablations {params.ablations:q} --external {params.external:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"


rule report:
    """The self-contained HTML report (tables, figures, animated clip grids, config and
    provenance) and methods.md, a methods text written from the stores' provenance; its
    figures are registered for `snakemake --report`."""
    input:
        unpack(report_inputs),
    output:
        html="results/report/index.html",
        methods="results/report/methods.md",
        selection=report(
            "results/report/figures/selection.png",
            caption="../report/selection.rst",
            category="Voxel selection",
        ),
        training=report(
            "results/report/figures/training.png",
            caption="../report/training.rst",
            category="Training",
        ),
        metrics=report(
            "results/report/figures/metrics.png",
            caption="../report/metrics.rst",
            category="Evaluation",
        ),
        grid=report(
            "results/report/figures/grid.gif",
            caption="../report/grid.rst",
            category="Evaluation",
        ),
    log:
        "logs/report/report.log",
    conda:
        "../envs/models.yaml"
    params:
        config=report_config_json,
        subjects=SUBJECTS,
        clips=EVALUATION_CONFIG["report_clips"],
        frames_dir="results/frames",
    shell:
        "python -m pipeline report --output {output.html:q} --methods {output.methods:q}"
        " --figures results/report/figures"
        " --results results --tables {input.tables:q} --subjects {params.subjects:q}"
        " --fusion {input.fusion:q} --frames-dir {params.frames_dir:q}"
        " --config {params.config:q} --clips {params.clips} > {log:q} 2>&1"
