// `node producer.js preload N`: N no-op jobs through Queue.addBulk (1,000 a call).
// `node producer.js lines`: one job per line read on stdin, each carrying the time it was added (the
// latency benchmark paces the lines; the timestamp is taken here, right before Queue.add).
"use strict";
const readline = require("readline");
const { Queue } = require("bullmq");
const { QUEUE, connection, now } = require("./common");

async function main() {
  const queue = new Queue(QUEUE, { connection });
  const [mode, arg] = process.argv.slice(2);
  if (mode === "preload") {
    const n = Number(arg);
    for (let off = 0; off < n; off += 1000) {
      const size = Math.min(1000, n - off);
      await queue.addBulk(Array.from({ length: size }, () => ({ name: "noop", data: {} })));
    }
  } else if (mode === "lines") {
    const rl = readline.createInterface({ input: process.stdin });
    for await (const _line of rl) {
      await queue.add("lat", { t: now() });
      process.stdout.write("ok\n");
    }
  } else {
    throw new Error(`usage: producer.js preload N | lines (got ${mode})`);
  }
  await queue.close();
}
main().catch((err) => {
  console.error(err);
  process.exit(1);
});
