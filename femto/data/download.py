"""Downloading a corpus: resumable, and checked against the sha256 the catalogue or the server gives."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pathlib
import re
import urllib.error
import urllib.request

from femto.data.catalogue import CATALOGUE, FETCH_ALIASES, corpus_path
from femto.data.loaders import Progress
from femto.errors import DatasetError
from femto.fileio import fsync_directory

logger = logging.getLogger(__name__)


FETCH_BLOCK = 1 << 20
# Hugging Face answers a download with a redirect that carries the LFS object's sha256 here
CHECKSUM_HEADERS = ("X-Linked-ETag", "ETag")


class _RecordingRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib does, remembering each hop's headers (the checksum may be on
    the first one)."""

    def __init__(self) -> None:
        self.headers: list = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and req.has_header("Range"):
            new.add_unredirected_header("Range", req.get_header("Range"))
        return new


def _server_sha256(all_headers: list) -> str | None:
    for headers in all_headers:
        for name in CHECKSUM_HEADERS:
            value = (headers.get(name) or "").strip().strip('"').removeprefix("W/").strip('"')
            if re.fullmatch(r"[0-9a-f]{64}", value):
                return value
    return None


def fetch_corpus(
    name: str,
    data_home: pathlib.Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> pathlib.Path:
    """Download a catalogue corpus into the data home and return its path.

    Resumable: bytes already in `<file>.part` are kept and the rest is asked for with an HTTP Range
    request. The file is checked against a sha256 (the catalogue's, the `sha256` argument, or the
    one the server publishes for it) before it is renamed into place.
    """
    name = FETCH_ALIASES.get(name, name)
    info = CATALOGUE.get(name)
    if info is None or info.url is None:
        remote = [n for n, i in CATALOGUE.items() if i.url is not None]
        raise DatasetError(
            f"{name!r} is not a downloadable corpus: `femto data fetch` knows "
            f"{', '.join(list(FETCH_ALIASES) + remote)}"
        )
    url = url or info.url
    expected = (sha256 or info.sha256 or "").lower() or None
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DatasetError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    final = corpus_path(info, data_home)
    if final.is_file():
        logger.info("%s already present at %s", name, final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")

    digest = hashlib.sha256()
    have = part.stat().st_size if part.is_file() else 0
    if have:
        with open(part, "rb") as f:  # re-hash what an earlier, interrupted run left
            while block := f.read(4 * FETCH_BLOCK):
                digest.update(block)

    redirects = _RecordingRedirects()
    opener = urllib.request.build_opener(redirects)
    request = urllib.request.Request(url, headers={"User-Agent": "femto"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file already holds the whole body
            response = None
            redirects.headers.append(exc.headers)
        else:
            raise DatasetError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DatasetError(
            f"cannot reach {url} ({getattr(exc, 'reason', exc)}); "
            f"{have:,} bytes are kept in {part} for the next try"
        ) from None

    if response is not None:
        with response:
            redirects.headers.append(response.headers)
            if have and response.status != 206:  # the server ignored Range: start over
                have = 0
                digest = hashlib.sha256()
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else 0
            done = have
            try:
                with open(part, "ab" if have else "wb") as f:
                    while block := response.read(FETCH_BLOCK):
                        f.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, max(total, done))
                    f.flush()
                    os.fsync(f.fileno())
            except (OSError, http.client.HTTPException) as exc:
                raise DatasetError(
                    f"download of {url} was interrupted at {done:,} bytes ({exc}); run "
                    f"`femto data fetch {name}` again to resume from {part}"
                ) from None
            if total and done < total:
                raise DatasetError(
                    f"download of {url} stopped at {done:,} of {total:,} bytes; run "
                    f"`femto data fetch {name}` again to resume from {part}"
                )

    actual = digest.hexdigest()
    expected = expected or _server_sha256(redirects.headers)
    if expected is None:
        raise DatasetError(
            f"no checksum is known for {url}, so the download in {part} is not trusted: pass "
            f"--sha256 HEX (its sha256 is {actual})"
        )
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DatasetError(
            f"{url} failed its checksum: sha256 {actual}, expected {expected}; the download was "
            "removed, run the command again"
        )
    os.replace(part, final)
    fsync_directory(final.parent)
    return final
