"""The H.264 payload of a frame-store entry (`stadapt prepare --decode --store h264`).

Why: per-frame JPEGs of detailed footage take about 1.8 GB per hour of 340×256 video, more
than the data set itself; coding each frame against the one before it takes a quarter of
that at the same fidelity (README, "Loading"). A clip must still cost only its own frames,
so the keyframes come every `gop` frames (4), there are no B-frames (each packet is one
frame, in display order), and every keyframe repeats the sequence headers: a frame is
decoded by a fresh decoder fed from its keyframe up to it, at most gop frames.

The entry layout is the JPEG store's (stadapt.data.store), with one packet per frame where
the JPEG store keeps one JPEG. x264 codes 4:2:0 pictures of even sizes: an odd width or
height is padded by repeating the last column or row and cropped off again when decoded.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, Sequence

import av
import numpy as np

GOP = 4  # frames from one keyframe to the next: a frame costs at most 4 decodes, 2.5 on average
CRF = 20  # x264's constant quality: ≥ 36 dB against the source on detailed footage (README)


class H264Encoder:
    """Frames in (H×W×3 uint8 RGB, one size), packets out: encode() may return none or several
    (x264 looks ahead), flush() the rest; in the end exactly one packet per frame."""

    def __init__(self, width: int, height: int, gop: int = GOP, crf: int = CRF) -> None:
        self.width, self.height = width, height
        self.codec = av.CodecContext.create("libx264", "w")
        self.codec.width, self.codec.height = width + width % 2, height + height % 2
        self.codec.pix_fmt = "yuv420p"
        self.codec.time_base = Fraction(1, 25)  # the store keeps the frame order, not the timing
        self.codec.thread_count = 1  # the store is written by one process per core
        self.codec.options = {"preset": "veryfast", "crf": str(crf),
                              "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1"}
        self.frames = 0

    def encode(self, image: np.ndarray) -> list[bytes]:
        padded = np.pad(image, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24").reformat(format="yuv420p")
        frame.pts = self.frames
        self.frames += 1
        return [bytes(packet) for packet in self.codec.encode(frame)]

    def flush(self) -> list[bytes]:
        return [bytes(packet) for packet in self.codec.encode(None)]


def decode_frames(wanted: Sequence[int], read_packets: Callable[[int, int], list[bytes]], gop: int, width: int,
                  height: int) -> dict[int, np.ndarray]:
    """{frame: H×W×3 uint8 RGB} for the sorted distinct frame numbers `wanted`, each run of them
    that shares a keyframe decoded once from it; read_packets(first, last) gives the packets of
    frames first..last."""
    out: dict[int, np.ndarray] = {}
    wanted = sorted(set(int(i) for i in wanted))
    wanted_set = set(wanted)
    runs: dict[int, int] = {}  # keyframe → last wanted frame after it
    for i in wanted:
        runs[i - i % gop] = i
    for key, last in runs.items():
        codec = av.CodecContext.create("h264", "r")
        codec.thread_count = 1  # a loader worker is one core; frame threads would only add delay
        decoded = []
        for packet in read_packets(key, last):
            decoded += codec.decode(av.Packet(packet))
        decoded += codec.decode(None)
        if len(decoded) != last - key + 1:
            raise ValueError(f"{len(decoded)} pictures from the {last - key + 1} packets of frames {key}..{last}")
        for offset, frame in enumerate(decoded):
            if key + offset in wanted_set:
                out[key + offset] = frame.to_ndarray(format="rgb24")[:height, :width]
    return out
