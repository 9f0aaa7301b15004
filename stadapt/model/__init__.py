"""ST-Adapter model: adapters, backbone loading, the video classifier and its builder."""
