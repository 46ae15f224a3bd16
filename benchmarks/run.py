#!/usr/bin/env python
"""Benchmark unetc's generated C and NumPy code against PyTorch (CPU), forward and forward+backward.

    python benchmarks/run.py                 # default matrix (16 rows), all cores, 2 passes
    python benchmarks/run.py --rounds 3      # 3 passes over the matrix (steadier on a noisy machine)
    python benchmarks/run.py --quick         # 3 small rows, smoke test
    python benchmarks/run.py --full          # full cross product (64 rows, slow)
    python benchmarks/run.py --threads 1 --targets c --reps 10 --out /tmp/res

Writes <out>/results.md, <out>/results.csv, <out>/ratio.png; generated code goes to <out>/gen/.
See benchmarks/README.md for what is measured and how FLOPs are counted.
"""
from __future__ import annotations

import argparse
import os
import sys


COLS = ["torch", "c", "numpy", "cpoly"]  # report columns; the last three are --targets


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for PyTorch, the C code (OMP_NUM_THREADS) and NumPy's BLAS "
                         "(default: all cores = %(default)s)")
    ap.add_argument("--quick", action="store_true", help="a small matrix for smoke testing")
    ap.add_argument("--full", action="store_true", help="the full cross product of the matrix axes")
    ap.add_argument("--rows", help="explicit configs base_c:size:in_c:dtype, comma-separated "
                                   "(e.g. 64:128:3:float32,8:64:1:float32)")
    ap.add_argument("--reps", type=int, default=5,
                    help="minimum timed repeats per measurement (repeats continue until ~0.5 s; "
                         "default %(default)s)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="passes over the whole matrix (torch, then each target, per row); each "
                         "target's time is its lowest per-round median (default %(default)s)")
    ap.add_argument("--min-time", type=float, default=0.5,
                    help="keep repeating until this many seconds are spent (default %(default)s)")
    ap.add_argument("--max-call", type=float, default=30.0,
                    help="skip a target for a row when one warm-up call takes longer than this many "
                         "seconds (default %(default)s)")
    ap.add_argument("--targets", default="c,numpy",
                    help="comma-separated unetc targets to compare with PyTorch (default %(default)s; "
                         "cpoly = the size-polymorphic C of the same config, emitted with symbolic sizes)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                    help="output directory (default benchmarks/results/)")
    ap.add_argument("--no-plot", action="store_true", help="do not write ratio.png")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds before one worker process is abandoned (default %(default)s)")
    ap.add_argument("--worker", choices=COLS, help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--gen", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.targets = list(dict.fromkeys(args.targets))
    bad = [t for t in args.targets if t not in COLS[1:]]
    if bad:
        ap.error(f"--targets: unknown target {bad[0]!r}; choose from {', '.join(COLS[1:])}")
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    # thread counts must be in the environment before numpy / torch / the C library are loaded
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import csv  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT))

from unetc.config import Config  # noqa: E402

# ---------------------------------------------------------------- the matrix

BASE_C = (8, 16, 32, 64)
SIZES = (32, 64, 128, 256)
IN_C = (1, 3)
DTYPES = ("float32", "float64")

# (base_c, size, in_c, dtype): every value of every axis appears, float32 dominates (the common
# case), problem sizes spread over ~4 decades of FLOPs. numpy at base_c 64 / 256x256 is kept:
# it takes a few seconds per call, well under --max-call.
DEFAULT_ROWS = [
    (8, 32, 1, "float32"), (8, 64, 1, "float32"), (16, 64, 1, "float32"), (16, 128, 1, "float32"),
    (32, 128, 1, "float32"), (32, 256, 1, "float32"), (64, 128, 1, "float32"), (64, 256, 1, "float32"),
    (64, 32, 3, "float32"), (32, 64, 3, "float32"), (8, 128, 3, "float32"), (16, 256, 3, "float32"),
    (16, 64, 1, "float64"), (32, 128, 1, "float64"), (64, 64, 3, "float64"), (8, 256, 3, "float64"),
]
QUICK_ROWS = [(8, 32, 1, "float32"), (16, 64, 3, "float32"), (8, 64, 1, "float64")]
FULL_ROWS = [(b, s, c, d) for d in DTYPES for c in IN_C for b in BASE_C for s in SIZES]


def parse_rows(text: str) -> list[tuple[int, int, int, str]]:
    """'64:128:3:float32,8:64:1:float32' -> [(64, 128, 3, 'float32'), (8, 64, 1, 'float32')]."""
    rows = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 4 or parts[3] not in DTYPES or not all(p.isdigit() for p in parts[:3]):
            sys.exit(f"run.py: error: --rows: {item!r} is not base_c:size:in_c:float32|float64")
        rows.append((int(parts[0]), int(parts[1]), int(parts[2]), parts[3]))
    return rows


def make_config(base_c: int, size: int, in_c: int, dtype: str) -> Config:
    name = f"b{base_c}_s{size}_c{in_c}_{'f32' if dtype == 'float32' else 'f64'}"
    return Config(name=name, in_c=in_c, out_c=2, in_h=size, in_w=size, base_c=base_c, dtype=dtype)


# ---------------------------------------------------------------- FLOPs

def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _convT_out(n: int, k: int, s: int, p: int) -> int:
    return (n - 1) * s - 2 * p + k


def flops(cfg: Config) -> tuple[int, int]:
    """(forward FLOPs, forward+backward FLOPs), analytic: 2 * MACs of every conv / transposed conv
    (bias, ReLU, max-pool, concat are not counted); backward = 2 x forward conv FLOPs (grad wrt
    input + grad wrt weight), so forward+backward = 3 x forward."""
    b, k, s, p = cfg.base_c, cfg.conv_kernel, cfg.conv_stride, cfg.conv_padding
    h, w = cfg.in_h, cfg.in_w
    macs = 0

    def conv(cin, cout, h, w, k=k, s=s, p=p):
        nonlocal macs
        ho, wo = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        macs += cout * ho * wo * cin * k * k
        return ho, wo

    h1, w1 = conv(cfg.in_c, b, h, w)
    h1, w1 = conv(b, b, h1, w1)
    hp, wp = _conv_out(h1, cfg.pool_kernel, cfg.pool_stride, 0), _conv_out(w1, cfg.pool_kernel, cfg.pool_stride, 0)
    h2, w2 = conv(b, 2 * b, hp, wp)
    h2, w2 = conv(2 * b, 2 * b, h2, w2)
    macs += 2 * b * b * cfg.up_kernel ** 2 * h2 * w2  # transposed conv: every input pixel x kernel
    hu, wu = _convT_out(h2, cfg.up_kernel, cfg.up_stride, cfg.up_padding), _convT_out(w2, cfg.up_kernel, cfg.up_stride, cfg.up_padding)
    h3, w3 = conv(2 * b, b, hu, wu)
    h3, w3 = conv(b, b, h3, w3)
    conv(b, cfg.out_c, h3, w3, cfg.head_kernel, cfg.head_stride, cfg.head_padding)
    fwd = 2 * macs
    return fwd, 3 * fwd


# ---------------------------------------------------------------- PyTorch reference

def torch_unet(cfg: Config):
    """The network of SPEC.md as torch.nn layers (parameter names match the generated code)."""
    from unetc.torch_interop import torch_module

    return torch_module(cfg)


class TorchRunner:
    """forward() under no_grad; step() = zero grads (set to None) + forward + backward."""

    def __init__(self, cfg: Config, params: dict, x: np.ndarray, gy: np.ndarray):
        import torch

        self.torch = torch
        self.m = torch_unet(cfg)
        missing = set(dict(self.m.named_parameters())) ^ set(params)
        if missing:
            raise RuntimeError(f"parameter names differ between torch and unetc: {sorted(missing)}")
        self.m.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()})
        self.x = torch.from_numpy(np.ascontiguousarray(x)[None]).requires_grad_(True)
        self.gy = torch.from_numpy(np.ascontiguousarray(gy)[None])

    def forward(self):
        with self.torch.no_grad():
            return self.m(self.x)

    def step(self):
        self.m.zero_grad(set_to_none=True)
        self.x.grad = None
        self.m(self.x).backward(self.gy)

    def peak_bytes(self) -> int:
        """Peak bytes the CPU allocator holds during one step() above what it held before it
        (params, x, grad_output already allocated; param/input grads are freed first, so they count).
        From the allocation events of torch.profiler(profile_memory=True)."""
        from torch.profiler import ProfilerActivity, profile

        self.m.zero_grad(set_to_none=True)
        self.x.grad = None
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.m(self.x).backward(self.gy)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "trace.json")
            prof.export_chrome_trace(path)
            with open(path) as f:
                events = json.load(f)["traceEvents"]
        mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
        cur = peak = 0
        for e in mem:
            if e.get("args", {}).get("Device Type", 0) != 0:  # CPU only
                continue
            cur += int(e["args"]["Bytes"])
            peak = max(peak, cur)
        return peak


# ---------------------------------------------------------------- generated code

def import_path(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_target(cfg: Config, target: str, gen_dir: Path):
    """Emit cfg for target into gen_dir and import the Python-facing module. ``cpoly``: the C
    target emitted once for every valid size (in_h, in_w symbolic), run at cfg's size."""
    import dataclasses

    from unetc.emitter import emit

    if target == "cpoly":
        cfg, target = dataclasses.replace(cfg.with_sizes("H", "W"), name=f"{cfg.name}_poly"), "c"
    emit(cfg, target, gen_dir)
    path = gen_dir / f"{cfg.name}_{target}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path.name} was not emitted")
    return import_path(path, f"_bench_{cfg.name}_{target}")


def workspace_bytes(cfg: Config, gen_dir: Path):
    """The C target's workspace size: <NAME>_WORKSPACE_BYTES from the generated header, else
    unetc.targets.c_target.workspace_bytes(specialize(cfg)); None when neither is available."""
    header = gen_dir / f"{cfg.name}.h"
    if header.exists():
        m = re.search(rf"#\s*define\s+{re.escape(cfg.name.upper())}_WORKSPACE_BYTES\s+\(?\s*(\d+)",
                      header.read_text())
        if m:
            return int(m.group(1))
    try:
        from unetc.specialize import specialize
        from unetc.targets import c_target

        return int(c_target.workspace_bytes(specialize(cfg)))
    except Exception:
        return None


# ---------------------------------------------------------------- timing

def measure(fn, min_reps: int, min_time: float, max_call: float, max_reps: int = 1000):
    """Warm up (at least 2 calls and ~min_time/2 seconds, so allocator and page-fault effects of the
    first calls settle), then time repeats until at least min_reps and min_time seconds; returns
    (median seconds, repeats, fastest repeat), or (None, 0, None) if the first call exceeded max_call."""
    t0 = time.perf_counter()
    fn()
    if time.perf_counter() - t0 > max_call:
        return None, 0, None
    n = 1
    while n < 2 or (time.perf_counter() - t0 < min_time / 2 and n < max_reps // 4):
        fn()
        n += 1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times), min(times)


def rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ---------------------------------------------------------------- one measurement per process

# PyTorch's OpenMP pool, OpenBLAS's pthreads and the C code's OpenMP pool all busy-wait after a
# parallel region; sharing a process (and 2 cores) they starve each other and times blow up by
# 10-100x. So every (config, target) is measured in a fresh worker process of its own.

def worker(args) -> int:
    """--worker TARGET --spec b,s,c,dtype: time one target on one config, write <gen>/<name>.<target>.json."""
    cfg = make_config(*parse_spec(args.spec))
    gen_dir = Path(args.gen)
    label = row_label(cfg)
    fwd_f, step_f = flops(cfg)
    data = np.load(gen_dir / f"{cfg.name}_inputs.npz")
    params = {k[2:]: data[k] for k in data.files if k.startswith("p_")}
    x, gy = data["x"], data["gy"]
    res: dict = {"times": {}, "reps": {}}
    ref_path = gen_dir / f"{cfg.name}_torch_y.npy"
    if args.worker == "torch":
        import torch

        torch.set_num_threads(args.threads)
        tr = TorchRunner(cfg, params, x, gy)
        np.save(ref_path, tr.forward().numpy()[0])
        fns = {"fwd": tr.forward, "step": tr.step}
    else:
        try:
            mod = load_target(cfg, args.worker, gen_dir)
            y = mod.forward(params, x)
            if ref_path.exists():
                res["err"] = rel_err(y, np.load(ref_path))
        except Exception as err:  # e.g. the C loader is missing or fails to build: report, go on
            traceback.print_exc()
            msg = str(err).strip().splitlines()
            res["note"] = f"{type(err).__name__}: {msg[0] if msg else ''}"[:200]
            print(f"  [{label}] {args.worker}: unavailable ({res['note']})", flush=True)
            write_json(gen_dir / f"{cfg.name}.{args.worker}.json", res)
            return 0
        fns = {"fwd": lambda: mod.forward(params, x), "step": lambda: mod.backward(params, x, gy)}
    torch_times = {}
    if args.worker != "torch" and (gen_dir / f"{cfg.name}.torch.json").exists():
        torch_times = json.loads((gen_dir / f"{cfg.name}.torch.json").read_text()).get("times", {})
    for mode, fl in (("fwd", fwd_f), ("step", step_f)):
        name = "fwd" if mode == "fwd" else "fwd+bwd"
        try:
            sec, n, fastest = measure(fns[mode], args.reps, args.min_time, args.max_call)
        except Exception as err:
            res.setdefault("note", f"{name}: {type(err).__name__}: {err}"[:200])
            print(f"  [{label}] {args.worker} {name}: failed ({res['note']})", flush=True)
            continue
        if sec is None:
            res.setdefault("note", f"{name}: first call > {args.max_call:g} s, not timed")
            print(f"  [{label}] {args.worker:5s} {name:7s} skipped (first call > {args.max_call:g} s)", flush=True)
            continue
        res["times"][mode], res["reps"][mode] = sec, n
        res.setdefault("min", {})[mode] = fastest
        extra = ""
        if torch_times.get(mode):
            extra = f"  ratio {torch_times[mode] / sec:6.2f}"
        if mode == "fwd" and "err" in res:
            extra += f"  err {res['err']:.1e}"
        print(f"  [{label}] {args.worker:5s} {name:7s} {sec * 1e3:10.3f} ms  {fl / sec / 1e9:7.2f} GFLOP/s"
              f"  ({n} reps){extra}", flush=True)
    if args.worker == "torch":
        try:
            res["peak"] = tr.peak_bytes()
        except Exception as err:
            print(f"  [{label}] torch peak memory: failed ({type(err).__name__}: {err})", flush=True)
    write_json(gen_dir / f"{cfg.name}.{args.worker}.json", res)
    return 0


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


def parse_spec(text: str):
    b, s, c, d = text.split(",")
    return int(b), int(s), int(c), d


def row_label(cfg: Config) -> str:
    return f"b{cfg.base_c} {cfg.in_h}x{cfg.in_w} c{cfg.in_c} {'f32' if cfg.dtype == 'float32' else 'f64'}"


@dataclass
class Row:
    cfg: Config
    fwd_flops: int
    step_flops: int
    times: dict = field(default_factory=dict)    # (target, "fwd"|"step") -> median seconds
    mins: dict = field(default_factory=dict)     # (target, "fwd"|"step") -> fastest repeat
    reps: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)   # target -> max relative error of y vs torch
    notes: dict = field(default_factory=dict)    # target -> why (part of) it is unavailable
    ws_bytes: int | None = None
    torch_peak: int | None = None

    @property
    def label(self) -> str:
        return row_label(self.cfg)


def new_row(spec, gen_dir: Path) -> Row:
    """A Row for spec, with its inputs saved for the workers: the numpy module's init_params(0),
    fixed-seed x and grad_output, shared by all targets."""
    cfg = make_config(*spec)
    fwd_f, step_f = flops(cfg)
    ref = load_target(cfg, "numpy", gen_dir)
    dt = np.dtype(cfg.dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(ref.IN_SHAPE).astype(dt)
    gy = rng.standard_normal(ref.OUT_SHAPE).astype(dt)
    np.savez(gen_dir / f"{cfg.name}_inputs.npz", x=x, gy=gy,
             **{f"p_{k}": np.ascontiguousarray(v, dtype=dt) for k, v in ref.init_params(0).items()})
    return Row(cfg, fwd_f, step_f)


def run_row(row: Row, spec, targets: list[str], args, gen_dir: Path) -> None:
    """One round of a row: the torch worker, then one worker per target, each in a fresh process.
    A target's time is kept as its lowest median over the rounds (see main)."""
    import subprocess

    cfg = row.cfg
    for t in ["torch"] + targets:
        out = gen_dir / f"{cfg.name}.{t}.json"
        out.unlink(missing_ok=True)
        if t == "torch":
            (gen_dir / f"{cfg.name}_torch_y.npy").unlink(missing_ok=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", t, "--spec", ",".join(map(str, spec)),
               "--gen", str(gen_dir), "--threads", str(args.threads), "--reps", str(args.reps),
               "--min-time", str(args.min_time), "--max-call", str(args.max_call)]
        try:
            proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=args.timeout)
            failed = proc.returncode != 0 or not out.exists()
            tail = (proc.stderr.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            failed, tail = True, f"worker timed out after {args.timeout:g} s"
        if failed:
            row.notes[t] = f"worker failed: {tail}"[:200]
            print(f"  [{row.label}] {t}: {row.notes[t]}", flush=True)
            continue
        res = json.loads(out.read_text())
        for mode, sec in res.get("times", {}).items():
            key, fastest = (t, mode), res.get("min", {}).get(mode)
            row.times[key] = min(sec, row.times.get(key, sec))
            row.reps[key] = row.reps.get(key, 0) + res["reps"][mode]
            if fastest is not None:
                row.mins[key] = min(fastest, row.mins.get(key) or fastest)
        if "err" in res:
            row.errors[t] = res["err"]
        if "note" in res:
            row.notes[t] = res["note"]
        if "peak" in res:
            row.torch_peak = max(res["peak"], row.torch_peak or 0)
    if "c" in targets:
        row.ws_bytes = workspace_bytes(cfg, gen_dir)


# ---------------------------------------------------------------- reports



def _fmt_ms(s):
    return "n/a" if s is None else (f"{s * 1e3:.3f}" if s < 0.1 else f"{s * 1e3:.1f}")


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def table(rows: list[Row], targets: list[str]) -> tuple[list[str], list[list[str]]]:
    cols = ["torch"] + [t for t in COLS[1:] if t in targets]
    head = ["config", "GFLOP fwd"]
    for mode in ("fwd", "f+b"):
        for t in cols:
            head += [f"{t} {mode} ms", f"{t} {mode} GF/s"]
        for t in cols[1:]:
            head.append(f"{t} {mode} ratio")
    head += ["ws_MB", "torch_peak_MB"]
    body = []
    for r in rows:
        line = [r.label, f"{r.fwd_flops / 1e9:.3f}"]
        for mode, key, fl in (("fwd", "fwd", r.fwd_flops), ("f+b", "step", r.step_flops)):
            for t in cols:
                s = r.times.get((t, key))
                line += [_fmt_ms(s), _fmt(fl / s / 1e9 if s else None, ".2f")]
            for t in cols[1:]:
                s, ts = r.times.get((t, key)), r.times.get(("torch", key))
                line.append(_fmt(ts / s if s and ts else None, ".2f"))
        line += [_fmt(r.ws_bytes / 2**20 if r.ws_bytes is not None else None, ".2f"),
                 _fmt(r.torch_peak / 2**20 if r.torch_peak is not None else None, ".2f")]
        body.append(line)
    return head, body


def print_table(head, body):
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for b in body:
        print("  ".join(v.rjust(w) for v, w in zip(b, widths)))


_SPIN = "import time\nt=time.perf_counter()\ns=0\nfor i in range(3_000_000): s+=i\nprint(time.perf_counter()-t)"


def cpu_check(threads: int) -> float:
    """Throughput of `threads` concurrent CPU-bound processes relative to one alone (1.0 = the cores
    are really free; well below 1 = they are shared with other load, e.g. a noisy VM neighbour)."""
    import subprocess

    def run(n):
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True)
                 for _ in range(n)]
        return max(float(p.communicate()[0]) for p in procs)

    alone = min(run(1) for _ in range(2))
    together = min(run(threads) for _ in range(2))
    return alone / together


@functools.lru_cache(maxsize=1)
def openblas_core() -> str:
    """The kernel set NumPy's OpenBLAS picked on this CPU (e.g. 'Haswell'), or 'n/a'."""
    import ctypes

    try:
        libs = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                if "openblas" in line.lower() and ".so" in line}
        for path in sorted(libs):
            lib = ctypes.CDLL(path)
            for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename"):
                fn = getattr(lib, name, None)
                if fn is not None:
                    fn.restype = ctypes.c_char_p
                    return fn().decode()
    except Exception:
        pass
    return "n/a"


def avx512_misdetected(core: str) -> bool:
    """True when the CPU has AVX-512 but NumPy's OpenBLAS runs its AVX2 (Haswell/Zen) kernels,
    e.g. because OPENBLAS_CORETYPE pins them (some machine images do, for old OpenBLAS builds)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return core.lower() in ("haswell", "zen") and " avx512f" in flags


def machine_info(threads: int) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cc = os.environ.get("CC", "cc")
        import subprocess

        ccv = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except Exception:
        ccv = "n/a"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "threads": str(threads),
            "python": platform.python_version(), "numpy": np.__version__,
            "numpy BLAS kernels": f"OpenBLAS {openblas_core()} (OPENBLAS_CORETYPE="
                                  f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')})",
            "torch": torch_version,
            "C compiler": ccv, "os": platform.platform()}


def write_reports(rows: list[Row], targets: list[str], args, out: Path, info: dict[str, str]) -> None:
    head, body = table(rows, targets)
    # Markdown
    md = ["# unetc benchmark results", ""]
    md += [f"- **{k}**: {v}" for k, v in info.items()]
    md += [f"- **command**: `python benchmarks/run.py {' '.join(sys.argv[1:])}`",
           f"- **date**: {time.strftime('%Y-%m-%d %H:%M:%S')}", "",
           "Times are medians (ms) of >= %d repeats after warm-up, repeated until >= %.2g s; "
           "each target's lowest median over %d passes of the whole matrix. " % (args.reps, args.min_time, args.rounds) +
           "`f+b` = forward+backward step. ratio = torch time / target time (> 1: faster than PyTorch). "
           "GF/s from the analytic FLOP count (2 x MACs of the convolutions; backward = 2 x forward). "
           "ws_MB = the C target's workspace; torch_peak_MB = peak CPU-allocator bytes during one "
           "PyTorch forward+backward step (torch.profiler). See benchmarks/README.md.", ""]
    md.append("| " + " | ".join(head) + " |")
    md.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    md += ["| " + " | ".join(b) + " |" for b in body]
    notes = [(r.label, t, n) for r in rows for t, n in r.notes.items()]
    errs = [(r.label, t, e) for r in rows for t, e in r.errors.items()]
    if errs:
        md += ["", "Max relative error of the forward output against PyTorch (same params and input): "
               + ", ".join(f"{lbl} {t} {e:.1e}" for lbl, t, e in errs) + "."]
    if notes:
        md += ["", "Unavailable measurements:", ""] + [f"- {lbl} {t}: {n}" for lbl, t, n in notes]
    (out / "results.md").write_text("\n".join(md) + "\n")
    # CSV: machine-friendly, raw seconds
    fields = ["config", "base_c", "in_h", "in_w", "in_c", "out_c", "dtype", "threads",
              "fwd_flops", "fwd_bwd_flops"]
    for t in ["torch"] + [t for t in COLS[1:] if t in targets]:
        for mode in ("fwd", "fwd_bwd"):
            fields += [f"{t}_{mode}_ms", f"{t}_{mode}_min_ms", f"{t}_{mode}_gflops", f"{t}_{mode}_reps"]
            if t != "torch":
                fields.append(f"{t}_{mode}_ratio")
        if t != "torch":
            fields += [f"{t}_fwd_max_rel_err", f"{t}_note"]
    fields += ["ws_bytes", "ws_MB", "torch_peak_bytes", "torch_peak_MB"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            c = r.cfg
            d = dict(config=r.label, base_c=c.base_c, in_h=c.in_h, in_w=c.in_w, in_c=c.in_c, out_c=c.out_c,
                     dtype=c.dtype, threads=args.threads, fwd_flops=r.fwd_flops, fwd_bwd_flops=r.step_flops,
                     ws_bytes=r.ws_bytes if r.ws_bytes is not None else "",
                     ws_MB=f"{r.ws_bytes / 2**20:.3f}" if r.ws_bytes is not None else "",
                     torch_peak_bytes=r.torch_peak if r.torch_peak is not None else "",
                     torch_peak_MB=f"{r.torch_peak / 2**20:.3f}" if r.torch_peak is not None else "")
            for t in ["torch"] + [t for t in COLS[1:] if t in targets]:
                for mode, key, fl in (("fwd", "fwd", r.fwd_flops), ("fwd_bwd", "step", r.step_flops)):
                    s = r.times.get((t, key))
                    d[f"{t}_{mode}_ms"] = f"{s * 1e3:.4f}" if s else ""
                    mn = r.mins.get((t, key))
                    d[f"{t}_{mode}_min_ms"] = f"{mn * 1e3:.4f}" if mn else ""
                    d[f"{t}_{mode}_gflops"] = f"{fl / s / 1e9:.3f}" if s else ""
                    d[f"{t}_{mode}_reps"] = r.reps.get((t, key), "")
                    if t != "torch":
                        ts = r.times.get(("torch", key))
                        d[f"{t}_{mode}_ratio"] = f"{ts / s:.4f}" if s and ts else ""
                if t != "torch":
                    d[f"{t}_fwd_max_rel_err"] = f"{r.errors[t]:.3e}" if t in r.errors else ""
                    d[f"{t}_note"] = r.notes.get(t, "")
            w.writerow(d)


def plot(rows: list[Row], targets: list[str], out: Path, info: dict[str, str]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return "matplotlib is not installed (pip install 'unetc[bench]'); ratio.png not written"
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {("c", "fwd"): "tab:blue", ("c", "step"): "tab:cyan",
              ("numpy", "fwd"): "tab:orange", ("numpy", "step"): "tab:red"}
    for t in [t for t in COLS[1:] if t in targets]:
        for mode, name in (("fwd", "forward"), ("step", "forward+backward")):
            pts = sorted((r.fwd_flops, r.times[("torch", mode)] / r.times[(t, mode)], r.cfg.dtype)
                         for r in rows if r.times.get((t, mode)) and r.times.get(("torch", mode)))
            if not pts:
                continue
            col = colors[(t, mode)]
            for dtype, face in (("float32", col), ("float64", "none")):
                sel = [p for p in pts if p[2] == dtype]  # one line per dtype, in FLOP order
                ax.plot([p[0] for p in sel], [p[1] for p in sel], "-", color=col, alpha=0.35, lw=1)
                ax.scatter([p[0] for p in sel], [p[1] for p in sel], marker="o", s=36,
                           facecolors=face, edgecolors=col)
            ax.plot([], [], "o-", color=col, label=f"{t} {name}")
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("problem size: forward FLOPs (analytic)")
    ax.set_ylabel("speed-up vs PyTorch (torch time / target time)")
    ax.set_title(f"unetc vs PyTorch {info['torch']}, {info['threads']} thread(s)\n{info['cpu']}", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], marker="o", ls="", color="gray", label="float32"),
                Line2D([], [], marker="o", ls="", color="gray", markerfacecolor="none", label="float64")]
    ax.legend(handles=handles, fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ratio.png", dpi=120)
    plt.close(fig)
    return None


# ---------------------------------------------------------------- main

def main(args) -> int:
    if args.worker:
        return worker(args)
    out = Path(args.out)
    gen_dir = out / "gen"
    gen_dir.mkdir(parents=True, exist_ok=True)
    rows_spec = (parse_rows(args.rows) if args.rows else QUICK_ROWS if args.quick
                 else FULL_ROWS if args.full else DEFAULT_ROWS)
    info = machine_info(args.threads)
    check0 = cpu_check(args.threads)
    print(f"unetc benchmark: {len(rows_spec)} configs, targets torch,{','.join(args.targets)}, "
          f"{args.threads} thread(s); {info['cpu']}; torch {info['torch']}, numpy {info['numpy']}", flush=True)
    if "numpy" in args.targets and avx512_misdetected(openblas_core()):
        print(f"note: NumPy's OpenBLAS runs its {openblas_core()} (AVX2) kernels on this AVX-512 CPU "
              f"(OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}); to let a current "
              "OpenBLAS pick its kernels, run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` "
              "(see benchmarks/README.md)", flush=True)
    # Rounds go over the whole matrix, so that a row's measurements lie minutes apart: this VM's
    # neighbours slow everything down in phases of seconds to minutes, and a target's time is its
    # lowest per-round median.
    rows: dict[int, Row] = {}
    for rnd in range(1, args.rounds + 1):
        for i, spec in enumerate(rows_spec, 1):
            cfg = make_config(*spec)
            print(f"[round {rnd}/{args.rounds}, {i}/{len(rows_spec)}] {cfg.name}: "
                  f"{flops(cfg)[0] / 1e9:.3f} GFLOP fwd", flush=True)
            try:
                if i not in rows:
                    rows[i] = new_row(spec, gen_dir)
                run_row(rows[i], spec, args.targets, args, gen_dir)
            except Exception:
                traceback.print_exc()
                print(f"  [{cfg.name}] row failed, continuing", flush=True)
    rows = [rows[i] for i in sorted(rows)]
    check1 = cpu_check(args.threads)
    info["cpu check"] = (f"{args.threads} concurrent busy processes ran at {check0:.0%} (start) and "
                         f"{check1:.0%} (end) of the speed of one alone; well below 100% means the "
                         f"cores were shared with other load and multi-threaded timings are noisy")
    print(f"\ncpu check: {info['cpu check']}")
    print()
    head, body = table(rows, args.targets)
    print_table(head, body)
    write_reports(rows, args.targets, args, out, info)
    msg = None if args.no_plot else plot(rows, args.targets, out, info)
    if msg:
        print(f"note: {msg}")
    print(f"\nwrote {out / 'results.md'}, {out / 'results.csv'}"
          + ("" if args.no_plot or msg else f", {out / 'ratio.png'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
