"""examples/train_segmentation.py, shortened (--quick, NumPy target): runs in a fresh process,
prints one line per epoch, the loss falls, the IoU rises, the weights load with the generated
module's load_params and the last line is the deploy command."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np

from conftest import ROOT


def test_quick_training_run_learns(tmp_path):
    out = tmp_path / "w.npz"
    env = {**os.environ, "UNETC_CACHE_DIR": str(tmp_path / "cache"), "OPENBLAS_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "train_segmentation.py"), "--target", "numpy",
                        "--quick", "--out", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    epochs = re.findall(r"^epoch +(\d+)/8  loss ([0-9.]+)  val IoU ([0-9.]+) ", p.stdout, re.M)
    assert [int(e) for e, _, _ in epochs] == list(range(1, 9)), p.stdout
    losses = [float(loss) for _, loss, _ in epochs]
    ious = [float(i) for _, _, i in epochs]
    assert losses[-1] < 0.25 * losses[0] and min(losses[:4]) > losses[-1], losses
    assert ious[-1] > max(ious[0], 0.5), ious
    last = p.stdout.strip().splitlines()[-1]
    assert last.strip() == f"unetc emit {out.with_suffix('.yaml')} --target c --weights {out} -o w_c"
    with np.load(out) as f:
        assert len(f.files) == 16 and f["out1x1.weight"].shape == (2, 8, 1, 1)
    assert "in_h: 32" in out.with_suffix(".yaml").read_text()


def test_loss_and_gradient_match_torch_cross_entropy():
    """The example's NumPy softmax cross-entropy against torch.nn.functional.cross_entropy (float64)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("train_segmentation", ROOT / "examples" / "train_segmentation.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 2, 5, 4)) * 4
    labels = rng.integers(0, 2, (3, 5, 4))
    loss, grad = ex.softmax_cross_entropy(logits, labels)
    lt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(lt, torch.tensor(labels))
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-12 and np.max(np.abs(grad - lt.grad.numpy())) <= 1e-14
    x, masks = ex.squares(4, 16, rng)
    assert x.shape == (4, 1, 16, 16) and masks.shape == (4, 16, 16) and 0 < masks.mean() < 0.6
    assert ex.iou(np.stack([1 - masks, masks], 1).astype(float), masks) == 1.0
