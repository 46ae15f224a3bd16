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


# ---- issue 13: the richer check, JSON schema 1, graph, build, CLI manners (in-process: fast) ----

from unetc.cli import main  # noqa: E402


def call(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version():
    code, out, err = run("--version")
    assert code == 0 and out.startswith("unetc ") and out.split()[1][0].isdigit(), (out, err)


def test_bare_unetc_lists_the_commands(capsys):
    code, out, err = call(capsys)
    assert code == 2 and err == ""
    for command in ("check", "emit", "graph", "build"):
        assert f"\n  {command} " in out


@pytest.mark.parametrize("size", ["128x128", "128X128", "128,128", "128"])
def test_size_forms(capsys, size):
    code, out, _ = call(capsys, "check", "--size", size, "--json")
    assert code == 0 and json.loads(out)["sizes"] == {"in_h": 128, "in_w": 128}


def test_negative_size_names_the_axis(capsys):
    code, out, err = call(capsys, "check", "--size", "-4x4")
    assert code == 2 and err == "unetc: error: in_h (from --size '-4x4'): must be >= 1, got -4\n"


def hand_macs(h: int, w: int) -> int:
    """Forward MACs of the default network, counted by hand from SPEC.md's layers."""
    full, low = h * w, (h // 2) * (w // 2)
    convs = [(3, 64, full), (64, 64, full), (64, 128, low), (128, 128, low), (128, 64, full), (64, 64, full)]
    return sum(cin * cout * 9 * px for cin, cout, px in convs) + 128 * 64 * 4 * low + 64 * 2 * full


def test_json_schema_1_concrete(capsys):
    code, out, _ = call(capsys, "check", "--size", "128x128", "--json")
    obj = json.loads(out)
    assert code == 0 and obj["schema"] == 1 and obj["ok"] is True
    assert {"config", "constraints", "valid", "valid_text", "smallest_failing", "conflicts", "layers", "runs",
            "repairs", "cost", "limits", "warnings", "workspace_bytes", "workspace_note"} <= set(obj)
    for layer in obj["layers"]:
        assert all(isinstance(n, int) for n in layer["pytorch"] + layer["spec"] + sum(layer["inputs"], []))
        assert isinstance(layer["macs"], int) and isinstance(layer["params"], int)
    assert obj["cost"]["total"]["macs"]["value"] == hand_macs(128, 128) == 3_486_515_200
    assert sum(l["macs"] for l in obj["layers"]) == hand_macs(128, 128)
    assert isinstance(obj["workspace_bytes"], int) and obj["workspace_bytes"] > 0
    assert obj["limits"] == {"geometry": 2 ** 20, "period": 2 ** 22, "span": 2 ** 23} and obj["warnings"] == []
    assert obj["runs"]["in_h"]["pytorch"] == [{"start": 2, "step": 2}] and obj["repairs"] is None
    assert all(c["nearest"] is None for c in obj["constraints"])


def test_json_symbolic_formulas_and_failures(capsys, tmp_config):
    code, out, _ = call(capsys, "check", "--json")
    obj = json.loads(out)
    up = next(l for l in obj["layers"] if l["name"] == "upT")
    assert up["pytorch"] == [64, "2*floor(H/2)", "2*floor(W/2)"] and up["spec"] == [64, "H", "W"]
    assert obj["cost"]["total"]["macs"] == {"formula": "149312*H*W + 253952*floor(H/2)*floor(W/2)", "value": None}
    assert obj["workspace_bytes"] is None
    code, out, _ = call(capsys, "check", tmp_config("head_kernel: 3\nhead_padding: 0\n"), "--json")
    obj = json.loads(out)
    assert code == 1 and obj["ok"] is False
    assert obj["runs"]["in_h"]["pytorch"] == [{"start": 4, "step": 2}] and obj["runs"]["in_h"]["output"] == "H - 2"
    assert obj["repairs"][0]["set"] == {"head_padding": 1} and obj["repairs"][0]["from"] == {"head_padding": 0}
    code, out, _ = call(capsys, "check", EXAMPLES / "stride2_conv.yaml", "--json")
    conflict = json.loads(out)["conflicts"][0]
    assert conflict["hypotheses"] == ["h_convH", "h_convH_down"] and conflict["valid"][0] == [{"start": 1, "step": 0}]


def test_errors_as_json_on_stdout(capsys, tmp_config):
    code, out, err = call(capsys, "check", tmp_config("in_c: 3\nbase_cc: 8\n"), "--json")
    assert code == 2 and err == ""
    obj = json.loads(out)
    assert obj["ok"] is False and obj["error"]["kind"] == "ConfigError"
    assert obj["error"]["key"] == "base_cc" and obj["error"]["line"] == 2
    assert "did you mean 'base_c'" in obj["error"]["message"]
    code, out, err = call(capsys, "check", "--size", "0x8", "--json")
    assert code == 2 and json.loads(out)["error"]["key"] == "in_h" and err == ""
    code, out, err = call(capsys, "check", "--json", "--bogus")
    assert code == 2 and json.loads(out)["error"]["kind"] == "UsageError"


def test_check_text_fits_100_columns_and_explains_statuses(capsys):
    for args in (["check"], ["check", "--size", "128x128"], ["check", "--cost"]):
        code, out, _ = call(capsys, *args)
        assert code == 0 and max(len(line) for line in out.splitlines()) <= 100, args
        assert "proved = holds for every size" in out and "checker limits:" in out
    assert "MACs forward   3,486,515,200 (3.49 G)" in call(capsys, "check", "--size", "128x128")[1]


def test_suggest_and_head3_repairs(capsys, tmp_config):
    code, out, _ = call(capsys, "check", tmp_config("head_kernel: 3\nhead_padding: 0\n"))
    assert code == 1
    assert "  in_h ∈ {4, 6, 8, 10, …}: even, ≥ 4; output H - 2" in out
    assert "  set head_padding: 0 → 1 → valid for in_h, in_w ∈ {2, 4, 6, 8, …}: even, ≥ 2" in out
    code, out, _ = call(capsys, "check", "--suggest")
    assert code == 0 and "set pool_stride: 2 → 1, up_stride: 2 → 1 → valid for in_h, in_w ∈" in out


def test_emit_of_violated_config_exits_1(capsys, tmp_path):
    code, _, err = call(capsys, "emit", EXAMPLES / "odd_255.yaml", "--target", "numpy", "-o", tmp_path / "out")
    assert code == 1 and err.startswith("unetc: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_graph_writes_valid_svg(capsys, tmp_path, monkeypatch):
    import xml.etree.ElementTree as ET

    code, out, _ = call(capsys, "graph", "--size", "64x64", "-o", tmp_path / "u.svg")
    assert code == 0 and out == f"wrote {tmp_path / 'u.svg'}\n"
    assert ET.parse(tmp_path / "u.svg").getroot().tag == "{http://www.w3.org/2000/svg}svg"
    monkeypatch.chdir(tmp_path)
    code, out, _ = call(capsys, "graph", EXAMPLES / "stride2_conv.yaml")
    assert code == 0 and (tmp_path / "unet2_stride2.svg").exists()
    code, out, _ = call(capsys, "graph", "-o", "-")
    assert code == 0 and ET.fromstring(out.encode()).tag.endswith("svg")
    code, out, err = call(capsys, "graph", "-o", tmp_path / "missing" / "u.svg")
    assert code == 2 and "cannot write" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.svg", "unet2_stride2.svg"]  # no temp file left


def test_build_compiles_every_loader(capsys, tmp_path, tmp_config, monkeypatch):
    monkeypatch.setenv("UNETC_CACHE_DIR", str(tmp_path / "cache"))
    out_dir = tmp_path / "c"
    cfg = tmp_config("name: tiny\nin_c: 1\nout_c: 1\nbase_c: 2\n")
    assert call(capsys, "emit", cfg, "--size", "4x4", "--target", "c", "-o", out_dir)[0] == 0
    code, out, err = call(capsys, "build", out_dir)
    assert code == 0 and out.startswith(f"built {out_dir / 'tiny_c.py'} (") and "Traceback" not in err
    assert any(p.suffix == ".so" for p in (tmp_path / "cache").iterdir())
    code, out, err = call(capsys, "build", tmp_path / "cache")
    assert code == 2 and "no C loader (*_c.py)" in err and err.count("\n") == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bad_c.py").write_text("raise ImportError('no compiler here')\n")
    code, out, err = call(capsys, "build", tmp_path / "bad")
    assert code == 2 and err.endswith("bad_c.py: build failed: no compiler here\n") and err.count("\n") == 1


def test_warnings_and_workspace_limits_are_shown(capsys, tmp_config):
    cfg = tmp_config("base_c: 128\n")
    code, out, _ = call(capsys, "check", cfg, "--size", "4096x4096")
    assert code == 0 and "\nwarning: tensor merged has 4,294,967,296 elements (>= 2^31)" in out
    obj = json.loads(call(capsys, "check", cfg, "--size", "4096x4096", "--json")[1])
    assert obj["warnings"] and obj["workspace_bytes"] > 2 ** 35 and obj["workspace_note"] is None
    huge = tmp_config("base_c: 65536\n", "huge.yaml")
    code, out, _ = call(capsys, "check", huge, "--size", "1000000x1000000")
    assert code == 0 and "C target workspace: none: C target limit:" in out and "2^46" in out
