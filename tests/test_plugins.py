"""A tokenizer from outside femto, registered through the `femto.tokenizers` entry-point group, used
by name from `femto tokenize` and `femto train`, and loaded back from the run by `femto sample`.

The plugin is a module plus a `*.dist-info/entry_points.txt` written into a temporary directory that
goes on sys.path: exactly what `pip install` of a package declaring the entry point leaves behind.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from femto.cli import main
from femto.tokenizers.base import available_tokenizers, get_tokenizer_class

REPO = pathlib.Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A test plugin: bytes with their ids scrambled by XOR, so its ids differ from the byte tokenizer's."""

import json
import pathlib

from femto.errors import TokenizerError
from femto.tokenizers.base import Tokenizer, write_atomic

KEY = 0x5A


class XorByteTokenizer(Tokenizer):
    name = "xorbyte"

    @classmethod
    def train(cls, texts, vocab_size=None, **options):
        for _ in texts:  # a plugin may read the corpus; this one only checks it is text
            pass
        return cls()

    @property
    def vocab_size(self):
        return 256

    def encode(self, text):
        return [b ^ KEY for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(int(i) ^ KEY for i in ids).decode("utf-8", errors="replace")

    def save(self, directory):
        write_atomic(pathlib.Path(directory) / "xorbyte.json", json.dumps({"key": KEY}).encode())
        return {"kind": self.name, "file": "xorbyte.json"}

    @classmethod
    def load(cls, directory, description):
        path = pathlib.Path(directory) / description["file"]
        if json.loads(path.read_text()) != {"key": KEY}:
            raise TokenizerError(f"{path} is corrupt")
        return cls()
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch) -> pathlib.Path:
    site = tmp_path / "site"
    (site / "femto_xorbyte_plugin.py").parent.mkdir(parents=True)
    (site / "femto_xorbyte_plugin.py").write_text(PLUGIN)
    info = site / "femto_xorbyte_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: femto-xorbyte-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[femto.tokenizers]\nxorbyte = femto_xorbyte_plugin:XorByteTokenizer\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("femto_xorbyte_plugin", None)


def test_plugin_is_discovered_by_name(plugin_dir):
    assert available_tokenizers()["xorbyte"] == "femto_xorbyte_plugin:XorByteTokenizer"
    cls = get_tokenizer_class("xorbyte")
    assert cls.__module__ == "femto_xorbyte_plugin"
    assert cls().decode(cls().encode("héllo 🙂")) == "héllo 🙂"


def test_plugin_from_femto_tokenize(plugin_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello plugin world\n" * 20)
    out = tmp_path / "tok"
    runner = CliRunner()
    result = runner.invoke(main, ["tokenize", "train", "--tokenizer", "xorbyte",
                                  "--data", str(corpus), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "trained xorbyte tokenizer (256 symbols)" in result.output
    assert (out / "xorbyte.json").is_file()
    stats = runner.invoke(main, ["tokenize", "stats", "--out", str(out), "--data", str(corpus)])
    assert stats.exit_code == 0, stats.output
    assert "xorbyte, 256 symbols" in stats.output and "round trip  exact" in stats.output


def test_plugin_from_femto_train_and_sample(plugin_dir, tmp_path):
    pytest.importorskip("femto.train")
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    run_dir = tmp_path / "run"
    env = {"FEMTO_CACHE_DIR": str(tmp_path / "cache")}
    args = ["train", "--tokenizer", "xorbyte", "--data", str(corpus), "--out", str(run_dir),
            "--steps", "1", "--block-size", "8", "--n-layer", "1", "--n-head", "1",
            "--n-embd", "8", "--batch-size", "2", "--sample-tokens", "4"]  # fmt: skip
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert "xorbyte" in result.output
    assert (run_dir / "xorbyte.json").is_file()
    sample = CliRunner().invoke(main, ["sample", "--out", str(run_dir), "--prompt", "the",
                                       "--tokens", "5"])  # fmt: skip
    assert sample.exit_code == 0, sample.output
    assert sample.output.startswith("the")


def test_plugin_in_a_fresh_interpreter(plugin_dir, tmp_path):
    """No in-process state: a new Python finds the entry point on its own."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("fresh interpreter\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), str(REPO)])}
    code = textwrap.dedent("""
        from femto.cli import main
        main()
    """)
    done = subprocess.run(
        [sys.executable, "-c", code, "tokenize", "train", "--tokenizer", "xorbyte",
         "--data", str(corpus), "--out", str(tmp_path / "tok")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "trained xorbyte tokenizer" in done.stdout
