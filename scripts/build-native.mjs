#!/usr/bin/env node
// `npm ci` / `npm install` run this: build the optional native kernels (native/llmctl_native.c) with node-gyp
// and the machine's C compiler. It never fails the install: without a compiler, headers or node-gyp,
// llmctl runs on tfjs's WASM kernels and says so in its log. LLMCTL_NATIVE=0 skips the build.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

if (process.env.LLMCTL_NATIVE === '0') {
  console.log('llmctl: LLMCTL_NATIVE=0, native kernels not built (WASM kernels will run)');
  process.exit(0);
}
// npm puts its bundled node-gyp on PATH for lifecycle scripts; outside npm, look for it beside npm.
const candidates = [
  process.env.npm_config_node_gyp,
  join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
].filter(Boolean);
let gyp = candidates.find((p) => existsSync(p));
if (!gyp) {
  try {
    gyp = createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
  } catch {
    gyp = undefined;
  }
}
// Without a nodedir node-gyp downloads Node's headers; offline, use the ones installed with Node if present.
const nodedir = process.env.npm_config_nodedir ?? (existsSync(join(dirname(process.execPath), '..', 'include', 'node', 'node_api.h')) ? join(dirname(process.execPath), '..') : undefined);
const args = ['rebuild', ...(nodedir ? [`--nodedir=${nodedir}`] : [])];
const cmd = gyp ? [process.execPath, [gyp, ...args]] : ['node-gyp', args];
const r = spawnSync(cmd[0], cmd[1], { stdio: 'inherit' });
if (r.status === 0) console.log('llmctl: native kernels built (build/Release/llmctl_native.node)');
else console.log(`llmctl: native kernels not built (${r.error ? r.error.message : `node-gyp exited ${r.status}`}); the WASM kernels will run`);
process.exit(0);
