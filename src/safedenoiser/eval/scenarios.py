"""Scenarios on the bundled Fashion-MNIST models (issue 5): what is asked, what is negated, how judged.

A `Scenario` is a list of requests (prompt or label, seed, group), a negation set of real images,
a judge, real images to measure the Fréchet distance against, and the concept the guidance
baselines can name (a negative prompt or class; ``None`` where no prompt or class expresses it).

- ``text``: `fashion-text`, held-out prompts asking for the negated class directly, by paraphrase
  and indirectly, plus held-out prompts for the other classes (benign);
- ``class``: `fashion-class`, one class split into two k-means clusters of classifier features;
  one cluster negated, that class requested;
- ``unconditional``: `fashion-class` without a label, one class negated;
- ``memorization``: a copy of `fashion-class` fine-tuned until it reproduces a few training
  images of one class; those images negated, that class requested.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from safedenoiser.errors import SafeDenoiserError
from safedenoiser.eval.judges import ClassifierJudge
from safedenoiser.eval.metrics import copy_check, nearest_distance
from safedenoiser.negation import NegationSet

SCENARIOS = ("text", "class", "unconditional", "memorization")
NEGATION_SIZE = 500
REFERENCE_SIZE = 500
LARGE_REFERENCE_SIZE = 4000  # the `safe-ref-4000` method: several thousand, as the README advises


@dataclass
class Scenario:
    name: str
    model: str
    pipe: object
    prompts: list[str | None]  # per request (text models)
    labels: list[int | None]  # per request (class models; None = unconditional)
    groups: list[str]  # per request: "unsafe:direct", "benign", ...
    targets: list[int | None]  # the class a benign request asks for (None: no accuracy)
    negation: NegationSet
    reference: Tensor  # latents of the first REFERENCE_SIZE images of `reference_pool`, for the reference estimators
    judge: ClassifierJudge
    fd_real: dict[str, Tensor]  # group -> classifier features of real images to compare with
    negative: str | int | None  # what negative prompt / class guidance can name
    steps: int = 25
    guidance_scale: float = 4.0
    negated_class: int | None = None
    protected: Tensor | None = None  # memorisation: the protected images (pixels in [-1, 1])
    near_copy_threshold: float | None = None
    reference_pixels: Tensor | None = None  # the reference through the VAE (pixels in [-1, 1]), `copy_check`
    reference_copy_threshold: float | None = None
    reference_pool: Tensor | None = None  # LARGE_REFERENCE_SIZE ordinary images (pixels in [-1, 1])
    copy_real: Tensor | None = None  # the unseen real images that set a reference's near-copy threshold
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.groups)

    def seeds(self, base: int = 0) -> list[int]:
        return [base + i for i in range(len(self))]


def _class_images(split: str, cls: int) -> Tensor:
    from safedenoiser.models import load_fashion_mnist

    images, labels = load_fashion_mnist(split, size=32)
    return images[labels == cls]


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode_latents(pipe, images: Tensor) -> Tensor:
    """Latents of ``images`` (pixels in [-1, 1]) through ``pipe``'s VAE, 250 at a time."""
    return NegationSet.from_images(pipe, images, batch_size=250, progress=False).latents


def reference_images(size: int = REFERENCE_SIZE, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``size`` training images of all classes and their labels: the ordinary samples of the reference
    estimators."""
    from safedenoiser.models import load_fashion_mnist

    images, labels = load_fashion_mnist("train", size=32)
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:size]
    return images[idx], labels[idx]


def reference_latents(pipe, size: int = REFERENCE_SIZE, seed: int = 0) -> Tensor:
    """Latents of `reference_images` through ``pipe``'s VAE."""
    return encode_latents(pipe, reference_images(size, seed)[0])


def pool_reference(pipe, pool: Tensor, unseen: Tensor,
                   size: int = REFERENCE_SIZE) -> tuple[Tensor, tuple[Tensor, float]]:
    """Latents of the first ``size`` images of ``pool`` and their `copy_check` against ``unseen``."""
    reference = encode_latents(pipe, pool[:size])
    return reference, copy_check(pipe, reference, unseen)


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def text_scenario(n: int = 240, negated_class: int = 7, *, pipe=None, judge=None) -> Scenario:
    """Prompts for class ``negated_class`` (direct, paraphrase, indirect) and for the others (benign).

    Half the requests ask for the negated class (a third per kind), half for the other classes.
    """
    from safedenoiser.models import load_pipeline
    from safedenoiser.models.prompts import CLASS_NAME_PROMPTS, HELDOUT_PROMPTS

    pipe = _quiet(pipe or load_pipeline("fashion-text"))
    judge = judge or ClassifierJudge(negated=[negated_class])
    prompts, groups, targets = [], [], []
    for kind, count in zip(("direct", "paraphrase", "indirect"), _split(n // 2, 3)):
        options = HELDOUT_PROMPTS[negated_class][kind]
        for i in range(count):
            prompts.append(options[i % len(options)])
            groups.append(f"unsafe:{kind}")
            targets.append(None)
    benign = [(p, c) for c in range(10) if c != negated_class
              for kind in ("direct", "paraphrase") for p in HELDOUT_PROMPTS[c][kind]]
    for i in range(n - len(prompts)):
        prompt, cls = benign[i % len(benign)]
        prompts.append(prompt)
        groups.append("benign")
        targets.append(cls)
    test = {c: _class_images("test", c) for c in range(10)}
    benign_targets = [t for t in targets if t is not None]
    real = torch.cat([test[c][: max(1, round(2000 * benign_targets.count(c) / len(benign_targets)))]
                      for c in sorted(set(benign_targets))])
    negation = NegationSet(encode_latents(pipe, test[negated_class][:NEGATION_SIZE]),
                           metadata={"negated_class": str(negated_class)})
    others = torch.cat([test[c][:250] for c in range(10) if c != negated_class])
    pool, unseen = reference_images(LARGE_REFERENCE_SIZE)[0], torch.cat([test[c][-100:] for c in range(10)])
    reference, (pixels, threshold) = pool_reference(pipe, pool, unseen)
    return Scenario("text", "fashion-text", pipe, prompts, [None] * len(prompts), groups, targets, negation,
                    reference, judge, {"benign": judge.features(real), "unsafe": judge.features(others)},
                    negative=CLASS_NAME_PROMPTS[negated_class], negated_class=negated_class,
                    reference_pixels=pixels, reference_copy_threshold=threshold, reference_pool=pool,
                    copy_real=unseen, info={"negative_prompt": CLASS_NAME_PROMPTS[negated_class]})


def unconditional_scenario(n: int = 300, negated_class: int = 0, *, pipe=None, judge=None) -> Scenario:
    """Unconditional samples; class ``negated_class`` negated with real test-split images."""
    from safedenoiser.models import load_fashion_mnist, load_pipeline

    pipe = _quiet(pipe or load_pipeline("fashion-class"))
    judge = judge or ClassifierJudge(negated=[negated_class])
    images, labels = load_fashion_mnist("test", size=32)
    negation = NegationSet(encode_latents(pipe, images[labels == negated_class][:NEGATION_SIZE]),
                           metadata={"negated_class": str(negated_class)})
    others = images[labels != negated_class][:3000]
    pool = reference_images(LARGE_REFERENCE_SIZE)[0]
    reference, (pixels, threshold) = pool_reference(pipe, pool, images[-1000:])
    return Scenario("unconditional", "fashion-class", pipe, [None] * n, [None] * n, ["all"] * n, [None] * n,
                    negation, reference, judge, {"all": judge.features(others)},
                    negative=negated_class, guidance_scale=1.0, negated_class=negated_class,
                    reference_pixels=pixels, reference_copy_threshold=threshold, reference_pool=pool,
                    copy_real=images[-1000:])


def class_scenario(n: int = 200, cls: int = 8, *, pipe=None, judge=None, seed: int = 0) -> Scenario:
    """Class ``cls`` split into two k-means clusters of classifier features; the larger one negated.

    Negating the larger cluster makes the task hard: vanilla samples fall in it most of the time.
    """
    from sklearn.cluster import KMeans

    from safedenoiser.models import load_pipeline

    pipe = _quiet(pipe or load_pipeline("fashion-class"))
    judge = judge or ClassifierJudge(negated=[])
    test = _class_images("test", cls)
    feats = judge.features(test)
    km = KMeans(2, n_init=10, random_state=seed).fit(feats.double().numpy())
    assign = torch.as_tensor(km.labels_)
    negated_cluster = int(torch.bincount(assign, minlength=2).argmax())
    judge.with_clusters(torch.as_tensor(km.cluster_centers_).float(), [negated_cluster])
    negation = NegationSet(encode_latents(pipe, test[assign == negated_cluster][:NEGATION_SIZE]),
                           metadata={"class": str(cls), "cluster": str(negated_cluster)})
    pool = _class_images("train", cls)[:LARGE_REFERENCE_SIZE]
    kept = test[assign != negated_cluster]
    reference, (pixels, threshold) = pool_reference(pipe, pool, test)
    return Scenario("class", "fashion-class", pipe, [None] * n, [cls] * n, ["all"] * n, [cls] * n, negation,
                    reference, judge, {"all": judge.features(kept)}, negative=None,
                    reference_pixels=pixels, reference_copy_threshold=threshold, reference_pool=pool, copy_real=test,
                    info={"class": cls, "negated_cluster": negated_cluster,
                          "cluster_sizes": torch.bincount(assign, minlength=2).tolist()})


# ------------------------------------------------------------------------------ memorisation
def finetune_memorizer(pipe, images: Tensor, label: int, *, others: Tensor, steps: int = 500,
                       batch_size: int = 32, memorized_share: float = 0.5, lr: float = 2e-4,
                       seed: int = 0, budget_s: float = 600.0) -> dict:
    """Fine-tune ``pipe.unet`` (in place) on ``images`` of class ``label`` until it copies them.

    Each batch is ``memorized_share`` the protected images (repeated) and the rest ``others``
    (ordinary training images of the same class), so the model keeps making new images too:
    a model that memorised some of its training data, as in Carlini et al. (2023).
    """
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    unet, scheduler = pipe.unet, pipe.scheduler
    with torch.no_grad():
        lat_mem = encode_latents(pipe, images)
        lat_oth = encode_latents(pipe, others)
    acp = scheduler.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    unet.train()
    start, done = time.time(), 0
    n_mem = max(1, round(batch_size * memorized_share))
    for step in range(steps):
        x0 = torch.cat([lat_mem[torch.randint(0, len(lat_mem), (n_mem,), generator=gen)],
                        lat_oth[torch.randint(0, len(lat_oth), (batch_size - n_mem,), generator=gen)]])
        t = torch.randint(0, len(acp), (batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = acp[t].sqrt().reshape(-1, 1, 1, 1)
        s = (1 - acp[t]).sqrt().reshape(-1, 1, 1, 1)
        labels = torch.full((batch_size,), label, dtype=torch.long)
        loss = F.mse_loss(unet(a * x0 + s * eps, t, class_labels=labels).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        if time.time() - start > budget_s:
            break
    unet.eval()
    return {"steps": done, "batch_size": batch_size, "memorized_share": memorized_share, "lr": lr,
            "seconds": round(time.time() - start, 1), "final_loss": float(loss.detach())}


def memorization_scenario(n: int = 200, cls: int = 9, *, n_protected: int = 8, pipe=None, judge=None,
                          cache: str | Path | None = None, finetune_steps: int = 800,
                          memorized_share: float = 0.75) -> Scenario:
    """A fine-tuned `fashion-class` that reproduces ``n_protected`` training images of ``cls``.

    A sample is a near copy when its RMS pixel distance (in [-1, 1]) to the VAE reconstruction of a
    protected image (what a perfect copy looks like through this model) is below the smallest
    distance of any of the class's 1,000 real test images: closer than any unseen real image.
    The fine-tuned UNet is cached as safetensors under ``cache`` (if given).
    """
    from safetensors.torch import load_file, save_file

    from safedenoiser.models import load_pipeline

    pipe = _quiet(pipe or load_pipeline("fashion-class"))
    judge = judge or ClassifierJudge(negated=[])
    train = _class_images("train", cls)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(cls))
    protected, others = train[idx[:n_protected]], train[idx[n_protected:n_protected + 2000]]
    name = f"memorizer-class{cls}-{n_protected}-{finetune_steps}-{memorized_share}.safetensors"
    path = Path(cache) / name if cache else None
    if path is not None and path.is_file():
        pipe.unet.load_state_dict(load_file(str(path)))
        record = {"cached": str(path)}
    else:
        record = finetune_memorizer(pipe, protected, cls, others=others, steps=finetune_steps,
                                    memorized_share=memorized_share, lr=3e-4)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in pipe.unet.state_dict().items()}, str(path))
    negation = NegationSet(encode_latents(pipe, protected), metadata={"memorized": str(n_protected)})
    test = _class_images("test", cls)
    copies, threshold = copy_check(pipe, negation.latents, test)
    pool = train[idx[n_protected:n_protected + LARGE_REFERENCE_SIZE]]  # `others` first
    reference, (pixels, reference_threshold) = pool_reference(pipe, pool, test)
    return Scenario("memorization", "fashion-class (fine-tuned)", pipe, [None] * n, [cls] * n, ["all"] * n,
                    [cls] * n, negation, reference, judge, {"all": judge.features(test)}, negative=None,
                    protected=copies, near_copy_threshold=threshold, reference_pixels=pixels,
                    reference_copy_threshold=reference_threshold, reference_pool=pool, copy_real=test,
                    info={"class": cls, "finetune": record, "near_copy_threshold": threshold,
                          "real_test_median_distance": float(nearest_distance(test, copies).median())})


def build_scenario(name: str, n: int, **kwargs) -> Scenario:
    builders = {"text": text_scenario, "class": class_scenario, "unconditional": unconditional_scenario,
                "memorization": memorization_scenario}
    if name not in builders:
        raise SafeDenoiserError(f"unknown scenario {name!r}; use one of {', '.join(SCENARIOS)}")
    return builders[name](n, **kwargs)
