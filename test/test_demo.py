"""`dpm demo --offline` end to end on a short sequence with the shipped ONNX model: the PNG overview and the metrics
table are written, the oracle column (ground truth through the node's own code) scores ~0, and the model column
stays near what the shipped model measured."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.ros   # needs rclpy / ROS messages / DDS: `pytest -m "not ros"` leaves it out


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
    # The model column, against what the shipped engines/dpm_small.onnx measured here (upper bounds ~1.5-3x the
    # measurement; a model that does worse fails, a retrained better one passes). Measured at f4f9e81:
    # Lrel 0.344 / 0.344, object-flow EPE 0.0007, mask IoU 0.394, object RPE 9.97°, ego APE 0.055, ego RPE 0.376.
    model = {k: v[0] for k, v in rows.items()}
    assert 0.05 < model["Lrel P1(t1,π1)"] < 0.5                     # > 0.05: the column is not the oracle's
    assert abs(model["Lrel P1(t2,π1)"] - model["Lrel P1(t1,π1)"]) < 0.05   # P1(t2) = P1(t1) + v·dt, small motion
    assert model["object-flow EPE fwd"] < 0.005
    assert model["motion-mask IoU"] > 0.2
    assert model["object RPE rot (°)"] < 25.0
    assert model["ego APE RMSE (m, Sim(3)-aligned)"] < 0.15
    assert model["ego RPE trans (relative)"] < 0.8
    assert (out / "output.mcap").stat().st_size > 0 and (out / "oracle.mcap").stat().st_size > 0
