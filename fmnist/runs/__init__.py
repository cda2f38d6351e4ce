"""A run folder and everything fmnist reads from it or writes into it, in one place.

A run folder holds `.hydra/` (the overrides it was made with, and its config, which is compared, never used),
`checkpoints/` (`last.ckpt` and `epoch_NNN.ckpt`), `metrics.json`, `train.log`, TensorBoard's events and the
reports. `folder` owns its paths, its lock and how checkpoints are written; `metrics` owns metrics.json and the
`fmnist_*` figures a checkpoint keeps; `resume` rebuilds a run from the package's own fmnist/conf/ and plans what is
left.
"""
