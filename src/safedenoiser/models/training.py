"""Training of the bundled Fashion-MNIST models (`safe-denoiser train {vae,classifier,text,class}`).

Everything is seeded; each run writes its settings and measured numbers to `training.json` next to
the weights. Order: `vae` first (the UNets train on its latents), `classifier` any time, then `text`
and `class`. The recipe is the Stable Diffusion one in miniature: a KL autoencoder whose latents are
scaled to unit variance (`scaling_factor`), epsilon-prediction UNets on the SD `scaled_linear` beta
schedule, label / caption dropout for classifier-free guidance. Two additions for a small CPU
budget: Min-SNR-5 loss weighting (Hang et al. 2023) and an EMA of the UNet weights.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from safedenoiser.models.data import CLASS_NAMES, load_fashion_mnist

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# The SD v1 noise schedule, shared by training and the bundled schedulers.
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

VAE_CONFIG = {
    "in_channels": 1,
    "out_channels": 1,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 32,
}


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _setup(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def _cosine_lr(opt: torch.optim.Optimizer, base_lr: float, step: int, steps: int,
               warmup: int = 200) -> None:
    if step < warmup:
        lr = base_lr * (step + 1) / warmup
    else:
        lr = base_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    for group in opt.param_groups:
        group["lr"] = lr


def _write_json(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=2) + "\n")


# --------------------------------------------------------------------------------------------- VAE

def train_vae(out: Path | None = None, steps: int = 2500, seed: int = 0, batch_size: int = 64,
              lr: float = 1e-3, kl_weight: float = 1e-5, threads: int | None = 2) -> dict:
    """An `AutoencoderKL` from 1x32x32 images to 4x8x8 latents, trained on L1 + MSE + KL.

    At the end, `scaling_factor` = 1 / std of sampled training latents (as SD does).
    """
    from diffusers import AutoencoderKL

    _setup(threads)
    out = Path(out) if out else WEIGHTS_DIR / "fashion-vae"
    gen = seed_everything(seed)
    x_train, _ = load_fashion_mnist("train", size=32)
    x_test, _ = load_fashion_mnist("test", size=32)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start = time.time()
    bar = tqdm(range(steps), desc="train vae")
    for step in bar:
        _cosine_lr(opt, lr, step, steps)
        idx = torch.randint(0, len(x_train), (batch_size,), generator=gen)
        x = x_train[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, x) + 0.5 * (recon - x).abs().mean()
        kl = posterior.kl().mean()
        loss = rec + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(rec=f"{rec.item():.4f}", kl=f"{kl.item():.0f}")
    wall = time.time() - start

    vae.eval()
    with torch.no_grad():
        sub = x_train[torch.randperm(len(x_train), generator=gen)[:5000]]
        lat = torch.cat([vae.encode(sub[i:i + 500]).latent_dist.sample(gen)
                         for i in range(0, len(sub), 500)])
        std = lat.std().item()
        vae.register_to_config(scaling_factor=1.0 / std)
        test = x_test[:2000]
        rec_test = torch.cat([vae.decode(vae.encode(test[i:i + 500]).latent_dist.mean).sample
                              for i in range(0, len(test), 500)]).clamp(-1, 1)
        mse = F.mse_loss(rec_test, test).item()
        psnr = 10 * math.log10(4.0 / mse)  # pixel range [-1, 1] has peak-to-peak 2
    vae.save_pretrained(out, safe_serialization=True)
    record = {
        "model": "AutoencoderKL", "seed": seed, "steps": steps, "batch_size": batch_size,
        "lr": lr, "kl_weight": kl_weight, "loss": "mse + 0.5*l1 + kl_weight*kl",
        "image_size": 32, "latent_shape": [4, 8, 8],
        "metrics": {"test_mse_2000": mse, "test_psnr_db": psnr, "latent_std": std,
                    "latent_mean": lat.mean().item(), "scaling_factor": 1.0 / std},
        "wall_seconds": wall, "threads": torch.get_num_threads(),
    }
    _write_json(out / "training.json", record)
    return record


# -------------------------------------------------------------------------------------- classifier

def train_classifier(out: Path | None = None, steps: int = 3000, seed: int = 0,
                     batch_size: int = 128, lr: float = 2e-3, threads: int | None = 2) -> dict:
    """The judge CNN, with light augmentation (random shifts of up to 2 pixels, horizontal flips)."""
    from safedenoiser.models.classifier import FashionClassifier

    _setup(threads)
    out = Path(out) if out else WEIGHTS_DIR / "classifier"
    gen = seed_everything(seed)
    x_train, y_train = load_fashion_mnist("train", size=32)
    x_test, y_test = load_fashion_mnist("test", size=32)
    model = FashionClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    start = time.time()
    bar = tqdm(range(steps), desc="train classifier")
    for step in bar:
        _cosine_lr(opt, lr, step, steps, warmup=100)
        idx = torch.randint(0, len(x_train), (batch_size,), generator=gen)
        x, y = x_train[idx], y_train[idx]
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
        loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    wall = time.time() - start
    model.eval()
    pred = model.predict(x_test)
    acc = (pred == y_test).float().mean().item()
    per_class = {CLASS_NAMES[c]: (pred[y_test == c] == c).float().mean().item() for c in range(10)}
    model.save_pretrained(out)
    record = {
        "model": "FashionClassifier", "seed": seed, "steps": steps, "batch_size": batch_size,
        "lr": lr, "augmentation": "hflip 0.5, roll +-2 px", "label_smoothing": 0.05,
        "metrics": {"test_accuracy": acc, "test_accuracy_per_class": per_class},
        "wall_seconds": wall, "threads": torch.get_num_threads(),
    }
    _write_json(out / "training.json", record)
    return record
