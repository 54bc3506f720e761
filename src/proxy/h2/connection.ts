/**
 * The server side of one HTTP/2 connection (RFC 9113), on a socket: preface
 * and SETTINGS exchange, frame parsing, HPACK, stream states, flow control
 * both ways, PING, GOAWAY, and the flood guards a proxy needs. Requests are
 * handed to the subclass (`request`) as soon as their head is complete and
 * valid; it answers through the stream it creates (stream.ts).
 *
 * Writing: frames produced while handling one read (or in one event-loop
 * turn, when responses are written as backends answer) are gathered in
 * pooled output blocks (blocks.ts) and go to the socket in one corked write
 * (large DATA payloads passed by reference sit between the blocks' bytes).
 * The blocks themselves are written, not copies of them: one goes back to
 * the pool once the socket has sent its bytes.
 */
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Clock, Timer } from '../../cluster/clock.ts';
import {
  CONTINUATION,
  COMPRESSION_ERROR,
  DATA,
  DEFAULT_HEADER_TABLE,
  DEFAULT_MAX_FRAME,
  DEFAULT_WINDOW,
  ENHANCE_YOUR_CALM,
  FLAG_ACK,
  FLAG_END_HEADERS,
  FLAG_END_STREAM,
  FLAG_PADDED,
  FLAG_PRIORITY,
  FLOW_CONTROL_ERROR,
  FRAME_HEADER,
  FRAME_SIZE_ERROR,
  GOAWAY,
  INTERNAL_ERROR,
  HEADERS,
  MAX_MAX_FRAME,
  MAX_WINDOW,
  NO_ERROR,
  PING,
  PREFACE,
  PRIORITY,
  PROTOCOL_ERROR,
  PUSH_PROMISE,
  putFrameHeader,
  REFUSED_STREAM,
  RST_STREAM,
  SETTINGS,
  SETTINGS_ENABLE_PUSH,
  SETTINGS_HEADER_TABLE_SIZE,
  SETTINGS_INITIAL_WINDOW_SIZE,
  SETTINGS_MAX_CONCURRENT_STREAMS,
  SETTINGS_MAX_FRAME_SIZE,
  SETTINGS_MAX_HEADER_LIST_SIZE,
  STREAM_CLOSED,
  WINDOW_UPDATE,
} from './frames.ts';
import { BLOCK_SIZE, giveBlock, giveBlocks, takeBlock } from './blocks.ts';
import { type HeaderSink, HpackDecoder, sharedEncoder as encoder } from './hpack.ts';
import type { Fields, H2Stream } from './stream.ts';
import { StreamTable } from './stream-table.ts';
import { writeDirect } from '../socket-writes.ts';

/** Limits and windows one connection advertises and enforces. */
export interface H2Limits {
  maxConcurrentStreams: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 §6.5.2 accounting); beyond it: 431. */
  maxHeaderListSize: number;
  /** Header fields per request; beyond it: 431. */
  maxHeaderCount: number;
  /** SETTINGS_INITIAL_WINDOW_SIZE we advertise (per stream receive window). */
  streamWindow: number;
  /**
   * Connection-level receive window, at least DEFAULT_WINDOW: a connection's
   * window starts at 65,535 and no setting lowers it, a WINDOW_UPDATE only widens it.
   */
  connectionWindow: number;
}

/** A request head, valid, as the connection parsed it (reused: read it during `request`). */
export interface RequestHead {
  method: string;
  scheme: string;
  path: string;
  /** `:authority`, else `host`. */
  authority: string | undefined;
  /** Regular fields, lowercase names, without connection-specific ones and `host`; `te: trailers` kept; cookies joined. */
  headers: Fields;
  contentLength: number;
}

/** Why a header block was refused before reaching the subclass. */
export type HeadProblem = 'header-too-large' | 'too-many-headers';

/** Our frame size limit (SETTINGS_MAX_FRAME_SIZE, left at its default). */
const MAX_FRAME = DEFAULT_MAX_FRAME;
/** A header block may come in this many CONTINUATION frames at most… */
const MAX_CONTINUATIONS = 32;
/** …and this many bytes at least (more when the header list limit asks for more). */
const MIN_BLOCK_BYTES = 64 * 1024;
/** Bytes queued on the socket beyond which DATA waits (control frames do not). */
const SOCKET_HWM = 64 * 1024;
/** Control frames (SETTINGS/PING ACKs, RST_STREAM) queued while the client does not read, at most. */
const MAX_CONTROL_BACKLOG = 10_000;
/** Unacknowledged PINGs of ours at most. */
const MAX_PINGS = 10;
/**
 * The first four bytes of a keepalive PING's payload (`keepalivePing`); PINGs
 * sent with `ping` start with four zero bytes, so an ACK says which it answers.
 */
const KEEPALIVE_MARK = 0x6b656570; // "keep"
/**
 * The keepalive PING frame, the same for every connection: the keepalive has
 * at most one PING out per connection (the next is sent after its ACK), so
 * the payload need not tell them apart, and one buffer, never written to
 * again, can be handed to any number of sockets.
 */
const KEEPALIVE_PING = Buffer.alloc(FRAME_HEADER + 8);
putFrameHeader(KEEPALIVE_PING, 0, 8, PING, 0, 0);
KEEPALIVE_PING.writeUInt32BE(KEEPALIVE_MARK, FRAME_HEADER);
/** The first GOAWAY of a graceful close names the highest stream id there is: nothing is refused yet. */
const ALL_STREAMS = 0x7fffffff;
/** The final GOAWAY follows the first after one round trip (its PING's ACK), or this long at most. */
const GOAWAY_GRACE_MS = 1000;

/**
 * Rapid reset (CVE-2023-44487): streams the client opens and resets at once
 * (or that we refuse) cost work each. RESET_BURST at once, RESET_RATE a second
 * after that; beyond, GOAWAY ENHANCE_YOUR_CALM.
 */
const RESET_BURST = 100;
const RESET_RATE = 50;
/**
 * Frames that cost us work and carry nothing (empty DATA, zero window
 * updates, frames on closed streams, malformed requests): same kind of bucket.
 */
const NOISE_BURST = 200;
const NOISE_RATE = 100;

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;
const METHOD = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Field values: no NUL, CR or LF; no leading or trailing space or tab (RFC 9113 §8.2.1). */
const BAD_VALUE = /[\0\r\n]|^[\t ]|[\t ]$/;
/** Pseudo-header values that end up in a request line: no controls, no spaces. */
const BAD_TARGET = /[\0-\x20\x7f]/;

/** A dynamic table size update to 0 (RFC 7541 §6.3). */
const TABLE_SIZE_ZERO = Buffer.from([0x20]);

/** DATA payloads up to this size are copied next to their frame header rather than written by reference. */
const COPY_MAX = 2048;
/**
 * Blocks a connection keeps account of while its socket has not sent them
 * (a client that reads slowly); beyond, the oldest are left to the garbage
 * collector rather than reused.
 */
const MAX_UNSENT_BLOCKS = 16;

/** `burst` at once, then `rate` a second: a flood guard's allowance. */
class TokenBucket {
  readonly #burst: number;
  readonly #rate: number;
  #tokens: number;
  #at = performance.now();

  constructor(burst: number, rate: number) {
    this.#burst = burst;
    this.#rate = rate;
    this.#tokens = burst;
  }

  /** Take one token; false when none is left. */
  take(): boolean {
    const now = performance.now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#at) / 1000) * this.#rate);
    this.#at = now;
    return --this.#tokens >= 0;
  }
}

const kConn = Symbol('holdfast.h2.connection');
/** `_writableState` is Node's (not in its types): checked before use. */
type ConnSocket = Socket & { [kConn]?: H2Connection; _writableState?: { highWaterMark?: unknown } };

function onSocketDrain(this: ConnSocket): void {
  this[kConn]?.socketDrained();
}
function onSocketClose(this: ConnSocket): void {
  this[kConn]?.socketClosed();
}
function onSocketEnd(this: ConnSocket): void {
  this[kConn]?.destroy();
}
/** The read callback (socket-reads.ts) of a socket an H2Connection owns. */
export function onConnectionRead(this: Socket, n: number, buf: Buffer): void {
  (this as ConnSocket)[kConn]?.received(buf, n);
}
/**
 * Connections with frames produced outside their own read callback (responses
 * written as backend data arrives) are flushed once per event-loop turn,
 * after every socket ready in that turn was read: responses to many streams
 * of one connection leave in one write.
 */
let toFlush: H2Connection[] = [];
let spareFlush: H2Connection[] = [];
let flushScheduled = false;
function flushAll(): void {
  flushScheduled = false;
  const list = toFlush;
  toFlush = spareFlush;
  spareFlush = list;
  for (let k = 0; k < list.length; k++) list[k]!.flushNow();
  list.length = 0;
}

/** An outstanding PING of ours. */
interface Ping {
  id: number;
  cb: (err: Error | null) => void;
}

export abstract class H2Connection implements HeaderSink {
  readonly socket: Socket;
  readonly limits: H2Limits;
  readonly #decoder = new HpackDecoder(DEFAULT_HEADER_TABLE);
  readonly #streams = new StreamTable<H2Stream>();
  /** Highest stream id the client opened (processed or refused). */
  #lastStreamId = 0;
  /** GOAWAY sent: streams above `#goawayId` are refused. */
  #goingAway = false;
  #goawayId = 0;
  /** The final GOAWAY (naming the last stream taken) is out: the connection ends with its last stream. */
  #goawayFinal = false;
  #goawayGrace: Timer | undefined;
  /** The client sent GOAWAY. */
  #peerGoaway = false;
  /** A fatal error or close: nothing more is read or written. */
  #dead = false;
  #closed = false;
  readonly #clock: Clock;
  #destroyTimer: Timer | undefined;

  // Peer settings.
  peerInitialWindow = DEFAULT_WINDOW;
  /**
   * The client lowered SETTINGS_HEADER_TABLE_SIZE: our next header block must
   * start with a dynamic table size update (RFC 7541 §4.2). Our encoder never
   * uses the table, so the update says 0, and once it is asked for, no later
   * setting can be below it: `#tableZeroed`.
   */
  #tableUpdate = false;
  #tableZeroed = false;
  #peerMaxFrame = DEFAULT_MAX_FRAME;
  /** Connection-level send window (the client's), and our receive window. */
  #sendWindow = DEFAULT_WINDOW;
  #recvWindow: number;
  #connUnacked = 0;

  // Reading.
  #prefaceLeft = PREFACE.length;
  #gotSettings = false;
  /** Closes the connection unless the client's preface and first SETTINGS come first (see `start`). */
  #prefaceDeadline: Timer | undefined = undefined;
  #partial: Buffer | undefined;
  #partialHave = 0;
  #inRead = false;

  // Header block being assembled (HEADERS without END_HEADERS, then CONTINUATIONs).
  #hbStream = 0;
  #hbFlags = 0;
  #hbParts: Buffer[] = [];
  #hbLength = 0;
  #hbFrames = 0;
  #hbPriorityError = false;
  readonly #maxBlock: number;

  // Request head being decoded (the HeaderSink side).
  readonly #head: RequestHead = {
    method: '',
    scheme: '',
    path: '',
    authority: undefined,
    headers: {},
    contentLength: -1,
  };
  #hTrailers = false;
  #hRegular = false;
  #hMalformed = false;
  #hProblem: HeadProblem | undefined;
  #hSize = 0;
  #hCount = 0;
  #hHost: string | undefined;

  // Writing.
  /** The block frames are written into now: `[#start, #pos)` is not in `#parts` yet, what is before it is. */
  #buf: Buffer | undefined;
  #start = 0;
  #pos = 0;
  /** What the next flush writes, in order: views of blocks, and payloads passed by reference. */
  #parts: Buffer[] = [];
  /** Blocks no longer written into that `#parts`, or an earlier write, may still refer to. */
  #filled: Buffer[] = [];
  /** Blocks the socket was given and may not have sent yet. */
  #unsent: Buffer[] = [];
  #outBytes = 0;
  #flushQueued = false;
  /** Where the flags byte of the last frame written is, when that frame is DATA of `#lastDataStream`. */
  #lastDataStream: H2Stream | undefined;
  #lastDataBuf: Buffer | undefined;
  #lastDataFlags = -1;
  /** Streams we reset lately: frames the client sent before it saw the RST are ignored (RFC 9113 §5.4.2). */
  #resetIds: Int32Array | undefined;
  #resetNext = 0;
  #controlBacklog = 0;
  #ready: H2Stream[] = [];
  #spareReady: H2Stream[] = [];
  #pumping = false;

  // Flood buckets, made at their first use (a bucket made then is full, as one made at the start would be
  // by then): most connections never reset a stream or send a useless frame, and an idle one keeps neither.
  #resets: TokenBucket | undefined;
  #noiseBucket: TokenBucket | undefined;

  // PINGs of ours.
  #pings: Ping[] = [];
  #pingSeq = 0;
  #closeListeners: (() => void)[] | undefined;

  constructor(socket: Socket, limits: H2Limits, clock: Clock) {
    this.socket = socket;
    this.#clock = clock;
    this.limits = limits;
    this.#recvWindow = limits.connectionWindow;
    this.#maxBlock = Math.max(MIN_BLOCK_BYTES, limits.maxHeaderListSize * 2);
    const s = socket as ConnSocket;
    s[kConn] = this;
    // The blocks a write used go back to the pool on 'drain' (see #settle), so
    // 'drain' must follow every write the socket could not finish at once:
    // a high-water mark of 0. readThrough already sets it on the sockets it
    // switches; a TLS socket (read plainly) keeps Node's 16 KB and, as a TLS
    // write never finishes at once, then held the blocks of its last write
    // for as long as the connection stayed quiet (~26 KB per idle one).
    const writable = s._writableState;
    if (typeof writable?.highWaterMark === 'number') writable.highWaterMark = 0;
    socket.on('drain', onSocketDrain);
    socket.on('close', onSocketClose);
    socket.on('end', onSocketEnd);
    socket.setNoDelay(true);
    // Our SETTINGS, then the connection window beyond its default.
    const settings: [number, number][] = [
      [SETTINGS_MAX_CONCURRENT_STREAMS, limits.maxConcurrentStreams],
      [SETTINGS_INITIAL_WINDOW_SIZE, limits.streamWindow],
      [SETTINGS_MAX_HEADER_LIST_SIZE, limits.maxHeaderListSize],
      [SETTINGS_ENABLE_PUSH, 0],
    ];
    const b = this.#reserve(FRAME_HEADER + settings.length * 6);
    putFrameHeader(b, this.#pos, settings.length * 6, SETTINGS, 0, 0);
    this.#pos += FRAME_HEADER;
    for (const [id, value] of settings) {
      b.writeUInt16BE(id, this.#pos);
      b.writeUInt32BE(value, this.#pos + 2);
      this.#pos += 6;
    }
    if (limits.connectionWindow > DEFAULT_WINDOW) {
      this.#windowUpdate(0, limits.connectionWindow - DEFAULT_WINDOW);
    }
    this.#schedule();
  }

  // ---- for the subclass ----

  /** A valid request opened stream `id`: create its stream (which registers itself) and start it. */
  protected abstract request(id: number, head: RequestHead, endStream: boolean): void;
  /** Count an event in the service's counters. */
  protected abstract count(kind: string): void;
  /** A request head over the limits: answer it (431) on `stream`'s behalf. */
  protected abstract refuseHead(id: number, problem: HeadProblem, endStream: boolean): void;
  /** The connection is closed. */
  protected abstract closedHook(): void;
  /** Something threw while a frame was handled (a bug): the connection was closed with INTERNAL_ERROR. */
  protected abstract internalError(err: unknown): void;

  get destroyed(): boolean {
    return this.#closed;
  }

  /** Streams open now (answers the proxy made up itself included). */
  get openStreams(): number {
    return this.#streams.size;
  }

  /** Closed or closing (keepalive's view). */
  get closed(): boolean {
    return this.#dead || this.#closed;
  }

  once(_event: 'close', fn: () => void): void {
    (this.#closeListeners ??= []).push(fn);
  }

  /**
   * Start reading: `first` are bytes already read (the preface, at least in
   * part). `deadline`, when given, closes the connection when it fires: it is
   * cancelled once the client's preface and first SETTINGS frame are in, or
   * when the connection closes. Until then no other timeout watches a client
   * that stalls part way through the preface.
   */
  start(first: Buffer | undefined, deadline?: Timer): void {
    this.#prefaceDeadline = deadline;
    if (first !== undefined && first.length > 0) this.received(first, first.length);
  }

  /** Bytes read from the socket: `buf[0, n)`, valid during this call only. */
  received(buf: Buffer, n: number): void {
    if (this.#dead) return;
    this.#inRead = true;
    try {
      this.#parse(buf, 0, n);
    } catch (err) {
      this.#crashed(err);
    } finally {
      this.#inRead = false;
    }
    this.flushNow();
  }

  /**
   * Close gracefully, in two steps (RFC 9113 §6.8): a GOAWAY NO_ERROR naming
   * the highest stream id tells the client to open no more streams, without
   * refusing requests already on their way; one round trip later (the PING
   * sent with it comes back), or `GOAWAY_GRACE_MS` at most, the final GOAWAY
   * names the last stream taken. Streams in flight finish, later ones are
   * refused, then the connection closes.
   */
  goAway(): void {
    if (this.#goingAway || this.#dead) return;
    this.#goingAway = true;
    this.#goawayId = ALL_STREAMS;
    this.#goaway(NO_ERROR, ALL_STREAMS);
    // `ping` schedules the flush that sends both frames.
    if (this.ping(() => this.#finalGoaway())) {
      this.#goawayGrace = this.#clock.setTimer(() => this.#finalGoaway(), GOAWAY_GRACE_MS);
    } else {
      this.#finalGoaway();
    }
  }

  #finalGoaway(): void {
    this.#goawayGrace?.cancel();
    this.#goawayGrace = undefined;
    if (this.#goawayFinal || this.#dead) return;
    this.#goawayFinal = true;
    this.#goawayId = this.#lastStreamId;
    this.#goaway(NO_ERROR, this.#goawayId);
    this.#schedule();
    if (this.#streams.size === 0) this.#endSocket();
  }

  /** Close the connection now (keepalive timeout, shutdown). */
  destroy(): void {
    if (this.#closed) return;
    this.socket.destroy();
    this.socketClosed();
  }

  /** PING the client; `cb` runs on its ACK. False when too many are outstanding. */
  ping(cb: (err: Error | null) => void): boolean {
    if (this.#dead || this.#pings.length >= MAX_PINGS) return false;
    const id = ++this.#pingSeq;
    this.#pings.push({ id, cb });
    const b = this.#reserve(FRAME_HEADER + 8);
    putFrameHeader(b, this.#pos, 8, PING, 0, 0);
    b.writeUInt32BE(0, this.#pos + 9);
    b.writeUInt32BE(id, this.#pos + 13);
    this.#advance(FRAME_HEADER + 8);
    this.#schedule();
    return true;
  }

  /**
   * Send a keepalive PING: its ACK calls `keepaliveAcked`. Unlike `ping`,
   * nothing is kept per PING (no callback, no entry in a list): the
   * subclass's keepalive keeps its own state, and sends the next PING only
   * after the ACK. False when closing.
   *
   * On a connection with nothing of ours waiting to be written (an idle one,
   * which is what a keepalive mostly pings) the shared frame is written at
   * once, straight to the socket's handle where it can be (socket-writes.ts):
   * no output block, no flush in the next turn, no Writable bookkeeping. A
   * write the kernel does not take whole stays queued in the handle, ahead of
   * what `socket.write()` sends later, and 'drain' follows as usual; blocks
   * are not involved, so their account (writableLength) is unchanged.
   */
  keepalivePing(): boolean {
    if (this.#dead) return false;
    const socket = this.socket;
    if (socket.destroyed || socket.writableEnded) return false;
    if (!this.#inRead && !this.#flushQueued && this.#buf === undefined && this.#parts.length === 0) {
      writeDirect(socket, KEEPALIVE_PING);
      return true;
    }
    const b = this.#reserve(FRAME_HEADER + 8);
    KEEPALIVE_PING.copy(b, this.#pos);
    this.#advance(FRAME_HEADER + 8);
    this.#schedule();
    return true;
  }

  /** The ACK of a keepalive PING came. */
  protected keepaliveAcked(): void {}

  // ---- reading ----

  #parse(buf: Buffer, i: number, end: number): void {
    if (this.#prefaceLeft > 0) {
      const at = PREFACE.length - this.#prefaceLeft;
      const n = Math.min(this.#prefaceLeft, end - i);
      if (buf.compare(PREFACE, at, at + n, i, i + n) !== 0) {
        this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
        return;
      }
      this.#prefaceLeft -= n;
      i += n;
      if (this.#prefaceLeft > 0) return;
    }
    if (this.#partial !== undefined) {
      i = this.#completePartial(buf, i, end);
      if (i < 0 || this.#dead) return;
    }
    while (end - i >= FRAME_HEADER) {
      const len = (buf[i]! << 16) | (buf[i + 1]! << 8) | buf[i + 2]!;
      if (len > MAX_FRAME) {
        this.#fatal(FRAME_SIZE_ERROR, 'h2-session-error');
        return;
      }
      if (end - i - FRAME_HEADER < len) break;
      this.#frame(buf, i, len);
      if (this.#dead) return;
      i += FRAME_HEADER + len;
    }
    if (i < end) {
      // Keep the start of the next frame (a copy: `buf` is reused).
      const have = end - i;
      let size = FRAME_HEADER;
      if (have >= FRAME_HEADER) size += (buf[i]! << 16) | (buf[i + 1]! << 8) | buf[i + 2]!;
      const p = Buffer.allocUnsafe(Math.max(size, have));
      buf.copy(p, 0, i, end);
      this.#partial = p;
      this.#partialHave = have;
    }
  }

  /** Add bytes to the frame kept from the last read; returns where reading goes on, -1 when still short. */
  #completePartial(buf: Buffer, i: number, end: number): number {
    let p = this.#partial!;
    if (this.#partialHave < FRAME_HEADER) {
      const take = Math.min(FRAME_HEADER - this.#partialHave, end - i);
      buf.copy(p, this.#partialHave, i, i + take);
      this.#partialHave += take;
      i += take;
      if (this.#partialHave < FRAME_HEADER) return -1;
      const len = (p[0]! << 16) | (p[1]! << 8) | p[2]!;
      if (len > MAX_FRAME) {
        this.#fatal(FRAME_SIZE_ERROR, 'h2-session-error');
        return -1;
      }
      if (p.length < FRAME_HEADER + len) {
        const bigger = Buffer.allocUnsafe(FRAME_HEADER + len);
        p.copy(bigger, 0, 0, FRAME_HEADER);
        this.#partial = p = bigger;
      }
    }
    const len = (p[0]! << 16) | (p[1]! << 8) | p[2]!;
    const take = Math.min(FRAME_HEADER + len - this.#partialHave, end - i);
    buf.copy(p, this.#partialHave, i, i + take);
    this.#partialHave += take;
    i += take;
    if (this.#partialHave < FRAME_HEADER + len) return -1;
    this.#partial = undefined;
    this.#partialHave = 0;
    this.#frame(p, 0, len);
    return i;
  }

  #frame(buf: Buffer, at: number, len: number): void {
    const type = buf[at + 3]!;
    const flags = buf[at + 4]!;
    const id = buf.readUInt32BE(at + 5) & 0x7fff_ffff;
    const p = at + FRAME_HEADER;
    if (!this.#gotSettings) {
      // The preface is followed by SETTINGS (RFC 9113 §3.4).
      if (type !== SETTINGS || (flags & FLAG_ACK) !== 0) {
        this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
        return;
      }
      this.#gotSettings = true;
      this.#prefaceDeadline?.cancel();
      this.#prefaceDeadline = undefined;
    }
    if (this.#hbStream !== 0 && (type !== CONTINUATION || id !== this.#hbStream)) {
      this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
      return;
    }
    switch (type) {
      case DATA:
        this.#onData(buf, p, len, flags, id);
        return;
      case HEADERS:
        this.#onHeaders(buf, p, len, flags, id);
        return;
      case PRIORITY:
        this.#onPriority(buf, p, len, id);
        return;
      case RST_STREAM:
        this.#onRstStream(buf, p, len, id);
        return;
      case SETTINGS:
        this.#onSettings(buf, p, len, flags, id);
        return;
      case PUSH_PROMISE:
        this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
        return;
      case PING:
        this.#onPing(buf, p, len, flags, id);
        return;
      case GOAWAY:
        this.#onGoaway(buf, p, len, id);
        return;
      case WINDOW_UPDATE:
        this.#onWindowUpdate(buf, p, len, id);
        return;
      case CONTINUATION:
        this.#onContinuation(buf, p, len, flags, id);
        return;
      default:
      // Unknown frame types are ignored (RFC 9113 §4.1).
    }
  }

  #onData(buf: Buffer, p: number, len: number, flags: number, id: number): void {
    if (id === 0) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
    // The connection window counts every DATA frame, whatever its stream.
    this.#recvWindow -= len;
    if (this.#recvWindow < 0) return this.#fatal(FLOW_CONTROL_ERROR, 'h2-session-error');
    let end = p + len;
    if ((flags & FLAG_PADDED) !== 0) {
      const pad = this.#padding(buf, p, len, 0);
      if (pad < 0) return;
      p++;
      end -= pad;
    }
    const stream = this.#streams.get(id);
    if (stream === undefined || stream.remoteClosed) {
      if (id > this.#lastStreamId) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
      // A stream closed (or half-closed by the client): STREAM_CLOSED (RFC 9113 §5.1),
      // unless we reset it and the frame was on its way.
      this.creditConnection(len);
      if (stream === undefined && this.#wasReset(id)) return;
      if (!this.#noise()) return;
      if (stream !== undefined) this.resetStream(stream, STREAM_CLOSED);
      else this.#rstFrame(id, STREAM_CLOSED);
      return;
    }
    stream.recvWindow -= len;
    if (stream.recvWindow < 0) {
      this.creditConnection(len);
      this.resetStream(stream, FLOW_CONTROL_ERROR);
      return;
    }
    const endStream = (flags & FLAG_END_STREAM) !== 0;
    if (len === 0 && !endStream && !this.#noise()) return;
    stream.data(buf, p, end, len, endStream);
  }

  /**
   * The Pad Length of a PADDED DATA or HEADERS frame at `buf[p]`, `len` bytes
   * of payload, `fixed` of them fields after Pad Length (HEADERS' priority);
   * -1 when the connection was closed for it. A frame too short to hold those
   * fields is a FRAME_SIZE_ERROR (RFC 9113 §4.2); padding that leaves no room
   * for them is a PROTOCOL_ERROR (§6.1, §6.2).
   */
  #padding(buf: Buffer, p: number, len: number, fixed: number): number {
    if (len < 1 + fixed) {
      this.#fatal(FRAME_SIZE_ERROR, 'h2-session-error');
      return -1;
    }
    const pad = buf[p]!;
    if (pad > len - 1 - fixed) {
      this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
      return -1;
    }
    return pad;
  }

  #onHeaders(buf: Buffer, p: number, len: number, flags: number, id: number): void {
    if (id === 0) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
    let end = p + len;
    const priority = (flags & FLAG_PRIORITY) !== 0;
    if ((flags & FLAG_PADDED) !== 0) {
      const pad = this.#padding(buf, p, len, priority ? 5 : 0);
      if (pad < 0) return;
      p++;
      end -= pad;
    }
    let priorityError = false;
    if (priority) {
      if (end - p < 5) return this.#fatal(FRAME_SIZE_ERROR, 'h2-session-error');
      priorityError = (buf.readUInt32BE(p) & 0x7fff_ffff) === id;
      p += 5;
    }
    if ((flags & FLAG_END_HEADERS) !== 0) {
      this.#headerBlock(id, flags, buf, p, end, priorityError);
      return;
    }
    this.#hbStream = id;
    this.#hbFlags = flags;
    this.#hbPriorityError = priorityError;
    this.#hbFrames = 0;
    this.#hbLength = end - p;
    this.#hbParts.length = 0;
    this.#hbParts.push(Buffer.from(buf.subarray(p, end)));
  }

  #onContinuation(buf: Buffer, p: number, len: number, flags: number, id: number): void {
    if (this.#hbStream === 0 || id !== this.#hbStream) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
    this.#hbFrames++;
    this.#hbLength += len;
    if (this.#hbFrames > MAX_CONTINUATIONS || this.#hbLength > this.#maxBlock) {
      this.#fatal(ENHANCE_YOUR_CALM, 'h2-continuation-flood');
      return;
    }
    this.#hbParts.push(Buffer.from(buf.subarray(p, p + len)));
    if ((flags & FLAG_END_HEADERS) === 0) return;
    const block = Buffer.concat(this.#hbParts, this.#hbLength);
    this.#hbParts.length = 0;
    this.#hbStream = 0;
    this.#headerBlock(id, this.#hbFlags, block, 0, block.length, this.#hbPriorityError);
  }

  /** A complete header block for stream `id`: a request head, or trailers. */
  #headerBlock(id: number, flags: number, buf: Buffer, p: number, end: number, priorityError: boolean): void {
    const endStream = (flags & FLAG_END_STREAM) !== 0;
    const stream = this.#streams.get(id);
    if (stream !== undefined || id <= this.#lastStreamId) {
      // Trailers on an open stream; anything else on a known id is an error.
      this.#beginHead(true);
      if (!this.#decoder.decode(buf, p, end, this)) return this.#fatal(COMPRESSION_ERROR, 'h2-session-error');
      if (stream === undefined) {
        if (this.#wasReset(id)) return;
        return this.#fatal(STREAM_CLOSED, 'h2-session-error');
      }
      if (stream.remoteClosed) {
        if (this.#noise()) this.resetStream(stream, STREAM_CLOSED);
        return;
      }
      if (!endStream || this.#hMalformed || priorityError) {
        this.count('h2-frame-error');
        if (this.#noise()) this.resetStream(stream, PROTOCOL_ERROR);
        return;
      }
      stream.remoteEnd();
      return;
    }
    if ((id & 1) === 0) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
    this.#lastStreamId = id;
    this.#beginHead(false);
    if (!this.#decoder.decode(buf, p, end, this)) return this.#fatal(COMPRESSION_ERROR, 'h2-session-error');
    if (this.#goingAway && id > this.#goawayId) {
      this.#rstFrame(id, REFUSED_STREAM);
      return;
    }
    const head = this.#head;
    if (!this.#hMalformed && this.#hProblem === undefined) {
      if (head.method === '' || (head.method !== 'CONNECT' && (head.scheme === '' || head.path === ''))) {
        this.#hMalformed = true;
      } else if (
        head.method === 'CONNECT' &&
        (head.authority === undefined || head.path !== '' || head.scheme !== '')
      ) {
        this.#hMalformed = true;
      } else if (endStream && head.contentLength > 0) {
        // No DATA will come: a content-length that says otherwise is wrong (RFC 9113 §8.1.1).
        this.#hMalformed = true;
      }
    }
    if (this.#hMalformed || priorityError) {
      this.count('h2-frame-error');
      if (this.#noise()) this.#rstFrame(id, PROTOCOL_ERROR);
      return;
    }
    if (this.#streams.size >= this.limits.maxConcurrentStreams) {
      this.#rstFrame(id, REFUSED_STREAM);
      this.#chargeReset();
      return;
    }
    if (this.#hProblem !== undefined) {
      this.count(this.#hProblem);
      // Answered at once; a body that follows is not wanted (RST_STREAM NO_ERROR after the answer).
      this.refuseHead(id, this.#hProblem, endStream);
      return;
    }
    if (head.authority === undefined) head.authority = this.#hHost;
    this.request(id, head, endStream);
  }

  #beginHead(trailers: boolean): void {
    this.#hTrailers = trailers;
    this.#hRegular = false;
    this.#hMalformed = false;
    this.#hProblem = undefined;
    this.#hSize = 0;
    this.#hCount = 0;
    this.#hHost = undefined;
    if (trailers) return;
    const h = this.#head;
    h.method = '';
    h.scheme = '';
    h.path = '';
    h.authority = undefined;
    h.headers = {};
    h.contentLength = -1;
  }

  /** HeaderSink: one decoded field of the block in progress. */
  field(name: string, value: string): void {
    if (this.#hMalformed || this.#hProblem !== undefined) return;
    this.#hSize += name.length + value.length + 32;
    if (this.#hSize > this.limits.maxHeaderListSize) {
      this.#hProblem = 'header-too-large';
      return;
    }
    if (++this.#hCount > this.limits.maxHeaderCount) {
      this.#hProblem = 'too-many-headers';
      return;
    }
    if (this.#hTrailers) {
      // Trailers: no pseudo-headers, valid names and values; not forwarded.
      if (name.charCodeAt(0) === 58 || !TOKEN.test(name) || BAD_VALUE.test(value)) this.#hMalformed = true;
      return;
    }
    const head = this.#head;
    if (name.charCodeAt(0) === 58 /* ':' */) {
      if (this.#hRegular) {
        this.#hMalformed = true;
        return;
      }
      switch (name) {
        case ':method':
          if (head.method !== '' || !METHOD.test(value)) this.#hMalformed = true;
          else head.method = value;
          return;
        case ':scheme':
          if (head.scheme !== '' || !METHOD.test(value)) this.#hMalformed = true;
          else head.scheme = value;
          return;
        case ':path':
          if (head.path !== '' || value === '' || BAD_TARGET.test(value)) this.#hMalformed = true;
          else head.path = value;
          return;
        case ':authority':
          if (head.authority !== undefined || BAD_TARGET.test(value)) this.#hMalformed = true;
          else head.authority = value;
          return;
        default:
          // `:protocol` (extended CONNECT) is not enabled; other pseudo-headers do not exist.
          this.#hMalformed = true;
          return;
      }
    }
    this.#hRegular = true;
    if (!TOKEN.test(name) || BAD_VALUE.test(value)) {
      this.#hMalformed = true;
      return;
    }
    const headers = head.headers;
    switch (name) {
      case 'connection':
      case 'keep-alive':
      case 'proxy-connection':
      case 'transfer-encoding':
      case 'upgrade':
        this.#hMalformed = true;
        return;
      case 'te':
        if (value !== 'trailers') this.#hMalformed = true;
        else headers.te = 'trailers';
        return;
      case 'host':
        if (this.#hHost === undefined) this.#hHost = value;
        return;
      case 'content-length': {
        if (!/^\d{1,15}$/.test(value)) {
          this.#hMalformed = true;
          return;
        }
        const n = Number(value);
        if (head.contentLength >= 0 && head.contentLength !== n) {
          this.#hMalformed = true;
          return;
        }
        if (head.contentLength < 0) headers['content-length'] = value;
        head.contentLength = n;
        return;
      }
      case 'cookie': {
        const prev = headers.cookie;
        headers.cookie = prev === undefined ? value : `${prev as string}; ${value}`;
        return;
      }
      case 'proxy-authenticate':
      case 'proxy-authorization':
      case 'trailer':
      case 'http2-settings':
      case '__proto__':
        return;
    }
    // Own properties only: a field named like an Object.prototype member (`constructor`) is just a field.
    const prev = Object.hasOwn(headers, name) ? headers[name] : undefined;
    if (prev === undefined) headers[name] = value;
    else if (typeof prev === 'string') headers[name] = [prev, value];
    else prev.push(value);
  }

  #onPriority(buf: Buffer, p: number, len: number, id: number): void {
    if (id === 0) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
    if (len !== 5) {
      if (this.#noise()) this.#rstOrClose(id, FRAME_SIZE_ERROR);
      return;
    }
    if ((buf.readUInt32BE(p) & 0x7fff_ffff) === id && this.#noise()) this.#rstOrClose(id, PROTOCOL_ERROR);
  }

  /** Stream error on `id`, whether or not the stream is open. */
  #rstOrClose(id: number, code: number): void {
    const stream = this.#streams.get(id);
    if (stream !== undefined) this.resetStream(stream, code);
    else this.#rstFrame(id, code);
  }

  #onRstStream(buf: Buffer, p: number, len: number, id: number): void {
    if (id === 0) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
    if (len !== 4) return this.#fatal(FRAME_SIZE_ERROR, 'h2-session-error');
    if (id > this.#lastStreamId) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
    const stream = this.#streams.get(id);
    if (stream === undefined) return;
    this.#closeStream(stream, false);
    this.#chargeReset();
  }

  #onSettings(buf: Buffer, p: number, len: number, flags: number, id: number): void {
    if (id !== 0) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
    if ((flags & FLAG_ACK) !== 0) {
      if (len !== 0) this.#fatal(FRAME_SIZE_ERROR, 'h2-session-error');
      return;
    }
    if (len % 6 !== 0) return this.#fatal(FRAME_SIZE_ERROR, 'h2-session-error');
    for (let i = p; i < p + len; i += 6) {
      const key = buf.readUInt16BE(i);
      const value = buf.readUInt32BE(i + 2);
      switch (key) {
        case SETTINGS_ENABLE_PUSH:
          if (value > 1) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
          break;
        case SETTINGS_INITIAL_WINDOW_SIZE: {
          if (value > MAX_WINDOW) return this.#fatal(FLOW_CONTROL_ERROR, 'h2-session-error');
          const delta = value - this.peerInitialWindow;
          this.peerInitialWindow = value;
          for (const s of this.#streams.values()) {
            s.sendWindow += delta;
            if (s.sendWindow > MAX_WINDOW) return this.#fatal(FLOW_CONTROL_ERROR, 'h2-session-error');
            if (delta > 0 && s.queued > 0) this.markReady(s);
          }
          break;
        }
        case SETTINGS_MAX_FRAME_SIZE:
          if (value < DEFAULT_MAX_FRAME || value > MAX_MAX_FRAME) {
            return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
          }
          this.#peerMaxFrame = value;
          break;
        case SETTINGS_HEADER_TABLE_SIZE:
          if (value < DEFAULT_HEADER_TABLE && !this.#tableZeroed) {
            this.#tableZeroed = true;
            this.#tableUpdate = true;
          }
          break;
        // MAX_CONCURRENT_STREAMS: we open no streams (no push). MAX_HEADER_LIST_SIZE: advisory.
        default:
          break;
      }
    }
    if (!this.#control()) return;
    const b = this.#reserve(FRAME_HEADER);
    putFrameHeader(b, this.#pos, 0, SETTINGS, FLAG_ACK, 0);
    this.#advance(FRAME_HEADER);
  }

  #onPing(buf: Buffer, p: number, len: number, flags: number, id: number): void {
    if (id !== 0) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
    if (len !== 8) return this.#fatal(FRAME_SIZE_ERROR, 'h2-session-error');
    if ((flags & FLAG_ACK) !== 0) {
      const seq = buf.readUInt32BE(p + 4);
      if (buf.readUInt32BE(p) === KEEPALIVE_MARK) {
        if (seq === 0) this.keepaliveAcked();
        return;
      }
      const pings = this.#pings;
      for (let k = 0; k < pings.length; k++) {
        if (pings[k]!.id !== seq) continue;
        const ping = pings[k]!;
        pings.splice(k, 1);
        ping.cb(null);
        break;
      }
      return;
    }
    if (!this.#control()) return;
    const b = this.#reserve(FRAME_HEADER + 8);
    putFrameHeader(b, this.#pos, 8, PING, FLAG_ACK, 0);
    buf.copy(b, this.#pos + FRAME_HEADER, p, p + 8);
    this.#advance(FRAME_HEADER + 8);
  }

  #onGoaway(buf: Buffer, p: number, len: number, id: number): void {
    if (id !== 0) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
    if (len < 8) return this.#fatal(FRAME_SIZE_ERROR, 'h2-session-error');
    const code = buf.readUInt32BE(p + 4);
    if (code === ENHANCE_YOUR_CALM) this.count('h2-enhance-your-calm');
    if (code !== NO_ERROR) {
      // The client ends the connection over an error: its streams are gone with it.
      this.destroy();
      return;
    }
    // A graceful goodbye: the streams in flight finish, then the connection closes.
    this.#peerGoaway = true;
    if (this.#streams.size === 0) this.#endSocket();
  }

  #onWindowUpdate(buf: Buffer, p: number, len: number, id: number): void {
    if (len !== 4) return this.#fatal(FRAME_SIZE_ERROR, 'h2-session-error');
    const inc = buf.readUInt32BE(p) & 0x7fff_ffff;
    if (id === 0) {
      if (inc === 0) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
      this.#sendWindow += inc;
      if (this.#sendWindow > MAX_WINDOW) return this.#fatal(FLOW_CONTROL_ERROR, 'h2-session-error');
      return;
    }
    if (id > this.#lastStreamId) return this.#fatal(PROTOCOL_ERROR, 'h2-session-error');
    const stream = this.#streams.get(id);
    if (stream === undefined) return;
    if (inc === 0) {
      if (this.#noise()) this.resetStream(stream, PROTOCOL_ERROR);
      return;
    }
    stream.sendWindow += inc;
    if (stream.sendWindow > MAX_WINDOW) {
      this.resetStream(stream, FLOW_CONTROL_ERROR);
      return;
    }
    if (stream.queued > 0) this.markReady(stream);
  }

  // ---- flood guards (see TokenBucket) ----

  #chargeReset(): void {
    if (!(this.#resets ??= new TokenBucket(RESET_BURST, RESET_RATE)).take())
      this.#fatal(ENHANCE_YOUR_CALM, 'h2-rapid-reset');
  }

  /** Charge one useless frame; false when the connection was closed for it. */
  #noise(): boolean {
    if ((this.#noiseBucket ??= new TokenBucket(NOISE_BURST, NOISE_RATE)).take()) return true;
    this.#fatal(ENHANCE_YOUR_CALM, 'h2-frame-flood');
    return false;
  }

  /** One more control frame to answer; false (and the connection closed) when the client does not read them. */
  #control(): boolean {
    if (++this.#controlBacklog <= MAX_CONTROL_BACKLOG) return true;
    this.#fatal(ENHANCE_YOUR_CALM, 'h2-control-flood');
    return false;
  }

  /**
   * Connection error: GOAWAY with `code`, streams closed, the socket ended
   * once the GOAWAY is written (destroyed a second later at the latest).
   */
  #fatal(code: number, kind: string): void {
    if (this.#dead) return;
    this.count(kind);
    if (code === ENHANCE_YOUR_CALM) this.count('h2-enhance-your-calm');
    this.#goaway(code, this.#lastStreamId);
    this.#dead = true;
    this.socket.pause();
    this.#closeAll();
    this.#flush();
    this.#endSocket();
  }

  // ---- streams ----

  addStream(stream: H2Stream): void {
    this.#streams.add(stream);
  }

  /** Close a stream with RST_STREAM `code` from us. */
  resetStream(stream: H2Stream, code: number): void {
    if (stream.closed) return;
    this.#rstFrame(stream.id, code);
    this.#closeStream(stream, false);
  }

  #rstFrame(id: number, code: number): void {
    if (this.#dead || !this.#control()) return;
    // Made at the first reset: an idle connection keeps no typed array (~330 B with its buffer).
    (this.#resetIds ??= new Int32Array(32))[this.#resetNext] = id;
    this.#resetNext = (this.#resetNext + 1) & 31;
    const b = this.#reserve(FRAME_HEADER + 4);
    putFrameHeader(b, this.#pos, 4, RST_STREAM, 0, id);
    b.writeUInt32BE(code, this.#pos + FRAME_HEADER);
    this.#advance(FRAME_HEADER + 4);
    this.#schedule();
  }

  /** We sent END_STREAM: the stream is complete (the rest of a request body is not wanted). */
  localEnded(stream: H2Stream): void {
    if (!stream.remoteClosed) {
      // RFC 9113 §8.1: a complete response before the request is: RST_STREAM NO_ERROR.
      this.#rstFrame(stream.id, NO_ERROR);
    }
    this.#closeStream(stream, true);
  }

  #closeStream(stream: H2Stream, complete: boolean): void {
    const wasOpen = this.#streams.delete(stream.id);
    stream.close(complete);
    // The last stream of a connection that is going away: nothing more will come.
    if (wasOpen && this.#streams.size === 0 && (this.#goawayFinal || this.#peerGoaway) && !this.#dead)
      this.#endSocket();
  }

  #wasReset(id: number): boolean {
    return this.#resetIds !== undefined && this.#resetIds.includes(id);
  }

  #closeAll(): void {
    const streams = this.#streams.clear();
    for (const s of streams) s.close(false);
  }

  /** Bytes `stream` may send now, at most `want`. */
  sendable(stream: H2Stream, want: number): number {
    if (this.#dead || this.congested) return 0;
    let n = want;
    if (n > this.#sendWindow) n = this.#sendWindow;
    if (n > stream.sendWindow) n = stream.sendWindow;
    if (n > this.#peerMaxFrame) n = this.#peerMaxFrame;
    return n;
  }

  /** Response bytes waiting for the socket beyond what DATA may add to. */
  get congested(): boolean {
    return this.#outBytes + this.socket.writableLength >= SOCKET_HWM;
  }

  markReady(stream: H2Stream): void {
    if (stream.ready) return;
    stream.ready = true;
    this.#ready.push(stream);
    this.#schedule();
  }

  /** Request body bytes of `stream` consumed: credit them back (in WINDOW_UPDATEs once half a window is due). */
  credit(stream: H2Stream, n: number): void {
    if (this.#dead) return;
    this.creditConnection(n);
    if (stream.closed || stream.remoteClosed) return;
    stream.unacked += n;
    if (stream.unacked >= this.limits.streamWindow / 2) {
      const inc = stream.unacked;
      stream.unacked = 0;
      stream.recvWindow += inc;
      this.#windowUpdate(stream.id, inc);
    }
  }

  creditConnection(n: number): void {
    if (this.#dead || n === 0) return;
    this.#connUnacked += n;
    if (this.#connUnacked >= this.limits.connectionWindow / 2) {
      const inc = this.#connUnacked;
      this.#connUnacked = 0;
      this.#recvWindow += inc;
      this.#windowUpdate(0, inc);
    }
  }

  #windowUpdate(id: number, inc: number): void {
    const b = this.#reserve(FRAME_HEADER + 4);
    putFrameHeader(b, this.#pos, 4, WINDOW_UPDATE, 0, id);
    b.writeUInt32BE(inc, this.#pos + FRAME_HEADER);
    this.#advance(FRAME_HEADER + 4);
    this.#schedule();
  }

  #goaway(code: number, lastId: number): void {
    const b = this.#reserve(FRAME_HEADER + 8);
    putFrameHeader(b, this.#pos, 8, GOAWAY, 0, 0);
    b.writeUInt32BE(lastId, this.#pos + FRAME_HEADER);
    b.writeUInt32BE(code, this.#pos + FRAME_HEADER + 4);
    this.#advance(FRAME_HEADER + 8);
  }

  // ---- writing frames ----

  /** HEADERS (and CONTINUATIONs) carrying `block`. */
  headersFrame(stream: H2Stream, block: Buffer, endStream: boolean): void {
    if (this.#dead) return;
    if (this.#tableUpdate) {
      this.#tableUpdate = false;
      block = Buffer.concat([TABLE_SIZE_ZERO, block]);
    }
    const max = this.#peerMaxFrame;
    let off = 0;
    let type = HEADERS;
    do {
      const n = Math.min(max, block.length - off);
      const last = off + n === block.length;
      let flags = last ? FLAG_END_HEADERS : 0;
      if (type === HEADERS && endStream) flags |= FLAG_END_STREAM;
      const b = this.#reserve(FRAME_HEADER + n);
      putFrameHeader(b, this.#pos, n, type, flags, stream.id);
      block.copy(b, this.#pos + FRAME_HEADER, off, off + n);
      this.#advance(FRAME_HEADER + n);
      off += n;
      type = CONTINUATION;
    } while (off < block.length);
    this.#schedule();
  }

  trailersFrame(stream: H2Stream, trailers: Fields): void {
    encoder.begin();
    for (const name in trailers) {
      const v = trailers[name]!;
      if (typeof v === 'string') encoder.field(name, v);
      else for (const one of v) encoder.field(name, one);
    }
    this.headersFrame(stream, encoder.block(), true);
  }

  /**
   * One DATA frame of `chunk[start, end)` (the caller checked the windows).
   * `transient`: the chunk is valid only during this call, so the payload is
   * copied (into the output blocks, after its frame header) rather than
   * written by reference.
   */
  dataFrame(
    stream: H2Stream,
    chunk: Buffer,
    start: number,
    end: number,
    endStream: boolean,
    transient = false,
  ): void {
    const n = end - start;
    this.#sendWindow -= n;
    stream.sendWindow -= n;
    const flags = endStream ? FLAG_END_STREAM : 0;
    if (n <= COPY_MAX) {
      const b = this.#reserve(FRAME_HEADER + n);
      const at = this.#pos;
      putFrameHeader(b, at, n, DATA, flags, stream.id);
      chunk.copy(b, at + FRAME_HEADER, start, end);
      this.#advance(FRAME_HEADER + n);
      this.#lastDataBuf = b;
      this.#lastDataFlags = at + 4;
    } else {
      const b = this.#reserve(FRAME_HEADER);
      const at = this.#pos;
      putFrameHeader(b, at, n, DATA, flags, stream.id);
      this.#advance(FRAME_HEADER);
      this.#lastDataBuf = b;
      this.#lastDataFlags = at + 4;
      if (transient) this.#copyIn(chunk, start, end);
      else {
        this.#seal();
        this.#parts.push(start === 0 && end === chunk.length ? chunk : chunk.subarray(start, end));
        this.#outBytes += n;
      }
    }
    this.#lastDataStream = stream;
    this.#schedule();
  }

  /** END_STREAM after the last DATA: set on that frame if it is still in the scratch buffer, else an empty DATA frame. */
  endData(stream: H2Stream): void {
    if (this.#dead) return;
    const last = this.#lastDataBuf;
    if (this.#lastDataStream === stream && last !== undefined) {
      last[this.#lastDataFlags]! |= FLAG_END_STREAM;
      this.#lastDataStream = undefined;
      return;
    }
    const b = this.#reserve(FRAME_HEADER);
    putFrameHeader(b, this.#pos, 0, DATA, FLAG_END_STREAM, stream.id);
    this.#advance(FRAME_HEADER);
    this.#schedule();
  }

  /** Room for `n` more bytes at `#pos` in the current block (a new one when it is full). */
  #reserve(n: number): Buffer {
    const b = this.#buf;
    if (b !== undefined && this.#pos + n <= b.length) return b;
    if (b !== undefined) {
      this.#seal();
      this.#filled.push(b);
    }
    // A header block larger than a block gets a buffer of its own (never pooled: not a block's size).
    const next = n <= BLOCK_SIZE ? takeBlock() : Buffer.allocUnsafe(n);
    this.#buf = next;
    this.#start = 0;
    this.#pos = 0;
    return next;
  }

  /** Written `n` bytes at the position `#reserve` made room at. */
  #advance(n: number): void {
    this.#pos += n;
    this.#outBytes += n;
    this.#lastDataStream = undefined;
  }

  /** `chunk[start, end)` copied into the output, across blocks where it does not fit in one. */
  #copyIn(chunk: Buffer, start: number, end: number): void {
    this.#outBytes += end - start;
    while (start < end) {
      const b = this.#reserve(1);
      const n = Math.min(b.length - this.#pos, end - start);
      chunk.copy(b, this.#pos, start, start + n);
      this.#pos += n;
      start += n;
    }
  }

  /** The current block's bytes not yet in the list of parts to write go there (a view: they stay in the block). */
  #seal(): void {
    const b = this.#buf;
    if (b === undefined || this.#pos === this.#start) return;
    this.#parts.push(this.#start === 0 && this.#pos === b.length ? b : b.subarray(this.#start, this.#pos));
    this.#start = this.#pos;
  }

  /**
   * A block a stream kept response bytes in (stream.ts) is done with: it may
   * go back to the pool once the frames that refer to it are sent.
   */
  retire(block: Buffer): void {
    if (this.#closed) return;
    this.#filled.push(block);
  }

  /**
   * After a write: when the socket has sent everything (nothing is queued in
   * it), every block written so far is free again; otherwise the blocks
   * written wait in `#unsent` for its 'drain'. Either way the connection holds
   * no block between writes, so that an idle one holds none.
   */
  #settle(): void {
    const b = this.#buf;
    const used = this.#pos > 0;
    this.#buf = undefined;
    this.#start = 0;
    this.#pos = 0;
    if (this.socket.writableLength === 0) {
      if (b !== undefined) giveBlock(b);
      giveBlocks(this.#filled);
      giveBlocks(this.#unsent);
      return;
    }
    const unsent = this.#unsent;
    if (b !== undefined) {
      if (used) unsent.push(b);
      else giveBlock(b);
    }
    const filled = this.#filled;
    for (let k = 0; k < filled.length; k++) unsent.push(filled[k]!);
    filled.length = 0;
    if (unsent.length > MAX_UNSENT_BLOCKS) unsent.splice(0, unsent.length - MAX_UNSENT_BLOCKS);
  }

  #schedule(): void {
    if (this.#inRead || this.#flushQueued || this.#closed) return;
    this.#flushQueued = true;
    toFlush.push(this);
    if (!flushScheduled) {
      flushScheduled = true;
      setImmediate(flushAll);
    }
  }

  /** Send the streams' DATA the windows allow, round-robin, one frame per stream per round. */
  #pump(): void {
    if (this.#pumping || this.#dead) return;
    this.#pumping = true;
    try {
      while (this.#ready.length > 0) {
        const list = this.#ready;
        this.#ready = this.#spareReady;
        this.#spareReady = list;
        let sent = false;
        for (let k = 0; k < list.length; k++) {
          const s = list[k]!;
          s.ready = false;
          if (s.closed) continue;
          if (s.pump()) sent = true;
          if (s.queued > 0 || (s.needDrain && this.congested)) {
            // More to send (window, socket), or a writer to wake once the socket takes more:
            // next round, next WINDOW_UPDATE or next 'drain'.
            s.ready = true;
            this.#ready.push(s);
          } else if (s.needDrain) s.drained();
        }
        list.length = 0;
        if (!sent) break;
      }
    } finally {
      this.#pumping = false;
    }
  }

  flushNow(): void {
    this.#flushQueued = false;
    try {
      this.#flush();
    } catch (err) {
      this.#crashed(err);
    }
  }

  /** A bug surfaced while handling this connection: it alone is closed (INTERNAL_ERROR), the process goes on. */
  #crashed(err: unknown): void {
    this.#inRead = false;
    try {
      this.#fatal(INTERNAL_ERROR, 'h2-session-error');
    } catch {
      // Closing below regardless.
    }
    this.destroy();
    this.internalError(err);
  }

  #flush(): void {
    if (this.#closed) return;
    this.#pump();
    this.#seal();
    const parts = this.#parts;
    if (parts.length > 0) {
      this.#outBytes = 0;
      this.#lastDataStream = undefined;
      this.#lastDataBuf = undefined;
      const socket = this.socket;
      if (!socket.destroyed && !socket.writableEnded) {
        if (parts.length === 1) socket.write(parts[0]!);
        else {
          socket.cork();
          for (let k = 0; k < parts.length; k++) socket.write(parts[k]!);
          socket.uncork();
        }
        if (socket.writableLength === 0) this.#controlBacklog = 0;
      }
      // The socket keeps no reference to the list itself.
      parts.length = 0;
    }
    this.#settle();
  }

  socketDrained(): void {
    this.#controlBacklog = 0;
    // Everything the socket was given is sent.
    if (this.socket.writableLength === 0) giveBlocks(this.#unsent);
    if (this.#ready.length > 0) this.flushNow();
  }

  /** No more to say: end our side once what is queued is written (destroyed a second later at the latest). */
  #endSocket(): void {
    if (this.#closed) return;
    this.#dead = true;
    this.#flush();
    const socket = this.socket;
    socket.end();
    this.#destroyTimer ??= this.#clock.setTimer(() => this.destroy(), 1000);
  }

  socketClosed(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#dead = true;
    this.#destroyTimer?.cancel();
    this.#goawayGrace?.cancel();
    this.#prefaceDeadline?.cancel();
    this.#prefaceDeadline = undefined;
    this.#closeAll();
    this.#pings.length = 0;
    this.#parts.length = 0;
    // The current block was never written (see #settle); blocks that were are left to the garbage
    // collector rather than reused: a write of the closed socket may still have referred to them.
    if (this.#buf !== undefined) giveBlock(this.#buf);
    this.#buf = undefined;
    this.#filled.length = 0;
    this.#unsent.length = 0;
    this.closedHook();
    const listeners = this.#closeListeners;
    this.#closeListeners = undefined;
    if (listeners !== undefined) for (const fn of listeners) fn();
  }
}
