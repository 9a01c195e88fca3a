// Client address matching for allowedCIDRs and trusted proxies. CIDRs are parsed once, when a
// snapshot is compiled, into node:net BlockLists; the request path only normalises the address and
// asks the list.
import { BlockList, isIP } from 'node:net';

export type CidrResult = { ok: true; list: BlockList } | { ok: false; message: string };

/** Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address (a /32 or /128). */
export function compileCidrs(cidrs: readonly string[]): CidrResult {
  const list = new BlockList();
  for (const cidr of cidrs) {
    const slash = cidr.indexOf('/');
    const address = slash < 0 ? cidr : cidr.slice(0, slash);
    const family = isIP(address);
    if (family === 0) return { ok: false, message: `${JSON.stringify(cidr)} is not an IPv4 or IPv6 CIDR` };
    const max = family === 4 ? 32 : 128;
    const bits = slash < 0 ? max : Number(cidr.slice(slash + 1));
    if (!Number.isInteger(bits) || bits < 0 || bits > max || (slash >= 0 && cidr.slice(slash + 1) === '')) {
      return { ok: false, message: `${JSON.stringify(cidr)} has a prefix length outside 0..${max}` };
    }
    list.addSubnet(address, bits, family === 4 ? 'ipv4' : 'ipv6');
  }
  return { ok: true, list };
}

const MAPPED_V4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i;

/** A socket's remote address as the CIDR lists see it: IPv4-mapped IPv6 becomes plain IPv4. */
export function normalizeAddress(address: string): string {
  const m = MAPPED_V4.exec(address);
  return m ? (m[1] as string) : address;
}

export function addressIn(list: BlockList, address: string): boolean {
  const family = isIP(address);
  if (family === 0) return false;
  return list.check(address, family === 4 ? 'ipv4' : 'ipv6');
}
