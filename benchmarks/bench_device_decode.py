"""data.decode=cuda: the batch decoded, cropped and resized on the device, against the CPU path, on 256 px JPEG photos.

    python benchmarks/bench_device_decode.py [--batch 256] [--batches 20]   (on a CUDA machine; benchmarks/gpu.sh)
    python benchmarks/bench_device_decode.py --smoke                          (on a CPU: checks the script)

Data: benchmarks/photos.py's photo shards (256 px JPEGs, quality 95), the transform
ViT-B-32's 224 px training crop with scale 0.3-1 (crops of many sizes). Per sample:
  worker, cpu path     CPU seconds of decode (TorchCodec) + crop + resize, one thread
  worker, cuda path    CPU seconds of what a worker does instead: header, crop box, bytes
  device               wall seconds of EncodedBatch.decode per sample (synchronised), batch --batch
and the pixels' largest and mean difference from the CPU path's (same seeds, same crops).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import common


def main() -> int:
    parser = common.arguments(__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="run on the CPU at tiny sizes: checks the script")
    args = parser.parse_args()
    common.pin_threads(args.threads)
    info = common.header("data.decode=cuda against the CPU path (256 px photos, 224 px crops)", args.threads)

    import photos
    import torch
    import webdataset as wds

    from cir.data.sample_rng import sample_seed, seeded
    from cir.data.transforms import stack_images, uint8_version
    from bench_decode_floor import vit_b32_transform

    device = "cpu" if args.smoke else "cuda"
    batch, batches = (8, 2) if args.smoke else (args.batch, args.batches)
    shards = photos.photo_shards(4000, 1000)
    jpegs = [s["jpg"] for s in wds.DataPipeline(wds.SimpleShardList(shards[:1]), wds.tarfile_to_samples())][: batch * batches]
    cpu = dataclasses.replace(uint8_version(vit_b32_transform()[0]), scale=(0.3, 1.0))
    shipping = dataclasses.replace(cpu, decode="cuda")

    def made(transform) -> tuple[list, float]:
        began, out = time.process_time(), []
        for place, data in enumerate(jpegs):
            with seeded(sample_seed(0, 0, 0, 0, place), python=False):
                out.append(transform(data))
        return out, (time.process_time() - began) / len(jpegs)

    on_cpu, cpu_seconds = made(cpu)
    shipped, ship_seconds = made(shipping)
    encoded = [stack_images(shipped[k : k + batch]) for k in range(0, len(shipped), batch)]
    expected = [stack_images(on_cpu[k : k + batch]) for k in range(0, len(on_cpu), batch)]
    encoded[0].decode(cpu, device)  # warm-up: nvJPEG handles, kernels
    times, worst, means = [], 0, []
    for enc, exp in zip(encoded, expected):
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        out = enc.decode(cpu, device)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - began) / batch)
        difference = (out.cpu().int() - exp.int()).abs()
        worst, means = max(worst, int(difference.max())), [*means, float(difference.float().mean())]
    figures = {
        "worker, cpu path: decode + crop + resize, us/sample (CPU)": cpu_seconds * 1e6,
        "worker, cuda path: header + box + bytes, us/sample (CPU)": ship_seconds * 1e6,
        "worker CPU per sample, cpu path / cuda path": cpu_seconds / ship_seconds,
        f"device: decode + crop + resize, us/sample (wall, batch {batch}, median)": statistics.median(times) * 1e6,
        "device: samples/s": 1 / statistics.median(times),
        "pixels vs the cpu path: largest difference (grey levels)": worst,
        "pixels vs the cpu path: mean difference (grey levels)": statistics.mean(means),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
        "batch": batch, "batches": batches,
    }
    return common.finish("device_decode", info, figures, [], args.json)


if __name__ == "__main__":
    raise SystemExit(main())
