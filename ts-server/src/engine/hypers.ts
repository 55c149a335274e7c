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
  return Array.isArray(v) && v.length === 2 ? v : bad(name, 'a pair of numbers', v);
}
