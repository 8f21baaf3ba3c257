/**
 * Runs HumanEval programs (prompt + completion + test + check(entry_point), as openai/human-eval builds them)
 * each in its own python3 process: a fresh temporary directory as cwd and HOME, an empty environment,
 * resource limits set before the program runs (address space, CPU seconds, file size, no core dumps),
 * network and subprocess calls disabled (and a private network namespace via `unshare -rn` where the kernel
 * allows it), a wall-clock timeout that kills the whole process group, and a cap on captured output.
 * A program passes when it exits 0 within its limits; anything else is a failure with a reason.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface SandboxOptions {
  python: string;
  timeoutMs: number;
  memoryBytes: number;
  outputBytes: number;
  /** Programs run at once. */
  workers: number;
}

export const DEFAULT_SANDBOX: SandboxOptions = { python: 'python3', timeoutMs: 3000, memoryBytes: 512 * 2 ** 20, outputBytes: 64 * 1024, workers: 2 };

export interface RunResult {
  passed: boolean;
  /** passed | failed: <last line of stderr> | timed out | output limit | killed by <signal> */
  result: string;
  ms: number;
}

// Applied inside the child before the program is compiled; the guard follows human-eval's reliability_guard.
const GUARD = String.raw`
import sys, resource
mem, cpu, fsize = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
import os, socket, subprocess, shutil
def _blocked(*a, **k):
    raise PermissionError('blocked in the HumanEval sandbox')
for name in ('socket', 'create_connection', 'create_server', 'getaddrinfo', 'socketpair', 'fromfd'):
    setattr(socket, name, _blocked)
for name in ('system', 'fork', 'forkpty', 'kill', 'killpg', 'popen', 'execv', 'execve', 'execvp', 'execvpe', 'spawnv', 'spawnve', 'putenv', 'remove', 'unlink', 'removedirs', 'rmdir', 'rename', 'renames', 'truncate', 'chmod', 'chown', 'setuid'):
    if hasattr(os, name): setattr(os, name, _blocked)
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _blocked
shutil.rmtree = shutil.move = _blocked
src = open(sys.argv[1]).read()
exec(compile(src, 'program.py', 'exec'), {'__name__': '__main__'})
`;

let pythonChecked: Map<string, string | null> = new Map();

/** null when `python` runs; otherwise why not (for the "HumanEval skipped" message). */
export function pythonUnavailable(python: string): string | null {
  if (!pythonChecked.has(python)) {
    const r = spawnSync(python, ['-c', 'import resource, socket'], { encoding: 'utf8', timeout: 10_000 });
    pythonChecked.set(python, r.error ? `${python} not found (${(r.error as NodeJS.ErrnoException).code ?? r.error.message})` : r.status !== 0 ? `${python} cannot run the sandbox (${(r.stderr || '').trim().split('\n').pop()})` : null);
  }
  return pythonChecked.get(python)!;
}

let unshareWorks: boolean | undefined;
/** Whether `unshare -rn` (a user + network namespace: no interfaces but loopback) works here. */
export function networkNamespaceAvailable(): boolean {
  if (unshareWorks === undefined) {
    const r = spawnSync('unshare', ['-rn', 'true'], { timeout: 5000 });
    unshareWorks = !r.error && r.status === 0;
  }
  return unshareWorks;
}

/** The program human-eval's check_correctness executes. */
export function humanevalProgram(prompt: string, completion: string, test: string, entryPoint: string): string {
  return `${prompt}${completion}\n${test}\ncheck(${entryPoint})`;
}

export function runProgram(program: string, o: SandboxOptions = DEFAULT_SANDBOX): Promise<RunResult> {
  const dir = mkdtempSync(join(tmpdir(), 'llmctl-sandbox-'));
  writeFileSync(join(dir, 'program.py'), program);
  writeFileSync(join(dir, 'guard.py'), GUARD);
  const cpuSeconds = Math.max(1, Math.ceil(o.timeoutMs / 1000));
  const pyArgs = ['-I', '-B', join(dir, 'guard.py'), join(dir, 'program.py'), String(o.memoryBytes), String(cpuSeconds), String(1 << 20)];
  const [cmd, args] = networkNamespaceAvailable() ? ['unshare', ['-rn', o.python, ...pyArgs]] : [o.python, pyArgs];
  const t0 = performance.now();
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: dir, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir, LANG: 'C.UTF-8' }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let out = 0, stderr = '', verdict: string | undefined;
    const kill = (why: string) => {
      verdict ??= why;
      try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* already gone */ }
    };
    const timer = setTimeout(() => kill('timed out'), o.timeoutMs);
    const count = (chunk: Buffer, keep: boolean) => {
      out += chunk.length;
      if (keep && stderr.length < 4096) stderr += chunk.toString('utf8');
      if (out > o.outputBytes) kill('output limit');
    };
    child.stdout.on('data', (c: Buffer) => count(c, false));
    child.stderr.on('data', (c: Buffer) => count(c, true));
    child.on('error', (err) => { verdict ??= `failed: ${err.message}`; });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      rmSync(dir, { recursive: true, force: true });
      const ms = performance.now() - t0;
      if (verdict) return resolve({ passed: false, result: verdict, ms });
      if (code === 0) return resolve({ passed: true, result: 'passed', ms });
      const last = stderr.trim().split('\n').pop() ?? '';
      resolve({ passed: false, result: signal ? `killed by ${signal}` : `failed: ${last || `exit ${code}`}`, ms });
    });
  });
}

/** Run programs with at most `workers` at once; results in input order. */
export async function runPrograms(programs: string[], o: SandboxOptions = DEFAULT_SANDBOX, onDone?: (done: number) => void): Promise<RunResult[]> {
  const out: RunResult[] = Array(programs.length);
  let next = 0, done = 0;
  const worker = async () => {
    while (next < programs.length) {
      const i = next++;
      out[i] = await runProgram(programs[i]!, o);
      onDone?.(++done);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(o.workers, programs.length)) }, worker));
  return out;
}
