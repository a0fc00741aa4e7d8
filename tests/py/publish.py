#!/usr/bin/env python3
"""Publishes events the way the real (Python) bidders do: pyzmq + msgpack,
its own FNV-1a partitioning. Prints each valid event it sent as one JSON line
(txn as hex when it is bytes), so the Rust test can compute the expected rollups.

usage: publish.py ENDPOINT PARTITION_COUNT SUBSCRIPTIONS N
"""
import json
import random
import sys
import time

import msgpack
import zmq


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    endpoint, p, subs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    assert fnv1a64(b"txn-000001") == 0x400F5D1EBF464B83
    sock = zmq.Context().socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.bind(endpoint)
    seen = 0
    sock.setsockopt(zmq.RCVTIMEO, 30000)
    while seen < subs:
        if sock.recv()[0] == 1:
            seen += 1
    rng = random.Random(17)
    now = int(time.time() * 1000)
    seqs = {}
    types = ["auction", "bid", "win", "loss", "impression", "click", "install", "event"]
    for i in range(n):
        et = rng.choice(types)
        txn = f"py-{i:05d}" if i % 3 else bytes(rng.getrandbits(8) for _ in range(16))
        raw = txn if isinstance(txn, bytes) else txn.encode()
        topic = f"{et}.{fnv1a64(raw) % p:04d}"
        ev = {"txn": txn, "ts": now - rng.randrange(0, 7_200_000), "type": et, "pub": "py-bidder"}
        seqs[topic] = seqs.get(topic, 41) + 1
        ev["seq"] = seqs[topic]
        if rng.random() < 0.8:
            ev["country"] = rng.choice(["BR", "us", "XX1", "fr"])
        if rng.random() < 0.8:
            ev["os"] = rng.choice(["Android", "iOS", "ÄNDROID ☃", ""])
        if et not in ("auction", "loss"):
            ev["campaign"] = rng.choice([1, 2, 300, 2**32 - 1])
            ev["advertiser"] = rng.choice([7, 2**31])
        if et in ("bid", "win", "impression"):
            ev["price"] = rng.randrange(-5, 5_000_000)
        if et in ("install", "event"):
            ev["revenue"] = rng.randrange(0, 10**9)
            ev["attributed"] = rng.random() < 0.5
        if et == "event":
            ev["name"] = "purchase"
        ev["future_field"] = {"added": [1, 2.5, None]}
        keys = list(ev.items())
        rng.shuffle(keys)  # keys may come in any order
        sock.send_multipart([topic.encode(), msgpack.packb(dict(keys), use_bin_type=True)])
        out = dict(ev)
        out["txn"] = txn.hex() if isinstance(txn, bytes) else txn
        out.pop("future_field")
        print(json.dumps(out))
    sys.stdout.flush()
    time.sleep(0.5)
    sock.close(linger=5000)


if __name__ == "__main__":
    main()
