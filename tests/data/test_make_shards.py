"""Converters on generated sources: sample contents read back with tarfile, skip reports, manifest, reruns."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from webdataset.shardlists import expand_urls

from cir.data.make_shards import Record, main, write_shards
from cir.data.shard_sizes import count_samples
from cir.data.shards import image_text_pipeline
from cir.io import leftover_temps


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """a.jpg, b.png (RGBA), c.webp, d.gif (re-encoded to png), corrupt.jpg; missing.jpg does not exist."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 10), (255, 0, 0)).save(root / "a.jpg")
    Image.new("RGBA", (8, 6), (0, 255, 0, 128)).save(root / "sub" / "b.png")
    Image.new("RGB", (9, 7), (0, 0, 255)).save(root / "c.webp")
    Image.new("P", (5, 5), 3).save(root / "d.gif")
    (root / "corrupt.jpg").write_bytes((root / "a.jpg").read_bytes()[:40])
    return root


ROWS = [
    ("a.jpg", "a red box"),
    ("sub/b.png", "a green, translucent box"),
    ("c.webp", "a blue box"),
    ("d.gif", "a palette image"),
    ("corrupt.jpg", "cut short"),
    ("missing.jpg", "not there"),
    ("a.jpg", "   "),
]
WRITTEN = {"000000000": ("a.jpg", "jpg"), "000000001": ("sub/b.png", "png"), "000000002": ("c.webp", "webp"), "000000003": ("d.gif", "png")}


def read_tars(out: Path, prefix: str = "shard") -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(out.glob(f"{prefix}-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def check_output(out: Path, images: Path, rows: list[tuple[str, str]], expected_skips: dict[str, int]) -> dict:
    samples = read_tars(out)
    assert sorted(samples) == sorted(WRITTEN)
    for key, (name, ext) in WRITTEN.items():
        sample = samples[key]
        assert set(sample) == {ext, "txt", "json"}
        caption = rows[int(key)][1]
        assert sample["txt"].decode() == caption
        meta = json.loads(sample["json"])
        assert meta["caption"] == caption and meta["image"] == name
        with Image.open(images / name) as img:
            assert (meta["width"], meta["height"]) == img.size
        if name != "d.gif":
            assert sample[ext] == (images / name).read_bytes()  # original bytes, no recompression
    with Image.open(io.BytesIO(samples["000000003"]["png"])) as img:
        assert img.format == "PNG" and img.size == (5, 5)
    manifest = json.loads((out / "shard.manifest.json").read_text())
    assert manifest["samples"] == 4
    assert {k: v for k, v in manifest["skipped"].items() if v} == expected_skips
    names = [Path(u).name for u in expand_urls(manifest["pattern"])]
    assert names == sorted(p.name for p in out.glob("shard-*.tar"))
    assert manifest["shards"] == len(names)
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {n: count_samples(out / n) for n in names} and sum(sizes.values()) == manifest["samples"]
    assert not leftover_temps(out)
    return manifest


def test_folder_csv(tmp_path, images):
    captions = tmp_path / "captions.csv"
    lines = ["image,caption", *[f'{name},"{caption}"' for name, caption in ROWS], "only_one_field"]
    captions.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["folder", "--images", str(images), "--captions", str(captions), "--out", str(out), "--maxcount", "3"]) == 0
    manifest = check_output(out, images, ROWS, {"missing_image": 1, "unreadable_image": 1, "empty_caption": 1, "malformed_row": 1})
    assert manifest["shards"] == 2 and manifest["pattern"] == "shard-{000000..000001}.tar"
    assert manifest["skipped_examples"]["missing_image"] == ["missing.jpg"]
    assert manifest["skipped_examples"]["unreadable_image"][0].startswith("corrupt.jpg")
    assert manifest["source"]["format"] == "folder"

    transform = T.Compose([T.Resize((4, 4)), T.ToTensor()])
    pipeline = image_text_pipeline(
        str(out / manifest["pattern"]), image_transform=transform, tokenize=lambda c: torch.zeros(len(c), 3, dtype=torch.long), batch_size=8
    )
    (batch,) = list(pipeline)
    assert batch.images.shape == (4, 3, 4, 4) and pipeline.skip_stats.total == 0


def test_folder_jsonl(tmp_path, images):
    captions = tmp_path / "captions.jsonl"
    lines = [json.dumps({"image": name, "caption": caption}) for name, caption in ROWS] + ["{not json", '{"image": "a.jpg"}']
    captions.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    main(["folder", "--images", str(images), "--captions", str(captions), "--out", str(out)])
    check_output(out, images, ROWS, {"missing_image": 1, "unreadable_image": 1, "empty_caption": 1, "malformed_row": 2})


def test_llava_json_takes_the_gpt_turn(tmp_path, images):
    entries = [
        {"id": f"id{i}", "image": name, "conversations": [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": caption}]}
        for i, (name, caption) in enumerate(ROWS)
    ]
    entries.append({"id": "no-answer", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>"}]})
    entries.append({"id": "text-only", "conversations": [{"from": "gpt", "value": "no picture"}]})
    source = tmp_path / "blip_laion_cc_sbu_558k.json"
    source.write_text(json.dumps(entries))
    out = tmp_path / "out"
    main(["llava", "--json", str(source), "--image-root", str(images), "--out", str(out)])
    check_output(out, images, ROWS, {"missing_image": 2, "unreadable_image": 1, "empty_caption": 1, "malformed_row": 1})
    assert json.loads(read_tars(out)["000000002"]["json"])["id"] == "id2"


def test_cc3m_tsv(tmp_path, images):
    source = tmp_path / "train.tsv"
    source.write_text("".join(f"{caption}\t{name}\n" for name, caption in ROWS) + "no tab here\n")
    out = tmp_path / "out"
    main(["cc3m", "--tsv", str(source), "--image-root", str(images), "--out", str(out), "--maxsize", "1"])
    manifest = check_output(out, images, ROWS, {"missing_image": 1, "unreadable_image": 1, "empty_caption": 1, "malformed_row": 1})
    assert manifest["shards"] == 4  # one sample fills a 1-byte shard


def test_rerun_refuses_then_overwrites(tmp_path, images, capsys):
    source = tmp_path / "train.tsv"
    source.write_text("".join(f"{caption}\t{name}\n" for name, caption in ROWS))
    out = tmp_path / "out"
    args = ["cc3m", "--tsv", str(source), "--image-root", str(images), "--out", str(out)]
    main([*args, "--maxcount", "1"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 6  # 4 one-sample shards, sizes.json, the manifest
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--maxcount", "1"])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    main([*args, "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard.manifest.json", "sizes.json"]
    assert json.loads((out / "sizes.json").read_text()) == {"shard-000000.tar": 4}
    main([*args, "--prefix", "other"])  # another prefix's files are not in the way
    assert (out / "shard-000000.tar").exists() and (out / "other.manifest.json").exists()


def test_interrupted_run_leaves_only_complete_shards(tmp_path, images):
    def records():
        for index, name in enumerate(["a.jpg", "c.webp", "sub/b.png"]):
            yield Record(index, name, f"caption {index}")
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        write_shards(records(), out, image_root=images, source={"format": "test"}, maxcount=2)
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar"]
    assert sorted(read_tars(out)) == ["000000000", "000000001"]


def test_what_a_killed_run_left_is_refused_then_removed(tmp_path, images, capsys):
    source = tmp_path / "train.tsv"
    source.write_text("".join(f"{caption}\t{name}\n" for name, caption in ROWS))
    out = tmp_path / "out"
    out.mkdir()
    (out / ".shard-000000.tar.k1ll3d.tmp").write_bytes(b"half a shard")  # a SIGKILL mid-write leaves this
    args = ["cc3m", "--tsv", str(source), "--image-root", str(images), "--out", str(out)]
    with pytest.raises(SystemExit):
        main(args)
    assert ".shard-000000.tar.k1ll3d.tmp" in capsys.readouterr().err
    main([*args, "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard.manifest.json", "sizes.json"]


def test_csv_header_and_empty_results_are_errors(tmp_path, images, capsys):
    bad = tmp_path / "captions.csv"
    bad.write_text("file,text\na.jpg,x\n")
    with pytest.raises(SystemExit):
        main(["folder", "--images", str(images), "--captions", str(bad), "--out", str(tmp_path / "out")])
    assert "'image' and 'caption'" in capsys.readouterr().err
    assert not list((tmp_path / "out").iterdir())
    nothing = tmp_path / "nothing.csv"
    nothing.write_text("image,caption\nmissing.jpg,x\n")
    with pytest.raises(SystemExit):
        main(["folder", "--images", str(images), "--captions", str(nothing), "--out", str(tmp_path / "out")])
    assert "no sample" in capsys.readouterr().err
    assert not list((tmp_path / "out").iterdir())
