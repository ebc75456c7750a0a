// The egress filter of VMs (issue 18): nftables where the host can, else no network for VMs.
export { openNetworkFilter, probeNftables, type NetworkFilterOptions, type OpenedNetworkFilter } from './open.js';
export { NftNetworkFilter } from './filter.js';
export { RestrictFilter } from './restrict.js';
export {
  applyScript,
  chainScript,
  hostKey,
  safeName,
  tableScript,
  vmRules,
  FLOOR4,
  FLOOR6,
  SPECIAL4,
  SPECIAL6,
  type HostFacts,
} from './egress-rules.js';
export { toBlock, parseBlock } from './addr.js';
