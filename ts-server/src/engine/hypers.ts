// Typed reads of resolved hyperparameters. The registry has already checked
// every value against its table, so a wrong type here is a bug in a table.
import type { Hypers } from './types';

function bad(name: string, want: string, v: unknown): never {
  throw new Error(`hyperparameter ${name}: expected ${want}, got ${JSON.stringify(v)}`);
}

export function num(h: Hypers, name: string): number {
  const v = h[name];
  return typeof v === 'number' ? v : bad(name, 'a number', v);
}

export function flag(h: Hypers, name: string): boolean {
  const v = h[name];
  return typeof v === 'boolean' ? v : bad(name, 'a boolean', v);
}

export function pair(h: Hypers, name: string): [number, number] {
  const v = h[name];
  return Array.isArray(v) && v.length === 2 && typeof v[0] === 'number' ? [v[0], v[1]] : bad(name, 'a pair of numbers', v);
}

/** A pair whose first number may be null (Adafactor's eps: [eps1 or null, eps2]). */
export function nullablePair(h: Hypers, name: string): [number | null, number] {
  const v = h[name];
  return Array.isArray(v) && v.length === 2 ? v : bad(name, 'a pair', v);
}

export function triple(h: Hypers, name: string): [number, number, number] {
  const v = h[name];
  return Array.isArray(v) && v.length === 3 ? v : bad(name, 'three numbers', v);
}

export function choice(h: Hypers, name: string): string {
  const v = h[name];
  return typeof v === 'string' ? v : bad(name, 'a string', v);
}
