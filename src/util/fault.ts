/**
 * Fault injection at named points of crash-sensitive code (checkpoint saves), so tests can crash a
 * process at an exact instant instead of racing a real kill. Two ways in:
 *   - LLMCTL_FAULT=<point>[:<n>] in the environment: the process SIGKILLs itself at the n-th (default
 *     first) time it reaches <point>, exactly like `kill -9` there;
 *   - setFaultHook(fn) in-process: fn runs at every point and may throw (e.g. a simulated ENOSPC).
 * Points: save:fill (temp dir written, before fsync), save:swapped-aside (old checkpoint renamed away,
 * new one not yet in place), save:done (after the swap).
 */
let hook: ((point: string) => void) | undefined;
const hits = new Map<string, number>();

export function setFaultHook(fn: ((point: string) => void) | undefined): void {
  hook = fn;
}

export function faultPoint(point: string): void {
  hook?.(point);
  const spec = process.env.LLMCTL_FAULT;
  if (!spec) return;
  const [, name, nth] = /^(.*?)(?::(\d+))?$/.exec(spec)!;
  if (name !== point) return;
  const n = (hits.get(point) ?? 0) + 1;
  hits.set(point, n);
  if (n === Number(nth ?? 1)) process.kill(process.pid, 'SIGKILL');
}
