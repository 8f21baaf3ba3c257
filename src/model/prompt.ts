/** Prompt text → token ids the way each tokenizer family expects. */
import { Template } from '@huggingface/jinja';
import { CHATML_TEMPLATE, type ChatMessage, IM_END, IM_START, type Tokenizer } from '../tokenizer/index.js';

/** Plain prompts get BOS when the model expects it (llama2.c / sentencepiece); chat prompts use the chat template. */
export function promptIds(tokenizer: Tokenizer, prompt: string, chat = false): number[] {
  if (chat) return tokenizer.renderChat([{ role: 'user', content: prompt }], { addGenerationPrompt: true }).ids;
  const ids = tokenizer.encode(prompt, { addBos: tokenizer.addBos, allowSpecial: true });
  // A byte-level model with no BOS needs something to condition on: start from <|endoftext|>, as GPT-2 does.
  return ids.length === 0 ? [tokenizer.eosId] : ids;
}

/** Token ids that end a generation: EOS, BOS (llama2.c stops on it) and ChatML's <|im_end|>. */
export function stopTokenIds(tokenizer: Tokenizer): number[] {
  const ids = [tokenizer.eosId];
  if (tokenizer.bosId !== undefined) ids.push(tokenizer.bosId);
  const imEnd = tokenizer.tokenToId(IM_END);
  if (imEnd !== undefined) ids.push(imEnd);
  return ids;
}

/**
 * Chat messages → prompt ids with the checkpoint's own chat template. ChatML on a tokenizer that has its
 * tokens goes through renderChat (token-exact; message text cannot inject control tokens); any other
 * template (an imported model's tokenizer_config.json) is rendered with Jinja, as transformers'
 * apply_chat_template does, and the text encoded with its special tokens.
 */
export function chatPromptIds(tokenizer: Tokenizer, messages: readonly ChatMessage[]): number[] {
  const chatml = tokenizer.tokenToId(IM_START) !== undefined && tokenizer.tokenToId(IM_END) !== undefined;
  if (tokenizer.chatTemplate === CHATML_TEMPLATE && chatml && tokenizer.kind === 'byte_level') {
    return tokenizer.renderChat(messages, { addGenerationPrompt: true }).ids;
  }
  const special = (id: number | undefined) => (id === undefined ? '' : tokenizer.idToToken(id));
  const text = new Template(tokenizer.chatTemplate).render({
    messages: messages.map((m) => ({ role: m.role, content: m.content })),
    add_generation_prompt: true,
    bos_token: special(tokenizer.bosId),
    eos_token: special(tokenizer.eosId),
  });
  return tokenizer.encode(text, { allowSpecial: true });
}
