"""Run ``python ...`` command lines one after another, each in its own process, with NeMo imported once.

A fresh ``python`` spends most of a tiny command's time importing NeMo (10-20 s on a 2-core CI machine).
:func:`run_python_commands` starts one driver process that imports the ``preload`` modules (by default
NeMo's ASR collection and ``nemo_tl``), then forks one child per command. Each child is a separate
process that runs its command as ``python`` would (``-c CODE``, ``-m MODULE`` or ``SCRIPT``, as a fresh
``__main__`` module, with the command's ``sys.argv`` and ``sys.path[0]``), in the working directory and
environment given, and exits as ``python`` does: it waits for its non-daemon threads, then runs the exit
handlers registered while it ran (not the driver's: those belong to the modules every child shares). Its
state (Hydra, Lightning, logging, torch settings) starts fresh and a crash stays in it.

What a child does not get from a fresh ``python``: the ``preload`` modules are already imported, so a
command that forgets to import one of them, or relies on a side effect of importing it in a given order,
passes here. POSIX only (``os.fork``). The driver stops at the first command that fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

__all__ = ["PRELOAD", "run_python_commands"]

PRELOAD = ("nemo.collections.asr", "nemo_tl")


def run_python_commands(
    commands: list[list[str]], cwd: str, env: dict[str, str], preload: tuple[str, ...] = PRELOAD,
    timeout: float | None = 3600,
) -> list[subprocess.CompletedProcess]:
    """Run each ``["python", ...]`` of ``commands`` in ``cwd`` in turn; their CompletedProcess, up to the
    first that fails (its return code non-zero).

    Raises:
        RuntimeError: the driver itself failed (its output, return code and the command it was running), or
            ran past ``timeout`` seconds (then it and its children are killed).
    """
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "commands.json")
        with open(spec, "w", encoding="utf-8") as f:
            json.dump({"commands": commands, "logs": tmp, "preload": list(preload)}, f)
        driver = subprocess.Popen([sys.executable, os.path.abspath(__file__), spec], cwd=cwd, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = driver.communicate(timeout=timeout)
            late = None
        except subprocess.TimeoutExpired:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the command it runs (one session)
            stdout, stderr = driver.communicate()
            late = f"ran past {timeout} s"

        def read(path: str) -> str:
            return open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else ""

        done = []
        for i, argv in enumerate(commands):
            log = os.path.join(tmp, str(i))
            if not os.path.exists(f"{log}.rc"):
                if late or driver.returncode != 0:
                    running = " ".join(argv[:3]) if os.path.exists(f"{log}.out") else "none"
                    raise RuntimeError(
                        f"the command driver {late or f'exited with {driver.returncode}'} (command {i}: {running})"
                        f"\n{stdout[-4000:]}\n{stderr[-4000:]}\n{read(f'{log}.out')[-4000:]}\n{read(f'{log}.err')[-4000:]}"
                    )
                break
            done.append(subprocess.CompletedProcess(argv, int(read(f"{log}.rc")), read(f"{log}.out"), read(f"{log}.err")))
        return done


def _run_child(argv: list[str]) -> int:
    """Run ``argv`` (``python ...``) in this process as the ``python`` executable would; its exit code."""
    import runpy
    import traceback
    import types

    args = argv[1:]
    try:
        if args[0] == "-c":
            sys.argv = ["-c", *args[2:]]
            sys.path[0] = ""
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(args[1], "<string>", "exec"), main.__dict__)
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


def _child(argv: list[str], log: str) -> None:
    """The forked child: output to ``log.out`` / ``log.err``, the command, then exit as the interpreter does."""
    import atexit
    import logging
    import threading

    code = 1
    try:
        atexit._clear()  # the driver's handlers: its modules are every child's; the child's own come next
        atexit.register(logging.shutdown)  # as the logging module registers it on import
        if "multiprocessing.util" in sys.modules:  # as multiprocessing does: its children are ended at exit
            atexit.register(sys.modules["multiprocessing.util"]._exit_function)
        for fd, suffix in ((1, "out"), (2, "err")):
            target = os.open(f"{log}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        code = _run_child(argv)
    finally:
        try:
            threading._shutdown()  # non-daemon threads finish first, as at interpreter exit
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _drive(spec_path: str) -> int:
    import importlib

    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    for name in spec["preload"]:
        importlib.import_module(name)
    for i, argv in enumerate(spec["commands"]):
        log = os.path.join(spec["logs"], str(i))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(argv, log)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        with open(f"{log}.rc", "w", encoding="utf-8") as f:
            f.write(str(code))
        if code != 0:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(_drive(sys.argv[1]))
