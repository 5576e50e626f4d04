"""Small torch classifiers that export cleanly to ONNX; each returns raw logits."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn

ARCHITECTURES = ("mlp", "cnn", "text")


def mlp(in_features: int, n_classes: int, hidden: Sequence[int] = (256,)) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU] per hidden width -> Linear to `n_classes` logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def small_cnn(
    in_channels: int, n_classes: int, channels: Sequence[int] = (32, 64)
) -> nn.Sequential:
    """[Conv3x3 -> ReLU -> MaxPool2] per width, global average pool, Linear.

    Global pooling makes it independent of the image size (8x8 up to 224x224)."""
    layers: list[nn.Module] = []
    width = in_channels
    for size in channels:
        layers += [
            nn.Conv2d(width, size, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        width = size
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, n_classes)]
    return nn.Sequential(*layers)


class EmbeddingBagClassifier(nn.Module):
    """Mean of the word embeddings of a sentence (padding ignored), then Linear.

    Same function as `nn.EmbeddingBag(mode="mean", padding_idx=pad_id)` on padded ids,
    written with `nn.Embedding` and a mask so the ONNX graph is plain Gather/ReduceSum:
        h = sum_t m_t E[w_t] / max(1, sum_t m_t),  m_t = [w_t != pad_id];  logits = W h + b
    """

    def __init__(
        self, vocab_size: int, n_classes: int, embedding_dim: int = 64, pad_id: int = 0
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.head = nn.Linear(embedding_dim, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).unsqueeze(-1).to(self.embedding.weight.dtype)
        summed = (self.embedding(ids) * mask).sum(dim=1)
        count = mask.sum(dim=1).clamp(min=1.0)
        return self.head(summed / count)


def build_model(
    arch: str,
    input_shape: Sequence[int],
    n_classes: int,
    *,
    hidden: Sequence[int] = (256,),
    vocab_size: int | None = None,
) -> nn.Module:
    """The named architecture for samples of `input_shape`.

    `mlp` takes any shape (flattened), `cnn` takes (C, H, W), `text` takes (L,) int64
    word ids and needs `vocab_size`; `hidden` sets the MLP widths or CNN channels."""
    if arch == "mlp":
        return mlp(prod(input_shape), n_classes, hidden)
    if arch == "cnn":
        if len(input_shape) != 3:
            raise ValueError(
                f"cnn needs (channels, height, width) samples, got {tuple(input_shape)}"
            )
        return small_cnn(input_shape[0], n_classes, hidden)
    if arch == "text":
        if vocab_size is None:
            raise ValueError("the text model needs vocab_size")
        return EmbeddingBagClassifier(
            vocab_size, n_classes, embedding_dim=hidden[0] if hidden else 64
        )
    raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")
