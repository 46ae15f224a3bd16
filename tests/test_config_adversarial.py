"""Hostile and careless configs (issue 10 items 3, 9, 10, 13; issue 13 item 6): every malformed
config of the corpus is refused by `check` and `emit` with exit 2 and one line naming the file, in
<= 5 s, writing nothing; special files never block; Config validates itself; --size and "did you
mean" say what they want."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import unetc
from conftest import ROOT
from malformed_configs import CORPUS, INT_KEYS, MIB, SIZE_KEYS
from unetc import cli
from unetc.config import LIMITS, Config, load, parse, parse_size
from unetc.errors import ConfigError, UnetcError, UsageError

COMMANDS = {"check": ["check"], "emit": ["emit", "--target", "numpy", "-o"]}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETC_CACHE_DIR", str(tmp_path / "cache"))


def write(path, content) -> str:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def run_main(args, capsys) -> tuple[int, str, str, float]:
    start = time.monotonic()
    code = cli.main(args)
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    return code, out, err, elapsed


def assert_one_line_error(code, out, err, shown_path):
    assert code == 2, (code, out, err)
    assert out == "", out
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"unetc: error: {shown_path}: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(CORPUS))
def test_corpus_refused_with_one_line(case, command, tmp_path, capsys):
    path = write(tmp_path / "cfg.yaml", CORPUS[case])
    out_dir = tmp_path / "out"
    args = COMMANDS[command] + ([str(out_dir), path] if command == "emit" else [path])
    code, out, err, elapsed = run_main(args, capsys)
    assert_one_line_error(code, out, err, path)
    assert len(err) < 300 + len(path), err[:400]  # hostile keys and values are clipped
    assert elapsed <= 5, f"{case}: {elapsed:.1f} s"
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_corpus_size_and_coverage():
    """At least 160 distinct files, covering issue 10 item 3's reported cases and every key."""
    contents = [c if isinstance(c, bytes) else c.encode() for c in CORPUS.values()]
    assert len(set(contents)) == len(contents) >= 160
    for key in [*INT_KEYS, *SIZE_KEYS, "name", "dtype", "maxpool_backward"]:
        assert sum(f"{key}:".encode() in c for c in contents) >= 5, key
    assert any(len(c) > 2 * MIB - 1 for c in contents)


SUBPROCESS_CASES = ["tag_python_name", "int_5000_digits", "deep_flow_list", "utf16_le_bom"]


def run_process(args, timeout=60):
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_corpus_in_a_real_process(case, tmp_path):
    path = write(tmp_path / "cfg.yaml", CORPUS[case])
    code, out, err = run_process(["-m", "unetc", "emit", "--target", "numpy", "-o", str(tmp_path / "out"), path])
    assert_one_line_error(code, out, err, path)
    assert not (tmp_path / "out").exists()


DRIVER = """
import contextlib, io, json, sys, time
from unetc import cli
results = []
for args in json.loads(sys.argv[1]):
    out, err, start = io.StringIO(), io.StringIO(), time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    results.append([code, out.getvalue(), err.getvalue(), time.monotonic() - start])
print(json.dumps(results))
"""


def test_special_files_refused_without_blocking(tmp_path):
    """A FIFO, /dev/zero, /dev/urandom, a directory and a 2 MiB file: refused at once (stat before
    open), by check and emit, in a separate process with a timeout so that a regression fails
    instead of hanging the suite."""
    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)
    big = write(tmp_path / "big.yaml", "in_c: 3\n" * (2 * MIB // 8))
    paths = [str(fifo), str(tmp_path), big] + [dev for dev in ("/dev/zero", "/dev/urandom") if os.path.exists(dev)]
    runs = [[*command, path] for path in paths
            for command in (["check"], ["emit", "--target", "numpy", "-o", str(tmp_path / "out")])]
    code, out, err = run_process(["-c", DRIVER, json.dumps(runs)], timeout=60)
    assert code == 0 and err == "", err
    for (code, out, err, elapsed), args in zip(json.loads(out), runs):
        assert_one_line_error(code, out, err, args[-1])
        assert elapsed < 5, (args, elapsed)  # the first run includes importing the checker
        assert "regular" in err or "too large" in err, err
    assert not (tmp_path / "out").exists()


def test_file_name_with_newline_and_escape_stays_one_line(tmp_path, capsys):
    path = write(tmp_path / "cfg\nimport os\x1b[2J.yaml", "in_c: 0\n")
    code, out, err, _ = run_main(["check", path], capsys)
    assert_one_line_error(code, out, err, path.replace("\n", "\\n").replace("\x1b", "\\x1b"))
    code, out, err, _ = run_main(["check", str(tmp_path / "missing\n.yaml")], capsys)
    assert code == 2 and err.count("\n") == 1 and "missing\\n.yaml: no such config file" in err


def test_size_cap_boundary(tmp_path):
    exact = write(tmp_path / "exact.yaml", "in_c: 5\n" + "#" * (MIB - 9) + "\n")
    assert os.path.getsize(exact) == MIB and load(exact).in_c == 5
    over = write(tmp_path / "over.yaml", "in_c: 5\n" + "#" * (MIB - 8) + "\n")
    with pytest.raises(ConfigError, match=r"over\.yaml: config file too large \(1048577 bytes; the limit is 1 MiB\)"):
        load(over)
    with pytest.raises(ConfigError, match="too large"):
        parse("#" * (MIB + 1))


def test_utf8_bom_and_plain_values_still_work(tmp_path):
    cfg = load(write(tmp_path / "bom.yaml", "\ufeffin_c: 4\nname: 'quoted_ok'\nin_h: Hh\n"))
    assert (cfg.in_c, cfg.name, cfg.in_h) == (4, "quoted_ok", "Hh")
    assert parse("---\n").to_dict() == Config().to_dict()
    assert parse("in_w: 16  # comment [[[ {{{\n").in_w == 16
    assert parse("in_h: 1048576\n").in_h == 1 << 20


@pytest.mark.parametrize("text,message", [
    ("in_h: 010\n", "in_h (line 1): '010' is not a plain decimal integer (no leading zeros"),
    ("in_h: 1:30\n", "in_h (line 1): '1:30' is not a plain decimal integer (no ':'"),
    ("base_c: !!int abc\n", "base_c (line 1, column 9): YAML tags such as '!!int' are not supported"),
    ("in_c: !!python/name:os.system\n", "YAML tags such as '!!python/name:os.system' are not supported"),
    ("a: &x [*x]\n", "a (line 1, column 4): YAML anchors and aliases are not supported"),
    ("<<: {in_c: 3}\n", "merge key '<<' (line 1): YAML merge keys are not supported"),
    ("? [a, b]\n: 1\n", "key (line 1): expected a plain key, got a YAML sequence"),
    ("in_c: " + "9" * 5000 + "\n", "in_c (line 1): must be <= 65536, got an integer > 10**30"),
    ("base_c: 100000\n", "base_c (line 1): must be <= 65536, got 100000"),
    ("in_c: 3\nin_h: 1048577\n", "in_h (line 2): must be <= 1048576, got 1048577"),
    ("conv_kernel: 1025\n", "conv_kernel (line 1): must be <= 1024, got 1025"),
    ("in_c: .inf\n", "in_c (line 1): expected an integer, got float inf"),
    ("in_c: yes\n", "in_c (line 1): expected an integer, got bool True"),
    ("in_c:\n", "in_c (line 1): expected an integer, got null"),
    ("[" * 100000, "more than 64 nested '[' or '{' (line 1)"),
    ("in_c: 3\n---\nin_c: 4\n", "expected one YAML document, found a second (line 2, column 1)"),
    ("in_c: [3\n", "broken YAML (line 2, column 1)"),
], ids=lambda v: repr(v)[:24])
def test_yaml_messages(text, message):
    with pytest.raises(ConfigError) as err:
        parse(text, "f.yaml")
    assert str(err.value).startswith("f.yaml: ") and message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_parse_is_fast_on_hostile_text():
    for text in ["[" * MIB, "{a: " * (MIB // 4), "in_h: " + "7" * (MIB - 8), "- 1\n" * (MIB // 4)]:
        start = time.monotonic()
        with pytest.raises(ConfigError):
            parse(text)
        assert time.monotonic() - start < 5


# --- names and limits (issue 10 items 9 and 10) ---

@pytest.mark.parametrize("name,why", [
    ("_STDINT", "a leading '_' is reserved in C"), ("_STRING", "a leading '_' is reserved in C"),
    ("_x", "a leading '_' is reserved in C"), ("__init__", "a leading '_' is reserved in C"),
    ("a__b", "'__' is reserved in C and C++"), ("while", "a C keyword"), ("int", "a C keyword"),
    ("_Bool", "reserved in C"), ("restrict", "a C keyword"), ("inline", "a C keyword"),
    ("class", "a Python keyword"), ("None", "a Python keyword"), ("lambda", "a Python keyword"),
    ("n" * 65, "got 65 characters"), ("n" * 225, "got 225 characters"), ("", "got 0 characters"),
    ("1bad name", "got '1bad name'"), ("my-net", "got 'my-net'"), ("ünet", "got 'ünet'"), ("a.b", "got 'a.b'"),
    ("numpy", "would shadow the Python module 'numpy'"), ("os", "would shadow the Python module 'os'"),
    ("a\nb", "got 'a\\nb'"), (3, "got int 3"), (None, "got null"),
], ids=lambda v: repr(v)[:20])
def test_bad_names_refused(name, why):
    with pytest.raises(ConfigError, match=r"^name: must be an identifier \(1-64 ASCII letters") as err:
        Config(name=name)
    assert why in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("name", ["unet2", "a", "n" * 64, "My_Net2", "x_"])
def test_good_names_accepted(name):
    assert Config(name=name).name == name


def test_limits_table_is_enforced_at_the_boundary():
    assert set(LIMITS) == set(INT_KEYS) | set(SIZE_KEYS)
    for key, (low, high) in {**INT_KEYS, **SIZE_KEYS}.items():
        assert LIMITS[key] == high
        assert getattr(Config(**{key: high}), key) == high
        assert getattr(Config(**{key: low}), key) == low
        with pytest.raises(ConfigError, match=rf"^{key}: must be <= {high}, got {high + 1}$"):
            Config(**{key: high + 1})
        with pytest.raises(ConfigError, match=rf"^{key}: must be >= {low}, got {low - 1}$"):
            Config(**{key: low - 1})
    with pytest.raises(ConfigError, match=r"^in_c: must be <= 65536, got an integer > 10\*\*30$"):
        Config(in_c=10 ** 5000)  # str() of it would raise; the message must not try


@pytest.mark.parametrize("symbol", ["_H", "H__W", "lambda", "int", "H" * 65, "2W", "H W"])
def test_bad_symbol_names(symbol):
    with pytest.raises(ConfigError, match=r"^in_h: expected an integer >= 1 or a symbol name"):
        Config(in_h=symbol)


# --- Config validates itself (issue 10 item 13) ---

def test_config_construction_and_replace_validate():
    with pytest.raises(ConfigError, match=r"^dtype: must be one of float32, float64, got 'float16'$"):
        Config(dtype="float16")
    with pytest.raises(ConfigError, match=r"^name: must be an identifier"):
        Config(name="1bad name")
    cfg = Config(in_h=8, in_w=8)
    with pytest.raises(ConfigError, match=r"^base_c: expected an integer, got str '8'$"):
        dataclasses.replace(cfg, base_c="8")
    with pytest.raises(ValueError):  # a ConfigError is a ValueError for API callers
        dataclasses.replace(cfg, maxpool_backward="torch")
    assert dataclasses.replace(cfg, base_c=8).base_c == 8
    assert issubclass(ConfigError, UnetcError) and issubclass(ConfigError, ValueError)
    assert issubclass(UsageError, ValueError)


@pytest.mark.parametrize("key,value,yaml_value", [
    ("dtype", "float16", "float16"), ("base_c", "8", "'8'"), ("in_c", 0, "0"), ("conv_kernel", 2000, "2000"),
    ("name", "_STDINT", "_STDINT"), ("in_h", True, "true"), ("in_w", "2W", "2W"), ("up_stride", 1.5, "1.5"),
])
def test_same_message_as_the_cli(key, value, yaml_value):
    with pytest.raises(ConfigError) as api:
        Config(**{key: value})
    with pytest.raises(ConfigError) as cli_err:
        parse(f"{key}: {yaml_value}\n", "c.yaml")
    assert str(cli_err.value) == "c.yaml: " + str(api.value).replace(f"{key}:", f"{key} (line 1):", 1)


def test_api_accepts_config_dict_path_none(tmp_path):
    report = unetc.check({"in_c": 1})
    assert report.config.in_c == 1 and report.config.source == "<dict>"
    assert unetc.load({"in_c": 2, "in_h": 8}).in_h == 8
    assert unetc.load(None) == Config()
    path = tmp_path / "c.yaml"
    path.write_text("in_c: 5\n")
    assert unetc.load(path).in_c == 5 and unetc.load(str(path)).in_c == 5
    cfg = Config(in_c=6)
    assert unetc.load(cfg) is cfg
    np = pytest.importorskip("numpy")
    cfg = Config(in_c=np.int64(4), in_h=np.int32(8), source=path)  # any Integral, normalised to int
    assert (type(cfg.in_c), type(cfg.in_h), cfg.source) == (int, int, str(path))


def test_api_refuses_yaml_text_and_other_types():
    with pytest.raises(ConfigError, match=r"^no such config file 'in_c: 1\\n'; to pass YAML text, use "
                                          r"unetc\.config\.parse\(text\)"):
        unetc.check("in_c: 1\n")
    with pytest.raises(ConfigError, match=r"^expected a Config, a dict, a path to a YAML file or None, got int$"):
        unetc.check(3)
    with pytest.raises(ConfigError, match=r"^in_c: must be >= 1, got 0$"):
        unetc.check({"in_c": 0})
    with pytest.raises(ConfigError, match=r"^unknown key 'In_C'; did you mean 'in_c'\?$"):
        unetc.load({"In_C": 1})
    with pytest.raises(ConfigError, match=r"^unknown key int 1; valid keys: name, "):
        unetc.load({1: 1})
    with pytest.raises(ConfigError, match=r"no such config file$"):
        unetc.load("missing.yaml")


def test_api_emit_takes_a_dict(tmp_path):
    paths = unetc.emit({"name": "api_dict", "in_c": 1, "out_c": 1, "base_c": 2, "in_h": 4, "in_w": 4}, "numpy",
                       tmp_path)
    assert [p.name for p in map(Path, paths)] and all(Path(p).name.startswith("api_dict") for p in paths)


# --- --size and "did you mean" (issue 13 item 6) ---

@pytest.mark.parametrize("text,expected", [
    ("128x128", (128, 128)), ("128X96", (128, 96)), ("128×96", (128, 96)), ("128,96", (128, 96)),
    ("128", (128, 128)), (" 64 x 32 ", (64, 32)), ("HxW", ("H", "W")), ("H,W", ("H", "W")),
    ("Hx64", ("H", 64)), ("1048576x1", (1 << 20, 1)),
])
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text,message", [
    ("-4x4", "in_h (from --size '-4x4'): must be >= 1, got -4"),
    ("4x-4", "in_w (from --size '4x-4'): must be >= 1, got -4"),
    ("0x8", "in_h (from --size '0x8'): must be >= 1, got 0"),
    ("-4", "in_h (from --size '-4'): must be >= 1, got -4"),
    ("1048577x8", "in_h (from --size '1048577x8'): must be <= 1048576, got 1048577"),
    ("10000000000000000000000x2", "in_h (from --size '10000000000000000000000x2'): must be <= 1048576"),
    ("9" * 5000 + "x2", "must be <= 1048576, got an integer > 10**30"),
    ("abc", "--size 'abc': expected HxW (e.g. 128x128, 128X128 or 128,128"),
    ("", "--size '': expected HxW"),
    ("128x", "--size '128x': expected HxW"),
    ("1x2x3", "in_w (from --size '1x2x3'): expected an integer >= 1 or a symbol name"),
    ("12xfoo-", "in_w must be an integer or a symbol name, got 'foo-'"),
    ("_Hx4", "in_h (from --size '_Hx4'): expected an integer >= 1 or a symbol name"),
    ("3.5x4", "in_h must be an integer or a symbol name, got '3.5'"),
], ids=lambda v: repr(v)[:24])
def test_parse_size_refuses(text, message):
    with pytest.raises(ConfigError) as err:
        parse_size(text)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_size_flag_forms_through_the_cli(capsys):
    for size in ("16X16", "16,16", "16×16", "16"):
        code, _, err, _ = run_main(["check", "--size", size], capsys)
        assert code == 0, (size, err)
    for args in (["--size=-4x4"], ["--size", "-4x4"]):  # a negative size is a value, not an option
        code, out, err, _ = run_main(["check", *args], capsys)
        assert code == 2 and out == "" and err == "unetc: error: in_h (from --size '-4x4'): must be >= 1, got -4\n"


@pytest.mark.parametrize("key,suggestion", [
    ("In_C", "in_c"), ("IN_C", "in_c"), ("in-c", "in_c"), ("BASE-C", "base_c"), ("base_cc", "base_c"),
    ("Pool_Kernel", "pool_kernel"), ("conv-padding", "conv_padding"), ("maxpool-backward", "maxpool_backward"),
    ("DType", "dtype"), ("head_strid", "head_stride"),
])
def test_did_you_mean(key, suggestion):
    with pytest.raises(ConfigError) as err:
        parse(f"in_c: 3\n{key}: 1\n", "c.yaml")
    assert str(err.value) == f"c.yaml: unknown key {key!r} (line 2); did you mean {suggestion!r}?"


def test_no_suggestion_lists_the_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'zzzz' \(line 1\); valid keys: name, dtype, in_c"):
        parse("zzzz: 1\n")
