import Table from 'cli-table3';
import type { CommandModule } from 'yargs';
import { ArenaConfigSchema } from '../config/arena.js';
import { runArena } from '../eval/arena/index.js';
import { DataError } from '../eval/read.js';
import { type GlobalArgs, InputError, handler, loadStageConfig, startBackend } from './common.js';

type Args = GlobalArgs & { models?: string; prompts?: string; judge?: string; out?: string; rounds?: number };

/** "a=runs/a,b=runs/b" → { a: 'runs/a', b: 'runs/b' } */
function parseModels(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of s.split(',').map((p) => p.trim()).filter(Boolean)) {
    const eq = part.indexOf('=');
    if (eq <= 0 || eq === part.length - 1) throw new InputError(`--models: '${part}' should be name=DIR`);
    out[part.slice(0, eq)] = part.slice(eq + 1);
  }
  return out;
}

const fmt = (x: number) => x.toFixed(1);

export const arenaCommand: CommandModule<GlobalArgs, Args> = {
  command: 'arena',
  builder: (y) =>
    y
      .option('models', { type: 'string', describe: 'name=DIR,name=DIR,… checkpoints that answer the prompts' })
      .option('prompts', { type: 'string', describe: 'JSONL {"prompt"} or one prompt per line' })
      .option('judge', { type: 'string', describe: 'rm:DIR | human | battles:FILE' })
      .option('out', { type: 'string', describe: 'output directory (answers, battles/votes, ratings.json, arena.svg)' })
      .option('rounds', { type: 'number', describe: 'bootstrap rounds (default 1000)' })
      .example('$0 arena --config configs/arena.yaml', 'pretrain vs sft vs stories260K, judged by the reward model'),
  handler: handler<Args>('arena', async (args) => {
    const cfg = loadStageConfig(ArenaConfigSchema, args, {
      models: args.models ? parseModels(args.models) : undefined, prompts: args.prompts, judge: args.judge, out_dir: args.out,
      bootstrap_rounds: args.rounds, seed: args.seed,
    });
    if (!cfg.judge.startsWith('battles:')) await startBackend(args);
    let r;
    try {
      r = await runArena(cfg, { input: process.stdin, output: process.stdout, columns: process.stdout.columns });
    } catch (err) {
      if (err instanceof DataError) throw new InputError(err.message);
      throw err;
    }
    if (args.json) {
      process.stdout.write(JSON.stringify({ leaderboard: r.standings, battles: r.battles, files: r.files }) + '\n');
      return;
    }
    const t = new Table({ head: ['rank', 'model', 'Bradley–Terry', '95% CI', 'online Elo', '95% CI', 'battles', 'W/T/L'], style: { head: [], border: [] } });
    r.standings.forEach((s, i) => t.push([i + 1, s.model, fmt(s.bt.rating), `${fmt(s.bt.lower)} – ${fmt(s.bt.upper)}`, fmt(s.elo.rating), `${fmt(s.elo.lower)} – ${fmt(s.elo.upper)}`, s.battles, `${s.wins}/${s.ties}/${s.losses}`]));
    process.stdout.write(t.toString() + '\n');
    const w = new Table({ head: ['win rate (row beats col)', ...r.winRate.models], style: { head: [], border: [] } });
    r.winRate.models.forEach((m, i) => w.push([m, ...r.winRate.winRate[i]!.map((x) => (Number.isNaN(x) ? '—' : x.toFixed(2)))]));
    process.stdout.write(w.toString() + '\n');
    for (const [k, v] of Object.entries(r.files)) process.stdout.write(`${k}: ${v}\n`);
    if (r.chartSkipped) process.stderr.write(`${r.chartSkipped}\n`);
  }),
};
