"""The provenance helper: values present, command quoting, dirty detection in a temp git repo."""

from __future__ import annotations

import json
import shlex
import subprocess
from datetime import datetime

import pytest

from lowbit.report.provenance import command, git_state, provenance, provenance_line


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    return tmp_path


def test_command_is_shell_quoted_with_python_as_interpreter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["/opt/venv/bin/python3.12", str(tmp_path / "benchmarks" / "b.py"), "--out",
            "my dir", "--methods", "a;b", "it's"]
    got = command(argv)
    assert got == "python benchmarks/b.py --out 'my dir' --methods 'a;b' 'it'\"'\"'s'"
    assert shlex.split(got)[1:] == ["benchmarks/b.py", "--out", "my dir", "--methods", "a;b",
                                    "it's"]
    assert command(["/usr/bin/python", "-m", "benchmarks.x", "-k"]) == \
        "python -m benchmarks.x -k"
    assert command(["python", "/elsewhere/b.py"]) == "python /elsewhere/b.py"


def test_clean_and_dirty_trees(repo):
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    clean = git_state(repo)
    assert clean == {"commit": head, "dirty": False, "dirty_files": [], "dirty_count": 0}
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "results" / "r.json").write_text("{}")  # results do not count
    assert git_state(repo)["dirty"] is False
    (repo / "a.py").write_text("x = 2\n")
    (repo / "new.py").write_text("")
    dirty = git_state(repo)
    assert dirty["dirty"] is True and dirty["dirty_count"] == 2
    assert sorted(f.split()[-1] for f in dirty["dirty_files"]) == ["a.py", "new.py"]
    line = provenance_line(provenance(["python", "b.py"], root=repo))
    assert f"`{head} + uncommitted changes (" in line and "a.py" in line


def test_outside_a_repository_gives_none(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None, "dirty_files": None,
                                   "dirty_count": None}


def test_provenance_holds_every_value_and_is_json(repo):
    p = provenance(["python", "x.py", "--a"], root=repo)
    assert p["command"] == "python x.py --a" and p["commit"] and p["dirty"] is False
    assert all(p["versions"][k] for k in ("torch", "numba", "numpy", "python"))
    assert p["cpu"] and isinstance(p["threads"]["torch"], int) and p["threads"]["numba"] >= 1
    assert len(p["load_average"]) == 3
    assert datetime.fromisoformat(p["utc"]).utcoffset().total_seconds() == 0
    assert json.loads(json.dumps(p)) == p
    line = provenance_line(p)
    for part in ("python x.py --a", p["commit"], p["versions"]["torch"], p["cpu"], "load "):
        assert part in line
    assert provenance()["command"].startswith("python ")  # from sys.orig_argv


def test_meta_header_reads_old_and_new_results(tmp_path):
    from lowbit.report.provenance import meta_header, write_provenance

    assert meta_header({"command": "python b.py", "commit": "abc1234"}) == \
        "Command: `python b.py` at commit `abc1234`"
    p = write_provenance(tmp_path)
    assert json.loads((tmp_path / "provenance.json").read_text()) == p
    assert meta_header({"command": "x", "provenance": p}) == provenance_line(p)


def test_cpu_isa_tells_zen3_from_zen4_and_reaches_the_line():
    """Zen 3 and Zen 4 both report the model name "AMD EPYC": the ISA flags tell them apart."""
    from lowbit.report.provenance import cpu_isa

    zen3 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 popcnt\n"
    zen4 = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_vnni avx512_vpopcntdq avx512_bf16\n"
    assert cpu_isa(zen3) == ["avx2"]
    assert cpu_isa(zen4) == ["avx2", "avx512f", "avx512_vnni", "avx512_vpopcntdq", "avx512_bf16"]
    assert cpu_isa("") == []
    p = provenance(["python", "x.py"])
    assert isinstance(p["cpu_isa"], list) and "cpu_kind" in p
    assert f"{p['cpu']} ({p['cpu_kind'] or 'kind unknown'}: " in provenance_line(p)
