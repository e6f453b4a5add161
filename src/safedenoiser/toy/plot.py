"""Figure: vanilla against safe samples and trajectories, negation set marked (the paper's Figure 2b)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from safedenoiser.toy.run import ToyRun  # noqa: E402


def plot_runs(vanilla: ToyRun, safe: ToyRun, negation: Tensor, path: str | Path, *, title: str = "") -> None:
    """Two panels (first two coordinates) and the mean beta per step of the safe run."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    panels = ((axes[0], vanilla, "vanilla"), (axes[1], safe, "safe denoiser"))
    lims = [min(float(vanilla.samples[:, 0].min()), float(safe.samples[:, 0].min())) - 1,
            max(float(vanilla.samples[:, 0].max()), float(safe.samples[:, 0].max())) + 1,
            min(float(vanilla.samples[:, 1].min()), float(safe.samples[:, 1].min())) - 1,
            max(float(vanilla.samples[:, 1].max()), float(safe.samples[:, 1].max())) + 1]
    for ax, run, label in panels:
        ax.scatter(run.samples[:, 0], run.samples[:, 1], s=2, alpha=0.35, color="tab:blue", label="samples")
        ax.scatter(negation[:, 0], negation[:, 1], s=8, marker="x", color="tab:red", alpha=0.6, label="negation set")
        for k in range(run.trajectories.shape[1]):
            traj = run.trajectories[:, k]
            ax.plot(traj[:, 0], traj[:, 1], lw=0.8, color="black", alpha=0.5)
            ax.scatter(traj[-1, 0], traj[-1, 1], s=12, color="black")
        ax.set_title(label)
        ax.set_xlim(lims[0], lims[1])
        ax.set_ylim(lims[2], lims[3])
        ax.set_aspect("equal", adjustable="box")
    axes[0].legend(loc="upper right", fontsize=8)
    steps = range(len(safe.beta_mean))
    axes[2].plot(steps, safe.beta_mean, label="mean beta")
    axes[2].plot(steps, safe.acted_share, label="share acted on", ls="--")
    axes[2].set_xlabel("sampling step (high noise -> low)")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].legend(fontsize=8)
    axes[2].set_title("safe denoiser per step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
