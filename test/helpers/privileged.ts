/** Preconditions for tests that change the kernel's network state (root, nft, ip). */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { after } from 'node:test';

/** Why a privileged test cannot run here, or undefined when it can. */
export function privilegedSkipReason(tools: readonly string[] = ['nft']): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces / nftables)';
  for (const tool of tools) {
    const r = spawnSync(tool, [tool === 'ip' ? '-V' : '--version'], { encoding: 'utf8' });
    if (r.error !== undefined || r.status !== 0) {
      return `needs ${tool} (apt-get install ${tool === 'nft' ? 'nftables' : 'iproute2'})`;
    }
  }
  if (tools.includes('nft')) {
    const probe = spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' });
    if (probe.status !== 0) return `nft cannot talk to the kernel here: ${probe.stderr.trim()}`;
  }
  return undefined;
}

/** Run a command, throwing with its stderr on failure. */
export function run(cmd: string, args: readonly string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr || r.stdout}`);
  return r.stdout;
}

/**
 * A network namespace `ns` joined to the host by a veth pair: `hostSide`
 * with `hostIp`/30 on the host, `nsSide` with `nsIp`/30 (and loopback up)
 * inside. What it made is undone by the functions pushed onto `cleanups`.
 */
export function vethNamespace(
  names: { ns: string; hostSide: string; nsSide: string; hostIp: string; nsIp: string },
  cleanups: (() => unknown)[],
): void {
  const { ns, hostSide, nsSide, hostIp, nsIp } = names;
  run('ip', ['netns', 'add', ns]);
  cleanups.push(() => void run('ip', ['netns', 'del', ns]));
  run('ip', ['link', 'add', hostSide, 'type', 'veth', 'peer', 'name', nsSide]);
  cleanups.push(() => void run('ip', ['link', 'del', hostSide]));
  run('ip', ['link', 'set', nsSide, 'netns', ns]);
  run('ip', ['addr', 'add', `${hostIp}/30`, 'dev', hostSide]);
  run('ip', ['link', 'set', hostSide, 'up']);
  run('ip', ['-n', ns, 'addr', 'add', `${nsIp}/30`, 'dev', nsSide]);
  run('ip', ['-n', ns, 'link', 'set', nsSide, 'up']);
  run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
}

/**
 * A list of clean-ups run (newest first) after this file's tests, each even
 * when an earlier one throws: kernel state a test made must not outlive it.
 */
export function cleanupsAfterAll(): (() => Promise<void> | void)[] {
  const cleanups: (() => Promise<void> | void)[] = [];
  after(async () => {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch {
        // Keep cleaning up the rest.
      }
    }
  });
  return cleanups;
}

/** `node -e script` inside namespace `ns`, its stdout piped (killed by `cleanups`). */
export function nodeInNamespace(ns: string, script: string, cleanups: (() => unknown)[]): ChildProcess {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  cleanups.push(() => void child.kill('SIGKILL'));
  return child;
}

/**
 * Inside namespace `ns`, drop every packet coming in (and with `out`, going
 * out): its hosts go silent, no FIN, no RST. The table goes with the namespace.
 */
export function dropAll(ns: string, out = false): void {
  const chain = (name: string, hook: string): string =>
    ` chain ${name} {\n  type filter hook ${hook} priority 0; policy drop;\n }\n`;
  run(
    'ip',
    ['netns', 'exec', ns, 'nft', '-f', '-'],
    `table inet drop_all {\n${chain('in', 'input')}${out ? chain('out', 'output') : ''}}\n`,
  );
}
