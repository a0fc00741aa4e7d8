"""Where a PostgreSQL server's CPU goes, for scripts/pg-cpu
(PG_CPU_CLASSES=1): samples the postmaster's children every 50 ms until
SIGTERM, then prints their CPU seconds per class: the backend of the
logger's delta-log consumer (the one seen running DELETE: folds take log
rows and delete live rows; batches only append), the other backends
(batches, range maintenance), autovacuum workers, checkpointer, background
writer, WAL writer. A process that exits between samples loses its last
50 ms. Usage: pg_cpu_classes.py POSTMASTER_PID"""
import os, sys, time, signal
pm = sys.argv[1]
tick = os.sysconf("SC_CLK_TCK")
stop = False
def h(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, h); signal.signal(signal.SIGINT, h)
first, last, title, deleting = {}, {}, {}, set()
start = True
def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()
while True:
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == pm:
            continue
        try:
            g = stat(pid)
            if g[1] != pm:
                continue
            cpu = (int(g[11]) + int(g[12])) / tick
            cmd = open(f"/proc/{pid}/cmdline").read().replace("\0", " ").strip()
        except OSError:
            continue
        if pid not in first:
            first[pid] = cpu if start else 0.0
        last[pid] = cpu
        if pid not in title or "postgres:" in cmd:
            title[pid] = cmd  # (a backend just forked still has the postmaster's command line)
        if " DELETE" in cmd:
            deleting.add(pid)
    start = False
    if stop:
        break
    time.sleep(0.05)
classes = {}
for pid, t in title.items():
    d = last[pid] - first[pid]
    if "autovacuum worker" in t: c = "autovacuum"
    elif "checkpointer" in t: c = "checkpointer"
    elif "background writer" in t: c = "bgwriter"
    elif "walwriter" in t: c = "walwriter"
    elif pid in deleting: c = "consumer"
    elif "postgres: postgres" in t or "127.0.0.1" in t: c = "backend"
    else: c = "other (" + t.split(":")[-1].strip().split(" ")[0] + ")"
    classes[c] = classes.get(c, 0) + d
print("pg-cpu: PostgreSQL CPU s by process: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(classes.items(), key=lambda kv: -kv[1])), flush=True)
