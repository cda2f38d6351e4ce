"""The study's "attention" next step: image patches as tokens through a small Transformer encoder.

A strided convolution cuts the image into non-overlapping patches (4x4 gives 49 tokens; 1x28 gives the
28 rows the recurrent networks read), optionally after a 3x3 convolution stem that lets each patch see
its neighbours' edges, adds learned positions and a class token, and runs torch's
`TransformerEncoder` (pre-norm, GELU); the class token's final state, layer-normed, is the embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fmnist.models.base import FashionClassifier


def valid_patch(patch: Sequence[int]) -> bool:
    """The range of `patch`: each side a divisor of the 28-pixel image (1, 2, 4, 7, 14 or 28)."""
    return all(side >= 1 and 28 % side == 0 for side in patch)


class PatchTokens(nn.Module):
    """(B, 1, 28, 28) -> (B, 1 + patches, dim): the patch embeddings after a class token, plus learned positions."""

    def __init__(self, patch: Sequence[int], dim: int, stem: int = 0):
        super().__init__()
        height, width = patch
        self.embed = nn.Conv2d(stem or 1, dim, kernel_size=(height, width), stride=(height, width))
        if stem:
            stem_layers = [nn.Conv2d(1, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.GELU()]
            self.embed = nn.Sequential(*stem_layers, self.embed)
        tokens = (28 // height) * (28 // width)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = nn.Parameter(torch.empty(1, 1 + tokens, dim))
        nn.init.trunc_normal_(self.positions, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, patches, dim)
        cls = self.cls.expand(tokens.shape[0], -1, -1)  # shape[0], not len(x): an ONNX export keeps the batch dynamic
        return torch.cat([cls, tokens], dim=1) + self.positions


class Encoder(nn.TransformerEncoder):
    """torch's encoder, whose attention trains on the CPU with SDPA's math kernel: at these sizes (16 to 50
    tokens, heads of 24) the default kernel's backward makes a training step about 3x slower (docs/RESULTS.md).
    Inference, exports and other devices keep torch's choice."""

    def forward(self, src: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if src.device.type != "cpu" or not torch.is_grad_enabled() or torch.jit.is_tracing():
            return super().forward(src, *args, **kwargs)
        with sdpa_kernel(SDPBackend.MATH):
            return super().forward(src, *args, **kwargs)


class ClassToken(nn.Module):
    """The class token's state: (B, tokens, dim) -> (B, dim)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class PatchTransformer(FashionClassifier):
    """Patch tokens -> `depth` pre-norm Transformer encoder layers (`heads` heads, MLP of `mlp_ratio` x `dim`)
    -> LayerNorm of the class token -> Dense(10); `stem` > 0 puts a 3x3 convolution of that many channels
    (BatchNorm, GELU) before the patches. Recipe (fmnist/conf/model/attention.yaml): AdamW with a warm-up
    and decay, flip and crop augmentation."""

    default_optimizer = {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.05}

    def __init__(
        self,
        optimizer=None,
        patch: Sequence[int] = (4, 4),
        dim: int = 96,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
        dropout: float = 0.1,
        stem: int = 0,
        **base_options,
    ):
        super().__init__(optimizer, **base_options)
        if len(patch) != 2 or any(type(side) is not int for side in patch) or not valid_patch(patch):
            raise ValueError(f"patch must be [height, width], each dividing 28 (1, 2, 4, 7, 14, 28), not {patch}")
        if type(stem) is not int or stem < 0:
            raise ValueError(f"stem must be an integer >= 0 (channels; 0: no stem), not {stem}")
        if min(dim, depth, heads, mlp_ratio) < 1:
            raise ValueError(f"dim, depth, heads and mlp_ratio must be >= 1, not {dim}, {depth}, {heads}, {mlp_ratio}")
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads} (each head gets dim / heads)")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim * mlp_ratio, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.features = nn.Sequential(
            PatchTokens(patch, dim, stem),
            # no nested tensor: every sequence has the same length, and norm_first layers would warn
            Encoder(layer, depth, enable_nested_tensor=False),
            ClassToken(),
            nn.LayerNorm(dim),
        )
        self.classifier = nn.Linear(dim, 10)
