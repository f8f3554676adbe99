"""The web client in a real browser (Debian's Chromium, driven by Playwright)
against the real missived binary on loopback.

Two browser contexts are two users; a third and a fourth load the same
client from other origins (small static servers on other ports), one listed
in auth.allowed_origins and one not. The server is killed with SIGKILL and
restarted mid-conversation. Screenshots of the main views go to
target/web-screenshots (docs/web with MISSIVE_WRITE_SCREENSHOTS=1).

Run by server/web/tests/run (which installs Chromium and Playwright).
"""

import functools
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[3]
WEB = ROOT / "server" / "web"
BINARY = Path(os.environ.get("MISSIVED", ROOT / "target" / "debug" / "missived"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SECRET = "browser-test-admin"
SHOTS = ROOT / ("docs/web" if os.environ.get("MISSIVE_WRITE_SCREENSHOTS") else "target/web-screenshots")

expect.set_options(timeout=20_000)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StaticOrigin:
    """The client's files served from another origin (another port): what a
    browser app hosted elsewhere looks like to missived."""

    def __init__(self):
        handler = functools.partial(_QuietHandler, directory=str(WEB.parent))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def page(self, server):
        return f"{self.origin}/web/index.html?server={server}"

    def close(self):
        self.httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Missived:
    """missived on fixed loopback ports (kept across a restart), its data in
    a temporary directory, its log in a file."""

    def __init__(self, allowed_origins):
        self.dir = Path(tempfile.mkdtemp(prefix="missive-web-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = {
            "listen": f"127.0.0.1:{self.port}",
            "raft": f"127.0.0.1:{free_port()}",
            "grpc": f"127.0.0.1:{free_port()}",
        }
        origins = ", ".join(json.dumps(o) for o in allowed_origins)
        (self.dir / "missived.toml").write_text(
            f'listen = "{cfg["listen"]}"\n'
            f'data_dir = "{self.dir / "data"}"\n'
            f'[node]\nraft_listen = "{cfg["raft"]}"\nshards = 2\n'
            f'[grpc]\nlisten = "{cfg["grpc"]}"\n'
            f'[auth]\nadmin_secret = "{SECRET}"\nallowed_origins = [{origins}]\n'
            # The test fills a conversation faster than a person would.
            '[limits]\nsends_per_second = 1000\nsend_burst = 1000\n'
        )
        self.proc = None
        self.start()

    def start(self):
        log = open(self.dir / "missived.log", "ab")
        self.proc = subprocess.Popen(
            [str(BINARY), "--config", str(self.dir / "missived.toml")],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, f"missived exited: {self.log()}"
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"missived not ready in 60 s: {self.log()}")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log(self):
        return (self.dir / "missived.log").read_text(errors="replace")[-4000:]

    def token(self, user, device=1):
        return self.call("POST", "/v1/admin/tokens", {"user": str(user), "device": str(device)},
                         headers={"X-Admin-Secret": SECRET})["token"]

    def call(self, method, path, body=None, token=None, headers=None):
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            h["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return json.loads(text) if text else None


@pytest.fixture(scope="module")
def origins():
    listed, unlisted = StaticOrigin(), StaticOrigin()
    yield listed, unlisted
    listed.close()
    unlisted.close()


@pytest.fixture(scope="module")
def server(origins):
    s = Missived([origins[0].origin])
    yield s
    s.stop()
    if os.environ.get("MISSIVE_KEEP_WEB_DATA") is None:
        shutil.rmtree(s.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: server/web/tests/run installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


def new_page(browser):
    ctx = browser.new_context(viewport={"width": 1100, "height": 700})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    return page


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def sign_in(page, url, server, user, name, device=1):
    page.goto(url)
    form = page.locator("#signin-form")
    expect(form).to_be_visible()
    form.locator("[name=server]").fill(server)
    form.locator("[name=user]").fill(str(user))
    form.locator("[name=device]").fill(str(device))
    form.locator("[name=name]").fill(name)
    form.locator("[name=secret]").fill(SECRET)
    form.locator("button[type=submit]").click()
    online(page)


def online(page):
    expect(page.locator("#status")).to_have_attribute("data-state", "online")


def conv_item(page, title):
    return page.locator("#convs .conv").filter(has=page.locator(".conv-title", has_text=re.compile(f"^{re.escape(title)}$")))


def body(page, text):
    """A message body whose whole text is `text` (relative: use inside a message)."""
    return page.locator(".body").filter(has_text=re.compile(f"^{re.escape(text)}$"))


def bodies(page, text):
    return page.locator("#messages .msg").locator(body(page, text))


def send(page, text):
    page.locator("#composer textarea").fill(text)
    page.locator("#composer textarea").press("Enter")


def my_tick(page, text):
    return page.locator("#messages .msg.mine").filter(has=body(page, text)).locator(".ticks")


def test_two_users_chat_reload_and_a_server_killed_mid_conversation(server, browser):
    ana, bo = new_page(browser), new_page(browser)
    ana.goto(server.url)
    expect(ana.locator("#signin-form")).to_be_visible()
    ana.locator("#signin-form [name=user]").fill("1")
    ana.locator("#signin-form [name=name]").fill("Ana")
    shot(ana, "signin")
    sign_in(ana, server.url, server.url, 1, "Ana")
    sign_in(bo, server.url, server.url, 2, "Bo")

    # Ana starts a direct conversation with Bo and writes.
    ana.locator("#new-direct [name=peer]").fill("2")
    ana.locator("#new-direct button").click()
    expect(ana.locator("#conv-title")).to_have_text("Bo")
    send(ana, "hello Bo")
    expect(bodies(ana, "hello Bo")).to_have_count(1)
    expect(my_tick(ana, "hello Bo")).to_have_attribute("data-state", re.compile("sent|delivered"))

    # Bo's list shows it unread, with its preview; his device acks DELIVERED.
    item = conv_item(bo, "Ana")
    expect(item.locator(".unread")).to_have_text("1")
    expect(item.locator(".conv-preview")).to_have_text("hello Bo")
    expect(my_tick(ana, "hello Bo")).to_have_attribute("data-state", "delivered")
    shot(bo, "unread")

    # Bo opens it: READ, Ana's ticks turn.
    item.click()
    expect(bodies(bo, "hello Bo")).to_have_count(1)
    expect(my_tick(ana, "hello Bo")).to_have_attribute("data-state", "read")
    expect(item.locator(".unread")).to_have_count(0)

    # Typing, then presence, then Bo's answer.
    bo.locator("#composer textarea").press_sequentially("hi An", delay=30)
    expect(ana.locator("#typing")).to_have_text("Bo is typing…")
    expect(ana.locator("#conv-sub")).to_have_text("online")
    shot(ana, "typing")
    bo.locator("#composer textarea").press_sequentially("a!", delay=30)
    bo.locator("#composer textarea").press("Enter")
    expect(bodies(ana, "hi Ana!")).to_have_count(1)
    expect(ana.locator("#typing")).to_have_text("")

    # A group, and its membership.
    ana.locator("#new-group [name=name]").fill("team")
    ana.locator("#new-group [name=members]").fill("2")
    ana.locator("#new-group button").click()
    expect(ana.locator("#conv-title")).to_have_text("team")
    send(ana, "welcome to the team")
    expect(conv_item(bo, "team").locator(".conv-preview")).to_have_text("welcome to the team")
    ana.locator("#members-toggle").click()
    ana.locator("#add-member [name=user]").fill("3")
    ana.locator("#add-member button").click()
    expect(ana.locator("#member-list li")).to_have_count(3)
    expect(ana.locator("#conv-sub")).to_have_text(re.compile("^3 members"))
    expect(bodies(ana, "Ana added user 3")).to_have_count(1)
    shot(ana, "group")
    ana.locator("#members-toggle").click()
    # Bo leaves: the group leaves his list, Ana sees him go.
    conv_item(bo, "team").click()
    bo.locator("#members-toggle").click()
    expect(bo.locator("#member-list li")).to_have_count(3)
    bo.locator("#leave").click()
    expect(conv_item(bo, "team")).to_have_count(0)
    expect(bodies(ana, "Bo left")).to_have_count(1)
    expect(ana.locator("#member-list li")).to_have_count(2)
    conv_item(bo, "Ana").click()

    # Reload keeps everything, once.
    conv_item(ana, "Bo").click()
    expect(bodies(ana, "hi Ana!")).to_have_count(1)
    ana.reload()
    online(ana)
    conv_item(ana, "Bo").click()
    for text in ["hello Bo", "hi Ana!"]:
        expect(bodies(ana, text)).to_have_count(1)
    expect(conv_item(ana, "team")).to_have_count(1)
    shot(ana, "conversation")

    # The server dies mid-conversation. Both write while it is down; the
    # sends wait (pending) and go out, once, when it is back.
    server.kill9()
    expect(ana.locator("#status")).not_to_have_attribute("data-state", "online")
    send(ana, "are you there?")
    send(bo, "still here")
    expect(my_tick(ana, "are you there?")).to_have_attribute("data-state", "pending")
    server.start()
    online(ana)
    online(bo)
    for page in (ana, bo):
        for text in ["hello Bo", "hi Ana!", "are you there?", "still here"]:
            expect(bodies(page, text)).to_have_count(1)
    try:
        expect(my_tick(ana, "are you there?")).to_have_attribute("data-state", "read")
    except AssertionError:
        for p in (ana, bo):
            print(p.evaluate("""() => JSON.stringify({cursor: missive.store.cursor, convs: [...missive.store.convs.values()].map(c => [c.conv, c.last_seq, c.read, c.delivered]),
              rcpts: [...missive.store.receipts].map(([c, m]) => [c, [...m]]), msgs: [...missive.store.messages].map(([c, m]) => [c, [...m.keys()]]), vis: document.visibilityState, online: missive.session.online})"""))
        raise
    # And after both reload, still once each, in order.
    for page in (ana, bo):
        page.reload()
        online(page)
    expect(conv_item(bo, "Ana")).to_have_count(1)
    expect(conv_item(bo, "team")).to_have_count(0)
    conv_item(ana, "Bo").click()
    expect(ana.locator("#messages .msg .body")).to_have_count(4)
    # Once each, in the conversation's order (the two sent while the
    # server was down in whichever order it took them).
    shown = ana.locator("#messages .msg .body").all_inner_texts()
    assert shown[:2] == ["hello Bo", "hi Ana!"] and sorted(shown[2:]) == ["are you there?", "still here"], shown
    seqs = [int(s) for s in ana.locator("#messages .msg").evaluate_all("l => l.map(e => e.dataset.seq)")]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4, seqs
    assert ana.errors == [] and bo.errors == [], (ana.errors, bo.errors)


def test_history_pages_back_on_scroll(server, browser):
    # A member who joins a group with shared history holds none of its
    # older messages (they were never in their stream): the page reads
    # them from history, a page at a time, as the reader scrolls up.
    cy = server.token(4)
    conv = server.call("POST", "/v1/conversations", {"kind": "group", "name": "archive", "members": ["6"]},
                       token=cy)["conv"]
    for i in range(1, 121):
        server.call("POST", f"/v1/conversations/{conv}/messages",
                    {"client_msg_id": f"page-{i}", "body": f"message {i}"}, token=cy)
    server.call("POST", f"/v1/conversations/{conv}/members", {"add": ["5"]}, token=cy)
    page = new_page(browser)
    sign_in(page, server.url, server.url, 5, "Dee")
    conv_item(page, "archive").click()
    expect(bodies(page, "message 120")).to_have_count(1)
    expect(bodies(page, "message 1")).to_have_count(0)
    for _ in range(20):
        if page.locator("#messages .start").count():
            break
        page.locator("#messages").evaluate("e => e.scrollTop = 0")
        page.wait_for_timeout(300)
    expect(page.locator("#messages .start")).to_have_count(1)
    expect(page.locator("#messages .msg:not(.system)")).to_have_count(120)
    expect(bodies(page, "message 1")).to_have_count(1)
    seqs = [int(s) for s in page.locator("#messages .msg").evaluate_all("l => l.map(e => e.dataset.seq)")]
    assert seqs == list(range(1, len(seqs) + 1)), seqs


def test_search_finds_a_message_and_opens_its_conversation(server, browser):
    # Messages sent as text are found by a word's beginning, with the match
    # marked in the snippet; a hit opens its conversation; a conversation
    # the reader is not in gives nothing.
    fay = server.token(7)
    conv = server.call("POST", "/v1/conversations", {"kind": "group", "name": "reports", "members": ["8"]},
                       token=fay)["conv"]
    other = server.call("POST", "/v1/conversations", {"kind": "group", "name": "private", "members": ["9"]},
                        token=fay)["conv"]
    for i, (c, text) in enumerate([(conv, "The quarterly Report is ready"), (conv, "lunch at noon"),
                                   (other, "quarterly numbers, not for Gus")]):
        server.call("POST", f"/v1/conversations/{c}/messages", {"client_msg_id": f"s-{i}", "body": text}, token=fay)
    page = new_page(browser)
    sign_in(page, server.url, server.url, 8, "Gus")
    page.locator("#search [name=q]").fill("quart")
    page.locator("#search button").click()
    hits = page.locator("#search-results .hit")
    expect(hits).to_have_count(1)
    expect(hits.locator(".snippet")).to_have_text("The quarterly Report is ready")
    expect(hits.locator("mark")).to_have_text("quarterly")
    shot(page, "search")
    hits.click()
    expect(page.locator("#search-results")).to_be_hidden()
    expect(page.locator("#conv-title")).to_have_text("reports")
    expect(bodies(page, "The quarterly Report is ready")).to_have_count(1)
    page.locator("#search [name=q]").fill("nothing-like-this")
    page.locator("#search button").click()
    expect(page.locator("#search-results .hit.none")).to_have_text("No messages found.")
    assert not page.errors, page.errors


def png(width, height):
    """An RGB PNG of a colour gradient, made here (zlib and struct only)."""
    import struct
    import zlib

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 128))
        for y in range(height)
    )
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_a_picture_and_a_file_are_sent_and_shown_through_signed_urls(server, browser):
    # Hal attaches a picture and a text file; Ivy sees the picture (its
    # 320-pixel thumbnail, loaded through a signed URL) and a link that
    # downloads the file's exact bytes; the list previews name them.
    hal = server.token(10)
    conv = server.call("POST", "/v1/conversations", {"kind": "group", "name": "photos", "members": ["11"]},
                       token=hal)["conv"]
    a, b = new_page(browser), new_page(browser)
    sign_in(a, server.url, server.url, 10, "Hal")
    sign_in(b, server.url, server.url, 11, "Ivy")
    conv_item(a, "photos").click()
    notes = "meeting notes\n" * 50
    a.locator("#attach-file").set_input_files(
        files=[{"name": "sunset.png", "mimeType": "image/png", "buffer": png(400, 300)}])
    expect(a.locator("#messages .msg.mine .media-image")).to_have_count(1)
    a.locator("#attach-file").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": notes.encode()}])
    expect(a.locator("#messages .msg.mine .media-file")).to_have_count(1)
    expect(conv_item(b, "photos").locator(".conv-preview")).to_have_text("File: notes.txt")
    conv_item(b, "photos").click()
    img = b.locator("#messages .msg.theirs .media-image")
    expect(img).to_have_attribute("src", re.compile(r"/thumbnail/320\?exp=\d+&sig="))
    b.wait_for_function("() => { const i = document.querySelector('#messages .media-image');"
                        " return i && i.complete && i.naturalWidth > 0; }")
    assert img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [320, 240]
    link = b.locator("#messages .msg.theirs .media-file")
    expect(link).to_have_text("notes.txt")
    expect(link).to_have_attribute("href", re.compile(r"sig="))
    got = b.request.get(link.get_attribute("href"))
    assert got.status == 200 and got.body() == notes.encode(), got.status
    shot(b, "media")
    assert not a.errors and not b.errors, (a.errors, b.errors)


def test_a_listed_origin_works_and_another_is_refused(server, browser, origins):
    listed, unlisted = origins
    token = server.token(1, device=2)

    ok = new_page(browser)
    ok.goto(listed.page(server.url))
    form = ok.locator("#signin-form")
    expect(form.locator("[name=server]")).to_have_value(server.url)
    form.locator("[name=token]").fill(token)
    form.locator("button[type=submit]").click()
    online(ok)
    expect(conv_item(ok, "Bo")).to_have_count(1)
    conv_item(ok, "Bo").click()
    expect(bodies(ok, "hello Bo")).to_have_count(1)

    refused = new_page(browser)
    refused.goto(unlisted.page(server.url))
    form = refused.locator("#signin-form")
    form.locator("[name=token]").fill(token)
    form.locator("button[type=submit]").click()
    # The browser refuses to hand the page an answer without CORS headers.
    expect(refused.locator("#signin-error")).to_contain_text("cannot reach")
    expect(refused.locator("#chat")).to_be_hidden()
    # Not even a WebSocket: the server refuses the upgrade for that origin.
    outcome = refused.evaluate(
        """(server) => new Promise((done) => {
             const ws = new WebSocket(server.replace('http', 'ws') + '/v1/ws');
             ws.onopen = () => done('open');
             ws.onerror = () => done('refused');
           })""",
        server.url,
    )
    assert outcome == "refused"
