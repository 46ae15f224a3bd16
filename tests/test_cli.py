"""The CLI: exit codes, JSON, and one-line errors for every class of bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import EXAMPLES, ROOT


def run(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "unetc", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd or ROOT)
    return p.returncode, p.stdout, p.stderr


def test_check_default_exit_0_and_json():
    code, out, err = run("check", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["ok"] is True
    assert data["valid"] == {"in_h": [{"start": 2, "step": 2}], "in_w": [{"start": 2, "step": 2}]}
    names = [c["name"] for c in data["constraints"]]
    assert names == ["h_convH", "h_convW", "h_convH_down", "h_convW_down", "h_upH", "h_upW", "h_outH", "h_outW"]
    up = data["constraints"][4]
    assert up == {**up, "status": "conditional", "lhs": "2*floor(H/2)", "rhs": "H", "valid": [{"start": 2, "step": 2}]}
    assert [l["name"] for l in data["layers"]][:2] == ["down1_1", "s1"]
    assert data["layers"][0]["params"] == 64 * 3 * 9 + 64


def test_check_odd_size_exit_1():
    code, out, err = run("check", EXAMPLES / "odd_255.yaml")
    assert code == 1
    assert "in_h = 255 fails h_upH (upT gives 254, expected 255); nearest valid: 254, 256" in out


def test_size_flag_binds_and_json_statuses():
    code, out, _ = run("check", "--size", "64x48", "--json")
    assert code == 0
    data = json.loads(out)
    assert {c["status"] for c in data["constraints"]} == {"holds"}
    code, out, _ = run("check", "--size", "1x8", "--json")
    assert code == 1 and "silently give size 0" in out


def test_impossible_config_exit_1():
    code, out, _ = run("check", EXAMPLES / "stride2_conv.yaml")
    assert code == 1 and "FAILED" in out


def test_all_examples_run():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        code, out, err = run("check", path)
        assert code in (0, 1) and not err, (path, err)


BAD = {
    "broken yaml": ("in_c: [3\n", "broken YAML (line"),
    "unknown key": ("in_c: 3\nbase_cc: 8\n", "unknown key 'base_cc' (line 2); did you mean 'base_c'?"),
    "wrong type": ("in_c: three\n", "in_c (line 1): expected an integer, got str 'three'"),
    "bool": ("base_c: true\n", "base_c (line 1): expected an integer, got bool True"),
    "float": ("conv_kernel: 3.0\n", "conv_kernel (line 1): expected an integer, got float 3.0"),
    "zero stride": ("conv_stride: 0\n", "conv_stride (line 1): must be >= 1, got 0"),
    "negative padding": ("up_padding: -1\n", "up_padding (line 1): must be >= 0, got -1"),
    "zero size": ("in_h: 0\n", "in_h (line 1): must be >= 1, got 0"),
    "bad symbol": ("in_w: 2W\n", "in_w (line 1): expected an integer >= 1 or a symbol name"),
    "bad name": ("name: my-net\n", "name (line 1): must be an identifier"),
    "bad dtype": ("dtype: float16\n", "dtype (line 1): must be one of float32, float64"),
    "bad mode": ("maxpool_backward: torch\n", "maxpool_backward (line 1): must be one of pytorch, spec"),
    "not a mapping": ("- 1\n- 2\n", "expected a flat mapping"),
    "nested": ("in_c:\n  a: 1\n", "in_c (line 1): expected a scalar value"),
    "duplicate": ("in_c: 3\nin_c: 4\n", "duplicate key 'in_c' (line 2, first on line 1)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_one_line_exit_2(case, tmp_config):
    text, needle = BAD[case]
    code, out, err = run("check", tmp_config(text))
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("unetc: error: "), err
    assert needle in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("args,needle", [
    (["check", "/nonexistent/cfg.yaml"], "no such config file"),
    (["check", "--size", "12xfoo-"], "--size"),
    (["check", "--size", "0x8"], "in_h (from --size '0x8'): must be >= 1"),
    (["check", "--bogus"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_usage_exit_2(args, needle):
    code, out, err = run(*args)
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_empty_file_is_default(tmp_config):
    code, out, _ = run("check", tmp_config(""), "--json")
    assert code == 0 and json.loads(out)["config"]["base_c"] == 64


def test_closed_stdout_exits_quietly():
    """`unetc check ... | head` closing the pipe early: no traceback, exit 141 (128 + SIGPIPE)."""
    proc = subprocess.Popen([sys.executable, "-m", "unetc", "check", "--size", "128x96", "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before unetc writes anything
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and err == "", err
