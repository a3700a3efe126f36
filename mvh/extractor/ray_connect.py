"""Connecting to Ray for one extraction run: a cluster by address, or a Ray instance started on this machine.

The connection lasts for the run (`ray_session`): Ray's driver threads, which print about dead workers,
stop with it, and the environment it changed is restored.

A new local instance of Ray >= 2.60 turns on token authentication and saves its token in
~/.ray/auth_token. Every later `ray start --head` on the machine finds that file and requires the token
from worker nodes that never saw it (`ray start --address` fails: InvalidAuthToken). An instance that mvh
starts keeps token authentication, with a token held in its processes' environment only, unless the user
set up tokens (RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mvh.errors import DependencyError, UsageError

LOCAL = "local"
TOKEN_SETTINGS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_CHANGED_ENV = (*TOKEN_SETTINGS, "RAY_USAGE_STATS_ENABLED", "CUDA_VISIBLE_DEVICES")


def import_ray() -> Any:
    """The `ray` module, or DependencyError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise DependencyError('Ray is not installed: pip install -e ".[ray]" (or pip install ray)') from exc
    return ray


def user_token_file() -> Path:
    """Where Ray keeps a token it generated (`ray get-auth-token --generate`, a local `ray.init()`)."""
    return Path.home() / ".ray" / "auth_token"


@contextmanager
def ray_session(address: str, gpus: Sequence[int] = ()) -> Iterator[Any]:
    """`ray` connected to `address` (`local`: a new instance here, on `gpus` if given) for the block.

    A connection made here is shut down at the end; one the caller made before (`ray.init`) is kept.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    saved = {key: os.environ.get(key) for key in _CHANGED_ENV}
    try:
        _connect(ray, address, gpus)
        yield ray
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _connect(ray: Any, address: str, gpus: Sequence[int]) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    if address == LOCAL:
        if not any(key in os.environ for key in TOKEN_SETTINGS) and not user_token_file().exists():
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # inherited by the instance's processes
        if gpus:
            kwargs["num_gpus"] = len(gpus)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))  # the instance sees these only
    try:
        ray.init(address=None if address == LOCAL else address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(
            f"--ray-address {address}: cannot connect ({' '.join(str(exc).split())}); start a "
            "cluster with `ray start --head` or use --ray-address local"
        ) from exc
