"""Accuracy from per-video class probabilities.

Several heads (EPIC-Kitchens verb and noun) are also scored jointly as an "action": the
pair of classes, with the probability of a pair the product of its heads' probabilities,
right only when every head is right. For one head the top-level numbers are that head's;
for several they are the action's, and each head's own numbers are listed under `heads`.
"""

from __future__ import annotations

from typing import Any

import torch

JOINT_CHUNK = 1 << 24  # probabilities held at once while ranking joint classes


def topk_hits(probs: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each row's label is among its k most probable classes (k capped at the class count)."""
    top = probs.topk(min(k, probs.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1)


def mean_class_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of each class present in `labels`, averaged over those classes."""
    classes = labels.unique()
    if classes.numel() == 0:
        return 0.0
    recalls = [(predicted[labels == c] == c).float().mean() for c in classes]
    return float(torch.stack(recalls).mean())


def score_head(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    if labels.numel() == 0:
        return {"top1": 0.0, "top5": 0.0, "mean_class_acc": 0.0}
    return {
        "top1": float(topk_hits(probs, labels, 1).float().mean()),
        "top5": float(topk_hits(probs, labels, 5).float().mean()),
        "mean_class_acc": mean_class_accuracy(probs.argmax(dim=1), labels),
    }


def joint_label(labels: dict[str, torch.Tensor], sizes: dict[str, int]) -> torch.Tensor:
    """Index of the (verb, noun, ...) pair in the flattened joint class space."""
    joint = torch.zeros_like(next(iter(labels.values())))
    for name, size in sizes.items():
        joint = joint * size + labels[name]
    return joint


def joint_topk(probs: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """The k most probable joint classes per row, ranking the product of the heads' probabilities."""
    heads = list(probs.values())
    rows = heads[0].shape[0]
    joint_size = 1
    for p in heads:
        joint_size *= p.shape[1]
    k = min(k, joint_size)
    chunk = max(1, JOINT_CHUNK // joint_size)
    out = []
    for start in range(0, rows, chunk):
        joint = heads[0][start:start + chunk]
        for p in heads[1:]:
            joint = (joint[:, :, None] * p[start:start + chunk, None, :]).flatten(1)
        out.append(joint.topk(k, dim=1).indices)
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.long)


def score(probs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, Any]:
    """top1, top5, mean_class_acc (and per-head numbers when there are several heads)."""
    if len(probs) == 1:
        (name, p), = probs.items()
        return score_head(p, labels[name])
    heads = {name: score_head(probs[name], labels[name]) for name in probs}
    sizes = {name: p.shape[1] for name, p in probs.items()}
    truth = joint_label(labels, sizes)
    top = joint_topk(probs, 5)
    if truth.numel() == 0:
        return {"top1": 0.0, "top5": 0.0, "mean_class_acc": 0.0, "heads": heads}
    return {
        "top1": float((top[:, 0] == truth).float().mean()),
        "top5": float((top == truth[:, None]).any(dim=1).float().mean()),
        "mean_class_acc": mean_class_accuracy(top[:, 0], truth),
        "heads": heads,
    }


def batch_correct(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Number of clips in a training batch whose every head's top-1 is right."""
    right = torch.stack([logits[h].argmax(dim=1) == labels[h] for h in logits]).all(dim=0)
    return right.sum()
