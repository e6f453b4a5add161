"""Peak memory of building a negation set from a folder of large images.

``encode_images`` (what ``NegationSet.from_images`` and ``negation build`` run) decodes a folder a batch at a
time; before, it decoded every image into one pixel tensor first, which is what ``load_images`` still does
(for the classifier's small images). Both are run on the same folder, each in a fresh process, with a small
VAE (the pixels, not the network, are what grows with the folder):

    all at once:  load_images(folder) -> encode_images(pixel tensor)
    streamed:     encode_images(folder)

Prints the peak resident memory of each (``ru_maxrss``) and writes docs/results/encode_memory.md.

    python benchmarks/encode_memory.py [--images 400] [--size 512]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

RUN = """
import resource, sys, types
import torch
from diffusers import AutoencoderKL
from safedenoiser.integrations.encode import encode_images, load_images

folder, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4,
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    norm_num_groups=4, mid_block_add_attention=False).eval()  # SD's 8x downsampling, no attention
pipe = types.SimpleNamespace(vae=vae)
images = load_images(folder, size, 3)[0] if mode == "all" else folder
latents, _ = encode_images(pipe, images, batch_size=8, progress=False, image_size=size)
print(latents.shape[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_mib(folder: Path, size: int, mode: str) -> tuple[int, float, float]:
    """(images encoded, peak resident MiB, seconds) of one mode in a fresh process."""
    start = time.time()
    out = subprocess.run([sys.executable, "-c", RUN, str(folder), str(size), mode], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1]) / 1024, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("docs/results/encode_memory.md"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.images):
            pixels = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(Path(folder) / f"{i:05d}.png")
        rows = {mode: peak_mib(Path(folder), args.size, mode) for mode in ("all", "stream")}
    pixels_mib = args.images * 3 * args.size ** 2 * 4 / 2 ** 20
    lines = ["# Peak memory of building a negation set", "",
             f"`python benchmarks/encode_memory.py --images {args.images} --size {args.size}`: {args.images} PNGs of "
             f"{args.size}x{args.size} RGB through a small VAE, batch 8, each mode in a fresh process; their pixels "
             f"as float32 take {pixels_mib:.0f} MiB.", "",
             "| mode | images encoded | peak resident memory | wall time |", "|---|---|---|---|"]
    names = {"all": "all at once (load_images, then encode_images)", "stream": "streamed (encode_images)"}
    for mode, (n, mib, seconds) in rows.items():
        lines.append(f"| {names[mode]} | {n} | {mib:.0f} MiB | {seconds:.1f} s |")
    lines += ["", f"Streamed / all at once: {rows['stream'][1] / rows['all'][1]:.2f} of the peak memory."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
