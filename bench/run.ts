/**
 * `npm run bench -- NAME [--json] [bench options…]` runs `bench/NAME.ts`.
 *
 * Each benchmark module exports `run(args: BenchArgs): Promise<void>` and
 * prints a human table, or with `--json` one JSON object per line. Peers it
 * cannot find (nginx, haproxy, …) are reported and skipped, never fatal.
 */
import { readdirSync } from 'node:fs';
import { parseArgs } from 'node:util';

export interface BenchArgs {
  json: boolean;
  /** Everything after the bench name that is not --json, for bench-specific flags. */
  rest: string[];
}

export interface BenchModule {
  run(args: BenchArgs): Promise<void>;
}

const here = new URL('.', import.meta.url);
const available = readdirSync(here)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts' && !f.startsWith('_'))
  .map((f) => f.slice(0, -3))
  .sort();

const { positionals, values } = parseArgs({
  args: process.argv.slice(2),
  options: { json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h' } },
  allowPositionals: true,
  strict: false,
});
const name = positionals[0];
if (values.help === true || name === undefined) {
  console.log(`usage: npm run bench -- NAME [--json]\n\nbenchmarks: ${available.join(', ')}`);
  process.exit(name === undefined && values.help !== true ? 2 : 0);
}
if (!available.includes(name)) {
  console.error(`unknown benchmark "${name}"; available: ${available.join(', ')}`);
  process.exit(2);
}
const mod = (await import(new URL(`${name}.ts`, here).href)) as BenchModule;
const rest = process.argv.slice(2).filter((a) => a !== name && a !== '--json');
await mod.run({ json: values.json === true, rest });
