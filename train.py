"""Train an image classifier on a dataset built by generate_dataset.py.

    python train.py --data data/demo --model densenet121 --weights none --image-size 64 --epochs 8

Reads data/NAME (TFRecord shards + manifest.json), builds model/ (backbone +
head), fits under a tf.distribute strategy and writes (NAME = the --out stem):
  model_save/NAME.h5, NAME.keras         last epoch (inference model: `import model`, then load_model)
  model_save/NAME.best.h5, NAME.best.keras   best epoch by the validation score
  model_save/NAME.json, NAME.config.yaml     metadata for detect.py, the resolved config
  log/NAME/epochs.csv, curves.png, TensorBoard events
  model_save/NAME.resume/                    crash-safe state for --resume (removed when done)
The last stdout line is the validation score, e.g. "val_accuracy 0.873 (best epoch 4)";
without validation (no val split, --val-split none, --train-on-val) the last
epoch is the model (no .best) and the line is its training loss.

Freeze-then-fine-tune: --warmup-epochs N trains only the heads for N epochs,
then --layers at --finetune-lr-mult x --lr, with a fresh optimizer and
schedule. --lr-warmup-epochs is the linear LR warm-up inside each phase.
Settings: utils/train/config.py (defaults < --config YAML < flags); the run:
utils/train/loop.py.
"""
from __future__ import annotations

import sys

from utils.errors import import_tensorflow_quietly, run_cli
from utils.train import config


def main(argv=None) -> int:
    cfg = config.resolve(config.build_parser(__doc__.split("\n\n")[0]).parse_args(argv))
    import_tensorflow_quietly()
    from utils.train.loop import run  # not at the top: --help and flag errors need no TensorFlow

    out = run(cfg)
    if out.get("preview"):
        print(f"wrote {out['preview']}")
    elif "find_lr" in out:
        if not out["chief"]:
            return 0
        found = out["find_lr"]
        print(f"wrote {found['png']} ({found['steps']} steps{', stopped: the loss diverged' if found['diverged'] else ''})")
        print(f"suggested --lr {found['suggestion']:.2g} (steepest descent of the smoothed loss; "
              f"minimum / 10: {found['min_div10']:.2g})")
    elif out["chief"] and not out["validate"]:
        loss = "nan" if out["last_loss"] is None else f"{out['last_loss']:.4f}"
        print(f"saved {out['base']}.h5 (+ .keras, .json): the last epoch, no validation; logs in {out['log_dir']}")
        print(f"loss {loss} (last epoch {out['run']['epoch']}, no validation)")
    elif out["chief"]:
        record = out["run"]
        print(f"saved {out['base']}.h5 (+ .keras, .best.*, .json); logs in {out['log_dir']}")
        score = "nan" if record["best"] is None else f"{record['best']:.3f}"
        print(f"{out['monitor']} {score} (best epoch {record['best_epoch']})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
