"""Fills a migrated warehouse (its partitions already created) with history,
then times every SQL panel of the warehouse dashboard, and of the prices
dashboard when the warehouse has its tables (price_hour, landscape_hour);
see scripts/dashboard-bench. `dashboard_bench.py URL --no-fill` times a
warehouse filled before; `--select NAME=VALUE` (repeated) times the panels
with that variable at that value instead of All."""

import json
import re
import sys
import time

import psycopg

URL = sys.argv[1]
SELECT = dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a)
DASHBOARDS = ["grafana/dashboards/bid-logger-warehouse.json", "grafana/dashboards/bid-logger-prices.json"]
TYPES = "ARRAY['auction','bid','win','loss','impression','click','install','event']"
COUNTRIES = "ARRAY['US','BR','IN','DE','GB','FR','JP','MX','ID','--']"
OSES = "ARRAY['android','ios','unknown']"

# (table, bucket step, buckets, ids per (type, country, os): 8 × 10 × 3 × ids keys per bucket).
# The exchange tables' keys are exchanges × countries × OS × types, bounded
# whatever the traffic: they get the simulator's (1 544 a minute and 1 642 an
# hour measured at 200 000 msg/s, docs/warehouse.md "Sizing"), 6 and 7
# exchanges here; the full tables the history issue 15 set.
HISTORY = [
    ("rollup_minute", "1 minute", 1440, 21),
    ("rollup_exchange_minute", "1 minute", 1440, 6),
    ("rollup_hour", "1 hour", 720, 42),
    ("rollup_exchange_hour", "1 hour", 720, 7),
    ("rollup_day", "1 day", 365, 84),
]


def fill(conn, table, step, buckets, ids):
    exchange = table.startswith("rollup_exchange")
    grain = step.split()[1]
    dims = "exchange" if exchange else "campaign_id, advertiser_id"
    values = "'x' || i" if exchange else "i, i % 40 + 1"
    sql = f"""
        INSERT INTO {table}_merged (bucket, event_type, country, os, {dims}, sample_ppm,
                             events, attributed_events, price_micros, revenue_micros)
        SELECT date_trunc('{grain}', now()) - b * interval '{step}', t, c, o, {values}, 1000000,
               1 + (b + i) % 50, (b + i) % 3, 1000 * (1 + (b + i) % 50), (b * i) % 7000
        FROM generate_series(0, {buckets - 1}) b, unnest({TYPES}) t, unnest({COUNTRIES}) c,
             unnest({OSES}) o, generate_series(1, {ids}) i
        ON CONFLICT DO NOTHING"""
    started = time.time()
    conn.execute(sql)
    rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    print(f"dashboard-bench: {table}: {rows} rows ({rows // buckets} keys per {grain}) in {time.time() - started:.0f} s",
          file=sys.stderr)


# The prices dashboard's tables at the simulator's cardinality: price
# tables 3 types × 5 exchanges × 50 countries × 6 OS × 22 price buckets
# (99 000 keys a bucket; docs/warehouse.md "Sizing" measures at least
# 97 512 an hour and 97 728 a day), landscapes 3 types × 5 exchanges × 190
# bid buckets (2 850 keys a bucket: the simulator's, 2 790 measured). The
# price tables are filled over the ranges the panels read (they read the
# hour table up to 3 days back and the day table beyond, 90 days here; the
# older ranges are pruned by partition): 4 days of hours and 120 of days.
# The price tables by exchange alone (read with every country and OS) get
# 3 types × 5 exchanges × 208 price buckets (3 120 keys a bucket: 3 115
# measured), and hold, like the landscapes, 30 days of hours and a year of
# days.
PRICE_KEYS = ("exchange, country, os, price_bucket", "'x' || x, 'c' || c, 'o' || o, 400 + 4 * k",
              "unnest(ARRAY['bid','win','impression']) t, generate_series(1, 5) x, "
              "generate_series(1, 50) c, generate_series(1, 6) o, generate_series(0, 21) k")
PRICE_EXCHANGE_KEYS = ("exchange, price_bucket", "'x' || x, 300 + k",
                       "unnest(ARRAY['bid','win','impression']) t, generate_series(1, 5) x, generate_series(0, 207) k")
LANDSCAPE_KEYS = ("exchange, bid_price_bucket", "'x' || x, 300 + k",
                  "unnest(ARRAY['bid','win','loss']) t, generate_series(1, 5) x, generate_series(0, 189) k")
PRICE_HISTORY = [
    ("price_hour", "1 hour", 96, PRICE_KEYS),
    ("price_day", "1 day", 120, PRICE_KEYS),
    ("price_exchange_hour", "1 hour", 720, PRICE_EXCHANGE_KEYS),
    ("price_exchange_day", "1 day", 365, PRICE_EXCHANGE_KEYS),
    ("landscape_hour", "1 hour", 720, LANDSCAPE_KEYS),
    ("landscape_day", "1 day", 365, LANDSCAPE_KEYS),
]


def fill_prices(conn, table, step, buckets, keys):
    dims, values, rows = keys
    grain = step.split()[1]
    sql = f"""
        INSERT INTO {table}_merged (bucket, event_type, {dims}, sample_ppm,
                             events, attributed_events, price_micros, revenue_micros)
        SELECT date_trunc('{grain}', now()) - b * interval '{step}', t, {values}, 1000000,
               1 + (b + k) % 50, 0, 5000 * (1 + (b + k) % 50), 0
        FROM generate_series(0, {buckets - 1}) b, {rows}
        ON CONFLICT DO NOTHING"""
    started = time.time()
    conn.execute(sql)
    count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    print(f"dashboard-bench: {table}: {count} rows ({count // buckets} keys per {grain}) in "
          f"{time.time() - started:.0f} s", file=sys.stderr)


def has_table(conn, name):
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def expand(sql, variables, start, end, interval_ms):
    sql = sql.replace("$__interval_ms", str(interval_ms))
    for unit, secs in (("'1m'", 60), ("'1h'", 3600)):
        sql = sql.replace(f"$__timeGroupAlias(bucket, {unit})",
                          f"floor(extract(epoch from bucket)/{secs})*{secs} AS \"time\"")
    sql = sql.replace("$__timeFilter(bucket)", f"bucket BETWEEN '{start}' AND '{end}'")
    sql = sql.replace("$__timeFrom()", f"'{start}'").replace("$__timeTo()", f"'{end}'")
    for name, values in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        # "All": a custom allValue goes in as it is (Grafana does not quote it)
        inserted = values if isinstance(values, str) else ",".join("'" + v.replace("'", "''") + "'" for v in values)
        sql = sql.replace(f"${name}", inserted)
    assert "$" not in sql, sql
    return sql


def main():
    with psycopg.connect(URL, autocommit=True) as conn:
        if "--no-fill" not in sys.argv[2:]:
            for table, step, buckets, ids in HISTORY:
                fill(conn, table, step, buckets, ids)
            for table, step, buckets, keys in PRICE_HISTORY:
                if has_table(conn, table):
                    fill_prices(conn, table, step, buckets, keys)
        conn.execute("VACUUM ANALYZE")
        worst = 0.0
        for path in DASHBOARDS:
            if "prices" in path and not has_table(conn, "price_hour"):
                print(f"\n{path}: skipped (no price_hour: declare the example tables)")
                continue
            print(f"\n{path}")
            worst = max(worst, time_dashboard(conn, json.load(open(path))))
        print(f"\nslowest panel: {worst:.1f} ms (target 500 ms)")


def time_dashboard(conn, dash):
    """Times every SQL panel of `dash`; returns the slowest, ms."""
    variables = {}
    for v in dash["templating"]["list"]:
        started = time.time()
        values = [r[0] for r in conn.execute(v["query"]).fetchall()]
        print(f"variable {v['name']}: {len(values)} values in {1000 * (time.time() - started):.0f} ms")
        variables[v["name"]] = [SELECT[v["name"]]] if v["name"] in SELECT else v.get("allValue", values)
    # Grafana's default range and a long one, as a panel 1 000 points
    # wide asks for them ($__interval_ms: the range over 1 000)
    ranges = [("6h", 6 * 3600), ("90d", 90 * 86400)]
    print(f"\n{'panel':<72} " + " ".join(f"{'ms ' + name:>10}" for name, _ in ranges) + "  (best of 3)")
    worst = 0.0
    for panel in dash["panels"]:
        for target in panel["targets"]:
            cells = []
            for _, secs in ranges:
                start, end = conn.execute(
                    "SELECT to_char((now() - make_interval(secs => %s)) AT TIME ZONE 'UTC',"
                    " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
                    " to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')", (secs,)).fetchone()
                sql = expand(target["rawSql"], variables, start, end, secs)
                times = []
                for _ in range(3):
                    plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql).fetchone()[0]
                    times.append(plan[0]["Planning Time"] + plan[0]["Execution Time"])
                cells.append(min(times))
                worst = max(worst, min(times))
            print(f"{panel['title'][:72]:<72} " + " ".join(f"{c:>10.1f}" for c in cells))
    return worst


if __name__ == "__main__":
    main()
