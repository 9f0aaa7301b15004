"""What every video classifier shares: its input normalisation and its classifier heads.

forward(video B×3×T×H×W) → {head: logits B×C}, always a dict: a single label set is the head
`label`, EPIC-Kitchens has `verb` and `noun`. The engine never asks how many heads there are;
only the public API (`stadapt.build_model`, `stadapt.load_model`) sets `unwrap_single_head`,
so that a user's single-head model returns its logits tensor.

uint8 pixels are normalised here with the backbone's mean and std: the engine hands over the
loader's bytes (a quarter of float32's bytes to move to the GPU) and the scaling runs inside
the compiled graph. Float input is taken as already normalised, as the exported ONNX and
TorchScript files take it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Classifier(nn.Module):
    """Base of VideoClassifier and SwinVideoClassifier; subclasses define `forward_features`."""

    def __init__(self, dim: int, heads: dict[str, int], dropout: float,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.dim = dim
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in heads.items()})
        for head in self.heads.values():
            nn.init.normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        # mean and std × 255 as 3×1×1×1 buffers: they move with the model, so normalising a batch
        # builds no tensors and copies nothing to the device (in eager CUDA a blocking copy a step).
        self.register_buffer("_pixel_mean", torch.zeros(3, 1, 1, 1), persistent=False)
        self.register_buffer("_pixel_std", torch.ones(3, 1, 1, 1), persistent=False)
        self.image_mean, self.image_std = mean, std  # the builder sets the backbone's own
        self.unwrap_single_head = False
        self.grad_checkpointing = False
        self.impl = "fast"  # "reference": as published (patch convolution, nn.Conv3d adapters, ...)
        self.backbone_identity: dict[str, str] = {}

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        logits = self.logits(video)
        if self.unwrap_single_head and list(logits) == ["label"]:
            return logits["label"]
        return logits

    def logits(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """{head: logits}, whoever built the model."""
        features = self.forward_features(self.normalise(video))
        return {name: head(features) for name, head in self.heads.items()}

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def image_mean(self) -> tuple[float, ...]:
        return self._image_mean

    @image_mean.setter
    def image_mean(self, mean: Sequence[float]) -> None:
        self._image_mean = tuple(float(v) for v in mean)
        self._pixel_mean.copy_(torch.tensor(self._image_mean).view(3, 1, 1, 1) * 255)

    @property
    def image_std(self) -> tuple[float, ...]:
        return self._image_std

    @image_std.setter
    def image_std(self, std: Sequence[float]) -> None:
        self._image_std = tuple(float(v) for v in std)
        self._pixel_std.copy_(torch.tensor(self._image_std).view(3, 1, 1, 1) * 255)

    def normalise(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 pixels → float32 (x/255 - mean) / std; float input is returned as it is."""
        if video.dtype != torch.uint8:
            return video
        return (video.float() - self._pixel_mean.float()) / self._pixel_std.float()
