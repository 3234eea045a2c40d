// duckdb_sessions.mjs - the DuckDB peer of bench/run: the same gap
// sessionization as sessionizer, as one batch SQL query.
//
//   node bench/duckdb_sessions.mjs FILE [--threads 2] [--gap-s 50]
//                                       [--mode discard|store] [--out DB]
//
// read_ndjson -> per user, LAG(event_time) marks a new session where the gap
// to the previous visit exceeds G (a visit exactly G after the previous one
// joins, as in the engine), a running SUM numbers the sessions, GROUP BY
// lists the pages in event-time order.
//
//   --mode discard  the sessions (lists built) are reduced to a checksum and
//                   dropped: the peer of sessionizer's null: sink.
//   --mode store    they are written to a table in a DuckDB database file
//                   (--out, default bench/out/duck.db, recreated) and
//                   CHECKPOINTed to disk (CREATE TABLE AS: no key).
//   --mode keyed    the same, into a table with a PRIMARY KEY (user_id,
//                   session_no) through INSERT OR REPLACE: an upsert on a
//                   key, like the sqlite: sink's PRIMARY KEY (session_id,
//                   user_id). The like-for-like peer of the sqlite: sink.
//
// Prints one JSON line: {"seconds": wall time of the timed part (connect +
// query [+ CHECKPOINT]), "sessions", "pages", "max_pages", "signature"} with
// signature = sum(user_id * n_pages) mod (2^61 - 1), which bench/run compares
// with sessionizer's output.
//
// The page lists are built with list_sort over {event_time, page} structs and
// not with list(page ORDER BY event_time): same result up to ties, and 2-3x
// faster in DuckDB 1.x (ordered aggregates sort per group). The peer gets its
// fastest formulation.
//
// Semantic differences (see docs/performance.md): a batch query has no
// watermark and no lateness, so a visit sessionizer would dead-letter as late
// still joins its session here (bench/run uses a file whose disorder stays
// within the lateness and checks that nothing was late, so both must agree);
// ties in event time are ordered by page name here and by input order in
// sessionizer; there are no session ids (they need the byte offsets of the
// lines); nothing is incremental or restartable.
import { DuckDBInstance } from '@duckdb/node-api';
import { rmSync } from 'node:fs';

const args = process.argv.slice(2);
let file = null, threads = 2, gapS = 50, mode = 'discard', out = 'bench/out/duck.db';
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--threads') threads = Number(args[++i]);
  else if (args[i] === '--gap-s') gapS = Number(args[++i]);
  else if (args[i] === '--mode') mode = args[++i];
  else if (args[i] === '--out') out = args[++i];
  else file = args[i];
}
if (!file || !['discard', 'store', 'keyed'].includes(mode)) {
  console.error('usage: duckdb_sessions.mjs FILE [--threads N] [--gap-s S] [--mode discard|store|keyed] [--out DB]');
  process.exit(2);
}
const lit = (s) => "'" + s.replaceAll("'", "''") + "'";
if (mode !== 'discard') for (const f of [out, out + '.wal']) rmSync(f, { force: true });

const sessions = `
WITH v AS (
  SELECT user_id, page, event_time
  FROM read_ndjson(${lit(file)},
                   columns = {user_id: 'BIGINT', page: 'VARCHAR', event_time: 'TIMESTAMP'})
),
marked AS (
  SELECT *,
         CASE WHEN event_time - LAG(event_time) OVER w <= INTERVAL ${gapS} SECOND
              THEN 0 ELSE 1 END AS new_session
  FROM v
  WINDOW w AS (PARTITION BY user_id ORDER BY event_time)
),
numbered AS (
  SELECT *,
         SUM(new_session) OVER (PARTITION BY user_id ORDER BY event_time
                                ROWS UNBOUNDED PRECEDING) AS session_no
  FROM marked
)
SELECT user_id, session_no,
       list_transform(list_sort(list({'t': event_time, 'p': page})), x -> x.p) AS pages
FROM numbered
GROUP BY user_id, session_no`;
const summary = (rel) => `
SELECT count(*) AS sessions, sum(len(pages)) AS pages, max(len(pages)) AS max_pages,
       sum(user_id::HUGEINT * len(pages)) % 2305843009213693951 AS signature
FROM ${rel}`;

const t0 = process.hrtime.bigint();
const db = await DuckDBInstance.create(mode === 'discard' ? ':memory:' : out, { threads: String(threads) });
const con = await db.connect();
let row;
if (mode === 'discard') {
  // hash() over every list forces the lists to be built, then drops them.
  const r = await con.runAndReadAll(`
WITH s AS (${sessions})
SELECT count(*) AS sessions, sum(len(pages)) AS pages, max(len(pages)) AS max_pages,
       sum(user_id::HUGEINT * len(pages)) % 2305843009213693951 AS signature,
       bit_xor(hash(user_id, pages)) AS h
FROM s`);
  row = r.getRowObjectsJson()[0];
} else if (mode === 'store') {
  await con.run(`CREATE TABLE sessions AS ${sessions}`);
  await con.run('CHECKPOINT');
} else {
  await con.run(`CREATE TABLE sessions (user_id BIGINT, session_no HUGEINT, pages VARCHAR[],
                                        PRIMARY KEY (user_id, session_no))`);
  await con.run(`INSERT OR REPLACE INTO sessions ${sessions}`);
  await con.run('CHECKPOINT');
}
const t1 = process.hrtime.bigint();
if (mode !== 'discard') row = (await con.runAndReadAll(summary('sessions'))).getRowObjectsJson()[0];
console.log(JSON.stringify({
  mode,
  seconds: Number(t1 - t0) / 1e9,
  threads,
  sessions: Number(row.sessions),
  pages: Number(row.pages),
  max_pages: Number(row.max_pages),
  signature: String(row.signature),
}));
