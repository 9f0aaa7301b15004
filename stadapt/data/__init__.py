"""Data: dataset indexers, manifests, decoding, sampling, transforms, the prepared store."""

# decord and PyAV each bundle FFmpeg. Whichever loads first provides the shared symbols, and
# with decord's first PyAV cannot open its VP9 encoder. Load PyAV's before anything imports decord.
import av  # noqa: F401
