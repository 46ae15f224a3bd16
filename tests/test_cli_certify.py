"""`unetc check --certify FILE`: writes the certificate, z3 confirms it (exit 0), a wrong claim is a
loud unetc bug (exit 1), an unwritable path is one error line (exit 2); the JSON carries it too."""
from __future__ import annotations

import json
import os
import stat

import pytest

from conftest import EXAMPLES
from unetc import certify
from unetc.cli import main
from unetc.intset import IntSet

pytest.importorskip("z3")  # in the test extra; the z3-free path is covered by test_without_z3


def test_certified_by_z3(tmp_path, capsys):
    path = tmp_path / "cert.smt2"
    assert main(["check", "--certify", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("certified by z3 ") and out[-1].endswith(": 10/10 claims")
    assert "(define-fun h_upH ((n Int)) Bool" in path.read_text()


def test_json_carries_the_certificate(tmp_path, capsys):
    path = tmp_path / "cert.smt2"
    assert main(["check", str(EXAMPLES / "odd_255.yaml"), "--json", "--certify", str(path)]) == 1
    obj = json.loads(capsys.readouterr().out)
    assert obj["certificate"]["ok"] is True and obj["certificate"]["claims"] == 10


def test_wrong_claim_is_a_loud_bug(tmp_path, capsys, monkeypatch):
    real = certify.certificate
    shifted = IntSet.from_predicate(lambda n: n % 2 == 0 and n >= 4, 4, 2)  # misses 2
    monkeypatch.setattr(certify, "certificate", lambda r: real(r, claimed={"h_upH": shifted}))
    assert main(["check", "--certify", str(tmp_path / "c.smt2")]) == 1
    out = capsys.readouterr().out
    assert "refutes claim h_upH" in out and "THIS IS A UNETC BUG" in out


def test_without_z3(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(certify, "z3_available", lambda: None)
    path = tmp_path / "c.smt2"
    assert main(["check", "--certify", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {path}; check it with: z3 {path}"


def test_unwritable_path_is_one_line(tmp_path, capsys):
    assert main(["check", "--certify", str(tmp_path / "no" / "dir" / "c.smt2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unetc: error: cannot write certificate") and err.count("\n") == 1


def test_special_file_target_is_refused_not_replaced(tmp_path, capsys):
    """A rename onto a device or FIFO would replace it (as root: /dev/full became a regular file)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["check", "--certify", str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert main(["graph", "-o", str(fifo)]) == 2
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
