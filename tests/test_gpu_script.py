"""benchmarks/gpu_train.sh, the one-command GPU training run, at tiny scale on the CPU (slow: ~20 s)."""
import json
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from conftest import synthetic_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_training_script_at_tiny_scale(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(4):
        Image.fromarray(synthetic_image(i)).save(data / f"{i}.png")
    out = tmp_path / "run"
    env = dict(os.environ, SCALE="tiny", DEVICE="cpu", DATA=str(data), OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_train.sh"), str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "models" / "manifest.json").read_text())
    entry = manifest["models"]["hvq-gpu"]
    assert manifest["default"] == "hvq-gpu" and entry["kind"] == "codec" and entry["ladder"]
    assert (out / "models" / entry["file"]).is_file()
    assert any("time_budget_reached" in line for line in (out / "ae" / "train_log.jsonl").read_text().splitlines())
