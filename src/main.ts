import { main } from './cli.js';

main().catch((err: Error) => {
  process.stderr.write(`llmctl: ${err.message.split('\n')[0]}\n`);
  process.exit(1);
});
