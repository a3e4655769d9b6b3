#!/usr/bin/env python3
"""Helper of scripts/scale-test.sh: polls the gateways' cluster views and scrapes metrics.

Subcommands (every one prints one JSON object on stdout):

  settle URLS MEMBERS START TIMEOUT [PREV]
      Polls GET /v1/cluster on every gateway in URLS (comma-separated) every 0.2 s until the
      shard map is the rendezvous placement over MEMBERS (comma-separated node ids) in every
      view. Times are seconds since START (a Unix time). Reports:
        members_s  every view lists exactly MEMBERS;
        owned_s    also: every shard has an owner, every owner is a listed member, and every
                   view has the same owner and epoch for every shard;
        placed_s   also: every owner is the one rendezvous hashing picks (settled);
      and the owner of each shard; with PREV (a previous output), how many shards changed
      owner and how many rendezvous hashing says should have.
  scrape URLS METRIC
      Sums of METRIC's samples per `op` label, per URL (Prometheus text at URL/metrics), and
      under "_t" the Unix time each URL's answer arrived.

The rendezvous rule is re-implemented here as an independent check of the gateways' placement
(src/placement.rs): the winner of shard s is the member m with the highest
(xxh3_64("{m}/{s}"), m). XXH3 is implemented only for 4..8-byte inputs, which is what node ids
like g1..g99 and shards below 10000 give.
"""

import json
import sys
import time
import urllib.request

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
            before = json.load(open(prev))["owners"]
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


def main(argv):
    if len(argv) in (6, 7) and argv[1] == "settle":
        result = settle(*argv[2:7])
    elif len(argv) == 4 and argv[1] == "scrape":
        result = scrape(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
