"""Batched JPEG decoding on the GPU's hardware JPEG engines through libnvjpeg itself (ctypes),
for eval's GPU decoding.

torchvision's binding of the same library (decode_jpeg on a list) decodes on a pool stream of
the lowest priority, copies each file from pageable memory and converts each frame with its
own kernel, and then waits for its stream: while the model runs, each of those per-frame steps
queues behind the model's kernels, and a call of 768 frames takes four times as long as alone
(docs/performance.md). Here the files go to the device as one buffer (the hardware backend
that reads its bitstreams from device memory), the work is queued on the caller's stream
(which can have a high priority) and nothing waits for it: the caller's stream orders the
frames' use. `output="yuv"` takes the engines' planes as they are and converts the colours of
a whole frame size at once (`ycbcr_to_rgb`).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import sys
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# nvjpeg.h
_BACKEND_HARDWARE, _BACKEND_HARDWARE_DEVICE = 3, 5
_OUTPUT = {"yuv": 1, "rgb": 3}
_CSS_GRAY, _CSS_UNKNOWN = 6, -1
_MAX_COMPONENT = 4


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """libnvjpeg: NVIDIA's wheel (nvidia-nvjpeg) or torchvision's copy on sys.path, else the system's."""
    found = [path for entry in sys.path for pattern in ("nvidia/*/lib/libnvjpeg.so*", "torchvision.libs/libnvjpeg*.so*")
             for path in sorted(glob.glob(os.path.join(entry, pattern)))]
    candidates = [*found, "libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so"]
    errors = []
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
            continue
        p, i = ctypes.c_void_p, ctypes.c_int
        lib.nvjpegCreateEx.argtypes = [i, p, p, ctypes.c_uint, ctypes.POINTER(p)]
        lib.nvjpegJpegStateCreate.argtypes = [p, ctypes.POINTER(p)]
        lib.nvjpegGetImageInfo.argtypes = [p, p, ctypes.c_size_t, ctypes.POINTER(i), ctypes.POINTER(i),
                                           ctypes.POINTER(i), ctypes.POINTER(i)]
        lib.nvjpegDecodeBatchedInitialize.argtypes = [p, p, i, i, i]
        lib.nvjpegDecodeBatched.argtypes = [p, p, p, p, p, p]
        return lib
    raise RuntimeError(f"libnvjpeg not found ({'; '.join(errors[-2:])})")


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"nvjpeg {what} failed with status {status}")


class NvjpegBatchDecoder:
    """A JpegDecoder (gpu_decode): 3×H×W uint8 frames on `device`, decoded in one batched call on
    the hardware engines, queued on the current stream. A file the engines cannot take (not
    baseline, damaged header) fails the whole call with RuntimeError, as torchvision's does.

    `bitstreams`: "device" copies the files to the device as one buffer first, "host" lets nvjpeg
    copy each file. `output`: "rgb" (nvjpeg converts each frame) or "yuv" (one conversion per
    frame size, chroma upsampled bilinearly as libjpeg's fancy upsampling does)."""

    def __init__(self, device: torch.device, output: str = "rgb", bitstreams: str = "device"):
        if output not in _OUTPUT or bitstreams not in ("device", "host"):
            raise ValueError(f"output {output!r} / bitstreams {bitstreams!r}")
        self.device, self.output, self.on_device = device, output, bitstreams == "device"
        lib = library()
        self._handle, self._state = ctypes.c_void_p(), ctypes.c_void_p()
        backend = _BACKEND_HARDWARE_DEVICE if self.on_device else _BACKEND_HARDWARE
        _check(lib.nvjpegCreateEx(backend, None, None, 0, ctypes.byref(self._handle)), "create (hardware backend)")
        _check(lib.nvjpegJpegStateCreate(self._handle, ctypes.byref(self._state)), "state create")
        self._batch = -1
        self._header = (ctypes.c_int(), ctypes.c_int(), (ctypes.c_int * _MAX_COMPONENT)(),
                        (ctypes.c_int * _MAX_COMPONENT)())  # nvjpegGetImageInfo's outputs, reused

    def _info(self, file: torch.Tensor) -> tuple[int, ...]:
        """(chroma subsampling, the components' widths, their heights) from the file's header."""
        components, subsampling, widths, heights = self._header
        _check(library().nvjpegGetImageInfo(self._handle, file.data_ptr(), file.numel(), ctypes.byref(components),
                                            ctypes.byref(subsampling), widths, heights), "header")
        if subsampling.value in (_CSS_UNKNOWN, _CSS_GRAY) or components.value != 3:
            raise RuntimeError(f"nvjpeg: a JPEG of {components.value} components, subsampling {subsampling.value}")
        return (subsampling.value, *widths[:3], *heights[:3])

    def __call__(self, files: Sequence[torch.Tensor]) -> list[Optional[torch.Tensor]]:
        if not files:
            return []
        lib = library()
        groups: dict[tuple[int, ...], list[int]] = {}  # one output allocation (and conversion) per frame size
        for i, file in enumerate(files):
            groups.setdefault(self._info(file), []).append(i)
        table = np.zeros((len(files), 2, _MAX_COMPONENT), dtype=np.uint64)  # nvjpegImage_t: channel[4], pitch[4]
        planes = []
        for (_, w, cw, _, h, ch, _), members in groups.items():
            rows, n = np.array(members), len(members)
            if self.output == "rgb":
                decoded: tuple[torch.Tensor, ...] = (torch.empty((n, 3, h, w), dtype=torch.uint8, device=self.device),)
                channels = list(decoded[0].unbind(1))
            else:
                decoded = (torch.empty((n, h, w), dtype=torch.uint8, device=self.device),
                           torch.empty((n, 2, ch, cw), dtype=torch.uint8, device=self.device))
                channels = [decoded[0], *decoded[1].unbind(1)]
            for c, plane in enumerate(channels):  # each frame's plane c: where it starts, its row length
                table[rows, 0, c] = plane.data_ptr() + np.arange(n, dtype=np.uint64) * np.uint64(plane.stride(0))
                table[rows, 1, c] = plane.shape[-1]
            planes.append((members, decoded))
        lengths = np.array([f.numel() for f in files], dtype=np.uint64)
        stream = torch.cuda.current_stream(self.device)
        if self.on_device:  # one pinned copy of every file, one transfer
            host = torch.empty(int(lengths.sum()), dtype=torch.uint8, pin_memory=True)
            torch.cat(list(files), out=host)
            buffer = host.to(self.device, non_blocking=True)  # freed after the call: reused in stream order
            pointers = np.uint64(buffer.data_ptr()) + np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.uint64)
        else:
            pointers = np.array([f.data_ptr() for f in files], dtype=np.uint64)
        if self._batch != len(files):
            _check(lib.nvjpegDecodeBatchedInitialize(self._handle, self._state, len(files), 1,
                                                     _OUTPUT[self.output]), "batch initialize")
            self._batch = len(files)
        _check(lib.nvjpegDecodeBatched(self._handle, self._state, pointers.ctypes.data, lengths.ctypes.data,
                                       table.ctypes.data, stream.cuda_stream), "decode")
        frames: list[Optional[torch.Tensor]] = [None] * len(files)
        for members, decoded in planes:
            rgb = decoded[0] if self.output == "rgb" else ycbcr_to_rgb(*decoded)
            for j, i in enumerate(members):
                frames[i] = rgb[j]
        return frames


def ycbcr_to_rgb(y: torch.Tensor, cbcr: torch.Tensor) -> torch.Tensor:
    """N×3×H×W uint8 RGB of JPEG's full-range YCbCr: luma N×H×W, chroma N×2×h×w at any
    subsampling, upsampled bilinearly (libjpeg's fancy upsampling is that filter at 2×)."""
    n, h, w = y.shape
    chroma = cbcr.float()
    if chroma.shape[-2:] != (h, w):
        chroma = F.interpolate(chroma, size=(h, w), mode="bilinear", align_corners=False)
    chroma -= 128.0
    cb, cr = chroma[:, 0], chroma[:, 1]
    luma = y.float()
    rgb = torch.stack((luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb), dim=1)
    return rgb.round_().clamp_(0, 255).to(torch.uint8)
