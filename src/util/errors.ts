/**
 * Error kinds the CLI maps to exit codes. Kept free of imports so any module (checkpoint, data) can
 * throw them without pulling in the CLI.
 */

/** Bad user input that is not a config field (missing file, malformed row, refused output dir): exit code 2. */
export class InputError extends Error {
  override name = 'InputError';
}
