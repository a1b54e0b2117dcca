"""Real COCO source: tree checks, and downloads (resume, checksum, extraction) from a loopback server."""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import shutil
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.data.coco_source import (
    COCO_ARCHIVES,
    check_coco_tree,
    download_coco,
    is_online,
    missing_coco_items,
    missing_test_dev_items,
    prepare_coco,
)
from pipeline.errors import DataError
from tests.data_fixtures import build_coco_tree


# --------------------------------------------------------------------------- a Range-capable server

@dataclass
class Served:
    """What the test server serves and what it saw."""

    base_url: str
    files: dict[str, bytes]
    log: list[dict] = field(default_factory=list)  # {"method", "path", "range", "sent"}
    ignore_range: bool = False  # behave like a server without Range support


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` with HEAD, GET and single ``Range: bytes=a-[b]`` requests."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # keep the test output clean
        pass

    def _respond(self, with_body: bool) -> None:
        served: Served = self.server.served  # type: ignore[attr-defined]
        data = served.files.get(self.path)
        entry = {"method": self.command, "path": self.path, "range": self.headers.get("Range"), "sent": 0}
        served.log.append(entry)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end, status = 0, len(data) - 1, 200
        if entry["range"] and not served.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", entry["range"])
            assert m, entry["range"]
            start = int(m.group(1))
            end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start : end + 1]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            # Recorded before writing: the client may return (and the test read the log)
            # as soon as the last byte arrives, before this thread runs again.
            entry["sent"] = len(body)
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._respond(with_body=True)

    def do_HEAD(self) -> None:
        self._respond(with_body=False)


@pytest.fixture
def server() -> Iterator[Served]:
    """A threaded HTTP server on 127.0.0.1 (free port), shut down after the test."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    httpd.daemon_threads = True
    httpd.timeout = 5
    served = Served(base_url=f"http://127.0.0.1:{httpd.server_address[1]}", files={})
    httpd.served = served  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _zip_dir(src: Path, members: list[str]) -> bytes:
    """A zip (bytes) of the listed top-level folders of ``src``, paths relative to ``src``."""
    out = src.parent / f"{src.name}-{len(members)}.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for top in members:
            for p in sorted((src / top).rglob("*")):
                zf.write(p, p.relative_to(src).as_posix())
    return out.read_bytes()


@pytest.fixture
def archives(tmp_path: Path, server: Served) -> list[dict]:
    """Two archives laid out like COCO's: images (train/val/test2017) and annotations."""
    src = build_coco_tree(tmp_path / "src")
    images = _zip_dir(src, ["train2017", "val2017", "test2017"])
    annotations = _zip_dir(src, ["annotations"])
    server.files["/zips/images2017.zip"] = images
    server.files["/annotations/annotations2017.zip"] = annotations
    return [
        {"url": f"{server.base_url}/zips/images2017.zip", "md5": hashlib.md5(images).hexdigest(), "extract": True},
        {"url": f"{server.base_url}/annotations/annotations2017.zip", "md5": hashlib.md5(annotations).hexdigest(),
         "extract": True},
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- downloads

def test_full_download_verifies_and_extracts(tmp_path: Path, server: Served, archives: list[dict]) -> None:
    root = tmp_path / "coco"
    download_coco(root, archives, progress=False)
    check_coco_tree(root)
    src = tmp_path / "src"
    for p in src.rglob("*"):
        if p.is_file():
            assert (root / p.relative_to(src)).read_bytes() == p.read_bytes()
    assert sorted(p.name for p in (root / "downloads").iterdir()) == ["annotations2017.zip", "images2017.zip"]
    assert all(e["range"] is None for e in server.log)

    n_requests = len(server.log)
    download_coco(root, archives, progress=False)  # verified archives are not fetched again
    assert len(server.log) == n_requests


def test_resume_continues_a_partial_file_with_a_range_request(tmp_path: Path, server: Served,
                                                              archives: list[dict]) -> None:
    root = tmp_path / "coco"
    data = server.files["/zips/images2017.zip"]
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "images2017.zip.part").write_bytes(data[:12345])
    download_coco(root, archives[:1], progress=False)
    gets = [e for e in server.log if e["path"] == "/zips/images2017.zip" and e["method"] == "GET"]
    assert len(gets) == 1 and gets[0]["range"] == "bytes=12345-"
    assert gets[0]["sent"] == len(data) - 12345
    assert (root / "downloads" / "images2017.zip").read_bytes() == data
    assert not (root / "downloads" / "images2017.zip.part").exists()
    assert (root / "train2017" / "000000159269.jpg").is_file()


def test_complete_part_file_is_verified_without_refetching(tmp_path: Path, server: Served,
                                                           archives: list[dict]) -> None:
    root = tmp_path / "coco"
    data = server.files["/annotations/annotations2017.zip"]
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "annotations2017.zip.part").write_bytes(data)
    download_coco(root, archives[1:], progress=False)
    assert [(e["range"], e["sent"]) for e in server.log] == [(f"bytes={len(data)}-", 0)]  # answered 416
    assert (root / "downloads" / "annotations2017.zip").read_bytes() == data


def test_server_ignoring_range_restarts_the_download(tmp_path: Path, server: Served, archives: list[dict]) -> None:
    root = tmp_path / "coco"
    server.ignore_range = True
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "annotations2017.zip.part").write_bytes(b"stale bytes from elsewhere")
    download_coco(root, archives[1:], progress=False)
    assert server.log[-1]["range"] == "bytes=26-"
    assert server.log[-1]["sent"] == len(server.files["/annotations/annotations2017.zip"])
    assert (root / "downloads" / "annotations2017.zip").read_bytes() == server.files["/annotations/annotations2017.zip"]
    assert (root / "annotations" / "instances_train2017.json").is_file()


def test_checksum_mismatch_raises_and_keeps_the_file_as_bad(tmp_path: Path, server: Served,
                                                            archives: list[dict]) -> None:
    root = tmp_path / "coco"
    wrong = dict(archives[1], md5="0" * 32)
    actual = archives[1]["md5"]
    with pytest.raises(DataError) as e:
        download_coco(root, [wrong], progress=False)
    msg = str(e.value)
    assert wrong["url"] in msg and "0" * 32 in msg and actual in msg
    assert (root / "downloads" / "annotations2017.zip.bad").read_bytes() == server.files["/annotations/annotations2017.zip"]
    assert not (root / "downloads" / "annotations2017.zip.part").exists()
    assert not (root / "annotations").exists()


def test_extraction_keeps_what_the_user_had(tmp_path: Path, server: Served, archives: list[dict]) -> None:
    root = tmp_path / "coco"
    (root / "train2017").mkdir(parents=True)
    (root / "train2017" / "notes.txt").write_text("mine")
    (root / "train2017" / "000000030752.jpg").write_bytes(b"user's own copy")
    download_coco(root, archives[:1], progress=False)
    assert (root / "train2017" / "notes.txt").read_text() == "mine"
    assert (root / "train2017" / "000000030752.jpg").read_bytes() == b"user's own copy"
    assert (root / "train2017" / "000000070133.jpg").is_file()
    assert not list(root.rglob("*.extracting"))


def test_zip_members_outside_the_root_are_refused(tmp_path: Path, server: Served) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escaped.txt", "x")
    server.files["/evil.zip"] = evil.read_bytes()
    archive = {"url": f"{server.base_url}/evil.zip", "md5": hashlib.md5(evil.read_bytes()).hexdigest(), "extract": True}
    with pytest.raises(DataError, match="outside"):
        download_coco(tmp_path / "coco", [archive], progress=False)
    assert not (tmp_path / "escaped.txt").exists()


def test_prepare_coco_downloads_an_absent_tree_when_online(tmp_path: Path, server: Served,
                                                           archives: list[dict]) -> None:
    root = tmp_path / "coco"
    assert is_online(archives[0]["url"], timeout=3)
    assert prepare_coco(root, download=True, archives=archives, progress=False) == root
    assert missing_coco_items(root) == []
    assert any(e["method"] == "HEAD" for e in server.log)


def test_prepare_coco_absent_and_offline_or_not_allowed(tmp_path: Path) -> None:
    """Each situation gets its own message, and none suggests what is already set."""
    root = tmp_path / "coco"
    # downloading on, but the host cannot be reached: say so, and how to get the files by hand
    dead = [{"url": f"http://127.0.0.1:{_free_port()}/zips/train2017.zip", "md5": "0" * 32, "extract": True},
            {"url": "http://127.0.0.1:9/zips/test2017.zip", "md5": "1" * 32, "extract": True}]
    assert not is_online(dead[0]["url"], timeout=2)
    with pytest.raises(DataError) as e:
        prepare_coco(root, download=True, archives=dead, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{root}: COCO 2017 tree incomplete (missing: train2017/, val2017/, "
                          "annotations/instances_train2017.json, annotations/instances_val2017.json); ")
    assert "test2017/" not in msg.split(";")[0]  # the optional parts are not "missing"
    assert (f"data.coco.download is on, but {dead[0]['url']} cannot be reached from this machine (no network, "
            f"or a proxy or firewall blocks 127.0.0.1:") in msg
    assert (f"Get the files by hand: on a machine with network access download these archives (md5 sums in "
            f"data.coco.archives), copy them here, unzip them into {root} and run the prepare stage again:\n"
            f"  {dead[0]['url']}\noptional, for the test-dev split (about 6 GB more):\n  {dead[1]['url']}") in msg
    assert "set data.coco.download" not in msg and "downloading is off" not in msg
    assert not (root / "downloads").exists()

    # downloading off: suggest turning it on, or downloading by hand
    with pytest.raises(DataError) as e:
        prepare_coco(root, download=False, archives=COCO_ARCHIVES)
    msg = str(e.value)
    assert ("; downloading is off (data.coco.download: false). Either set data.coco.download: true in "
            "params.yaml to have the prepare stage download and unzip the archives (on a machine that can reach "
            "images.cocodataset.org), or download these archives by hand and unzip them into") in msg
    assert "http://images.cocodataset.org/zips/train2017.zip" in msg and "cannot be reached" not in msg
    assert "optional, for the test-dev split (about 6 GB more):\n  http://images.cocodataset.org/zips/test2017.zip" in msg

    # downloading on, but no archives listed
    with pytest.raises(DataError) as e:
        prepare_coco(root, download=True, archives=[])
    msg = str(e.value)
    assert "data.coco.download is on, but data.coco.archives lists no archives to download" in msg
    assert "set data.coco.download" not in msg


def test_a_tree_without_test_parts_downloads_nothing(tmp_path: Path, server: Served, archives: list[dict],
                                                     capsys: pytest.CaptureFixture) -> None:
    """train and val complete, test-dev absent: used as it is, with a note; no request is made
    although downloading is on and the host answers."""
    root = build_coco_tree(tmp_path / "coco")
    shutil.rmtree(root / "test2017")
    (root / "annotations" / "image_info_test-dev2017.json").unlink()
    assert check_coco_tree(root) is False
    assert prepare_coco(root, download=True, archives=archives, progress=False) == root
    assert server.log == [] and not (root / "downloads").exists()
    printed = capsys.readouterr().out
    assert printed.startswith(f"prepare: note: {root}: no test-dev split (missing: test2017/, "
                              "annotations/image_info_test-dev2017.json); test-dev is skipped")
    assert "http://images.cocodataset.org/zips/test2017.zip" in printed  # the configured list has none

    # half of the test parts (the images without the image-info file): still no test-dev, the missing part named
    shutil.copytree(root / "val2017", root / "test2017")
    assert missing_test_dev_items(root) == ["annotations/image_info_test-dev2017.json"]
    assert check_coco_tree(root) is False
    prepare_coco(root, download=True, archives=archives, progress=False)
    assert "(missing: annotations/image_info_test-dev2017.json); test-dev is skipped" in capsys.readouterr().out
    assert server.log == []


def test_prepare_coco_uses_a_complete_tree_without_network(tmp_path: Path) -> None:
    root = build_coco_tree(tmp_path / "coco")
    dead = [{"url": f"http://127.0.0.1:{_free_port()}/x.zip", "md5": "0" * 32, "extract": True}]
    assert prepare_coco(root, download=True, archives=dead, progress=False) == root


# --------------------------------------------------------------------------- tree checks

def test_check_coco_tree_names_every_missing_part(tmp_path: Path) -> None:
    root = build_coco_tree(tmp_path / "coco")
    assert check_coco_tree(root) is True
    (root / "annotations" / "image_info_test-dev2017.json").unlink()
    shutil.rmtree(root / "test2017")
    assert check_coco_tree(root) is False  # the test-dev parts are optional
    assert missing_coco_items(root) == ["test2017/", "annotations/image_info_test-dev2017.json"]
    assert missing_coco_items(root, test_dev=False) == []
    (root / "annotations" / "instances_val2017.json").unlink()
    shutil.rmtree(root / "train2017")
    with pytest.raises(DataError) as e:
        check_coco_tree(root)
    assert str(e.value) == (f"{root}: incomplete COCO 2017 tree, missing: train2017/, annotations/instances_val2017.json "
                            "(only test2017/ and annotations/image_info_test-dev2017.json are optional)")
    with pytest.raises(DataError, match="does not exist"):
        check_coco_tree(tmp_path / "nowhere")


def test_check_coco_tree_reports_malformed_json_with_line_and_column(tmp_path: Path) -> None:
    root = build_coco_tree(tmp_path / "coco")
    bad = root / "annotations" / "instances_val2017.json"
    bad.write_text('{"images": [\n  {"id": 1,\n   "file_name": "a.jpg" "height": 3}\n]}')
    with pytest.raises(DataError) as e:
        check_coco_tree(root)
    assert str(bad) in str(e.value) and "line 3, column 25" in str(e.value)  # the quote of "height"


def test_check_coco_tree_reports_missing_keys_and_images(tmp_path: Path) -> None:
    root = build_coco_tree(tmp_path / "coco")
    f = root / "annotations" / "instances_train2017.json"
    doc = json.loads(f.read_text())
    f.write_text(json.dumps({k: v for k, v in doc.items() if k != "annotations"}))
    with pytest.raises(DataError, match=r"instances_train2017.json: missing required key\(s\) \['annotations'\]"):
        check_coco_tree(root)
    f.write_text(json.dumps(doc))
    (root / "train2017" / doc["images"][-1]["file_name"]).unlink()
    with pytest.raises(DataError, match=f"image id {doc['images'][-1]['id']}"):
        check_coco_tree(root)
