"""Write shapes for a minute rollup table, compared by PostgreSQL's own CPU
(a measurement, not a test; see scripts/write-shapes).

Replays the same batches, shaped like the logger's at the simulator's
default traffic (200 000 events/s, one batch a second, about 112 000 keys a minute, rows
in key order; WRITE_SHAPES_ROWS rows a batch, default 93 000; the logger's
own batches of the simulator's default traffic hold about 22 800 rows of
`rollup_minute`), into a table
like `rollup_minute` (hour ranges, the 7-column primary key, fillfactor 50,
"C" collation) whose current hour already holds PREFILL minutes of keys, in
each of these shapes:

- upsert: today's flush: a temporary stage, COPY, INSERT … SELECT … ON
  CONFLICT DO UPDATE, one transaction a batch.
- append-P: COPY into a plain live table (no index), one transaction a
  batch; every P batches one transaction folds it into the keyed table
  (INSERT … SELECT … GROUP BY … ON CONFLICT DO UPDATE) and truncates it.
- unlogged-P: the upsert into a small UNLOGGED keyed live table, plus the
  batch's rows appended as one compressed payload row (the durable copy);
  every P batches the live table is folded into the keyed table, truncated,
  and the payloads deleted.

- appendm-P: like append-P, but the fold upserts the sums of the last P
  batches as the logger would add them up in memory (binary COPY into a
  stage), and deletes the live rows.
- arrays-P, arraysm-P: each batch as one row of arrays (one array per
  column), folded in SQL (unnest, GROUP BY, upsert) or from the sums in
  memory as in appendm-P.

A shape whose name has a `b` after its kind (`upsertb`, `appendb-60`,
`unloggedb-60`) sends the batches in binary `COPY` format, as the logger
does; the others in text format.

Each shape runs on its own fresh database of the same cluster; the figures
are the cluster's CPU (postmaster and children, from /proc, so the server
must be local) and WAL bytes, per million events, over the whole run
including the last fold. Every shape must end with the same sums.

Usage: write_shapes.py URL POSTMASTER_PID [BATCHES] [SHAPES...]
"""

import datetime
import os
import random
import struct
import sys
import time
import zlib

import psycopg

URL, POSTMASTER = sys.argv[1], sys.argv[2]
BATCHES = int(sys.argv[3]) if len(sys.argv) > 3 else 60
SHAPES = sys.argv[4:] or ["upsert", "append-15", "append-60", "unlogged-15", "unlogged-60"]
KEYS_PER_MINUTE = 112_000
ROWS_PER_BATCH = int(os.environ.get("WRITE_SHAPES_ROWS", "93000"))
EVENTS_PER_BATCH = 200_000
PREFILL = 30  # minutes of keys already in the hour range

TYPES = ["auction"] * 14 + ["bid"] * 3 + ["win", "loss", "impression", "click", "install", "event"]
COUNTRIES = ["US", "BR", "IN", "DE", "GB", "FR", "JP", "MX", "ID", "--"] + [f"C{i}" for i in range(30)]
OSES = ["android", "ios", "unknown"]
KEY = "bucket, event_type, country, os, campaign_id, advertiser_id"
MEASURES = "events, attributed_events, price_micros, revenue_micros"
ADD = """events = t.events + EXCLUDED.events,
    attributed_events = t.attributed_events + EXCLUDED.attributed_events,
    price_micros = t.price_micros + EXCLUDED.price_micros,
    revenue_micros = t.revenue_micros + EXCLUDED.revenue_micros,
    updated_at = EXCLUDED.updated_at"""
DIMS = """event_type text COLLATE "C" NOT NULL, country text COLLATE "C" NOT NULL,
    os text COLLATE "C" NOT NULL, campaign_id bigint NOT NULL, advertiser_id bigint NOT NULL"""
COLUMNS = f"""bucket timestamptz NOT NULL, {DIMS}, sample_ppm integer NOT NULL,
    events bigint NOT NULL, attributed_events bigint NOT NULL, price_micros bigint NOT NULL,
    revenue_micros bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now()"""


COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)


def key_fields(t, c, o, camp, adv):
    """A row's key after the bucket, as binary COPY fields (text, text, text, int8, int8)."""
    return b"".join(struct.pack(">i", len(v)) + v for v in (t, c, o)) + struct.pack(">iqiq", 8, camp, 8, adv)


def cluster_cpu():
    tick = os.sysconf("SC_CLK_TCK")

    def fields(pid):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    total = sum(int(x) for x in fields(POSTMASTER)[11:15])
    for pid in os.listdir("/proc"):
        if pid.isdigit() and pid != POSTMASTER:
            try:
                g = fields(pid)
            except OSError:
                continue
            if g[1] == POSTMASTER:
                total += int(g[11]) + int(g[12])
    return total / tick


def minute_keys(rng):
    keys = set()
    while len(keys) < KEYS_PER_MINUTE:
        campaign = int(rng.paretovariate(1.1)) % 3000 + 1
        keys.add((rng.choice(TYPES), rng.choice(COUNTRIES), rng.choice(OSES), campaign, campaign % 300 + 1))
    return sorted(keys)


def batches(hour):
    """The batches (rows in key order), each as COPY text and as binary COPY."""
    rng = random.Random(7)
    out, keys, minute = [], None, -1
    epoch = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    start = datetime.datetime.strptime(hour, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    text_of = {}
    for b in range(BATCHES):
        if b // 60 != minute:
            minute, keys = b // 60, minute_keys(rng)
            bucket = f"{hour[:14]}{PREFILL + minute:02d}:00+00"
            at = start + datetime.timedelta(minutes=PREFILL + minute)
            micros = struct.pack(">iq", 8, (at - epoch) // datetime.timedelta(microseconds=1))
            text_of = {}
        lines, tuples, arows = [], [COPY_HEADER], []
        for k in sorted(rng.sample(range(len(keys)), ROWS_PER_BATCH)):
            t, c, o, camp, adv = keys[k]
            lines.append(f"{bucket}\t{t}\t{c}\t{o}\t{camp}\t{adv}\t1000000\t2\t1\t{camp * 10}\t0\n")
            arows.append((struct.unpack(">q", micros[4:])[0], t.encode(), c.encode(), o.encode(), camp, adv,
                          2, 1, camp * 10, 0))
            if k not in text_of:
                text_of[k] = key_fields(t.encode(), c.encode(), o.encode(), camp, adv)
            tuples.append(struct.pack(">h", 11) + micros + text_of[k]
                          + struct.pack(">iiiqiqiqiq", 4, 1000000, 8, 2, 8, 1, 8, camp * 10, 8, 0))
        tuples.append(struct.pack(">h", -1))
        out.append(("".join(lines).encode(), b"".join(tuples), array_copy(arows), arows))
    return out


def array_field(oid, values, width):
    """One binary COPY field: a one-dimensional array of `oid` elements."""
    body = struct.pack(">iiiii", 1, 0, oid, len(values), 1)
    if width:
        body += b"".join(struct.pack(">iq", 8, v) for v in values)
    else:
        body += b"".join(struct.pack(">i", len(v)) + v for v in values)
    return struct.pack(">i", len(body)) + body


def array_copy(rows):
    """A batch as binary COPY of one `alog` row of arrays."""
    cols = list(zip(*rows))
    fields = [array_field(1184, cols[0], 8)] + [array_field(25, c, 0) for c in cols[1:4]]
    fields += [array_field(20, c, 8) for c in cols[4:6]] + [struct.pack(">ii", 4, 1000000)]
    fields += [array_field(20, c, 8) for c in cols[6:10]]
    return (COPY_HEADER + struct.pack(">h", 11) + b"".join(fields)
            + struct.pack(">h", -1))


def setup(conn, hour):
    conn.execute(f"""CREATE TABLE r ({COLUMNS}, PRIMARY KEY ({KEY}, sample_ppm)) PARTITION BY RANGE (bucket)""")
    conn.execute(f"""CREATE TABLE r_p PARTITION OF r FOR VALUES FROM ('{hour}+00') TO ('{hour}+00'::timestamptz
                     + interval '1 hour') WITH (fillfactor = 50)""")
    # PREFILL minutes of keys already written this hour, as a running logger leaves them
    conn.execute(f"""INSERT INTO r SELECT '{hour}+00'::timestamptz + m * interval '1 minute',
                         (ARRAY['auction','bid','win','loss','impression','click','install','event'])[1 + i % 8],
                         'C' || (i / 8) % 40, (ARRAY['android','ios','unknown'])[1 + (i / 320) % 3],
                         i / 960 + 1, (i / 960) % 300 + 1, 1000000, 5, 1, 100, 0, now()
                     FROM generate_series(0, {PREFILL - 1}) m, generate_series(0, {KEYS_PER_MINUTE - 1}) i""")
    conn.execute("VACUUM ANALYZE r")
    conn.execute(f"CREATE TABLE live ({COLUMNS})")
    conn.execute(f"CREATE UNLOGGED TABLE ulive ({COLUMNS}, PRIMARY KEY ({KEY}, sample_ppm)) WITH (fillfactor = 50)")
    conn.execute("CREATE TABLE log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload bytea NOT NULL)")
    conn.execute("""CREATE TABLE alog (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, bucket timestamptz[] NOT NULL,
        event_type text[] COLLATE "C" NOT NULL, country text[] COLLATE "C" NOT NULL, os text[] COLLATE "C" NOT NULL,
        campaign_id bigint[] NOT NULL, advertiser_id bigint[] NOT NULL, sample_ppm integer NOT NULL,
        events bigint[] NOT NULL, attributed_events bigint[] NOT NULL, price_micros bigint[] NOT NULL,
        revenue_micros bigint[] NOT NULL)""")
    conn.execute("ALTER TABLE log ALTER COLUMN payload SET STORAGE EXTERNAL")


def copy(conn, table, data, binary):
    options = " (FORMAT BINARY)" if binary else ""
    with conn.cursor().copy(f"COPY {table} ({KEY}, sample_ppm, {MEASURES}) FROM STDIN{options}") as cp:
        cp.write(data[1] if binary else data[0])


def fold(conn, source):
    conn.execute(f"""INSERT INTO r AS t ({KEY}, sample_ppm, {MEASURES}, updated_at)
        SELECT {KEY}, sample_ppm, sum(events), sum(attributed_events), sum(price_micros), sum(revenue_micros), now()
        FROM {source} GROUP BY {KEY}, sample_ppm ORDER BY {KEY}, sample_ppm
        ON CONFLICT ({KEY}, sample_ppm) DO UPDATE SET {ADD}""")
    conn.execute(f"TRUNCATE {source}")


def fold_arrays(conn):
    """Folds the array log in SQL: unnest, sum per key, upsert."""
    conn.execute(f"""INSERT INTO r AS t ({KEY}, sample_ppm, {MEASURES}, updated_at)
        SELECT u.bucket, u.event_type, u.country, u.os, u.campaign_id, u.advertiser_id, l.sample_ppm,
            sum(u.events), sum(u.attributed_events), sum(u.price_micros), sum(u.revenue_micros), now()
        FROM alog l, unnest(l.bucket, l.event_type, l.country, l.os, l.campaign_id, l.advertiser_id, l.events,
            l.attributed_events, l.price_micros, l.revenue_micros)
            AS u(bucket, event_type, country, os, campaign_id, advertiser_id, events, attributed_events,
                 price_micros, revenue_micros)
        GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7
        ON CONFLICT ({KEY}, sample_ppm) DO UPDATE SET {ADD}""")
    conn.execute("DELETE FROM alog")


def fold_memory(conn, pending, log="alog"):
    """Folds the batches' sums, added up here (as the logger would), and empties the array log."""
    sums = {}
    for rows in pending:
        for r in rows:
            v = sums.get(r[:6])
            sums[r[:6]] = r[6:] if v is None else tuple(a + b for a, b in zip(v, r[6:]))
    tuples = [COPY_HEADER]
    for k in sorted(sums):
        v = sums[k]
        tuples.append(struct.pack(">hiq", 11, 8, k[0]) + key_fields(*k[1:]) + struct.pack(">ii", 4, 1000000)
                      + b"".join(struct.pack(">iq", 8, x) for x in v))
    tuples.append(struct.pack(">h", -1))
    upsert(conn, "r", (None, b"".join(tuples)), True)
    conn.execute(f"DELETE FROM {log}")


def upsert(conn, target, data, binary):
    conn.execute(f"""CREATE TEMP TABLE IF NOT EXISTS stage (bucket timestamptz NOT NULL, event_type text NOT NULL,
        country text NOT NULL, os text NOT NULL, campaign_id bigint NOT NULL, advertiser_id bigint NOT NULL,
        sample_ppm integer NOT NULL, events bigint NOT NULL, attributed_events bigint NOT NULL,
        price_micros bigint NOT NULL, revenue_micros bigint NOT NULL) ON COMMIT DELETE ROWS""")
    copy(conn, "stage", data, binary)
    conn.execute(f"""INSERT INTO {target} AS t ({KEY}, sample_ppm, {MEASURES}, updated_at)
        SELECT {KEY}, sample_ppm, {MEASURES}, now() FROM stage
        ON CONFLICT ({KEY}, sample_ppm) DO UPDATE SET {ADD}""")


def run(shape, data, hour):
    name = f"bid_logger_shapes_{shape.replace('-', '_')}_{int(time.time())}"
    with psycopg.connect(URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as conn:
        setup(conn, hour)
        conn.execute("CHECKPOINT")
        kind, _, every = shape.partition("-")
        every = int(every or 1)
        binary = kind.endswith("b")
        kind = kind.removesuffix("b")
        pending = []
        wal0 = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        cpu0, started = cluster_cpu(), time.time()
        for b, batch in enumerate(data):
            with conn.transaction():
                if kind == "upsert":
                    upsert(conn, "r", batch, binary)
                elif kind in ("append", "appendm"):
                    copy(conn, "live", batch, binary)
                    pending.append(batch[3])
                elif kind in ("arrays", "arraysm"):
                    with conn.cursor().copy("COPY alog (bucket, event_type, country, os, campaign_id, advertiser_id, "
                                            "sample_ppm, events, attributed_events, price_micros, revenue_micros) "
                                            "FROM STDIN (FORMAT BINARY)") as cp:
                        cp.write(batch[2])
                    pending.append(batch[3])
                else:
                    upsert(conn, "ulive", batch, binary)
                    conn.execute("INSERT INTO log (payload) VALUES (%s)", (zlib.compress(batch[1], 1),))
            if kind != "upsert" and ((b + 1) % every == 0 or b + 1 == len(data)):
                with conn.transaction():
                    if kind == "append":
                        fold(conn, "live")
                    elif kind == "arrays":
                        fold_arrays(conn)
                    elif kind == "appendm":
                        fold_memory(conn, pending, "live")
                        pending = []
                    elif kind == "arraysm":
                        fold_memory(conn, pending)
                        pending = []
                    else:
                        fold(conn, "ulive")
                        conn.execute("DELETE FROM log")
        conn.execute("VACUUM r, live, alog")
        cpu, elapsed = cluster_cpu() - cpu0, time.time() - started
        wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (wal0,)).fetchone()[0]
        sums = conn.execute(f"SELECT sum(events), count(*) FROM r WHERE bucket >= '{hour}+00'::timestamptz "
                            f"+ interval '{PREFILL} minutes'").fetchone()
    with psycopg.connect(URL, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name}")
    millions = len(data) * EVENTS_PER_BATCH / 1e6
    return cpu / millions, float(wal) / millions / 2**20, elapsed, sums


def main():
    hour = time.strftime("%Y-%m-%d %H:00:00", time.gmtime(time.time() - 7200))
    print(f"write-shapes: generating {BATCHES} batches of {ROWS_PER_BATCH} rows…", file=sys.stderr)
    data = batches(hour)
    print(f"{'shape':<14} {'PG CPU s/M ev':>14} {'WAL MiB/M ev':>13} {'wall s':>8}  sums")
    results = {}
    for shape in SHAPES:
        print(f"write-shapes: {shape}…", file=sys.stderr)
        cpu, wal, elapsed, sums = run(shape, data, hour)
        results[shape] = sums
        print(f"{shape:<14} {cpu:>14.3f} {wal:>13.1f} {elapsed:>8.1f}  {sums[0]} events in {sums[1]} rows", flush=True)
    assert len({s[0] for s in results.values()}) == 1, f"the shapes' sums differ: {results}"


main()
