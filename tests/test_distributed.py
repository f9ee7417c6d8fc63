"""The training loop runs unchanged under torchrun: 2 gloo processes on the CPU, a tiny model."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from hvqcodec.train import load_checkpoint


@pytest.mark.parametrize("kind", ["autoencoder"])
def test_torchrun_two_processes(tmp_path, image_folder, kind):
    out = tmp_path / "run"
    script = ("import sys; from hvqcodec.cli import main; "
              "sys.argv = ['hvqcodec'] + sys.argv[1:]; main()")
    entry = tmp_path / "entry.py"
    entry.write_text(script)
    with socket.socket() as probe:  # a free port for the rendezvous (torchrun's port 0 hangs)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(entry), "train", "autoencoder", "--data", str(image_folder), "--out", str(out),
               "--steps", "4", "--batch-size", "2", "--crop", "32", "--warmup", "1", "--val-every", "100",
               "--widths", "8,8,8", "--encoder-depths", "1,1,1", "--decoder-depths", "1,1,1",
               "--codebook-sizes", "16,16,16", "--code-dim", "4", "--refine-stages", "1", "--refine-groups", "2",
               "--refine-codebook-size", "8", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert records[-1] == {"step": 4, "world_size": 2, "replicas_identical": True}
    assert any(r.get("world_size") == 2 and "loss" in r for r in records)
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["step"] == 4
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
