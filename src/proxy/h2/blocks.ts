/**
 * Output blocks: the memory HTTP/2 frames are written into, and response
 * bytes a stream keeps, reused rather than allocated per response.
 *
 * A Buffer of 4 KB or more is an ArrayBuffer of its own, counted as external
 * memory. V8 counts the external memory that grew since the last full
 * collection against the old generation's room (`--no-external-memory-
 * accounted-in-global-limit`, Node 24's default), and a young-generation
 * collection frees such buffers only after the fact. Copying each 16 KB
 * response into a fresh buffer (a gigabyte a second through one process) used
 * that room up between two scavenges, and V8 ran a full mark-compact every
 * 40–50 ms: about 2.5 times the CPU per response. Blocks from this pool
 * allocate once.
 *
 * A block may go back to the pool only when nothing will read it again: no
 * frame waiting to be written refers to it, and the socket has sent what was
 * written from it. The connection keeps that account (connection.ts): it
 * writes with `socket.write()`, whose `writableLength` counts every byte
 * given to it until the kernel took it, so 0 means every block written so
 * far is free. (A write that bypassed `socket.write()`, as socket-writes.ts
 * does for HTTP/1.1, would need an account of its own.) Blocks the connection
 * loses track of (a socket closed with writes pending) are left to the
 * garbage collector, never reused.
 */

/** A block's size: one DATA frame of the default maximum size (16,384) fills one. */
export const BLOCK_SIZE = 16 * 1024;
/** Free blocks kept (4 MiB); more are left to the garbage collector. */
const POOL_MAX = 256;

const pool: Buffer[] = [];
/** Blocks made since the process started (for tests). */
let made = 0;

/** A block, from the pool when there is one. */
export function takeBlock(): Buffer {
  const b = pool.pop();
  if (b !== undefined) return b;
  made++;
  return Buffer.allocUnsafeSlow(BLOCK_SIZE);
}

/** Blocks nothing refers to any more (a list, emptied): back to the pool, as far as it takes them. */
export function giveBlocks(list: Buffer[]): void {
  for (let k = 0; k < list.length; k++) giveBlock(list[k]!);
  list.length = 0;
}

/** One block nothing refers to any more (buffers of another size are not blocks, and are left alone). */
export function giveBlock(b: Buffer): void {
  if (b.length === BLOCK_SIZE && b.byteOffset === 0 && pool.length < POOL_MAX) pool.push(b);
}

/** Blocks made so far and free now (for tests). */
export function blockCounts(): { made: number; free: number } {
  return { made, free: pool.length };
}
