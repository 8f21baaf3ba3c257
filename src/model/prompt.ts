/** Prompt text → token ids the way each tokenizer family expects. */
import { IM_END, type Tokenizer } from '../tokenizer/index.js';

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
