"""Named evaluation protocols: what each system's own evaluation code computes.

The field's papers report numbers that their own scripts print, and the
scripts differ: which frames they compare, how they resize, which CLIP model
scores CLIP-pcc, which SSIM they call, how they cut a side-by-side GIF into
its panels, and what the ± beside an N-way accuracy is. A :class:`Protocol`
fixes every one of these choices, so that one evaluator gives, for any set of
reconstructions, the number each system's code would print (``mindvideo``,
``neurons``, ``mind_animator``, ``mindeye2``) and our corrected one
(``neuroclips``).

Every column the evaluation writes is named ``{protocol}.{metric}``; the
metric names carry the variant (:mod:`pipeline.evaluation.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "ablation_protocols",
    "main_protocol",
    "metric_names",
    "protocols",
]

#: N-way metric families (the classifier each uses): per video and per frame.
N_WAY_KINDS = ("video", "frame")
#: Metrics where lower is better; every other one is higher-better.
LOWER_IS_BETTER = frozenset({"epe"})


@dataclass(frozen=True)
class Protocol:
    """One system's evaluation, as its code computes it.

    ``reproduces`` names the code (repository, commit, files); ``notes`` what
    is particular to it. The other fields fix the computation:

    * ``n_way``: video and frame N-way top-1 (MinD-Video's protocol), with
      the ± each peer prints (the mean of the per-sample binomial sds);
    * ``ssim`` (variants of :func:`~pipeline.evaluation.metrics.ssim`),
      ``psnr``, ``epe``, ``hue`` (Mind-Animator's hue-pcc);
    * ``clip_pcc`` (variants), scored with ``clip_model`` (``"preset"``: the
      preset's CLIP, ViT-bigG/14 for ``paper``; otherwise a role of the
      classifier set) on ``clip_frames`` (``"generated"``: every generated
      frame; ``"compared"``: the frames compared with the ground truth), and
      zeroed where ViFi-CLIP's video similarity to the ground truth is at most
      ``clip_gate`` (when ViFi-CLIP's weights are given);
    * ``retrieval``: ``"parts"`` (consecutive parts of at most
      ``evaluation.retrieval_pool``, paper appendix C.6) or ``"subsets"``
      (MindEye2's 30 random subsets of 300);
    * ``frame_sampling`` of the generated frames onto the ground truth's (None:
      ``evaluation.frame_sampling``), ``first_frames`` (hue-pcc over only the
      first frame pairs);
    * ``size`` of the pixel metrics (None: ``evaluation.size``, else the
      prediction's), ``epe_size`` of EPE (None: ``size``), ``interpolation``
      of the resizing (``"bicubic"``: Pillow; ``"bilinear"``: OpenCV's
      ``INTER_LINEAR``; ``"torch_bilinear"``: torchvision's, in float;
      :func:`~pipeline.evaluation.evaluate.resize_frames`);
    * ``panels`` of a side-by-side file: ``"halves"`` cuts the frame into equal
      parts, grid borders included, as the peers' scripts do; ``"aligned"``
      crops each panel inside the detected grid border;
    * ``rgb_as_bgr``: EPE and hue convert RGB frames with OpenCV's BGR codes.
    """

    name: str
    reproduces: str
    notes: str = ""
    n_way: bool = False
    ssim: tuple[str, ...] = ()
    psnr: bool = False
    epe: bool = False
    hue: bool = False
    clip_pcc: tuple[str, ...] = ()
    clip_model: str | None = None
    clip_frames: str = "generated"
    clip_gate: float | None = None
    retrieval: str | None = None
    frame_sampling: str | None = None
    first_frames: int | None = None
    size: int | None = None
    epe_size: int | None = None
    interpolation: str = "bicubic"
    panels: str = "aligned"
    rgb_as_bgr: bool = False

    def video_metrics(self, n_way: list[int]) -> list[str]:
        """The per-clip metrics this protocol computes for a set of videos, in table order.

        Parameters
        ----------
        n_way : list of int
            The N of the N-way metrics, e.g. ``[2, 50]``.

        Returns
        -------
        list of str
            Metric names without the protocol prefix, e.g. ``video_2way``, ``ssim_rgb_uniform``.
        """
        names = [f"video_{n}way" for n in n_way] if self.n_way else []
        names += [f"clip_pcc_{v}" for v in self.clip_pcc]
        names += [f"frame_{n}way" for n in n_way] if self.n_way else []
        names += [f"ssim_{v}" for v in self.ssim]
        names += ["psnr"] * self.psnr + ["epe"] * self.epe + ["hue_pcc"] * self.hue
        return names

    def retrieval_metrics(self) -> list[str]:
        """The retrieval metrics this protocol computes (none without ``retrieval``).

        Returns
        -------
        list of str
            ``keyframe_top1`` and ``fmri_top1``, or empty.
        """
        return ["keyframe_top1", "fmri_top1"] if self.retrieval else []


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "neuroclips",
            reproduces="this pipeline: the paper's metrics (section 4.1, appendix C.6), corrected",
            notes=(
                "frames aligned inside a grid border; ground truth resized bicubic; CLIP-pcc of "
                "every generated frame with the preset's CLIP (adjacent, as the paper, and all "
                "pairs); EPE and hue from RGB"
            ),
            n_way=True,
            ssim=("rgb_uniform", "gray_gaussian"),
            psnr=True,
            epe=True,
            hue=True,
            clip_pcc=("adjacent", "all_pairs"),
            clip_model="preset",
            retrieval="parts",
        ),
        Protocol(
            "mindvideo",
            reproduces=(
                "jqin4749/MindVideo@5097206d93209e7b32d24169a0b81e0d1104e6d1: "
                "src/MindVideo/utils/eval_metrics.py, scripts/run_metrics.py"
            ),
            notes=(
                "N-way with 100 trials; SSIM on RGB uint8 (7 x 7 window), PSNR; side-by-side "
                "GIFs cut in halves with make_grid's border"
            ),
            n_way=True,
            ssim=("rgb_uniform",),
            psnr=True,
            interpolation="bilinear",
            panels="halves",
        ),
        Protocol(
            "neurons",
            reproduces=(
                "xmed-lab/NEURONS@4e4fd545d982747cc9e2a4af2eb0186a22eb5c84: "
                "scripts/neuroclips_video.py and its metrics"
            ),
            notes=(
                "frames 4, 6, ..., 14 of 16; SSIM of the grey image with channel_axis=-1 "
                "(mean of column SSIMs); CLIP-pcc over all frame pairs of the 6 compared "
                "frames with openai/clip-vit-large-patch14; GIFs cut in halves"
            ),
            n_way=True,
            ssim=("gray_columns",),
            psnr=True,
            clip_pcc=("all_pairs",),
            clip_model="clip_vit_l14",
            clip_frames="compared",
            frame_sampling="neurons",
            interpolation="bilinear",
            panels="halves",
        ),
        Protocol(
            "mind_animator",
            reproduces=(
                "ReedOnePeck/Mind-Animator@a5adbf3b50cc34d7b65822238119e31dc9f84209: "
                "Evaluation_Metrics/"
            ),
            notes=(
                "EPE at 512 px (OpenCV bilinear) and hue-pcc over the first 6 frame pairs, both "
                "through OpenCV's BGR codes on RGB frames; CLIP-pcc of adjacent frames with "
                "ViT-B/32, zeroed where ViFi-CLIP's similarity to the ground truth is <= 0.6"
            ),
            n_way=True,
            ssim=("rgb_uniform",),
            psnr=True,
            epe=True,
            hue=True,
            first_frames=6,
            clip_pcc=("adjacent",),
            clip_model="clip_vit_b32",
            clip_gate=0.6,
            epe_size=512,
            interpolation="bilinear",
            panels="halves",
            rgb_as_bgr=True,
        ),
        Protocol(
            "mindeye2",
            reproduces=(
                "MedARC-AI/MindEyeV2@c1847188200e075b960ad6b87333e51ea17be1b1: "
                "src/final_evaluations.ipynb, src/utils.py"
            ),
            notes=(
                "retrieval in 30 random subsets of 300 (seed 42); SSIM of the grey image, 2-D, "
                "Gaussian, at 425 px (torchvision's bilinear Resize, in float)"
            ),
            ssim=("gray_gaussian",),
            size=425,
            interpolation="torch_bilinear",
            retrieval="subsets",
        ),
    )
}


def protocols(names: list[str]) -> list[Protocol]:
    """The named protocols, in the given order; an unknown name is an error.

    Parameters
    ----------
    names : list of str
        Keys of :data:`PROTOCOLS`.

    Returns
    -------
    list of Protocol
        One per name.

    Raises
    ------
    ValueError
        For a name not in :data:`PROTOCOLS`.
    """
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown evaluation protocols {unknown}; known: {list(PROTOCOLS)}")
    return [PROTOCOLS[n] for n in names]


def metric_names(names: list[str], n_way: list[int], retrieval: bool = False) -> list[str]:
    """Every column ``{protocol}.{metric}`` that the named protocols give.

    Parameters
    ----------
    names : list of str
        Keys of :data:`PROTOCOLS`.
    n_way : list of int
        The N of the N-way metrics.
    retrieval : bool
        Give the retrieval columns instead of the video columns.

    Returns
    -------
    list of str
        The columns, protocol by protocol in table order.

    Raises
    ------
    ValueError
        For a name not in :data:`PROTOCOLS`.
    """
    return [
        f"{p.name}.{m}"
        for p in protocols(names)
        for m in (p.retrieval_metrics() if retrieval else p.video_metrics(n_way))
    ]


def main_protocol(names: list[str], n_way: list[int]) -> str:
    """The protocol of Tables 1 and 2: ``neuroclips`` if chosen, else the first that scores
    videos.

    Parameters
    ----------
    names : list of str
        The chosen protocols.
    n_way : list of int
        The N of the N-way metrics.

    Returns
    -------
    str
        The protocol's name.

    Raises
    ------
    ValueError
        For an unknown protocol name.
    """
    chosen = [p for p in protocols(names) if p.video_metrics(n_way)]
    return next((p.name for p in chosen if p.name == "neuroclips"), chosen[0].name)


def ablation_protocols(evaluation: dict) -> list[str]:
    """The protocols the ablation variants are scored under: ``ablation_protocols`` of the
    ``evaluation`` configuration, or, where it is null, the main protocol alone (the
    columns of Table 2, :func:`main_protocol`).

    Parameters
    ----------
    evaluation : dict
        The validated ``evaluation`` configuration: ``protocols``, ``n_way`` and
        ``ablation_protocols``.

    Returns
    -------
    list of str
        Protocol names, in the order of ``evaluation["protocols"]``.
    """
    chosen = evaluation["ablation_protocols"]
    if chosen is None:
        chosen = [main_protocol(evaluation["protocols"], evaluation["n_way"])]
    return [name for name in evaluation["protocols"] if name in chosen]
