"""The shipped model must be found from a non-editable install, outside the checkout."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_non_editable_install_finds_shipped_model(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, cwd=tmp_path)
    script = ("import hvqcodec.zoo as z, hvqcodec.stepkernel as s; m = z.load_model(); "
              "print(z.models_dir()); print(sum(p.numel() for p in m.parameters())); print(s.available())")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, check=True)
    folder, parameters, kernel = result.stdout.split()
    assert Path(folder).is_relative_to(target)  # found in the installed package, not the checkout
    assert int(parameters) > 0
    # The C step function is built by the install wherever there is a C compiler (optional elsewhere).
    if shutil.which("cc") or shutil.which("gcc"):
        assert kernel == "True"
