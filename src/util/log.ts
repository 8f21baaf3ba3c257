/**
 * Logging: pino JSON lines on stderr (stdout stays free for a command's real output: generated text,
 * --json summaries). On a TTY, long work shows one ora progress line instead of a stream of JSON.
 */
import pino, { type Logger } from 'pino';
import ora, { type Ora } from 'ora';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'silent';

let root: Logger = pino({ level: 'info', base: undefined }, pino.destination({ fd: 2, sync: true }));

export function setupLogger(level: LogLevel = 'info'): Logger {
  const dest = process.stderr.isTTY ? humanReadable : pino.destination({ fd: 2, sync: true });
  root = pino({ level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime }, dest);
  return root;
}

const LEVELS: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' };

/** On a terminal, people read "info  msg  key=value" lines; pipes and files get the JSON. */
const humanReadable = {
  write(line: string): void {
    const { level, time: _time, msg, ...fields } = JSON.parse(line) as Record<string, unknown>;
    const kv = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ');
    process.stderr.write(`${(LEVELS[level as number] ?? String(level)).padEnd(5)} ${String(msg ?? '')}${kv ? '  ' + kv : ''}\n`);
  },
};

export function log(): Logger {
  return root;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(r).padStart(2, '0')}s` : `${r}s`;
}

/**
 * A redrawn progress line needs a terminal of known, non-zero width: at 0 columns the spinner's
 * line-wrapping never converges and floods the terminal with escape codes. Otherwise: plain log lines.
 */
export function canShowProgressLine(stream: { isTTY?: boolean; columns?: number }): boolean {
  return Boolean(stream.isTTY) && typeof stream.columns === 'number' && stream.columns > 0;
}

/** Step progress: an ora line on a terminal (see canShowProgressLine), a pino record per update otherwise. */
export class Progress {
  private spinner: Ora | undefined;
  private readonly started = Date.now();

  constructor(private readonly label: string, private readonly total: number, tty = canShowProgressLine(process.stderr) && root.level !== 'silent') {
    if (tty) this.spinner = ora({ text: label, stream: process.stderr }).start();
  }

  /** fields: anything worth showing (loss, lr, tok/s); step counts from 1. */
  update(step: number, fields: Record<string, number | string>, startStep = 0): void {
    const elapsed = (Date.now() - this.started) / 1000;
    const done = step - startStep, left = this.total - step;
    const eta = done > 0 ? (elapsed / done) * left : NaN;
    if (this.spinner) {
      const parts = Object.entries(fields).map(([k, v]) => `${k} ${typeof v === 'number' ? fmt(v) : v}`);
      this.spinner.text = `${this.label} step ${step}/${this.total} | ${parts.join(' | ')} | ETA ${formatDuration(eta)}`;
    } else {
      root.info({ step, total: this.total, ...fields, eta_s: Number.isFinite(eta) ? Math.round(eta) : null }, this.label);
    }
  }

  /** A one-off line (eval results, checkpoint saved) that should stay visible above the spinner. */
  note(msg: string, fields: Record<string, unknown> = {}): void {
    if (this.spinner) {
      const text = this.spinner.text;
      this.spinner.stopAndPersist({ symbol: '•', text: `${msg} ${Object.entries(fields).map(([k, v]) => `${k}=${typeof v === 'number' ? fmt(v) : v}`).join(' ')}` });
      this.spinner.start(text);
    } else {
      root.info(fields, msg);
    }
  }

  done(msg: string): void {
    if (this.spinner) this.spinner.succeed(msg);
    else root.info(msg);
  }

  fail(msg: string): void {
    if (this.spinner) this.spinner.fail(msg);
    else root.error(msg);
  }
}

function fmt(v: number): string {
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toFixed(4);
}
