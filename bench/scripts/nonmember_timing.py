#!/usr/bin/env python3
# Whether a non-member can tell a conversation that exists from one that
# does not: Eve sends to Alice and Bob's direct conversation (it exists)
# and to an id nobody created, interleaved in random order on one
# keep-alive connection, and we compare the answers (status, code,
# message) and their latency. Needs a running missived with an admin
# secret and send limits high enough for the requests (docs/benchmarks.md).
#
#   bench/scripts/nonmember_timing.py HOST PORT ADMIN_SECRET [N]
import http.client, json, sys, time, statistics, random
host, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
N = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
def req(c, method, path, body=None, token=None, auth=None):
    h = {"content-type": "application/json"}
    if token: h["authorization"] = "Bearer " + token
    if auth: h["x-admin-secret"] = auth
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse(); data = r.read()
    return r.status, (json.loads(data) if data else None)
c = http.client.HTTPConnection(host, port)
def token(user):
    s, v = req(c, "POST", "/v1/admin/tokens", {"user": str(user), "device": "1"}, auth=secret)
    assert s == 200, (s, v); return v["token"]
alice, bob, eve = token(1), token(2), token(3)
s, v = req(c, "POST", "/v1/conversations", {"kind": "direct", "peer": "2"}, token=alice)
existing = v["conv"]
req(c, "POST", f"/v1/conversations/{existing}/messages", {"client_msg_id": "x", "body": "hi"}, token=alice)
# A conversation id that does not exist: a random 64-bit id.
missing = str(random.getrandbits(63))
times = {"exists": [], "missing": []}
codes = {"exists": set(), "missing": set()}
for i in range(N):
    for name, conv in random.sample([("exists", existing), ("missing", missing)], 2):
        t = time.perf_counter()
        s, v = req(c, "POST", f"/v1/conversations/{conv}/messages", {"client_msg_id": f"e{i}", "body": "x"}, token=eve)
        times[name].append((time.perf_counter() - t) * 1e6)
        codes[name].add((s, v["error"]["code"], v["error"]["message"]))
for name in times:
    ts = sorted(times[name])
    print(f"{name:8s} n={len(ts)} median {statistics.median(ts):.0f} us p90 {ts[int(len(ts)*0.9)]:.0f} us answers {codes[name]}")
