"""What the live layout costs readers (a measurement, not a test): while a
logger writes into the warehouse at URL, times the same queries over each
view (merged plus live rows) and over its merged table alone, every few
seconds, and prints the median and maximum of each. Run it beside
`PG_CPU_DB=<db> scripts/pg-cpu`, which fills that database at the
simulator's rate (see BENCHMARKS.md, "The live layout").

Usage: view_reads.py URL [SECONDS]
"""

import statistics
import sys
import time

import psycopg

URL = sys.argv[1]
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 60
QUERIES = {
    "exchange minute, 6 h by bucket and type (the traffic panel)":
        "SELECT bucket, event_type, sum(events) FROM {t} WHERE bucket >= now() - interval '6 hours' GROUP BY 1, 2",
    "minute, 10 min by country":
        "SELECT country, sum(events) FROM {t} WHERE bucket >= now() - interval '10 minutes' GROUP BY 1",
    "minute, one campaign over 1 h":
        "SELECT bucket, sum(events) FROM {t} WHERE bucket >= now() - interval '1 hour' AND campaign_id = 7 GROUP BY 1",
}
TABLES = {"exchange minute": "rollup_exchange_minute", "minute": "rollup_minute"}


def main():
    times = {}
    deadline = time.time() + SECONDS
    with psycopg.connect(URL, autocommit=True) as conn:
        while time.time() < deadline:
            for name, sql in QUERIES.items():
                table = TABLES[name.split(",")[0]]
                for variant, t in (("view", table), ("merged only", table + "_merged")):
                    started = time.perf_counter()
                    conn.execute(sql.format(t=t)).fetchall()
                    times.setdefault((name, variant), []).append(1000 * (time.perf_counter() - started))
            live = conn.execute("SELECT (SELECT coalesce(sum(cardinality(live_bucket)), 0) FROM bid_logger_log_rollup_minute), "
                                "(SELECT coalesce(sum(cardinality(live_bucket)), 0) "
                                "FROM bid_logger_log_rollup_exchange_minute)").fetchone()
            times.setdefault(("live rows", "rollup_minute"), []).append(live[0])
            times.setdefault(("live rows", "rollup_exchange_minute"), []).append(live[1])
            time.sleep(2)
    for (name, variant), values in times.items():
        print(f"{name:<62} {variant:<24} median {statistics.median(values):>10.1f}  max {max(values):>10.1f}"
              f"  ({len(values)} runs)")


main()
