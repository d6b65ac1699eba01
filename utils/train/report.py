"""log/NAME/report.html: a run at a glance (scores, curves, the epochs table, the resolved config)."""
from __future__ import annotations

import os

from utils.report import Page


def write_run_report(log_dir: str, name: str, cfg: dict, run: dict, monitor: str, epochs: list[dict],
                     curves_png: str | None) -> str:
    """Write log_dir/report.html, self-contained (the curves embedded); returns its path.

    Args:
        log_dir: log/NAME.
        name: the run's NAME.
        cfg: the resolved config (as saved in NAME.config.yaml).
        run: the run record (best_epoch, best, epoch, iterations, stopped).
        monitor: the monitored metric's name.
        epochs: epochs.csv's rows, one dict per epoch.
        curves_png: curves.png, or None when there were no epochs to plot.
    """
    page = Page(f"Training run {name}", subtitle=f"{cfg.get('model')} on {cfg.get('data')}")
    page.heading("Result", id="result-section")
    best = run.get("best")
    page.mapping({"monitored": monitor, "best score": best if best is None else round(float(best), 6),
                  "best epoch": run.get("best_epoch"), "epochs run": run.get("epoch"),
                  "optimizer steps": run.get("iterations"), "early stopped": bool(run.get("stopped"))},
                 id="result")
    if curves_png and os.path.isfile(curves_png):
        page.heading("Curves", id="curves-section")
        page.image(curves_png, alt="training curves", width=900)
    if epochs:
        cols = list(dict.fromkeys(k for row in epochs for k in row))
        page.heading("Epochs", id="epochs-section")
        page.table(cols, [[row.get(c, "") for c in cols] for row in epochs], id="epochs", sortable=True)
    page.heading("Resolved config", id="config-section")
    page.mapping({k: ("" if v is None else v) for k, v in cfg.items()}, id="config")
    return page.write(os.path.join(log_dir, "report.html"))
