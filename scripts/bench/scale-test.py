#!/usr/bin/env python3
"""The scale test's orchestration: `scripts/bench.sh scale-test` runs it (scale-test.sh says what
it measures and gives it its settings and binaries through the environment).

Starts etcd, s3s-fs (its debug log counts every request it parses), a 1-shard baseline gateway,
GATEWAYS gateways, a compactor daemon and then one more gateway, all in a temporary directory
on loopback ports PORT_BASE + offset (etcd 0, its peer 1, S3 2, compactor metrics 3, baseline
gateway 9, gateways 10 + i); writes the markdown record to OUT and prints it. Every process it
started is stopped on exit, in reverse start order.

Ownership is checked by polling GET /v1/cluster on every gateway every 0.2 s until the shard
map is the rendezvous placement over the members in every view:
  members_s  every view lists exactly the members;
  owned_s    also: every shard has an owner, every owner is a listed member, and every view
             has the same owner and epoch for every shard;
  placed_s   also: every owner is the one rendezvous hashing picks (settled).

The rendezvous rule is re-implemented here as an independent check of the gateways' placement
(src/placement.rs): the winner of shard s is the member m with the highest
(xxh3_64("{m}/{s}"), m). XXH3 is implemented only for 4..8-byte inputs, which is what node ids
like g1..g99 and shards below 10000 give.
"""

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

MASK = (1 << 64) - 1
# Bytes 8..24 of XXH3's default secret, as two little-endian u64s, xored.
FLIP = 0x1CAD21F72C81017C ^ 0xDB979083E96DD4DE
PRIME = 0x9FB21C651E98DF25


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & MASK


def xxh3_64(data):
    """XXH3-64 with seed 0, for inputs of 4 to 8 bytes."""
    if not 4 <= len(data) <= 8:
        raise ValueError(f"xxh3_64 here handles 4..8 bytes, got {len(data)}")
    lo = int.from_bytes(data[:4], "little")
    hi = int.from_bytes(data[-4:], "little")
    v = ((hi + (lo << 32)) & MASK) ^ FLIP
    v ^= rotl(v, 49) ^ rotl(v, 24)
    v = (v * PRIME) & MASK
    v ^= (v >> 35) + len(data)
    v = (v * PRIME) & MASK
    return v ^ (v >> 28)


# Known answer, also asserted in src/shard.rs.
assert xxh3_64(b"hello") == 0x9555E8555C62DCFD


def hrw(shard, members):
    return max(members, key=lambda m: (xxh3_64(f"{m}/{shard}".encode()), m))


def fetch(url, timeout=3.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def view(url):
    """(member ids, {shard: (owner, epoch)}, shard count) as this gateway sees them."""
    v = json.loads(fetch(url + "/v1/cluster"))
    members = frozenset(m["id"] for m in v["members"])
    owners = {s["shard"]: (s["owner"], s["epoch"]) for s in v["shards"] if s["owner"] is not None}
    return members, owners, v["shard_count"]


def settle(urls, members, start, timeout, prev=None):
    urls, want = urls.split(","), frozenset(members.split(","))
    start, deadline = float(start), time.time() + float(timeout)
    placement = None
    out = {"members_s": None, "owned_s": None, "placed_s": None, "polls": 0}
    while True:
        now = time.time()
        if now > deadline:
            out["error"] = f"not settled after {timeout} s"
            break
        out["polls"] += 1
        try:
            views = [view(u) for u in urls]
        except OSError as e:  # a gateway still starting
            out["last_error"] = str(e)
            time.sleep(0.2)
            continue
        count = views[0][2]
        if placement is None:
            placement = {s: hrw(s, sorted(want)) for s in range(count)}
        t = round(now - start, 2)
        if all(m == want for m, _, _ in views):
            out["members_s"] = out["members_s"] or t
            first = views[0][1]
            owned = (
                len(first) == count
                and all(o in want for o, _ in first.values())
                and all(o == first for _, o, _ in views)
            )
            if owned:
                out["owned_s"] = out["owned_s"] or t
                if all(first[s][0] == placement[s] for s in range(count)):
                    out["placed_s"] = t
                    out["owners"] = {str(s): first[s][0] for s in range(count)}
                    break
        time.sleep(0.2)
    if "owners" in out:
        per = {}
        for o in out["owners"].values():
            per[o] = per.get(o, 0) + 1
        out["shards_per_member"] = dict(sorted(per.items()))
        if prev:
            before = prev["owners"]
            old = sorted(set(before.values()))
            out["moved"] = sum(before[s] != o for s, o in out["owners"].items())
            out["expected_moved"] = sum(
                hrw(int(s), old) != o for s, o in out["owners"].items()
            )
    return out


def scrape(urls, metric):
    out = {}
    for u in urls.split(","):
        text = fetch(u + "/metrics")
        per = {"_t": time.time()}  # when this gateway's counters were read
        for line in text.splitlines():
            if line.startswith(metric + "{") or line.startswith(metric + " "):
                labels, _, value = line.rpartition(" ")
                op = labels.split('op="', 1)[1].split('"', 1)[0] if 'op="' in labels else ""
                per[op] = per.get(op, 0) + float(value)
        out[u] = per
    return out



ANSI = re.compile(r"\x1b\[[0-9;]*m")
ENV = os.environ
GATEWAYS, SHARDS = int(ENV["GATEWAYS"]), int(ENV["SHARDS"])
IDLE_SECS, BENCH_SECS = int(ENV["IDLE_SECS"]), int(ENV["BENCH_SECS"])
MANIFEST_POLL, COMPACTOR_POLL = ENV["MANIFEST_POLL"], ENV["COMPACTOR_POLL"]
PORT_BASE, TIMEOUT, OUT = int(ENV["PORT_BASE"]), int(ENV["TIMEOUT"]), ENV["OUT"]
GATEWAY, COMPACTOR, TESSERA, S3S_FS = (ENV[k] for k in ("GATEWAY", "COMPACTOR", "TESSERA", "S3S_FS"))
TCK = os.sysconf("SC_CLK_TCK")


def port(offset):
    return PORT_BASE + offset


def url(offset):
    return f"http://127.0.0.1:{port(offset)}"


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_ticks(pid):
    """User + system CPU time the process has used, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rnd(x, d):
    """jq's (x * d | round) / d."""
    return math.floor(x * d + 0.5) / d


def num(x):
    """A number as jq prints it: no trailing .0."""
    if x is None:
        return "null"
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def mib(kib):
    return f"{kib / 1024:.1f}"


class Cluster:
    """The run directory and every process started, stopped in reverse order by close()."""

    def __init__(self):
        self.run = Path(tempfile.mkdtemp(prefix="tessera-scale."))
        self.procs = []
        self.s3_counts, self.s3_lock = {"total": 0}, threading.Lock()

    def start(self, name, args, stdout=None, env=None):
        out = stdout if stdout is not None else open(self.run / f"{name}.out", "w")
        p = subprocess.Popen(args, stdout=out, stderr=open(self.run / f"{name}.log", "w"),
                             env=env)
        self.procs.append(p)
        return p

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if ENV.get("KEEP_RUN") == "1":
            print(f"run directory kept: {self.run}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(self.run)])

    def start_s3(self):
        """s3s-fs logs one "resolved route, op: ..." event per request it parsed at debug
        level: a thread counts them by operation, under "total" all of them."""
        (self.run / "s3" / "tessera").mkdir(parents=True)
        p = self.start("s3", [S3S_FS, "--host", "127.0.0.1", "--port", str(port(2)),
                              "--access-key", "devkey", "--secret-key", "devsecret",
                              str(self.run / "s3")],
                       stdout=subprocess.PIPE, env={**ENV, "RUST_LOG": "s3s::ops=debug"})

        def count():
            for line in p.stdout:
                if b"resolved route" in line:
                    m = re.search(rb"op: ([A-Za-z0-9]+)", line)
                    with self.s3_lock:
                        self.s3_counts["total"] += 1
                        if m:
                            op = m.group(1).decode()
                            self.s3_counts[op] = self.s3_counts.get(op, 0) + 1

        threading.Thread(target=count, daemon=True).start()
        return p

    def s3_requests(self):
        with self.s3_lock:
            return dict(self.s3_counts)


def wait_port(p):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", p), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"port {p} did not open")


def tail(path, n):
    return "\n".join(ANSI.sub("", Path(path).read_text(errors="replace")).splitlines()[-n:])


def idle_window(c, procs, urls):
    """Waits 5 s, then measures IDLE_SECS without client load: CPU share and RSS of each process
    in procs (name -> pid), every gateway's object-store requests/s by operation, and the S3
    server's requests/s."""
    time.sleep(5)
    tc0 = time.time()
    c0 = {n: cpu_ticks(pid) for n, pid in procs.items()}
    a = scrape(urls, "tessera_object_store_requests_total")
    s0, ts0 = c.s3_requests(), time.time()
    time.sleep(IDLE_SECS)
    s1, ts1 = c.s3_requests(), time.time()
    b = scrape(urls, "tessera_object_store_requests_total")
    out_procs = {}
    for n, pid in procs.items():
        w = time.time() - tc0
        out_procs[n] = {"cpu": rnd((cpu_ticks(pid) - c0[n]) / TCK / w, 1000), "rss_kib": rss_kib(pid)}
    gw = {}
    for u, after in b.items():  # each gateway's rate between its own two scrapes
        before = a[u]
        dt = after["_t"] - before["_t"]
        gw[u] = {op: (v - before.get(op, 0)) / dt for op, v in after.items() if op != "_t"}
    w = ts1 - ts0
    out = {
        "window_s": w, "load": loadavg(), "procs": out_procs, "gateways": gw,
        "gateway_total": sum(v for ops in gw.values() for v in ops.values()),
        "s3_total": (s1["total"] - s0["total"]) / w,
        "s3_ops": {op: (v - s0.get(op, 0)) / w for op, v in s1.items() if op != "total"},
    }
    cpus = ", ".join(f"{n} {num(p['cpu'])}" for n, p in out_procs.items())
    print(f"idle ({math.floor(w)} s): gateways {math.floor(out['gateway_total'])} req/s, "
          f"S3 server {math.floor(out['s3_total'])} req/s; CPU (cores): {cpus}", flush=True)
    return out


def idle_rows(w, own, base):
    """Table rows of an idle window: per gateway, all gateways, the compactor (if running), the
    S3 server and etcd. Per-shard RSS is above the 1-shard baseline."""
    per, p = own["shards_per_member"], w["procs"]
    g = []
    for gid, v in p.items():
        if re.fullmatch(r"g[0-9]+", gid):
            req = sum(w["gateways"][url(10 + int(gid[1:]))].values())
            g.append({"id": gid, "s": per[gid], "rss": v["rss_kib"], "cpu": v["cpu"], "req": req})
    jmib = lambda k: num(rnd(k / 1024, 10))  # noqa: E731
    rows = []
    for x in g:
        per_shard = num(rnd((x["rss"] - base) / (x["s"] - 1), 1)) if x["s"] > 1 else "-"
        rows.append(f"| {x['id']} | {x['s']} | {jmib(x['rss'])} | {per_shard} | {num(x['cpu'])} "
                    f"| {num(rnd(x['req'], 10))} | {num(rnd(x['req'] / x['s'], 100))} |")
    rss, k, gt = sum(x["rss"] for x in g), len(g), w["gateway_total"]
    rows.append(f"| **all gateways** | {SHARDS} | {jmib(rss)} (mean {jmib(rss / k)}) "
                f"| **{num(rnd((rss - k * base) / (SHARDS - k), 1))}** "
                f"| {num(rnd(sum(x['cpu'] for x in g), 1000))} | {num(rnd(gt, 10))} "
                f"| **{num(rnd(gt / SHARDS, 100))}** |")
    if "compactor" in p:
        cp, extra = p["compactor"], w["s3_total"] - gt
        rows.append(f"| compactor | {SHARDS} | {jmib(cp['rss_kib'])} "
                    f"| {num(rnd(cp['rss_kib'] / SHARDS, 1))} (RSS ÷ shards) | {num(cp['cpu'])} "
                    f"| {num(rnd(extra, 10))} (S3 server − gateways) "
                    f"| {num(rnd(extra / SHARDS, 100))} |")
    s3 = p["s3s-fs"]
    rows.append(f"| s3s-fs (S3 server) | | {jmib(s3['rss_kib'])} | | {num(s3['cpu'])} "
                f"| {num(rnd(w['s3_total'], 10))} served | {num(rnd(w['s3_total'] / SHARDS, 100))} |")
    rows.append(f"| etcd | | {jmib(p['etcd']['rss_kib'])} | | {num(p['etcd']['cpu'])} | | |")
    return "\n".join(rows)


def by_op(w):
    ops = {}
    for rates in w["gateways"].values():
        for op, v in rates.items():
            ops.setdefault(op, []).append(v)
    return ", ".join(f"{op} {num(rnd(sum(v), 10))}" for op, v in sorted(ops.items())
                     if any(x > 0 for x in v))


def s3_by_op(w):
    ops = sorted(((op, v) for op, v in w["s3_ops"].items() if v > 0), key=lambda x: -x[1])
    return ", ".join(f"{op} {num(rnd(v, 10))}" for op, v in ops)


def bench_row(path, workload):
    try:
        r = json.loads(Path(path).read_text())
        errors = f"{r['errors']}" + (f" {json.dumps(r['errors_by_kind'], separators=(',', ':'))}"
                                     if r["errors"] > 0 else "")
        o = r["object_store"]
        return (f"| {r['workload']} | 64 | {round(r['ops_per_sec'])} | {num(r['latency_ms']['p50'])} "
                f"| {num(r['latency_ms']['p99'])} | {errors} | {num(rnd(o['requests_per_1k_ops'], 10))} "
                f"({num(rnd(o['puts_per_1k_ops'], 10))}) |")
    except (OSError, ValueError, KeyError, TypeError):
        text = Path(path).read_text(errors="replace")[-200:].translate(str.maketrans("\n|", "  "))
        return f"| {workload} | 64 | failed: {text} | | | | |"


def scale_test(c):
    for p in [0, 1, 2, 3, 9, *range(11, 10 + GATEWAYS + 2)]:
        try:
            socket.create_connection(("127.0.0.1", port(p)), 0.5).close()
            sys.exit(f"port {port(p)} is in use; set PORT_BASE")
        except OSError:
            pass
    load_before = ENV["LOAD_BEFORE"]
    print(f"==> starting etcd and s3s-fs (load average before: {load_before})", flush=True)
    etcd_url, etcd_peer = url(0), url(1)
    etcd = c.start("etcd", ["etcd", "--name", "scale", "--data-dir", str(c.run / "etcd"),
                            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                            "--listen-peer-urls", etcd_peer, "--initial-advertise-peer-urls",
                            etcd_peer, "--initial-cluster", f"scale={etcd_peer}"])
    s3 = c.start_s3()
    wait_port(port(0))
    wait_port(port(2))
    ENV.update(AWS_ACCESS_KEY_ID="devkey", AWS_SECRET_ACCESS_KEY="devsecret", AWS_REGION="us-east-1")
    s3_url = url(2)
    config = c.run / "gateway.toml"
    config.write_text(f'[storage]\nmanifest_poll_interval = "{MANIFEST_POLL}"\n')

    print("==> baseline: one cluster-mode gateway owning 1 shard (its own cluster and prefix)", flush=True)
    base = c.start("baseline", [GATEWAY, "--config", str(config), "--listen", f"127.0.0.1:{port(9)}",
                                "--shards", "1", "--store", "s3://tessera/baseline", "--s3-endpoint",
                                s3_url, "--etcd", etcd_url, "--cluster", "baseline", "--node-id", "base"])
    wait_port(port(9))
    settle(url(9), "base", time.time(), TIMEOUT)
    time.sleep(5)
    base_rss = rss_kib(base.pid)
    base.terminate()
    base.wait()
    print(f"baseline RSS: {mib(base_rss)} MiB", flush=True)

    members = ",".join(f"g{i}" for i in range(1, GATEWAYS + 1))
    urls = ",".join(url(10 + i) for i in range(1, GATEWAYS + 1))
    gw = {}

    def start_gateway(i):
        gw[i] = c.start(f"gw{i}", [GATEWAY, "--config", str(config), "--listen",
                                   f"127.0.0.1:{port(10 + i)}", "--shards", str(SHARDS), "--store",
                                   "s3://tessera/scale", "--s3-endpoint", s3_url, "--etcd", etcd_url,
                                   "--cluster", "scale", "--node-id", f"g{i}"])

    print(f"==> starting {GATEWAYS} gateways with {SHARDS} shards", flush=True)
    t0 = time.time()
    for i in range(1, GATEWAYS + 1):
        start_gateway(i)
    own = settle(urls, members, t0, TIMEOUT)
    if "error" in own:
        print(json.dumps(own), file=sys.stderr)
        for i in gw:
            print(tail(c.run / f"gw{i}.log", 5), file=sys.stderr)
        sys.exit(1)
    print(json.dumps({k: own.get(k) for k in ("members_s", "owned_s", "placed_s", "shards_per_member")}), flush=True)
    procs = {"etcd": etcd.pid, "s3s-fs": s3.pid, **{f"g{i}": p.pid for i, p in gw.items()}}

    print("==> idle, gateways only (no compactor yet)", flush=True)
    idle_gw = idle_window(c, procs, urls)

    print("==> starting the compactor daemon", flush=True)
    tc = time.time()
    comp = c.start("compactor", [COMPACTOR, "--store", "s3://tessera/scale", "--s3-endpoint", s3_url,
                                 "--etcd", etcd_url, "--cluster", "scale", "--node-id", "c1",
                                 "--metrics-listen", f"127.0.0.1:{port(3)}", "--poll-interval",
                                 COMPACTOR_POLL])
    procs["compactor"] = comp.pid
    claimed = 0
    for _ in range(TIMEOUT * 5):
        if comp.poll() is not None:
            break
        try:
            m = re.search(r"^tessera_compactor_shards_claimed (\S+)$", fetch(url(3) + "/metrics"), re.M)
            claimed = int(float(m.group(1))) if m else 0
        except OSError:
            pass
        if claimed == SHARDS:
            break
        time.sleep(0.2)
    compactor_s = f"{time.time() - tc:.1f}"
    if claimed != SHARDS:
        print(f"the compactor claimed {claimed} of {SHARDS} shards; its log:", file=sys.stderr)
        print(tail(c.run / "compactor.log", 20), file=sys.stderr)
        sys.exit(1)
    print(f"the compactor holds all {SHARDS} shards after {compactor_s} s", flush=True)

    print("==> idle, with the compactor", flush=True)
    idle_all = idle_window(c, procs, urls)

    bench_rows, loaded_rss = [], ""
    if BENCH_SECS > 0:
        print(f"==> bench through the {GATEWAYS} gateways: put, then get (10000 keys preloaded)", flush=True)

        def bench(name, *args):
            out = c.run / f"{name}.json"
            with open(out, "w") as f:
                r = subprocess.run([TESSERA, "--endpoints", urls, "bench", "--keys", "10000",
                                    "--value-size", "100", "--concurrency", "64", "--json", *args],
                                   stdout=f, stderr=subprocess.STDOUT)
            if r.returncode != 0:
                print(f"bench {' '.join(args)} failed: {out.read_text(errors='replace')[-300:]}",
                      file=sys.stderr)

        bench("put", "--workload", "put", "--duration", f"{BENCH_SECS}s", "--warmup", "2s")
        bench("preload", "--workload", "put", "--preload", "--ops", "1", "--warmup", "0s")
        bench("get", "--workload", "get", "--duration", f"{BENCH_SECS}s", "--warmup", "2s")
        for w in ("put", "get"):
            bench_rows.append(bench_row(c.run / f"{w}.json", w))
            print(bench_rows[-1], flush=True)
        loaded_rss = ", ".join(mib(rss_kib(gw[i].pid)) for i in range(1, GATEWAYS + 1))
        time.sleep(3)

    n = GATEWAYS + 1
    print(f"==> adding gateway g{n}", flush=True)
    t9 = time.time()
    start_gateway(n)
    # A rebalance that does not complete is a result too: it is reported, not fatal.
    reb = settle(f"{urls},{url(10 + n)}", f"{members},g{n}", t9, TIMEOUT, own)
    if "error" in reb:
        print(json.dumps(reb), file=sys.stderr)
    print(json.dumps({k: reb.get(k) for k in ("members_s", "owned_s", "placed_s", "moved",
                                               "expected_moved", "shards_per_member")}), flush=True)
    # Open times of the shards the new gateway took over (ownership.rs logs open_ms per shard).
    opens = sorted(int(x) for x in re.findall(r"open_ms=([0-9]+)", ANSI.sub("", (c.run / f"gw{n}.log").read_text(errors="replace"))))
    open_p50 = str(opens[(len(opens) + 1) // 2 - 1]) if opens else ""
    open_max = str(opens[-1]) if opens else ""
    time.sleep(2)
    rss_new = rss_kib(gw[n].pid)
    runtime = int(time.time()) - int(ENV["BENCH_START"])
    load_after = loadavg()

    print(f"==> writing {OUT}", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src", "gateway", "compactor", "cli",
                       "scripts", "Cargo.toml", "Cargo.lock"]).returncode != 0:
        commit += " (with uncommitted changes)"
    machine = subprocess.run(["bash", "-c", "echo \"$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, $(uname -sr)\""],
                             capture_output=True, text=True).stdout.strip()
    etcd_version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.splitlines()[0].replace("etcd Version: ", "")
    reb_v = lambda k: num(reb[k]) if reb.get(k) not in (None, False) else f"not within {TIMEOUT} s"  # noqa: E731
    per_member = ", ".join(f"{k} {v}" for k, v in own["shards_per_member"].items())
    logs = "\n".join(ANSI.sub("", p.read_text(errors="replace")) for p in sorted(c.run.glob("gw*.log"))).splitlines()
    count = lambda s: sum(s in line for line in logs)  # noqa: E731
    cmd = ENV["CMD"]
    md = f"""# Scale test: {SHARDS} shards over {GATEWAYS} gateways on one machine

Produced by `scripts/bench.sh scale-test` (one run; reproduce with the command below). Every
process runs on the one machine listed, on loopback: the gateways, the compactor, etcd, the
S3 server and the load generator share its cores, so times and CPU figures include that
contention. The S3 server is s3s-fs (files on local disk) with its conditional writes made
atomic and its LIST patched to walk only the listed prefix (`scripts/lib/s3s-fs.sh`;
unpatched, every LIST walks the whole bucket and 1024 shards' polling overwhelms it): request
*counts* carry over to S3, latencies do not.

| | |
|---|---|
| machine | {machine} |
| load average (1/5/15 min) | {load_before} before the script started anything (above ~0.5 means other work was running); {idle_gw["load"]} at the end of the first idle window; {load_after} at the end |
| commit | `{commit}` |
| date | {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} |
| command | `{cmd}` (took {runtime // 60} min {runtime % 60} s in all) |
| cluster | {GATEWAYS} gateways (release build; manifest poll {MANIFEST_POLL}, other settings default: flush interval 10 ms, lease TTL 3 s, 32 shard moves at once per placement pass), {SHARDS} shards, 1 `tessera-compactor` daemon (poll {COMPACTOR_POLL}, other settings default: GC every 1 min), 1 etcd {etcd_version} member, s3s-fs 0.14.1 (patched: prefix LIST, atomic conditional writes) |

## Ownership at start-up

All {GATEWAYS} gateway processes were launched at t = 0 on an empty bucket (each shard's
database is created by its first owner); every gateway's `GET /v1/cluster` was polled every
0.2 s.

| milestone | seconds after launch |
|---|---:|
| every view lists all {GATEWAYS} members | {num(own["members_s"])} |
| every shard owned by a live member, all views agree (owner and epoch) | **{num(own["owned_s"])}** |
| every owner is the rendezvous choice (settled) | {num(own["placed_s"])} |

Shards per gateway: {per_member}.
The compactor daemon, started after the first idle window below, held claims on all {SHARDS}
shards {compactor_s} s after it was launched.

## Idle: memory, CPU and object-store requests

Two windows of {IDLE_SECS} s without client load, each after 5 s of quiet: first the gateways
alone, then with the compactor running. RSS is VmRSS (`/proc/PID/status`) at the end of the
window. Baseline: a separate cluster-mode gateway (same binary and settings, its own cluster
and prefix) owning 1 shard had **{mib(base_rss)} MiB** after 5 s idle; per shard = (RSS −
baseline) ÷ (shards owned − 1). CPU = CPU time used in the window ÷ its length (1.0 = one
core busy). Gateways' requests are their `tessera_object_store_requests_total`; the S3
server's are every request it parsed (counted from its debug log). The compactor exports no
request counter: its figure is the S3 server's count minus the gateways'.

### Gateways alone

| process | shards | RSS MiB | per shard KiB | CPU (cores) | object-store req/s | req/s per shard |
|---|---:|---:|---:|---:|---:|---:|
{idle_rows(idle_gw, own, base_rss)}

By operation (all gateways, req/s; `get` includes ranged GETs): {by_op(idle_gw)}. The S3 server
counted {num(rnd(idle_gw["s3_total"], 10))} req/s in this window (a cross-check of the two counts): {s3_by_op(idle_gw)}.

### With the compactor

| process | shards | RSS MiB | per shard KiB | CPU (cores) | object-store req/s | req/s per shard |
|---|---:|---:|---:|---:|---:|---:|
{idle_rows(idle_all, own, base_rss)}

By operation (all gateways, req/s): {by_op(idle_all)}. At the S3 server (gateways and compactor, req/s):
{s3_by_op(idle_all)}.
"""
    if bench_rows:
        rows = "\n".join(bench_rows)
        md += f"""
## Serving at {SHARDS} shards

`tessera bench --endpoints <all {GATEWAYS} gateways> --workload put|get --concurrency 64
--duration {BENCH_SECS}s --warmup 2s --keys 10000 --value-size 100` (get after preloading the
10000 keys), with the compactor running. Client on the same machine. obj req/1k =
object-store requests of all gateways per 1,000 operations (PUTs in brackets).

| workload | concurrency | ops/s | p50 ms | p99 ms | errors | obj req/1k (PUTs) |
|---|---:|---:|---:|---:|---:|---:|
{rows}

Gateways' RSS after the runs (MiB): {loaded_rss}.
"""
    idle_again = " (idle again after the runs above)" if bench_rows else ""
    md += f"""
## Adding a gateway

Gateway g{n} was launched at t = 0 into the settled cluster{idle_again}.

| milestone | seconds after launch |
|---|---:|
| every view lists all {n} members | {reb_v("members_s")} |
| every shard owned and all views agree | {reb_v("owned_s")} |
| every owner is the rendezvous choice over {n} members (rebalance complete) | **{reb_v("placed_s")}** |

"""
    if reb.get("placed_s") is not None:
        moved = reb["moved"]
        md += f"""Shards moved: **{moved}** of {SHARDS} ({100 * moved / SHARDS:.1f}%); rendezvous hashing predicts {reb["expected_moved"]}, the
shards g{n} now wins ({SHARDS}/{n} = {SHARDS // n}). Each was drained and closed by its old owner, then
opened by g{n}: open time p50 {open_p50} ms, max {open_max} ms (g{n}'s log). g{n}'s RSS with
{reb["shards_per_member"].get(f"g{n}")} shards: {mib(rss_new)} MiB.
"""
    else:
        md += f"""**The rebalance did not complete within {TIMEOUT} s** ({reb.get("last_error") or "views never matched the placement"}).
g{n} opened {len(opens)} shards meanwhile (open time p50 {open_p50} ms, max {open_max} ms).
"""
    md += f"""
Events logged by all gateways over the whole run: {count("shard fenced by a newer owner")} shards fenced while owned,
{count("shard reopened")} shard reopens after a storage error, {count("opening acquired shard failed")} failed opens, {count("lease lost")} lease losses.
"""
    Path(OUT).write_text(md)
    print(md, end="")
    print(f"==> done in {runtime} s; wrote {OUT}")


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    c = Cluster()
    try:
        scale_test(c)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        c.close()


if __name__ == "__main__":
    main()
