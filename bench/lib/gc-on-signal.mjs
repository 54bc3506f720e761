/**
 * Bench-only preload for holdfast: `node --expose-gc --import
 * bench/lib/gc-on-signal.mjs dist/cli/main.js serve …` (bench/lib/peers.ts
 * startHoldfast's `preloadGc`). On SIGUSR2 the process runs one full,
 * synchronous, memory-reducing collection (V8's `last-resort` flavour: it
 * collects until nothing more is freed and gives pooled empty pages back to
 * the system), the same kind of collection holdfast's memory reducer asks for
 * (src/memory-reducer.ts). A bench sends it before each resident-memory
 * reading so that the reading holds what is live, not garbage or pages that
 * V8 would give back on its own at some later time.
 *
 * Why a preload and not a hook in holdfast: holdfast cannot be asked for a
 * collection from outside (its memory reducer decides by itself; the admin
 * server has /metrics, /healthz and /status only), and a signal or endpoint
 * that lets anyone stall the process for a full collection would be a
 * production surface added for the bench's sake. Why JavaScript: a .ts
 * preload would make Node load its TypeScript stripper into holdfast
 * (~17 MiB more resident memory, none of it holdfast's own).
 *
 * Without `--expose-gc` it throws at startup; and if it is not loaded,
 * SIGUSR2's default action ends the process, so a bench cannot read an
 * unsettled holdfast without noticing.
 */
import process from 'node:process';

const gc = globalThis.gc;
if (typeof gc !== 'function') throw new Error('bench/lib/gc-on-signal.mjs needs node --expose-gc');
process.on('SIGUSR2', () => {
  gc({ type: 'major', execution: 'sync', flavor: 'last-resort' });
});
