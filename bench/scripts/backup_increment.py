#!/usr/bin/env python3
# How much an incremental backup (`missivectl backup --base`) writes, on a
# chat-shaped dataset: 400 users, 2 000 group conversations of 4, MESSAGES
# messages spread Zipf-like (exponent 0.9) over the conversations, 20 files
# of 512 KiB; a full backup; then "a day" (NEW messages in 100 of the
# conversations and one more file) and an incremental backup on the full
# one; then NEW messages spread Zipf-like over every conversation and an
# incremental backup on the day's; then a full one for comparison. Prints
# each backup's time and its bytes written and linked. Needs a running
# missived with admin secret ADMIN_SECRET and send limits above ~2 000/s
# (docs/benchmarks.md "Incremental backups"). Only the standard library.
#
#   bench/scripts/backup_increment.py HOST PORT ADMIN_SECRET MISSIVECTL OUT_DIR [MESSAGES [NEW]]
import concurrent.futures as cf
import http.client, json, os, random, subprocess, sys, threading, time

host, port, secret, ctl, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
MESSAGES = int(sys.argv[6]) if len(sys.argv) > 6 else 100_000
NEW = int(sys.argv[7]) if len(sys.argv) > 7 else 5_000
USERS, CONVS, FILES = 400, 2_000, 20
random.seed(7)
local = threading.local()


def conn():
    c = getattr(local, "c", None)
    if c is None:
        c = local.c = http.client.HTTPConnection(host, port, timeout=30)
    return c


def req(method, path, body=None, token=None, headers=None, raw=None):
    h = dict(headers or {})
    if token:
        h["authorization"] = "Bearer " + token
    if body is not None:
        h["content-type"] = "application/json"
        raw = json.dumps(body).encode()
    for _ in range(20):
        try:
            c = conn()
            c.request(method, path, body=raw, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, r.getheader("location"), (json.loads(data) if data and data[:1] in b"{[" else None)
        except (http.client.HTTPException, OSError):
            local.c = None
            time.sleep(0.05)
    raise SystemExit(f"{method} {path}: no answer")


def token(u):
    s, _, v = req("POST", "/v1/admin/tokens", {"user": u, "device": 1}, headers={"x-admin-secret": secret})
    assert s == 200, (s, v)
    return v["token"]


tokens = {u: token(u) for u in range(1, USERS + 1)}
convs = []
for i in range(CONVS):
    members = random.sample(range(1, USERS + 1), 4)
    s, _, v = req("POST", "/v1/conversations", {"kind": "group", "name": f"g{i}",
                  "members": [str(m) for m in members[1:]]}, token=tokens[members[0]])
    assert s == 201, (s, v)
    convs.append((v["conv"], members))
weights = [1.0 / (i + 1) ** 0.9 for i in range(CONVS)]
active = None


def send(i, tag):
    conv, members = random.choice(active) if active else random.choices(convs, weights)[0]
    body = f"{tag} message {i} " + "lorem ipsum dolor sit amet " * random.randint(1, 4)
    for _ in range(20):
        s, _, v = req("POST", f"/v1/conversations/{conv}/messages",
                      {"client_msg_id": f"{tag}{i}", "body": body}, token=tokens[random.choice(members)])
        if s == 200:
            return
        time.sleep(0.05)
    raise SystemExit(f"send failed: {s} {v}")


def load(n, tag):
    t = time.time()
    with cf.ThreadPoolExecutor(24) as ex:
        list(ex.map(lambda i: send(i, tag), range(n)))
    print(f"{n} messages ({tag}) in {time.time() - t:.1f} s", flush=True)


def upload():
    data = os.urandom(512 << 10)
    tok = tokens[random.randint(1, USERS)]
    h = {"tus-resumable": "1.0.0"}
    s, loc, v = req("POST", "/v1/media/uploads", token=tok, headers=dict(h, **{"upload-length": str(len(data))}))
    assert s == 201, (s, v)
    s, _, v = req("PATCH", loc, token=tok, raw=data, headers=dict(
        h, **{"upload-offset": "0", "content-type": "application/offset+octet-stream"}))
    assert s == 204, (s, v)


def backup(name, base=None):
    args = [ctl, "--json", "backup", "--url", f"http://{host}:{port}", "--out", f"{out}/{name}"]
    if base:
        args += ["--base", f"{out}/{base}"]
    t = time.time()
    p = subprocess.run(args, env=dict(os.environ, MISSIVE_ADMIN_SECRET=secret), capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stderr)
    m = json.loads(p.stdout)
    took = time.time() - t
    chunks = sum(x["chunks"] for x in m["shards"])
    print(f"{name:6} {took:5.1f} s  bytes {m['bytes']:>11,}  written {m['written_bytes']:>11,} "
          f"({m['written_bytes'] / m['bytes']:.0%})  linked {m['linked_bytes']:>11,}  chunks {chunks}", flush=True)
    for phase in (0, 1):
        sh = [x for x in m["shards"] if x["phase"] == phase]
        print(f"         phase {phase}: bytes {sum(x['bytes'] for x in sh):>11,}  "
              f"written {sum(x['written_bytes'] for x in sh):>11,}  chunks written {sum(x['written'] for x in sh)}")


load(MESSAGES, "a")
for _ in range(FILES):
    upload()
backup("full")
active = random.sample(convs, 100)
load(NEW, "day")
upload()
backup("day", "full")
active = None
load(NEW, "zipf")
backup("zipf", "day")
backup("full2")
du = subprocess.run(["du", "-sbc"] + [f"{out}/{d}" for d in ("full", "day", "zipf")], capture_output=True, text=True)
print("disk, the three linked backups together:", du.stdout.strip().splitlines()[-1])
