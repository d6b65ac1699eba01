"""train.py's stage: fit a model/ model on a utils/input pipeline, and everything it writes.

  config      the OPTIONS table, flags, --config YAML, the resolved record (no TensorFlow)
  phases      the run's phases (epochs, trainable layers, LR multiplier, image size; pure)
  distribute  the tf.distribute strategy, the chief, per-worker folders, mixed precision
  optim       LR schedule with warm-up, optimizer, weight decay, accumulation, EMA
  checkpoint  the resume state, model files (.h5 / .keras), epochs.csv
  callbacks   per-epoch: monitor, best model, early stop, plateau LR, TensorBoard
  preview     --preview: an augmented batch as a PNG grid
  loop        run(cfg): the whole run

Nothing is imported here, so `from utils.train import config` (train.py --help)
does not load TensorFlow.
"""
