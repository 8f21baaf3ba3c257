/** Backend names, apart from the loader so the CLI can list them without loading tfjs. */
export type BackendName = 'auto' | 'tensorflow' | 'wasm' | 'cpu';
export const BACKENDS: readonly BackendName[] = ['auto', 'tensorflow', 'wasm', 'cpu'];
