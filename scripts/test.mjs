#!/usr/bin/env node
// `npm test`: node:test over every test/*.test.ts, each file named explicitly (Node 20 runs zero tests for a
// quoted glob or a bare folder). Extra arguments are passed through, e.g. `npm test -- --test-name-pattern=lora`
// or a list of files to run only those.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';

const args = process.argv.slice(2);
const named = args.filter((a) => a.endsWith('.test.ts'));
const flags = args.filter((a) => !a.endsWith('.test.ts'));
const files = named.length ? named : readdirSync('test').filter((f) => f.endsWith('.test.ts')).sort().map((f) => `test/${f}`);
const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', ...flags, ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
