"""tests/forked_commands.py, which runs the README walkthrough: each command as ``python`` would run it."""

from __future__ import annotations

import os

import pytest

from tests.forked_commands import run_python_commands


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_each_form_runs_as_main_with_its_argv_and_the_first_failure_stops_the_rest(tmp_path, env):
    (tmp_path / "tool.py").write_text("import sys\nprint(__name__, sys.argv[1:])\n", encoding="utf-8")
    (tmp_path / "script.py").write_text("import sys\nprint(__name__, sys.argv)\n", encoding="utf-8")
    commands = [
        ["python", "-c", "import sys; print(__name__, sys.argv)", "x"],
        ["python", "-m", "tool", "--flag", "1"],
        ["python", "script.py", "a b"],
        ["python", "-c", "raise SystemExit('bad input: line 3')"],
        ["python", "-c", "open('never', 'w')"],
    ]
    done = run_python_commands(commands, cwd=str(tmp_path), env=env, preload=())
    assert [p.returncode for p in done] == [0, 0, 0, 1]
    assert done[0].stdout == "__main__ ['-c', 'x']\n"
    assert done[1].stdout == "__main__ ['--flag', '1']\n"
    assert done[2].stdout == "__main__ ['script.py', 'a b']\n"
    assert "bad input: line 3" in done[3].stderr and done[3].args == commands[3]
    assert not (tmp_path / "never").exists()


def test_a_child_exits_as_python_does(tmp_path, env):
    """Its threads finish, its exit handlers run, a function it defines pickles by reference to __main__; a
    traceback goes to its stderr with exit code 1; the driver's own exit handlers run once, in the driver."""
    (tmp_path / "preloaded.py").write_text(
        "import atexit\natexit.register(lambda: open('driver_exit', 'a').write('x'))\n", encoding="utf-8")
    commands = [
        ["python", "-c", "import threading, time\n"
                         "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()"],
        ["python", "-c", "import atexit; atexit.register(print, 'bye')"],
        ["python", "-c", "import pickle\ndef f(): pass\nprint(len(pickle.dumps(f)) > 0)"],
        ["python", "-c", "1 / 0"],
    ]
    done = run_python_commands(commands, cwd=str(tmp_path), env=env, preload=("preloaded",))
    assert [p.stdout for p in done[:3]] == ["thread done\n", "bye\n", "True\n"]
    assert done[3].returncode == 1 and "ZeroDivisionError" in done[3].stderr
    assert (tmp_path / "driver_exit").read_text() == "x"


def test_a_driver_that_fails_or_hangs_is_an_error_naming_the_command(tmp_path, env):
    with pytest.raises(RuntimeError, match="exited with 1"):
        run_python_commands([["python", "-c", "pass"]], cwd=str(tmp_path), env=env, preload=("no_such_module_x",))
    with pytest.raises(RuntimeError, match=r"ran past 3 s \(command 0: python -c import time"):
        run_python_commands([["python", "-c", "import time; time.sleep(60)"]], cwd=str(tmp_path), env=env,
                            preload=(), timeout=3)
