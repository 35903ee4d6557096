"""A methods section written from the stores' provenance, ready to paste into a paper.

Every stage records in its output what it did: the Zarr stores under ``results/``
carry a ``provenance`` attribute (:func:`pipeline.stores.provenance`: stage,
params, the rule's params, inputs with the hub repository and commit of every
model folder read, package versions, device), and the trained models' folders
carry the same record in their ``config.json``. :func:`methods_text` reads
those records, never the configuration, and writes one paragraph per stage that
ran, in the pipeline's order, with the values it ran with, the models it used
and the papers to cite; then the software versions and the numbered references.
A stage that left no record is not mentioned.

The text is Markdown of a few constructs only (headings, paragraphs, ``**bold**``
and ``*italic*`` spans, one numbered list), which :func:`methods_html` turns into
HTML for the report, in the manner of fMRIPrep's citation boilerplate.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zarr

from pipeline.evaluation.protocols import PROTOCOLS
from pipeline.generation.registry import KEYFRAME_GENERATORS, KeyframeGeneratorEntry
from pipeline.models.presets import GENERATION
from pipeline.verify import find_stores

__all__ = [
    "MODELS",
    "PACKAGE_REFERENCES",
    "REFERENCES",
    "STAGES",
    "StageRecord",
    "methods_html",
    "methods_text",
    "stage_records",
]

log = logging.getLogger(__name__)

# -- references ---------------------------------------------------------------------------

#: Every work the text may cite: key → full citation (Markdown, ``*italic*`` venues).
REFERENCES: dict[str, str] = {
    "neuroclips": (
        "Gong Z, Bao G, Zhang Q, Wan Z, Miao D, Wang S, Zhu L, Wang C, Xu R, Hu L, Liu K, "
        "Zhang Y. NeuroClips: Towards high-fidelity and smooth fMRI-to-video reconstruction. "
        "*Advances in Neural Information Processing Systems* 37 (NeurIPS 2024). "
        "arXiv:2410.19452."
    ),
    "wen2018": (
        "Wen H, Shi J, Zhang Y, Lu K-H, Cao J, Liu Z. Neural encoding and decoding with deep "
        "learning for dynamic natural vision. *Cerebral Cortex* 28(12):4136–4160, 2018."
    ),
    "glasser2013": (
        "Glasser MF, Sotiropoulos SN, Wilson JA, Coalson TS, Fischl B, Andersson JL, Xu J, "
        "Jbabdi S, Webster M, Polimeni JR, et al. The minimal preprocessing pipelines for the "
        "Human Connectome Project. *NeuroImage* 80:105–124, 2013."
    ),
    "glasser2016": (
        "Glasser MF, Coalson TS, Robinson EC, Hacker CD, Harwell J, Yacoub E, Ugurbil K, "
        "Andersson J, Beckmann CF, Jenkinson M, Smith SM, Van Essen DC. A multi-modal "
        "parcellation of human cerebral cortex. *Nature* 536(7615):171–178, 2016."
    ),
    "mindeye": (
        "Scotti PS, Banerjee A, Goode J, Shabalin S, Nguyen A, Dempster A, Verlinde N, "
        "Yundler E, Weisberg D, Norman KA, et al. Reconstructing the mind's eye: fMRI-to-image "
        "with contrastive learning and diffusion priors. *Advances in Neural Information "
        "Processing Systems* 36 (NeurIPS 2023)."
    ),
    "mindeye2": (
        "Scotti PS, Tripathy M, Torrico Villanueva CK, Kneeland R, Chen T, Narang A, "
        "Santhirasegaran C, Xu J, Naselaris T, Norman KA, et al. MindEye2: Shared-subject "
        "models enable fMRI-to-image with 1 hour of data. *Proceedings of the 41st "
        "International Conference on Machine Learning* (ICML 2024), PMLR 235. "
        "arXiv:2403.11207."
    ),
    "mixco": (
        "Kim S, Lee G, Bae S, Yun S-Y. MixCo: Mix-up contrastive learning for visual "
        "representation. arXiv:2010.06300, 2020."
    ),
    "mixup": (
        "Zhang H, Cisse M, Dauphin YN, Lopez-Paz D. mixup: Beyond empirical risk minimization. "
        "*International Conference on Learning Representations* (ICLR 2018)."
    ),
    "infonce": (
        "van den Oord A, Li Y, Vinyals O. Representation learning with contrastive predictive "
        "coding. arXiv:1807.03748, 2018."
    ),
    "dalle2": (
        "Ramesh A, Dhariwal P, Nichol A, Chu C, Chen M. Hierarchical text-conditional image "
        "generation with CLIP latents. arXiv:2204.06125, 2022."
    ),
    "clip": (
        "Radford A, Kim JW, Hallacy C, Ramesh A, Goh G, Agarwal S, Sastry G, Askell A, "
        "Mishkin P, Clark J, et al. Learning transferable visual models from natural language "
        "supervision. *Proceedings of the 38th International Conference on Machine Learning* "
        "(ICML 2021), PMLR 139:8748–8763."
    ),
    "openclip": (
        "Ilharco G, Wortsman M, Wightman R, Gordon C, Carlini N, Taori R, Dave A, Shankar V, "
        "Namkoong H, Miller J, Hajishirzi H, Farhadi A, Schmidt L. OpenCLIP. Zenodo, 2021. "
        "doi:10.5281/zenodo.5143773."
    ),
    "cherti2023": (
        "Cherti M, Beaumont R, Wightman R, Wortsman M, Ilharco G, Gordon C, Schuhmann C, "
        "Schmidt L, Jitsev J. Reproducible scaling laws for contrastive language-image "
        "learning. *Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern "
        "Recognition* (CVPR 2023), 2818–2829."
    ),
    "laion5b": (
        "Schuhmann C, Beaumont R, Vencu R, Gordon C, Wightman R, Cherti M, Coombes T, Katta A, "
        "Mullis C, Wortsman M, et al. LAION-5B: An open large-scale dataset for training next "
        "generation image-text models. *Advances in Neural Information Processing Systems* "
        "35:25278–25294, 2022."
    ),
    "blip2": (
        "Li J, Li D, Savarese S, Hoi S. BLIP-2: Bootstrapping language-image pre-training with "
        "frozen image encoders and large language models. *Proceedings of the 40th "
        "International Conference on Machine Learning* (ICML 2023), PMLR 202:19730–19742."
    ),
    "opt": (
        "Zhang S, Roller S, Goyal N, Artetxe M, Chen M, Chen S, Dewan C, Diab M, Li X, Lin XV, "
        "et al. OPT: Open pre-trained transformer language models. arXiv:2205.01068, 2022."
    ),
    "ldm": (
        "Rombach R, Blattmann A, Lorenz D, Esser P, Ommer B. High-resolution image synthesis "
        "with latent diffusion models. *Proceedings of the IEEE/CVF Conference on Computer "
        "Vision and Pattern Recognition* (CVPR 2022), 10684–10695."
    ),
    "sdxl": (
        "Podell D, English Z, Lacey K, Blattmann A, Dockhorn T, Müller J, Penna J, Rombach R. "
        "SDXL: Improving latent diffusion models for high-resolution image synthesis. "
        "*International Conference on Learning Representations* (ICLR 2024). "
        "arXiv:2307.01952."
    ),
    "karras2022": (
        "Karras T, Aittala M, Aila T, Laine S. Elucidating the design space of diffusion-based "
        "generative models. *Advances in Neural Information Processing Systems* 35 "
        "(NeurIPS 2022)."
    ),
    "ddim": (
        "Song J, Meng C, Ermon S. Denoising diffusion implicit models. *International "
        "Conference on Learning Representations* (ICLR 2021). arXiv:2010.02502."
    ),
    "animatediff": (
        "Guo Y, Yang C, Rao A, Wang Y, Qiao Y, Lin D, Dai B. AnimateDiff: Animate your "
        "personalized text-to-image diffusion models without specific tuning. "
        "arXiv:2307.04725, 2023."
    ),
    "sparsectrl": (
        "Guo Y, Yang C, Rao A, Agrawala M, Lin D, Dai B. SparseCtrl: Adding sparse controls to "
        "text-to-video diffusion models. arXiv:2311.16933, 2023."
    ),
    "lora": (
        "Hu EJ, Shen Y, Wallis P, Allen-Zhu Z, Li Y, Wang S, Wang L, Chen W. LoRA: Low-rank "
        "adaptation of large language models. *International Conference on Learning "
        "Representations* (ICLR 2022)."
    ),
    "adamw": (
        "Loshchilov I, Hutter F. Decoupled weight decay regularization. *International "
        "Conference on Learning Representations* (ICLR 2019). arXiv:1711.05101."
    ),
    "onecycle": (
        "Smith LN, Topin N. Super-convergence: Very fast training of neural networks using "
        "large learning rates. *Artificial Intelligence and Machine Learning for Multi-Domain "
        "Operations Applications*, Proc. SPIE 11006:369–386, 2019."
    ),
    "ridge": (
        "Hoerl AE, Kennard RW. Ridge regression: Biased estimation for nonorthogonal problems. "
        "*Technometrics* 12(1):55–67, 1970."
    ),
    "vit": (
        "Dosovitskiy A, Beyer L, Kolesnikov A, Weissenborn D, Zhai X, Unterthiner T, "
        "Dehghani M, Minderer M, Heigold G, Gelly S, Uszkoreit J, Houlsby N. An image is worth "
        "16x16 words: Transformers for image recognition at scale. *International Conference "
        "on Learning Representations* (ICLR 2021)."
    ),
    "imagenet": (
        "Deng J, Dong W, Socher R, Li L-J, Li K, Fei-Fei L. ImageNet: A large-scale "
        "hierarchical image database. *Proceedings of the IEEE Conference on Computer Vision "
        "and Pattern Recognition* (CVPR 2009), 248–255."
    ),
    "videomae": (
        "Tong Z, Song Y, Wang J, Wang L. VideoMAE: Masked autoencoders are data-efficient "
        "learners for self-supervised video pre-training. *Advances in Neural Information "
        "Processing Systems* 35:10078–10093, 2022."
    ),
    "kinetics": (
        "Kay W, Carreira J, Simonyan K, Zhang B, Hillier C, Vijayanarasimhan S, Viola F, "
        "Green T, Back T, Natsev P, et al. The Kinetics human action video dataset. "
        "arXiv:1705.06950, 2017."
    ),
    "mindvideo": (
        "Chen Z, Qing J, Zhou JH. Cinematic mindscapes: High-quality video reconstruction from "
        "brain activity. *Advances in Neural Information Processing Systems* 36 (NeurIPS 2023)."
    ),
    "neurons": (
        "Wang H, Zhang Q, Wang L, Huang X, Li X. NEURONS: Emulating the human visual cortex "
        "improves fidelity and interpretability in fMRI-to-video reconstruction. "
        "arXiv:2503.11167, 2025."
    ),
    "mind_animator": (
        "Lu Y, Du C, Wang C, Zhu X, Jiang L, He H. Animate your thoughts: Decoupled "
        "reconstruction of dynamic natural vision from slow brain activity. "
        "arXiv:2405.03280, 2024."
    ),
    "ssim": (
        "Wang Z, Bovik AC, Sheikh HR, Simoncelli EP. Image quality assessment: From error "
        "visibility to structural similarity. *IEEE Transactions on Image Processing* "
        "13(4):600–612, 2004."
    ),
    "farneback": (
        "Farnebäck G. Two-frame motion estimation based on polynomial expansion. *Image "
        "Analysis* (SCIA 2003), Lecture Notes in Computer Science 2749:363–370, 2003."
    ),
    "vificlip": (
        "Rasheed H, Khattak MU, Maaz M, Khan S, Khan FS. Fine-tuned CLIP models are efficient "
        "video learners. *Proceedings of the IEEE/CVF Conference on Computer Vision and "
        "Pattern Recognition* (CVPR 2023), 6545–6554."
    ),
    "snakemake": (
        "Mölder F, Jablonski KP, Letcher B, Hall MB, Tomkins-Tinch CH, Sochat V, Forster J, "
        "Lee S, Twardziok SO, Kanitz A, Wilm A, Holtgrewe M, Rahmann S, Nahnsen S, Köster J. "
        "Sustainable data analysis with Snakemake. *F1000Research* 10:33, 2021. "
        "doi:10.12688/f1000research.29032.2."
    ),
    "pytorch": (
        "Paszke A, Gross S, Massa F, Lerer A, Bradbury J, Chanan G, Killeen T, Lin Z, "
        "Gimelshein N, Antiga L, et al. PyTorch: An imperative style, high-performance deep "
        "learning library. *Advances in Neural Information Processing Systems* 32:8024–8035, "
        "2019."
    ),
    "transformers": (
        "Wolf T, Debut L, Sanh V, Chaumond J, Delangue C, Moi A, Cistac P, Rault T, Louf R, "
        "Funtowicz M, et al. Transformers: State-of-the-art natural language processing. "
        "*Proceedings of the 2020 Conference on Empirical Methods in Natural Language "
        "Processing: System Demonstrations*, 38–45, 2020."
    ),
    "diffusers": (
        "von Platen P, Patil S, Lozhkov A, Cuenca P, Lambert N, Rasul K, Davaadorj M, Nair D, "
        "Paul S, Berman W, Xu Y, Liu S, Wolf T. Diffusers: State-of-the-art diffusion models. "
        "https://github.com/huggingface/diffusers, 2022."
    ),
    "numpy": (
        "Harris CR, Millman KJ, van der Walt SJ, Gommers R, Virtanen P, Cournapeau D, "
        "Wieser E, Taylor J, Berg S, Smith NJ, et al. Array programming with NumPy. *Nature* "
        "585:357–362, 2020."
    ),
    "scipy": (
        "Virtanen P, Gommers R, Oliphant TE, Haberland M, Reddy T, Cournapeau D, Burovski E, "
        "Peterson P, Weckesser W, Bright J, et al. SciPy 1.0: Fundamental algorithms for "
        "scientific computing in Python. *Nature Methods* 17:261–272, 2020."
    ),
    "sklearn": (
        "Pedregosa F, Varoquaux G, Gramfort A, Michel V, Thirion B, Grisel O, Blondel M, "
        "Prettenhofer P, Weiss R, Dubourg V, et al. Scikit-learn: Machine learning in Python. "
        "*Journal of Machine Learning Research* 12:2825–2830, 2011."
    ),
    "skimage": (
        "van der Walt S, Schönberger JL, Nunez-Iglesias J, Boulogne F, Warner JD, Yager N, "
        "Gouillart E, Yu T, the scikit-image contributors. scikit-image: Image processing in "
        "Python. *PeerJ* 2:e453, 2014."
    ),
    "zarr": (
        "Zarr Developers. zarr-python: chunked, compressed, N-dimensional arrays for Python. "
        "https://github.com/zarr-developers/zarr-python."
    ),
    "nibabel": (
        "NiBabel Developers. NiBabel: access a cacophony of neuro-imaging file formats. "
        "https://github.com/nipy/nibabel."
    ),
}


@dataclass(frozen=True)
class ModelCitation:
    """How the text names a hub model and what it cites for it.

    Attributes
    ----------
    name : str
        The model in words ("OpenCLIP ViT-bigG/14").
    references : tuple of str
        Keys of :data:`REFERENCES`.
    """

    name: str
    references: tuple[str, ...] = ()


#: Hub repository (as the download rules record it in ``source.json``) → its name and
#: papers. Every repository of the presets (:mod:`pipeline.models.presets`) has an entry.
MODELS: dict[str, ModelCitation] = {
    "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k": ModelCitation(
        "OpenCLIP ViT-bigG/14 trained on LAION-2B", ("clip", "openclip", "cherti2023", "laion5b")
    ),
    "lambdalabs/sd-image-variations-diffusers": ModelCitation(
        "the Stable Diffusion VAE of Stable Diffusion Image Variations", ("ldm",)
    ),
    "Salesforce/blip2-opt-2.7b": ModelCitation("BLIP-2 with OPT-2.7b", ("blip2", "opt")),
    "sd2-community/stable-diffusion-2-1-unclip": ModelCitation(
        "Stable Diffusion 2.1 unCLIP", ("ldm", "dalle2")
    ),
    "pscotti/mindeyev2": ModelCitation(
        "MindEye2's SDXL unCLIP fine-tuned on OpenCLIP ViT-bigG/14 image tokens",
        ("mindeye2", "sdxl"),
    ),
    "SG161222/Realistic_Vision_V6.0_B1_noVAE": ModelCitation(
        "Realistic Vision V6.0 B1, a Stable Diffusion 1.5 fine-tune", ("ldm",)
    ),
    "stabilityai/sd-vae-ft-mse": ModelCitation("the Stable Diffusion VAE ft-MSE", ("ldm",)),
    "guoyww/animatediff-motion-adapter-v1-5-3": ModelCitation(
        "the AnimateDiff v3 motion module", ("animatediff",)
    ),
    "guoyww/animatediff-sparsectrl-rgb": ModelCitation(
        "the SparseCtrl RGB encoder", ("sparsectrl",)
    ),
    "guoyww/animatediff-motion-lora-v1-5-3": ModelCitation(
        "the AnimateDiff v3 domain adapter (a LoRA)", ("animatediff", "lora")
    ),
    "google/vit-base-patch16-224": ModelCitation(
        "ViT-B/16 fine-tuned on ImageNet-1k", ("vit", "imagenet")
    ),
    "MCG-NJU/videomae-base-finetuned-kinetics": ModelCitation(
        "VideoMAE-Base fine-tuned on Kinetics-400", ("videomae", "kinetics")
    ),
    "openai/clip-vit-large-patch14": ModelCitation("CLIP ViT-L/14", ("clip",)),
    "openai/clip-vit-base-patch32": ModelCitation("CLIP ViT-B/32", ("clip",)),
}

#: Distribution (as :data:`pipeline.environment.KEY_PACKAGES` names it) → its reference.
PACKAGE_REFERENCES: dict[str, str] = {
    "snakemake": "snakemake",
    "torch": "pytorch",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "open-clip-torch": "openclip",
    "numpy": "numpy",
    "scipy": "scipy",
    "scikit-learn": "sklearn",
    "scikit-image": "skimage",
    "zarr": "zarr",
    "nibabel": "nibabel",
}

#: The generation roles of the video model: every role of the presets' generation folders
#: that no keyframe generator loads (the rest is the keyframe generator's model).
VIDEO_ROLES = tuple(
    dict.fromkeys(
        role
        for roles in GENERATION.values()
        for role in roles
        if role not in {entry.role for entry in KEYFRAME_GENERATORS.values()}
    )
)


def _protocol_cites(name: str) -> tuple[str, ...]:
    """The paper of the system whose evaluation code a protocol reproduces: each protocol's
    entry of :data:`REFERENCES` is keyed by the protocol's own name."""
    return (name,) if name in PROTOCOLS else ()


#: ``evaluation.frame_sampling`` → how the generated frames meet the ground truth's.
FRAME_SAMPLING = {
    "neurons": "the last generated frames at every second position (frames 4, 6, …, 14 of "
    "16 against 6, as NEURONS does)",
    "uniform": "generated frames evenly spaced over the clip",
}


# -- the records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StageRecord:
    """What one stage left: a Zarr store or a model folder, and its provenance.

    Attributes
    ----------
    path : Path
        The store or the model folder.
    label : str
        The subject the output belongs to; for outputs shared by all subjects, the
        path below ``results/``.
    provenance : dict
        The record of :func:`pipeline.stores.provenance`.
    attrs : dict
        The store's other root attributes, or the rest of the model folder's
        ``config.json``.
    """

    path: Path
    label: str
    provenance: dict
    attrs: dict = field(default_factory=dict)

    @property
    def stage(self) -> str:
        """str: the rule that wrote the output (the provenance's ``stage``; empty if absent)."""
        return self.provenance.get("stage", "")

    @property
    def params(self) -> dict:
        """dict: the stage's parameters as recorded (empty if absent)."""
        return self.provenance.get("params") or {}

    def shape(self, array: str) -> tuple[int, ...] | None:
        """The shape of array ``array`` of the store (None: no such array, or a folder).

        Parameters
        ----------
        array : str
            The array's name in the store.

        Returns
        -------
        tuple of int or None
            Its shape.
        """
        try:
            node = zarr.open_group(self.path, mode="r").get(array)
        except Exception:  # zarr raises several types for what is not a store
            return None
        return tuple(node.shape) if isinstance(node, zarr.Array) else None

    def sources(self, roles: Iterable[str] | None = None) -> dict[str, dict]:
        """Role → ``source.json`` of every model folder among the inputs (hub repository,
        revision, commit), optionally only ``roles``.

        Parameters
        ----------
        roles : iterable of str, optional
            The roles to keep; all when None.

        Returns
        -------
        dict of str to dict
            Per role, the model folder's source record.
        """
        found: dict[str, dict] = {}
        for record in self.provenance.get("inputs", []):
            if not isinstance(record, dict):
                continue
            for key, source in (record.get("models") or {}).items():
                role = Path(record["path"]).name if key in (".", "") else key
                found.setdefault(role, source)
        wanted = None if roles is None else set(roles)
        return {r: s for r, s in found.items() if wanted is None or r in wanted}


def _model_folders(results: Path) -> Iterable[Path]:
    """Every folder under ``results`` whose ``config.json`` holds a provenance record (the
    trained models), without entering stores or temporaries."""
    for folder, dirs, files in os.walk(results):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and not Path(folder, d, "zarr.json").is_file()
        )
        if "config.json" in files:
            yield Path(folder)


def _read_folder(folder: Path) -> dict | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def stage_records(results: str | os.PathLike, subjects: Iterable[str]) -> dict[str, list]:
    """Stage → its :class:`StageRecord` s under ``results``, in the pipeline's order.

    Per-subject outputs of subjects not in ``subjects`` are left out (left over from
    another configuration), and so are outputs without a provenance record.

    Parameters
    ----------
    results : str or PathLike
        The workflow's ``results/`` folder.
    subjects : iterable of str
        The run's subjects, in order.

    Returns
    -------
    dict of str to list of StageRecord
        Per stage of :data:`STAGES` that left a record, its records sorted by subject
        (in ``subjects`` order, shared outputs last), then by path.
    """
    results, subjects = Path(results), list(subjects)
    found: list[StageRecord] = []
    candidates = []
    if results.is_dir():
        for store in find_stores([results]):
            try:
                attrs = dict(zarr.open_group(store, mode="r").attrs)
            except Exception as exc:  # zarr raises several types for damaged metadata
                log.warning("methods: %s left out, unreadable (%s)", store, exc)
                continue
            candidates.append((store, attrs))
        for folder in _model_folders(results):
            config = _read_folder(folder)
            if config is not None:
                candidates.append((folder, config))
    for path, attrs in candidates:
        prov = attrs.pop("provenance", None)
        if not isinstance(prov, dict) or prov.get("stage") not in STAGES:
            continue
        first = path.relative_to(results).parts[0]
        if STAGES[prov["stage"]].per_subject:
            if first not in subjects:
                continue
            label = first
        else:
            label = path.relative_to(results).as_posix()
        found.append(StageRecord(path, label, prov, attrs))
    order = {s: i for i, s in enumerate(subjects)}
    found.sort(key=lambda r: (order.get(r.label, len(order)), r.path.as_posix()))
    return {
        stage: [r for r in found if r.stage == stage]
        for stage in STAGES
        if any(r.stage == stage for r in found)
    }


# -- wording -------------------------------------------------------------------------------

#: What the text says for a value the record lacks (a store written by an older version).
UNRECORDED = "(not recorded)"

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _number(value: Any) -> str:
    """A value as the text writes it: 13,447; 0.3; 3 × 10⁻⁵; lists joined with "and"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e6:
            return f"{int(value):,}"
        text = f"{value:g}"
        if "e" in text:
            mantissa, exponent = text.split("e")
            return f"{mantissa} × 10{str(int(exponent)).translate(_SUPERSCRIPT)}"
        return text
    if isinstance(value, list | tuple):
        return _join([_number(v) for v in value])
    if value is None:
        return UNRECORDED
    return _escape(str(value))


def _escape(text: str) -> str:
    """Free text (a prompt, a name) safe inside the Markdown this module writes."""
    return text.replace("\\", "\\\\").replace("*", "\\*")


def _join(items: list[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _percent(value: Any) -> str:
    return UNRECORDED if value is None else f"{100 * float(value):g} %"


def _dtype(value: Any) -> str:
    return UNRECORDED if value is None else str(value).removeprefix("torch.")


def _quoted(value: Any) -> str:
    return UNRECORDED if value is None else f"“{_escape(str(value))}”"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' * (n != 1)}"


class _Runs:
    """The records of one stage, and their values as text: one value when every record
    has the same, else each value with the subjects (or outputs) that have it."""

    def __init__(self, records: list[StageRecord]):
        self.records = records

    def get(self, getter: Callable[[StageRecord], Any], fmt: Callable = _number) -> str:
        groups: dict[str, tuple[Any, list[str]]] = {}
        for record in self.records:
            value = getter(record)
            key = json.dumps(value, sort_keys=True, default=str)
            groups.setdefault(key, (value, []))[1].append(record.label)
        if len(groups) == 1:
            return fmt(next(iter(groups.values()))[0])
        return _join([f"{fmt(v)} ({_join(labels)})" for v, labels in groups.values()])

    def param(self, key: str, fmt: Callable = _number) -> str:
        return self.get(lambda r: r.params.get(key), fmt)

    def attr(self, key: str, fmt: Callable = _number) -> str:
        return self.get(lambda r: r.attrs.get(key), fmt)

    def value(self, key: str, default: Any = None) -> Any:
        """The first record's raw param (to choose a wording)."""
        return self.records[0].params.get(key, default)

    def any(self, predicate: Callable[[StageRecord], bool]) -> bool:
        return any(predicate(r) for r in self.records)

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(r.label for r in self.records))

    def sources(self, roles: Iterable[str] | None = None) -> dict[str, dict]:
        roles = None if roles is None else list(roles)
        found: dict[str, dict] = {}
        for record in self.records:
            for role, source in record.sources(roles).items():
                found.setdefault(role, source)
        return found


#: A citation while the text is written: the keys between two control characters, numbered
#: once the whole text stands (:func:`_number_citations`), in the order of appearance.
_CITATION = re.compile("\x00([^\x01]*)\x01")


class _Writer:
    """Writes citations (numbered later, in order of appearance) and model names."""

    def cite(self, *keys: str) -> str:
        for key in keys:
            if key not in REFERENCES:
                raise KeyError(f"no reference {key!r} in REFERENCES")
        return "\x00" + ",".join(dict.fromkeys(keys)) + "\x01" if keys else ""

    def model(self, source: dict, references: Iterable[str] = (), cite: bool = True) -> str:
        """A hub model in words: its name, its papers (``references`` for a repository
        :data:`MODELS` does not know; none with ``cite=False``), repository and commit."""
        repo = source.get("repo") or "?"
        entry = MODELS.get(repo)
        revision, commit = source.get("revision"), source.get("commit")
        where = f"Hugging Face {'dataset' if source.get('repo_type') == 'dataset' else 'model'}"
        where += f" {_escape(repo)}"
        if commit and revision and revision != commit:
            where += f", revision {_escape(revision)}, commit {commit}"
        elif commit or revision:
            where += f", commit {commit or revision}"
        name, references = (entry.name, entry.references) if entry else ("the model", references)
        return f"{name} {self.cite(*references) if cite else ''} ({where})"

    def models(
        self,
        runs: _Runs,
        roles: Iterable[str],
        fallback: str,
        references: Iterable[str] = (),
        cite: bool = True,
    ) -> str:
        """The models of ``roles`` the stage read, or, where no hub source was recorded
        (the tiny preset), ``fallback``; either with its papers (``references``: the
        family's, for a model :data:`MODELS` does not name)."""
        references = tuple(references)
        sources = runs.sources(roles)
        if not sources:
            return f"{fallback} {self.cite(*references) if cite else ''}"
        return _join([self.model(s, references, cite) for s in sources.values()])


def _local(what: str, path: Any = None) -> str:
    where = f"{_escape(str(path))}; " if path is not None else ""
    return f"{what} written by the pipeline itself ({where}no hub source recorded)"


def _count(text: str, word: str) -> str:
    """``text`` (a number as the text writes it) and ``word``, plural unless it is 1."""
    return f"{text} {word}{'' if text == '1' else 's'}"


def _seconds(value: Any) -> str:
    return f"{_number(value)} s"


def _volumes(value: Any) -> str:
    return _count(_number(value), "volume")


def _segments(value: Any) -> str:
    return _count(_number(value), "segment")


# -- one paragraph per stage --------------------------------------------------------------


def _preprocess(w: _Writer, runs: _Runs) -> str:
    def n_runs(r: StageRecord) -> int:
        return sum(".nii" in Path(i.get("path", "")).name for i in r.provenance["inputs"])

    text = (
        f"The fMRI runs ({runs.get(n_runs)} per subject) were read as CIFTI dense time series "
        f"and reduced to their cortical surface vertices {w.cite('glasser2013')}. Each run was "
        "cut to the stimulus period plus the "
        f"{runs.param('trailing_volumes')} volumes after it (dropping at most "
        f"{runs.param('max_leading_volumes')} leading volumes), and every vertex's time series "
        f"was detrended with a polynomial of order {runs.param('detrend_order')} and z-scored, "
        f"following Wen et al. {w.cite('wen2018')}; the repetition time is "
        f"{runs.param('tr_s', _seconds)}. Vertices that were non-finite or constant in any "
        "run were excluded (a run losing more than "
        f"{runs.param('max_dropped_fraction', _percent)} of its vertices stops the analysis)."
    )
    if runs.any(lambda r: r.params.get("accept_tr_mismatch")):
        text += " Runs whose file header gives another time step were accepted."
    demo = _demo_record(runs)
    if demo is not None:
        text += (
            " The data were the pipeline's synthetic demo dataset (seed "
            f"{_number(demo.get('seed'))}): rendered videos and simulated cortical responses "
            "to them, not recorded fMRI."
        )
    return text


def _demo_record(runs: _Runs) -> dict | None:
    """The demo generator's settings, when the runs are its files (its ``ground_truth.zarr``
    lies beside the dataset it wrote)."""
    for record in runs.records:
        for entry in record.provenance.get("inputs", [])[:1]:
            for folder in list(Path(entry.get("path", "")).parents)[:8]:
                store = folder / "ground_truth.zarr"
                if (store / "zarr.json").is_file():
                    prov = zarr.open_group(store, mode="r").attrs.get("provenance", {})
                    if prov.get("stage") == "demo_dataset":
                        return prov.get("params") or {}
    return None


def _select_voxels(w: _Writer, runs: _Runs) -> str:
    def n_segments(r: StageRecord) -> int:
        return len(r.attrs.get("segments") or r.params.get("train_segments") or [])

    alternative = {"two-sided": "two-sided", "greater": "one-sided (greater than zero)"}
    counts = _join(
        [
            f"{_number(r.attrs.get('n_selected'))} of {_number(r.attrs.get('n_tested'))} "
            f"tested vertices for {r.label}"
            for r in runs.records
            if r.attrs.get("n_selected") is not None
        ]
    )
    method = runs.records[0].params.get("method", "repetition_ttest") if runs.records else ""
    if method == "roi":
        return (
            "The vertices of the HCP MMP 1.0 areas "
            f"{runs.get(lambda r: ', '.join(r.params.get('roi_areas', [])), str)} were "
            f"selected {w.cite('glasser2016')}" + (f": {counts}." if counts else ".")
        )
    if method == "encoding":
        correction = {"fdr": "Benjamini-Hochberg FDR", "bonferroni": "Bonferroni"}
        return (
            "Vertices were selected by how well simple features of the clips' frames (a 4 × 4 "
            "luminance grid, the mean colour and the motion energy) predict their response "
            f"{runs.param('shift_s', _seconds)} later: ridge regressions (penalty "
            f"{runs.param('ridge_alpha')}) fitted on {runs.param('folds')} folds of the "
            f"{runs.get(n_segments)} training segments, scored by the correlation of the "
            "held-out predictions, and tested against "
            f"{runs.param('permutations')} fits with each segment's features shifted "
            "circularly; the vertices with a "
            f"{runs.param('correction', lambda c: correction.get(c, c))}-corrected "
            f"p < {runs.param('alpha')} and a positive correlation were kept"
            + (f": {counts}." if counts else ".")
        )
    return (
        "Vertices were selected by the reliability of their responses across repetitions "
        f"{w.cite('wen2018', 'neuroclips')}: for each of the {runs.get(n_segments)} training "
        "segments, the Pearson correlation between the first two repetitions was computed per "
        "vertex over the stimulus period and Fisher z-transformed, the z values were tested "
        f"against zero with a {runs.param('alternative', lambda a: alternative.get(a, a))} "
        "one-sample t-test across segments, and the vertices with a Bonferroni-corrected "
        f"p < α = {runs.param('alpha')} were kept" + (f": {counts}." if counts else ".")
    )


def _align(w: _Writer, runs: _Runs) -> str:
    def clip(r: StageRecord) -> str:
        clip_s, tr_s = r.params.get("clip_s", r.params.get("tr_s")), r.params.get("tr_s")
        per_clip = r.attrs.get("volumes_per_clip", 1)
        if per_clip == 1:
            return f"{_seconds(clip_s)} (one TR)"
        how = {"mean": "averaged", "concat": "concatenated"}.get(r.params.get("combine"), "")
        return f"{_seconds(clip_s)} ({per_clip} TRs of {_seconds(tr_s)}, {how})"

    return (
        f"Each clip of {runs.get(clip, str)} was paired with the BOLD signal "
        f"of the selected vertices {runs.param('shift_s', _seconds)} later "
        f"({runs.attr('shift_volumes', _volumes)}), the hemodynamic delay of the paper "
        f"{w.cite('neuroclips')}; the volumes recorded after the stimulus end supply the "
        "response to the last clips. Training samples kept every repetition "
        f"({runs.get(lambda r: len(r.params.get('train_segments', [])), _segments)}); test "
        "samples were averaged over their repetitions "
        f"({runs.get(lambda r: len(r.params.get('test_segments', [])), _segments)})."
    )


def _extract_frames(w: _Writer, runs: _Runs) -> str:
    def per_clip(r: StageRecord) -> float:
        return float(r.params.get("fps", 0)) * float(r.params.get("clip_s", 0))

    def source_size(r: StageRecord) -> str:
        size = r.attrs.get("source_size") or []
        return " × ".join(map(str, size)) + " pixels" if size else "unknown size"

    return (
        f"The {_plural(len(runs.records), 'stimulus segment')} "
        f"({runs.attr('source_fps')} frames per second, {runs.get(source_size, str)}) were each "
        f"decoded once; of every clip of {runs.param('clip_s', _seconds)}, {runs.get(per_clip)} "
        f"frames ({runs.param('fps')} per second) were kept, converted to RGB and resized to "
        f"{runs.param('size')} × {runs.param('size')} pixels (FFmpeg's area interpolation)."
    )


def _cache_vae(w: _Writer, runs: _Runs) -> str:
    model = w.models(runs, ["vae"], _local("a VAE", runs.value("model")), ("ldm",))
    shape = runs.records[0].shape("latents")
    latent = f" ({' × '.join(map(str, shape[-3:]))} per frame)" if shape else ""
    return (
        f"Every frame was encoded with {model}; the latents{latent}, multiplied "
        f"by the scaling factor {runs.param('scaling_factor')}, are the Perception "
        f"Reconstructor's targets (computed in {runs.param('dtype', _dtype)})."
    )


def _cache_clip_images(w: _Writer, runs: _Runs) -> str:
    model = w.models(
        runs, ["clip"], _local("an OpenCLIP model", runs.value("model")), ("clip", "openclip")
    )
    shape = runs.records[0].shape("tokens")
    tokens = f" ({shape[-2]:,} tokens of width {shape[-1]:,})" if shape else ""
    return (
        f"Frames {runs.param('candidates')} (counted from 0) of every clip, the keyframe "
        f"candidates, were embedded with {model}: the visual "
        f"tokens after the final layer norm, without the class token and the projection{tokens}, "
        "are the Semantic Reconstructor's targets, and the pooled image embeddings the "
        f"fusion classifier's inputs (computed in {runs.param('dtype', _dtype)})."
    )


def _decoding(runs: _Runs) -> str:
    beams = runs.param("num_beams")
    search = "greedy decoding" if beams == "1" else f"beam search with {beams} beams"
    return f"{search}, {runs.param('min_new_tokens')} to {runs.param('max_new_tokens')} new tokens"


def _cache_captions(w: _Writer, runs: _Runs) -> str:
    model = w.models(runs, ["captioner"], _local("a BLIP-2 model", runs.value("model")), ("blip2",))
    return (
        f"The same frames were captioned with {model} ({_decoding(runs)}, "
        f"in {runs.param('dtype', _dtype)})."
    )


def _cache_clip_text(w: _Writer, runs: _Runs) -> str:
    model = w.models(
        runs, ["clip"], _local("an OpenCLIP model", runs.value("model")), ("clip", "openclip")
    )
    shape = runs.records[0].shape("text_embeds")
    width = f" into {shape[-1]:,} dimensions" if shape else ""
    return (
        f"The captions were embedded{width} with the text encoder of {model}; these are the "
        f"targets of the Reftm loss (paper eq. 10) {w.cite('neuroclips')}."
    )


def _architecture(r: StageRecord) -> dict:
    return r.attrs.get("architecture") or r.params.get("architecture") or {}


def _arch(runs: _Runs, key: str, fmt: Callable = _number) -> str:
    return runs.get(lambda r: _architecture(r).get(key), fmt)


def _optimiser(w: _Writer, runs: _Runs, lr: str = "lr") -> str:
    return (
        f"AdamW {w.cite('adamw')} (learning rate {runs.param(lr)}, weight decay "
        f"{runs.param('weight_decay')}) with a one-cycle schedule {w.cite('onecycle')} "
        f"({runs.param('pct_start', _percent)} warm-up), gradient norms clipped at "
        f"{runs.param('grad_clip')}, {runs.param('precision')} precision and seed "
        f"{runs.param('seed')}"
    )


def _train_perception(w: _Writer, runs: _Runs) -> str:
    shape = _arch(runs, "latent_shape", lambda s: " × ".join(map(str, s or [])))
    extension = _count(_arch(runs, "extension_blocks"), "residual block")
    blocks = _count(_arch(runs, "blocks"), "residual MLP block")
    upsampling = _count(_arch(runs, "upsamplings"), "Temporal Upsampling stage")
    text = (
        "A Perception Reconstructor (paper §3.1) was trained per subject to predict the VAE "
        f"latents of a clip's {_arch(runs, 'n_frames')} frames from its fMRI "
        f"{w.cite('neuroclips')}: an Inception Extension (width "
        f"{_arch(runs, 'extension_width')}, {extension}) "
        "turns the fMRI vector into one vector per frame, a linear layer to "
        f"{_arch(runs, 'hidden')} dimensions and {blocks} "
        f"(dropout {_arch(runs, 'dropout')}) give a coarse latent, and {upsampling} (spatial "
        "convolution and "
        f"attention, temporal self-attention over the frames with {_arch(runs, 'heads')} heads, "
        f"learnable residual mixing) reach the {shape} latent of each frame "
        f"({runs.attr('n_parameters')} parameters). The loss (eq. 1) is the mean absolute "
        f"error between predicted and true latents plus {runs.param('contrastive_weight')} "
        f"times a bidirectional InfoNCE loss {w.cite('infonce')} at temperature "
        f"τ = {runs.param('tau')}."
    )
    if runs.any(lambda r: (r.params.get("mixup_fraction") or 0) > 0):
        text += (
            f" For the first {runs.param('mixup_fraction', _percent)} of the epochs, samples "
            "were mixed in pairs, fMRI and latents alike, with weights drawn from "
            f"Beta({runs.param('mixup_beta')}, {runs.param('mixup_beta')}) {w.cite('mixup')}."
        )
    text += (
        f" Training ran for {runs.param('epochs')} epochs with batch size "
        f"{runs.param('batch_size')}, {_optimiser(w, runs)}."
    )
    if runs.any(lambda r: r.params.get("shuffle_control")):
        text += " As a permutation control, fMRI and latents were paired at random."
    return text


def _predict_perception(w: _Writer, runs: _Runs) -> str:
    model = w.models(runs, ["vae"], _local("a VAE", runs.value("vae")), ("ldm",))
    shape = runs.records[0].shape("frames")
    frames = f" of {shape[1]} frames of {shape[2]} × {shape[3]} pixels" if shape else ""
    return (
        "The trained Perception Reconstructor predicted the latents of every test clip, which "
        f"the decoder of {model} turned into blurry videos{frames} (computed in "
        f"{runs.param('dtype', _dtype)})."
    )


def _train_semantic(w: _Writer, runs: _Runs) -> str:
    def candidates(r: StageRecord) -> list:
        return r.attrs.get("candidates") or []

    cycle = runs.value("target_policy") == "cycle"
    keyframe = (
        f"frame {runs.get(candidates, lambda c: ' or '.join(map(str, c)))} of the clip, "
        "alternating by epoch as in the official code (src/train_SR.py)"
        if cycle
        else f"frame {runs.get(lambda r: (candidates(r) or [None])[0])} of the clip"
    )
    blocks = _count(_arch(runs, "blocks"), "residual MLP block")
    text = (
        "A Semantic Reconstructor (paper §3.2) was trained per subject to map the fMRI to the "
        f"{_arch(runs, 'n_tokens')} × {_arch(runs, 'width')} OpenCLIP tokens of the clip's "
        f"keyframe {w.cite('neuroclips', 'mindeye2')}, {keyframe}: a linear layer to "
        f"{_arch(runs, 'hidden')} dimensions and {blocks} "
        f"(dropout {_arch(runs, 'dropout')}) predict the tokens, with a projector head of width "
        f"{_arch(runs, 'projector_hidden')} for the contrastive losses "
        f"({runs.attr('n_parameters')} parameters with the prior). For the first "
        f"{runs.param('mixup_fraction', _percent)} of the alignment epochs the loss was BiMixCo "
        f"{w.cite('mixco', 'mindeye')}, a bidirectional contrastive loss on pairs of mixed "
        f"fMRI samples (weights from Beta({runs.param('mixup_beta')}, "
        f"{runs.param('mixup_beta')}), temperature {runs.param('bimixco_tau')}), and SoftCLIP "
        f"{w.cite('mindeye')} afterwards, its temperature annealed from "
        f"{runs.get(lambda r: (r.params.get('soft_clip_tau') or [None])[0])} to "
        f"{runs.get(lambda r: (r.params.get('soft_clip_tau') or [None, None])[-1])}. A diffusion "
        f"prior {w.cite('dalle2', 'mindeye')} (a transformer of depth "
        f"{_arch(runs, 'prior_depth')} with {_arch(runs, 'prior_heads')} heads over the tokens, "
        f"{_arch(runs, 'prior_timesteps')} diffusion timesteps, its condition dropped with "
        f"probability {_arch(runs, 'condition_drop')}) maps the fMRI embedding to reconstructed "
        "CLIP tokens under the mean squared error (eq. 9). Reftm (eq. 10) contrasts a frozen "
        "linear projection of the mean token with the OpenCLIP text embedding of the BLIP-2 "
        f"caption of the keyframe (InfoNCE, temperature {runs.param('reftm_tau')}); the "
        "projection was fitted by ridge-regularised least squares on the training clips' "
        "token and caption pairs. The terms are weighted as in eq. 4, "
        f"δ = {runs.param('prior_weight')} for the prior and μ = {runs.param('reftm_weight')} "
        "for Reftm."
    )
    align_lr = "align_lr" if runs.any(lambda r: r.params.get("align_lr") is not None) else "lr"
    if runs.value("schedule", "two_phase") == "joint":
        text += (
            f" All terms were trained jointly for {runs.param('align_epochs')} epochs with batch "
            f"size {runs.param('align_batch_size')}, {_optimiser(w, runs, align_lr)}."
        )
    else:
        mu = (
            "align_reftm_weight"
            if runs.any(lambda r: r.params.get("align_reftm_weight") is not None)
            else "reftm_weight"
        )
        text += (
            " As in the official code, the alignment was trained first "
            f"({runs.param('align_epochs')} epochs, batch size "
            f"{runs.param('align_batch_size')}, learning rate {runs.param(align_lr)}, Reftm "
            f"weight {runs.param(mu)}) and the prior afterwards with the backbone frozen "
            f"({runs.param('prior_epochs')} epochs, batch size "
            f"{runs.param('prior_batch_size')}), each with {_optimiser(w, runs)}."
        )
    if runs.any(lambda r: r.params.get("shuffle_control")):
        text += " As a permutation control, fMRI and targets were paired at random."
    return text


def _predict_semantic(w: _Writer, runs: _Runs) -> str:
    return (
        "At test time the diffusion prior was sampled from each test fMRI embedding with "
        f"{runs.param('steps')} steps, guidance scale {runs.param('guidance')} and seed "
        f"{runs.param('seed')} (in {runs.param('dtype', _dtype)})."
    )


def _fit_keyframe_embedder(w: _Writer, runs: _Runs) -> str:
    chosen = runs.get(lambda r: (r.attrs.get("metrics") or {}).get("alpha"))
    return (
        "For the keyframe generators conditioned on an image embedding, a ridge regression "
        f"{w.cite('ridge', 'sklearn')} mapped the standardised fMRI of the training samples "
        f"({runs.attr('n_train')}) to the generator's "
        f"{runs.attr('embedding_dim')}-dimensional CLIP image embedding of frame "
        f"{runs.param('frame')} of their clip, the penalty chosen by cross-validation among "
        f"{runs.param('alphas')} (chosen: {chosen})."
    )


def _generate_keyframes(w: _Writer, runs: _Runs) -> str:
    name = runs.value("generator")
    generator = KEYFRAME_GENERATORS.get(name)
    if generator is None:  # a store of a generator no longer registered
        generator = KeyframeGeneratorEntry(
            name, "", "", "", (), f"the {name} generator", "a conditioning predicted from the fMRI"
        )
    keyframe_roles = [r for r in runs.sources() if r not in VIDEO_ROLES]
    model = w.models(runs, keyframe_roles, generator.title, generator.references)
    noise = ""
    if generator.embedding_noise:
        noise = f", image-embedding noise level {runs.param('noise_level')}"
    sampler = ""
    if generator.sampler is not None:
        sampler = f" with {generator.sampler[0]} {w.cite(*generator.sampler[1])}"
    return (
        f"One keyframe per test clip was generated with {model}, conditioned on "
        f"{generator.condition_text} (β guidance, paper §3.3). Generation started from the first "
        "frame of the clip's blurry video, noised to strength "
        f"{runs.param('strength')} (img2img), and ran {runs.param('steps')} sampling steps"
        f"{sampler} at classifier-free guidance scale {runs.param('guidance_scale')}{noise}; "
        f"each clip's noise came from its own seed, derived from seed {runs.param('seed')}."
    )


def _caption_keyframes(w: _Writer, runs: _Runs) -> str:
    model = w.models(runs, ["captioner"], _local("a BLIP-2 model", runs.value("model")), ("blip2",))
    return (
        f"Every keyframe was captioned with {model} ({_decoding(runs)}); "
        "the caption is the video model's prompt (γ guidance, paper §3.3)."
    )


def _ablation(record: StageRecord) -> str | None:
    """The ablation name of a videos store under ``{subject}/ablations/{name}/``."""
    parts = record.path.parts
    if "ablations" in parts and parts.index("ablations") + 1 < len(parts):
        return parts[parts.index("ablations") + 1]
    return None


#: A switched-off guidance in words (``video.use_*`` set to false).
_SWITCHED_OFF = {
    "use_blurry": "without the blurry video (α guidance off; denoising from noise)",
    "use_keyframe": "without the keyframe (β guidance off)",
    "use_caption": "without the caption",
}


def _video_settings(runs: _Runs, w: _Writer) -> str:
    """α, β, γ guidance and the sampling of one set of video settings (first record's
    choices; values listed per subject where they differ)."""
    steps, theta = runs.value("steps"), runs.value("theta")
    if not runs.value("use_blurry", True):
        alpha = (
            f"Without the blurry video, denoising ran all {runs.param('steps')} DDIM "
            f"{w.cite('ddim')} steps from noise."
        )
    elif runs.value("alpha_mode") == "official":
        alpha = (
            "α guidance: the blurry video, linearly interpolated to "
            f"{runs.param('n_frames')} frames, was VAE-encoded and noised to the first timestep "
            f"of a {runs.param('steps')}-step DDIM {w.cite('ddim')} schedule, and all steps "
            "were run, as the official code does (Animatediff/scripts/neuroclips.py)."
        )
    else:
        remaining = round(theta * steps) if isinstance(theta, int | float) and steps else "?"
        alpha = (
            "α guidance: the blurry video, linearly interpolated to "
            f"{runs.param('n_frames')} frames, was VAE-encoded and noised to timestep ϑT with "
            f"ϑ = {runs.param('theta')} (eq. 5), and the last {_number(remaining)} of "
            f"{runs.param('steps')} DDIM {w.cite('ddim')} steps denoised it."
        )
    if runs.value("use_keyframe", True):
        beta = (
            "β guidance: the keyframe conditioned the first frame through SparseCtrl "
            f"(conditioning scale {runs.param('controlnet_scale')})."
        )
    else:
        beta = "No keyframe conditioned the video."
    caption = (
        "the keyframe's caption"
        if runs.value("use_caption", True)
        else f"{_quoted(runs.value('uncaptioned_prompt', ''))}"
    )
    gamma = (
        f"γ guidance: the prompt was {caption} followed by "
        f"{runs.param('prompt_suffix', _quoted)}, against the negative prompt "
        f"{runs.param('negative_prompt', _quoted)} (appendix A), with classifier-free guidance "
        f"scale {runs.param('guidance_scale')}."
    )
    frames = (
        f"The videos have {runs.param('n_frames')} frames of {runs.param('size')} × "
        f"{runs.param('size')} pixels at {runs.param('fps')} frames per second; each clip's "
        f"noise came from its own seed, derived from seed {runs.param('seed')}."
    )
    return " ".join([alpha, beta, gamma, frames])


def _synthesize_videos(w: _Writer, runs: _Runs) -> str:
    main = _Runs([r for r in runs.records if _ablation(r) is None])
    ablations = [r for r in runs.records if _ablation(r) is not None]
    text = ""
    if main.records:
        roles = [r for r in VIDEO_ROLES if r != "domain_adapter" or main.value("domain_adapter")]
        sources = main.sources(roles)
        if sources:
            # the motion module and SparseCtrl are cited with AnimateDiff and SparseCtrl
            parts = {
                "motion_adapter": "{}",
                "video_base": "on {}",
                "video_vae": "with {}",
                "domain_adapter": "and {}",
            }
            named = [
                parts[r].format(w.model(sources[r], cite=r != "motion_adapter"))
                for r in parts
                if r in sources
            ]
            models = ": " + ", ".join(named)
            control = ""
            if "sparsectrl" in sources:
                control = f" ({w.model(sources['sparsectrl'], cite=False)})"
        else:
            models = ", with " + _local("the tiny preset's models")
            control = ""
        text = (
            f"The videos were synthesised with AnimateDiff v3 {w.cite('animatediff')}{models}. "
            f"Keyframe control was by SparseCtrl RGB {w.cite('sparsectrl')}{control}; all models "
            f"were frozen (paper §3.3, appendix A). {_video_settings(main, w)}"
        )
    if ablations:
        described = []
        for record in ablations:
            reference = main.records[0].params if main.records else {}
            changed = [
                _SWITCHED_OFF.get(k, f"with {k} = {_number(v)}")
                for k, v in sorted(record.params.items())
                if reference.get(k) != v and not (k in _SWITCHED_OFF and v)
            ]
            changed = changed or ["with the same settings"]
            described.append(f"{_join(changed)} ({_ablation(record)}, {record.label})")
        text += (
            " For the ablations of paper Table 2, videos were synthesised again "
            f"{'; '.join(described)}, everything else as above."
        )
    return text.strip()


def _train_fusion(w: _Writer, runs: _Runs) -> str:
    classifier = w.models(runs, ["frame_classifier"], _local("a frame classifier"), ("vit",))
    return (
        "For multi-fMRI fusion (paper §3.4) a pair classifier, an MLP with "
        f"{runs.param('hidden')} hidden units and dropout {runs.param('dropout')} on the "
        f"{runs.attr('embedding_dim')}-dimensional CLIP image embeddings of two clips' keyframe "
        "candidates, was trained on neighbouring training clips, a pair labelled “same” when "
        f"the top-{runs.param('label_top_k')} classes of {classifier} on their frames intersect "
        f"{w.cite('neuroclips')}. It was trained for {runs.param('epochs')} epochs with batch "
        f"size {runs.param('batch_size')}, AdamW {w.cite('adamw')} (learning rate "
        f"{runs.param('lr')}, weight decay {runs.param('weight_decay')}) and seed "
        f"{runs.param('seed')}, "
        f"{runs.param('validation_fraction', _percent)} of the training segments held out for "
        "validation; it sees only the stimuli and serves all subjects."
    )


def _fuse_videos(w: _Writer, runs: _Runs) -> str:
    def seconds(r: StageRecord) -> float | None:
        video = r.params.get("video") or {}
        if not video.get("fps"):
            return None
        return r.params.get("max_chain", 0) * video.get("n_frames", 0) / video["fps"]

    return (
        "Neighbouring test clips whose probability of being “same” was at least "
        f"{runs.param('threshold')} were joined into chains of at most "
        f"{runs.param('max_chain')} clips ({runs.get(seconds)} s); every later clip of a chain "
        "was regenerated with the last frame of the video before it in place of its keyframe, "
        "with the video settings above, and each chain was written as one continuous video."
    )


def _systems(runs: _Runs) -> str:
    names = {"videos": "the videos", "fused": "the fused videos"}
    systems = dict.fromkeys(r.path.parent.name for r in runs.records)
    ordered = [s for s in names if s in systems] + [s for s in systems if s not in names]
    return _join([names.get(s, f"the {s} ablation") for s in ordered])


def _protocol_texts(w: _Writer, names: list[str]) -> list[str]:
    texts = []
    for name in names:
        protocol = PROTOCOLS.get(name)
        cite = w.cite(*_protocol_cites(name))
        if protocol is None:
            texts.append(f"{name} {cite}".strip())
        elif name == "neuroclips":
            texts.append(f"neuroclips, the paper's metrics (§4.1) {cite}")
        else:
            texts.append(f"{name} {cite}, as computed by {_code(protocol.reproduces)}")
    return texts


def _code(reproduces: str) -> str:
    """``owner/repo@commit: files`` (a protocol's ``reproduces``) in words."""
    where, _, files = reproduces.partition(": ")
    repository, _, commit = where.partition("@")
    text = f"{repository} at commit {commit}" if commit else where
    return _escape(f"{text} ({files})" if files else text)


def _evaluate_videos(w: _Writer, runs: _Runs) -> str:
    names = list(runs.value("protocols") or [])
    chosen = [PROTOCOLS[n] for n in names if n in PROTOCOLS]
    text = (
        f"The reconstructions ({_systems(runs)}) were compared with the test clips' "
        f"ground-truth frames under {_plural(len(names), 'evaluation protocol')}, each "
        "computing the metrics as one system's own code does: "
        + "; ".join(_protocol_texts(w, names))
        + "."
    )
    metrics = []
    if any(p.n_way for p in chosen):
        frame = w.models(runs, ["frame_classifier"], _local("an image classifier"), ("vit",))
        video = w.models(runs, ["video_classifier"], _local("a video classifier"), ("videomae",))
        metrics.append(
            f"N-way top-1 accuracy {w.cite('mindvideo')} ({runs.param('n_way', _ways)}, "
            f"{runs.param('trials')} trials per clip) with the frame classifier {frame} and the "
            f"video classifier {video}"
        )
    if any(p.ssim for p in chosen):
        metrics.append(f"SSIM {w.cite('ssim')}")
    if any(p.psnr for p in chosen):
        metrics.append("PSNR")
    if any(p.clip_pcc for p in chosen):
        roles = {"clip" if p.clip_model == "preset" else p.clip_model for p in chosen}
        clip = w.models(runs, sorted(r for r in roles if r), _local("a CLIP model"), ("clip",))
        metrics.append(
            "CLIP-pcc, the mean cosine similarity of the CLIP image embeddings of adjacent (or "
            f"all pairs of) generated frames, with {clip}"
        )
    if any(p.epe for p in chosen):
        metrics.append(f"the end-point error of Farnebäck optical flow {w.cite('farneback')}")
    if any(p.hue for p in chosen):
        metrics.append("the correlation of hue maps")
    if metrics:
        text += f" The metrics are {'; '.join(metrics[:-1])}{'; and ' * (len(metrics) > 1)}"
        text += f"{metrics[-1]}."
    sampling = runs.param("frame_sampling", lambda m: FRAME_SAMPLING.get(m, f"“{m}” sampling"))
    text += f" Unless a protocol fixes it, generated frames met the ground truth's by {sampling}."
    if runs.any(lambda r: r.params.get("vifi_clip")) and any(p.clip_gate for p in chosen):
        text += (
            f" Where a protocol gates CLIP-pcc, ViFi-CLIP {w.cite('vificlip')} gave the "
            "video similarity to the ground truth."
        )
    return text + " " + _statistics(runs)


def _ways(n_way: Any) -> str:
    """[2, 50] → "2- and 50-way"."""
    values = [str(n) for n in n_way or []]
    return _join([f"{v}-" for v in values[:-1]] + [f"{v}-way" for v in values[-1:]])


def _interpret(w: _Writer, runs: _Runs) -> str:
    methods = runs.value("methods") or []
    texts = {
        "ridge_weights": "the mean absolute weight of its first ridge layer per voxel "
        f"(paper §7) {w.cite('neuroclips')}",
        "gradient_x_input": "the mean over the test clips of the absolute product of each "
        "voxel's input and the gradient of half the squared norm of the output (the "
        "Perception Reconstructor's latents, the Semantic Reconstructor's backbone tokens)",
    }
    return (
        "The voxel importance of each reconstructor was computed as "
        f"{_join([texts.get(m, m) for m in methods])}, each map scaled to 0–1 over the "
        "selected voxels and drawn on the fs_LR 32k flat surfaces of the HCP S1200 group "
        f"average {w.cite('glasser2013')}. Per area of the multi-modal parcellation "
        f"{w.cite('glasser2016')} and per group of visual areas, the two reconstructors' maps, "
        "each z-scored over the selected voxels, were compared by a two-sided permutation "
        f"test of the area labels ({runs.param('permutations')} permutations, seed "
        f"{runs.param('seed')}), beside the same test with the area labels shuffled across "
        "the voxels."
    )


def _statistics(runs: _Runs) -> str:
    return (
        "Every mean comes with a 95 % percentile-bootstrap confidence interval "
        f"({runs.param('bootstrap_resamples')} resamples of the clips, seed "
        f"{runs.param('seed')}) and a control that pairs each reconstruction with another "
        "clip's ground truth."
    )


def _evaluate_external(w: _Writer, runs: _Runs) -> str:
    names = _join([r.path.parent.parent.name for r in runs.records])
    return (
        f"Reconstructions made by other systems ({names}) were scored by the same code under "
        f"the protocols {_join(_protocol_texts(w, list(runs.value('protocols') or [])))}."
    )


def _evaluate_retrieval(w: _Writer, runs: _Runs) -> str:
    names = [n for n in runs.value("protocols") or [] if n in PROTOCOLS]
    ways = []
    for name in names:
        kind = PROTOCOLS[name].retrieval
        if kind == "parts":
            ways.append(
                f"within consecutive parts of at most {runs.param('retrieval_pool')} clips "
                f"(appendix C.6; {name}) {w.cite(*_protocol_cites(name))}"
            )
        elif kind == "subsets":
            ways.append(
                f"in 30 random subsets of 300 clips ({name}) {w.cite(*_protocol_cites(name))}"
            )
    return (
        "Keyframe retrieval (each test fMRI embedding of the Semantic Reconstructor against "
        "the CLIP tokens of the test clips' keyframes, by cosine similarity) and fMRI "
        f"retrieval (the reverse) were scored as top-1 accuracy {_join(ways)}. " + _statistics(runs)
    )


@dataclass(frozen=True)
class StageText:
    """How the methods text describes one stage.

    Attributes
    ----------
    section : str
        The heading the paragraph goes under.
    title : str
        The paragraph's lead-in.
    describe : callable
        ``(writer, runs) -> str``: the paragraph, from the stage's records.
    per_subject : bool
        Whether the stage writes one output per subject (``results/{subject}/…``).
    """

    section: str
    title: str
    describe: Callable[[_Writer, _Runs], str]
    per_subject: bool = True


#: Registry of the stages the text describes, in the pipeline's order (the rule names
#: of rules/*.smk, as the stores record them).
STAGES: dict[str, StageText] = {
    "preprocess": StageText("fMRI data", "Preprocessing", _preprocess),
    "select_voxels": StageText("fMRI data", "Voxel selection", _select_voxels),
    "align": StageText("fMRI data", "Hemodynamic alignment", _align),
    "extract_frames": StageText("Stimuli", "Frames", _extract_frames, per_subject=False),
    "cache_vae": StageText("Stimuli", "VAE latents", _cache_vae, per_subject=False),
    "cache_clip_images": StageText(
        "Stimuli", "CLIP image tokens", _cache_clip_images, per_subject=False
    ),
    "cache_captions": StageText("Stimuli", "Captions", _cache_captions, per_subject=False),
    "cache_clip_text": StageText(
        "Stimuli", "Caption embeddings", _cache_clip_text, per_subject=False
    ),
    "train_perception": StageText("Perception Reconstructor", "Training", _train_perception),
    "predict_perception": StageText(
        "Perception Reconstructor", "Blurry videos", _predict_perception
    ),
    "train_semantic": StageText("Semantic Reconstructor", "Training", _train_semantic),
    "predict_semantic": StageText("Semantic Reconstructor", "Prior samples", _predict_semantic),
    "fit_keyframe_embedder": StageText(
        "Keyframes and captions", "Embedding regression", _fit_keyframe_embedder
    ),
    "generate_keyframes": StageText("Keyframes and captions", "Keyframes", _generate_keyframes),
    "caption_keyframes": StageText("Keyframes and captions", "Captions", _caption_keyframes),
    "synthesize_videos": StageText("Video reconstruction", "Videos", _synthesize_videos),
    "train_fusion": StageText(
        "Multi-fMRI fusion", "Pair classifier", _train_fusion, per_subject=False
    ),
    "fuse_videos": StageText("Multi-fMRI fusion", "Fused videos", _fuse_videos),
    "evaluate_videos": StageText("Evaluation", "Video metrics", _evaluate_videos),
    "evaluate_external": StageText(
        "Evaluation", "Other systems", _evaluate_external, per_subject=False
    ),
    "evaluate_retrieval": StageText("Evaluation", "Retrieval", _evaluate_retrieval),
    "interpret": StageText("Interpretation", "Voxel importance", _interpret),
}


# -- the whole text ----------------------------------------------------------------------


def _introduction(w: _Writer, records: list[StageRecord], subjects: list[str]) -> str:
    if not records:
        return "No stage of the pipeline has recorded its provenance in this run's results yet."
    versions = sorted({str(r.provenance.get("pipeline_version")) for r in records})
    presets = sorted(
        {
            str((r.provenance.get("rule_params") or {}).get("models.preset"))
            for r in records
            if "models.preset" in (r.provenance.get("rule_params") or {})
        }
    )
    stores = sum(r.path.suffix == ".zarr" for r in records)
    text = (
        f"The analysis follows NeuroClips {w.cite('neuroclips')}, an fMRI-to-video "
        f"reconstruction, reimplemented as a Snakemake workflow {w.cite('snakemake')} (the "
        f"NeuroClips pipeline, version {_join(versions)}), for "
        f"{_join(subjects) or 'no subject'}. This section was generated from the provenance "
        f"recorded by the {_plural(stores, 'output store')} "
        f"and {_plural(len(records) - stores, 'trained model')} of the run."
    )
    if "tiny" in presets:
        text += (
            " The run used the tiny model preset: small models in the published models' "
            "layouts, randomly initialised or briefly fitted to the stimuli, which test the "
            "pipeline, not the method."
        )
    return text


def _software(w: _Writer, records: list[StageRecord]) -> str:
    packages: dict[str, set[str]] = {}
    for record in records:
        for name, version in (record.provenance.get("packages") or {}).items():
            packages.setdefault(name, set()).add(str(version))
    listed = []
    for name in sorted(packages, key=str.lower):
        cite = w.cite(PACKAGE_REFERENCES[name]) if name in PACKAGE_REFERENCES else ""
        listed.append(f"{name} {' and '.join(sorted(packages[name]))} {cite}".strip())
    pythons = sorted({str(r.provenance["python"]) for r in records if r.provenance.get("python")})
    text = f"The stages ran on Python {_join(pythons) or 'unknown'}"
    text += f" with {_join(listed)}." if listed else "."
    devices = {}
    for record in records:
        execution = record.provenance.get("execution") or {}
        if execution.get("device"):
            device = execution.get("device_name") or execution["device"]
            cuda = execution.get("cuda")
            devices.setdefault(f"{device}" + (f" (CUDA {cuda})" if cuda else ""), None)
    if devices:
        text += f" The model stages ran on {_join(list(devices))}."
    return text


def _tidy(text: str) -> str:
    """A paragraph without the gaps an empty citation or model name leaves."""
    text = re.sub(r" +([,.;)])", r"\1", text)
    return re.sub(r"\( *\)", "", re.sub(r"  +", " ", text)).strip()


def _number_citations(text: str) -> tuple[str, list[str]]:
    """``text`` with its citations as ``[1, 3]``, and the cited keys in number order."""
    order: dict[str, int] = {}

    def number(match: re.Match) -> str:
        keys = match.group(1).split(",")
        numbers = sorted({order.setdefault(k, len(order) + 1) for k in keys})
        return "[" + ", ".join(map(str, numbers)) + "]"

    return _CITATION.sub(number, text), list(order)


def methods_text(results: str | os.PathLike, subjects: Iterable[str]) -> str:
    """The methods section of a run, in Markdown, from the provenance of its outputs.

    Parameters
    ----------
    results : path
        The workflow's ``results/`` folder: its Zarr stores
        (:func:`pipeline.verify.find_stores`) and trained model folders are read.
    subjects : iterable of str
        The run's subjects, in order; per-subject outputs of other subjects are ignored.

    Returns
    -------
    str
        A ``## Methods`` section: one paragraph per stage that left a record, under a
        heading per part of the pipeline, in the pipeline's order (:data:`STAGES`); the
        software; and ``### References``, numbered in the order first cited, each once.
    """
    subjects = list(subjects)
    by_stage = stage_records(results, subjects)
    records = [r for stage_records_ in by_stage.values() for r in stage_records_]
    w = _Writer()
    lines = ["## Methods", "", _tidy(_introduction(w, records, subjects)), ""]
    section = None
    for stage, stage_text in STAGES.items():
        if stage not in by_stage:
            continue
        try:
            paragraph = _tidy(stage_text.describe(w, _Runs(by_stage[stage])))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            # a record of another version: say that the stage ran rather than lose the text
            log.warning("methods: the record of %s could not be described (%r)", stage, exc)
            paragraph = "The stage ran; its provenance lacks what this text needs."
        if not paragraph:
            continue
        if stage_text.section != section:
            section = stage_text.section
            lines += [f"### {section}", ""]
        lines += [f"**{stage_text.title}.** {paragraph}", ""]
    if records:
        lines += ["### Software", "", _tidy(_software(w, records)), ""]
    text, cited = _number_citations("\n".join(lines))
    references = [f"{n}. {REFERENCES[key]}" for n, key in enumerate(cited, 1)]
    return "\n".join([text, "### References", "", *references]) + "\n"


# -- Markdown → HTML for the report ------------------------------------------------------

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\\*])\*(?!\*)(.+?)(?<!\\)\*")
_ORDERED = re.compile(r"^(\d+)\. (.*)$")
_HEADING = re.compile(r"^(#{1,6}) (.*)$")


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = _BOLD.sub(r"<strong>\1</strong>", text)
    text = _ITALIC.sub(r"<em>\1</em>", text)
    return text.replace("\\*", "*").replace("\\\\", "\\")


def methods_html(markdown: str) -> str:
    """HTML of the Markdown that :func:`methods_text` writes.

    Only its constructs are understood: ``#``-headings, paragraphs (blocks separated by
    blank lines), one ordered list (lines ``1. …``), ``**bold**``, ``*italic*`` and the
    escapes ``\\*`` and ``\\\\``. Everything else is text, HTML-escaped.

    Parameters
    ----------
    markdown : str
        The text of :func:`methods_text`.

    Returns
    -------
    str
        HTML fragments (headings, paragraphs, one ``<ol>``), one block a line.
    """
    out: list[str] = []
    for block in re.split(r"\n\s*\n", markdown.strip()):
        lines = block.strip().splitlines()
        heading = _HEADING.match(lines[0]) if len(lines) == 1 else None
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif all(_ORDERED.match(line) for line in lines):
            items = [_ORDERED.match(line) for line in lines]
            out.append(
                "<ol>"
                + "".join(f'<li value="{m.group(1)}">{_inline(m.group(2))}</li>' for m in items)
                + "</ol>"
            )
        else:
            out.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>")
    return "\n".join(out)
