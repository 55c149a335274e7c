// The reference of q8 state (state_dtype "q8"), written from its definition
// (docs/engine.md "8-bit state"), not from src/engine/q8.ts or the kernels:
// the dynamic map of Dettmers et al. (2022) — after an optional sign bit,
// E zero bits, an indicator bit, F fraction bits; magnitude
// 10^-E (0.1 + 0.9 (f + 1) / 2^F) — signed (E <= 6, F = 6 - E, both signs,
// zero twice) or unsigned (E <= 7, F = 7 - E, zero once), sorted, as float32.
// A slot is quantised per block of 256 elements: absmax = max |float32(v)|,
// code = the nearest entry to float32(v) / absmax (float32 quotient; ties:
// the lower index), stored value float32(absmax * map[code]).

function buildMap(unsigned: boolean): number[] {
  const out: number[] = [0];
  if (!unsigned) out.push(0);
  const eMax = unsigned ? 7 : 6;
  for (let e = 0; e <= eMax; e++) {
    const fBits = eMax - e;
    for (let f = 0; f < 2 ** fBits; f++) {
      // 10^-E (0.1 + 0.9 (f + 1) / 2^F) = (2^F + 9 (f + 1)) / (10^(E+1) 2^F), one rounding
      const mag = (2 ** fBits + 9 * (f + 1)) / (Number(`1e${e + 1}`) * 2 ** fBits);
      out.push(Math.fround(mag));
      if (!unsigned) out.push(Math.fround(-mag));
    }
  }
  return out.sort((a, b) => a - b);
}

export const REF_MAPS = { signed: buildMap(false), unsigned: buildMap(true) };

/** The index of the entry nearest to x, the lower one on a tie (a linear scan, on purpose). */
export function nearest(map: number[], x: number): number {
  let best = 0;
  for (let i = 1; i < map.length; i++) if (Math.abs(x - map[i]) < Math.abs(x - map[best])) best = i;
  return best;
}

/** Every element of a slot replaced in place by its stored q8 value. */
export function quantiseSlot(values: number[], unsigned: boolean): void {
  const map = unsigned ? REF_MAPS.unsigned : REF_MAPS.signed;
  for (let b = 0; b < values.length; b += 256) {
    const end = Math.min(values.length, b + 256);
    let absmax = 0;
    for (let i = b; i < end; i++) absmax = Math.max(absmax, Math.abs(Math.fround(values[i])));
    for (let i = b; i < end; i++) {
      values[i] = absmax === 0 ? 0 : Math.fround(absmax * map[nearest(map, Math.fround(Math.fround(values[i]) / absmax))]);
    }
  }
}

/**
 * A row-sparse store of q8 state (docs/engine.md "compact state"): every block
 * of 256 holding a touched element is quantised again, its absmax max |v| over
 * the block but at least its old absmax while it holds an untouched element
 * (which then keeps its value); blocks without a touched element keep
 * everything. `absmax`: each block's, updated in place.
 */
export function quantiseRows(values: number[], unsigned: boolean, absmax: number[], touched: (i: number) => boolean): void {
  const map = unsigned ? REF_MAPS.unsigned : REF_MAPS.signed;
  for (let b = 0, blk = 0; b < values.length; b += 256, blk++) {
    const end = Math.min(values.length, b + 256);
    let any = false,
      all = true,
      mx = 0;
    for (let i = b; i < end; i++) {
      if (touched(i)) any = true;
      else all = false;
      mx = Math.max(mx, Math.abs(Math.fround(values[i])));
    }
    if (!any) continue;
    const a = all ? mx : Math.max(mx, absmax[blk] ?? 0);
    absmax[blk] = a;
    for (let i = b; i < end; i++) values[i] = a === 0 ? 0 : Math.fround(a * map[nearest(map, Math.fround(Math.fround(values[i]) / a))]);
  }
}
