// BullMQ's Worker with a no-op processor, at its defaults (concurrency 1, completed jobs kept) unless
// BENCH_BULLMQ_CONCURRENCY sets the tuned mode. With BENCH_LATENCY_FILE the processor appends
// "<enqueued> <started>" first thing, like bench/latency_record.py.
"use strict";
const fs = require("fs");
const { Worker } = require("bullmq");
const { QUEUE, connection, now } = require("./common");

const latFile = process.env.BENCH_LATENCY_FILE;
const fd = latFile ? fs.openSync(latFile, "a") : null;
const processor = latFile
  ? async (job) => {
      const started = now();
      fs.writeSync(fd, `${job.data.t} ${started}\n`);
    }
  : async () => {};
const opts = { connection };
if (process.env.BENCH_BULLMQ_CONCURRENCY) opts.concurrency = Number(process.env.BENCH_BULLMQ_CONCURRENCY);
const worker = new Worker(QUEUE, processor, opts);
worker.on("error", (err) => console.error(err));
const stop = async () => {
  await worker.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
