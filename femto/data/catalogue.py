"""The corpora femto knows by name: bundled ones and downloadable ones, and where each lives."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass


@dataclass(frozen=True)
class CorpusInfo:
    """A corpus femto knows by name: bundled in the package, or downloadable with `femto data fetch`."""

    name: str
    directory: str  # under the bundled root or the data home
    file: str
    kind: str  # "text" or "tinystories"
    description: str
    url: str | None = None  # None: bundled
    sha256: str | None = None
    size: int | None = None


TINYSTORIES_TRAIN_URL = (
    "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-train.txt"
)

CATALOGUE = {
    "shakespeare": CorpusInfo(
        "shakespeare",
        "shakespeare",
        "tinyshakespeare.txt",
        "text",
        "tiny Shakespeare (char-rnn), 1.1 MB, public domain",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
    ),
    "tinystories": CorpusInfo(
        "tinystories",
        "tinystories",
        "TinyStories-valid-head.txt",
        "tinystories",
        "TinyStories validation excerpt, 2,387 stories, 2.0 MB, CDLA-Sharing-1.0",
        sha256="43fcb40a8fcdb9a7bf2d9d27700790716c75846cec7829288fdfb075ba76961d",
        size=2_000_681,
    ),
    "tinystories-full": CorpusInfo(
        "tinystories-full",
        "tinystories-full",
        "TinyStories-train.txt",
        "tinystories",
        "TinyStories training file, about 1.9 GB (femto data fetch tinystories)",
        url=TINYSTORIES_TRAIN_URL,
    ),
}
FETCH_ALIASES = {"tinystories": "tinystories-full"}


def bundled_root() -> pathlib.Path:
    """`femto/datasets` in an installed wheel, else the checkout's top-level `datasets/`."""
    here = pathlib.Path(__file__).resolve().parents[1]  # the femto package
    installed = here / "datasets"
    return installed if installed.is_dir() else here.parent / "datasets"


def default_data_home() -> pathlib.Path:
    """Where `femto data fetch` puts downloaded corpora unless the CLI is told otherwise."""
    return pathlib.Path.home() / ".cache" / "femto" / "datasets"


def corpus_path(info: CorpusInfo, data_home: pathlib.Path | None = None) -> pathlib.Path:
    root = bundled_root() if info.url is None else (data_home or default_data_home())
    return root / info.directory / info.file
