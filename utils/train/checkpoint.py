"""What a run leaves on disk and reads back: the resume state, the model files, epochs.csv.

Resume design (why not keras.callbacks.BackupAndRestore): in Keras 3.15 it saves
the model weights and a separate epoch JSON non-atomically (a kill between the
two leaves them out of step), it restores only `fit`'s epoch counter (not our
best score, early-stopping patience, plateau LR scale or freeze/fine-tune phase)
and it knows nothing about our epoch CSV. So at every epoch end ONE file,
model_save/NAME.resume/state.npz, is written atomically (tmp + fsync + rename):
all model variables, all optimizer variables (iteration counter, moments, EMA and
gradient accumulators included) and the JSON run record (`new_run`). The LR
schedule is a function of the optimizer's iteration counter (see optim.py), so
the state file alone puts a resumed run back exactly where it was.

Mid-epoch (--checkpoint-every / --checkpoint-minutes, and on SIGTERM/SIGINT,
see interrupt.py and callbacks.StepCheckpoint) the same file is written with
`step` > 0 in the run record: the steps done in the epoch in progress. The
input position needs nothing more: the training stream's order is a function of
the seed and its position (utils.input.pipeline.resumable_stream), so the
resumed run skips the records of (epoch - phase start) * steps + step batches.
The dropout RNG states (Keras SeedGenerators: model.variables that are not
model.weights) are saved too, so a resumed run draws the same masks.

Under MultiWorkerMirroredStrategy only the chief writes the state (the others'
folders are throw-away, distribute.worker_dir). On --resume the chief reads the
file's bytes and `load(share=...)` hands them to every worker
(distribute.from_chief, a collective), so all of them parse the same bytes:
weights, optimizer, RNG state and position are the chief's, with no shared disk.
A chief that cannot read the file (EIO, a permission) still takes part and sends
that error instead, so every worker stops with its one line rather than waiting.
Who the chief is, here and in from_chief, is distribute.is_chief (TF_CONFIG).

`Checkpoint` is the only owner of that state: the loop and the callbacks read and
change the run record through it, and `save_state` is its one writer.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import sys
import zipfile

import keras
import numpy as np

from utils.errors import UsageError, first_line
from utils.files import atomic_open, atomic_path, atomic_write_text, exclusive_lock
from utils.train.config import resume_mismatch
from utils.train.optim import iterations

STATE_FILE = "state.npz"
LOCK_FILE = "train.lock"


def new_run(cfg: dict | None = None) -> dict:
    """The run record that survives --resume (JSON inside state.npz), at its start.

    Keys: epoch (epochs completed), phase (name of the phase being trained), best
    (best monitored score), best_epoch (1-based), wait (epochs since the best, for
    --early-stop), plateau_wait (for --schedule plateau), lr_scale (the plateau
    rule's LR factor), stopped (early-stopped), iterations (optimizer updates in the
    current phase), step (steps done in epoch `epoch` + 1, 0 at an epoch's end),
    config (the resolved config).
    """
    return {"epoch": 0, "phase": None, "best": None, "best_epoch": None, "wait": 0, "plateau_wait": 0,
            "lr_scale": 1.0, "stopped": False, "iterations": 0, "step": 0, "config": cfg}


class Checkpoint:
    """The resume state of one run (state.npz + the run record) and its epoch CSV.

    In the order loop.run uses it:
        ckpt = Checkpoint(resume_dir, csv_path, cfg)
        ckpt.load()                                   # --resume: read, refuse changed settings
        ckpt.restore(model, scale)                    # weights, run record; CSV cut to saved epochs
        ckpt.enter_phase(name, scale)                 # per phase; and after compile:
        ckpt.restore_phase_optimizer(name, model, optimizer)
        ckpt.end_epoch(epoch, row, model, optimizer)  # from callbacks.EpochEnd
        ckpt.finish()                                 # run complete: the state folder goes

    Args:
        resume_dir: model_save/NAME.resume (created on the first save).
        csv_path: log/NAME/epochs.csv.
        cfg: the resolved config, saved in the run record.
        chief: whether this process reads the state from disk and prints (a
            non-chief worker gets the chief's state through `load`'s `share`).
    """

    def __init__(self, resume_dir: str, csv_path: str, cfg: dict, chief: bool = True):
        self.resume_dir, self.csv_path, self.cfg, self.chief = resume_dir, csv_path, cfg, chief
        self.run = new_run(cfg)
        self.rows: list[dict] = []
        self.saved: dict | None = None

    def load(self, share=None) -> None:
        """With --resume, read the saved state (a note when there is none).

        Args:
            share: `share(raw)` -> the chief's raw state bytes (or None) on every
                worker, given this process's (distribute.from_chief; every worker
                calls load). None: one process, its own file. On the chief `raw`
                may be the UsageError of a failed read: share then raises it on
                every worker.

        Raises:
            UsageError: the interrupted run had other settings (config.RESUME_MUTABLE
                lists those that may change), or the chief could not read its state file,
                or it is corrupt.
        """
        if not self.cfg["resume"]:
            return
        raw = self._read_or_why() if self.chief else None  # a non-chief's disk never counts
        if share is None and isinstance(raw, Exception):
            raise raw
        self.saved = parse_state(share(raw) if share is not None else raw, self.state_path)
        if self.saved is None:
            if self.chief:
                print(f"note: no resume state in {self.resume_dir}; starting from epoch 1", file=sys.stderr)
            return
        changed = resume_mismatch(self.saved["run"]["config"], self.cfg)
        if changed:
            raise UsageError(f"--resume with different settings ({', '.join(changed)}): use the interrupted run's flags")

    @property
    def state_path(self) -> str:
        """resume_dir/state.npz: where this run's state is read (and named in its errors)."""
        return os.path.join(self.resume_dir, STATE_FILE)

    def _read_or_why(self) -> bytes | None | UsageError:
        """The state's bytes (None: there is none), or, when reading failed, the error line that says so.

        Returned, not raised: under MultiWorker the chief must still take part in
        `share` (a collective), so that every worker fails together.
        """
        try:
            return read_state_bytes(self.resume_dir)
        except OSError as e:
            return UsageError(f"cannot read the resume state {self.state_path}: {e.strerror or e}: "
                              "restore it, delete the .resume folder or drop --resume")

    def restore(self, model, scale) -> None:
        """Put the saved weights, run record and LR scale back; keep the CSV rows of saved epochs only."""
        rows = []
        if self.saved:
            self.run.update(self.saved["run"], config=self.cfg)
            restore_model(model, self.saved)
            scale.assign(self.run["lr_scale"])
            rows = rows_up_to(read_csv_rows(self.csv_path), self.run["epoch"])
            if self.chief:
                print(f"resuming after epoch {self.run['epoch']} ({self.run['phase']} phase)", file=sys.stderr)
                print(f"resuming at epoch {self.run['epoch'] + 1}, step {self.run['step']}", file=sys.stderr)
        if rows:
            write_csv_rows(self.csv_path, rows)  # drops rows of an epoch that died before its checkpoint
        elif os.path.exists(self.csv_path):
            os.remove(self.csv_path)
        self.rows = rows

    def enter_phase(self, name: str, scale) -> None:
        """A phase not yet started begins with fresh patience counters and LR scale."""
        if self.run["phase"] != name:
            self.run.update(phase=name, wait=0, plateau_wait=0, lr_scale=1.0)
            scale.assign(1.0)

    def restore_phase_optimizer(self, name: str, model, optimizer) -> None:
        """The saved optimizer state, when the run was interrupted inside phase `name`."""
        if self.saved and self.saved["run"]["phase"] == name:
            restore_optimizer(model, optimizer, self.saved)

    def end_epoch(self, epoch: int, row: dict, model, optimizer) -> None:
        """The epoch's CSV row, then the state (last: state epoch N implies row N is written).

        Args:
            epoch: 0-based, as fit counts.
            row: the epochs.csv row ("epoch" from 0, like keras.callbacks.CSVLogger).
        """
        self.run.update(iterations=iterations(optimizer), step=0)
        self.rows = rows_up_to(self.rows, epoch) + [row]
        write_csv_rows(self.csv_path, self.rows)
        save_state(self.resume_dir, model, optimizer, self.run)

    def save_step(self, step: int, model, optimizer) -> str:
        """The state `step` steps into epoch run["epoch"] + 1 (its CSV row does not exist yet).

        Returns:
            the state file written.
        """
        self.run.update(iterations=iterations(optimizer), step=int(step))
        return save_state(self.resume_dir, model, optimizer, self.run)

    def finish(self) -> None:
        """The run is complete: --resume has nothing left to do."""
        remove_dir(self.resume_dir)


# ----------------------------------------------------------------- the state file


def save_state(resume_dir: str, model, optimizer, run: dict) -> str:
    """Model + optimizer variables + run record -> resume_dir/state.npz, atomically."""
    os.makedirs(resume_dir, exist_ok=True)
    arrays = {f"m{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model.weights)}
    arrays.update({f"o{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    arrays.update({f"s{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(rng_variables(model))})
    arrays["run"] = np.array(json.dumps(run))
    path = os.path.join(resume_dir, STATE_FILE)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_state(resume_dir: str) -> dict | None:
    """{'run': dict, 'model': [arrays], 'optimizer': [arrays], 'rng': [arrays]}, or None when there is none."""
    return parse_state(read_state_bytes(resume_dir))


def read_state_bytes(resume_dir: str) -> bytes | None:
    """resume_dir/state.npz as bytes (what distribute.from_chief sends), or None when there is none."""
    path = os.path.join(resume_dir, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def parse_state(raw: bytes | None, path: str = STATE_FILE) -> dict | None:
    """The bytes of a state.npz as load_state returns it (None stays None).

    Args:
        raw: the file's bytes (under MultiWorkerMirrored: the chief's, on every worker).
        path: where they were read, for the error.
    Raises:
        UsageError: the bytes are not a state this project wrote (truncated, overwritten,
            bit rot): one line, on every worker alike.
    """
    if raw is None:
        return None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            keys = sorted(z.files)
            return {"run": json.loads(str(z["run"])),
                    "model": [z[k] for k in keys if k.startswith("m")],
                    "optimizer": [z[k] for k in keys if k.startswith("o")],
                    "rng": [z[k] for k in keys if k.startswith("s")]}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # JSONDecodeError is a ValueError
        raise UsageError(f"the resume state {path} is corrupt ({first_line(e)}): "
                         "delete the .resume folder or drop --resume") from None


def _assign_all(variables, arrays, what: str) -> None:
    if len(variables) != len(arrays):
        raise UsageError(f"resume state does not fit this run ({what}: {len(arrays)} saved vs {len(variables)} "
                         "variables): drop --resume or delete the .resume folder")
    for v, a in zip(variables, arrays):
        if tuple(v.shape) != tuple(a.shape):
            raise UsageError(f"resume state does not fit this run ({what} {v.path}: {a.shape} vs {tuple(v.shape)})")
    for v, a in zip(variables, arrays):
        v.assign(a)


def restore_model(model, saved: dict) -> None:
    """The saved model variables, in order.

    Raises:
        UsageError: their number or shapes differ from this model's.
    """
    _assign_all(model.weights, saved["model"], "model")
    rng = rng_variables(model)
    if saved.get("rng") and len(saved["rng"]) == len(rng):  # states written before they were saved have none
        _assign_all(rng, saved["rng"], "RNG")


def rng_variables(model) -> list:
    """The model's RNG states (dropout's SeedGenerator): model.variables that are not weights."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def run_lock(log_dir: str, what: str):
    """The one-writer lock of a run's outputs: log/NAME/train.lock (utils.files.exclusive_lock).

    Inside log/NAME because that folder is named after the run whatever folder
    --out is in (two runs with one NAME would mix their epochs.csv), and so that
    model_save/ holds only the model files.

    Raises:
        utils.files.LockedError: another live run holds it (its str() is the `error:` line).
    """
    return exclusive_lock(os.path.join(log_dir, LOCK_FILE), what)


def restore_optimizer(model, optimizer, saved: dict) -> None:
    """Build the optimizer's slots for the current trainable set, then overwrite them."""
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    _assign_all(optimizer.variables, saved["optimizer"], "optimizer")


def remove_dir(path: str) -> None:
    """The resume folder once a run is complete; a non-chief worker's temp dirs."""
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------- model files


def inference_view(model):
    """The same layers as an uncompiled functional model (no optimizer, losses, schedule).

    Saved files then load with nothing but `import model`, whatever training
    objects were used; a dict of outputs stays a dict.
    """
    try:
        return keras.Model(model.inputs, model.output, name=model.name)
    except (AttributeError, ValueError):
        return model


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record) -> bool:
        return self.text not in record.getMessage()


def save_model_files(model, base: str) -> list[str]:
    """base.h5 and base.keras, each written under a temp name and renamed into place."""
    view = inference_view(model)
    written = []
    # Keras 3.15's saving_api logs "You are saving your model as an HDF5 file ... legacy" on every
    # .h5 save; .h5 is in our contract on purpose. Drop the filter if Keras stops logging it.
    quiet = _DropMessage("saving your model as an HDF5 file")
    logging.getLogger("absl").addFilter(quiet)
    try:
        for ext in (".h5", ".keras"):
            # Keras picks the format from the extension, so the temp name keeps it
            with atomic_path(base + ext, tmp_suffix=f".tmp{ext}") as tmp:
                view.save(tmp)
            written.append(base + ext)
    finally:
        logging.getLogger("absl").removeFilter(quiet)
    return written


# ----------------------------------------------------------------- epochs.csv


def read_csv_rows(path: str) -> list[dict]:
    """epochs.csv as dicts of strings; [] when it does not exist."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv_rows(path: str, rows: list[dict]) -> None:
    """Rewrite the whole (small) CSV atomically; columns = union in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def rows_up_to(rows: list[dict], n: int) -> list[dict]:
    """Rows of the first `n` epochs, the last one kept per epoch (a resumed run rewrites).

    The "epoch" column counts from 0, as keras.callbacks.CSVLogger does (and
    utils.plots.save_history_plot expects).
    """
    by_epoch = {}
    for r in rows:
        e = int(float(r["epoch"]))
        if e < n:
            by_epoch[e] = r
    return [by_epoch[e] for e in sorted(by_epoch)]
