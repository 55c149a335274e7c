// The reference of bfloat16 state (state_dtype "bfloat16"), written from its
// definition in native/src/bf16-inl.h, not from the kernels: a stored element
// is (bits(float32(x)) + r) >> 16 with r = (K (lo32(i) + hi32(key)) mod 2^32) >> 16,
// K = 0x9E3779B1, and key = sm(sm(sm(sm(seed) ^ param) ^ t) ^ (slot + 256 (i >> 32))).
const M64 = (1n << 64n) - 1n;

/** SplitMix64's step. */
function splitMix(z: bigint): bigint {
  z = (z + 0x9e3779b97f4a7c15n) & M64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}

const K = 0x9e3779b1;

/** The 32-bit offset of slot `slot` of parameter `param` at step t (elements below 2^32). */
export function slotOffset(seed: number, param: number, t: number, slot: number): number {
  const key = splitMix(splitMix(splitMix(BigInt(seed)) ^ BigInt(param)) ^ BigInt(t));
  return Number(splitMix(key ^ BigInt(slot)) >> 32n);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** x (a float64) as the engine stores it: float32, then bfloat16 rounded with element i's random bits. */
export function roundStochastic(x: number, offset: number, i: number): number {
  f32[0] = x;
  const r = Math.imul(K, (i + offset) >>> 0) >>> 16;
  u32[0] = (((u32[0] + r) >>> 16) << 16) >>> 0;
  return f32[0];
}

/** Every element of a slot rounded in place, as a store by the kernel does. */
export function roundSlot(values: number[], seed: number, param: number, t: number, slot: number): void {
  const off = slotOffset(seed, param, t, slot);
  for (let i = 0; i < values.length; i++) values[i] = roundStochastic(values[i], off, i);
}

/** x as float32, then bfloat16 rounded to nearest even (a slot's first fill, an imported checkpoint). */
export function roundNearest(x: number): number {
  f32[0] = x;
  const b = u32[0];
  u32[0] = (((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) << 16) >>> 0;
  return f32[0];
}

/** A row-sparse store: only the elements `touched(i)` rounded, each with the key a dense store of the slot uses. */
export function roundSlotAt(values: number[], seed: number, param: number, t: number, slot: number, touched: (i: number) => boolean): void {
  const off = slotOffset(seed, param, t, slot);
  for (let i = 0; i < values.length; i++) if (touched(i)) values[i] = roundStochastic(values[i], off, i);
}
