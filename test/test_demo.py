"""`dpm demo --offline` end to end on a short sequence with the shipped ONNX model: the PNG overview and the metrics
table are written, the oracle column (ground truth through the node's own code) scores ~0, and the model column
holds finite numbers."""
from __future__ import annotations

import re

import cv2
import numpy as np


def table(path) -> dict[str, tuple[float, float]]:
    """metrics.md rows -> {metric: (model, oracle)}."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"-?[0-9.]+(e-?\d+)?", cells[1] or "x"):
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    return rows


def test_offline_demo_writes_overview_and_scores_the_oracle_at_zero(tmp_path):
    from dpm_ros.cli import main
    out = tmp_path / "demo"
    assert main(["demo", "--offline", "--frames", "12", "--size", "64", "--out", str(out)]) == 0
    png = cv2.imread(str(out / "overview.png"))
    assert png is not None and png.shape[0] > 400 and png.shape[1] > 1000
    assert png.std() > 10                                   # a picture, not a blank canvas
    rows = table(out / "metrics.md")
    assert rows["pairs scored"] == (11.0, 11.0)
    for key in ("Lrel P1(t1,π1)", "Lrel P1(t2,π1)", "object-flow EPE fwd", "object RPE rot (°)",
                "ego APE RMSE (m, Sim(3)-aligned)"):
        model, oracle = rows[key]
        assert oracle < 1e-3, (key, oracle)
        assert np.isfinite(model) and model >= 0
    assert 0.0 < rows["Lrel P1(t1,π1)"][0] < 1.0
    assert (out / "output.mcap").stat().st_size > 0 and (out / "oracle.mcap").stat().st_size > 0
