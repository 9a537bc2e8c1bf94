#!/usr/bin/env python3
"""Read-your-writes latency over HTTP: one `set_tag` write (POST /v1/facts),
then the decision on it (POST /v1/is_authorized with Orgwarden-Min-Revision
set to the write's revision), timed end to end on one keep-alive connection
each. Prints `RESULT n p50_us p99_us max_us`.

usage: ryw.py HOST:PORT TOKEN N [ORGS USERS WORKSPACES]"""
import http.client, json, random, sys, time

host, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
orgs, users, workspaces = (int(x) for x in (sys.argv[4:7] or (1000, 38, 50)))
roles = ["viewer", "runner", "developer", "owner", "worker"]
w = http.client.HTTPConnection(host)
d = http.client.HTTPConnection(host)
rng = random.Random(5)
times = []
for i in range(n):
    o = rng.randrange(orgs)
    user, ws = f"org{o}-u{rng.randrange(1, users)}", f"org{o}-ws{rng.randrange(workspaces)}"
    body = json.dumps({"operations": [{"op": "set_tag", "uid": {"type": "Prefect::User", "id": user},
                       "key": ws, "value": {"__entity": {"type": "Prefect::Role", "id": rng.choice(roles)}}}]})
    ask = json.dumps({"principal": f'Prefect::User::"{user}"', "action": "see_flows",
                      "resource": f'Prefect::Workspace::"{ws}"'})
    t0 = time.perf_counter()
    w.request("POST", "/v1/facts", body, {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    r = w.getresponse(); out = r.read()
    if r.status != 200:
        sys.exit(f"write {i}: {r.status} {out[:200]!r}")
    rev = json.loads(out)["revision"]
    d.request("POST", "/v1/is_authorized", ask, {"Content-Type": "application/json", "Orgwarden-Min-Revision": str(rev)})
    r = d.getresponse(); out = r.read()
    if r.status != 200 or int(r.getheader("Orgwarden-Revision", "0")) < rev:
        sys.exit(f"decision {i}: {r.status} {r.getheader('Orgwarden-Revision')} < {rev}: {out[:200]!r}")
    times.append(time.perf_counter() - t0)
times.sort()
at = lambda p: times[min(len(times) - 1, int(len(times) * p))] * 1e6
print(f"RESULT {len(times)} p50_us {at(0.5):.0f} p99_us {at(0.99):.0f} max_us {times[-1]*1e6:.0f}")
