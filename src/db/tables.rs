//! The declared rollup tables: their shapes, cadences and retentions, and
//! the SQL that creates, fills and reads them.
//!
//! Every table `T` is a view ([`RollupTable::view_sql`]) over three
//! tables split by the table's *boundary* `B`, a bucket (its row of
//! [`BOUNDARY_TABLE`]): `T_merged` (keyed rows of buckets before `B`,
//! range-partitioned), `T_recent` (folds' sums of buckets from `B` on,
//! appended, a key in as many rows as folds carried it) and the *live rows*
//! of the batches not folded yet (the view shows those from `B` on). Its
//! *delta log*, `bid_logger_log_<table>`, has one row per batch holding the
//! batch's rows of the table in PostgreSQL's binary `COPY` format, and a
//! direct table's batch's live rows beside them, one array per column
//! ([`RollupTable::live_array_columns`]): they leave with the log row.
//! (`T_live`, one row per key, holds the live rows of builds before that;
//! the view still shows them, and the folds delete them.)
//!
//! A table is *direct* when its flush interval is the logger's own
//! `flush-interval`: every batch appends all its rows of the table to the
//! log, with those of buckets from `B` as the process knows it on as its
//! live rows, in the batch's transaction, and does nothing else to it (it
//! reads no boundary and locks no row): a late event's row (a bucket
//! before `B`) is shown once the next fold has added it to `T_merged`. A *coarse* table (a longer interval) gets only the log row.
//! A log is consumed (*folded*, for a direct table) at
//! [`RollupTable::consume_interval`]: one transaction deletes the log's
//! rows (their live rows with them), adds them up per key, and writes the
//! sums (those before `B` `COPY`d into a staging table and upserted into
//! `T_merged`, [`RollupTable::log_upsert_sql`]; the others `COPY`d into
//! `T_recent`, [`RollupTable::recent_copy_sql`]). When [`RollupTable::next_boundary`] has passed `B`, the
//! same transaction moves `T_recent`'s rows before it into `T_merged`,
//! added up per key in the logger (the sink's move; in one statement,
//! [`RollupTable::move_sql`], where that cannot be), and sets it. The consumer
//! adds the payloads up per key in the logger (the sink's payload module),
//! so PostgreSQL writes each key once per consumption, and into a keyed
//! table (an index probe and an update) only once per bucket, at its move,
//! but for late events.
//!
//! A coarse table whose rows can be computed from another coarse table's
//! (a grain not finer, a subset of its dimensions, an interval not
//! shorter: `rollup_day` from `rollup_hour`) is *fed* from that table's
//! consumption instead of from every batch ([`link`]): the consumption
//! appends its sums, coarsened, to the fed table's log in the same
//! transaction. Whatever reached `rollup_minute` is therefore in every
//! coarser table, in its log or in the log of the table feeding it, even
//! across a hard kill, and reaches every table exactly once. (A log of one
//! row per key costs PostgreSQL more than the upserts it saves: measured in
//! `BENCHMARKS.md`.)

use bid_logger_core::aggregate::{Dimension, Dimensions, Grain, Shape};
use bid_logger_core::wire::EventType;
use std::time::Duration;

/// One declared rollup table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupTable {
    /// Table name (also the prefix of its partitions, its `_est` view and log).
    pub name: String,
    /// Grain and dimensions.
    pub shape: Shape,
    /// How often its rows are written.
    pub flush_interval: Duration,
    /// How long its buckets are kept; `None` = forever.
    pub retention: Option<Duration>,
    /// Fed through its delta log (its interval is longer than the logger's).
    pub logged: bool,
    /// The logged table whose consumptions feed its log (set by [`link`]);
    /// `None`: every batch appends to its log.
    pub fed_by: Option<String>,
    /// How often a direct table's log and live rows are folded into its
    /// merged table (`fold-interval`; a coarse table is consumed at its
    /// flush interval).
    pub fold_interval: Duration,
    /// The keyed, range-partitioned table holding its folded rows,
    /// `<name>_merged` (the table itself is a view, see [`RollupTable::view_sql`]).
    pub merged: String,
}

/// Default `fold-interval`: how often a direct table's live rows are folded
/// into its merged table (see [`RollupTable::view_sql`]): each key is
/// upserted once per fold instead of once per batch (`BENCHMARKS.md`,
/// "Warehouse write shapes" and "The live layout").
pub const FOLD_INTERVAL: Duration = Duration::from_secs(10);

/// How far a direct table's boundary (see [`RollupTable::view_sql`]) stays
/// behind the clock, in minutes: a fold moves it to the start of the bucket
/// holding the minute this many minutes before its own. A batch's rows of
/// newer buckets are shown as soon as it commits (and folded into
/// `<name>_recent`); rows of older ones, late events (few), once a fold has
/// added them to the merged table.
pub const LIVE_MINUTES: i64 = 1;

/// How many buckets of recent rows one move of a boundary adds up at most,
/// beyond those of one consumption interval: a boundary left behind (moves
/// that ran out of time while a lock was held, then waited up to 16
/// minutes) catches up this many buckets per consumption, so that a move's
/// work stays that of a few minutes of folds however long the stall (one
/// adding up all of them could outgrow its statements' budget, be cut every
/// time, and leave the boundary behind for good). Buckets with no recent
/// row (a stop) are passed at once.
pub const MOVE_MOST_BUCKETS: i64 = 5;

/// The table holding each rollup table's boundary: the oldest bucket its
/// recent rows (and the live rows the view shows) may hold, every bucket of
/// its merged table being older. Only a consumption of the table's log,
/// which holds the log's lock, reads it to split its sums and moves it.
pub const BOUNDARY_TABLE: &str = "bid_logger_boundary";

/// Whether the database keeps the direct tables' live rows in their live
/// tables (SQL, true or false): on Citus, whose workers cannot read the
/// coordinator's logs, or where `bid_logger.live_rows` is `table`. Its
/// views then read live rows there only ([`RollupTable::view_sql_reading`]).
pub const LIVE_ROWS_IN_TABLE: &str = "(EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') \
     OR coalesce(current_setting('bid_logger.live_rows', true), '') = 'table')";

/// A default table: (name, grain, dimensions, retention in days, 0 = forever).
type DefaultTable = (&'static str, Grain, &'static [Dimension], u64);

const FULL: &[Dimension] = &[Dimension::Country, Dimension::Os, Dimension::Campaign, Dimension::Advertiser];
const EXCHANGE: &[Dimension] = &[Dimension::Exchange, Dimension::Country, Dimension::Os];

/// The default set (`warehouse.md`), with the retentions docs/warehouse.md's
/// sizing table justifies.
pub const DEFAULT_TABLES: [DefaultTable; 5] = [
    ("rollup_minute", Grain::Minute, FULL, 3),
    ("rollup_hour", Grain::Hour, FULL, 90),
    ("rollup_day", Grain::Day, FULL, 0),
    ("rollup_exchange_minute", Grain::Minute, EXCHANGE, 30),
    ("rollup_exchange_hour", Grain::Hour, EXCHANGE, 0),
];

/// The default set at the logger's `flush_interval` (every key at its default).
pub fn default_tables(flush_interval: Duration) -> Vec<RollupTable> {
    let mut tables: Vec<RollupTable> = DEFAULT_TABLES
        .iter()
        .map(|&(name, grain, dims, retention_days)| {
            let interval = default_flush_interval(grain, flush_interval);
            RollupTable {
                name: name.to_string(),
                shape: Shape { grain, dims: Dimensions::of(dims) },
                flush_interval: interval,
                retention: (retention_days > 0).then(|| Duration::from_secs(retention_days * 86_400)),
                logged: interval > flush_interval,
                fed_by: None,
                fold_interval: FOLD_INTERVAL.max(interval),
                merged: format!("{name}_merged"),
            }
        })
        .collect();
    link(&mut tables);
    tables
}

/// Sets each logged table's `fed_by`: among the other tables that can
/// compute its rows (grain not finer, every dimension of it, see
/// [`computes`]) and that take in their rows at least as often (a direct
/// table's folds, a logged table's consumptions: [`RollupTable::consume_interval`]
/// not longer than its interval; when shape and interval are equal, only
/// an earlier table), the one with the fewest rows (the coarsest grain,
/// then the fewest dimensions). Every chain of feeds ends at a table fed by
/// the batches. In the default set, `rollup_hour` is fed from
/// `rollup_minute`'s folds and `rollup_day` from `rollup_hour`'s
/// consumptions.
pub fn link(tables: &mut [RollupTable]) {
    let feeders: Vec<Option<String>> =
        (0..tables.len()).map(|c| feeder(tables, c, true).map(|p| tables[p].name.clone())).collect();
    for (table, fed_by) in tables.iter_mut().zip(feeders) {
        table.fed_by = fed_by;
    }
}

/// Whether `parent`'s rows can be coarsened into `child`'s: a grain not
/// finer, every dimension of the child, the same kind (a price
/// distribution holds the priced events alone, a landscape the bids and
/// their outcomes: each feeds, and is fed by, its kind only).
pub fn computes(parent: &RollupTable, child: &RollupTable) -> bool {
    parent.shape.grain <= child.shape.grain
        && child.shape.dims.iter().all(|d| parent.shape.dims.has(d))
        && parent.shape.dims.kind() == child.shape.dims.kind()
}

/// Table `c`'s feeder; `direct`: a direct table may feed (this build);
/// otherwise only a logged one (the builds before it).
fn feeder(tables: &[RollupTable], c: usize, direct: bool) -> Option<usize> {
    let child = &tables[c];
    (0..tables.len())
        .filter(|&p| p != c && child.logged && (direct || tables[p].logged))
        .filter(|&p| {
            let parent = &tables[p];
            let same = parent.shape == child.shape && parent.flush_interval == child.flush_interval;
            computes(parent, child) && parent.consume_interval() <= child.flush_interval && (!same || p < c)
        })
        .max_by_key(|&p| (tables[p].shape.grain, std::cmp::Reverse(tables[p].shape.dims.iter().count())))
}

/// The `feeds` of a log row of `table` appended now: the links
/// `parent>child` (comma-separated; empty: none) of every table its sums
/// go on to, directly or through the logs of the tables fed from it. Its
/// consumption passes the row's sums along exactly those links, whatever
/// the configuration is by then (each table it appends to gets the links
/// below it), so that a change of who feeds whom (a new build, a changed
/// interval) between the append and the consumption neither doubles nor
/// drops an event.
pub fn feeds_of(tables: &[RollupTable], table: &str) -> String {
    let links: Vec<(&str, &str)> =
        tables.iter().filter_map(|t| t.fed_by.as_deref().map(|p| (p, t.name.as_str()))).collect();
    below(&links, table)
}

/// The `feeds` a log row of `table` appended by a build before direct
/// tables fed others (`feeds` NULL) goes by: where those builds sent it
/// (only logged tables fed others).
pub fn feeds_before(tables: &[RollupTable], table: &str) -> String {
    let links: Vec<(&str, &str)> = (0..tables.len())
        .filter_map(|c| feeder(tables, c, false).map(|p| (tables[p].name.as_str(), tables[c].name.as_str())))
        .collect();
    below(&links, table)
}

/// The links of `feeds` (see [`feeds_of`]).
pub fn links(feeds: &str) -> Vec<(&str, &str)> {
    feeds.split(',').filter_map(|link| link.split_once('>')).collect()
}

/// The links among `links` reachable from `table`, as `feeds`.
pub fn below(links: &[(&str, &str)], table: &str) -> String {
    let mut reached = vec![table];
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < reached.len() {
        for &(p, c) in links {
            if p == reached[i] && !reached.contains(&c) {
                reached.push(c);
                out.push(format!("{p}>{c}"));
            }
        }
        i += 1;
    }
    out.join(",")
}

/// The dimensions of every price distribution among `tables` together
/// (`None` when there is none): what the aggregator keeps per price bucket.
pub fn price_dims(tables: &[RollupTable]) -> Option<Dimensions> {
    let dims: Vec<Dimension> =
        tables.iter().filter(|t| t.shape.dims.is_price()).flat_map(|t| t.shape.dims.iter()).collect();
    (!dims.is_empty()).then(|| Dimensions::of(&dims))
}

/// The dimensions of every bid landscape among `tables` together (`None`
/// when there is none): what the aggregator pairs bids and outcomes for.
pub fn landscape_dims(tables: &[RollupTable]) -> Option<Dimensions> {
    let dims: Vec<Dimension> =
        tables.iter().filter(|t| t.shape.dims.is_landscape()).flat_map(|t| t.shape.dims.iter()).collect();
    (!dims.is_empty()).then(|| Dimensions::of(&dims))
}

/// The dimensions of every timing table among `tables` together (`None`
/// when there is none): what the aggregator pairs bids with outcomes and
/// impressions with clicks for.
pub fn timing_dims(tables: &[RollupTable]) -> Option<Dimensions> {
    let dims: Vec<Dimension> =
        tables.iter().filter(|t| t.shape.dims.is_timing()).flat_map(|t| t.shape.dims.iter()).collect();
    (!dims.is_empty()).then(|| Dimensions::of(&dims))
}

/// The tables `table` feeds (whose `fed_by` names it).
pub fn fed_from<'a>(tables: &'a [RollupTable], table: &'a str) -> impl Iterator<Item = &'a RollupTable> + 'a {
    tables.iter().filter(move |t| t.fed_by.as_deref() == Some(table))
}

/// The oldest minute table `t`'s projection of a batch keeps at `now_ms`:
/// its own retention's, or older when a table fed from it keeps more (its
/// consumption then leaves those buckets out of its own upsert, counted).
pub fn projection_oldest_minute(tables: &[RollupTable], t: usize, now_ms: i64) -> i64 {
    let mut oldest = tables[t].oldest_minute(now_ms);
    for child in fed_from(tables, &tables[t].name) {
        let c = tables.iter().position(|x| x.name == child.name).expect("a table of the list");
        oldest = oldest.min(projection_oldest_minute(tables, c, now_ms));
    }
    oldest
}

/// Table `t` and the tables it is fed from, in order: its feeder, that
/// table's feeder, … up to the table fed by the batches.
pub fn chain(tables: &[RollupTable], t: usize) -> impl Iterator<Item = usize> + '_ {
    std::iter::successors(Some(t), move |&at| {
        let feeder = tables[at].fed_by.as_deref()?;
        Some(tables.iter().position(|x| x.name == feeder).expect("a table of the list"))
    })
}

/// The table whose batch rows also carry table `t`'s (itself, unless it is
/// fed from another table's consumption).
pub fn batch_source(tables: &[RollupTable], t: usize) -> usize {
    chain(tables, t).last().expect("the chain starts at t")
}

/// The default flush interval of a table of `grain`: minute tables are
/// written by every batch (the logger's `flush_interval`, 1 s by default),
/// hour tables every 5 minutes and day tables every 15 (never more often
/// than the batches): five minutes' lag on an hour's bucket, fifteen on a
/// day's, and each consumption upserts every key its interval touched, so
/// a longer one writes fewer rows (PostgreSQL spent 12–14 % more CPU per
/// event with them at 10 s than at 60 s, and 15–21 % less at these than
/// at 60 s: `BENCHMARKS.md`, "Coarse tables fed from the folds").
pub fn default_flush_interval(grain: Grain, flush_interval: Duration) -> Duration {
    match grain {
        Grain::Minute => flush_interval,
        Grain::Hour => Duration::from_secs(300).max(flush_interval),
        Grain::Day => Duration::from_secs(900).max(flush_interval),
    }
}

impl RollupTable {
    /// The columns of its key after `bucket` and `event_type`.
    pub fn dimension_columns(&self) -> Vec<&'static str> {
        self.shape.dims.iter().map(Dimension::column).collect()
    }

    /// `bucket, event_type, <dimensions>`.
    fn key_columns(&self) -> String {
        let mut cols = vec!["bucket", "event_type"];
        cols.extend(self.dimension_columns());
        cols.join(", ")
    }

    /// Its delta log.
    pub fn log_table(&self) -> String {
        format!("bid_logger_log_{}", self.name)
    }

    /// Its staging table (temporary, per connection).
    pub fn stage_table(&self) -> String {
        format!("bid_logger_stage_{}", self.name)
    }

    /// The oldest bucket minute it keeps at `now_ms` (`i64::MIN` = all).
    pub fn oldest_minute(&self, now_ms: i64) -> i64 {
        match self.retention {
            None => i64::MIN,
            Some(r) => (now_ms - r.as_millis() as i64).div_euclid(60_000),
        }
    }

    /// The column definitions of its dimensions.
    fn dimension_definitions(&self) -> String {
        self.shape
            .dims
            .iter()
            .map(|d| format!("{} {} NOT NULL", d.column(), if d.is_text() { "text COLLATE \"C\"" } else { "bigint" }))
            .collect::<Vec<_>>()
            .join(",\n    ")
    }

    /// Creates what the table is made of when missing: its merged table
    /// (partitioned by `bucket`), its live table, its delta log, the view
    /// named like the table ([`RollupTable::view_sql`]) and its `_est` view.
    /// A table written before this layout (a partitioned table under the
    /// table's own name) becomes the merged table, its ranges renamed with
    /// it, and keeps every row.
    pub fn create_sql(&self) -> String {
        let name = &self.name;
        let merged = &self.merged;
        let key = self.key_columns();
        let dims = self.dimension_definitions();
        let log = self.log_table();
        let live = self.live_table();
        let live_arrays = self.live_array_columns();
        let recent = self.recent_table();
        let boundary = BOUNDARY_TABLE;
        let grain = self.shape.grain.minutes();
        let secs = grain * 60;
        // where a running warehouse's stands (`next_boundary`): a direct
        // table's `LIVE_MINUTES` behind the clock, a coarse table's at the
        // next bucket
        let shift = if self.logged { grain } else { -LIVE_MINUTES };
        format!(
            "DO $$
DECLARE r record;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('{name}')) = 'p' THEN
        DROP VIEW IF EXISTS {name}_est;
        ALTER TABLE {name} RENAME TO {merged};
        FOR r IN SELECT c.relname::text AS range FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = '{merged}'::regclass AND left(c.relname, length('{name}_p')) = '{name}_p'
        LOOP
            EXECUTE format('ALTER TABLE %I RENAME TO %I', r.range, '{merged}' || substr(r.range, length('{name}') + 1));
        END LOOP;
        RAISE NOTICE '{name} is now a view over {merged} and {live}';
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS {merged} (
    bucket            timestamptz NOT NULL,
    event_type        text COLLATE \"C\" NOT NULL,
    {dims},
    sample_ppm        integer     NOT NULL CHECK (sample_ppm > 0 AND sample_ppm <= 1000000),
    events            bigint      NOT NULL,
    attributed_events bigint      NOT NULL,
    price_micros      bigint      NOT NULL,
    revenue_micros    bigint      NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({key}, sample_ppm)
) PARTITION BY RANGE (bucket);{range_indexes}
CREATE TABLE IF NOT EXISTS {recent} (
    bucket            timestamptz NOT NULL,
    event_type        text COLLATE \"C\" NOT NULL,
    {dims},
    sample_ppm        integer     NOT NULL,
    events            bigint      NOT NULL,
    attributed_events bigint      NOT NULL,
    price_micros      bigint      NOT NULL,
    revenue_micros    bigint      NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- (a fold appends its sums, a move adds them up: no key, no room kept for
-- updates; an earlier build's keyed one loses both, by its owner only)
DO $$
DECLARE pkey text := (SELECT conname FROM pg_constraint WHERE conrelid = '{recent}'::regclass AND contype = 'p');
BEGIN
    IF pkey IS NOT NULL THEN
        IF NOT {owns_recent} THEN
            RAISE EXCEPTION '{recent} is keyed by an earlier build: run `bid-logger migrate` as the role that owns it (UPGRADING.md), then start this build';
        END IF;
        EXECUTE format('ALTER TABLE {recent} DROP CONSTRAINT %I', pkey);
        ALTER TABLE {recent} RESET (fillfactor);
        RAISE NOTICE '{recent}: folds now append to it';
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS {boundary} (
    rollup       text PRIMARY KEY,
    since        timestamptz NOT NULL,
    move_after   timestamptz,
    move_backoff interval NOT NULL DEFAULT interval '1 minute'
);
-- the boundary starts where a running warehouse's stands (a direct table's a minute
-- behind the clock, a coarse table's at the next bucket), after every bucket of the merged table
INSERT INTO {boundary} (rollup, since)
SELECT '{name}', greatest(to_timestamp(floor((extract(epoch FROM now()) / 60 + {shift}) / {grain}) * {secs}),
                          coalesce(max(bucket) + interval '{secs} seconds', '-infinity'))
FROM {merged}
WHERE NOT EXISTS (SELECT 1 FROM {boundary} WHERE rollup = '{name}')
ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {live} (
    bucket            timestamptz NOT NULL,
    event_type        text COLLATE \"C\" NOT NULL,
    {dims},
    sample_ppm        integer     NOT NULL,
    events            bigint      NOT NULL,
    attributed_events bigint      NOT NULL,
    price_micros      bigint      NOT NULL,
    revenue_micros    bigint      NOT NULL,
    log_id            bigint      NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- the live and recent tables are emptied every few seconds, and read
-- whole: their statistics steer no plan, and autovacuum's ANALYZE of them,
-- one a minute each, is PostgreSQL CPU spent for nothing; it now comes
-- every 2^31 rows changed (hours apart). Set by their owner only, where
-- no threshold is set (an operator's stays).
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['{live}', '{recent}'] LOOP
        IF pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = t::regclass), 'USAGE')
           AND NOT EXISTS (SELECT 1 FROM pg_class, unnest(reloptions) o
                           WHERE oid = t::regclass AND split_part(o, '=', 1) = 'autovacuum_analyze_threshold') THEN
            EXECUTE format('ALTER TABLE %I SET ({ANALYZE_RARELY})', t);
        END IF;
    END LOOP;
END $$;
DO $$
DECLARE
    r record;
    -- on Citus the view reads live rows from the live table only (its
    -- query stays on the workers), and the sink writes them there; so
    -- does a database set so (`bid_logger.live_rows = 'table'`)
    in_table boolean := {live_rows_in_table};
    view text := CASE WHEN in_table THEN {view_citus} ELSE {view} END;
BEGIN
    IF to_regclass('{log}') IS NULL THEN
        CREATE TABLE {log} (
            id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            events     bigint NOT NULL,
            rows       bigint NOT NULL,
            payload    bytea  NOT NULL,
            feeds      text
        );
        ALTER TABLE {log} ALTER COLUMN payload SET STORAGE EXTERNAL;
    END IF;
    -- a batch's live rows, held in its log row (one array per column,
    -- compressed by lz4 where the server has it, else stored as they are)
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{log}'::regclass AND attname = 'live_bucket'
                   AND NOT attisdropped) THEN
        IF NOT {owns_log} THEN
            RAISE EXCEPTION '{log} lacks the live rows'' columns of this build: run `bid-logger migrate` as the role that owns it (UPGRADING.md), then start this build';
        END IF;
        ALTER TABLE {log} {add_live}, ADD COLUMN written_at timestamptz;
        BEGIN
            EXECUTE 'ALTER TABLE {log} {lz4_live}';
        EXCEPTION WHEN OTHERS THEN
            ALTER TABLE {log} {external_live};
            RAISE NOTICE '{log}: live rows stored uncompressed (lz4: %)', SQLERRM;
        END;
    END IF;
    IF to_regclass('{name}') IS NULL THEN
        EXECUTE view;
    ELSIF (SELECT relkind FROM pg_class WHERE oid = to_regclass('{name}')) <> 'v' THEN
        RAISE EXCEPTION '{name} exists and is not a partitioned table or the view bid-logger makes: rename or drop it';
    ELSIF position('{boundary}' in pg_get_viewdef('{name}'::regclass)) = 0 THEN
        -- made by a release whose batches upserted late rows themselves:
        -- the live rows it shows now stop at the boundary (same columns,
        -- so its grants and its _est view stay); only its owner may
        IF NOT {owns_name} THEN
            RAISE EXCEPTION '{name} is the view of an earlier build: run `bid-logger migrate` as the role that owns it (UPGRADING.md), then start this build';
        END IF;
        EXECUTE view;
        RAISE NOTICE '{name}: its view now shows live rows from its boundary on';
    ELSIF in_table AND position('live_bucket' in pg_get_viewdef('{name}'::regclass)) > 0 THEN
        -- made before Citus was (the same rows, all pulled to the
        -- coordinator), or before the setting: its owner makes it read the
        -- live table only
        IF {owns_name} THEN
            EXECUTE view;
            RAISE NOTICE '{name}: its view now reads live rows from its live table';
        END IF;
    ELSIF NOT in_table AND position('live_bucket' in pg_get_viewdef('{name}'::regclass)) = 0 THEN
        -- an earlier build's view shows the live table's rows only; this
        -- build's batches hold theirs in the log: only its owner may
        IF NOT {owns_name} THEN
            RAISE EXCEPTION '{name} is the view of an earlier build: run `bid-logger migrate` as the role that owns it (UPGRADING.md), then start this build';
        END IF;
        EXECUTE view;
        RAISE NOTICE '{name}: its view now shows the live rows held in its log';
    ELSIF position('JOIN {boundary}' in pg_get_viewdef('{name}'::regclass)) = 0 THEN
        -- an earlier build's view read the boundary in a subquery, which
        -- kept PostgreSQL from scanning the merged ranges in parallel: the
        -- same rows, read slower, so a role that may not replace it goes on
        -- (and the migration logs a warning)
        IF {owns_name} THEN
            EXECUTE view;
            RAISE NOTICE '{name}: its view now joins its boundary (its merged ranges read in parallel again)';
        END IF;
    END IF;
    IF to_regclass('{name}_est') IS NULL THEN
        EXECUTE {est};
        -- whoever could read the table (renamed {merged}) reads its views
        FOR r IN SELECT DISTINCT grantee::text AS role FROM information_schema.role_table_grants
                 WHERE table_name = '{merged}' AND privilege_type = 'SELECT' AND grantee::text <> current_user
        LOOP
            EXECUTE format('GRANT SELECT ON {name}, {name}_est TO %I', r.role);
        END LOOP;
    END IF;
END $$;
",
            view = quote_literal(&self.view_sql()),
            view_citus = quote_literal(&self.view_sql_reading(false)),
            live_rows_in_table = LIVE_ROWS_IN_TABLE,
            est = quote_literal(&self.est_view_sql()),
            range_indexes = self.range_indexes_sql(),
            owns_recent = owned(&recent),
            owns_name = owned(name),
            owns_log = owned(&log),
            add_live = live_arrays.iter().map(|(c, t)| format!("ADD COLUMN {c} {t}[]")).collect::<Vec<_>>().join(", "),
            lz4_live = live_arrays.iter().map(|(c, _)| format!("ALTER COLUMN {c} SET COMPRESSION lz4")).collect::<Vec<_>>().join(", "),
            external_live =
                live_arrays.iter().map(|(c, _)| format!("ALTER COLUMN {c} SET STORAGE EXTERNAL")).collect::<Vec<_>>().join(", "),
        )
    }

    /// The indexes on the merged ranges of an hour or day table, whose
    /// ranges (a month, a year) hold hundreds of buckets, each only if
    /// missing:
    ///
    /// - a BRIN index on `bucket`: a query over some of a range's buckets
    ///   reads their pages only, rows being written in bucket order
    ///   (BENCHMARKS.md, "The views read in parallel again");
    /// - a B-tree on `bucket` per event type, partial (`WHERE event_type =
    ///   '<type>'`): a query of one type reads that type's rows only, where
    ///   the BRIN index reads every type's pages of the buckets (a 90-day
    ///   panel of impressions over `rollup_day`: a row in eight). PostgreSQL
    ///   takes it for a query naming one type (`event_type = '<type>'`),
    ///   not for a list of them (BENCHMARKS.md, "An index per event type").
    ///
    /// A minute table's hour ranges are read through their key, which
    /// starts with `bucket`.
    fn range_indexes_sql(&self) -> String {
        let Some(brin) = self.brin_index() else { return String::new() };
        let per_type: String = EventType::ALL
            .iter()
            .map(|t| {
                format!(
                    "
    IF to_regclass('{index}') IS NULL AND {owns_merged} THEN
        CREATE INDEX {index} ON {merged} (bucket) WHERE event_type = '{name}';
    END IF;",
                    index = self.type_index(*t),
                    name = t.as_str(),
                    merged = self.merged,
                    owns_merged = owned(&self.merged),
                )
            })
            .collect();
        // only its owner may make them (a writer role goes on without)
        format!(
            "
DO $$
BEGIN
    IF to_regclass('{brin}') IS NULL AND {owns_merged} THEN
        CREATE INDEX {brin} ON {merged} USING brin (bucket);
    END IF;{per_type}
END $$;",
            merged = self.merged,
            owns_merged = owned(&self.merged),
        )
    }

    /// The name of its merged ranges' BRIN index on `bucket` (see
    /// [`RollupTable::range_indexes_sql`]); `None` for a minute table, which has none.
    fn brin_index(&self) -> Option<String> {
        (self.shape.grain != Grain::Minute).then(|| format!("{}_bucket_brin", self.merged))
    }

    /// Its merged ranges' indexes: the BRIN index and one per event type
    /// ([`RollupTable::range_indexes_sql`]); none for a minute table.
    pub fn range_indexes(&self) -> Vec<String> {
        let Some(brin) = self.brin_index() else { return Vec::new() };
        std::iter::once(brin).chain(EventType::ALL.iter().map(|&t| self.type_index(t))).collect()
    }

    /// The name of its merged ranges' index of one event type's rows (at
    /// most 47 + 11 characters: within PostgreSQL's 63).
    fn type_index(&self, event_type: EventType) -> String {
        format!("{}_{}", self.merged, event_type.as_str())
    }

    /// The view readers query under the table's name: one row per key. Its
    /// rows are in three tables, split by the table's boundary `B` (its row
    /// of [`BOUNDARY_TABLE`]): the merged table holds keys of buckets before
    /// `B`, each once; `<name>_recent` (unkeyed, small) the folds' sums of
    /// buckets from `B` on, appended; the live rows of the batches not folded
    /// yet, held in their log rows (and in `<name>_live`, where an earlier
    /// build wrote them), of which the view shows those from `B` on (a late
    /// event's row, before `B`, is shown once folded into the merged table:
    /// never twice). The
    /// merged table is read as it is (its ranges pruned, its scans parallel,
    /// exactly as a plain table's), and only the recent and live rows, a few
    /// minutes of keys, are added up per key.
    pub fn view_sql(&self) -> String {
        self.view_sql_reading(true)
    }

    /// [`RollupTable::view_sql`], reading live rows from the log rows too
    /// when `log_rows` (not on Citus, where the live table alone keeps the
    /// view's query on the workers: a query that also reads the
    /// coordinator's log is run on the coordinator, every row of it pulled
    /// there; the sink writes the live rows where the view reads them).
    pub fn view_sql_reading(&self, log_rows: bool) -> String {
        let key = self.key_columns();
        let cols = format!("{key}, sample_ppm, events, attributed_events, price_micros, revenue_micros, updated_at");
        // The live rows its log holds, unnested (text in the collation of
        // the tables' columns).
        let live = self.live_array_columns();
        let arrays = live.iter().map(|(c, _)| format!("l.{c}")).collect::<Vec<_>>().join(", ");
        let names: Vec<&str> = live.iter().map(|(c, _)| &c["live_".len()..]).collect();
        let held = live
            .iter()
            .zip(&names)
            .map(|((_, t), n)| if *t == "text" { format!("u.{n} COLLATE \"C\"") } else { format!("u.{n}") })
            .collect::<Vec<_>>()
            .join(", ");
        let names = names.join(", ");
        let live_rows = if log_rows {
            format!(
                "SELECT {cols}
      FROM (SELECT {cols} FROM {live}
            UNION ALL
            SELECT {held}, l.written_at FROM {log} l CROSS JOIN LATERAL unnest({arrays}) AS u({names})) live",
                live = self.live_table(),
                log = self.log_table(),
            )
        } else {
            format!("SELECT {cols} FROM {}", self.live_table())
        };
        format!(
            "CREATE OR REPLACE VIEW {name} AS
SELECT {cols} FROM {merged}
UNION ALL
SELECT {key}, sample_ppm, sum(events)::bigint, sum(attributed_events)::bigint, sum(price_micros)::bigint,
       sum(revenue_micros)::bigint, max(updated_at)
FROM (SELECT {cols} FROM {recent}
      UNION ALL
      {live_rows}
      JOIN {boundary} ON rollup = '{name}' AND bucket >= since) open
GROUP BY {key}, sample_ppm",
            name = self.name,
            merged = self.merged,
            recent = self.recent_table(),
            boundary = BOUNDARY_TABLE,
        )
    }

    /// Its rows, each with its measures corrected for sampling as its
    /// `_est` view corrects them ([`RollupTable::est_view_sql`]), but not
    /// added up per key (and in `double precision`, not `numeric`): what a
    /// query that groups them itself should read. The view's grouping by
    /// every key costs a hash aggregate of every row of the range before
    /// the query's own: a 90-day report by campaign over `rollup_day_est`
    /// took 7 s where these rows took 0.5 s (BENCHMARKS.md, "A report over
    /// a long range").
    pub fn estimated_rows_sql(&self) -> String {
        let est = |m: &str| format!("{m}::float8 * 1000000 / sample_ppm AS {m}");
        format!(
            "SELECT {key}, {events}, {attributed}, {price}, {revenue} FROM {name}",
            key = self.key_columns(),
            events = est("events"),
            attributed = est("attributed_events"),
            price = est("price_micros"),
            revenue = est("revenue_micros"),
            name = self.name,
        )
    }

    /// Its `_est` view: rows scaled by `1e6 / sample_ppm` and added up over
    /// rates. A plain `GROUP BY` over the table, so PostgreSQL pushes a
    /// query's conditions on `bucket` (and the dimensions) into the scan and
    /// prunes partitions.
    pub fn est_view_sql(&self) -> String {
        let key = self.key_columns();
        format!(
            "CREATE VIEW {name}_est AS
SELECT {key},
       sum(events            * 1000000.0 / sample_ppm)::double precision AS events,
       sum(attributed_events * 1000000.0 / sample_ppm)::double precision AS attributed_events,
       sum(price_micros      * 1000000.0 / sample_ppm)::double precision AS price_micros,
       sum(revenue_micros    * 1000000.0 / sample_ppm)::double precision AS revenue_micros,
       max(updated_at) AS updated_at
FROM {name}
GROUP BY {key}",
            name = self.name
        )
    }

    /// Its recent table: the folded sums of buckets from its boundary on.
    pub fn recent_table(&self) -> String {
        format!("{}_recent", self.name)
    }

    /// The bucket start (in minutes) its boundary moves to at a fold at
    /// `now_minute`: a direct table's stays [`LIVE_MINUTES`] behind (its
    /// batches append newer rows), a coarse table's is the next bucket (only
    /// consumptions write it: everything goes to the merged table but rows
    /// of buckets ahead of the clock).
    pub fn next_boundary(&self, now_minute: i64) -> i64 {
        let grain = self.shape.grain.minutes();
        let at = if self.logged { now_minute + grain } else { now_minute - LIVE_MINUTES };
        at - at.rem_euclid(grain)
    }

    /// Where a move at `now_minute` takes its boundary from `since` (all in
    /// minutes), its recent table's oldest bucket being `oldest`: to
    /// [`RollupTable::next_boundary`], but past no more than
    /// [`MOVE_MOST_BUCKETS`] buckets of recent rows beyond one consumption
    /// interval's, counted from `oldest` (so that empty buckets are passed
    /// at once, and a table consumed rarely still keeps up). The caller
    /// moves only when its next place is past `since`; this never is
    /// before it.
    pub fn move_to(&self, now_minute: i64, since: i64, oldest: Option<i64>) -> i64 {
        let next = self.next_boundary(now_minute);
        let Some(oldest) = oldest else { return next };
        let grain = self.shape.grain.minutes();
        let interval = (self.consume_interval().as_secs() as i64 + 60 * grain - 1) / (60 * grain);
        let most = since.max(oldest).saturating_add((MOVE_MOST_BUCKETS + interval) * grain);
        next.min(most - most.rem_euclid(grain))
    }

    /// Its recent table's oldest bucket, in minutes since the epoch (`NULL`
    /// when it is empty).
    pub fn oldest_recent_sql(&self) -> String {
        format!("SELECT floor(extract(epoch FROM min(bucket)) / 60)::bigint FROM {}", self.recent_table())
    }

    /// Moves the sums of buckets before `$1` from its recent table into its
    /// merged table, added up per key (the recent table holds a key once per
    /// fold that carried it), but those before `$2` (past its retention;
    /// none when `NULL`), which leave as the retention's ranges do: returns
    /// the keys moved. The merged table normally has no row of the buckets
    /// moved (the boundary is past its every bucket, and only moves write
    /// from there on), so they are inserted without a conflict check;
    /// `upsert` adds each to a row there instead, if any (written there by
    /// hand or by a tool: [`RollupTable::merged_holds_sql`]). Their
    /// `updated_at` is the move's time, as in the plain move's insert.
    pub fn move_sql(&self, upsert: bool) -> String {
        let key = self.key_columns();
        let cols = format!("{key}, sample_ppm, events, attributed_events, price_micros, revenue_micros, updated_at");
        let conflict = match upsert {
            true => format!("\n         ON CONFLICT ({key}, sample_ppm) DO UPDATE SET {ADD}"),
            false => String::new(),
        };
        format!(
            "WITH moved AS (DELETE FROM {recent} WHERE bucket < $1 RETURNING {cols}),
kept AS (INSERT INTO {merged} AS t ({cols})
         SELECT {key}, sample_ppm, sum(events), sum(attributed_events), sum(price_micros), sum(revenue_micros),
                now()
         FROM moved WHERE $2::timestamptz IS NULL OR bucket >= $2 GROUP BY {key}, sample_ppm{conflict}
         RETURNING 1)
SELECT count(*) FROM kept",
            recent = self.recent_table(),
            merged = self.merged,
        )
    }

    /// The plain move's first half: deletes its recent rows of buckets
    /// before `at_minute` (minutes since the epoch) and returns them as one
    /// binary `COPY` stream, in a log payload's layout (the key,
    /// `sample_ppm`, the four measures), for the logger to add up per key.
    /// (`COPY` takes no parameters: the bucket is a literal number.)
    pub fn move_out_sql(&self, at_minute: i64) -> String {
        format!(
            "COPY (DELETE FROM {recent} WHERE bucket < to_timestamp({secs}) RETURNING {key}, sample_ppm, events,
    attributed_events, price_micros, revenue_micros) TO STDOUT (FORMAT binary)",
            recent = self.recent_table(),
            secs = at_minute.saturating_mul(60),
            key = self.key_columns(),
        )
    }

    /// The plain move's second half: its log's stage (the sums, each key
    /// once, in key order) inserted into its merged table without a
    /// conflict check (`updated_at`: the move's time).
    pub fn stage_insert_sql(&self) -> String {
        let key = self.key_columns();
        format!(
            "INSERT INTO {merged} ({key}, sample_ppm, events, attributed_events, price_micros, revenue_micros)
SELECT {key}, sample_ppm, events, attributed_events, price_micros, revenue_micros FROM {stage}",
            merged = self.merged,
            stage = self.stage_name(true),
        )
    }

    /// Whether its merged table holds a row of a bucket in `[$1, $2)` (a
    /// probe of the primary key, which starts with `bucket`).
    pub fn merged_holds_sql(&self) -> String {
        format!("SELECT EXISTS (SELECT 1 FROM {} WHERE bucket >= $1 AND bucket < $2)", self.merged)
    }

    /// Its live table: the rows of the batches not folded yet.
    pub fn live_table(&self) -> String {
        format!("{}_live", self.name)
    }

    /// How often its log is consumed: a coarse table's flush interval, a
    /// direct table's fold interval.
    pub fn consume_interval(&self) -> Duration {
        if self.logged {
            self.flush_interval
        } else {
            self.fold_interval
        }
    }

    /// The binary `COPY` of a batch's live rows into its live table (the
    /// layout of a log payload, then the log row's id), where its view
    /// reads them there only (on Citus).
    pub fn live_copy_sql(&self) -> String {
        format!(
            "COPY {} ({}, sample_ppm, events, attributed_events, price_micros, revenue_micros, log_id) FROM STDIN (FORMAT binary)",
            self.live_table(),
            self.key_columns()
        )
    }

    /// Deletes the live rows written to its live table (by an earlier
    /// build, or where its view reads them there) for the log rows `$1`
    /// (consumed).
    pub fn live_delete_sql(&self) -> String {
        format!("DELETE FROM {} WHERE log_id = ANY($1::bigint[])", self.live_table())
    }

    /// `CREATE TEMP TABLE` for its staging table (`from_log`: the one its
    /// log's payloads are copied into, with `sample_ppm`).
    pub fn stage_sql(&self, from_log: bool) -> String {
        format!(
            "CREATE TEMP TABLE IF NOT EXISTS {stage} (
    bucket timestamptz NOT NULL, event_type text NOT NULL, {dims},{ppm}
    events bigint NOT NULL, attributed_events bigint NOT NULL, price_micros bigint NOT NULL,
    revenue_micros bigint NOT NULL
) ON COMMIT DELETE ROWS",
            stage = self.stage_name(from_log),
            dims = self.dimension_definitions().replace(" COLLATE \"C\"", ""),
            ppm = if from_log { " sample_ppm integer NOT NULL," } else { "" },
        )
    }

    /// Its log's staging table (temporary, per connection).
    pub fn log_stage_table(&self) -> String {
        self.stage_name(true)
    }

    fn stage_name(&self, from_log: bool) -> String {
        if from_log {
            format!("bid_logger_stage_log_{}", self.name)
        } else {
            self.stage_table()
        }
    }

    /// The binary `COPY` into its stage (`from_log`: the log's stage, with
    /// `sample_ppm` after the key, the layout of a log payload).
    pub fn copy_sql(&self, from_log: bool) -> String {
        let key = self.key_columns();
        let ppm = if from_log { ", sample_ppm" } else { "" };
        format!(
            "COPY {} ({key}{ppm}, events, attributed_events, price_micros, revenue_micros) FROM STDIN (FORMAT binary)",
            self.stage_name(from_log)
        )
    }

    /// Appends one batch's rows to its log: `$1` events, `$2` rows, `$3`
    /// payload, `$4` the tables they go on to ([`feeds_of`]); returns the
    /// log row's id.
    pub fn log_append_sql(&self) -> String {
        format!("INSERT INTO {} (events, rows, payload, feeds) VALUES ($1, $2, $3, $4) RETURNING id", self.log_table())
    }

    /// The columns of its log that hold a batch's live rows (a direct
    /// table's rows of buckets from its boundary on, as the batch's process
    /// knew it), one array per column of the view, in the order of a log
    /// payload's fields: (column, element type).
    pub fn live_array_columns(&self) -> Vec<(String, &'static str)> {
        let mut cols = vec![("live_bucket".to_string(), "timestamptz"), ("live_event_type".to_string(), "text")];
        for d in self.shape.dims.iter() {
            cols.push((format!("live_{}", d.column()), if d.is_text() { "text" } else { "bigint" }));
        }
        cols.push(("live_sample_ppm".to_string(), "integer"));
        for m in ["events", "attributed_events", "price_micros", "revenue_micros"] {
            cols.push((format!("live_{m}"), "bigint"));
        }
        cols
    }

    /// [`RollupTable::log_append_sql`] with the batch's live rows: `$5` on,
    /// one array per [`RollupTable::live_array_columns`].
    pub fn log_append_live_sql(&self) -> String {
        let cols = self.live_array_columns();
        let names: Vec<&str> = cols.iter().map(|(c, _)| c.as_str()).collect();
        let params: Vec<String> = cols.iter().enumerate().map(|(i, (_, t))| format!("${}::{t}[]", i + 5)).collect();
        format!(
            "INSERT INTO {} (events, rows, payload, feeds, {}, written_at) VALUES ($1, $2, $3, $4, {}, now()) RETURNING id",
            self.log_table(),
            names.join(", "),
            params.join(", ")
        )
    }

    /// Takes (deletes and returns) the oldest `$1` payloads of its log.
    pub fn log_take_sql(&self) -> String {
        let log = self.log_table();
        format!(
            "DELETE FROM {log} WHERE id IN (SELECT id FROM {log} ORDER BY id LIMIT $1) RETURNING events, payload, id, feeds"
        )
    }

    /// The upsert of its log's stage into its merged table: the consumed
    /// payloads' sums of buckets before its boundary, each key once, in
    /// key order (see the sink's `payload::Merged`).
    pub fn log_upsert_sql(&self) -> String {
        let key = self.key_columns();
        format!(
            "INSERT INTO {merged} AS t ({key}, sample_ppm, events, attributed_events, price_micros, revenue_micros, updated_at)
SELECT {key}, sample_ppm, events, attributed_events, price_micros, revenue_micros, now()
FROM {stage}
ON CONFLICT ({key}, sample_ppm) DO UPDATE SET {ADD}",
            stage = self.stage_name(true),
            merged = self.merged,
        )
    }

    /// The binary `COPY` of a fold's sums of buckets from its boundary on
    /// into its recent table (the layout of a log payload; no conflict
    /// check: an upsert there, every fold, cost PostgreSQL more than
    /// everything else a fold does, `BENCHMARKS.md`, "Recent rows
    /// appended"; and no stage).
    pub fn recent_copy_sql(&self) -> String {
        format!(
            "COPY {} ({}, sample_ppm, events, attributed_events, price_micros, revenue_micros) FROM STDIN (FORMAT binary)",
            self.recent_table(),
            self.key_columns()
        )
    }
}

/// The bit of the table `name` in a mask over `tables` (bit `i`: the
/// `i`th; 0 when it is not among them or past the 64th).
pub fn bit_of(tables: &[RollupTable], name: &str) -> u64 {
    tables.iter().position(|t| t.name == name).map_or(0, |i| 1u64.checked_shl(i as u32).unwrap_or(0))
}

/// The storage parameter of the live and recent tables: autovacuum's
/// `ANALYZE` of them about every 2^31 rows changed, not every minute
/// (`BENCHMARKS.md`, "Live and recent tables analyzed rarely").
pub const ANALYZE_RARELY: &str = "autovacuum_analyze_threshold=2147483647";

/// The additive `DO UPDATE` of every upsert.
const ADD: &str = "events = t.events + EXCLUDED.events,
    attributed_events = t.attributed_events + EXCLUDED.attributed_events,
    price_micros = t.price_micros + EXCLUDED.price_micros,
    revenue_micros = t.revenue_micros + EXCLUDED.revenue_micros,
    updated_at = EXCLUDED.updated_at";

/// SQL true when the current role may act as `relation`'s owner (alter
/// it, replace it, index it): an earlier build's schema is changed by its
/// owner only.
fn owned(relation: &str) -> String {
    format!("pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = '{relation}'::regclass), 'USAGE')")
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The dimensions of an existing table, from the catalog (`None` when it
/// does not exist).
pub const EXISTING_COLUMNS: &str = "SELECT column_name::text FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = $1";

/// Checks that an existing table has the declared dimensions; the error
/// names the key to change.
pub fn check_existing(table: &RollupTable, columns: &[String]) -> Result<(), String> {
    if columns.is_empty() {
        return Ok(());
    }
    let has: Vec<Dimension> = Dimension::ALL.into_iter().filter(|d| columns.iter().any(|c| c == d.column())).collect();
    if Dimensions::of(&has) != table.shape.dims {
        let names = |ds: &mut dyn Iterator<Item = Dimension>| ds.map(Dimension::as_str).collect::<Vec<_>>().join(", ");
        return Err(format!(
            "`rollup.{}.dimensions`: the table exists with dimensions [{}], the configuration declares [{}]; \
             declare a new table name instead (an existing table is never altered)",
            table.name,
            names(&mut has.into_iter()),
            names(&mut table.shape.dims.iter()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(name: &str, grain: Grain, dims: &[Dimension], interval_s: u64) -> RollupTable {
        RollupTable {
            name: name.to_string(),
            shape: Shape { grain, dims: Dimensions::of(dims) },
            flush_interval: Duration::from_secs(interval_s),
            retention: None,
            logged: interval_s > 1,
            fed_by: None,
            fold_interval: FOLD_INTERVAL,
            merged: format!("{name}_merged"),
        }
    }

    #[test]
    fn a_boundary_left_behind_catches_up_a_few_buckets_of_recent_rows_per_move() {
        let minute = declared("m", Grain::Minute, &[Dimension::Country], 1); // folded every 10 s
        let hour = declared("h", Grain::Hour, &[Dimension::Country], 60); // consumed every minute
        let mut rare = minute.clone();
        rare.fold_interval = Duration::from_secs(3600);
        let now = 483_334 * 60; // minutes since the epoch, on an hour
        let (back, day) = (now - 600, now - 60 * 24);
        assert_eq!(minute.move_to(now, now - 2, Some(now - 2)), now - 1, "a minute back, as normally");
        assert_eq!(minute.move_to(now, now - 1, Some(now - 1)), now - 1, "not past it: no move");
        assert_eq!(minute.move_to(now, back, Some(back)), back + 6, "rows ten hours back: six minutes on");
        assert_eq!(minute.move_to(now, back, Some(now - 3)), now - 1, "empty buckets passed at once");
        assert_eq!(minute.move_to(now, back, None), now - 1, "no recent row: straight there");
        assert_eq!(rare.move_to(now, back, Some(back)), back + 65, "folded hourly: an hour and five minutes on");
        assert_eq!(hour.move_to(now, now, Some(now)), now + 60, "the next hour, as normally");
        assert_eq!(hour.move_to(now, day, Some(day)), day + 6 * 60, "a day behind: six hours on");
        assert_eq!(minute.move_to(now, i64::MIN, Some(i64::MIN)), i64::MIN + 6, "no overflow");
    }

    fn feeders(tables: &[RollupTable]) -> Vec<(&str, Option<&str>)> {
        tables.iter().map(|t| (t.name.as_str(), t.fed_by.as_deref())).collect()
    }

    #[test]
    fn the_hour_tables_are_fed_from_the_minute_tables_folds_and_the_day_table_from_the_hour_tables() {
        let tables = default_tables(Duration::from_secs(1));
        assert_eq!(
            feeders(&tables),
            [
                ("rollup_minute", None),
                ("rollup_hour", Some("rollup_minute")),
                ("rollup_day", Some("rollup_hour")),
                ("rollup_exchange_minute", None),
                ("rollup_exchange_hour", Some("rollup_exchange_minute")),
            ]
        );
        assert_eq!(batch_source(&tables, 2), 0);
        assert_eq!(feeds_of(&tables, "rollup_minute"), "rollup_minute>rollup_hour,rollup_hour>rollup_day");
        assert_eq!(feeds_of(&tables, "rollup_hour"), "rollup_hour>rollup_day");
        assert_eq!(feeds_of(&tables, "rollup_day"), "");
        assert_eq!(below(&links(&feeds_of(&tables, "rollup_minute")), "rollup_hour"), "rollup_hour>rollup_day");
        // rollup_minute's batch rows keep what rollup_day keeps (forever)
        assert_eq!(projection_oldest_minute(&tables, 0, 86_400_000 * 1000), i64::MIN);
        assert_ne!(tables[0].oldest_minute(86_400_000 * 1000), i64::MIN);
        // the builds before: only rollup_hour fed another table
        assert_eq!(feeds_before(&tables, "rollup_minute"), "");
        assert_eq!(feeds_before(&tables, "rollup_hour"), "rollup_hour>rollup_day");
        assert_eq!(feeds_before(&tables, "rollup_exchange_minute"), "");
    }

    #[test]
    fn a_table_is_fed_by_the_coarsest_table_that_can_compute_it_and_never_in_a_cycle() {
        use Dimension::*;
        let mut tables = default_tables(Duration::from_secs(1));
        tables.push(declared("exchange_day", Grain::Day, &[Exchange, Country], 300));
        tables.push(declared("twin_a", Grain::Hour, &[Os], 300));
        tables.push(declared("twin_b", Grain::Hour, &[Os], 300));
        tables.push(declared("fast_day", Grain::Day, &[Country], 5)); // more often than the minute tables' folds
        tables.push(declared("direct_day", Grain::Day, &[Country], 1)); // every batch: no log
        tables.push(declared("minute_fed", Grain::Hour, &[Country], 60)); // more often than the hour tables
        link(&mut tables);
        let f = feeders(&tables);
        assert_eq!(f[5], ("exchange_day", Some("rollup_exchange_hour")));
        assert_eq!(f[6], ("twin_a", Some("rollup_exchange_hour")), "fewer dimensions than rollup_hour");
        assert_eq!(f[7], ("twin_b", Some("twin_a")), "the same shape: only an earlier table");
        assert_eq!(f[8], ("fast_day", None), "no feeder is consumed as often");
        assert_eq!(f[9], ("direct_day", None));
        assert_eq!(f[10], ("minute_fed", Some("rollup_exchange_minute")), "a direct table's folds (every 10 s)");
        for t in 0..tables.len() {
            assert!(tables[batch_source(&tables, t)].fed_by.is_none(), "every chain ends at a batch-fed table");
        }
    }
}
