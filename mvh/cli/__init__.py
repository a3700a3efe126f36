"""The `mvh` command line: thin Typer commands, each in the module named after it.

Each module below registers its command on the apps of `mvh.cli._app` when imported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback

from mvh.cli import (  # noqa: F401  (imported for their command registrations)
    card,
    export,
    extract,
    import_,
    index,
    info,
    models,
    overlap,
    pretrain,
    sample,
    search,
    serve,
    tag,
    tile,
    verify,
)
from mvh.cli._app import app
from mvh.cli.eval import classify, retrieval, st, survival  # noqa: F401


def main() -> None:
    """Console-script entry point (also of `python -m mvh`)."""
    if "LOCAL_RANK" not in os.environ:
        app()
        return
    _run_as_torchrun_worker()


def _run_as_torchrun_worker() -> None:
    """Run the command, flush, and end the process without the interpreter's teardown (`os._exit`).

    torch.distributed's FSDP/DTensor caches keep the gloo process group alive after
    `destroy_process_group`; freed during interpreter teardown, its C++ threads can abort a process whose
    work is complete and written ("terminate called without an active exception", SIGABRT), and torchrun
    then fails the whole run. A worker ends as multiprocessing's children do: output flushed, files
    closed by the code that wrote them, exit code kept.
    """
    code: int = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported here, as the interpreter would, then the exit code 1
        traceback.print_exc()
        code = 1
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    os._exit(code)


__all__ = ["app", "main"]
