/**
 * Where the Kubernetes API is and how to authenticate: the in-cluster
 * service account, or a kubeconfig file (`kubeconfig:` in the config, else
 * $KUBECONFIG). Client certificates, bearer tokens and token files are
 * supported; exec and auth-provider plugins are not (they run programs).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { Agent } from 'undici';
import { parse } from 'yaml';
import { HoldfastError } from '../errors.ts';

const SA_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** The Kubernetes API cannot be reached as configured (no service account, unusable kubeconfig). */
export class KubeConfigError extends HoldfastError {
  constructor(message: string) {
    super('HOLDFAST_ERR_KUBECONFIG', message);
  }
}

export interface KubeAccess {
  /** Base URL, e.g. https://10.96.0.1:443 */
  readonly server: string;
  /** Namespace of the pod or kubeconfig context, when known. */
  readonly namespace: string | undefined;
  readonly dispatcher: Agent;
  /** Headers for each request (a rotated service-account token is re-read). */
  headers(): Record<string, string>;
}

function readMaybe(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** Resolve access from `kubeconfig` (a path), $KUBECONFIG, or the in-cluster service account. */
export function kubeAccess(kubeconfig: string | undefined, env: NodeJS.ProcessEnv = process.env): KubeAccess {
  const fromEnv = env.KUBECONFIG?.split(':').find((p) => p !== '' && existsSync(p));
  const file = kubeconfig ?? fromEnv;
  if (file !== undefined) return fromKubeconfig(file);
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT ?? '443';
  const tokenFile = `${SA_DIR}/token`;
  if (host === undefined || !existsSync(tokenFile)) {
    throw new KubeConfigError(
      'no Kubernetes API to talk to: not running in a pod with a service account (KUBERNETES_SERVICE_HOST and ' +
        `${tokenFile}), and neither backends.kubernetes.kubeconfig nor $KUBECONFIG names a kubeconfig file`,
    );
  }
  const server = `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
  return {
    server,
    namespace: readMaybe(`${SA_DIR}/namespace`),
    dispatcher: new Agent({ connect: { ca: readMaybe(`${SA_DIR}/ca.crt`) } }),
    headers: () => ({ authorization: `Bearer ${readMaybe(tokenFile) ?? ''}` }),
  };
}

type Entry = Record<string, unknown>;

function fromKubeconfig(file: string): KubeAccess {
  let doc: Record<string, unknown>;
  try {
    doc = parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new KubeConfigError(`cannot read kubeconfig ${file}: ${(err as Error).message}`);
  }
  const base = dirname(resolve(file));
  const pick = (list: unknown, name: unknown, what: string): Entry => {
    const hit = (Array.isArray(list) ? (list as Entry[]) : []).find((e) => e.name === name);
    const value = hit?.[what] as Entry | undefined;
    if (value === undefined)
      throw new KubeConfigError(`kubeconfig ${file}: no ${what} named "${String(name)}"`);
    return value;
  };
  const ctx = pick(doc.contexts, doc['current-context'], 'context') as Record<string, string | undefined>;
  const cluster = pick(doc.clusters, ctx.cluster, 'cluster');
  const user = ctx.user === undefined ? {} : pick(doc.users, ctx.user, 'user');
  if (user.exec !== undefined || user['auth-provider'] !== undefined) {
    throw new KubeConfigError(
      `kubeconfig ${file}: user "${ctx.user}" authenticates with an exec or auth-provider plugin, which holdfast does not run; use a token, token file or client certificate`,
    );
  }
  const data = (key: string, obj: Record<string, unknown>): string | undefined => {
    const inline = obj[`${key}-data`];
    if (typeof inline === 'string') return Buffer.from(inline, 'base64').toString('utf8');
    const path = obj[key];
    if (typeof path === 'string') {
      const text = readMaybe(resolve(base, path));
      if (text === undefined) throw new KubeConfigError(`kubeconfig ${file}: cannot read ${key} ${path}`);
      return text;
    }
    return undefined;
  };
  const server = cluster.server;
  if (typeof server !== 'string')
    throw new KubeConfigError(`kubeconfig ${file}: cluster "${ctx.cluster}" has no server`);
  const token = typeof user.token === 'string' ? user.token : undefined;
  const tokenFile = typeof user.tokenFile === 'string' ? resolve(base, user.tokenFile) : undefined;
  const basic =
    typeof user.username === 'string'
      ? `${user.username}:${typeof user.password === 'string' ? user.password : ''}`
      : undefined;
  return {
    server: server.replace(/\/$/, ''),
    namespace: ctx.namespace,
    dispatcher: new Agent({
      connect: {
        ca: data('certificate-authority', cluster),
        cert: data('client-certificate', user),
        key: data('client-key', user),
        rejectUnauthorized: cluster['insecure-skip-tls-verify'] !== true,
        servername: typeof cluster['tls-server-name'] === 'string' ? cluster['tls-server-name'] : undefined,
      },
    }),
    headers: (): Record<string, string> => {
      const t = tokenFile !== undefined ? readMaybe(tokenFile) : token;
      if (t !== undefined) return { authorization: `Bearer ${t}` };
      if (basic !== undefined) return { authorization: `Basic ${Buffer.from(basic).toString('base64')}` };
      return {};
    },
  };
}
