/** Preconditions for tests that change the kernel's network state (root, nft, ip). */
import { spawnSync } from 'node:child_process';

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
