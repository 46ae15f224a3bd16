#!/usr/bin/env python
"""Benchmark unetc's generated C and NumPy code against PyTorch (CPU), forward and forward+backward.

    python benchmarks/run.py                 # default matrix (20 rows, 4 of them batches), all cores, 2 passes
    python benchmarks/run.py --rounds 3      # 3 passes over the matrix (steadier on a noisy machine)
    python benchmarks/run.py --quick         # 4 small rows (one a batch of 4), smoke test
    python benchmarks/run.py --full          # full cross product (64 rows + the batch rows, slow)
    python benchmarks/run.py --threads 1 --targets c --reps 10 --out /tmp/res
    python benchmarks/run.py --march x86-64-v3,x86-64-v4   # one C column per ISA (c-v3, c-v4)
    python benchmarks/run.py --rows 16:64:1:float32,16:64:1:float32:16   # N = 1 and a batch of 16

Writes <out>/results.md, <out>/results.csv, <out>/ratio.png; generated code goes to <out>/gen/.
See benchmarks/README.md for what is measured and how FLOPs are counted.
"""
from __future__ import annotations

import argparse
import os
import sys


COLS = ["torch", "c", "numpy", "cpoly"]  # worker kinds; the last three are --targets


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("run.py: error: ...", exit 2), no usage dump."""

    def error(self, message):
        die(message)


def die(message: str) -> None:
    """Bad input: one line on stderr naming the culprit, exit status 2."""
    print(f"run.py: error: {message}", file=sys.stderr)
    sys.exit(2)


MARCH_RE = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}"


def parse_march(text: str | None, targets: list[str]) -> list[str] | None:
    """'x86-64-v3, native' -> ['x86-64-v3', 'native'] (duplicates dropped); None stays None."""
    import re

    if text is None:
        return None
    entries = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not entries:
        die("--march: empty list")
    bad = [m for m in entries if not re.fullmatch(MARCH_RE, m)]
    if bad:
        die(f"--march: {bad[0]!r} is not a -march value (letters, digits, '.', '_', '+', '-')")
    if not {"c", "cpoly"} & set(targets):
        die("--march: no C target in --targets (c or cpoly)")
    return entries


def parse_args(argv=None):
    ap = _Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for PyTorch, the C code (OMP_NUM_THREADS) and NumPy's BLAS "
                         "(default: all cores = %(default)s)")
    ap.add_argument("--quick", action="store_true", help="a small matrix for smoke testing")
    ap.add_argument("--full", action="store_true", help="the full cross product of the matrix axes")
    ap.add_argument("--rows", help="explicit configs base_c:size:in_c:dtype[:N], comma-separated; N = batch "
                                   "size, default 1 (e.g. 64:128:3:float32,16:64:1:float32:16)")
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
    ap.add_argument("--march", help="comma-separated -march values, one C column each, built with the "
                                    "default C flags (or $UNETC_CFLAGS) with -march replaced: e.g. native, "
                                    "x86-64-v3 (AVX2), x86-64-v4 (AVX-512); columns c-v3, c-v4, ...; "
                                    "cpoly uses the first (default: the flags as they are, column c)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                    help="output directory (default benchmarks/results/)")
    ap.add_argument("--no-plot", action="store_true", help="do not write ratio.png")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds before one worker process is abandoned (default %(default)s)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # the column name
    ap.add_argument("--kind", choices=COLS, help=argparse.SUPPRESS)
    ap.add_argument("--cflags", help=argparse.SUPPRESS)
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
    if not args.worker:
        args.march = parse_march(args.march, args.targets)
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
# it takes a few seconds per call, well under --max-call. One image per call (N = 1).
SINGLE_ROWS = [
    (8, 32, 1, "float32"), (8, 64, 1, "float32"), (16, 64, 1, "float32"), (16, 128, 1, "float32"),
    (32, 128, 1, "float32"), (32, 256, 1, "float32"), (64, 128, 1, "float32"), (64, 256, 1, "float32"),
    (64, 32, 3, "float32"), (32, 64, 3, "float32"), (8, 128, 3, "float32"), (16, 256, 3, "float32"),
    (16, 64, 1, "float64"), (32, 128, 1, "float64"), (64, 64, 3, "float64"), (8, 256, 3, "float64"),
]
# Batch rows (N images per call): N = 8 and 16 of two configs whose N = 1 rows are in the
# default matrix, so per-image time at N = 16 can be read against N = 1 (issue 14, item 5).
BATCH_ROWS = [(16, 64, 1, "float32", 8), (16, 64, 1, "float32", 16),
              (64, 128, 1, "float32", 8), (64, 128, 1, "float32", 16)]
DEFAULT_ROWS = [(*r, 1) for r in SINGLE_ROWS] + BATCH_ROWS
QUICK_ROWS = [(8, 32, 1, "float32", 1), (16, 64, 3, "float32", 1), (8, 64, 1, "float64", 1),
              (8, 32, 1, "float32", 4)]
FULL_ROWS = [(b, s, c, d, 1) for d in DTYPES for c in IN_C for b in BASE_C for s in SIZES] + BATCH_ROWS


def parse_rows(text: str) -> list[tuple[int, int, int, str, int]]:
    """'64:128:3:float32,8:64:1:float32:16' -> [(64, 128, 3, 'float32', 1), (8, 64, 1, 'float32', 16)];
    the last field is the batch size N (default 1). Bad input: one line, exit 2."""
    rows = []
    for item in text.split(","):
        parts = item.strip().split(":")
        ints = parts[:3] + parts[4:]
        if (len(parts) not in (4, 5) or parts[3] not in DTYPES or not all(p.isdigit() for p in ints)
                or not all(0 < int(p) < 1 << 20 for p in ints)):
            die(f"--rows: {item!r} is not base_c:size:in_c:float32|float64[:N] (positive integers)")
        rows.append((int(parts[0]), int(parts[1]), int(parts[2]), parts[3], int(parts[4]) if len(parts) == 5 else 1))
    return rows


def make_config(base_c: int, size: int, in_c: int, dtype: str) -> Config:
    name = f"b{base_c}_s{size}_c{in_c}_{'f32' if dtype == 'float32' else 'f64'}"
    return Config(name=name, in_c=in_c, out_c=2, in_h=size, in_w=size, base_c=base_c, dtype=dtype)


# ---------------------------------------------------------------- ISA and C flags

# predefined macro of a compiler -> the /proc/cpuinfo flag the CPU needs to run that code
ISA_MACROS = {"__SSSE3__": "ssse3", "__SSE4_1__": "sse4_1", "__SSE4_2__": "sse4_2", "__POPCNT__": "popcnt",
              "__AVX__": "avx", "__AVX2__": "avx2", "__FMA__": "fma", "__F16C__": "f16c", "__BMI__": "bmi1",
              "__BMI2__": "bmi2", "__MOVBE__": "movbe", "__AVX512F__": "avx512f", "__AVX512CD__": "avx512cd",
              "__AVX512BW__": "avx512bw", "__AVX512DQ__": "avx512dq", "__AVX512VL__": "avx512vl",
              "__AVX512VNNI__": "avx512_vnni", "__AVX512BF16__": "avx512_bf16", "__AVX512FP16__": "avx512_fp16"}
# x86-64 micro-architecture levels (psABI): the cpuinfo flags each adds to the previous one
X86_LEVELS = [("x86-64-v2", {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}),
              ("x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
              ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})]


def cpu_flags() -> set[str] | None:
    """The feature flags of the first CPU in /proc/cpuinfo, or None when there are none (not Linux/x86)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_isa(flags: set[str] | None) -> str:
    """'x86-64-v3 (avx2 fma; no avx512f)': the highest x86-64 level the flags cover, and the vector ISA."""
    if flags is None:
        return "n/a (no CPU flags in /proc/cpuinfo)"
    level = "x86-64" if "sse2" in flags else "n/a"
    for name, need in X86_LEVELS:
        if not need <= flags:
            break
        level = name
    has = [f for f in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2", "fma") if f in flags]
    return f"{level} ({' '.join(has) or 'no avx2'}{'' if 'avx512f' in flags else '; no avx512f'})"


def c_compiler() -> list[str]:
    """The compiler argv the C loader uses: $CC (split like a shell), else cc, else gcc."""
    import shlex
    import shutil

    cc = os.environ.get("CC", "").strip()
    return shlex.split(cc) if cc else [shutil.which("cc") or shutil.which("gcc") or "cc"]


def with_march(cflags: str, march: str) -> str:
    """cflags with every -march=... replaced by one -march=<march> (appended when there was none)."""
    import shlex

    toks = shlex.split(cflags)
    at = next((i for i, t in enumerate(toks) if t.startswith("-march=")), len(toks))
    toks = [t for t in toks if not t.startswith("-march=")]
    toks.insert(at, f"-march={march}")
    return shlex.join(toks)


def predefined_macros(cc: list[str], cflags: str) -> set[str]:
    """Names of the macros cc predefines with cflags (`cc <cflags> -dM -E -x c -`); ValueError
    with the compiler's first error line when it rejects the flags."""
    import shlex
    import subprocess

    argv = [*cc, *shlex.split(cflags), "-dM", "-E", "-x", "c", "-"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              stdin=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        raise ValueError(f"cannot run {cc[0]}: {err}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise ValueError(next((ln for ln in lines if "error" in ln), lines[0] if lines else "failed"))
    return {ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("#define ") and len(ln.split()) > 1}


def isa_of(macros: set[str]) -> str:
    """'AVX2: avx avx2 fma ...': the widest vector ISA the macros enable, then every x86 feature."""
    feats = [f for m, f in ISA_MACROS.items() if m in macros]
    level = ("AVX-512" if "avx512f" in feats else "AVX2" if "avx2" in feats else "AVX" if "avx" in feats
             else "SSE2" if "__SSE2__" in macros else "no x86 vector ISA")
    return f"{level}: {' '.join(feats)}" if feats else level


def unrunnable(macros: set[str], flags: set[str] | None) -> list[str]:
    """The cpuinfo flags code built with these macros needs that the CPU lacks ([] when flags is None)."""
    if flags is None:
        return []
    return [f for m, f in ISA_MACROS.items() if m in macros and f not in flags]


def column_name(march: str | None, single: bool) -> str:
    """The report column of a C build: c for the default (or a lone native), else c-v3 for
    x86-64-v3, c-<march> otherwise."""
    if march is None or (single and march == "native"):
        return "c"
    return "c-" + (march[len("x86-64-"):] if march.startswith("x86-64-v") else march)


def c_columns(march: list[str] | None, base: str, cc: list[str], flags: set[str] | None) -> dict[str, dict]:
    """Column name -> {"march", "cflags", "isa"} for each --march entry (one "c" column with the
    base flags unchanged when march is None). A compiler that rejects a -march, or an ISA this CPU
    cannot run, is refused (one line, exit 2): running it would die of SIGILL."""
    cols = {}
    for m in march or [None]:
        cflags = base if m is None else with_march(base, m)
        try:
            macros = predefined_macros(cc, cflags)
        except ValueError as err:
            if m is not None:
                die(f"--march {m}: {' '.join(cc)} rejects `{cflags}`: {err}")
            macros, isa = set(), f"n/a ({err})"
        else:
            isa = isa_of(macros)
        missing = unrunnable(macros, flags)
        if missing:
            die(f"--march {m or '(from the C flags)'}: the build targets {', '.join(missing)}, which this "
                f"CPU ({cpu_isa(flags)}) cannot run; measure it on a CPU that has it")
        cols[column_name(m, len(march or []) == 1)] = {"march": m, "cflags": cflags, "isa": isa}
    return cols


def loader_cflags(spec) -> str:
    """$UNETC_CFLAGS when set, else the DEFAULT_CFLAGS of the C loader unetc emits (read from the
    <name>_c.py of spec's config, emitted into a temporary directory, so it follows the templates)."""
    if os.environ.get("UNETC_CFLAGS", "").strip():
        return os.environ["UNETC_CFLAGS"].strip()
    from unetc.emitter import emit

    cfg = make_config(*spec[:4])
    with tempfile.TemporaryDirectory(prefix="unetc-bench-") as tmp:
        emit(cfg, "c", tmp)
        text = (Path(tmp) / f"{cfg.name}_c.py").read_text()
    m = re.search(r'^DEFAULT_CFLAGS = "([^"]*)"', text, re.M)
    if not m:
        raise RuntimeError(f"no DEFAULT_CFLAGS in {cfg.name}_c.py")
    return m.group(1)


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
    """forward() under no_grad; step() = zero grads (set to None) + forward + backward; x and gy
    are one image or an (N, C, H, W) batch, as the targets get them."""

    def __init__(self, cfg: Config, params: dict, x: np.ndarray, gy: np.ndarray):
        import torch

        self.torch = torch
        self.m = torch_unet(cfg)
        missing = set(dict(self.m.named_parameters())) ^ set(params)
        if missing:
            raise RuntimeError(f"parameter names differ between torch and unetc: {sorted(missing)}")
        self.m.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()})
        batch = x.ndim == 4  # (N, C, H, W); one image (C, H, W) runs as a batch of 1
        self.x = torch.from_numpy(np.ascontiguousarray(x if batch else x[None])).requires_grad_(True)
        self.gy = torch.from_numpy(np.ascontiguousarray(gy if batch else gy[None]))

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
# 10-100x. So every (row, column) is measured in a fresh worker process of its own.

def row_key(spec) -> str:
    """File stem of a row's inputs and results in gen/: the config name and the batch size."""
    return f"{make_config(*spec[:4]).name}_n{spec[4]}"


def load_inputs(gen_dir: Path, key: str):
    """(params, x, grad_output) saved by new_row; x has a batch axis when N > 1."""
    data = np.load(gen_dir / f"{key}_inputs.npz")
    return {k[2:]: data[k] for k in data.files if k.startswith("p_")}, data["x"], data["gy"]


def c_extras(mod, cfg: Config, n: int, kind: str) -> dict:
    """What a C module tells about itself: its tile choices (tuning(); "n/a" when it has none)
    and, for the specialised C, its workspace bytes for n images (the module's
    workspace_bytes(n); WORKSPACE_BYTES, one image, for modules without it)."""
    res: dict = {}
    fn = getattr(mod, "tuning", None)
    try:
        res["tuning"] = str(fn()) if callable(fn) else "n/a"
    except Exception as err:
        res["tuning"] = f"n/a (tuning() failed: {type(err).__name__})"
    if kind == "c":
        try:
            res["ws"] = int(mod.workspace_bytes(n))
        except Exception:
            if n == 1 and getattr(mod, "WORKSPACE_BYTES", None) is not None:
                res["ws"] = int(mod.WORKSPACE_BYTES)
    return res


def worker(args) -> int:
    """--worker COLUMN --kind KIND --spec b,s,c,dtype,n [--cflags F]: time one column on one row,
    write <gen>/<key>.<column>.json."""
    spec = parse_spec(args.spec)
    cfg, n, key, col = make_config(*spec[:4]), spec[4], row_key(spec), args.worker
    gen_dir = Path(args.gen)
    label = row_label(cfg, n)
    fwd_f, step_f = (n * f for f in flops(cfg))
    params, x, gy = load_inputs(gen_dir, key)
    res: dict = {"times": {}, "reps": {}}
    ref_path = gen_dir / f"{key}_torch_y.npy"
    if args.kind == "torch":
        import torch

        torch.set_num_threads(args.threads)
        res["torch_threads"] = torch.get_num_threads()
        tr = TorchRunner(cfg, params, x, gy)
        y = tr.forward().numpy()
        np.save(ref_path, y if x.ndim == 4 else y[0])
        fns = {"fwd": tr.forward, "step": tr.step}
    else:
        try:
            if args.cflags is not None:
                os.environ["UNETC_CFLAGS"] = args.cflags  # read by the C loader when it is imported
            mod = load_target(cfg, args.kind, gen_dir)
            if args.kind != "numpy":
                res.update(c_extras(mod, cfg, n, args.kind))
            y = mod.forward(params, x)
            if ref_path.exists():
                res["err"] = rel_err(y, np.load(ref_path))
        except Exception as err:  # e.g. the C loader is missing or fails to build: report, go on
            traceback.print_exc()
            msg = str(err).strip().splitlines()
            res["note"] = f"{type(err).__name__}: {msg[0] if msg else ''}"[:200]
            print(f"  [{label}] {col}: unavailable ({res['note']})", flush=True)
            write_json(gen_dir / f"{key}.{col}.json", res)
            return 0
        fns = {"fwd": lambda: mod.forward(params, x), "step": lambda: mod.backward(params, x, gy)}
    torch_times = {}
    if args.kind != "torch" and (gen_dir / f"{key}.torch.json").exists():
        torch_times = json.loads((gen_dir / f"{key}.torch.json").read_text()).get("times", {})
    for mode, fl in (("fwd", fwd_f), ("step", step_f)):
        name = "fwd" if mode == "fwd" else "fwd+bwd"
        try:
            sec, reps, fastest = measure(fns[mode], args.reps, args.min_time, args.max_call)
        except Exception as err:
            res.setdefault("note", f"{name}: {type(err).__name__}: {err}"[:200])
            print(f"  [{label}] {col} {name}: failed ({res['note']})", flush=True)
            continue
        if sec is None:
            res.setdefault("note", f"{name}: first call > {args.max_call:g} s, not timed")
            print(f"  [{label}] {col:5s} {name:7s} skipped (first call > {args.max_call:g} s)", flush=True)
            continue
        res["times"][mode], res["reps"][mode] = sec, reps
        res.setdefault("min", {})[mode] = fastest
        extra = f"  {sec * 1e3 / n:9.3f} ms/img" if n > 1 else ""
        if torch_times.get(mode):
            extra += f"  ratio {torch_times[mode] / sec:6.2f}"
        if mode == "fwd" and "err" in res:
            extra += f"  err {res['err']:.1e}"
        print(f"  [{label}] {col:5s} {name:7s} {sec * 1e3:10.3f} ms  {fl / sec / 1e9:7.2f} GFLOP/s"
              f"  ({reps} reps){extra}", flush=True)
    if args.kind == "torch":
        try:
            res["peak"] = tr.peak_bytes()
        except Exception as err:
            print(f"  [{label}] torch peak memory: failed ({type(err).__name__}: {err})", flush=True)
    write_json(gen_dir / f"{key}.{col}.json", res)
    return 0


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


def parse_spec(text: str):
    b, s, c, d, n = text.split(",")
    return int(b), int(s), int(c), d, int(n)


def row_label(cfg: Config, n: int = 1) -> str:
    """'b16 64x64 c1 f32', with ' N=16' for a batch."""
    return (f"b{cfg.base_c} {cfg.in_h}x{cfg.in_w} c{cfg.in_c} {'f32' if cfg.dtype == 'float32' else 'f64'}"
            + (f" N={n}" if n > 1 else ""))


@dataclass
class Row:
    cfg: Config
    fwd_flops: int                               # per call: N images
    step_flops: int
    n: int = 1                                   # batch size: images per call
    times: dict = field(default_factory=dict)    # (column, "fwd"|"step") -> median seconds per call
    mins: dict = field(default_factory=dict)     # (column, "fwd"|"step") -> fastest repeat
    reps: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)   # column -> max relative error of y vs torch
    notes: dict = field(default_factory=dict)    # column -> why (part of) it is unavailable
    tuning: dict = field(default_factory=dict)   # C column -> its module's tuning() (tile choices)
    ws_bytes: int | None = None
    torch_peak: int | None = None
    torch_threads: int | None = None

    @property
    def label(self) -> str:
        return row_label(self.cfg, self.n)


def new_row(spec, gen_dir: Path) -> Row:
    """A Row for spec, with its inputs saved for the workers: the numpy module's init_params(0),
    fixed-seed x and grad_output (one image, or a batch of N with an (N, C, H, W) axis), shared by
    all columns."""
    cfg, n = make_config(*spec[:4]), spec[4]
    fwd_f, step_f = flops(cfg)
    ref = load_target(cfg, "numpy", gen_dir)
    dt = np.dtype(cfg.dtype)
    rng = np.random.default_rng(1)
    batch = () if n == 1 else (n,)
    x = rng.standard_normal(batch + tuple(ref.IN_SHAPE)).astype(dt)
    gy = rng.standard_normal(batch + tuple(ref.OUT_SHAPE)).astype(dt)
    np.savez(gen_dir / f"{row_key(spec)}_inputs.npz", x=x, gy=gy,
             **{f"p_{k}": np.ascontiguousarray(v, dtype=dt) for k, v in ref.init_params(0).items()})
    return Row(cfg, n * fwd_f, n * step_f, n)


def run_row(row: Row, spec, columns: dict[str, dict], args, gen_dir: Path) -> None:
    """One round of a row: the torch worker, then one worker per column, each in a fresh process.
    A column's time is kept as its lowest median over the rounds (see main)."""
    import subprocess

    key = row_key(spec)
    for col, how in columns.items():
        out = gen_dir / f"{key}.{col}.json"
        out.unlink(missing_ok=True)
        if col == "torch":
            (gen_dir / f"{key}_torch_y.npy").unlink(missing_ok=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", col, "--kind", how["kind"],
               "--spec", ",".join(map(str, spec)), "--gen", str(gen_dir), "--threads", str(args.threads),
               "--reps", str(args.reps), "--min-time", str(args.min_time), "--max-call", str(args.max_call)]
        if how.get("cflags") is not None:
            cmd += ["--cflags", how["cflags"]]
        try:
            proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=args.timeout)
            failed = proc.returncode != 0 or not out.exists()
            tail = (proc.stderr.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            failed, tail = True, f"worker timed out after {args.timeout:g} s"
        if failed:
            row.notes[col] = f"worker failed: {tail}"[:200]
            print(f"  [{row.label}] {col}: {row.notes[col]}", flush=True)
            continue
        merge(row, col, json.loads(out.read_text()))


def merge(row: Row, col: str, res: dict) -> None:
    """Fold one worker's result into row: the lowest median and fastest repeat over rounds."""
    for mode, sec in res.get("times", {}).items():
        k, fastest = (col, mode), res.get("min", {}).get(mode)
        row.times[k] = min(sec, row.times.get(k, sec))
        row.reps[k] = row.reps.get(k, 0) + res["reps"][mode]
        if fastest is not None:
            row.mins[k] = min(fastest, row.mins.get(k) or fastest)
    if "err" in res:
        row.errors[col] = res["err"]
    if "note" in res:
        row.notes[col] = res["note"]
    if "tuning" in res:
        row.tuning[col] = res["tuning"]
    if "ws" in res and row.ws_bytes is None:
        row.ws_bytes = res["ws"]
    if "peak" in res:
        row.torch_peak = max(res["peak"], row.torch_peak or 0)
    if "torch_threads" in res:
        row.torch_threads = res["torch_threads"]


# ---------------------------------------------------------------- reports

MODES = (("fwd", "fwd"), ("f+b", "step"))  # (report name, times key)


def _fmt_ms(s):
    return "n/a" if s is None else (f"{s * 1e3:.3f}" if s < 0.1 else f"{s * 1e3:.1f}")


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def table(rows: list[Row], cols: list[str]) -> tuple[list[str], list[list[str]]]:
    """The main table: per row and column, ms per call (all N images) and GF/s, then the ratio
    torch / column (same row, so the same N)."""
    head = ["config", "GFLOP fwd"]
    for mode, _ in MODES:
        for t in cols:
            head += [f"{t} {mode} ms", f"{t} {mode} GF/s"]
        for t in cols[1:]:
            head.append(f"{t} {mode} ratio")
    head += ["ws_MB", "torch_peak_MB"]
    body = []
    for r in rows:
        line = [r.label, f"{r.fwd_flops / 1e9:.3f}"]
        for (_, key), fl in zip(MODES, (r.fwd_flops, r.step_flops)):
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


def per_image(rows: list[Row], cols: list[str]) -> tuple[list[str], list[list[str]]]:
    """The batch table: for every config that has a batch row, each of its rows (N ascending) with
    ms per image (time per call / N) per column and mode, and "vs N=1" = ms/image at this N /
    ms/image at N = 1 of the same config and column (<= 1: batching does not cost per image;
    n/a without an N = 1 row)."""
    head = ["config", "N"]
    for mode, _ in MODES:
        head += [f"{t} {mode} ms/img" for t in cols] + [f"{t} {mode} vs N=1" for t in cols]
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.cfg.name, []).append(r)
    body = []
    for group in groups.values():
        if all(r.n == 1 for r in group):
            continue
        one = next((r for r in group if r.n == 1), None)
        for r in sorted(group, key=lambda r: r.n):
            line = [row_label(r.cfg), str(r.n)]
            for _, key in MODES:
                img = [r.times.get((t, key)) for t in cols]
                line += [_fmt_ms(s / r.n if s else None) for s in img]
                for t, s in zip(cols, img):
                    s1 = one.times.get((t, key)) if one else None
                    line.append(_fmt(s / r.n / s1 if s and s1 else None, ".2f"))
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


def machine_info(threads: int, flags: set[str] | None) -> dict[str, str]:
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
        import subprocess

        ccv = subprocess.run([*c_compiler(), "--version"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[0]
    except Exception:
        ccv = "n/a"
    return {"cpu": cpu, "cpu ISA": cpu_isa(flags), "cores": str(os.cpu_count()), "threads": str(threads),
            "python": platform.python_version(), "numpy": np.__version__,
            "numpy BLAS kernels": f"OpenBLAS {openblas_core()} (OPENBLAS_CORETYPE="
                                  f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')})",
            "torch": torch_version, "C compiler": ccv, "os": platform.platform()}


def c_info(columns: dict[str, dict], rows: list[Row]) -> dict[str, str]:
    """Header lines per C column: the exact flags, the ISA they target, the tile choices (the
    module's tuning(), one value or one per row)."""
    info = {}
    for col, how in columns.items():
        if how["kind"] not in ("c", "cpoly"):
            continue
        info[f"C flags ({col})"] = f"`{how['cflags']}` (the loader adds -fPIC -shared)"
        info[f"C ISA ({col})"] = how["isa"] + " (the compiler's predefined macros for those flags)"
        tiles = {r.label: r.tuning[col] for r in rows if col in r.tuning}
        distinct = sorted(set(tiles.values()))
        info[f"C tiles ({col})"] = ("n/a (no row ran)" if not distinct else distinct[0] if len(distinct) == 1
                                    else "; ".join(f"{k}: {v}" for k, v in tiles.items()))
    return info


def torch_threads(rows: list[Row], threads: int) -> str:
    seen = sorted({r.torch_threads for r in rows if r.torch_threads is not None})
    got = ", ".join(map(str, seen)) or "n/a"
    return f"{got} (torch.get_num_threads() in the workers, after set_num_threads({threads}))"


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
            + ["| " + " | ".join(b) + " |" for b in body])


def write_markdown(rows: list[Row], cols: list[str], args, out: Path, info: dict[str, str]) -> None:
    md = ["# unetc benchmark results", ""]
    md += [f"- **{k}**: {v}" for k, v in info.items()]
    md += [f"- **command**: `python benchmarks/run.py {' '.join(sys.argv[1:])}`",
           f"- **date**: {time.strftime('%Y-%m-%d %H:%M:%S')}", "",
           "Times are medians (ms per call) of >= %d repeats after warm-up, repeated until >= %.2g s; "
           "each column's lowest median over %d passes of the whole matrix. " % (args.reps, args.min_time, args.rounds) +
           "`f+b` = forward+backward step. A row `N=k` runs a batch of k images per call (PyTorch the same "
           "batch); GFLOP and GF/s count all k. ratio = torch time / column time at the same N (> 1: faster "
           "than PyTorch). GF/s from the analytic FLOP count (2 x MACs of the convolutions; backward = 2 x "
           "forward). ws_MB = the C target's workspace for the row's N; torch_peak_MB = peak CPU-allocator "
           "bytes during one PyTorch forward+backward step (torch.profiler). See benchmarks/README.md.", ""]
    md += _md_table(*table(rows, cols))
    head, body = per_image(rows, cols)
    if body:
        md += ["", "## Per image (batch rows)", "",
               "ms/img = time per call / N. vs N=1 = ms/img at this N / ms/img at N = 1, same config and "
               "column (<= 1: the batch costs no more per image than one image; n/a: no N = 1 row).", ""]
        md += _md_table(head, body)
    notes = [(r.label, t, n) for r in rows for t, n in r.notes.items()]
    errs = [(r.label, t, e) for r in rows for t, e in r.errors.items()]
    if errs:
        md += ["", "Max relative error of the forward output against PyTorch (same params and input): "
               + ", ".join(f"{lbl} {t} {e:.1e}" for lbl, t, e in errs) + "."]
    if notes:
        md += ["", "Unavailable measurements:", ""] + [f"- {lbl} {t}: {n}" for lbl, t, n in notes]
    (out / "results.md").write_text("\n".join(md) + "\n")


def write_csv(rows: list[Row], cols: list[str], columns: dict[str, dict], args, out: Path,
              info: dict[str, str]) -> None:
    """results.csv: one line per row, raw numbers; the machine and C-build header fields repeated
    on every line so that each line stands alone."""
    fields = ["config", "base_c", "in_h", "in_w", "in_c", "out_c", "dtype", "n", "threads", "cpu", "cpu_isa",
              "torch_version", "torch_threads", "fwd_flops", "fwd_bwd_flops"]
    for t in cols:
        for mode in ("fwd", "fwd_bwd"):
            fields += [f"{t}_{mode}_ms", f"{t}_{mode}_ms_per_image", f"{t}_{mode}_min_ms",
                       f"{t}_{mode}_gflops", f"{t}_{mode}_reps"]
            if t != "torch":
                fields.append(f"{t}_{mode}_ratio")
        if t != "torch":
            fields += [f"{t}_fwd_max_rel_err", f"{t}_note"]
        if columns[t].get("cflags") is not None:
            fields += [f"{t}_cflags", f"{t}_isa", f"{t}_tuning"]
    fields += ["ws_bytes", "ws_MB", "torch_peak_bytes", "torch_peak_MB"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            c = r.cfg
            d = dict(config=r.label, base_c=c.base_c, in_h=c.in_h, in_w=c.in_w, in_c=c.in_c, out_c=c.out_c,
                     dtype=c.dtype, n=r.n, threads=args.threads, cpu=info["cpu"], cpu_isa=info["cpu ISA"],
                     torch_version=info["torch"], torch_threads=r.torch_threads or "",
                     fwd_flops=r.fwd_flops, fwd_bwd_flops=r.step_flops,
                     ws_bytes=r.ws_bytes if r.ws_bytes is not None else "",
                     ws_MB=f"{r.ws_bytes / 2**20:.3f}" if r.ws_bytes is not None else "",
                     torch_peak_bytes=r.torch_peak if r.torch_peak is not None else "",
                     torch_peak_MB=f"{r.torch_peak / 2**20:.3f}" if r.torch_peak is not None else "")
            for t in cols:
                for mode, key, fl in (("fwd", "fwd", r.fwd_flops), ("fwd_bwd", "step", r.step_flops)):
                    s, mn = r.times.get((t, key)), r.mins.get((t, key))
                    d[f"{t}_{mode}_ms"] = f"{s * 1e3:.4f}" if s else ""
                    d[f"{t}_{mode}_ms_per_image"] = f"{s * 1e3 / r.n:.4f}" if s else ""
                    d[f"{t}_{mode}_min_ms"] = f"{mn * 1e3:.4f}" if mn else ""
                    d[f"{t}_{mode}_gflops"] = f"{fl / s / 1e9:.3f}" if s else ""
                    d[f"{t}_{mode}_reps"] = r.reps.get((t, key), "")
                    if t != "torch":
                        ts = r.times.get(("torch", key))
                        d[f"{t}_{mode}_ratio"] = f"{ts / s:.4f}" if s and ts else ""
                if t != "torch":
                    d[f"{t}_fwd_max_rel_err"] = f"{r.errors[t]:.3e}" if t in r.errors else ""
                    d[f"{t}_note"] = r.notes.get(t, "")
                if columns[t].get("cflags") is not None:
                    d.update({f"{t}_cflags": columns[t]["cflags"], f"{t}_isa": columns[t]["isa"],
                              f"{t}_tuning": r.tuning.get(t, "")})
            w.writerow(d)


def plot(rows: list[Row], cols: list[str], out: Path, info: dict[str, str]) -> str | None:
    """ratio.png: torch time / column time against forward FLOPs per call; circles N = 1 (joined
    in FLOP order per dtype), squares batch rows; hollow = float64."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return "matplotlib is not installed (pip install 'unetc[bench]'); ratio.png not written"
    fig, ax = plt.subplots(figsize=(8, 5))
    palette = iter(plt.get_cmap("tab20").colors)
    for t in cols[1:]:
        for mode, name in (("fwd", "forward"), ("step", "forward+backward")):
            pts = sorted((r.fwd_flops, r.times[("torch", mode)] / r.times[(t, mode)], r.cfg.dtype, r.n)
                         for r in rows if r.times.get((t, mode)) and r.times.get(("torch", mode)))
            col = next(palette)
            if not pts:
                continue
            for dtype, face in (("float32", col), ("float64", "none")):
                sel = [p for p in pts if p[2] == dtype and p[3] == 1]  # one line per dtype, in FLOP order
                ax.plot([p[0] for p in sel], [p[1] for p in sel], "-", color=col, alpha=0.35, lw=1)
                for marker, part in (("o", sel), ("s", [p for p in pts if p[2] == dtype and p[3] > 1])):
                    ax.scatter([p[0] for p in part], [p[1] for p in part], marker=marker, s=36,
                               facecolors=face, edgecolors=col)
            ax.plot([], [], "o-", color=col, label=f"{t} {name}")
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("problem size: forward FLOPs per call (analytic)")
    ax.set_ylabel("speed-up vs PyTorch (torch time / target time)")
    ax.set_title(f"unetc vs PyTorch {info['torch']}, {info['threads']} thread(s)\n{info['cpu']}", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], marker="o", ls="", color="gray", label="float32"),
                Line2D([], [], marker="o", ls="", color="gray", markerfacecolor="none", label="float64"),
                Line2D([], [], marker="s", ls="", color="gray", label="batch N > 1")]
    ax.legend(handles=handles, fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ratio.png", dpi=120)
    plt.close(fig)
    return None


# ---------------------------------------------------------------- main

def plan_columns(args, rows_spec, flags: set[str] | None) -> dict[str, dict]:
    """Column name -> {"kind", "cflags", "isa"} in report order: torch, the C columns (one per
    --march), numpy, cpoly (built with the first C column's flags). Refuses (exit 2) an ISA this
    CPU cannot run."""
    columns: dict[str, dict] = {"torch": {"kind": "torch"}}
    c_cols = {}
    if {"c", "cpoly"} & set(args.targets):
        c_cols = c_columns(args.march, loader_cflags(rows_spec[0]), c_compiler(), flags)
    for t in COLS[1:]:
        if t not in args.targets:
            continue
        if t == "c":
            columns.update({name: {"kind": "c", **how} for name, how in c_cols.items()})
        elif t == "cpoly":
            columns["cpoly"] = {"kind": "cpoly", **next(iter(c_cols.values()))}
        else:
            columns[t] = {"kind": t}
    return columns


def main(args) -> int:
    if args.worker:
        return worker(args)
    rows_spec = (parse_rows(args.rows) if args.rows else QUICK_ROWS if args.quick
                 else FULL_ROWS if args.full else DEFAULT_ROWS)
    flags = cpu_flags()
    columns = plan_columns(args, rows_spec, flags)  # refuses bad --march before anything is written
    out = Path(args.out)
    gen_dir = out / "gen"
    gen_dir.mkdir(parents=True, exist_ok=True)
    cols = list(columns)
    info = machine_info(args.threads, flags)
    check0 = cpu_check(args.threads)
    print(f"unetc benchmark: {len(rows_spec)} configs, columns {','.join(cols)}, "
          f"{args.threads} thread(s); {info['cpu']} ({info['cpu ISA']}); torch {info['torch']}, "
          f"numpy {info['numpy']}", flush=True)
    for col, how in columns.items():
        if how.get("cflags") is not None:
            print(f"  {col}: {how['cflags']} -> {how['isa']}", flush=True)
    if "numpy" in args.targets and avx512_misdetected(openblas_core()):
        print(f"note: NumPy's OpenBLAS runs its {openblas_core()} (AVX2) kernels on this AVX-512 CPU "
              f"(OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}); to let a current "
              "OpenBLAS pick its kernels, run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` "
              "(see benchmarks/README.md)", flush=True)
    # Rounds go over the whole matrix, so that a row's measurements lie minutes apart: this VM's
    # neighbours slow everything down in phases of seconds to minutes, and a column's time is its
    # lowest per-round median.
    rows: dict[int, Row] = {}
    for rnd in range(1, args.rounds + 1):
        for i, spec in enumerate(rows_spec, 1):
            cfg = make_config(*spec[:4])
            print(f"[round {rnd}/{args.rounds}, {i}/{len(rows_spec)}] {row_label(cfg, spec[4])}: "
                  f"{spec[4] * flops(cfg)[0] / 1e9:.3f} GFLOP fwd", flush=True)
            try:
                if i not in rows:
                    rows[i] = new_row(spec, gen_dir)
                run_row(rows[i], spec, columns, args, gen_dir)
            except Exception:
                traceback.print_exc()
                print(f"  [{cfg.name}] row failed, continuing", flush=True)
    rows = [rows[i] for i in sorted(rows)]
    check1 = cpu_check(args.threads)
    info["torch threads"] = torch_threads(rows, args.threads)
    info.update(c_info(columns, rows))
    info["cpu check"] = (f"{args.threads} concurrent busy processes ran at {check0:.0%} (start) and "
                         f"{check1:.0%} (end) of the speed of one alone; well below 100% means the "
                         f"cores were shared with other load and multi-threaded timings are noisy")
    print(f"\ncpu check: {info['cpu check']}")
    print()
    print_table(*table(rows, cols))
    head, body = per_image(rows, cols)
    if body:
        print("\nper image (ms/img = ms per call / N; vs N=1 = ms/img / ms/img at N = 1):")
        print_table(head, body)
    write_markdown(rows, cols, args, out, info)
    write_csv(rows, cols, columns, args, out, info)
    msg = None if args.no_plot else plot(rows, cols, out, info)
    if msg:
        print(f"note: {msg}")
    print(f"\nwrote {out / 'results.md'}, {out / 'results.csv'}"
          + ("" if args.no_plot or msg else f", {out / 'ratio.png'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
