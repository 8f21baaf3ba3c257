/**
 * Prompts for RL (ppo / grpo): JSONL rows in the formats the field uses.
 *   {"prompt": "..."}                      a plain prompt
 *   {"prompt": [{role, content}, ...]}     a conversational prompt
 *   {"messages": [{role, content}, ...]}   a chat; the prompt is everything before the last assistant turn
 *   any preference row `llmctl rm` reads (TRL standard/conversational, HH-RLHF, LLaMA-Factory, ranked):
 *                                          its prompt, through the one preference reader (preference.ts)
 */
import { readFileSync } from 'node:fs';
import type { ChatMessage } from '../tokenizer/chat.js';
import type { Tokenizer } from '../tokenizer/index.js';
import { promptIds } from '../model/prompt.js';
import { rowToPairs } from './preference.js';

export type Prompt = { text: string } | { messages: ChatMessage[] };

/** Prompts of a JSONL file, each with its 1-based line number (for error messages). */
export function readPromptsJsonl(path: string, maxRows?: number): { prompt: Prompt; line: number }[] {
  const lines = readFileSync(path, 'utf8').split('\n');
  const out: { prompt: Prompt; line: number }[] = [];
  for (let i = 0; i < lines.length && (maxRows === undefined || out.length < maxRows); i++) {
    const line = lines[i]!.trim();
    if (!line) continue;
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch (err) {
      throw new Error(`${path}: line ${i + 1}: not JSON (${(err as Error).message})`);
    }
    try {
      out.push({ prompt: parsePromptRow(row), line: i + 1 });
    } catch (err) {
      throw new Error(`${path}: line ${i + 1}: ${(err as Error).message}`);
    }
  }
  if (out.length === 0) throw new Error(`${path}: no prompts (empty file)`);
  return out;
}

export function parsePromptRow(row: unknown): Prompt {
  if (typeof row !== 'object' || row === null || Array.isArray(row)) throw new Error('expected a JSON object');
  const r = row as Record<string, unknown>;
  if (['chosen', 'rejected', 'responses', 'conversations'].some((k) => k in r)) return { messages: rowToPairs(r)[0]!.prompt };
  if (typeof r.prompt === 'string') {
    if (!r.prompt.trim()) throw new Error('prompt: empty');
    return { text: r.prompt };
  }
  if (Array.isArray(r.prompt)) return { messages: messagesBeforeReply(r.prompt, 'prompt') };
  if (Array.isArray(r.messages)) return { messages: messagesBeforeReply(r.messages, 'messages') };
  throw new Error('expected a "prompt" or "messages" field, or a preference row (chosen/rejected)');
}

function messagesBeforeReply(list: unknown[], field: string): ChatMessage[] {
  const msgs = list.map((m, j) => {
    const o = m as Record<string, unknown>;
    if (typeof o !== 'object' || o === null || typeof o.content !== 'string' || !['system', 'user', 'assistant'].includes(o.role as string)) {
      throw new Error(`${field}[${j}]: expected {role: system|user|assistant, content: string}`);
    }
    return { role: o.role as ChatMessage['role'], content: o.content };
  });
  while (msgs.length && msgs.at(-1)!.role === 'assistant') msgs.pop(); // the reply is what the policy writes
  if (!msgs.some((m) => m.role === 'user')) throw new Error(`${field}: no user turn before the reply`);
  return msgs;
}

/** Token ids of a prompt, ending where the response starts (ChatML: after the assistant header). */
export function encodePrompt(tokenizer: Tokenizer, p: Prompt, chat: boolean): number[] {
  if ('messages' in p) {
    if (!chat) return promptIds(tokenizer, p.messages.map((m) => m.content).join('\n'), false);
    return tokenizer.renderChat(p.messages, { addGenerationPrompt: true }).ids;
  }
  return promptIds(tokenizer, p.text, chat);
}

/** A prompt as chat messages (a plain prompt is one user turn), e.g. for a reward model's own chat template. */
export function promptMessages(p: Prompt): ChatMessage[] {
  return 'messages' in p ? p.messages : [{ role: 'user', content: p.text }];
}

/** Display text of a prompt (samples.jsonl). */
export function promptText(p: Prompt): string {
  return 'messages' in p ? p.messages.map((m) => `${m.role}: ${m.content}`).join('\n') : p.text;
}
