/** A throw-away certificate for TLS tests, made with `openssl`. */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A self-signed certificate for localhost in a fresh temp directory, or why there is none. */
export function makeCert(): { dir: string; cert: string; key: string } | string {
  const dir = mkdtempSync(join(tmpdir(), 'holdfast-tls-'));
  const cert = join(dir, 'tls.crt');
  const key = join(dir, 'tls.key');
  const r = spawnSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      '/CN=localhost',
    ],
    { encoding: 'utf8' },
  );
  if (r.error !== undefined || r.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    return `openssl is not available (${r.error?.message ?? r.stderr.trim()}); install it to run the TLS test`;
  }
  return { dir, cert, key };
}
