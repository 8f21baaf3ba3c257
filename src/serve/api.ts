/**
 * The OpenAI-compatible HTTP API in front of the engine, on node:http: no framework, because the server is
 * five routes, SSE is a few writes on the response, and every limit (body size, timeouts, disconnects,
 * draining) is a plain event on the request/response/socket that node:http exposes directly — and nothing
 * new has to be installed.
 *
 *   POST /v1/completions, POST /v1/chat/completions (stream: true → server-sent events ending in [DONE])
 *   GET /v1/models, GET /health, GET /metrics (Prometheus text)
 *
 * Request bodies are validated with strict zod schemas: an unknown or invalid field is a 400 with OpenAI's
 * error body {"error": {"message", "type", "param", "code"}}.
 */
import { randomUUID } from 'node:crypto';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import { chatPromptIds } from '../model/prompt.js';
import type { ChatMessage } from '../tokenizer/index.js';
import { type ChoiceDelta, type Engine, type FinishReason, RequestError, type SamplingParams, type TokenLogprob } from './engine.js';
import type { ServeMetrics } from './metrics.js';

export interface ApiOptions {
  host: string;
  port: number;
  /** Name of the base model in `model` fields; adapters are served under their own names. */
  model_name: string;
  api_key?: string;
  /** Most sequences waiting for a slot; beyond it new requests get 429. */
  max_waiting: number;
  max_body_bytes: number;
  /** A request still running after this long is cancelled (0 = never). */
  request_timeout_s: number;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------- request schemas

const Sampling = {
  model: z.string(),
  max_tokens: z.int().positive().nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  /** vLLM's extension; -1 or 0 = off. */
  top_k: z.int().min(-1).nullish(),
  stop: z.union([z.string(), z.array(z.string()).max(4)]).nullish(),
  seed: z.int().nullish(),
  n: z.int().min(1).max(16).nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.strictObject({ include_usage: z.boolean().optional() }).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  /** vLLM's extension (CTRL's penalty); 1 = off. */
  repetition_penalty: z.number().gt(0).nullish(),
  user: z.string().nullish(),
};

const CompletionRequest = z.strictObject({
  ...Sampling,
  prompt: z.union([z.string(), z.array(z.string()).length(1), z.array(z.int().nonnegative()).min(1)]),
  /** Number of most likely alternatives per token (0..5), as OpenAI's legacy completions. */
  logprobs: z.int().min(0).max(5).nullish(),
  echo: z.literal(false).nullish(),
});

const ContentPart = z.strictObject({ type: z.literal('text'), text: z.string() });
const ChatRequest = z.strictObject({
  ...Sampling,
  messages: z.array(z.strictObject({
    role: z.enum(['system', 'developer', 'user', 'assistant']),
    content: z.union([z.string(), z.array(ContentPart)]),
    name: z.string().optional(),
  })).min(1),
  max_completion_tokens: z.int().positive().nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.int().min(0).max(20).nullish(),
});

type CompletionBody = z.infer<typeof CompletionRequest>;
type ChatBody = z.infer<typeof ChatRequest>;

function parseBody<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> {
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const path = [...issue.path, ...(issue.code === 'unrecognized_keys' ? [issue.keys[0]!] : [])].join('.');
  const message = issue.code === 'unrecognized_keys' ? `Unrecognized request argument supplied: ${issue.keys.join(', ')}` : `${path || 'body'}: ${issue.message}`;
  throw new HttpError(400, message, 'invalid_request_error', path || null, issue.code === 'unrecognized_keys' ? 'unrecognized_argument' : 'invalid_value');
}

// ---------------------------------------------------------------- server

export class ApiServer {
  readonly server: Server;
  private draining = false;
  private readonly created = Math.floor(Date.now() / 1000);
  /** Open responses, so a shutdown that times out can end them. */
  private readonly live = new Map<string, () => void>();

  constructor(
    readonly engine: Engine,
    readonly metrics: ServeMetrics,
    readonly opts: ApiOptions,
  ) {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err) => this.fail(res, err));
    });
    // Slow or stuck clients cannot hold a socket for ever while sending their request.
    this.server.headersTimeout = 30_000;
    this.server.requestTimeout = 60_000;
  }

  async listen(): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.opts.port, this.opts.host, () => resolve());
    });
    return this.server.address() as AddressInfo;
  }

  /**
   * Graceful stop: refuse new requests (and connections), let running ones finish for up to `timeoutMs`,
   * cancel whatever is left, close. Resolves with the number of requests cancelled.
   */
  async shutdown(timeoutMs: number): Promise<number> {
    this.draining = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.engine.whenIdle(), new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
    const left = [...this.live.values()];
    for (const end of left) end();
    this.server.closeIdleConnections();
    this.server.closeAllConnections();
    await closed;
    return left.length;
  }

  private modelNames(): string[] {
    return [this.opts.model_name, ...[...this.engine.variants.keys()].filter((k) => k !== '')];
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname.replace(/\/+$/, '') || '/';
    if (path === '/health' && req.method === 'GET') {
      if (this.draining) return sendJson(res, 503, { status: 'draining' });
      return sendJson(res, 200, { status: 'ok' });
    }
    if (path === '/metrics' && req.method === 'GET') {
      res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8' });
      res.end(this.metrics.render());
      return;
    }
    if (!path.startsWith('/v1/')) throw new HttpError(404, `Not found: ${req.method} ${path}`, 'invalid_request_error', null, 'not_found');
    if (this.opts.api_key !== undefined && req.headers.authorization !== `Bearer ${this.opts.api_key}`) {
      throw new HttpError(401, 'Incorrect API key provided. Send it as Authorization: Bearer <key>.', 'invalid_request_error', null, 'invalid_api_key');
    }
    if (path === '/v1/models' && req.method === 'GET') {
      return sendJson(res, 200, {
        object: 'list',
        data: this.modelNames().map((id) => ({
          id, object: 'model', created: this.created, owned_by: 'llmctl', root: this.opts.model_name,
          parent: id === this.opts.model_name ? null : this.opts.model_name, max_model_len: this.engine.config.n_ctx,
        })),
      });
    }
    const chat = path === '/v1/chat/completions';
    if (!chat && path !== '/v1/completions') throw new HttpError(404, `Not found: ${req.method} ${path}`, 'invalid_request_error', null, 'not_found');
    if (req.method !== 'POST') throw new HttpError(405, `Method ${req.method} not allowed on ${path}; use POST`, 'invalid_request_error', null, 'method_not_allowed');
    if (this.draining) throw new HttpError(503, 'The server is shutting down', 'server_error', null, 'shutting_down');
    const body = await this.readJson(req);
    const parsed = chat ? parseBody(ChatRequest, body) : parseBody(CompletionRequest, body);
    const model = this.variantOf(parsed.model);
    if (this.engine.numWaiting >= this.opts.max_waiting) {
      this.metrics.rejected++;
      res.setHeader('Retry-After', '1');
      throw new HttpError(429, `The server is busy (${this.engine.numWaiting} requests waiting); retry later`, 'rate_limit_error', null, 'rate_limit_exceeded');
    }
    const promptIds = chat ? this.chatPrompt(parsed as ChatBody) : this.completionPrompt(parsed as CompletionBody);
    const params = this.samplingParams(parsed, chat, promptIds.length);
    this.run(req, res, { chat, model, requestModel: parsed.model, promptIds, params, stream: parsed.stream ?? false, includeUsage: parsed.stream_options?.include_usage ?? false });
  }

  private variantOf(name: string): string {
    if (name === this.opts.model_name) return '';
    if (name !== '' && this.engine.variants.has(name)) return name;
    throw new HttpError(404, `The model \`${name}\` does not exist (served: ${this.modelNames().join(', ')})`, 'invalid_request_error', 'model', 'model_not_found');
  }

  private completionPrompt(b: CompletionBody): number[] {
    const tok = this.engine.tokenizer;
    if (Array.isArray(b.prompt) && typeof b.prompt[0] === 'number') return b.prompt as number[];
    const text = Array.isArray(b.prompt) ? (b.prompt[0] as string) : b.prompt;
    const ids = tok.encode(text, { addBos: tok.bosId !== undefined, allowSpecial: true });
    return ids.length ? ids : [tok.eosId]; // as generate: a byte-level model with no BOS starts from <|endoftext|>
  }

  private chatPrompt(b: ChatBody): number[] {
    const messages: ChatMessage[] = b.messages.map((m) => ({
      role: m.role === 'developer' ? 'system' : m.role,
      content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
    }));
    try {
      return chatPromptIds(this.engine.tokenizer, messages);
    } catch (err) {
      throw new HttpError(400, `The model's chat template failed: ${(err as Error).message}; use /v1/completions`, 'invalid_request_error', 'messages', 'chat_template_error');
    }
  }

  private samplingParams(b: CompletionBody | ChatBody, chat: boolean, promptLen: number): SamplingParams {
    const c = b as ChatBody;
    // OpenAI's defaults: legacy completions 16 tokens, chat the rest of the context.
    const maxTokens = (chat ? c.max_completion_tokens ?? c.max_tokens : b.max_tokens) ?? (chat ? Math.max(1, this.engine.config.n_ctx - promptLen) : 16);
    const logprobs = chat ? (c.logprobs ? c.top_logprobs ?? 0 : undefined) : ((b as CompletionBody).logprobs ?? undefined);
    return {
      max_tokens: maxTokens,
      temperature: b.temperature ?? 1,
      top_p: b.top_p ?? 1,
      top_k: Math.max(0, b.top_k ?? 0),
      repetition_penalty: b.repetition_penalty ?? 1,
      presence_penalty: b.presence_penalty ?? 0,
      frequency_penalty: b.frequency_penalty ?? 0,
      stop: b.stop == null ? [] : typeof b.stop === 'string' ? [b.stop] : b.stop,
      seed: b.seed ?? undefined,
      n: b.n ?? 1,
      logprobs,
    };
  }

  private readJson(req: IncomingMessage): Promise<unknown> {
    const limit = this.opts.max_body_bytes;
    return new Promise((resolve, reject) => {
      const declared = Number(req.headers['content-length'] ?? 0);
      const chunks: Buffer[] = [];
      let size = 0, tooBig = declared > limit;
      req.on('data', (c: Buffer) => {
        size += c.length;
        if (size > limit) tooBig = true;
        if (!tooBig) chunks.push(c);
        // Read on (and discard) so the client gets its 413 instead of a reset, up to a hard cap.
        if (size > 64 * limit) req.destroy();
      });
      req.on('end', () => {
        if (tooBig) return reject(new HttpError(413, `Request body of ${size} bytes exceeds the limit of ${limit} bytes`, 'invalid_request_error', null, 'body_too_large'));
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch {
          reject(new HttpError(400, 'We could not parse the JSON body of your request. (HINT: This likely means you aren\'t using your HTTP library correctly. The OpenAI API expects a JSON payload.)', 'invalid_request_error', null, 'invalid_json'));
        }
      });
      req.on('error', reject);
      // A client that goes away mid-body: nothing to answer.
      req.on('close', () => {
        if (!req.complete) reject(new HttpError(400, 'The client closed the connection before sending the whole body', 'invalid_request_error', null, 'incomplete_body'));
      });
    });
  }

  private run(
    req: IncomingMessage,
    res: ServerResponse,
    r: { chat: boolean; model: string; requestModel: string; promptIds: number[]; params: SamplingParams; stream: boolean; includeUsage: boolean },
  ): void {
    const id = `${r.chat ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`;
    const created = Math.floor(Date.now() / 1000);
    const object = r.chat ? (r.stream ? 'chat.completion.chunk' : 'chat.completion') : 'text_completion';
    const n = r.params.n;
    const texts = Array<string>(n).fill('');
    const lps: TokenLogprob[][] = Array.from({ length: n }, () => []);
    const reasons: (FinishReason | null)[] = Array(n).fill(null);
    let done = false, roleSent = Array<boolean>(n).fill(false);
    const chunk = (choices: object[], extra: object = {}) => ({ id, object, created, model: r.requestModel, choices, ...extra });
    const finish = () => {
      done = true;
      clearTimeout(timer);
      this.live.delete(id);
    };
    const onDelta = (d: ChoiceDelta) => {
      texts[d.index] += d.text;
      lps[d.index]!.push(...d.logprobs);
      if (d.finishReason) reasons[d.index] = d.finishReason;
      if (!r.stream || (d.text === '' && d.logprobs.length === 0 && !d.finishReason)) return;
      const logprobs = r.params.logprobs === undefined ? null : r.chat ? chatLogprobs(d.logprobs) : completionLogprobs(d.logprobs, texts[d.index]!.length - d.text.length);
      let choice: object;
      if (r.chat) {
        const delta: Record<string, string> = roleSent[d.index] ? {} : { role: 'assistant' };
        roleSent[d.index] = true;
        if (d.text) delta.content = d.text;
        choice = { index: d.index, delta, logprobs, finish_reason: d.finishReason ?? null };
      } else {
        choice = { index: d.index, text: d.text, logprobs, finish_reason: d.finishReason ?? null };
      }
      sse(res, chunk([choice]));
    };
    const onFinish = (usage: { prompt_tokens: number; completion_tokens: number }) => {
      finish();
      const u = { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens };
      if (r.stream) {
        if (r.includeUsage) sse(res, chunk([], { usage: u }));
        res.end('data: [DONE]\n\n');
        return;
      }
      const choices = texts.map((text, index) => r.chat
        ? { index, message: { role: 'assistant', content: text }, logprobs: r.params.logprobs === undefined ? null : chatLogprobs(lps[index]!), finish_reason: reasons[index] }
        : { index, text, logprobs: r.params.logprobs === undefined ? null : completionLogprobs(lps[index]!, 0), finish_reason: reasons[index] });
      sendJson(res, 200, chunk(choices, { usage: u }));
    };
    const onError = (err: Error) => {
      if (done) return;
      finish();
      this.fail(res, new HttpError(500, `Generation failed: ${err.message}`, 'server_error', null, 'internal_error'));
    };
    try {
      this.engine.add({ id, promptIds: r.promptIds, params: r.params, model: r.model }, { onDelta, onFinish, onError });
    } catch (err) {
      if (err instanceof RequestError) throw new HttpError(400, err.message, 'invalid_request_error', err.param, 'invalid_value');
      throw err;
    }
    this.live.set(id, () => {
      if (done) return;
      this.engine.abort(id);
      finish();
      this.fail(res, new HttpError(503, 'The server shut down before this request finished', 'server_error', null, 'shutting_down'));
    });
    // A client that goes away cancels its sequences and frees their blocks at once.
    res.on('close', () => {
      if (done) return;
      finish();
      this.engine.abort(id);
    });
    const timeoutMs = this.opts.request_timeout_s * 1000;
    const timer = timeoutMs > 0 ? setTimeout(() => {
      if (done) return;
      this.engine.abort(id);
      finish();
      this.fail(res, new HttpError(408, `Request timed out after ${this.opts.request_timeout_s} s`, 'timeout_error', null, 'request_timeout'));
    }, timeoutMs) : undefined;
    if (r.stream) {
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
      res.flushHeaders();
    }
    void req;
  }

  /** Answer with OpenAI's error body (or, mid-stream, an error event and the end of the stream). */
  private fail(res: ServerResponse, err: unknown): void {
    const e = err instanceof HttpError ? err : new HttpError(500, (err as Error)?.message ?? String(err), 'server_error', null, 'internal_error');
    const body = { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
    if (res.writableEnded || res.destroyed) return;
    if (res.headersSent) {
      sse(res, body);
      res.end('data: [DONE]\n\n');
      return;
    }
    sendJson(res, e.status, body);
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function sse(res: ServerResponse, data: unknown): void {
  if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify(data)}\n\n`);
}

/** Legacy completions' logprobs: parallel lists; text_offset counts from the start of the completion. */
function completionLogprobs(tokens: TokenLogprob[], offset: number): object {
  const text_offset: number[] = [];
  let at = offset;
  for (const t of tokens) {
    text_offset.push(at);
    at += t.token.length;
  }
  return {
    tokens: tokens.map((t) => t.token),
    token_logprobs: tokens.map((t) => t.logprob),
    top_logprobs: tokens.map((t) => Object.fromEntries(t.top.map((a) => [a.token, a.logprob]))),
    text_offset,
  };
}

/** Chat logprobs: one entry per token with its UTF-8 bytes and the top alternatives. */
function chatLogprobs(tokens: TokenLogprob[]): object {
  const bytes = (s: string) => [...Buffer.from(s, 'utf8')];
  return {
    content: tokens.map((t) => ({
      token: t.token, logprob: t.logprob, bytes: bytes(t.token),
      top_logprobs: t.top.map((a) => ({ token: a.token, logprob: a.logprob, bytes: bytes(a.token) })),
    })),
  };
}
