"""The shared engine under the CLI: training, evaluation, prediction, checkpoints, distribution.

train.py        the training loop (`stadapt train`)
evaluate.py     multi-view evaluation and its reports (`stadapt eval`, periodic evaluation)
predict.py      class probabilities for video files (`stadapt predict`)
stream.py       the step-based, resumable training data stream and the evaluation loader
schedule.py     AdamW parameter groups and the warm-up + cosine learning-rate schedule
checkpoint.py   resume state: save atomically, load without unpickling code
rundir.py       the run directory: naming, lock, runs/latest, metrics.jsonl, recipe.yaml
distributed.py  torchrun / DDP setup and the few collectives the engine needs
interrupt.py    SIGTERM / SIGINT turned into "save at the end of this step"
metrics.py      top-k, mean class accuracy, action accuracy
plots.py        curves.png and confusion matrices (matplotlib, Agg)
progress.py     the progress display: rich on a terminal, plain lines otherwise
"""
