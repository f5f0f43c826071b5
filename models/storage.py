"""Read, write and list files by URI: a local path or ``gs://bucket/object``.

Checkpoints, reports and folder-per-class training data live on either. ``gs://`` uses
google-cloud-storage: with ``STORAGE_EMULATOR_HOST`` set (the local stack's GCS fake) an
anonymous client for project ``$GCP_PROJECT`` (default ``buildflow-local``), else
Application Default Credentials. google-cloud-storage is imported on first ``gs://`` use.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from .errors import ModelError

__all__ = ["is_gcs", "join", "read_bytes", "write_bytes", "list_files", "exists"]

_LOCK = threading.Lock()


def is_gcs(uri: str) -> bool:
    """Whether ``uri`` is a ``gs://`` URI."""
    return uri.startswith("gs://")


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local folder or a ``gs://`` prefix."""
    if is_gcs(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def _split(uri: str) -> tuple[str, str]:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    if not bucket:
        raise ModelError(f"malformed URI {uri!r}: expected gs://bucket/object")
    return bucket, name


@functools.cache
def _client_for(emulator: str | None, project: str | None) -> Any:
    try:
        storage = importlib.import_module("google.cloud.storage")
    except ImportError as e:
        raise ModelError(
            "gs:// URIs need google-cloud-storage; run pip install google-cloud-storage to fix it"
        ) from e
    if emulator:
        anonymous = importlib.import_module("google.auth.credentials").AnonymousCredentials()
        return storage.Client(project=project or "buildflow-local", credentials=anonymous)
    return storage.Client(project=project)


def _client() -> Any:
    with _LOCK:
        return _client_for(os.environ.get("STORAGE_EMULATOR_HOST"), os.environ.get("GCP_PROJECT"))


def read_bytes(uri: str) -> bytes:
    """The bytes of a local file or a GCS object.

    Raises:
        FileNotFoundError: There is no such file or object.
        ModelError: ``uri`` is malformed, or google-cloud-storage is missing.
    """
    if not is_gcs(uri):
        return Path(uri).read_bytes()
    bucket, name = _split(uri)
    from google.api_core import exceptions

    try:
        data: bytes = _client().bucket(bucket).blob(name).download_as_bytes()
    except exceptions.NotFound as e:
        raise FileNotFoundError(f"{uri} does not exist") from e
    return data


def write_bytes(uri: str, data: bytes) -> None:
    """Write a local file atomically (a temporary file renamed over it, parent folders
    created), or upload a GCS object (atomic on GCS: readers see the old or the new one)."""
    if is_gcs(uri):
        bucket, name = _split(uri)
        _client().bucket(bucket).blob(name).upload_from_string(data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_files(prefix: str) -> list[str]:
    """URIs of every file under a local folder or a ``gs://bucket/prefix``, sorted;
    ``[]`` when there is none. Hidden local files (``.name``) are left out."""
    if is_gcs(prefix):
        bucket, name = _split(prefix)
        name = name.rstrip("/") + "/" if name else ""
        blobs = _client().list_blobs(bucket, prefix=name)
        return sorted(f"gs://{bucket}/{b.name}" for b in blobs if not b.name.endswith("/"))
    root = Path(prefix)
    if not root.is_dir():
        return []
    return sorted(
        str(p)
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def exists(uri: str) -> bool:
    """Whether a local file or a GCS object exists."""
    if not is_gcs(uri):
        return Path(uri).is_file()
    bucket, name = _split(uri)
    return bool(_client().bucket(bucket).blob(name).exists())
