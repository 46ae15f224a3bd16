"""C target robustness (issue 10): 32/64-bit index types at the int boundary and on huge configs
(compile-only), the emit limits, the loader's source hash, its verified compile cache (truncated,
garbage, foreign libraries, a killed build, concurrent imports), flag fallback only with a note,
one ImportError line per environment failure, aligned copies and masked arrays at the C boundary,
and the small checksum testbench (which must still fail on wrong C)."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from unetc.config import Config
from unetc.emitter import emit
from unetc.errors import EmitError
from unetc.specialize import specialize
from unetc.targets import c_target

CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (CI has one)")
STRICT = ["-std=c99", "-O0", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-fopenmp", "-c"]
FAST = "-O0 -std=c99"  # UNETC_CFLAGS of the cache tests: compiles in a fraction of a second
TINY = Config(name="rb", in_c=2, out_c=2, base_c=2, in_h=8, in_w=8)
INT_MAX = 2**31 - 1


def _load(path: Path, modname: str):
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- item 2: index types and limits

def _emit_source(cfg: Config) -> tuple[str, str]:
    sp = specialize(cfg)
    files = c_target.files(sp)
    return files[f"{cfg.name}.c"], files[f"{cfg.name}.h"]


def _extent(cfg: Config) -> int:
    sp = specialize(cfg)
    ws = c_target.workspace_bytes(sp)
    return max([ws // c_target._esize(sp)] + [c_target._numel(s) for s in (*sp.shapes.values(), *sp.params.values())])


def _int_loops_fit(src: str) -> None:
    """No `int` loop variable counts up to a literal beyond INT_MAX."""
    for var, bound in re.findall(r"for \(int (\w+) = [^;]*; \1 < (\d+);", src):
        assert int(bound) <= INT_MAX, (var, bound)


BOUNDARY = {  # name -> (config, index type): the int / ptrdiff_t switch, the configs
    "rb_int_edge": (Config(name="rb_int_edge", in_c=1, out_c=1, base_c=2, in_h=16384, in_w=6390), "int"),
    "rb_above_2p31": (Config(name="rb_above_2p31", in_c=1, out_c=1, base_c=2, in_h=16384, in_w=6394), "ptrdiff_t"),
    "rb_base128_4096": (Config(name="rb_base128_4096", in_c=1, out_c=1, base_c=128, in_h=4096, in_w=4096),
                        "ptrdiff_t"),
    "rb_default_6000": (Config(name="rb_default_6000", in_h=6000, in_w=6000), "ptrdiff_t"),
}


@pytest.fixture(scope="module")
def boundary_sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("boundary")
    out = {}
    for name, (cfg, _) in BOUNDARY.items():
        src, hdr = _emit_source(cfg)
        (d / f"{name}.c").write_text(src)
        (d / f"{name}.h").write_text(hdr)
        out[name] = (d, src, hdr)
    return out


def test_boundary_configs_pick_the_index_type(boundary_sources):
    """Just below the int limit every index is an int (the code of ordinary sizes); just above 2^31
    elements, and for the issue's base_c 128 at 4096x4096 (one activation of 2^31 elements) and the
    default config at 6000x6000, every loop and index is ptrdiff_t and the workspace a size_t."""
    assert _extent(BOUNDARY["rb_int_edge"][0]) <= c_target.INT_SAFE < _extent(BOUNDARY["rb_above_2p31"][0])
    assert _extent(BOUNDARY["rb_above_2p31"][0]) > 2**31
    for name, (cfg, index) in BOUNDARY.items():
        _, src, hdr = boundary_sources[name]
        _int_loops_fit(src)
        if index == "int":
            assert "for (ptrdiff_t" not in src and "(int C, int H, int W" in src
            code = "\n".join(ln for ln in src.splitlines() if "base + " not in ln and not ln.lstrip().startswith(("/*", "//")))
            assert all(int(n) <= INT_MAX for n in re.findall(r"\b\d+\b", code))  # no literal int arithmetic overflows
        else:
            assert re.search(r"for \(ptrdiff_t \w+ = 0; \w+ < \d+;", src) and "for (int i = 0; i < " not in src
            assert "target_is_large_enough[PTRDIFF_MAX >= " in src
            assert re.search(r"WORKSPACE_BYTES \(\(size_t\)\d+ull\)", hdr), hdr


@pytest.mark.parametrize("name", sorted(BOUNDARY))
def test_boundary_configs_compile_strict(name, boundary_sources):
    d, _, _ = boundary_sources[name]
    p = subprocess.run([CC, *STRICT, str(d / f"{name}.c"), "-o", str(d / f"{name}.o")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[:3000]


def test_emit_refuses_beyond_the_c_limits():
    """A tensor over 2^46 bytes, or a dimension over 2^31 - 1: one-line EmitError naming the limit."""
    sp = specialize(Config(name="rb_huge", in_c=1, out_c=1, base_c=2048, in_h=131072, in_w=131072))
    with pytest.raises(EmitError, match=r"^C target limit: tensor .* more than 2\^46$"):
        c_target.files(sp)
    sp = specialize(TINY)
    sp.shapes["x"] = (1, 2**31, 1)  # beyond what a config admits today: the C target still refuses
    with pytest.raises(EmitError, match=r"dimension above 2\^31 - 1"):
        c_target.check_limits(sp)
    with pytest.raises(EmitError, match=r"the workspace needs .* more than 2\^46"):
        c_target.index_type(specialize(TINY), 2**46 + 64)


# ---------------------------------------------------------------- loader fixtures

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rb_tiny")
    emit(TINY, "c", d)
    return d


def _env(cache: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "UNETC_CFLAGS")}
    env.update({"UNETC_CACHE_DIR": str(cache), "UNETC_CFLAGS": FAST, "PYTHONDONTWRITEBYTECODE": "1"})
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


IMPORT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import rb_c as m
    p = m.init_params(0)
    x = np.linspace(-1, 1, int(np.prod(m.IN_SHAPE))).reshape(m.IN_SHAPE).astype(m.DTYPE)
    print(m.LIBRARY_PATH)
    print(repr(float(m.forward(p, x).sum())))
""")


def _import(d: Path, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", IMPORT, str(d)], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


def _ok(r: subprocess.CompletedProcess) -> tuple[str, str]:
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    lib, total = r.stdout.split()
    return lib, total


def _reference_sum(tiny_dir: Path) -> str:
    ref = _load(emit(TINY, "numpy", tiny_dir / "np")[0], "rb_np_ref")
    p = ref.init_params(0)
    x = np.linspace(-1, 1, int(np.prod(ref.IN_SHAPE))).reshape(ref.IN_SHAPE).astype(ref.DTYPE)
    return float(ref.forward(p, x).sum())


# ---------------------------------------------------------------- items 5, 6: source hash, cache

def test_loader_refuses_sources_of_another_emit(tmp_path):
    """A .c from another run next to the loader (a non-atomic or interrupted emit): ImportError."""
    emit(TINY, "c", tmp_path / "a")
    emit(dataclasses.replace(TINY, base_c=3), "c", tmp_path / "b")
    shutil.copy(tmp_path / "b" / "rb.c", tmp_path / "a" / "rb.c")
    with pytest.raises(ImportError, match=r"^unetc: rb.c/.h do not match rb_c.py \(emitted by a different run\); re-emit$"):
        _load(tmp_path / "a" / "rb_c.py", "rb_c_mismatch")


def test_cache_rebuilds_truncated_garbage_and_foreign_libraries(tiny_dir, tmp_path):
    cache = tmp_path / "cache"
    env = _env(cache)
    lib, want = _ok(_import(tiny_dir, env))
    assert abs(float(want) - _reference_sum(tiny_dir)) <= 1e-4 * max(1.0, abs(float(want)))
    good = Path(lib).read_bytes()
    for damage in ("truncate", "garbage"):
        Path(lib).write_bytes(good[:len(good) // 2] if damage == "truncate" else os.urandom(len(good)))
        assert _ok(_import(tiny_dir, env)) == (lib, want), damage  # rebuilt under the same key
        assert Path(lib).read_bytes() != good[:len(good) // 2]
    # a library of another config with the same name, under this key with a matching digest file
    other = tmp_path / "other"
    emit(dataclasses.replace(TINY, base_c=3), "c", other)
    other_lib, _ = _ok(_import(other, env))
    shutil.copy(other_lib, lib)
    shutil.copy(other_lib + ".sha256", lib + ".sha256")
    assert _ok(_import(tiny_dir, env)) == (lib, want)
    assert Path(lib).read_bytes() != Path(other_lib).read_bytes()
    assert not [n for n in os.listdir(cache) if n.endswith(".tmp")]


def test_killed_build_leaves_only_ignored_litter(tiny_dir, tmp_path):
    """SIGKILL while the library compiles: the next import ignores the temporary file and builds;
    temporary files older than an hour are removed."""
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / ".rb-stale.tmp"
    stale.write_bytes(b"left by an old crash")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    env = _env(cache, UNETC_CFLAGS="-O2 -std=c99")
    proc = subprocess.Popen([sys.executable, "-c", IMPORT, str(tiny_dir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not [n for n in os.listdir(cache) if n.startswith(".rb-") and n != stale.name]:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the import and its compiler
    proc.communicate()
    assert not [n for n in os.listdir(cache) if n.endswith(".so")], os.listdir(cache)
    lib, _ = _ok(_import(tiny_dir, env))
    assert os.path.exists(lib) and not stale.exists()


def test_concurrent_imports_both_succeed(tiny_dir, tmp_path):
    cache = tmp_path / "cache"
    env = _env(cache)
    procs = [subprocess.Popen([sys.executable, "-c", IMPORT, str(tiny_dir)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in outs), outs
    assert outs[0][0] == outs[1][0]
    assert sorted(n for n in os.listdir(cache) if not n.endswith(".sha256")) == [Path(outs[0][0].split()[0]).name]


# ---------------------------------------------------------------- items 7, 15: flags and environment

def _wrapper(tmp_path: Path, body: str) -> str:
    path = tmp_path / "cc-wrapper"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_fallback_only_for_unusable_flags_with_a_note(tiny_dir, tmp_path):
    """Default flags a compiler refuses (here: no OpenMP): one stderr line naming them, then the
    fallback flags; the library works."""
    cc = _wrapper(tmp_path, f'for a in "$@"; do [ "$a" = -fopenmp ] && {{ echo "cc: error: unrecognized '
                            f'command-line option -fopenmp" >&2; exit 1; }}; done; exec {CC} "$@"')
    r = _import(tiny_dir, _env(tmp_path / "cache", CC=cc, UNETC_CFLAGS=None))
    _ok(r)
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("unetc:") and not ln.startswith("unetc: compiling ")]
    assert "unetc: compiling rb.c with " in r.stderr and "-O3 -std=c99 -fPIC -shared (once; cached in " in r.stderr
    assert len(notes) == 1 and "-fopenmp" in notes[0] and "not usable with" in notes[0], r.stderr
    assert "unrecognized command-line option -fopenmp" in notes[0] and notes[0].endswith("using -O3 -std=c99 -fPIC -shared")


def test_generated_code_errors_are_never_retried(tiny_dir, tmp_path):
    """Flags that build a trivial file but not the generated code: an ImportError calling it a
    unetc bug with the compiler's first error, no fallback."""
    cc = _wrapper(tmp_path, f'for a in "$@"; do case "$a" in */rb.c) echo "rb.c:1:1: error: planted" >&2; exit 1;; '
                            f'esac; done; exec {CC} "$@"')
    code = f"import sys; sys.path.insert(0, {str(tiny_dir)!r})\ntry:\n import rb_c\nexcept ImportError as e:\n print(e)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=_env(tmp_path / "cache", CC=cc, UNETC_CFLAGS=None))
    assert r.returncode == 0 and r.stderr.startswith("unetc: compiling rb.c with ") and r.stderr.count("\n") == 1, r.stderr
    assert r.stdout.startswith("unetc: bug: ") and "rb.c:1:1: error: planted" in r.stdout and r.stdout.count("\n") == 1


ENV_FAILURES = {  # env -> a fragment of the one-line ImportError
    "no such compiler": ({"CC": "no-such-cc-unetc"}, "no C compiler found"),
    "CC=false": ({"CC": "false"}, "cannot build a trivial shared library"),
    "unbalanced quote in CC": ({"CC": "gcc '"}, "cannot parse $CC"),
    "unbalanced quote in UNETC_CFLAGS": ({"UNETC_CFLAGS": "-O2 '"}, "cannot parse $UNETC_CFLAGS"),
    "unknown flag": ({"UNETC_CFLAGS": "-O0 --no-such-flag-unetc"}, "cannot build a trivial shared library"),
    "cache dir is a file": ({"UNETC_CACHE_DIR": "FILE"}, "cannot use the cache directory"),
    "cache dir cannot be created": ({"UNETC_CACHE_DIR": "/proc/unetc-cache"}, "cannot use the cache directory"),
    "cache dir not writable": ({"UNETC_CACHE_DIR": "/proc"}, "the cache directory '/proc'"),
}


@pytest.mark.parametrize("case", sorted(ENV_FAILURES))
def test_environment_failures_are_one_import_error_line(case, tiny_dir, tmp_path, monkeypatch):
    env, fragment = ENV_FAILURES[case]
    monkeypatch.setenv("UNETC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("UNETC_CFLAGS", FAST)
    for k, v in env.items():
        if v == "FILE":
            v = str(tmp_path / "a-file")
            Path(v).write_text("")
        monkeypatch.setenv(k, v)
    with pytest.raises(ImportError) as err:
        _load(tiny_dir / "rb_c.py", f"rb_c_env_{abs(hash(case))}")
    msg = str(err.value)
    assert type(err.value) is ImportError and msg.startswith("unetc: ") and "\n" not in msg, msg
    assert fragment in msg, msg


def test_missing_source_file_is_an_import_error(tmp_path):
    emit(TINY, "c", tmp_path)
    (tmp_path / "rb.h").unlink()
    with pytest.raises(ImportError, match=r"^unetc: cannot read .*rb\.h: No such file or directory$"):
        _load(tmp_path / "rb_c.py", "rb_c_missing")


# ---------------------------------------------------------------- item 14: arrays at the C boundary

@pytest.fixture(scope="module")
def tiny_mod(tiny_dir, tmp_path_factory):
    old = {k: os.environ.get(k) for k in ("UNETC_CACHE_DIR", "UNETC_CFLAGS")}
    os.environ["UNETC_CACHE_DIR"] = str(tmp_path_factory.mktemp("rb_cache"))
    os.environ["UNETC_CFLAGS"] = FAST
    try:
        yield _load(tiny_dir / "rb_c.py", "rb_c_tiny")
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _misaligned(a: np.ndarray) -> np.ndarray:
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf, dtype=a.dtype, offset=1, count=a.size).reshape(a.shape)
    out[...] = a
    return out


def test_misaligned_arrays_reach_c_aligned(tiny_mod, monkeypatch):
    mod = tiny_mod
    params = mod.init_params(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(mod.IN_SHAPE).astype(mod.DTYPE)
    gy = rng.standard_normal(mod.OUT_SHAPE).astype(mod.DTYPE)
    y = mod.forward(params, x)
    grads, gx = mod.backward(params, x, gy)
    seen = []
    real_call = mod._call

    def spy(fn, *args):
        seen.extend(a for a in args if isinstance(a, int) and a > 1 << 20)  # addresses (not n)
        seen.extend(getattr(a._obj, f) for a in args if hasattr(a, "_obj") for f, _ in a._obj._fields_)
        return real_call(fn, *args)

    monkeypatch.setattr(mod, "_call", spy)
    mx, mp, mgy = _misaligned(x), {k: _misaligned(v) for k, v in params.items()}, _misaligned(gy)
    assert not mx.flags.aligned
    assert np.array_equal(mod.forward(mp, mx), y)
    g2, gx2 = mod.backward(mp, mx, mgy)
    assert np.array_equal(gx2, gx) and all(np.array_equal(g2[k], grads[k]) for k in grads)
    assert seen and all(p % mod.np.dtype(mod.DTYPE).itemsize == 0 for p in seen), seen


def test_masked_arrays_are_rejected_by_both_targets(tiny_mod, tmp_path):
    (np_path,) = emit(TINY, "numpy", tmp_path)
    for mod in (tiny_mod, _load(np_path, "rb_numpy_masked")):
        params = mod.init_params(0)
        x = np.ma.masked_array(np.zeros(mod.IN_SHAPE, mod.DTYPE), mask=np.zeros(mod.IN_SHAPE, bool))
        with pytest.raises(ValueError, match=r"^x: masked arrays are not supported \(use \.filled\(\)\)$"):
            mod.forward(params, x)
        masked = dict(params)
        masked["out1x1.bias"] = np.ma.masked_array(params["out1x1.bias"])
        with pytest.raises(ValueError, match=r"^params\['out1x1.bias'\]: masked arrays are not supported"):
            mod.forward(masked, np.zeros(mod.IN_SHAPE, mod.DTYPE))


# ---------------------------------------------------------------- item 10: small testbench

def _run_testbench(paths, tmp_path: Path, mutate=None) -> subprocess.CompletedProcess:
    c_files = [p for p in paths if p.suffix == ".c"]
    if mutate:
        src = next(p for p in c_files if not p.name.endswith("_main.c"))
        text = src.read_text()
        old, new = mutate
        assert old in text
        src.write_text(text.replace(old, new, 1))
    exe = tmp_path / "tb"
    p = subprocess.run([CC, "-std=c99", "-O0", "-Wall", "-Wextra", "-Wpedantic", "-Werror", *map(str, c_files),
                        "-o", str(exe)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)


CORNER = Config(name="rb_corner", in_c=2, out_c=2, base_c=3, in_h=96, in_w=80)  # 7680 pixels: corner reference


@pytest.fixture(scope="module")
def corner_files(tmp_path_factory):
    """CORNER's files with a testbench, and the seconds the emit took."""
    d = tmp_path_factory.mktemp("corner")
    t = time.time()
    paths = emit(CORNER, "c", d, testbench=True)
    return {p.name: p.read_text() for p in paths}, time.time() - t


def _write(files: dict, d: Path) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return [d / name for name in files]


def test_large_input_testbench_is_small_and_checks_the_whole_image(corner_files, tmp_path):
    """Beyond TB_DENSE_PIXELS the testbench's reference is a NumPy run on a corner crop: the C runs
    the whole image and must agree (PASS); the file holds checksums, not tensors."""
    files, took = corner_files
    assert 96 * 80 > c_target.TB_DENSE_PIXELS
    main = files["rb_corner_main.c"]
    assert len(main) < 40_000 and took < 60, (len(main), took)
    assert "tb_fill_patch(x, 2, 96, 80, 8," in main
    r = _run_testbench(_write(files, tmp_path), tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("PASS max_rel_err="), r.stdout


@pytest.mark.parametrize("mutation", [
    ("yr[ow] = m;", "yr[ow] = 1.001f * m;"),  # the first max-pool forward 0.1% off
    ("out[c] = rb_corner_sum(", "out[c] = 1.5f * rb_corner_sum("),  # a bias gradient
    ("d[i] = s[i] > 0 ? d[i] : 0;", "d[i] = s[i] >= 0 ? d[i] : 0;"),  # a ReLU gate open at 0
    ("acc[i] += other[i];", "acc[i] += 1.001f * other[i];"),  # a gradient sum 0.1% off
])
def test_corner_testbench_fails_on_wrong_code(mutation, corner_files, tmp_path):
    r = _run_testbench(_write(corner_files[0], tmp_path), tmp_path, mutate=mutation)
    assert r.returncode != 0 and r.stdout.startswith("FAIL"), r.stdout


def test_dense_testbench_fails_on_one_wrong_weight_gradient_entry(tmp_path):
    """Small inputs: dense data; a single wrong element of one weight gradient is caught by the sums."""
    cfg = Config(name="rb_dense", in_c=2, out_c=2, base_c=3, in_h=12, in_w=10)
    paths = emit(cfg, "c", tmp_path, testbench=True)
    main = next(p for p in paths if p.name.endswith("_main.c"))
    text = main.read_text()
    hook = "    if (rb_dense_forward(NULL, 1, x, y, ws)"
    assert hook in text and "static const double want_d_up1_1_weight[36]" in text
    main.write_text(text.replace(hook, "    if (worst > 1e-4) {\n        printf(\"FAIL before\\n\");\n        return 1;\n    }\n"
                                       "    d_up1_1_weight[7] += 1.0f;\n    check(\"again\", d_up1_1_weight, 162, "
                                       "want_d_up1_1_weight, at_d_up1_1_weight);\n" + hook, 1))
    r = _run_testbench(paths, tmp_path)
    assert r.returncode != 0 and r.stdout.startswith("FAIL max_rel_err=") and "(again)" in r.stdout, r.stdout
