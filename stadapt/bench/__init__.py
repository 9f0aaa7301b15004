"""`stadapt bench`: what a recipe costs and how fast it trains, as JSON results with tables.

- model: parameters, FLOPs, latency, throughput, training speed and memory of the model
  alone, against the published code's reference path and the backbone alone;
- loader: clips/s of the training input pipeline, against the published code's loading;
- run: the throughput a real training run reached, loader included;
- results: the device, library versions and result files every benchmark shares.
"""
