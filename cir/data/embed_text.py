"""Cache every sample's caption embedding for one backbone, so TAT runs need no text tower.

    python -m cir.data.embed_text --shards 'in/shard-{000000..000009}.tar' \\
        --model ViT-B-32 --pretrained openai --out OUT [--batch-size 256] [--device cuda]

TAT freezes the text tower, so a caption's embedding never changes during
tuning. Each input shard is copied to OUT under its own file name with one more
entry per sample, KEY (default txtemb.npy: float32[D], L2-normalised, the
backbone's encode_text of the stripped caption); samples without a caption are
left out and counted. OUT/sizes.json gets each output shard's sample count (for
exact epochs). OUT/text_embeddings.json, written last, records the
backbone's identity (model config name, pretrained, weights fingerprint), the
key, the dimension and the shard names. Readers call load_text_embedding_meta
and check_backbone_identity, then give image_text_pipeline(meta.urls,
text_embedding_key=meta.key, tokenize=None, ...).

Copying the shards (rather than a side store keyed by sample) keeps every
sample self-contained, so resampling, shuffling and pipe: urls work unchanged;
it costs a second copy of the images. Shards are written to a temp file and
renamed when complete (cir.io.atomic_path, flushed first); rerunning refuses to touch existing outputs unless
--overwrite.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import webdataset as wds
from tqdm import tqdm

from cir.commands import parser_for
from cir.data.shard_sizes import write_sizes
from cir.data.shards import CAPTION_KEY, SkipStats, expand_shard_urls
from cir.io import atomic_path, atomic_write_text, leftover_temps
from cir.models import Backbone, create_backbone

log = logging.getLogger(__name__)

META_FILE = "text_embeddings.json"
DEFAULT_KEY = "txtemb.npy"


@dataclass(frozen=True)
class TextEmbeddingMeta:
    """What OUT/text_embeddings.json records; `directory` is where it was read from (not stored)."""

    model: str
    pretrained: str | None
    fingerprint: str
    dim: int
    key: str
    samples: int
    shards: tuple[str, ...]
    source: str
    skipped: dict[str, int]
    directory: Path = field(default=Path("."), compare=False)

    @property
    def urls(self) -> list[str]:
        """The embedded shards, for image_text_pipeline."""
        return [str(self.directory / name) for name in self.shards]

    def identity(self) -> str:
        return f"model={self.model!r} pretrained={self.pretrained!r} fingerprint={self.fingerprint}"


def backbone_identity(backbone: Backbone) -> dict[str, Any]:
    """(model, pretrained, fingerprint) of a cir.models Backbone, as the metadata records them."""
    return {"model": backbone.name, "pretrained": backbone.pretrained, "fingerprint": backbone.fingerprint()}


def load_text_embedding_meta(path: str | Path) -> TextEmbeddingMeta:
    """Read the metadata of an embed_text output folder (or of its text_embeddings.json)."""
    path = Path(path)
    meta_path = path / META_FILE if path.is_dir() else path
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no text embedding metadata (write it with python -m cir.data.embed_text)")
    data = json.loads(meta_path.read_text(encoding="utf-8"))
    names = [f.name for f in fields(TextEmbeddingMeta) if f.name != "directory"]
    missing = [n for n in names if n not in data]
    if missing:
        raise ValueError(f"{meta_path}: missing fields {missing}")
    stored = {n: data[n] for n in names}
    return TextEmbeddingMeta(**{**stored, "shards": tuple(stored["shards"])}, directory=meta_path.parent)


def check_backbone_identity(meta: TextEmbeddingMeta, backbone: Backbone) -> None:
    """Raise if the cached embeddings were not made by this backbone's weights.

    Model config name and weights fingerprint must match (the pretrained string
    is shown, not compared: a moved checkpoint is still the same weights). Check
    the backbone as created, before LoRA or tuned weights change its fingerprint.
    """
    ours = backbone_identity(backbone)
    if (meta.model, meta.fingerprint) != (ours["model"], ours["fingerprint"]):
        raise ValueError(
            f"cached text embeddings in {meta.directory} come from {meta.identity()}, but the backbone is "
            f"model={ours['model']!r} pretrained={ours['pretrained']!r} fingerprint={ours['fingerprint']}; "
            "rerun python -m cir.data.embed_text with this backbone, or train from captions"
        )


def _shard_name(url: str) -> str:
    """File name of a shard url: local path, file/http url, or the last word of a pipe: command."""
    return os.path.basename(urlparse(url.split()[-1]).path)


def _output_plan(urls: list[str], out: Path, overwrite: bool) -> list[str]:
    names = [_shard_name(u) for u in urls]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"input shard file names must be unique and non-empty to be copied into one folder, got {names[:5]}...")
    if any(not urlparse(u).scheme and Path(u).resolve().parent == out.resolve() for u in urls):
        raise ValueError(f"--out {out} holds the input shards: choose another folder")
    existing = [out / n for n in [*names, META_FILE] if (out / n).exists()] + leftover_temps(out)
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {len(existing)} outputs (e.g. {existing[0].name}); pass --overwrite to replace them")
    for path in existing:
        path.unlink()
    return names


def _embed_shard(url: str, target: Path, backbone: Backbone, *, key: str, batch_size: int, device: str, stats: SkipStats) -> tuple[int, int]:
    """Copy one shard with embeddings added; returns (samples written, embedding dim)."""
    written, dim = 0, 0
    samples = wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples(handler=stats.shard_error))
    with atomic_path(target) as tmp:
        # an integer mtime: a float one gets a PAX header per member, which doubles the file and its parsing
        with wds.TarWriter(tmp, mtime=int(time.time())) as sink:
            pending: list[tuple[dict[str, Any], str]] = []
            for sample in samples:
                caption = sample.get(CAPTION_KEY, b"").decode("utf-8", errors="replace").strip()
                if not caption:
                    stats.add("missing_caption", f"sample {sample['__key__']!r} of {url}")
                    continue
                stats.passed()
                pending.append((sample, caption))
                if len(pending) == batch_size:
                    dim = _write_batch(pending, sink, backbone, key, device)
                    written += len(pending)
                    pending = []
            if pending:
                dim = _write_batch(pending, sink, backbone, key, device)
                written += len(pending)
    return written, dim


@torch.inference_mode()
def _write_batch(pending: list[tuple[dict[str, Any], str]], sink: wds.TarWriter, backbone: Backbone, key: str, device: str) -> int:
    tokens = backbone.tokenize([caption for _, caption in pending]).to(device)
    embeddings = backbone.encode_text(tokens).float().cpu().numpy()
    for (sample, _), embedding in zip(pending, embeddings):
        sink.write({**sample, key: embedding})
    return embeddings.shape[1]


def embed_shards(
    urls: str | Sequence[str],
    out: Path,
    backbone: Backbone,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    key: str = DEFAULT_KEY,
    overwrite: bool = False,
) -> TextEmbeddingMeta:
    """Write OUT/<shard name> copies with `key` added, then OUT/text_embeddings.json; return its metadata.

    The backbone is put in eval mode on `device`.
    """
    if not key.endswith(".npy") or key.startswith("_") or "/" in key:
        raise ValueError(f"key must be a file extension ending in .npy (e.g. {DEFAULT_KEY}), got {key!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shard_urls = expand_shard_urls(urls)
    out.mkdir(parents=True, exist_ok=True)
    names = _output_plan(shard_urls, out, overwrite)
    identity = backbone_identity(backbone)
    backbone.eval().to(device)
    stats = SkipStats()
    sizes: dict[str, int] = {}
    dim = 0
    for url, name in tqdm(list(zip(shard_urls, names)), unit="shard", desc="embedding captions"):
        sizes[name], shard_dim = _embed_shard(url, out / name, backbone, key=key, batch_size=batch_size, device=device, stats=stats)
        dim = shard_dim or dim
    samples = sum(sizes.values())
    if samples == 0:
        raise ValueError(f"no sample with a caption in {urls!r} ({stats.counts})")
    write_sizes(out, sizes)
    meta = TextEmbeddingMeta(
        **identity, dim=dim, key=key, samples=samples, shards=tuple(names),
        source=urls if isinstance(urls, str) else "::".join(urls),
        skipped={r: n for r, n in stats.counts.items() if n}, directory=out,
    )
    record = {k: v for k, v in asdict(meta).items() if k != "directory"}
    atomic_write_text(out / META_FILE, json.dumps(record, indent=2))
    log.info("embedded %d captions (dim %d) into %d shards in %s; skipped %s", samples, dim, len(names), out, record["skipped"] or "none")
    return meta


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = parser_for("embed-text", prog, __doc__)
    parser.add_argument("--shards", required=True, help="input shards: brace pattern, pipe: command or '::'-joined list")
    parser.add_argument("--model", required=True, help="open_clip model name, 'cir-tiny' or a model config JSON")
    parser.add_argument("--pretrained", required=True, help="open_clip pretrained tag, checkpoint path, or 'none'")
    parser.add_argument("--out", type=Path, required=True, help="output folder (not the input shards' folder)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--key", default=DEFAULT_KEY, help=f"entry name of the embedding (default: {DEFAULT_KEY})")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs in OUT")
    args = parser.parse_args(argv)
    try:
        backbone = create_backbone(args.model, args.pretrained)
        embed_shards(args.shards, args.out, backbone, batch_size=args.batch_size, device=args.device, key=args.key, overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as exn:
        if args.debug:
            raise
        parser.error(str(exn))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
