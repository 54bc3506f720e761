import { isIP } from 'node:net';

/**
 * Spreads upstream connections over several local addresses, round the list,
 * so one backend can hold more connections than one source address has
 * ephemeral ports (about 28k with Linux defaults). Addresses of the wrong
 * family for a backend are skipped.
 */
export class SourceAddressPool {
  readonly #v4: string[];
  readonly #v6: string[];
  #i4 = 0;
  #i6 = 0;

  constructor(addresses: readonly string[]) {
    this.#v4 = addresses.filter((a) => isIP(a) === 4);
    this.#v6 = addresses.filter((a) => isIP(a) === 6);
  }

  /** The next local address to bind for a connection to `host`, or undefined to let the kernel choose. */
  next(host: string): string | undefined {
    if (isIP(host) === 6) {
      if (this.#v6.length === 0) return undefined;
      const a = this.#v6[this.#i6]!;
      this.#i6 = (this.#i6 + 1) % this.#v6.length;
      return a;
    }
    if (this.#v4.length === 0) return undefined;
    const a = this.#v4[this.#i4]!;
    this.#i4 = (this.#i4 + 1) % this.#v4.length;
    return a;
  }
}
