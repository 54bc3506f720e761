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
