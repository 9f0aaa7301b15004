"""Write real encoded videos with PyAV (FFmpeg): the synthetic data set and test fixtures."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# container suffix → (codec, pixel format): every suffix stadapt.data.VIDEO_SUFFIXES accepts
CODECS = {
    ".mp4": ("libx264", "yuv420p"),
    ".webm": ("libvpx-vp9", "yuv420p"),
    ".avi": ("mpeg4", "yuv420p"),
    ".mkv": ("libx264", "yuv420p"),
    ".mov": ("libx264", "yuv420p"),
    ".m4v": ("libx264", "yuv420p"),
    ".3gp": ("libx264", "yuv420p"),
    ".ts": ("libx264", "yuv420p"),
    ".mpg": ("mpeg1video", "yuv420p"),
    ".mpeg": ("mpeg2video", "yuv420p"),
    ".wmv": ("wmv2", "yuv420p"),
    ".flv": ("flv", "yuv420p"),
    ".ogv": ("libvpx", "yuv420p"),  # VP8: this FFmpeg build has no Theora encoder
}


def write_video(path: str | Path, frames: np.ndarray, fps: int | Fraction = 25, codec: str | None = None,
                pix_fmt: str | None = None, gop: int | None = None) -> Path:
    """Encode `frames` (T×H×W×3 uint8 RGB, even H and W) to `path`; the suffix picks the codec.

    `fps` may be a Fraction for NTSC rates such as 30000/1001 (29.97)."""
    path = Path(path)
    default_codec, default_fmt = CODECS.get(path.suffix.lower(), CODECS[".mp4"])
    codec, pix_fmt = codec or default_codec, pix_fmt or default_fmt
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be T×H×W×3 uint8, got {frames.shape}")
    _, height, width, _ = frames.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        options = {}
        if codec == "libx264":
            # asm=0: x264's AVX-512 code gave different pictures from the same frames now and
            # then; the synthetic data set must depend only on its seed. Costs ~2.5x encode time.
            options = {"preset": "veryfast", "crf": "20", "x264-params": "asm=0"}
        elif codec == "libvpx-vp9":
            options = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b:v": "0"}
        elif codec == "mpeg4":
            # Constant quality 3 (in lambda units, FF_QP2LAMBDA = 118); a bare "qscale" option is
            # ignored and the default 200 kb/s rate control blurs every frame after the first dozen.
            options = {"flags": "+qscale", "global_quality": str(3 * 118)}
        if gop is not None:
            stream.codec_context.gop_size = gop
        stream.options = options
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
