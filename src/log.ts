import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger } from 'pino';

const LEVEL_NAMES: Readonly<Record<number, string>> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO ',
  40: 'WARN ',
  50: 'ERROR',
  60: 'FATAL',
};

/**
 * Logs are JSON lines (one object per line, pino's format) for machines. With
 * `pretty` they are rendered as `HH:MM:SS.mmm LEVEL message key=value …` for a
 * terminal. The renderer is a few lines here rather than pino-pretty, which
 * would bring a dozen packages for this one job.
 */
export function createLogger(opts: {
  level?: LevelWithSilent;
  pretty?: boolean;
  destination?: NodeJS.WritableStream;
}): Logger {
  const out = opts.destination ?? process.stdout;
  const level = opts.level ?? 'info';
  if (opts.pretty !== true) {
    return pino({ level, base: undefined }, opts.destination ?? pino.destination({ dest: 1, sync: true }));
  }
  return pino({ level, base: undefined }, { write: (line: string) => out.write(renderPretty(line)) });
}

export function renderPretty(line: string): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const { time, level, msg, ...rest } = record;
  const when = typeof time === 'number' ? new Date(time).toISOString().slice(11, 23) : '';
  const name = LEVEL_NAMES[typeof level === 'number' ? level : 30] ?? String(level);
  const fields = Object.entries(rest)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${when} ${name} ${typeof msg === 'string' ? msg : ''}${fields === '' ? '' : ` ${fields}`}\n`;
}
