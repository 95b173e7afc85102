"""The one speed table: a row per kept train_speed result, the ratio measured within each run."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import speed_summary  # noqa: E402


def result(machine: str, amp: str, ours: float, ref: float, procs: dict | None = None) -> dict:
    out = {
        "machine": machine,
        "torch": "2.x",
        "epochs": 3,
        "ours": {"images_per_s": ours, "amp": amp},
        "reference": {"images_per_s": ref},
        "speedup": ours / ref,
    }
    if procs:
        out["ours_procs"] = procs
    return out


def test_rows_name_the_machine_class_precision_and_mode():
    rows = speed_summary.rows(
        {
            "train_speed": result(
                "AMD EPYC (2 threads)", "None", 150, 125, {"images_per_s": 200, "procs": 2}
            ),
            "train_speed_xeon_compiled": result(
                "Intel Xeon (2 threads)", "torch.bfloat16", 730, 225
            ),
            "gpu_train_speed": result("NVIDIA H100 80GB HBM3", "torch.bfloat16", 6000, 6300),
        }
    )
    assert [(r["machine"], r["engine"]) for r in rows] == [
        ("AMD EPYC, no native bf16", "fp32, eager"),
        ("AMD EPYC, no native bf16", "fp32, eager, 2 processes"),
        ("Intel Xeon, native bf16", "bf16, train.compile=default"),
        ("NVIDIA H100 80GB HBM3", "bf16, eager"),
    ]
    assert rows[1]["speedup"] == 200 / 125 and rows[2]["speedup"] == 730 / 225
    text = speed_summary.render(rows)
    assert "| 1.20x |" in text and "| 3.24x |" in text and "| 0.95x |" in text
