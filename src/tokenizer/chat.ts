/**
 * Chat markup: ChatML constants and chat templates rendered as Hugging Face renders them — the
 * tokenizer_config.json `chat_template` is Jinja, run here by @huggingface/jinja (transformers.js's engine,
 * with trim_blocks and lstrip_blocks on, like transformers' apply_chat_template), given the messages,
 * add_generation_prompt and the special tokens by name (bos_token, eos_token, …).
 */
import { Template } from '@huggingface/jinja';

export const ENDOFTEXT = '<|endoftext|>';
export const IM_START = '<|im_start|>';
export const IM_END = '<|im_end|>';

export const DEFAULT_SPECIAL_TOKENS: readonly string[] = [ENDOFTEXT, IM_START, IM_END];

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface RenderedChat {
  text: string;
  ids: number[];
  /** 1 where the SFT loss applies: assistant content tokens and the end-of-turn token that closes them. */
  trainMask: number[];
}

/** The ChatML template this project writes for its own models (as TRL's setup_chat_format and Qwen2 use). */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const compiled = new Map<string, Template>();

/** Render a chat template exactly as apply_chat_template(messages, tokenize=False) does. */
export function renderTemplate(template: string, messages: readonly ChatMessage[], addGenerationPrompt: boolean, specialTokens: Record<string, string | null>): string {
  let t = compiled.get(template);
  if (!t) {
    t = new Template(template);
    if (compiled.size > 16) compiled.clear();
    compiled.set(template, t);
  }
  return t.render({ messages: messages.map((m) => ({ ...m })), add_generation_prompt: addGenerationPrompt, ...specialTokens });
}

/**
 * Character ranges of `text` (the render of all messages) that the SFT loss trains: for each assistant
 * message, what its turn adds after the generation prompt (render of the messages before it with
 * add_generation_prompt, vs. render through it), cut after the last special token in it (ChatML: the
 * content and <|im_end|>, not the newline). Templates whose renders are not prefixes of each other fall
 * back to the content itself plus a special token right after it.
 */
export function assistantSpans(
  render: (msgs: readonly ChatMessage[], gen: boolean) => string,
  messages: readonly ChatMessage[],
  text: string,
  specials: readonly string[],
): Array<[number, number]> {
  const spans: Array<[number, number]> = [];
  let cursor = 0;
  messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    const before = render(messages.slice(0, i), true);
    const through = render(messages.slice(0, i + 1), false);
    let start: number, end: number;
    if (through.startsWith(before) && text.startsWith(through) && through.length > before.length) {
      start = before.length;
      end = through.length;
      const turn = text.slice(start, end);
      let lastSpecial = -1;
      for (const s of specials) {
        const at = turn.lastIndexOf(s);
        if (at >= 0) lastSpecial = Math.max(lastSpecial, at + s.length);
      }
      if (lastSpecial > 0) end = start + lastSpecial;
    } else {
      const content = text.indexOf(m.content, cursor) >= 0 ? m.content : m.content.trim();
      start = text.indexOf(content, cursor);
      if (start < 0) throw new Error(`chat template: assistant message ${i} does not appear in the rendered text`);
      end = start + content.length;
      const next = specials.find((s) => text.startsWith(s, end));
      if (next) end += next.length;
    }
    spans.push([start, end]);
    cursor = end;
  });
  return spans;
}

/** Where each message's content sits in the rendered text (in order), so special-token text in it stays text. */
export function contentSpans(messages: readonly ChatMessage[], text: string): Array<[number, number]> {
  const spans: Array<[number, number]> = [];
  let cursor = 0;
  for (const m of messages) {
    if (!m.content) continue;
    const at = text.indexOf(m.content, cursor);
    if (at < 0) continue; // the template changed it (e.g. trimmed): nothing to protect literally
    spans.push([at, at + m.content.length]);
    cursor = at + m.content.length;
  }
  return spans;
}
