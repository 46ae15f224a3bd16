"""Emitting files: all-or-nothing per directory, usual file modes, nothing left on failure, no
silent overwrite of another config's files, concurrent and killed emits, exit codes, and no user
text (a hostile config file name) reaching generated code unescaped."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import EXAMPLES
from unetc.cli import main
from unetc.config import Config
from unetc.emitter import emit
from unetc.errors import EmitError

SMALL = Config(name="ef", in_c=1, out_c=1, in_h=8, in_w=8, base_c=2)


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "unetc", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_hostile_config_file_name_stays_a_comment(tmp_path):
    """A file name with newlines and code must not become code in any emitted file."""
    name = 'cfg\nimport os; os.system("touch PWNED")\n#\r\\.yaml'
    cfg_path = tmp_path / name
    cfg_path.write_text("name: inj\nin_c: 1\nout_c: 1\nin_h: 8\nin_w: 8\nbase_c: 2\n")
    out = tmp_path / "out"
    for target in ("numpy", "c"):
        p = _run("emit", cfg_path, "--target", target, "-o", out, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
    for f in out.iterdir():
        if f.name.startswith("."):
            continue
        text = f.read_text()
        assert "os.system" not in "\n".join(l for l in text.splitlines() if not l.lstrip().startswith(("#", "//"))), f
        assert "\r" not in text and 'cfg\\x0aimport os; os.system("touch PWNED")\\x0a#\\x0d\\x5c.yaml' in text, f
    env = {**os.environ, "PYTHONPATH": str(out)}
    p = subprocess.run([sys.executable, "-c", "import inj_numpy"], cwd=tmp_path, env=env, capture_output=True)
    assert p.returncode == 0 and not (tmp_path / "PWNED").exists()


def test_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        paths = emit(SMALL, "numpy", tmp_path / "a")
        assert all(p.stat().st_mode & 0o777 == 0o644 for p in paths)
        os.umask(0o077)
        paths = emit(SMALL, "numpy", tmp_path / "b")
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in paths)
    finally:
        os.umask(old)


def test_failed_emit_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "deeper"
    with pytest.raises(Exception):
        emit(Config(name="bad", in_h=255, in_w=8), "numpy", out)
    assert not (tmp_path / "new").exists()
    # a write failure (file size limit) in a fresh directory: no half-written file, no directory
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
            "from unetc.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    p = subprocess.run([sys.executable, "-c", code, "emit", "--size", "16x16", "--target", "c", "-o",
                        str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("unetc: error: cannot write") and p.stderr.count("\n") == 1
    assert not (tmp_path / "new").exists(), list((tmp_path / "new").rglob("*"))
    # same into an existing directory: the old files stay as they were, no temporaries
    keep = tmp_path / "keep"
    old = {p.name: p.read_bytes() for p in emit(Config(name="unet2", in_h=4, in_w=4, base_c=2), "c", keep)}
    p = subprocess.run([sys.executable, "-c", code, "emit", "--size", "16x16", "--target", "c", "-o",
                        str(keep), "--force"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert {q.name: q.read_bytes() for q in keep.iterdir() if not q.name.startswith(".")} == old
    assert [q.name for q in keep.iterdir() if q.name.startswith(".")] == [".unetc.lock"]


def test_violated_hypothesis_exits_1_like_check(tmp_path, capsys):
    assert main(["emit", str(EXAMPLES / "odd_255.yaml"), "--target", "numpy", "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("unetc: error: ") and "h_upH" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    assert main(["check", str(EXAMPLES / "odd_255.yaml")]) == 1


def test_no_silent_overwrite_of_another_config(tmp_path, capsys):
    out = tmp_path / "o"
    emit(SMALL, "numpy", out)
    emit(SMALL, "numpy", out)  # the identical config again: always allowed
    first = (out / "ef_numpy.py").read_bytes()
    with pytest.raises(EmitError, match="another config or size.*--force"):
        emit(SMALL.with_sizes(16, 16), "numpy", out)
    assert (out / "ef_numpy.py").read_bytes() == first
    assert main(["emit", "--size", "4x4", "--target", "numpy", "-o", str(out)]) == 0  # other name: fine
    cfg16 = tmp_path / "ef16.yaml"
    cfg16.write_text("name: ef\nin_c: 1\nout_c: 1\nin_h: 16\nin_w: 16\nbase_c: 2\n")
    assert main(["emit", str(cfg16), "--target", "numpy", "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["emit", str(cfg16), "--target", "numpy", "-o", str(out), "--force"]) == 0
    assert (out / "ef_numpy.py").read_bytes() != first
    (out / "ef_numpy.py").write_text("# my own file\n")
    with pytest.raises(EmitError, match="not written by unetc"):
        emit(SMALL, "numpy", out)


def test_concurrent_emits_of_two_configs_never_mix(tmp_path):
    """Two processes emit different sizes of one name with --force, many times: at the end the
    .h, .c and loader always come from the same emit (the loader's recorded config matches)."""
    out = tmp_path / "o"
    procs = []
    for size in ("4x4", "8x8") * 2:
        procs.append(subprocess.Popen([sys.executable, "-m", "unetc", "emit", "--size", size, "--target", "c",
                                       "-o", str(out), "--force"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE))
    assert all(p.wait(timeout=300) == 0 for p in procs)
    configs = {f.name: [l.split("in_h:")[1] for l in f.read_text().splitlines()[:30] if "in_h:" in l]
               for f in out.iterdir() if not f.name.startswith(".")}
    assert len({tuple(v) for v in configs.values()}) == 1, configs
    assert not [f for f in out.iterdir() if f.name.endswith(".unetc-tmp")]


def test_killed_emit_leaves_old_or_new_files_and_no_litter_after_next_emit(tmp_path):
    out = tmp_path / "o"
    emit(Config(name="unet2", in_h=4, in_w=4, base_c=2), "c", out)
    for delay in (0.3, 0.6, 0.9, 1.2):
        p = subprocess.Popen([sys.executable, "-m", "unetc", "emit", "--size", "8x8", "--target", "c", "-o",
                              str(out), "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        for f in out.iterdir():
            if not f.name.startswith("."):
                assert "do not edit" in f.read_text().splitlines()[0]  # never half-written
    assert main(["emit", "--size", "8x8", "--target", "c", "-o", str(out), "--force"]) == 0
    assert sorted(f.name for f in out.iterdir() if f.name.startswith(".")) == [".unetc.lock"]


def test_emit_waits_for_the_directory_lock(tmp_path):
    """While another emit holds out/.unetc.lock, an emit into out writes nothing; then it does."""
    import fcntl

    out = tmp_path / "o"
    out.mkdir()
    with open(out / ".unetc.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        p = subprocess.Popen([sys.executable, "-m", "unetc", "emit", "--size", "4x4", "--target", "numpy",
                              "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(6)
        assert p.poll() is None and [f.name for f in out.iterdir()] == [".unetc.lock"]
    assert p.wait(timeout=120) == 0 and (out / "unet2_numpy.py").exists()
