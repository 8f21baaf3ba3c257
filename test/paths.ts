/** Paths of the data the tests read: slices of ../shared/data copied into the repo, so CI needs nothing else. */
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('..', import.meta.url));
export const SHAKESPEARE_PATH = fileURLToPath(new URL('../data/tinyshakespeare.txt', import.meta.url));
export const STORIES_DIR = fileURLToPath(new URL('./fixtures/stories260K/', import.meta.url));
export const STORIES_BIN = STORIES_DIR + 'stories260K.bin';
export const TOK512_PATH = STORIES_DIR + 'tok512.bin';
export const STORIES_EXPECTED = STORIES_DIR + 'expected_outputs.json';
export const FIXTURES_PREF = fileURLToPath(new URL('./fixtures/preference/', import.meta.url));
