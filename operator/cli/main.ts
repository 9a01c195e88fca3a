#!/usr/bin/env node
// The `gpugate` executable (package.json bin). Everything is in cli.ts so tests can run it in-process.
import { runCli } from './cli.ts';

process.exitCode = await runCli(process.argv.slice(2));
