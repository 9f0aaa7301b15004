"""The Spatio-Temporal Adapter: X + f(DWConv3D(X W_down)) W_up on the patch tokens.

One module, two ways to run the same weights:
- `reference`: reshape the tokens to a B×r×T×h×w volume and call `nn.Conv3d`, as the
  published code does (permute copies included);
- `fast`: for kernels of shape kT×1×1 the depth-wise convolution is a weighted sum of kT
  time-shifted copies of the B×T×L×r tokens, with no permute, and the projections run on
  all tokens as they lie in memory; other kernels fall back to the reference convolution.
Both read `conv.weight` (r×1×kT×kH×kW) and `conv.bias`, so state dicts are interchangeable.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

Activation = Literal["none", "gelu", "quick_gelu"]
Impl = Literal["fast", "reference"]


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: Activation) -> nn.Module:
    return {"none": nn.Identity, "gelu": nn.GELU, "quick_gelu": QuickGELU}[name]()


class STAdapter(nn.Module):
    """Bottleneck adapter with a depth-wise 3D convolution over the T×h×w token volume.

    `kernel=None` gives the plain adapter of the paper's Table 1 (no convolution).
    The convolution and all biases start at zero, so a new adapter is an exact identity.
    """

    def __init__(
        self,
        dim: int,
        width: int,
        kernel: Optional[Sequence[int]] = (3, 1, 1),
        activation: Activation = "none",
        impl: Impl = "fast",
        num_prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        self.impl = impl
        self.num_prefix_tokens = num_prefix_tokens
        self.fc1 = nn.Linear(dim, width)
        self.conv: Optional[nn.Conv3d] = None
        if kernel is not None:
            kernel = tuple(int(k) for k in kernel)
            self.conv = nn.Conv3d(width, width, kernel, padding=tuple(k // 2 for k in kernel), groups=width)
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(width, dim)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x: (B·T)×(prefix + h·w)×d tokens of B clips of `num_frames` frames."""
        prefix = self.num_prefix_tokens
        if self.impl == "fast" and self._time_only():
            # Project every token, prefix included, and drop the prefix rows of the result:
            # slicing the prefix off first would copy all patch tokens before fc1.
            h = self.fc1(x)
            if self.conv is not None:
                bt, length, width = h.shape
                h = self._time_conv(h.view(bt // num_frames, num_frames, length, width)).view(bt, length, width)
            delta = self.fc2(self.act(h))[:, prefix:]
        else:
            h = self.fc1(x[:, prefix:])
            if self.conv is not None:
                h = self._volume_conv(h, num_frames)
            delta = self.fc2(self.act(h))
        return torch.cat([x[:, :prefix], x[:, prefix:] + delta], dim=1)

    def _time_only(self) -> bool:
        return self.conv is None or self.conv.kernel_size[1:] == (1, 1)

    def _time_conv(self, h: torch.Tensor) -> torch.Tensor:
        """`shifted_time_conv` with this adapter's weights; under autograd it is recomputed in backward.

        Why: saving the convolution's input alone (not its zero-padded copy and its output as
        well) keeps ~480 fewer values per token and adapter for backward, about 5% of the
        training activations of the K400 ViT-B recipe; recomputing a few multiply-adds is free.
        """
        assert self.conv is not None
        if not torch.is_grad_enabled():
            return shifted_time_conv(h, self.conv.weight, self.conv.bias)
        # No randomness inside, so no RNG state to stash.
        return checkpoint(shifted_time_conv, h, self.conv.weight, self.conv.bias,
                          use_reentrant=False, preserve_rng_state=False)

    def _volume_conv(self, h: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The published way: reshape to a B×r×T×h×w volume, nn.Conv3d, reshape back."""
        assert self.conv is not None
        bt, length, width = h.shape
        side = math.isqrt(int(length))  # int(): under export tracing `length` is a traced scalar
        if side * side != length:
            raise ValueError(f"adapter expects a square grid of patch tokens, got {length}")
        vol = h.view(bt // num_frames, num_frames, side, side, width).permute(0, 4, 1, 2, 3).contiguous()
        vol = self.conv(vol)
        return vol.permute(0, 2, 3, 4, 1).contiguous().view(bt, length, width)


def shifted_time_conv(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Depth-wise kT×1×1 convolution with zero 'same' padding on B×T×L×C tokens.

    out[:, t] = bias + Σ_k weight[:, k] · h[:, t + k - kT//2]; channels stay last, no permute.
    """
    kt = weight.shape[2]
    num_frames = h.shape[1]
    taps = weight.view(weight.shape[0], kt).to(h.dtype)
    half = kt // 2
    padded = F.pad(h, (0, 0, 0, 0, half, half))  # pad the time axis
    out = padded[:, 0:num_frames] * taps[:, 0]
    for k in range(1, kt):
        out = out + padded[:, k : k + num_frames] * taps[:, k]
    if bias is not None:
        out = out + bias.to(h.dtype)
    return out
