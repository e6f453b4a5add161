"""The judge: a small CNN classifier of Fashion-MNIST, also the feature extractor of an FID-style
distance (`features` is its 128-dimensional penultimate layer).

Input is (N, 1, 32, 32) or (N, 1, 28, 28) in [-1, 1] (28x28 is padded with background).
Weights are safetensors with a json config beside them; no pickles.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from safedenoiser.models.data import CLASS_NAMES, pad_to_32

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FashionClassifier(nn.Module):
    """Three conv blocks (32 -> 16 -> 8 -> 4), a 128-d feature layer, a linear head."""

    def __init__(self, channels: tuple[int, int, int] = (24, 48, 96), feature_dim: int = 128,
                 num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.config = {"channels": list(channels), "feature_dim": feature_dim,
                       "num_classes": num_classes, "dropout": dropout,
                       "class_names": CLASS_NAMES[:num_classes], "input_size": 32}
        c1, c2, c3 = channels
        self.body = nn.Sequential(_block(1, c1), _block(c1, c2), _block(c2, c3), nn.Flatten(),
                                  nn.Dropout(dropout), nn.Linear(c3 * 16, feature_dim),
                                  nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, feature_dim) of images in [-1, 1]."""
        return self.body(pad_to_32(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes)."""
        return self.head(self.features(x))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Class probabilities (N, num_classes); evaluates in eval mode, in batches."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = [self(x[i : i + batch_size].to(device).float()).softmax(-1).cpu()
               for i in range(0, len(x), batch_size)]
        self.train(was_training)
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Most likely class (N,)."""
        return self.predict_proba(x).argmax(-1)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  str(directory / WEIGHTS_NAME))
        (directory / CONFIG_NAME).write_text(json.dumps(self.config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "FashionClassifier":
        directory = Path(directory)
        config = json.loads((directory / CONFIG_NAME).read_text())
        model = cls(tuple(config["channels"]), config["feature_dim"], config["num_classes"],
                    config["dropout"])
        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        return model.eval()
