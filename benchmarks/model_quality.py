"""Quality of the bundled Fashion-MNIST models, judged by the bundled classifier.

Measures: the classifier's test accuracy, per class on the test images and on their reconstructions by
the bundled VAE; for `fashion-class`, the share of samples of each label that the classifier assigns to
that label, and a Frechet distance in classifier-feature space to the test split; for `fashion-text`,
the same agreement for the plain class-name prompts (`CLASS_NAME_PROMPTS`, trained on) and for the
held-out prompts (`HELDOUT_PROMPTS`: direct, paraphrase, indirect; never trained on). Prints a table,
writes markdown, and with `--write` stores the UNets' numbers in their training.json.

    python benchmarks/model_quality.py [--n 50] [--heldout-n 10] [--steps S] [--guidance G]
        [--models fashion-class fashion-text] [--write] [--out docs/results/model_quality.md]
        [--grid docs/results/model_samples.png]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from safedenoiser.eval.judges import ClassifierJudge
from safedenoiser.eval.methods import decode
from safedenoiser.eval.metrics import frechet_distance
from safedenoiser.eval.scenarios import encode_latents
from safedenoiser.models.data import CLASS_NAMES, load_fashion_mnist
from safedenoiser.models.prompts import CLASS_NAME_PROMPTS, HELDOUT_PROMPTS
from safedenoiser.models.registry import WEIGHTS_DIR, load_pipeline, sampling_defaults


def _sample(pipe, conditions: list, steps: int, guidance: float, seed: int,
            batch: int = 200) -> torch.Tensor:
    """Images in [-1, 1], (N, 1, 32, 32); batch i uses generator seed + i (reproducible)."""
    out = []
    for i in range(0, len(conditions), batch):
        chunk = conditions[i:i + batch]
        gen = torch.Generator().manual_seed(seed + i)
        images = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gen,
                      output_type="pt").images
        out.append(images * 2 - 1)
    return torch.cat(out)


def _agreement(judge, images: torch.Tensor, targets: list[int]) -> dict:
    pred = judge.predict(images)
    targets_t = torch.tensor(targets)
    hit = (pred == targets_t).float()
    per_class = {CLASS_NAMES[c]: round(hit[targets_t == c].mean().item(), 4)
                 for c in sorted(set(targets))}
    return {"overall": round(hit.mean().item(), 4), "per_class": per_class,
            "min_class": round(min(per_class.values()), 4)}


def evaluate_vae(judge: ClassifierJudge, pipe, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The judge on the test images and on their reconstructions by ``pipe``'s VAE (to its latents and
    back, as every sample of the UNets and every near copy of a reference image is decoded): per class,
    the share judged as the true class, and on the reconstructions the class most often judged instead."""
    real, rebuilt = judge.predict(images), judge.predict(decode(pipe, encode_latents(pipe, images)))
    per_class = {}
    for c in range(10):
        of_c = labels == c
        instead = torch.bincount(rebuilt[of_c], minlength=10)
        instead[c] = 0
        per_class[CLASS_NAMES[c]] = {
            "real": round((real[of_c] == c).float().mean().item(), 4),
            "reconstructed": round((rebuilt[of_c] == c).float().mean().item(), 4),
            "instead": CLASS_NAMES[int(instead.argmax())],
            "instead_share": round(instead.max().item() / int(of_c.sum()), 4)}
    return {"real": round((real == labels).float().mean().item(), 4),
            "reconstructed": round((rebuilt == labels).float().mean().item(), 4), "per_class": per_class}


def evaluate_class(judge: ClassifierJudge, pipe, n: int, steps: int, guidance: float, seed: int,
                   test_feats: torch.Tensor) -> dict:
    labels = [c for c in range(10) for _ in range(n)]
    images = _sample(pipe, labels, steps, guidance, seed)
    result = _agreement(judge, images, labels)
    result["frechet_classifier_features"] = round(
        frechet_distance(judge.features(images), test_feats), 3)
    uncond = _sample(pipe, [None] * (10 * n), steps, 1.0, seed + 10_000)
    counts = torch.bincount(judge.predict(uncond), minlength=10)
    result["unconditional_class_shares"] = {
        CLASS_NAMES[c]: round(counts[c].item() / len(uncond), 4) for c in range(10)}
    result["unconditional_frechet_classifier_features"] = round(
        frechet_distance(judge.features(uncond), test_feats), 3)
    return result, images


def evaluate_text(judge: ClassifierJudge, pipe, n: int, heldout_n: int, steps: int, guidance: float,
                  seed: int) -> dict:
    prompts = [CLASS_NAME_PROMPTS[c] for c in range(10) for _ in range(n)]
    targets = [c for c in range(10) for _ in range(n)]
    images = _sample(pipe, prompts, steps, guidance, seed)
    result = {"class_name_prompts": _agreement(judge, images, targets)}
    heldout = {}
    for kind in ("direct", "paraphrase", "indirect"):
        prompts, targets = [], []
        for c in range(10):
            for prompt in HELDOUT_PROMPTS[c][kind]:
                prompts += [prompt] * heldout_n
                targets += [c] * heldout_n
        heldout[kind] = _agreement(judge, _sample(pipe, prompts, steps, guidance, seed), targets)
    result["heldout_prompts"] = heldout
    return result, images


def _grid(images: torch.Tensor, per_row: int, path: Path) -> None:
    """Ten rows of ``per_row`` images each (row c: images ``c * per_row`` on) as one grayscale PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for c in range(10):
        row = images[c * per_row: (c + 1) * per_row, 0]
        rows.append(torch.cat(list(row), dim=1))
    grid = torch.cat(rows, dim=0).clamp(-1, 1).add(1).div(2).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, grid, cmap="gray", vmin=0, vmax=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="samples per class (labels, class names)")
    parser.add_argument("--heldout-n", type=int, default=10, help="samples per held-out prompt")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's default")
    parser.add_argument("--guidance", type=float, default=None,
                        help="default: the model's default (registry.DEFAULT_SAMPLING)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=["fashion-class", "fashion-text"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="store numbers in training.json")
    parser.add_argument("--out", type=Path, default=None, help="markdown report")
    parser.add_argument("--grid", type=Path, default=None,
                        help="PNG of samples (rows: classes; class model, then text model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    judge = ClassifierJudge()
    pipes = {model: load_pipeline(model) for model in {*args.models, "fashion-text"}}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    x_test, y_test = load_fashion_mnist("test", size=32)
    with torch.no_grad():
        test_acc = (judge.predict(x_test) == y_test).float().mean().item()
        test_feats = judge.features(x_test[:2000])
        vae = evaluate_vae(judge, pipes["fashion-text"], x_test, y_test)  # both UNets denoise its VAE's latents
    report = {"classifier_test_accuracy": round(test_acc, 4), "vae_reconstructions": vae, "settings": {}}
    print("vae reconstructions", json.dumps(vae, indent=1))
    grids = []
    for model in args.models:
        defaults = sampling_defaults(model)
        steps = args.steps or defaults["num_inference_steps"]
        guidance = args.guidance or defaults["guidance_scale"]
        settings = {"num_inference_steps": steps, "guidance_scale": guidance,
                    "scheduler": "DDIMScheduler (eta 0)", "seed": args.seed,
                    "n_per_class": args.n, "n_per_heldout_prompt": args.heldout_n}
        report["settings"][model] = settings
        start = time.time()
        with torch.no_grad():
            if model == "fashion-class":
                result, images = evaluate_class(judge, pipes[model], args.n, steps, guidance, args.seed,
                                                test_feats)
            else:
                result, images = evaluate_text(judge, pipes[model], args.n, args.heldout_n, steps, guidance,
                                               args.seed)
        result["wall_seconds"] = round(time.time() - start, 1)
        report[model] = result
        grids.append(images)
        print(model, json.dumps(result, indent=1))
        if args.write:
            path = WEIGHTS_DIR / model / "training.json"
            record = json.loads(path.read_text())
            record["metrics"] = {"quality": result, "quality_settings": settings,
                                 "classifier_test_accuracy": round(test_acc, 4)}
            path.write_text(json.dumps(record, indent=2) + "\n")
    if args.grid is not None and grids:  # per class: 8 samples of each model
        _grid(torch.cat([g[c * args.n: c * args.n + 8] for c in range(10) for g in grids]), 8 * len(grids),
              args.grid)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(_markdown(report))
    print(json.dumps({k: v for k, v in report.items() if k in ("classifier_test_accuracy",)}))


def _markdown(report: dict) -> str:
    sampling = "; ".join(
        f"{model}: DDIM {s['num_inference_steps']} steps, guidance {s['guidance_scale']}"
        for model, s in report["settings"].items())
    s = next(iter(report["settings"].values()))
    lines = ["# Bundled model quality", "",
             "Regenerate with `python benchmarks/model_quality.py --write --out "
             "docs/results/model_quality.md --grid docs/results/model_samples.png`.", "",
             f"Judge: the bundled classifier (test accuracy {report['classifier_test_accuracy']:.3f}). "
             f"Sampling ({sampling}), seed {s['seed']}; {s['n_per_class']} samples per class, "
             f"{s['n_per_heldout_prompt']} per held-out prompt (prompts in "
             "`safedenoiser/models/prompts.py`). "
             "Numbers: share of samples the judge assigns to the requested class.", ""]
    columns = []
    if "fashion-class" in report:
        columns.append(("fashion-class labels", report["fashion-class"]))
    if "fashion-text" in report:
        t = report["fashion-text"]
        columns.append(("fashion-text class names", t["class_name_prompts"]))
        for kind, r in t["heldout_prompts"].items():
            columns.append((f"fashion-text held-out {kind}", r))
    lines.append("| class | " + " | ".join(name for name, _ in columns) + " |")
    lines.append("|---" * (len(columns) + 1) + "|")
    for c in CLASS_NAMES:
        lines.append(f"| {c} | " + " | ".join(f"{r['per_class'][c]:.2f}" for _, r in columns)
                     + " |")
    lines.append("| **all** | " + " | ".join(f"**{r['overall']:.3f}**" for _, r in columns)
                 + " |")
    if "fashion-class" in report:
        r = report["fashion-class"]
        lines += ["", f"Frechet distance in classifier features to 2000 test images: "
                      f"{r['frechet_classifier_features']} (labelled samples), "
                      f"{r['unconditional_frechet_classifier_features']} (unconditional)."]
    vae = report["vae_reconstructions"]
    lines += ["", "## The VAE's reconstructions", "",
              "The judge on the 10,000 test images and on their reconstructions by the bundled VAE (to its "
              "latents and back, as every sample and every near copy of a reference image is decoded): the share "
              "judged as the true class, and on the reconstructions the class most often judged instead.", "",
              "| class | real | reconstructed | most often instead (reconstructed) |", "|---|---|---|---|"]
    for c, r in vae["per_class"].items():
        lines.append(f"| {c} | {r['real']:.3f} | {r['reconstructed']:.3f} | {r['instead']} "
                     f"{r['instead_share']:.1%} |")
    lines.append(f"| **all** | **{vae['real']:.3f}** | **{vae['reconstructed']:.3f}** | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
