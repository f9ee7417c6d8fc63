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


@pytest.mark.slow
def test_gpu_session_packs_trains_and_brings_back(tmp_path):
    """What a lent GPU machine runs, at tiny scale on the CPU: photos packed by gpu_pack.py (WebP, capped long
    side, layout kept), gpu_session.sh training on them, and the files that come back in $OUT: the model, its
    manifest, the logs and the priors' weights without optimizer state."""
    import torch

    photos = tmp_path / "photos"
    (photos / "cid22" / "validation").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(synthetic_image(i)).save(photos / f"{i}.png")
    Image.fromarray(synthetic_image(9)).resize((1500, 300)).save(photos / "cid22" / "validation" / "v.png")
    packed = tmp_path / "packed"
    done = subprocess.run(["python", str(ROOT / "benchmarks" / "gpu_pack.py"), "--data", str(photos), "--out",
                           str(packed), "--long-side", "1024"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.relative_to(packed).as_posix() for p in packed.rglob("*") if p.is_file())
    assert [Path(f).stem for f in files] == ["0", "1", "2", "3", "v"]
    with Image.open(packed / "cid22" / "validation" / "v.webp") as image:
        assert image.size == (1024, 205)  # the long side capped, the aspect kept
    out = tmp_path / "out"
    env = dict(os.environ, SCALE="tiny", DEVICE="cpu", DATA=str(packed), OUT=str(out), WORK=str(tmp_path / "work"),
               OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    names = {p.name for p in out.iterdir()}
    assert {"manifest.json", "ae_log.jsonl", "priors_log.jsonl", "priors_weights.pt", "train.log"} <= names
    assert len(names) <= 8  # what the device tool brings back
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["hvq-gpu"]["file"] in names
    priors = torch.load(out / "priors_weights.pt", map_location="cpu", weights_only=False)
    assert "optimizer" not in priors and priors["model"]
