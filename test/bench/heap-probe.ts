// Loaded into a process under test with NODE_OPTIONS=--import (the operator benchmark does so for the data
// plane, which exports no Node.js runtime metrics): on SIGUSR2 it collects garbage and prints one JSON line
// {"msg":"heap", heapUsed, heapTotal, rss} in bytes, so a benchmark can read the live heap of the process.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
process.on('SIGUSR2', () => {
  gc();
  const { heapUsed, heapTotal, rss } = process.memoryUsage();
  process.stdout.write(`${JSON.stringify({ msg: 'heap', time: Date.now(), heapUsed, heapTotal, rss })}\n`);
});
