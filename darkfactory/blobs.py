"""Claim-check store for large payloads: content-addressed blobs in a local directory.

Workflow history carries only `BlobRef`s. Writes are idempotent (same content, same address), so an
activity retried after a crash can write again without harm. An object store can replace the directory
behind the same two methods.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from darkfactory.contracts import BlobRef


class BlobNotFoundError(LookupError):
    """A ref points at content this store does not have (another host's store, or a wiped directory)."""


class BlobStore:
    """Blobs under `root/sha256/<2 hex>/<62 hex>`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest[2:]

    def put(self, data: bytes) -> BlobRef:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a reader never sees a half-written blob, and a racing writer of the
            # same content replaces it with identical bytes.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        return BlobRef(digest=digest, size=len(data))

    def get(self, ref: BlobRef) -> bytes:
        path = self._path(ref.digest)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(
                f"blob {ref.digest[:12]} is not in {self.root}: every worker must share one blob store"
            ) from None

    def put_text(self, text: str) -> BlobRef:
        return self.put(text.encode("utf-8"))

    def get_text(self, ref: BlobRef) -> str:
        return self.get(ref).decode("utf-8")

    def put_json(self, value: Any) -> BlobRef:
        return self.put(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8"))

    def get_json(self, ref: BlobRef) -> Any:
        return json.loads(self.get(ref))
