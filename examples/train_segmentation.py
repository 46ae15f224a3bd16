"""Train a small U-Net-2 to segment bright squares on noise with unetc's generated code.

    python3 examples/train_segmentation.py                  # C target (needs a C compiler)
    python3 examples/train_segmentation.py --target numpy   # NumPy only
    python3 examples/train_segmentation.py --quick          # a few seconds: a smoke run

Everything but the network is written here in NumPy: synthetic data, softmax cross-entropy over
2 classes, Adam, batches of 8 (forward and backward take the whole batch at once). One line per
epoch with the training loss and the validation IoU of the foreground class; the trained weights
go to an .npz (the generated module's save_params) with the config beside it as YAML, and the
last line is the command that bakes them into C for deployment. Needs no PyTorch.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import unetc


def squares(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 1, size, size) of Gaussian noise with 1-3 bright squares (side size/8 to
    size/3) and their masks (n, size, size) of 0/1 (1 inside a square)."""
    x = rng.normal(0.0, 0.5, (n, 1, size, size))
    masks = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            side = int(rng.integers(max(2, size // 8), size // 3 + 1))
            r, c = rng.integers(0, size - side + 1, 2)
            masks[i, r:r + side, c:c + side] = 1
    x[:, 0] += 1.5 * masks
    return x, masks


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of logits (N, K, H, W) against labels (N, H, W), and its gradient."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.moveaxis(np.eye(logits.shape[1], dtype=logits.dtype)[labels], -1, 1)
    loss = -float(np.mean(np.sum(onehot * np.log(np.maximum(p, 1e-30)), axis=1)))
    return loss, ((p - onehot) / (labels.size)).astype(logits.dtype)


class Adam:
    """Adam (Kingma & Ba) on a dict of arrays, in place."""

    def __init__(self, params: dict, lr: float = 3e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps, self.t = lr, b1, b2, eps, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: dict, grads: dict) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for k, g in grads.items():
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            params[k] -= (self.lr * (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + self.eps)).astype(params[k].dtype)


def iou(logits: np.ndarray, labels: np.ndarray) -> float:
    """Intersection over union of the predicted and the true foreground (class 1)."""
    pred = logits.argmax(axis=1) == 1
    true = labels == 1
    return float((pred & true).sum() / max((pred | true).sum(), 1))


def generated(config: dict, target: str, out: Path):
    """Emit the config's code for target into out and import its Python module."""
    (py,) = [p for p in unetc.emit(config, target, out) if p.suffix == ".py"]
    spec = importlib.util.spec_from_file_location(py.stem, py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=["c", "numpy"], default="c")
    ap.add_argument("--epochs", type=int, default=None, help="default 10 (--quick: 8)")
    ap.add_argument("--quick", action="store_true", help="128 images, 8 epochs: a smoke run")
    ap.add_argument("--size", type=int, default=32, help="image height and width (even)")
    ap.add_argument("--base-c", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="seg_weights.npz", help="trained weights (.npz)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (8 if args.quick else 10)
    n_train, n_val = (128, 32) if args.quick else (512, 64)
    config = {"name": "seg", "dtype": "float32", "in_c": 1, "out_c": 2, "in_h": args.size,
              "in_w": args.size, "base_c": args.base_c}
    rng = np.random.default_rng(args.seed)
    x_train, y_train = squares(n_train, args.size, rng)
    x_val, y_val = squares(n_val, args.size, rng)
    x_train, x_val = x_train.astype(np.float32), x_val.astype(np.float32)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unetc-train-") as tmp:
        mod = generated(config, args.target, Path(tmp))
        print(f"{config['name']}: {args.target} target ready in {time.perf_counter() - start:.1f} s "
              f"(emit{', compile' if args.target == 'c' else ''}); {n_train} training images of "
              f"{args.size}x{args.size}, batches of {args.batch}", flush=True)
        params = mod.init_params(args.seed)
        opt = Adam(params, args.lr)
        for epoch in range(1, epochs + 1):
            order, losses = rng.permutation(n_train), []
            for lo in range(0, n_train, args.batch):
                idx = order[lo:lo + args.batch]
                xb, yb = x_train[idx], y_train[idx]
                loss, grad_y = softmax_cross_entropy(mod.forward(params, xb), yb)
                grads, _ = mod.backward(params, xb, grad_y)
                opt.step(params, grads)
                losses.append(loss)
            val = np.concatenate([mod.forward(params, x_val[i:i + 32]) for i in range(0, n_val, 32)])
            print(f"epoch {epoch:3d}/{epochs}  loss {np.mean(losses):.4f}  val IoU {iou(val, y_val):.3f}  "
                  f"{time.perf_counter() - start:5.1f} s", flush=True)
        out = Path(args.out)
        mod.save_params(out, params)
    yaml = out.with_suffix(".yaml")
    yaml.write_text(unetc.load(config).to_yaml())
    print(f"saved {out} ({args.target} target, {time.perf_counter() - start:.1f} s); to deploy in C:")
    print(f"  unetc emit {yaml} --target c --weights {out} -o {out.stem}_c")
    return 0


if __name__ == "__main__":
    sys.exit(main())
