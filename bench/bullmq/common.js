// Connection options from BENCH_REDIS_URL (redis://host:port/db), the queue name the Python side uses.
"use strict";
const url = new URL(process.env.BENCH_REDIS_URL || "redis://127.0.0.1:6379/0");
exports.QUEUE = "bench";
exports.connection = {
  host: url.hostname,
  port: Number(url.port || 6379),
  db: Number((url.pathname || "/0").slice(1) || 0),
  maxRetriesPerRequest: null, // what BullMQ asks of a Worker's connection
};
// Wall-clock seconds with sub-millisecond resolution, the same clock as Python's time.time().
exports.now = () => (performance.timeOrigin + performance.now()) / 1000;
