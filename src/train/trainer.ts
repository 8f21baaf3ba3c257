/**
 * The one training loop every stage shares (pretrain, sft, lora, rm, dpo): AdamW, warmup + decay schedule,
 * gradient clipping and accumulation, periodic eval, periodic atomic checkpoints (with metrics.jsonl
 * inside them), resume on the same curve, SIGINT/SIGTERM → save and exit, non-finite loss or weights →
 * stop with the last good checkpoint kept, and the output-dir policy (lock, no silent overwrite) of
 * checkpoint/output.ts for any stage that did not apply it itself.
 * A stage supplies a loss over its own batch type and a way to save; the loop owns everything else.
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TrainerState } from '../checkpoint/manifest.js';
import { METRICS_FILE } from '../checkpoint/model.js';
import { closeOutputDir, isOutputOpen, openOutputDir } from '../checkpoint/output.js';
import type { OptimConfig, TrainLoopConfig } from '../config/schemas.js';
import { seedDropout } from '../model/kernels.js';
import { Progress, log } from '../util/log.js';
import { Rng } from '../util/rng.js';
import { AdamW, addGrads, clipGradNorm, learningRate } from './adamw.js';
import { type ParallelOptions, WorkerPool } from './parallel.js';

export interface BatchSource<B> {
  /** Draw the next training micro-batch; all randomness must come from rng (resume replays it). */
  next(rng: Rng): B;
  /** Tokens the batch trains on (for tokens/s). */
  tokens(batch: B): number;
  /** Free the batch's tensors. */
  dispose(batch: B): void;
}

export interface TrainJob<B> {
  stage: string;
  outDir: string;
  /** Trainable parameters; anything else the loss reads stays frozen. */
  params: Record<string, tf.Variable>;
  /** Scalar loss for one micro-batch, built from tensors only (runs under tf.variableGrads). */
  loss(batch: B): tf.Scalar;
  batches: BatchSource<B>;
  /**
   * Extra figures of the step just taken (e.g. DPO's rewards/margins), averaged over the step's
   * micro-batches (stepMeans); called once after every optimizer step and written to metrics.jsonl with
   * the loss on logged steps.
   */
  stepMetrics?(): Record<string, number>;
  /** Held-out metrics, e.g. { val_loss, val_ppl }; called every eval_every steps and at the end. */
  evaluate?(): Record<string, number>;
  /**
   * Write a checkpoint with the given trainer payload (model or adapter, as the stage decides); pass it
   * to saveCheckpoint as `trainer`. metricsText is the run's metrics.jsonl up to this step: the log is
   * written only inside the atomic save, so it always belongs to the checkpoint beside it.
   */
  save(payload: TrainPayload): Promise<void>;
  optim: OptimConfig;
  loop: TrainLoopConfig;
  /** From loadTrainerState(): continue where a previous run stopped. */
  resume?: { state: TrainerState; optimizer: Record<string, Float32Array> };
  /** Show a progress line/logs (default true). */
  quiet?: boolean;
  /** Called after every optimizer step (benchmarks and tests watch timing and memory here). */
  onStep?(info: { step: number; loss: number; seconds: number; tokens: number }): void;
  /** Data parallelism over loop.workers replicas (see parallel.ts); without it, or with 1 worker, all runs here. */
  parallel?: Omit<ParallelOptions<B>, 'workers'>;
  /**
   * Replace a checkpoint already in outDir. Only used when the stage has not opened outDir itself
   * (resumableDir does that, with the stage's --overwrite/--resume); see checkpoint/output.ts.
   */
  overwrite?: boolean;
}

/**
 * Means over a step's micro-batches of what the loss reports beside it (accuracies, rewards): `add` from
 * inside the loss, once per micro-batch; `take` as TrainJob.stepMetrics, which also starts the next step.
 */
export function stepMeans(): { add(values: Record<string, number>): void; take(): Record<string, number> } {
  let sums: Record<string, number> = {};
  let count = 0;
  return {
    add(values) {
      for (const [k, v] of Object.entries(values)) sums[k] = (sums[k] ?? 0) + v;
      count += 1;
    },
    take() {
      const means = Object.fromEntries(Object.entries(sums).map(([k, v]) => [k, v / count]));
      sums = {};
      count = 0;
      return means;
    },
  };
}

export interface TrainPayload {
  state: TrainerState;
  optimizer: Record<string, tf.Tensor>;
  metricsText: string;
  metrics: Record<string, number>;
}

export interface TrainResult {
  step: number;
  tokensSeen: number;
  finalLoss: number;
  losses: number[]; // one per optimizer step run in this call
  metrics: Record<string, number>;
  tokensPerSecond: number;
  interrupted: boolean;
  /** The signal that stopped the run early (SIGINT or SIGTERM), when interrupted. */
  signal?: 'SIGINT' | 'SIGTERM';
}

export class NonFiniteLossError extends Error {}

/** Signals that mean "stop cleanly": Ctrl-C, and what `docker stop` and job schedulers send. */
const STOP_SIGNALS = ['SIGINT', 'SIGTERM'] as const;

export async function train<B>(job: TrainJob<B>): Promise<TrainResult> {
  // Lock the output dir and apply the overwrite/resume policy, unless the stage already did.
  const ownsOutput = !isOutputOpen(job.outDir);
  if (ownsOutput) openOutputDir(job.outDir, { resume: Boolean(job.resume), overwrite: job.overwrite });
  try {
    return await trainLoop(job);
  } finally {
    if (ownsOutput) closeOutputDir(job.outDir);
  }
}

async function trainLoop<B>(job: TrainJob<B>): Promise<TrainResult> {
  const { loop, optim } = job;
  const replicas = loop.workers ?? 1; // (loop configs built by hand may predate the field)
  if (replicas > 1 && !job.parallel) throw new Error(`${job.stage}: train.workers > 1 is not supported by this stage`);
  const rng = new Rng(String(job.resume?.state.rng_state ?? loop.seed));
  let step = job.resume?.state.step ?? 0;
  let tokensSeen = job.resume?.state.tokens_seen ?? 0;
  let bestVal = job.resume?.state.best_val_loss ?? Infinity;
  let lastLoss = job.resume?.state.last_loss ?? NaN;
  if (step >= loop.max_steps) {
    // Resuming a finished run: nothing to train, and the checkpoint on disk is already final.
    log().info({ step, max_steps: loop.max_steps }, `${job.stage}: already at step ${step} of ${loop.max_steps}; nothing to do`);
    return { step, tokensSeen, finalLoss: lastLoss, losses: [], metrics: { train_loss: lastLoss }, tokensPerSecond: 0, interrupted: false };
  }
  const optimizer = new AdamW(job.params, optim);
  if (job.resume) optimizer.loadState(job.resume.optimizer, step);
  // The log so far: the resumed checkpoint's lines up to its step, then this run's. Kept in memory and
  // written inside each atomic save, so metrics.jsonl never describes steps its checkpoint lacks.
  const metricsLines = job.resume ? metricsUpTo(join(job.outDir, METRICS_FILE), step) : [];
  const record = (entry: Record<string, unknown>) => metricsLines.push(JSON.stringify({ ...entry, time: new Date().toISOString() }));
  let savedStep: number | undefined = job.resume ? step : undefined;
  const kept = () =>
    savedStep === undefined ? `no checkpoint of this run was saved in ${job.outDir}` : `${job.outDir} keeps the checkpoint of step ${savedStep}`;

  let stopSignal: (typeof STOP_SIGNALS)[number] | undefined;
  const onSignal = (signal: (typeof STOP_SIGNALS)[number]) => {
    if (stopSignal) process.exit(signal === 'SIGTERM' ? 143 : 130); // a second signal: leave now
    stopSignal = signal;
    log().warn(`${signal}: finishing this step, saving a checkpoint, then exiting (${signal === 'SIGINT' ? 'Ctrl-C' : 'signal'} again to abort)`);
  };
  for (const s of STOP_SIGNALS) process.on(s, onSignal);

  const progress = job.quiet ? undefined : new Progress(job.stage, loop.max_steps);
  const varList = Object.values(job.params);
  // variableGrads keys gradients by variable name; the optimizer and checkpoints use parameter names.
  const paramOfVar = new Map(Object.entries(job.params).map(([name, v]) => [v.name, name]));
  const byParamName = (g: Record<string, tf.Tensor>) => Object.fromEntries(Object.entries(g).map(([k, t]) => [paramOfVar.get(k) ?? k, t]));
  const startStep = step;
  const losses: number[] = [];
  let metrics: Record<string, number> = {};
  let lr = 0, tokensTimed = 0, secondsTimed = 0;
  const micros = loop.grad_accum * replicas; // micro-batches per optimizer step
  let pool: WorkerPool<B> | undefined;

  const state = (): TrainerState => ({
    step,
    tokens_seen: tokensSeen,
    rng_state: rng.getState(),
    lr,
    ...(Number.isFinite(lastLoss) ? { last_loss: lastLoss } : {}),
    ...(Number.isFinite(bestVal) ? { best_val_loss: bestVal } : {}),
    schedule: { kind: optim.schedule, peak_lr: optim.lr, min_lr: optim.min_lr, warmup_steps: optim.warmup_steps, total_steps: loop.max_steps },
  });
  const save = async (why: string) => {
    const moments = optimizer.stateTensors();
    // Never save what cannot be trained on: NaN/Inf weights or moments (a diverged run) stop the run.
    const bad = firstNonFinite(job.params) ?? firstNonFinite(moments);
    if (bad) {
      throw new NonFiniteLossError(
        `non-finite values in ${bad} after step ${step}; not saved, ${kept()}. Try a lower optim.lr or a smaller optim.grad_clip.`,
      );
    }
    try {
      await job.save({ state: state(), optimizer: moments, metricsText: metricsLines.map((l) => l + '\n').join(''), metrics: { ...metrics, step, train_loss: lastLoss } });
    } catch (err) {
      throw Object.assign(new Error(`saving step ${step} failed: ${(err as Error).message}${savedStep !== undefined ? ` (${kept()})` : ''}`), { cause: err });
    }
    savedStep = step;
    progress?.note(`checkpoint saved (${why})`, { step, dir: job.outDir });
  };
  const runEval = () => {
    if (!job.evaluate) return;
    const ev = job.evaluate();
    metrics = { ...metrics, ...ev };
    if (ev.val_loss !== undefined && ev.val_loss < bestVal) bestVal = ev.val_loss;
    record({ step, ...ev });
    progress?.note('eval', { step, ...ev });
  };

  try {
    if (replicas > 1) pool = await WorkerPool.start({ ...job.parallel!, workers: replicas }, job.params);
    while (step < loop.max_steps) {
      const t0 = performance.now();
      lr = learningRate(step, loop.max_steps, optim);
      let grads: Record<string, tf.Tensor> = {};
      let lossSum = 0, stepTokens = 0;
      let micro = 0;
      const local = async (batch: B) => {
        seedDropout(dropoutSeed(loop.seed, step, micro++));
        stepTokens += job.batches.tokens(batch);
        const { value, grads: g } = tf.variableGrads(() => job.loss(batch), varList);
        job.batches.dispose(batch);
        lossSum += (await value.data())[0]!;
        value.dispose();
        grads = addGrads(grads, byParamName(g));
      };
      if (!pool) {
        for (let micro = 0; micro < loop.grad_accum; micro++) await local(job.batches.next(rng));
      } else {
        // Draw every replica's micro-batches in single-process order; ours are the first grad_accum.
        const drawn: B[] = [];
        try {
          for (let i = 0; i < micros; i++) drawn.push(job.batches.next(rng));
        } catch (err) {
          for (const b of drawn) job.batches.dispose(b);
          throw err;
        }
        const others = drawn.slice(loop.grad_accum);
        for (const b of others) stepTokens += job.batches.tokens(b);
        const seeds = others.map((_, i) => dropoutSeed(loop.seed, step, loop.grad_accum + i));
        const remote = pool.run(others, loop.grad_accum, (b) => job.batches.dispose(b), seeds); // workers start now
        for (const b of drawn.slice(0, loop.grad_accum)) await local(b); // ...while this thread does its share
        const r = await remote;
        lossSum += r.lossSum;
        grads = addGrads(grads, r.grads); // already keyed by parameter name
      }
      const loss = lossSum / micros;
      if (micros > 1) grads = scaleAll(grads, 1 / micros);
      const gradNorm = Number.isFinite(loss) ? clipGradNorm(grads, optim.grad_clip) : NaN;
      if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
        for (const g of Object.values(grads)) g.dispose();
        throw new NonFiniteLossError(
          `non-finite ${Number.isFinite(loss) ? 'gradient norm' : 'loss'} at step ${step + 1}; stopped without saving, ${kept()}. ` +
            'Try a lower optim.lr or a smaller optim.grad_clip.',
        );
      }
      optimizer.apply(grads, lr);
      step += 1;
      tokensSeen += stepTokens;
      lastLoss = loss;
      losses.push(loss);
      const extra = job.stepMetrics?.() ?? {};
      const dt = (performance.now() - t0) / 1000;
      tokensTimed += stepTokens;
      secondsTimed += dt;
      const tokS = stepTokens / dt;
      job.onStep?.({ step, loss, seconds: dt, tokens: stepTokens });
      progress?.update(step, { loss, lr, 'tok/s': Math.round(tokS) }, startStep);
      if (step % loop.log_every === 0 || step === loop.max_steps) {
        record({ step, loss, ...extra, lr, grad_norm: gradNorm, tokens_seen: tokensSeen, tok_s: Math.round(tokS) });
      }
      if (loop.eval_every > 0 && step % loop.eval_every === 0 && step !== loop.max_steps) runEval();
      if (stopSignal) {
        await save('interrupted');
        return finish(true);
      }
      if (loop.save_every > 0 && step % loop.save_every === 0 && step !== loop.max_steps) await save('periodic');
      await new Promise((r) => setImmediate(r)); // let signals and I/O callbacks run between steps
    }
    runEval();
    await save('final');
    return finish(false);
  } catch (err) {
    progress?.fail(`${job.stage} stopped at step ${step}`);
    throw err;
  } finally {
    for (const s of STOP_SIGNALS) process.off(s, onSignal);
    optimizer.dispose();
    await pool?.close();
  }

  function finish(interrupted: boolean): TrainResult {
    const tokensPerSecond = secondsTimed > 0 ? tokensTimed / secondsTimed : 0;
    progress?.done(`${job.stage}: ${step} steps, loss ${lastLoss.toFixed(4)}, ${Math.round(tokensPerSecond)} tok/s`);
    return {
      step, tokensSeen, finalLoss: lastLoss, losses, metrics: { ...metrics, train_loss: lastLoss, tokens_per_second: tokensPerSecond }, tokensPerSecond, interrupted,
      ...(interrupted && stopSignal ? { signal: stopSignal } : {}),
    };
  }
}

/** The dropout mask seed of one micro-batch: a function of the run's seed and position, so a resume repeats it. */
export function dropoutSeed(seed: number, step: number, micro: number): number {
  return new Rng((BigInt(seed) << 32n) ^ (BigInt(step) << 12n) ^ BigInt(micro + 1)).nextU32();
}

/** Name of the first tensor holding NaN or ±Inf (x·0 is NaN exactly there), or undefined. */
function firstNonFinite(tensors: Record<string, tf.Tensor>): string | undefined {
  for (const [name, t] of Object.entries(tensors)) {
    const probe = tf.tidy(() => tf.sum(tf.mul(t, 0)));
    const ok = Number.isFinite(probe.dataSync()[0]);
    probe.dispose();
    if (!ok) return name;
  }
  return undefined;
}

function scaleAll(grads: Record<string, tf.Tensor>, s: number): Record<string, tf.Tensor> {
  const out: Record<string, tf.Tensor> = {};
  for (const [k, g] of Object.entries(grads)) {
    out[k] = tf.mul(g, s);
    g.dispose();
  }
  return out;
}

/** The resumed checkpoint's log lines up to its step (older llmctl versions logged past the checkpoint). */
function metricsUpTo(path: string, step: number): string[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8').split('\n').filter((line) => {
    if (!line.trim()) return false;
    try {
      return (JSON.parse(line) as { step?: number }).step! <= step;
    } catch {
      return false;
    }
  });
}

/** Rewrite a log that lives beside a checkpoint (ppo's metrics and samples) to the lines up to `step`. */
export function truncateMetrics(path: string, step: number): void {
  if (!existsSync(path)) return;
  writeFileSync(path, metricsUpTo(path, step).map((l) => l + '\n').join(''));
}
