// API key format: `gpg_` + 30 random base62 characters (178 bits) + 6 base62 characters of CRC-32 over
// them. The checksum lets the data plane reject typos and random guesses without a lookup; the
// prefix makes leaked keys easy to recognise for secret scanners. Only SHA-256 hashes and the
// first KEY_PREFIX_LENGTH characters ever leave the Secret that holds a key.
import { hash, randomInt } from 'node:crypto';
import { crc32 } from 'node:zlib';

export const KEY_SCHEME = 'gpg_';
const RANDOM_LENGTH = 30;
const CHECKSUM_LENGTH = 6;
export const KEY_LENGTH = KEY_SCHEME.length + RANDOM_LENGTH + CHECKSUM_LENGTH;
export const KEY_PREFIX_LENGTH = 12;
const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const KEY_PATTERN = /^gpg_[0-9A-Za-z]{36}$/;

function base62(value: number, width: number): string {
  let out = '';
  let v = value;
  for (let i = 0; i < width; i++) {
    out = BASE62[v % 62] + out;
    v = Math.floor(v / 62);
  }
  return out;
}

function checksum(random: string): string {
  return base62(crc32(random), CHECKSUM_LENGTH);
}

/** A new key from the system CSPRNG. */
export function generateApiKey(): string {
  let random = '';
  for (let i = 0; i < RANDOM_LENGTH; i++) random += BASE62[randomInt(62)];
  return KEY_SCHEME + random + checksum(random);
}

export type KeyShape = 'ok' | 'not-a-gpugate-key' | 'bad-checksum';

/** Checks format and checksum only; says nothing about whether the key exists. */
export function checkKeyShape(key: string): KeyShape {
  if (key.length !== KEY_LENGTH || !KEY_PATTERN.test(key)) return 'not-a-gpugate-key';
  const random = key.slice(KEY_SCHEME.length, KEY_SCHEME.length + RANDOM_LENGTH);
  return key.endsWith(checksum(random)) ? 'ok' : 'bad-checksum';
}

export function hashApiKey(key: string): string {
  // One-shot hash: about half the cost of createHash().update().digest() for a key this short.
  return hash('sha256', key, 'hex');
}

export function keyPrefix(key: string): string {
  return key.slice(0, KEY_PREFIX_LENGTH);
}
