"""benchmarks/run.py without benchmarking: row and --march parsing, the ISA of a build (compiler
macros) against the CPU's flags, the per-image table, and the report header. Fast (no timing runs)."""
from __future__ import annotations

import csv
import importlib.util
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

# /proc/cpuinfo flags of an AVX2-only CPU (AMD Zen 3) and of one with AVX-512 (Ice Lake server)
ZEN3 = set("fpu sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt xsave avx f16c lahf_lm abm bmi1 avx2 bmi2".split())
ICX = ZEN3 | {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_vnni"}


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("bench_run_under_test", RUN)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def test_rows_take_an_optional_batch_size(run):
    assert run.parse_rows("64:128:3:float32, 16:64:1:float32:16") == [
        (64, 128, 3, "float32", 1), (16, 64, 1, "float32", 16)]


@pytest.mark.parametrize("bad", ["8:32:1:float32:0", "8:32:1:float16", "8:32:1", "8:32:1:float32:4:2",
                                 "8:32:1:float32:-1", "8:x:1:float32"])
def test_bad_rows_are_one_line_and_exit_2(run, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        run.parse_rows(bad)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and repr(bad) in err


def test_default_matrix_has_batch_rows_and_their_single_image_rows(run):
    rows = set(run.DEFAULT_ROWS)
    for base_c, size in ((16, 64), (64, 128)):
        for n in (1, 8, 16):
            assert (base_c, size, 1, "float32", n) in rows


def test_march_replaces_or_appends(run):
    base = "-O3 -march=native -ffp-contract=fast -fopenmp -std=c99"
    assert run.with_march(base, "x86-64-v3") == "-O3 -march=x86-64-v3 -ffp-contract=fast -fopenmp -std=c99"
    assert run.with_march("-O2 -march=a -march=b", "znver3") == "-O2 -march=znver3"
    assert run.with_march("-O2", "x86-64-v4") == "-O2 -march=x86-64-v4"


def test_column_names(run):
    assert run.column_name(None, True) == "c"
    assert run.column_name("native", True) == "c"
    assert run.column_name("native", False) == "c-native"
    assert run.column_name("x86-64-v3", True) == "c-v3"
    assert run.column_name("znver3", False) == "c-znver3"


def test_cpu_isa_levels(run):
    assert run.cpu_isa(ZEN3).startswith("x86-64-v3 (avx2 fma; no avx512f)")
    assert run.cpu_isa(ICX).startswith("x86-64-v4 (avx512f")
    assert run.cpu_isa({"sse2"}).startswith("x86-64 ")


def test_isa_from_macros_and_what_the_cpu_lacks(run):
    v4 = {"__SSE2__", "__AVX__", "__AVX2__", "__FMA__", "__AVX512F__", "__AVX512BW__"}
    assert run.isa_of(v4).startswith("AVX-512: ")
    assert run.isa_of({"__SSE2__", "__AVX__", "__AVX2__", "__FMA__"}) == "AVX2: avx avx2 fma"
    assert run.unrunnable(v4, ZEN3) == ["avx512f", "avx512bw"]
    assert run.unrunnable(v4, ICX) == []
    assert run.unrunnable(v4, None) == []  # no cpuinfo: nothing to check against


needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


@needs_cc
def test_compiler_macros_name_the_targeted_isa(run):
    cc = run.c_compiler()
    v3 = run.predefined_macros(cc, "-O3 -march=x86-64-v3 -std=c99")
    v4 = run.predefined_macros(cc, "-O3 -march=x86-64-v4 -std=c99")
    assert {"__AVX2__", "__FMA__"} <= v3 and "__AVX512F__" not in v3
    assert "__AVX512F__" in v4
    with pytest.raises(ValueError):
        run.predefined_macros(cc, "-march=no-such-cpu")


@needs_cc
def test_an_isa_the_cpu_cannot_run_is_refused(run, capsys):
    cc, base = run.c_compiler(), "-O3 -march=native -std=c99"
    with pytest.raises(SystemExit) as exc:
        run.c_columns(["x86-64-v3", "x86-64-v4"], base, cc, ZEN3)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x86-64-v4" in err and "avx512f" in err
    cols = run.c_columns(["x86-64-v3", "x86-64-v4"], base, cc, ICX)
    assert list(cols) == ["c-v3", "c-v4"]
    assert cols["c-v4"]["cflags"] == "-O3 -march=x86-64-v4 -std=c99"
    assert cols["c-v3"]["isa"].startswith("AVX2") and cols["c-v4"]["isa"].startswith("AVX-512")


@pytest.mark.parametrize("argv", [["--march", "v4;rm -rf x"], ["--rows", "8:32:1:float32:0"],
                                  ["--targets", "numpy", "--march", "native"]])
def test_cli_refuses_bad_input_before_writing(tmp_path, argv):
    out = tmp_path / "res"
    proc = subprocess.run([sys.executable, str(RUN), *argv, "--out", str(out)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("run.py: error: ")
    assert not out.exists()


def _rows(run):
    """b8 32x32 at N = 1 and N = 16 with known times (seconds per call)."""
    cfg = run.make_config(8, 32, 1, "float32")
    one = run.Row(cfg, 100, 300, 1, times={("torch", "fwd"): 2e-3, ("c-v3", "fwd"): 1e-3,
                                           ("torch", "step"): 6e-3, ("c-v3", "step"): 3e-3})
    batch = run.Row(cfg, 1600, 4800, 16, times={("torch", "fwd"): 16e-3, ("c-v3", "fwd"): 8e-3,
                                                ("torch", "step"): 48e-3, ("c-v3", "step"): 32e-3},
                    tuning={"c-v3": "conv 4x3"})
    return [one, batch]


def test_per_image_table(run):
    head, body = run.per_image(_rows(run), ["torch", "c-v3"])
    by = [dict(zip(head, line)) for line in body]
    assert [r["N"] for r in by] == ["1", "16"]
    assert by[1]["torch fwd ms/img"] == "1.000" and by[1]["c-v3 fwd ms/img"] == "0.500"
    assert by[1]["c-v3 f+b ms/img"] == "2.000"
    assert by[1]["torch fwd vs N=1"] == "0.50" and by[1]["c-v3 fwd vs N=1"] == "0.50"
    assert by[1]["c-v3 f+b vs N=1"] == "0.67"  # 2.000 / 3.000 ms per image
    head, body = run.table(_rows(run), ["torch", "c-v3"])
    main = dict(zip(head, body[1]))
    assert main["config"] == "b8 32x32 c1 f32 N=16"
    assert main["c-v3 fwd ratio"] == "2.00" and main["c-v3 f+b ratio"] == "1.50"  # same N


def test_reports_record_isa_flags_tiles(run, tmp_path):
    rows = _rows(run)
    columns = {"torch": {"kind": "torch"},
               "c-v3": {"kind": "c", "cflags": "-O3 -march=x86-64-v3", "isa": "AVX2: avx avx2 fma"}}
    info = {"cpu": "Some CPU", "cpu ISA": "x86-64-v3 (avx2 fma; no avx512f)", "torch": "2.x", "threads": "2"}
    info.update(run.c_info(columns, rows))
    args = types.SimpleNamespace(reps=5, min_time=0.5, rounds=2, threads=2)
    run.write_markdown(rows, list(columns), args, tmp_path, info)
    run.write_csv(rows, list(columns), columns, args, tmp_path, info)
    md = (tmp_path / "results.md").read_text()
    assert "- **C flags (c-v3)**: `-O3 -march=x86-64-v3`" in md
    assert "- **C ISA (c-v3)**: AVX2: avx avx2 fma" in md
    assert "- **C tiles (c-v3)**: conv 4x3" in md
    assert "## Per image (batch rows)" in md
    lines = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert lines[1]["n"] == "16" and lines[1]["c-v3_fwd_ms_per_image"] == "0.5000"
    assert lines[1]["c-v3_isa"] == "AVX2: avx avx2 fma" and lines[1]["c-v3_tuning"] == "conv 4x3"
    assert lines[0]["cpu_isa"].startswith("x86-64-v3")


def test_tiles_come_from_tuning_or_are_na(run):
    cfg = run.make_config(8, 32, 1, "float32")
    with_tiles = types.SimpleNamespace(tuning=lambda: "conv 8x1, wgrad 2x6")
    assert run.c_extras(with_tiles, cfg, 1, "cpoly")["tuning"] == "conv 8x1, wgrad 2x6"
    assert run.c_extras(types.SimpleNamespace(), cfg, 1, "cpoly")["tuning"] == "n/a"
