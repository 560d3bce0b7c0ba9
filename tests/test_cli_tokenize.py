"""`femto tokenize train|stats` and `femto data list|fetch` through click's CliRunner, plus the
one-line errors for bad input. Downloads go to a local http.server on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import pytest
import zstandard
from click.testing import CliRunner

from femto.cli import main

STORY_TEXT = (
    "Once upon a time, there was a little cat named Tom.\nTom liked to play in the sun.\n"
    'One day, Tom saw a big dog.  "Hello!" said the dog.\tTom was happy.\n\n'
)


def run(*args: str, env: dict | None = None):
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def stories(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text(STORY_TEXT * 200, encoding="utf-8")
    return path


def write_reddit_dump(path, bodies, extra_lines=()):
    lines = [json.dumps({"id": f"c{i}", "author": "a", "body": b}) for i, b in enumerate(bodies)]
    raw = ("\n".join(list(lines) + list(extra_lines)) + "\n").encode()
    if path.suffix == ".zst":
        raw = zstandard.ZstdCompressor(level=3).compress(raw)
    path.write_bytes(raw)
    return path


# ---- tokenize train / stats ------------------------------------------------------------------


def test_train_char_then_stats(tmp_path, stories):
    out = tmp_path / "tok"
    result = run("tokenize", "train", "--data", str(stories), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "trained char tokenizer" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "vocab.json"]
    stats = run("tokenize", "stats", "--out", str(out), "--data", str(stories), "--top", "3")
    assert stats.exit_code == 0, stats.output
    n_chars = len(STORY_TEXT) * 200
    assert f"{n_chars:,} characters" in stats.output
    assert "per token   1.000 characters, 1.000 bytes" in stats.output
    assert "1. id" in stats.output and "3. id" in stats.output and "4. id" not in stats.output
    assert "round trip  exact" in stats.output


def test_train_sentencepiece_bpe_on_a_zst_reddit_dump(tmp_path):
    bodies = [f"comment {i}: " + STORY_TEXT.replace("\n\n", "\n") for i in range(300)]
    bodies += ["[deleted]", "[removed]"]
    dump = write_reddit_dump(tmp_path / "RC_2006-02.zst", bodies, extra_lines=["{oops"])
    out = tmp_path / "sp"
    result = run(
        "tokenize", "train", "--tokenizer", "sentencepiece", "--vocab", "320",
        "--sp-model-type", "bpe", "--data", str(dump), "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "sentencepiece tokenizer (bpe, 320 symbols)" in result.output
    assert (
        "kept 300 comment(s), dropped 2 deleted or removed, skipped 1 malformed line(s)"
        in result.output
    )
    assert (out / "tokenizer.model").is_file()
    stats = run("tokenize", "stats", "--out", str(out), "--data", str(dump))
    assert stats.exit_code == 0, stats.output
    assert "sentencepiece, 320 symbols" in stats.output and "round trip  exact" in stats.output


def test_sentencepiece_vocabulary_errors_are_one_line(tmp_path, stories):
    args = ["tokenize", "train", "--tokenizer", "sentencepiece", "--data", str(stories)]
    high = run(*args, "--vocab", "60000", "--out", str(tmp_path / "a"))
    assert_one_line_error(high, "--vocab 60000 is too large", "or less")
    low = run(*args, "--vocab", "200", "--out", str(tmp_path / "b"))
    assert_one_line_error(low, "--vocab 200 is too small", "or more")
    none = run(*args, "--out", str(tmp_path / "c"))
    assert_one_line_error(none, "pass --vocab N")
    assert not (tmp_path / "a").exists()  # nothing is written when training fails


def test_sp_model_type_needs_sentencepiece(tmp_path, stories):
    result = run("tokenize", "train", "--data", str(stories), "--out", str(tmp_path / "t"),
                 "--sp-model-type", "bpe")  # fmt: skip
    assert_one_line_error(result, "--sp-model-type applies to --tokenizer sentencepiece")


def test_char_vocab_mismatch(tmp_path, stories):
    result = run("tokenize", "train", "--data", str(stories), "--vocab", "500",
                 "--out", str(tmp_path / "t"))  # fmt: skip
    assert_one_line_error(result, "omit --vocab or pass --vocab")


def test_unknown_tokenizer(tmp_path, stories):
    result = run("tokenize", "train", "--tokenizer", "wordpiece", "--data", str(stories),
                 "--out", str(tmp_path / "t"))  # fmt: skip
    assert_one_line_error(result, "unknown tokenizer 'wordpiece'", "char", "sentencepiece")


# ---- bad input: each one line ----------------------------------------------------------------


def test_missing_corpus(tmp_path):
    result = run("tokenize", "train", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path))
    assert_one_line_error(result, "no corpus at", "nope.txt", "femto data list")


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    result = run("tokenize", "train", "--data", str(tmp_path / "empty.txt"), "--out", str(tmp_path))
    assert_one_line_error(result, "empty.txt is empty (0 bytes)")


def test_non_utf8_corpus_gives_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"hello\nna\xefve\n")
    result = run("tokenize", "train", "--data", str(path), "--out", str(tmp_path / "t"))
    assert_one_line_error(result, "latin1.txt is not UTF-8: byte 0xef at offset 8")


def test_reddit_dump_with_only_bad_lines(tmp_path):
    path = tmp_path / "dump.jsonl"
    path.write_text('{"no_body": 1}\nnot json\n')
    result = run("tokenize", "train", "--data", str(path), "--out", str(tmp_path / "t"))
    assert_one_line_error(result, "none of its 2 lines is a Reddit comment", "line 1")


def test_corrupt_tokenizer_file(tmp_path, stories):
    out = tmp_path / "tok"
    assert run("tokenize", "train", "--data", str(stories), "--out", str(out)).exit_code == 0
    (out / "vocab.json").write_text('{"kind": "char", "version": 1, "chars": ["b", "a"]}')
    result = run("tokenize", "stats", "--out", str(out), "--data", str(stories))
    assert_one_line_error(result, "vocab.json is corrupt")
    (out / "tokenizer.json").write_bytes(b"\xff\xfe")
    result = run("tokenize", "stats", "--out", str(out), "--data", str(stories))
    assert_one_line_error(result, "tokenizer.json is corrupt")


def test_stats_on_a_directory_without_a_tokenizer(tmp_path, stories):
    result = run("tokenize", "stats", "--out", str(tmp_path), "--data", str(stories))
    assert_one_line_error(result, "holds no tokenizer", "femto tokenize train")


def test_corpus_shorter_than_one_window(tmp_path):
    pytest.importorskip("femto.train")
    path = tmp_path / "short.txt"
    path.write_text("tiny corpus\n")
    result = run("train", "--data", str(path), "--out", str(tmp_path / "run"), "--steps", "1",
                 "--block-size", "64", env={"FEMTO_CACHE_DIR": str(tmp_path / "cache")})  # fmt: skip
    assert_one_line_error(result, "fewer than one training window", "block_size 64")


# ---- data list / fetch -----------------------------------------------------------------------


def test_data_list_shows_bundled_corpora_and_sizes(tmp_path):
    result = run("data", "list", "--data-home", str(tmp_path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:3] == ["shakespeare", "bundled", "1,115,394"] for line in lines)
    assert any(line.split()[:3] == ["tinystories", "bundled", "2,000,681"] for line in lines)
    assert any(line.split()[:3] == ["tinystories-full", "not", "downloaded"] for line in lines)
    target = tmp_path / "tinystories-full" / "TinyStories-train.txt"
    target.parent.mkdir()
    target.write_text("x")
    result = run("data", "list", "--data-home", str(tmp_path))
    assert any(
        line.split()[:2] == ["tinystories-full", "downloaded"]
        for line in result.output.splitlines()
    )


class FileServer:
    """Serves one body on 127.0.0.1 with Range support. `drop_after` makes the next GET send that
    many bytes and then close the connection; /redirect answers 302 with a checksum header, the way
    Hugging Face does."""

    def __init__(self, body: bytes) -> None:
        self.body, self.drop_after, self.requests = body, None, []
        self.linked_etag: str | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/file")
                    if server.linked_etag:
                        self.send_header("X-Linked-ETag", f'"{server.linked_etag}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(server.body):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(server.body) - 1}/{len(server.body)}"
                    )
                else:
                    self.send_response(200)
                payload = server.body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.drop_after is not None:
                    self.wfile.write(payload[: server.drop_after])
                    server.drop_after = None
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    body = (STORY_TEXT + "<|endoftext|>\n") * 3000  # ~570 kB, several read blocks
    srv = FileServer(body.encode())
    yield srv
    srv.close()


def fetch(server, tmp_path, *extra: str, path: str = "/file"):
    return run("data", "fetch", "tinystories", "--url", server.url + path,
               "--data-home", str(tmp_path / "home"), *extra)  # fmt: skip


def test_fetch_downloads_and_verifies(server, tmp_path):
    digest = hashlib.sha256(server.body).hexdigest()
    result = fetch(server, tmp_path, "--sha256", digest)
    assert result.exit_code == 0, result.output
    target = tmp_path / "home" / "tinystories-full" / "TinyStories-train.txt"
    assert target.read_bytes() == server.body
    assert "sha256 verified" in result.output and "--data tinystories-full" in result.output
    again = fetch(server, tmp_path, "--sha256", digest)
    assert "already downloaded" in again.output and len(server.requests) == 1


def test_fetch_resumes_with_a_range_request(server, tmp_path):
    digest = hashlib.sha256(server.body).hexdigest()
    server.drop_after = 200_000
    first = fetch(server, tmp_path, "--sha256", digest)
    assert_one_line_error(first, "again to resume")
    part = tmp_path / "home" / "tinystories-full" / "TinyStories-train.txt.part"
    assert part.stat().st_size == 200_000
    second = fetch(server, tmp_path, "--sha256", digest)
    assert second.exit_code == 0, second.output
    assert server.requests[-1] == ("/file", "bytes=200000-")
    target = part.with_name("TinyStories-train.txt")
    assert target.read_bytes() == server.body and not part.exists()


def test_fetch_uses_the_checksum_the_server_publishes(server, tmp_path):
    server.linked_etag = hashlib.sha256(server.body).hexdigest()
    result = fetch(server, tmp_path, path="/redirect")
    assert result.exit_code == 0, result.output
    assert [p for p, _ in server.requests] == ["/redirect", "/file"]


def test_fetch_rejects_a_bad_checksum_and_removes_the_download(server, tmp_path):
    result = fetch(server, tmp_path, "--sha256", "0" * 64)
    assert_one_line_error(result, "failed its checksum", "expected " + "0" * 64)
    assert not list((tmp_path / "home" / "tinystories-full").iterdir())


def test_fetch_without_any_checksum_is_refused(server, tmp_path):
    result = fetch(server, tmp_path)
    digest = hashlib.sha256(server.body).hexdigest()
    assert_one_line_error(result, "no checksum is known", f"its sha256 is {digest}")
    assert not (tmp_path / "home" / "tinystories-full" / "TinyStories-train.txt").exists()


def test_fetch_unknown_name_and_unreachable_server(tmp_path):
    assert_one_line_error(run("data", "fetch", "wikipedia"), "not a downloadable corpus")
    result = run("data", "fetch", "tinystories", "--url", "http://127.0.0.1:9/none",
                 "--data-home", str(tmp_path))  # fmt: skip
    assert_one_line_error(result, "cannot reach http://127.0.0.1:9/none")
