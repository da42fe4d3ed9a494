"""Fault injection for the workflow fault tests: with GATEDSAE_TEST_FAULT="STAGE:MODULE:ATTRIBUTE:MODE:N" in
the environment (and this folder first on PYTHONPATH), the process running `python -m gatedsae STAGE` is
killed with SIGKILL before (MODE kill-before) or after (kill-after) the N-th call of MODULE.ATTRIBUTE:
a job of a real Snakemake run dies at an exact point of the real code; MODE noop makes the function do
nothing (a check switched off). Every other process is untouched."""

import os

_SPEC = os.environ.get("GATEDSAE_TEST_FAULT", "")


def _install(stage: str, module: str, attribute: str, mode: str, count: str) -> None:
    import importlib.abc
    import importlib.util
    import signal
    import sys

    calls = [0]

    def patch(loaded) -> None:
        owner = loaded
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name)

        def patched(*args, **kwargs):
            calls[0] += 1
            if mode == "noop":
                return None
            if mode == "kill-before" and calls[0] == int(count):
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            if mode == "kill-after" and calls[0] == int(count):
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, name, patched)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != module:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            run = spec.loader.exec_module

            def exec_module(loaded):
                run(loaded)
                patch(loaded)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())


if _SPEC:
    _stage, _module, _attribute, _mode, _count = _SPEC.split(":")
    with open("/proc/self/cmdline", "rb") as _handle:
        _argv = _handle.read().split(b"\0")
    if b"gatedsae" in _argv and _stage.encode() in _argv:
        _install(_stage, _module, _attribute, _mode, _count)
