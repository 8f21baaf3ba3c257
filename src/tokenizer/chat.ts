/** Chat markup constants (ChatML). */

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
  /** 1 where the SFT loss applies: assistant content tokens and their closing <|im_end|>. */
  trainMask: number[];
}

/**
 * The HF ChatML template, stored in tokenizer_config.json for other tools.
 * Tokenizer.renderChat implements exactly this rendering in code (no Jinja engine).
 */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
