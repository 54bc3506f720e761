import type { BackendSpec } from '../cluster/backend.ts';
import type { DiscoverySource, SourceContext } from './source.ts';

/** `backends.static`: the list in the config file itself; changes on reload. */
export class StaticSource implements DiscoverySource {
  readonly kind = 'static';
  readonly #specs: readonly BackendSpec[];
  readonly #ctx: SourceContext;

  constructor(specs: readonly BackendSpec[], ctx: SourceContext) {
    this.#specs = specs;
    this.#ctx = ctx;
  }

  start(): void {
    this.#ctx.emit(this.#specs, 'config');
  }

  stop(): void {}
}
