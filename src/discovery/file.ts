import { type FSWatcher, watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { parse } from 'yaml';
import { z } from 'zod';
import type { BackendSpec } from '../cluster/backend.ts';
import type { Timer } from '../cluster/clock.ts';
import type { FileSourceConfig } from '../config/discovery.ts';
import { backendEntry } from '../config/schema.ts';
import type { DiscoverySource, SourceContext } from './source.ts';

/** The file is a list of backends, or `{ backends: [...] }`; entries as in `static:`. */
const fileShape = z.union([
  z.array(backendEntry),
  z.strictObject({ backends: z.array(backendEntry) }).transform((o) => o.backends),
]);

/**
 * `backends.file`: a YAML or JSON list of backends, re-read when it changes.
 * The directory is watched (editors and Kubernetes ConfigMap mounts replace
 * the file rather than write into it), with a poll as a fallback. A file that
 * cannot be read or parsed keeps the last good set.
 */
export class FileSource implements DiscoverySource {
  readonly kind = 'file';
  readonly #path: string;
  readonly #config: FileSourceConfig;
  readonly #ctx: SourceContext;
  #watcher: FSWatcher | undefined;
  #poll: Timer | undefined;
  #reading = false;
  #again = false;
  #stopped = false;
  #lastText: string | undefined;
  #lastError: string | undefined;

  constructor(config: FileSourceConfig, ctx: SourceContext) {
    this.#config = config;
    this.#path = resolve(config.path);
    this.#ctx = ctx;
  }

  start(): void {
    const name = basename(this.#path);
    try {
      this.#watcher = watch(dirname(this.#path), { persistent: false }, (_event, file) => {
        if (file === null || file === name || file.startsWith('..')) this.#read('file changed');
      });
      this.#watcher.on('error', () => this.#watcher?.close());
    } catch (err) {
      this.#ctx.log.warn(
        { service: this.#ctx.service, path: this.#path, err: (err as Error).message },
        'cannot watch the backends file; polling only',
      );
    }
    this.#schedulePoll();
    this.#read('start');
  }

  stop(): void {
    this.#stopped = true;
    this.#watcher?.close();
    this.#poll?.cancel();
  }

  #schedulePoll(): void {
    if (this.#stopped) return;
    this.#poll = this.#ctx.clock.setTimer(() => {
      this.#read('poll');
      this.#schedulePoll();
    }, this.#config.pollInterval);
  }

  #read(why: string): void {
    if (this.#stopped) return;
    if (this.#reading) {
      this.#again = true;
      return;
    }
    this.#reading = true;
    readFile(this.#path, 'utf8')
      .then(
        (text) => this.#apply(text, why),
        (err: unknown) => {
          const e = err as NodeJS.ErrnoException;
          this.#fail(e.code === 'ENOENT' ? 'missing' : 'read', `cannot read ${this.#path}: ${e.message}`);
        },
      )
      .finally(() => {
        this.#reading = false;
        if (this.#again) {
          this.#again = false;
          this.#read(why);
        }
      });
  }

  #apply(text: string, why: string): void {
    if (this.#stopped || text === this.#lastText) return;
    let specs: BackendSpec[];
    try {
      const result = fileShape.safeParse(parse(text) ?? []);
      if (!result.success) {
        const issue = result.error.issues[0]!;
        throw new Error(
          `${issue.path.join('.') || 'top level'}: ${issue.message}; write a list of "host:port" or { address, weight }`,
        );
      }
      specs = result.data;
    } catch (err) {
      this.#fail('parse', `${this.#path}: ${(err as Error).message}`);
      return;
    }
    this.#lastText = text;
    this.#lastError = undefined;
    this.#ctx.emit(specs, why);
  }

  #fail(reason: string, message: string): void {
    if (this.#stopped) return;
    // A file that stays broken is reported once per distinct problem.
    if (message === this.#lastError) return;
    this.#lastError = message;
    this.#lastText = undefined;
    this.#ctx.error(reason, message);
  }
}
