/**
 * holdfast as a library. The gateway and its building blocks; the
 * client-side balancing API grows here from the same core.
 */
export { Gateway, type GatewayOptions } from './gateway.ts';
export { loadConfigFile, parseConfig } from './config/load.ts';
export type { Config, ServiceConfig } from './config/schema.ts';
export { createBalancer, BALANCE_POLICIES, type BalancerOptions } from './balance/index.ts';
export type { Balancer, PickContext, Target } from './balance/types.ts';
export { Cluster } from './cluster/cluster.ts';
export { systemClock, ManualClock, type Clock } from './cluster/clock.ts';
export { HoldfastError, ConfigError, ListenError } from './errors.ts';
export { createLogger } from './log.ts';
