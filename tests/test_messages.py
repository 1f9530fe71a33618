"""An error's whole message reaches the user: a cause quoted over several lines (a failed
download's) ends in the hint that says what to do, in a single run and in a sweep's marker."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# every download fails at once and the same way, with or without a network: a proxy on a
# closed port; torchvision then reports each mirror it tried, over several lines
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "no_proxy": "", "NO_PROXY": ""}


def app(*args):
    env = {**os.environ, **OFFLINE, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "rpg_train", *args, "data=mnist",
                           "trainer.device=cpu", "debug=fast"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_missing_dataset_keeps_its_hint(tmp_path):
    root = tmp_path / "data"
    proc = app(f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    first = next(i for i, line in enumerate(out.splitlines()) if "error: " in line)
    lines = out.splitlines()[first:]
    assert lines[0].endswith(f"error: data.root='{root}' holds no mnist idx files (looked in: "
                             f"{root}, {root}/raw, {root}/MNIST/raw). Download failed: "
                             "RuntimeError: Error downloading train-images-idx3-ubyte.gz:")
    assert len(lines) > 1 and lines[-1].endswith(
        "To get the data: set data.download=true, or put the four idx files "
        "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, optionally .gz) in data.root.")
    assert "Traceback" not in out


def test_a_sweep_s_marker_keeps_the_hint_and_its_summary_one_line_a_job(tmp_path):
    proc = app("-m", f"data.root={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    marker = (tmp_path / "sweep" / "0" / "failed.txt").read_text()
    assert marker.startswith(f"bad input: data.root='{tmp_path / 'data'}' holds no mnist")
    assert "\n" in marker.strip() and "To get the data: set data.download=true" in marker
    assert proc.stderr.splitlines()[-1].startswith(
        f"error: 1 job(s) of the sweep failed: 0: bad input: data.root='{tmp_path / 'data'}'")
    assert proc.stderr.splitlines()[-1].endswith("Error downloading train-images-idx3-ubyte.gz:")
