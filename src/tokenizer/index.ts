export { ENDOFTEXT, IM_START, IM_END, CHATML_TEMPLATE, DEFAULT_SPECIAL_TOKENS } from './chat.js';
export type { ChatMessage, RenderedChat } from './chat.js';
export { Tokenizer, GPT2_SPLIT_REGEX } from './tokenizer.js';
export type { TokenizerKind, TrainOptions, EncodeOptions, DecodeOptions } from './tokenizer.js';
export { TextStreamer } from './streamer.js';
export type { StreamerOptions } from './streamer.js';
export { parseLlama2cTokenizer } from './llama2c.js';
export type { Llama2cVocab } from './llama2c.js';
