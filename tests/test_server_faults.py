"""serve.py against hostile and broken requests and settings (issue 25, item 7, and the server's part of items 2
and 9): each fault is a 4xx with a message or one line, never a 500 or a traceback; decoding is bounded before it
starts. The real server on 127.0.0.1, over the real indices test_server.py builds."""

import base64
import concurrent.futures
import io
import re
import socket
from pathlib import Path

import pytest
import requests
from conftest import run_script
from PIL import Image
from test_server import built, post, running_server, started_server  # noqa: F401  (built: the indices, once a module)

MB = 2**20


@pytest.fixture(scope="module")
def server(built):  # noqa: F811
    with running_server(*built) as base:
        yield base


def png_declaring(size: tuple[int, int]) -> str:
    """A PNG of one colour: a few kilobytes that decode to size[0] x size[1] pixels, base64."""
    out = io.BytesIO()
    Image.new("L", size).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def peak_memory(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def send_part_of_a_body(base: str) -> socket.socket:
    """A connection that announced a 1,000-byte search body and sent 8 bytes of it."""
    host, port = base.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=60)
    connection.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"text\":")
    return connection


def read_answer(connection: socket.socket) -> str:
    """The whole HTTP answer on connection: its headers, then as many bytes as its Content-Length says (one recv
    may hold the headers alone, when the server writes them apart from the body)."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := connection.recv(4096)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    while length and len(body) < int(length.group(1)) and (chunk := connection.recv(4096)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_chunked_body_is_read_as_any_other(server):
    def chunks():
        yield b'{"text": "a castle in'
        yield b' the clouds", "index": "prompts"}'

    answer = requests.post(f"{server}/api/search", data=chunks(), headers={"Content-Type": "application/json"},
                           timeout=30)
    assert answer.status_code == 200 and answer.json()["results"], answer.text


@pytest.mark.parametrize("position", ["²", "٣", "1" * 100_000, "0x1", " 1"])
def test_a_thumbnail_position_of_other_digits_is_a_404(server, position):
    answer = requests.get(f"{server}/thumbnail/images/{position}", timeout=30)
    assert answer.status_code == 404 and answer.json() == {"error": "no such thumbnail"}


def test_a_date_filter_to_the_last_day_there_is(server):
    until = post(server, "/api/search", text="a picture", index="prompts", filters={"date": {"to": "9999-12-31"}})
    assert until.status_code == 200 and until.json()["results"], until.text
    since = post(server, "/api/search", text="a picture", index="prompts", filters={"date": {"from": "9999-12-31"}})
    assert since.status_code == 200 and since.json()["results"] == [], since.text


def test_too_many_negative_phrases_are_refused(server):
    answer = post(server, "/api/search", text="a castle", negative=["people"] * 30_000)
    assert answer.status_code == 422 and "at most 16 negative phrases, got 30000" in answer.json()["error"]
    in_the_text = post(server, "/api/search", text="a castle " + " ".join(f"-x{i}" for i in range(17)))
    assert in_the_text.status_code == 422 and "got 17" in in_the_text.json()["error"]
    assert post(server, "/api/search", text="a castle", negative=["people"] * 16).status_code == 200


def test_a_non_image_is_named_without_pils_object(server):
    answer = post(server, "/api/search", image=base64.b64encode(b"GIF89 but no picture at all").decode())
    error = answer.json()["error"]
    assert answer.status_code == 400 and "not in an image format" in error and "BytesIO" not in error, error


def test_images_over_the_pixel_bound_are_refused_before_they_are_decoded(built):  # noqa: F811
    """8000 x 8000 declared in a few kilobytes: refused from its header (400), the server's peak memory unmoved; so is
    an image over PIL's own limit (10000 x 10000), which PIL only warns about."""
    with started_server(*built) as (base, process):
        before = peak_memory(process.pid)
        for size, said in (((8000, 8000), "it has 64,000,000 pixels, a query image may have at most 16,777,216"),
                           ((10_000, 10_000), "it has over 89,478,485 pixels")):
            answer = post(base, "/api/search", image=png_declaring(size))
            assert answer.status_code == 400 and said in answer.json()["error"], answer.text
        assert peak_memory(process.pid) - before < 64 * MB  # decoding the first alone would take 256 MB


def test_images_are_decoded_one_slot_at_a_time(built):  # noqa: F811
    """Eight clients at once, each with an image at the pixel bound (2048 x 2048 here, 16 MB decoded in RGB and more
    in its grey original): with one decoding slot the server's memory grows by about one decode, not eight."""
    with started_server(*built, f"--MAX_DECODE_PIXELS={2048 * 2048}", "--DECODE_SLOTS=1") as (base, process):
        image = png_declaring((2048, 2048))
        assert post(base, "/api/search", image=image).status_code == 200  # the first decode's memory, once
        before = peak_memory(process.pid)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post(base, "/api/search", image=image), range(8)))
        assert [answer.status_code for answer in answers] == [200] * 8
        assert peak_memory(process.pid) - before < 48 * MB


def test_only_the_servers_own_host_names_are_answered(server, built):  # noqa: F811
    port = server.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]:1234", "LOCALHOST"):
        assert requests.get(f"{server}/health", headers={"Host": host}, timeout=10).status_code == 200, host
    rebound = requests.get(f"{server}/health", headers={"Host": f"attacker.example:{port}"}, timeout=10)
    assert rebound.status_code == 400 and "ALLOWED_HOSTS" in rebound.json()["error"]
    with running_server(*built, "--ALLOWED_HOSTS=search.lan, phone.lan") as base:
        assert requests.get(f"{base}/health", headers={"Host": "search.lan"}, timeout=10).status_code == 200
        assert requests.get(f"{base}/health", headers={"Host": "localhost"}, timeout=10).status_code == 400


def test_a_stalled_upload_is_answered_408_and_an_aborted_one_logs_one_line(built):  # noqa: F811
    log: list[str] = []
    with started_server(*built, "--UPLOAD_TIMEOUT=1", log=log) as (base, process):
        with send_part_of_a_body(base) as stalled:
            answer = read_answer(stalled)
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 1 seconds" in answer
        send_part_of_a_body(base).close()
        with concurrent.futures.ThreadPoolExecutor(1) as reader:  # the server's first word on it, whatever it is
            first = reader.submit(process.stdout.readline).result(timeout=60)
    said = first + log[0]
    assert "Traceback" not in said and "127.0.0.1 went away while sending /api/search (8 bytes came)" in first, said


def test_a_port_in_use_is_one_line(built):  # noqa: F811
    work, common = built
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_script("serve.py", *common, f"--SERVE_PORT={port}", cwd=work, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use " \
                                    "(--SERVE_HOST, --SERVE_PORT; port 0 takes a free one)"


def test_a_mistyped_out_dir_is_one_line_and_leaves_nothing(tmp_path, tiny_clip):
    result = run_script("serve.py", "--OUT_DIR=outptus", f"--MODEL={tiny_clip}", cwd=tmp_path, check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "no index in outptus" in result.stderr
    assert list(tmp_path.iterdir()) == []
