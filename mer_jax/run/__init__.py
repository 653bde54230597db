"""A run's pieces: its recipe (config defaults), inputs, model steps, loss, loop, checkpoints,
work directory and report. The programs (train, evaluate, study, tune, predict) put them together."""
