import json

import pytest
from click.testing import CliRunner

from hvqcodec.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("args", [["--help"], ["train", "autoencoder", "--help"], ["models", "export", "--help"]])
def test_help_shows_examples(args):
    result = run(*args)
    assert result.exit_code == 0
    assert "Examples:" in result.output and "hvqcodec " in result.output


def assert_one_line_error(result, message):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output


def test_train_on_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("train", "autoencoder", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "no images found")


def test_train_on_unreadable_image(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "broken.png").write_bytes(b"not a png at all")
    result = run("train", "autoencoder", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "broken.png: cannot read image")


def test_train_into_unwritable_out(image_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("train", "autoencoder", "--data", str(image_folder), "--out", str(blocker / "run"))
    assert_one_line_error(result, "cannot write there")


def test_train_rejects_bad_crop_and_widths(image_folder, tmp_path):
    result = run("train", "autoencoder", "--data", str(image_folder), "--out", str(tmp_path / "r"), "--crop", "40")
    assert result.exit_code == 2 and "multiple of 16" in result.output
    result = run("train", "autoencoder", "--data", str(image_folder), "--out", str(tmp_path / "r"), "--widths", "8,8")
    assert result.exit_code == 2 and "expected 3 comma-separated integers (positive)" in result.output
    for qualities in ("50,101", "x", "0"):
        result = run("train", "post-filter", "--data", str(image_folder), "--out", str(tmp_path / "r"),
                     "--qualities", qualities)
        assert result.exit_code == 2 and "a list of comma-separated integers" in result.output, result.output
    base = ("train", "autoencoder", "--data", str(image_folder), "--out", str(tmp_path / "r"), "--refine-stages", "2")
    result = run(*base, "--refine-lambdas", "0.01")
    assert result.exit_code == 2 and "one value per refinement stage (2)" in result.output
    result = run(*base, "--refine-lambdas", "0.01,-1")
    assert result.exit_code == 2 and "every value must be a number >= 0" in result.output
    result = run(*base, "--refine-lambdas", "0.01,x")
    assert result.exit_code == 2 and "not a list of comma-separated numbers" in result.output


def test_train_and_export_through_cli(image_folder, tmp_path):
    out = tmp_path / "run"
    result = run("train", "autoencoder", "--data", str(image_folder), "--out", str(out), "--steps", "2",
                 "--batch-size", "2", "--crop", "32", "--widths", "8,8,8", "--encoder-depths", "1,1,1",
                 "--decoder-depths", "1,1,1", "--codebook-sizes", "8,8,8", "--code-dim", "4")
    assert result.exit_code == 0, result.output
    models = tmp_path / "models"
    result = run("models", "export", str(out / "checkpoint.pt"), "--name", "tiny", "--models-dir", str(models))
    assert result.exit_code == 0, result.output
    assert len(list(models.glob("tiny-*.pt"))) == 1 and (models / "manifest.json").is_file()
    result = run("models", "export", str(out / "checkpoint.pt"), "--name", "tiny", "--models-dir", str(models))
    assert_one_line_error(result, "already exists")
    result = run("models", "export", str(tmp_path / "missing.pt"), "--name", "x", "--models-dir", str(models))
    assert_one_line_error(result, "no checkpoint there")


def test_coding_block_option_errors(tmp_path):
    """--coding-block is checked before anything is read or trained: usage error, exit 2, the rule in one line."""
    result = run("models", "export", str(tmp_path / "checkpoint.pt"), "--name", "x", "--coding-block", "32,64")
    assert result.exit_code == 2 and "one entry per level (top, mid, bottom), not 2" in result.output
    result = run("train", "priors", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--coding-block", "8xy")
    assert result.exit_code == 2 and "use N, RxC, or one of those per level" in result.output


def test_models_variant_through_cli(tiny_models_dir):
    result = run("models", "variant", "tiny", "--name", "tiny-b", "--coding-block", "0,4,4x8", "--default")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tiny_models_dir / "manifest.json").read_text())
    assert manifest["default"] == "tiny-b" and manifest["models"]["tiny-b"]["variant_of"] == "tiny"
    assert manifest["models"]["tiny-b"]["coding"] == {"coding_block": [[0, 0], [4, 4], [4, 8]]}
    listing = run("models", "list")
    assert listing.exit_code == 0 and "tiny-b" in listing.output and "variant" in listing.output
    assert_one_line_error(run("models", "variant", "nope", "--name", "x", "--coding-block", "4"), "unknown model 'nope'")
    assert_one_line_error(run("models", "variant", "tiny", "--name", "tiny-b", "--coding-block", "4"), "already exists")


def test_version_names_the_step_function():
    """`--version` says whether the C step function is in use and what the decoder runs on, without importing torch
    (a fresh process)."""
    import subprocess
    import sys

    from hvqcodec import __version__, decoderkernel, stepkernel

    script = ("import sys; from click.testing import CliRunner; from hvqcodec.cli import main; "
              "print(CliRunner().invoke(main, ['--version']).output.strip()); print('torch' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    line, torch_imported = output.splitlines()
    line, decoder = line.rsplit("; ", 1)
    if stepkernel.available():
        tiles = ", AMX tiles" if stepkernel.amx_int8() else ""
        path = f", int8 path (AVX-512 VNNI{tiles})" if stepkernel.int8_available() else \
            (", int8 path off (HVQ_STEP_KERNEL_INT8=0)" if stepkernel.int8_supported() else "")
        assert line.endswith(f" {__version__} (step function: C{path}"), line
    else:
        assert f" {__version__} (step function: torch (" in line, line
    if decoderkernel.available():
        tiles = ", bfloat16 tiles (AMX)" if decoderkernel.bf16_available() else ""
        assert decoder == f"decoder: C, {decoderkernel.path()}{tiles})", decoder
    else:
        assert decoder.startswith("decoder: plain numpy"), decoder
    assert torch_imported == "False"


@pytest.mark.parametrize("args,status", [(["--version"], 0), (["info", "missing.hvq"], 1)])
def test_console_script_keeps_the_exit_status_and_freezes_before_exit(tmp_path, args, status):
    """The console script (`cli.run`) exits as the command group does, having frozen the garbage collector so
    that the interpreter does not collect every object of torch's import on its way out."""
    import subprocess
    import sys

    script = ("import gc, sys; from hvqcodec.cli import run\n"
              f"sys.argv = ['hvqcodec'] + {args!r}\n"
              "try:\n    run()\n"
              "except SystemExit as exit:\n    print('status', exit.code or 0, gc.get_freeze_count() > 0)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.stdout.splitlines()[-1] == f"status {status} True", done.stdout + done.stderr
    if status:
        assert done.stderr.strip().startswith("Error: ") and "Traceback" not in done.stderr


def test_python_dash_m_runs_the_console_script():
    """`python -m hvqcodec` is the `hvqcodec` command (for when the script is not on PATH)."""
    import subprocess
    import sys

    from hvqcodec import __version__

    done = subprocess.run([sys.executable, "-m", "hvqcodec", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f" {__version__} (step function: " in done.stdout, done.stdout + done.stderr


def test_codec_imports_collect_nothing_and_freeze_only_in_the_console_script():
    """The codec commands' imports run with the garbage collector off and their objects frozen afterwards only
    in the console script; elsewhere (tests, the Python API) the collector is left alone and nothing is frozen."""
    import subprocess
    import sys

    script = ("import gc; from hvqcodec.cli import common\n"
              "def seen():\n"
              "    with common.codec_imports():\n"
              "        inside = gc.isenabled()\n"
              "    return inside, gc.isenabled(), gc.get_freeze_count() > 0\n"
              "print(*seen())\n"
              "common.console_script = True\n"
              "print(*seen())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["True True False", "False True True"], done.stdout + done.stderr


def test_calibrate_takes_the_residual_tilt_and_refuses_a_bad_one(tiny_models_dir, image_folder):
    """`models calibrate --residual-tilt` puts its slopes on every residual point of the ladder it writes."""
    from hvqcodec.zoo import read_manifest

    result = run("models", "calibrate", "tiny", "--data", str(image_folder), "--images", "1", "--crop", "32",
                 "--residual-tilt", "8:16")
    assert result.exit_code == 0, result.output
    calibration = read_manifest(tiny_models_dir)["models"]["tiny"]["ladder_calibration"]
    residual = [p for p in calibration["measured"] if p.get("residual_step")]
    assert residual and all(p["residual_tilt"] == [8, 16] for p in residual)
    for bad, message in (("8", "is not LUMA:COLOUR"), ("8:300", "must be in 0..255"), ("a:b", "is not LUMA:COLOUR")):
        result = run("models", "calibrate", "tiny", "--data", str(image_folder), "--residual-tilt", bad)
        assert_one_line_error(result, message)


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_console_script_reuses_freed_memory():
    """The console script keeps large arrays' freed pages for the next ones (cli._reuse_freed_memory): a second
    64 MB array after the first was freed costs (almost) no page faults, where by default it costs one per fresh
    page (a fresh process each way)."""
    import subprocess
    import sys

    script = ("import resource, numpy as np; from hvqcodec import cli; {call}"
              "a = np.ones(64 << 20, np.uint8); del a; before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; "
              "b = np.ones(64 << 20, np.uint8); print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")
    faults = {}
    for reuse in (True, False):
        code = script.format(call="cli._reuse_freed_memory(); " if reuse else "")
        faults[reuse] = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout)
    assert faults[True] < 8 and faults[False] >= 16, faults
