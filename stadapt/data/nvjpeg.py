"""Batched JPEG decoding on the GPU's hardware JPEG engines through libnvjpeg itself (ctypes):
eval's GPU decoder where the engines exist (A100, H100, H200), several batched calls at once.

torchvision's binding of the same library (decode_jpeg on a list) makes one call at a time
behind a global lock, on a pool stream of the lowest priority, and waits for that stream at
the end of each call. nvJPEG's hardware path copies each file to the device and converts each
frame with a kernel of its own (768 of each for a batch of 32 videos × 24 frames); while the
model runs, each of those steps queues behind the model's kernels and the call takes four
times as long as alone (docs/performance.md). Here a batch's files are split between
`PARTS` decoders, each with its own handle, thread and stream of the highest priority, so that
the parts' queued steps wait side by side instead of one after another. Measured alternatives
(benchmarks/jpeg_decoders.py at commit dd8b8a0): the files in one device buffer (the backend
that reads bitstreams from device memory: one copy back and one on the device per frame
instead), YUV output converted by us (three copies per frame), one call on a high-priority
stream: all slower.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import glob
import os
import sys
import threading
from typing import Optional, Sequence

import numpy as np
import torch

# nvjpeg.h
_BACKEND_HARDWARE = 3
_OUTPUT_RGB = 3
_CSS_GRAY, _CSS_UNKNOWN = 6, -1
_MAX_COMPONENT = 4
PARTS = 4  # decoders a batch is split between
HIGHEST_PRIORITY = -10  # below CUDA's range: torch.cuda.Stream maps it to the highest priority


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """libnvjpeg: NVIDIA's wheel (nvidia-nvjpeg) or torchvision's copy on sys.path, else the system's."""
    found = [path for entry in sys.path for pattern in ("nvidia/*/lib/libnvjpeg.so*", "torchvision.libs/libnvjpeg*.so*")
             for path in sorted(glob.glob(os.path.join(entry, pattern)))]
    errors = []
    for name in [*found, "libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so"]:
        try:
            lib = ctypes.CDLL(name)  # a CDLL releases the GIL during its calls
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
    """3×H×W uint8 frames on `device` from one batched call on the hardware engines, queued on the
    current stream without waiting for it. A file the engines cannot take (not baseline, a
    damaged header) fails the whole call with RuntimeError, as torchvision's does. One caller
    at a time."""

    def __init__(self, device: torch.device):
        self.device = device
        lib = library()
        self._handle, self._state = ctypes.c_void_p(), ctypes.c_void_p()
        _check(lib.nvjpegCreateEx(_BACKEND_HARDWARE, None, None, 0, ctypes.byref(self._handle)),
               "create (hardware backend)")
        _check(lib.nvjpegJpegStateCreate(self._handle, ctypes.byref(self._state)), "state create")
        self._batch = -1
        self._header = (ctypes.c_int(), ctypes.c_int(), (ctypes.c_int * _MAX_COMPONENT)(),
                        (ctypes.c_int * _MAX_COMPONENT)())  # nvjpegGetImageInfo's outputs, reused

    def _size(self, file: torch.Tensor) -> tuple[int, int]:
        """(height, width) from the file's header."""
        components, subsampling, widths, heights = self._header
        _check(library().nvjpegGetImageInfo(self._handle, file.data_ptr(), file.numel(), ctypes.byref(components),
                                            ctypes.byref(subsampling), widths, heights), "header")
        if subsampling.value in (_CSS_UNKNOWN, _CSS_GRAY) or components.value != 3:
            raise RuntimeError(f"nvjpeg: a JPEG of {components.value} components, subsampling {subsampling.value}")
        return heights[0], widths[0]

    def __call__(self, files: Sequence[torch.Tensor]) -> list[Optional[torch.Tensor]]:
        if not files:
            return []
        lib = library()
        by_size: dict[tuple[int, int], list[int]] = {}  # one output allocation per frame size
        for i, file in enumerate(files):
            by_size.setdefault(self._size(file), []).append(i)
        table = np.zeros((len(files), 2, _MAX_COMPONENT), dtype=np.uint64)  # nvjpegImage_t: channel[4], pitch[4]
        outputs = []
        for (h, w), members in by_size.items():
            rgb = torch.empty((len(members), 3, h, w), dtype=torch.uint8, device=self.device)
            starts = np.arange(len(members), dtype=np.uint64) * np.uint64(rgb.stride(0))
            for c in range(3):  # each frame's plane c: where it starts, its row length
                table[members, 0, c] = rgb[:, c].data_ptr() + starts
                table[members, 1, c] = w
            outputs.append((members, rgb))
        pointers = np.array([f.data_ptr() for f in files], dtype=np.uint64)
        lengths = np.array([f.numel() for f in files], dtype=np.uint64)
        if self._batch != len(files):
            _check(lib.nvjpegDecodeBatchedInitialize(self._handle, self._state, len(files), 1, _OUTPUT_RGB),
                   "batch initialize")
            self._batch = len(files)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        _check(lib.nvjpegDecodeBatched(self._handle, self._state, pointers.ctypes.data, lengths.ctypes.data,
                                       table.ctypes.data, stream), "decode")
        frames: list[Optional[torch.Tensor]] = [None] * len(files)
        for members, rgb in outputs:
            for j, i in enumerate(members):
                frames[i] = rgb[j]
        return frames


class ParallelNvjpeg:
    """A JpegDecoder (gpu_decode): each call's files split between `parts` NvjpegBatchDecoders,
    each in its own thread on its own stream of the highest priority; the caller's stream waits
    for them. One caller at a time (a lock)."""

    def __init__(self, device: torch.device, parts: int = PARTS):
        self.device = device
        self.decoders = [NvjpegBatchDecoder(device) for _ in range(parts)]
        self.streams = [torch.cuda.Stream(device, priority=HIGHEST_PRIORITY) for _ in range(parts)]
        self._threads = concurrent.futures.ThreadPoolExecutor(parts, thread_name_prefix="stadapt-nvjpeg")
        self._lock = threading.Lock()

    def __call__(self, files: Sequence[torch.Tensor]) -> list[Optional[torch.Tensor]]:
        caller = torch.cuda.current_stream(self.device)
        n = len(self.decoders)
        bounds = [round(k * len(files) / n) for k in range(n + 1)]

        def part(k: int) -> list[Optional[torch.Tensor]]:
            with torch.cuda.device(self.device), torch.cuda.stream(self.streams[k]):
                return self.decoders[k](files[bounds[k]:bounds[k + 1]])

        with self._lock:  # every part finishes, even when one fails, before the next call
            futures = [self._threads.submit(part, k) for k in range(n)]
            concurrent.futures.wait(futures)
            frames = [f for future in futures for f in future.result()]
        for stream in self.streams:
            caller.wait_stream(stream)
        for frame in frames:
            if frame is not None:
                frame.record_stream(caller)  # allocated on a part's stream, used on the caller's
        return frames


@functools.lru_cache(maxsize=None)
def hardware_decoder(device: torch.device) -> Optional[ParallelNvjpeg]:
    """The device's ParallelNvjpeg, or None where there are no JPEG engines or no libnvjpeg."""
    try:
        return ParallelNvjpeg(device)
    except RuntimeError:
        return None
