"""Config schemas: dataclasses whose defaults are the paper's settings; YAML files override them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The paper's Slerp alpha per benchmark (CIRR 0.9, CIRCO 0.8, FashionIQ 0.8). The paper does not report GeneCIS:
# 0.8, its alpha for CIRCO and FashionIQ, is our choice (docs/paper_choices.md).
PAPER_ALPHA = {"cirr": 0.9, "circo": 0.8, "fashioniq": 0.8, "genecis": 0.8}
# FitConfig's `task:` values, each the module whose `build(cfg) -> (LightningModule, LightningDataModule)` makes it.
TASKS = {"tat": "cir.tasks.tat", "supervised": "cir.tasks.supervised", "pretrain": "cir.tasks.pretrain"}
# model.anchor (the frozen tower) -> the towers that get LoRA adapters (cir.models.lora); here, with the other
# values a config key takes, so that checking a config (cir.config_checks) imports no model code.
LORA_TOWERS = {"text": ("image",), "image": ("text",), "none": ("image", "text")}


def _sweep() -> list[float]:
    return [round(0.1 * i, 1) for i in range(11)]


@dataclass
class ModelConfig:
    """A backbone: open_clip name (or config JSON path) + pretrained tag, local checkpoint, or `none`;
    or a BLIP hub id / save_pretrained folder (its weights come with it: pretrained `none`)."""

    name: str = "ViT-L-14"  # open_clip model name, a model config JSON path, or a BLIP hub id / folder
    pretrained: str = "openai"  # open_clip pretrained tag, a local checkpoint or hub folder, or none (random init)
    cache_dir: str | None = None  # where downloaded weights are cached (null: open_clip's default, the Hugging Face cache)


@dataclass
class GenecisConfig:
    """GeneCIS's tasks and folders (null: the layout under data.root, as the official config.py:
    genecis/<task>.json, coco/val2017, vg/images)."""

    tasks: list[str] = field(default_factory=lambda: ["focus_attribute", "change_attribute", "focus_object", "change_object"])  # GeneCIS tasks to score (the four of the benchmark)
    annotations: str | None = None  # folder of <task>.json (null: <data.root>/genecis)
    coco_images: str | None = None  # COCO val2017 images (null: <data.root>/coco/val2017)
    vg_images: str | None = None  # Visual Genome images (null: <data.root>/vg/images)


@dataclass
class BenchmarkConfig:
    """One CIR benchmark split in its official layout."""

    name: str = "cirr"  # benchmark: cirr, circo, fashioniq or genecis
    root: str = "data/cirr"  # the benchmark's folder in its official layout (data/README.md)
    split: str = "val"  # split to use (cirr: train, val, test1; circo: val, test; fashioniq: val; genecis: val)
    image_root: str | None = None  # images folder if not under root (null: the official place under root)
    categories: list[str] = field(default_factory=lambda: ["dress", "shirt", "toptee"])  # FashionIQ categories to score
    caption_mode: str = "relative"  # relative: the modification text as the benchmark gives it
    genecis: GenecisConfig = field(default_factory=GenecisConfig)


@dataclass
class EvalDataConfig(BenchmarkConfig):
    """The benchmark to evaluate plus how to load it (per-device batch of the encoding loaders)."""

    batch_size: int = 64  # per-device batch of the encoding loaders
    num_workers: Any = "auto"  # DataLoader workers: auto (the CPUs this process may use: SLURM_CPUS_PER_TASK, the affinity mask) or a number


@dataclass
class EvalConfig:
    alphas: list[float] = field(default_factory=_sweep)  # Slerp alphas to sweep (metrics.json has each)
    paper_alpha: float | None = None  # the alpha reported as the paper's (null: the paper's per benchmark: CIRR 0.9, others 0.8)
    methods: list[str] = field(default_factory=lambda: ["image", "text", "sum", "slerp"])  # query compositions to score: image only, text only, sum, slerp
    cache_dir: str | None = "~/.cache/cir/features"  # gallery feature cache (null: no cache)
    examples: int = 8  # example queries drawn to TensorBoard with their top results
    block_size: int = 1024  # queries scored per block (memory bound, not a result)
    # Remove each query's reference image from the candidates? null: the benchmark's official rule
    # (CIRR yes; CIRCO, FashionIQ no: see cir.evaluation.features.OFFICIAL_EXCLUDE_REFERENCE)
    exclude_reference: bool | None = None
    # FashionIQ's two captions: both_orders (SEARLE's zero-shot protocol: "c1 and c2" and "c2 and c1" averaged)
    # or one_order (CLIP4Cir: "C1 and c2"); see cir.data.retrieval_benchmarks.fashioniq.FASHIONIQ_CAPTIONS
    fashioniq_captions: str = "both_orders"
    # Write <output_dir>/features/<dataset>-<split>.npz: the features and ids that were scored (docs/outputs.md)
    save_features: bool = False
    # A JSONL of image-caption pairs (cir.evaluation.gap): the model's gap on them -> metrics.json modality_gap/{gap,pair_cosine,pairs}
    gap_pairs: str | None = None
    # Gallery images missing or empty (0 bytes): error (stop, naming them) or skip (leave them out of the gallery and
    # drop the queries that need them; counted in metrics.json meta, not comparable with published numbers)
    missing_images: str = "error"


@dataclass
class SubmitConfig:
    """Test-server files; the list lengths are the servers' (CIRR 50 and 3, CIRCO 50), not settings."""

    split: str | None = None  # split to submit (null: the benchmark's test split)
    method: str = "slerp"  # composition to submit
    alpha: float | None = None  # Slerp alpha to submit (null: the paper's for the benchmark)


@dataclass
class EvaluateConfig:
    output_dir: str = "outputs/eval"  # folder for metrics.json, the plot, config.yaml, TensorBoard
    seed: int = 0  # random seed
    model: ModelConfig = field(default_factory=ModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    trainer: dict[str, Any] = field(default_factory=lambda: {"accelerator": "auto", "devices": 1})


@dataclass
class BrowseSettings:
    """The page of `python -m cir.browse`: a second model to compare (null: none), a folder of images as the
    gallery instead of the benchmark split (null: the split), and where the local server listens."""

    compare: ModelConfig | None = None  # a second model to compare (null: none)
    folder: str | None = None  # a folder of images as the gallery (null: the benchmark split)
    host: str = "127.0.0.1"  # address the page listens on
    port: int = 7860  # port the page listens on
    top_k: int = 10  # results shown per query
    rank_depth: int = 1000  # target ranks are exact down to this depth, shown as ">1000" past it


@dataclass
class BrowseConfig(EvaluateConfig):
    """`python -m cir.browse`: an evaluation config (model, benchmark, feature cache) plus the page's settings."""

    browse: BrowseSettings = field(default_factory=BrowseSettings)


@dataclass
class LoraConfig:
    """peft LoRA on the attention query / value projections (paper: rank 16, alpha 16, dropout 0.1)."""

    r: int = 16  # LoRA rank
    alpha: int = 16  # LoRA scaling alpha
    dropout: float = 0.1  # LoRA dropout
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # attention projections that get LoRA


@dataclass
class FitModelConfig(ModelConfig):
    """`anchor` names the frozen tower: text (TAT), image (LoRA on the text tower) or none (LoRA on both)."""

    anchor: str = "text"  # the frozen tower: text (TAT), image, or none
    lora: LoraConfig = field(default_factory=LoraConfig)
    grad_checkpointing: bool = False  # recompute activations in backward to save memory
    # open_clip's AugmentationCfg for the training transform (scale, ratio, color_jitter, ...); empty: the model's default
    aug_cfg: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainDataConfig:
    """WebDataset image-text shards (a brace pattern or a list; local paths or `pipe:` commands)."""

    train_shards: Any = None  # WebDataset shards: brace pattern, list, or pipe: commands
    batch_size: int | None = 128          # per device; null to derive it from global_batch_size
    global_batch_size: int | None = None  # over all devices and accumulated batches; must divide evenly
    num_workers: Any = "auto"           # DataLoader workers: auto (the CPUs this process may use: SLURM_CPUS_PER_TASK, the affinity mask) or a number
    samples_per_epoch: int | None = None  # samples per epoch (null: one pass over the shards)
    resampled: bool = False               # draw shards with replacement, samples_per_epoch a global count (streamed shards)
    exact_epoch: bool = False             # one pass, every pair at most once, all ranks in step (needs sample counts)
    shuffle_buffer: int = 1000  # WebDataset shuffle buffer (samples)
    text_embeddings: str | None = None  # folder of shards with cached caption embeddings (cir embed-text): no text tower
    decode: str = "cpu"                   # cuda: workers ship JPEG bytes + crop boxes, the GPU decodes (cir.data.device_decode)


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay; temperature fixed at 0.07 unless learned."""

    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # AdamW betas
    eps: float = 1e-6  # AdamW epsilon
    warmup_steps: int = 100  # linear warmup steps before the cosine decay
    temperature: float = 0.07  # contrastive loss temperature (initial value if learned)
    learn_temperature: bool = False  # learn the temperature


@dataclass
class PeriodicEvalConfig:
    """Zero-shot evaluation run as validation during training (`eval.benchmarks=[]` switches it off)."""

    benchmarks: list[BenchmarkConfig] = field(default_factory=list)  # benchmarks evaluated during training ([]: none)
    alphas: list[float] = field(default_factory=_sweep)  # as cir.evaluate's eval.alphas
    methods: list[str] = field(default_factory=lambda: ["image", "text", "sum", "slerp"])  # as cir.evaluate's eval.methods
    batch_size: int = 64  # per-device batch of the evaluation loaders
    num_workers: int = 2  # DataLoader workers of the evaluation loaders
    exclude_reference: bool | None = None  # as cir.evaluate's eval.exclude_reference (null: official rule)
    fashioniq_captions: str = "both_orders"  # as cir.evaluate's eval.fashioniq_captions


@dataclass
class CheckpointConfig:
    every_n_steps: int = 500  # checkpoint every N optimizer steps (last.ckpt always)


@dataclass
class ResumeConfig:
    """Rerunning in an output_dir resumes; config keys that change the training trajectory (optim.*, seed, data.*,
    model.*, task, trainer.* other than run length and logging) must be listed here to differ from the checkpoint's.
    A name accepts the keys under it (`optim` accepts optim.lr); each change is recorded in run.json."""

    accept_changes: list[str] = field(default_factory=list)  # config keys allowed to differ from the checkpoint's on resume


@dataclass
class SupervisedConfig:
    """Supervised CIR fine-tuning on a benchmark's train triplets (reference, relative caption, target).

    Weights come from the top-level `init_from` (a TAT checkpoint or export) and get fresh
    LoRA per model.anchor; batches use data.batch_size / data.num_workers. `fusion` composes
    the query: slerp (alpha learned unless learn_alpha=false) or a CLIP4Cir-style combiner
    (combiner_hidden wide, its gate starting at alpha).
    """

    train: BenchmarkConfig = field(default_factory=lambda: BenchmarkConfig(split="train"))
    fusion: str = "slerp"  # query composition: slerp or combiner
    alpha: float = 0.8  # Slerp alpha (initial if learned)
    learn_alpha: bool = True  # learn the Slerp alpha
    combiner_hidden: int = 1024  # combiner hidden width
    combiner_dropout: float = 0.5  # combiner dropout


@dataclass
class FitConfig:
    """`python -m cir.fit`: the task (tat | supervised) picks the LightningModule."""

    task: str = "tat"  # tat, pretrain or supervised (grid: a grid config)
    output_dir: str = "outputs/fit"  # run folder: checkpoints, logs, export, run.json; rerun resumes
    init_from: str | None = None  # weights to start from (a TAT checkpoint or export; supervised)
    seed: int = 0  # random seed
    model: FitModelConfig = field(default_factory=FitModelConfig)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: PeriodicEvalConfig = field(default_factory=PeriodicEvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    trainer: dict[str, Any] = field(
        default_factory=lambda: {"accelerator": "auto", "devices": "auto", "max_epochs": 1, "log_every_n_steps": 10}
    )
