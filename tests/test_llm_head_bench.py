"""benchmarks/llm_head.py on a tiny shape, one repeat: every CPU contender runs in its own process,
they agree on the loss and gradient, and the table and JSON are written. No timing is asserted."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_LINEAR = hasattr(torch.nn.functional, "linear_cross_entropy")


@pytest.mark.skipif(not TORCH_LINEAR, reason=f"the benchmark measures against torch's F.linear_cross_entropy, "
                                           f"which torch {torch.__version__} lacks (torch 2.13 added it)")
def test_llm_head_benchmark_runs(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "llm_head.py"), "--tokens", "96", "--hidden", "16",
           "--vocab", "300", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "llm_head.json").read_text())
    rows = data["rows"]
    assert set(rows) == {"validated_loss", "torch chunked", "torch unfused"}
    assert data["skipped"] == ["liger"]  # CUDA only
    ref = rows["torch chunked"]
    for name, r in rows.items():
        assert abs(r["loss"] - ref["loss"]) <= 1e-5 * abs(ref["loss"]), name
        assert abs(r["grad_w_norm"] - ref["grad_w_norm"]) <= 1e-5 * ref["grad_w_norm"], name
        assert r["peak_bytes"] > 0 and r["seconds"] > 0
    assert set(data["verdict"]) >= {"memory_ratio", "speedup", "memory_met", "speed_met"}
    table = (tmp_path / "llm_head.md").read_text()
    assert "| validated_loss |" in table and "Issue 6 target" in table


@pytest.mark.skipif(TORCH_LINEAR, reason="torch has F.linear_cross_entropy")
def test_llm_head_benchmark_says_why_it_cannot_run(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "llm_head.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 1 and "torch 2.13 added it" in proc.stderr
