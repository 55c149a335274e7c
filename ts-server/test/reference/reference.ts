// The plain-number reference of docs/update-rules.md: float64, element by element,
// no tfjs. It is written independently of src/ (one loop per element, the
// formulas as the document states them) so that the two check each other.
export type H = Record<string, number | boolean | Array<number | null> | string | null>;
export type RefState = Record<string, number[]>;

interface Dir {
  d: number[];
  /** multiplies eta and eta_out */
  scale: number;
  /** decoupled decay factor applied to theta before the rule */
  decay: number;
  /** state that follows the new theta (ASGD's average), run after the rule */
  after?: (theta: number[]) => void;
}

const n = (h: H, k: string) => h[k] as number;
const sq = (x: number) => x * x;
const filled = (len: number, v = 0) => new Array<number>(len).fill(v);

function decayed(g: number[], th: number[], wd: number): number[] {
  return g.map((gi, i) => gi + wd * th[i]);
}

/** sqrt(x) + eps, or sqrt(x + eps) with eps_in_sqrt (optax, Keras). */
const root = (h: H, x: number) => (h.eps_in_sqrt ? Math.sqrt(x + n(h, 'eps')) : Math.sqrt(x) + n(h, 'eps'));

const norm = (x: number[]) => Math.sqrt(x.reduce((a, v) => a + v * v, 0));
/** optax's trust ratio: tc ||theta|| / (||u|| + eps), 1 when either norm is 0. */
function trust(th: number[], u: number[], tc: number, eps: number): number {
  const pn = norm(th),
    un = norm(u);
  return pn === 0 || un === 0 ? 1 : (tc * pn) / (un + eps);
}

/** lr_in_momentum: d is the step the buffer makes divided by the current lr (0 at lr = 0). */
const perLr = (h: H, x: number) => (n(h, 'lr') > 0 ? x / n(h, 'lr') : 0);

/** a (r x k) times b (k x c), row-major, in float64. */
function matmul(a: number[], b: number[], r: number, k: number, c: number): number[] {
  const out = filled(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) for (let q = 0; q < k; q++) out[i * c + j] += a[i * k + q] * b[q * c + j];
  return out;
}
function transpose(a: number[], r: number, c: number): number[] {
  return Array.from({ length: r * c }, (_, i) => a[(i % r) * c + Math.floor(i / r)]);
}

/** Muon's Newton-Schulz orthogonalisation of a rows x cols matrix (docs/update-rules.md), in float64. */
function newtonSchulz(u: number[], rows: number, cols: number, h: H): number[] {
  const [a, b, c] = h.ns_coefficients as number[];
  const tall = rows > cols;
  const m = tall ? cols : rows,
    k = tall ? rows : cols;
  let x = tall ? transpose(u, rows, cols) : [...u];
  const nrm = Math.max(norm(x), n(h, 'eps'));
  x = x.map((v) => v / nrm);
  for (let s = 0; s < n(h, 'ns_steps'); s++) {
    const gram = matmul(x, transpose(x, m, k), m, k, m);
    const gram2 = matmul(gram, gram, m, m, m);
    const poly = gram.map((v, i) => b * v + c * gram2[i]);
    const px = matmul(poly, x, m, m, k);
    x = x.map((v, i) => a * v + px[i]);
  }
  return tall ? transpose(x, m, k) : x;
}

/**
 * How the engine stores state: `store(s)` replaces each full-size slot by its
 * stored value (bfloat16 state rounds it: reference/bf16.ts); identity for
 * float32 state.
 */
export interface Store {
  (s: RefState): void;
  /** A full-size slot's first value as stored (bfloat16: to nearest). */
  fill?: (v: number) => number;
}
const asIs: Store = () => undefined;

/**
 * One optimizer's direction; mutates `s` (the reference keeps state in place).
 * d is computed from the new state as computed (the kernel keeps it in
 * registers), except where the kernel reads it back after storing (LAMB's
 * element pass, after its norm pass). `shape`: Muon's rows x cols.
 */
export function refDirection(
  opt: string,
  g0: number[],
  th: number[],
  s: RefState,
  h: H,
  t: number,
  shape = [th.length],
  store: Store = asIs,
): Dir {
  const len = th.length;
  const wd = (h.weight_decay as number | undefined) ?? 0;
  const ensure = (k: string, v = 0) => (s[k] ??= filled(len, store.fill ? store.fill(v) : v));
  const scalar = (k: string, v: number) => (s[k] ??= [v]);
  const [b1, b2] = (h.betas as number[]) ?? [0, 0];
  switch (opt) {
    case 'sgd': {
      const g = decayed(g0, th, wd);
      const mu = n(h, 'momentum');
      if (mu === 0) return { d: g, scale: 1, decay: 1 };
      const first = s.momentum_buffer === undefined;
      const buf = ensure('momentum_buffer');
      if (h.lr_in_momentum) {
        // Keras's velocity, positive: buf = mu buf + lr g (torch's first copy and dampening kept).
        const lrNow = n(h, 'lr');
        for (let i = 0; i < len; i++) buf[i] = first ? lrNow * g[i] : mu * buf[i] + (1 - n(h, 'dampening')) * lrNow * g[i];
        const d = buf.map((b, i) => perLr(h, h.nesterov ? lrNow * g[i] + mu * b : b));
        return { d, scale: 1, decay: 1 };
      }
      for (let i = 0; i < len; i++) buf[i] = first ? g[i] : mu * buf[i] + (1 - n(h, 'dampening')) * g[i];
      return { d: h.nesterov ? g.map((gi, i) => gi + mu * buf[i]) : buf.slice(), scale: 1, decay: 1 };
    }
    case 'adam':
    case 'adamw': {
      const g = opt === 'adam' ? decayed(g0, th, wd) : g0;
      const m = ensure('exp_avg'),
        v = ensure('exp_avg_sq');
      const vmax = h.amsgrad ? ensure('max_exp_avg_sq') : v;
      const bc1 = 1 - b1 ** t,
        bc2 = 1 - b2 ** t;
      const d = filled(len);
      for (let i = 0; i < len; i++) {
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * sq(g[i]);
        if (h.amsgrad) vmax[i] = Math.max(vmax[i], v[i]);
        d[i] = h.eps_before_correction
          ? (m[i] * Math.sqrt(bc2)) / (Math.sqrt(vmax[i]) + n(h, 'eps'))
          : m[i] / (Math.sqrt(vmax[i]) / Math.sqrt(bc2) + n(h, 'eps'));
      }
      return { d, scale: 1 / bc1, decay: opt === 'adamw' ? 1 - n(h, 'lr') * wd : 1 };
    }
    case 'sparseadam': {
      // torch's order: m += (1-b1)(g - m), v += (1-b2)(g^2 - v); eps outside the bias correction.
      const m = ensure('exp_avg'),
        v = ensure('exp_avg_sq');
      const d = filled(len);
      for (let i = 0; i < len; i++) {
        m[i] += (1 - b1) * (g0[i] - m[i]);
        v[i] += (1 - b2) * (sq(g0[i]) - v[i]);
        d[i] = m[i] / (Math.sqrt(v[i]) + n(h, 'eps'));
      }
      return { d, scale: Math.sqrt(1 - b2 ** t) / (1 - b1 ** t), decay: 1 };
    }
    case 'adagrad': {
      const g = decayed(g0, th, wd);
      const sum = ensure('sum', n(h, 'initial_accumulator_value'));
      const d = g.map((gi, i) => {
        sum[i] += sq(gi);
        return gi / root(h, sum[i]);
      });
      return { d, scale: 1 / (1 + (t - 1) * n(h, 'lr_decay')), decay: 1 };
    }
    case 'rmsprop': {
      const g = decayed(g0, th, wd);
      const a = n(h, 'alpha');
      const sqa = ensure('square_avg');
      const ga = h.centered ? ensure('grad_avg') : null;
      const mu = n(h, 'momentum');
      const buf = mu > 0 ? ensure('momentum_buffer') : null;
      const d = filled(len);
      for (let i = 0; i < len; i++) {
        sqa[i] = a * sqa[i] + (1 - a) * sq(g[i]);
        let avg: number;
        if (ga) {
          ga[i] = a * ga[i] + (1 - a) * g[i];
          avg = root(h, sqa[i] - sq(ga[i]));
        } else avg = root(h, sqa[i]);
        if (buf && h.lr_in_momentum) {
          buf[i] = mu * buf[i] + (n(h, 'lr') * g[i]) / avg;
          d[i] = perLr(h, buf[i]);
        } else if (buf) d[i] = buf[i] = mu * buf[i] + g[i] / avg;
        else d[i] = g[i] / avg;
      }
      return { d, scale: 1, decay: 1 };
    }
    case 'adamax': {
      const g = decayed(g0, th, wd);
      const m = ensure('exp_avg'),
        u = ensure('exp_inf');
      const d = g.map((gi, i) => {
        m[i] = b1 * m[i] + (1 - b1) * gi;
        u[i] = Math.max(b2 * u[i], Math.abs(gi) + n(h, 'eps'));
        return m[i] / u[i];
      });
      return { d, scale: 1 / (1 - b1 ** t), decay: 1 };
    }
    case 'nadam': {
      const g = h.decoupled_weight_decay ? g0 : decayed(g0, th, wd);
      const psi = n(h, 'momentum_decay');
      const mu = b1 * (1 - 0.5 * 0.96 ** (t * psi));
      const mu1 = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi));
      const prod = ensure('mu_product', 1);
      prod[0] *= mu; // one number, kept as state like the product in torch
      const m = ensure('exp_avg'),
        v = ensure('exp_avg_sq');
      const bc2 = 1 - b2 ** t;
      const d = g.map((gi, i) => {
        m[i] = b1 * m[i] + (1 - b1) * gi;
        v[i] = b2 * v[i] + (1 - b2) * sq(gi);
        const denom = Math.sqrt(v[i] / bc2) + n(h, 'eps');
        return ((1 - mu) / (1 - prod[0])) * (gi / denom) + (mu1 / (1 - prod[0] * mu1)) * (m[i] / denom);
      });
      return { d, scale: 1, decay: h.decoupled_weight_decay ? 1 - n(h, 'lr') * wd : 1 };
    }
    case 'radam': {
      const g = h.decoupled_weight_decay ? g0 : decayed(g0, th, wd);
      const m = ensure('exp_avg'),
        v = ensure('exp_avg_sq');
      const bc2 = 1 - b2 ** t;
      const rhoInf = 2 / (1 - b2) - 1;
      const rho = rhoInf - (2 * t * b2 ** t) / bc2;
      const rect = rho > 5 ? Math.sqrt(((rho - 4) * (rho - 2) * rhoInf) / ((rhoInf - 4) * (rhoInf - 2) * rho)) : 0;
      const d = g.map((gi, i) => {
        m[i] = b1 * m[i] + (1 - b1) * gi;
        v[i] = b2 * v[i] + (1 - b2) * sq(gi);
        return rho > 5 ? (m[i] * rect * Math.sqrt(bc2)) / (Math.sqrt(v[i]) + n(h, 'eps')) : m[i];
      });
      return { d, scale: 1 / (1 - b1 ** t), decay: h.decoupled_weight_decay ? 1 - n(h, 'lr') * wd : 1 };
    }
    case 'adadelta': {
      const g = decayed(g0, th, wd);
      const rho = n(h, 'rho'),
        e = n(h, 'eps');
      const sa = ensure('square_avg'),
        acc = ensure('acc_delta');
      const d = g.map((gi, i) => {
        sa[i] = rho * sa[i] + (1 - rho) * sq(gi);
        const di = (Math.sqrt(acc[i] + e) / Math.sqrt(sa[i] + e)) * gi;
        acc[i] = rho * acc[i] + (1 - rho) * sq(di);
        return di;
      });
      return { d, scale: 1, decay: 1 };
    }
    case 'lion': {
      const m = ensure('exp_avg');
      const d = g0.map((gi, i) => {
        const c = b1 * m[i] + (1 - b1) * gi;
        m[i] = b2 * m[i] + (1 - b2) * gi;
        return Math.sign(c);
      });
      return { d, scale: 1, decay: 1 - n(h, 'lr') * wd };
    }
    case 'rprop': {
      // torch's Rprop: the step is sign(g') step_size; d carries it in units of lr.
      const [etaMinus, etaPlus] = h.etas as number[];
      const [lo, hi] = h.step_sizes as number[];
      const prev = ensure('prev'),
        size = ensure('step_size', n(h, 'lr'));
      const d = g0.map((gi, i) => {
        const s0 = Math.sign(gi * prev[i]);
        size[i] = Math.min(hi, Math.max(lo, size[i] * (s0 > 0 ? etaPlus : s0 < 0 ? etaMinus : 1)));
        prev[i] = s0 < 0 ? 0 : gi;
        return perLr(h, Math.sign(prev[i]) * size[i]);
      });
      return { d, scale: 1, decay: 1 };
    }
    case 'asgd': {
      // torch's ASGD: theta (1 - lambd eta) - eta g', with eta and mu of the previous step.
      const g = decayed(g0, th, wd);
      const lrNow = n(h, 'lr'),
        lambd = n(h, 'lambd');
      const eta = scalar('eta', lrNow),
        mu = scalar('mu', 1),
        ax = ensure('ax');
      const [etaUsed, muUsed] = [eta[0], mu[0]];
      eta.fill(lrNow / (1 + lambd * lrNow * t) ** n(h, 'alpha'));
      mu.fill(1 / Math.max(1, t - n(h, 't0')));
      const after = (next: number[]) => next.forEach((v, i) => (ax[i] = muUsed === 1 ? v : ax[i] + muUsed * (v - ax[i])));
      return { d: g, scale: lrNow > 0 ? etaUsed / lrNow : 0, decay: 1 - lambd * etaUsed, after };
    }
    case 'lamb': {
      // optax.lamb: Adam's corrected update plus wd theta, times ||theta|| / ||u||.
      const m = ensure('exp_avg'),
        v = ensure('exp_avg_sq');
      const bc1 = 1 - b1 ** t,
        bc2 = 1 - b2 ** t;
      const u = g0.map((gi, i) => {
        m[i] = b1 * m[i] + (1 - b1) * gi;
        v[i] = b2 * v[i] + (1 - b2) * sq(gi);
        return m[i] / bc1 / (Math.sqrt(v[i] / bc2) + n(h, 'eps')) + wd * th[i];
      });
      const r = trust(th, u, 1, 0);
      store(s); // the element pass reads the stored moments
      const d = th.map((x, i) => (m[i] / bc1 / (Math.sqrt(v[i] / bc2) + n(h, 'eps')) + wd * x) * r);
      return { d, scale: 1, decay: 1 };
    }
    case 'lars': {
      // optax.lars: (g + wd theta) times tc ||theta|| / (||u|| + eps), then a trace of the lr-scaled steps.
      const u = decayed(g0, th, wd);
      const r = trust(th, u, n(h, 'trust_coefficient'), n(h, 'eps'));
      const mu = n(h, 'momentum'),
        lrNow = n(h, 'lr');
      const buf = ensure('momentum_buffer');
      const d = u.map((x, i) => {
        const lw = lrNow * r * x;
        buf[i] = mu * buf[i] + lw;
        return perLr(h, h.nesterov ? lw + mu * buf[i] : buf[i]);
      });
      return { d, scale: 1, decay: 1 };
    }
    case 'adafactor':
      return adafactor(g0, th, s, h, t, shape);
    case 'muon': {
      // torch.optim.Muon: buf = lerp(buf, g, 1 - mu); u = nesterov ? lerp(g, buf, mu) : buf; d = NS(u).
      const mu = n(h, 'momentum');
      const buf = ensure('momentum_buffer');
      const u = g0.map((gi, i) => {
        buf[i] = mu * buf[i] + (1 - mu) * gi;
        return h.nesterov ? (1 - mu) * gi + mu * buf[i] : buf[i];
      });
      const [A, B] = shape;
      const fn = h.adjust_lr_fn ?? 'original';
      const scale =
        fn === 'match_rms_adamw'
          ? 0.2 * Math.sqrt(Math.max(A, B))
          : fn === 'spectral_unclamped'
            ? Math.sqrt(A / B)
            : Math.sqrt(Math.max(1, A / B));
      return { d: newtonSchulz(u, A, B, h), scale, decay: 1 - n(h, 'lr') * wd };
    }
  }
  throw new Error(`reference: no optimizer ${opt}`);
}

/** torch.lerp: a + w (b - a). */
const lerp = (a: number, b: number, w: number) => a + w * (b - a);

/**
 * torch.optim.Adafactor, element by element: for >= 2 dims [B, R, C] the row
 * means (over C) and column means (over R) of g^2 per matrix; a vector keeps
 * g^2's average whole. d = max(eps2, rms(theta)) u / max(1, rms(u) / d),
 * scale = min(lr, 1/sqrt(t)) / lr, decay 1 - lr wd.
 */
function adafactor(g: number[], th: number[], s: RefState, h: H, t: number, shape: number[]): Dir {
  const len = th.length;
  const [e1, eps2] = h.eps as [number | null, number];
  const eps1 = e1 ?? 2 ** -23;
  const w = t ** n(h, 'beta2_decay');
  const v = new Array<number>(len);
  if (shape.length >= 2) {
    const C = shape[shape.length - 1],
      R = shape[shape.length - 2],
      B = len / (R * C);
    const row = (s.row_var ??= filled(B * R)),
      col = (s.col_var ??= filled(B * C));
    for (let b = 0; b < B; b++) {
      for (let r = 0; r < R; r++) {
        let a = 0;
        for (let c = 0; c < C; c++) a += sq(g[(b * R + r) * C + c]);
        row[b * R + r] = lerp(row[b * R + r], a / C, w);
      }
      for (let c = 0; c < C; c++) {
        let a = 0;
        for (let r = 0; r < R; r++) a += sq(g[(b * R + r) * C + c]);
        col[b * C + c] = lerp(col[b * C + c], a / R, w);
      }
      let mean = 0;
      for (let r = 0; r < R; r++) mean += row[b * R + r] / R;
      for (let r = 0; r < R; r++)
        for (let c = 0; c < C; c++) v[(b * R + r) * C + c] = (row[b * R + r] * col[b * C + c]) / Math.max(mean, eps1);
    }
  } else {
    const va = (s.variance ??= filled(len));
    g.forEach((gi, i) => (v[i] = va[i] = lerp(va[i], sq(gi), w)));
  }
  const u = g.map((gi, i) => gi / Math.sqrt(Math.max(v[i], eps1 * eps1)));
  const rms = (x: number[]) => norm(x) / Math.sqrt(len);
  const k = Math.max(eps2, rms(th)) / Math.max(1, rms(u) / n(h, 'd'));
  const lr = n(h, 'lr');
  return { d: u.map((x) => x * k), scale: lr > 0 ? Math.min(lr, 1 / Math.sqrt(t)) / lr : 0, decay: 1 - lr * n(h, 'weight_decay') };
}

/** One step of optimizer x rule on theta (returns the new theta; mutates state). */
export function refStep(
  opt: string,
  rule: string,
  th: number[],
  g: number[],
  s: RefState,
  rs: RefState,
  h: H,
  t: number,
  shape = [th.length],
  store: Store = asIs,
): number[] {
  if (opt === 'schedule_free_adamw') return scheduleFree(rule, th, g, s, h, t, rs, store);
  const { after, ...dir } = refDirection(opt, g, th, s, h, t, shape, store);
  store(s);
  const next = refRule(rule, th, dir, rs, h);
  after?.(next);
  store(s);
  return next;
}

/** optax's warmup_constant_schedule(0, lr, W) at count k, over lr: min(k, W) / W (1 at W = 0). */
const warmup = (k: number, w: number) => (w > 0 ? Math.min(k, w) / w : 1);

/**
 * optax.contrib.schedule_free_adamw with the rule acting on z: theta is y,
 * x = (y - (1-b1) z) / b1. The base step (z) takes the warmup at t-1, the
 * averaging weight max_lr^p at t, as optax's two schedule counts.
 */
function scheduleFree(rule: string, y: number[], g: number[], s: RefState, h: H, t: number, rs: RefState, store: Store = asIs): number[] {
  const [b1, b2] = h.betas as number[];
  const W = n(h, 'warmup_steps');
  const z = (s.z ??= [...y]);
  const v = (s.exp_avg_sq ??= filled(y.length));
  const ws = (s.weight_sum ??= [0]);
  const ml = (s.max_lr ??= [0]);
  const bc2 = 1 - b2 ** t;
  const d = g.map((gi, i) => {
    v[i] = b2 * v[i] + (1 - b2) * gi * gi;
    return gi / (Math.sqrt(v[i] / bc2) + n(h, 'eps')) + n(h, 'weight_decay') * y[i];
  });
  const zNew = refRule(rule, z, { d, scale: warmup(t - 1, W), decay: 1 }, rs, h);
  ml[0] = Math.max(ml[0], n(h, 'lr') * warmup(t, W));
  const w = ml[0] ** n(h, 'weight_lr_power');
  ws[0] += w;
  const c = ws[0] > 0 ? w / ws[0] : 0;
  const next = y.map((yi, i) => {
    const x = (yi - (1 - b1) * z[i]) / b1;
    return b1 * ((1 - c) * x + c * zNew[i]) + (1 - b1) * zNew[i];
  });
  zNew.forEach((v2, i) => (z[i] = v2));
  store(s); // exp_avg_sq as stored (z is float32 whatever the state dtype)
  return next;
}

/** The rule's new theta from the direction (theta before any decay). */
function refRule(rule: string, th: number[], { d, scale, decay }: Dir, rs: RefState, h: H): number[] {
  const x = th.map((v) => v * decay);
  const eta = n(h, 'lr') * scale;
  switch (rule) {
    case 'additive':
      return x.map((v, i) => v - eta * d[i]);
    case 'multiplicative':
      return x.map((v, i) => v - n(h, 'lr_out') * scale * Math.abs(v) * Math.tanh(n(h, 'lr_in') * d[i]));
    case 'hybrid': {
      const gm = n(h, 'gamma');
      return x.map((v, i) => v - (gm * n(h, 'lr_out') * scale * Math.abs(v) * Math.tanh(n(h, 'lr_in') * d[i]) + (1 - gm) * eta * d[i]));
    }
    case 'exp_sign': {
      if (!rs.bound) {
        // the bound comes from theta_0 (before any decay of the first step)
        const rms = Math.sqrt(th.reduce((a, v) => a + v * v, 0) / th.length);
        rs.bound = [n(h, 'p_scale') * rms];
      }
      const B = rs.bound[0],
        gb = n(h, 'g_bound');
      return x.map((v, i) => {
        const di = Math.min(gb, Math.max(-gb, d[i]));
        const next = v * Math.exp(-eta * Math.sign(v) * di);
        return Math.min(B, Math.max(-B, next));
      });
    }
  }
  throw new Error(`reference: no rule ${rule}`);
}

/** The first value of a slot the optimizers that take row-sparse gradients keep (its untouched rows hold it). */
const FIRST: Record<string, (h: H) => number> = {
  exp_avg: () => 0,
  exp_avg_sq: () => 0,
  sum: (h) => n(h, 'initial_accumulator_value'),
};

/**
 * One row-sparse step: `rows` (of `rowLen` elements each) get the dense step
 * with their gradient `gRows` (packed); every other row of theta and of the
 * state keeps its value. Computed as the dense step on a copy with the
 * gradient scattered (zeros elsewhere), kept at the touched rows only; a rule
 * state (exp_sign's bound) comes from the whole theta, as dense.
 */
export function refSparseStep(
  opt: string,
  rule: string,
  th: number[],
  rows: number[],
  gRows: number[],
  rowLen: number,
  s: RefState,
  rs: RefState,
  h: H,
  t: number,
): number[] {
  const g = filled(th.length);
  rows.forEach((r, k) => {
    for (let e = 0; e < rowLen; e++) g[r * rowLen + e] = gRows[k * rowLen + e];
  });
  const before: RefState = Object.fromEntries(Object.entries(s).map(([k, v]) => [k, v.slice()]));
  const next = refStep(opt, rule, th, g, s, rs, h, t);
  const touched = new Set(rows);
  const keep = (i: number) => !touched.has(Math.floor(i / rowLen));
  for (const [k, v] of Object.entries(s)) {
    if (v.length !== th.length) continue;
    const old = before[k] ?? filled(th.length, FIRST[k](h));
    for (let i = 0; i < v.length; i++) if (keep(i)) v[i] = old[i];
  }
  return next.map((v, i) => (keep(i) ? th[i] : v));
}
