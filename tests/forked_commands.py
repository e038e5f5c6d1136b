"""Run ``python ...`` command lines one after another, each in its own process, with NeMo imported once.

A fresh ``python`` spends most of a tiny command's time importing NeMo (10-20 s on a 2-core CI machine).
:func:`run_python_commands` starts one driver process that imports ``nemo_tl`` and NeMo's ASR collection,
then forks one child per command: each child is a separate process with the command's own ``sys.argv``,
``sys.path[0]``, working directory and environment, run as ``python`` runs it (``-c CODE``, ``-m MODULE``
or ``SCRIPT``, as ``__main__``), so its state (Hydra, Lightning, logging, torch settings) starts fresh
and a crash stays in it. Only the modules already imported are shared.

POSIX only (``os.fork``). The driver stops at the first command that fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

__all__ = ["run_python_commands"]


def run_python_commands(commands: list[list[str]], cwd: str, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Run each ``["python", ...]`` of ``commands`` in ``cwd`` in turn; their CompletedProcess, up to the
    first that fails (its return code non-zero)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "commands.json")
        with open(spec, "w", encoding="utf-8") as f:
            json.dump({"commands": commands, "logs": tmp}, f)
        driver = subprocess.run([sys.executable, os.path.abspath(__file__), spec], cwd=cwd, env=env,
                                capture_output=True, text=True)
        done = []
        for i, argv in enumerate(commands):
            code_file = os.path.join(tmp, f"{i}.rc")
            if not os.path.exists(code_file):
                break
            with open(code_file, encoding="utf-8") as f:
                code = int(f.read())
            out, err = (open(os.path.join(tmp, f"{i}.{s}"), encoding="utf-8", errors="replace").read()
                        for s in ("out", "err"))
            done.append(subprocess.CompletedProcess(argv, code, out, err))
        if driver.returncode != 0 and (not done or done[-1].returncode == 0):
            raise RuntimeError(f"the command driver failed:\n{driver.stdout[-4000:]}\n{driver.stderr[-4000:]}")
        return done


def _run_child(argv: list[str]) -> int:
    """Run ``argv`` (``python ...``) in this process as the ``python`` executable would; its exit code."""
    import runpy
    import traceback

    args = argv[1:]
    try:
        if args[0] == "-c":
            sys.argv = ["-c", *args[2:]]
            sys.path[0] = ""
            exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        elif args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args)
            sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _drive(spec_path: str) -> int:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    import nemo.collections.asr  # noqa: F401  (the import every command shares)

    import nemo_tl  # noqa: F401

    for i, argv in enumerate(spec["commands"]):
        log = os.path.join(spec["logs"], str(i))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for fd, suffix in ((1, "out"), (2, "err")):
                    target = os.open(f"{log}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(target, fd)
                    os.close(target)
                code = _run_child(argv)
            finally:
                import atexit

                atexit._run_exitfuncs()  # as the interpreter does on exit (os._exit would skip them)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        with open(f"{log}.rc", "w", encoding="utf-8") as f:
            f.write(str(code))
        if code != 0:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(_drive(sys.argv[1]))
