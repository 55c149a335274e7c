// The plain-number reference of docs/update-rules.md: float64, element by element,
// no tfjs. It is written independently of src/ (one loop per element, the
// formulas as the document states them) so that the two check each other.
export type H = Record<string, number | boolean | number[]>;
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

/** One optimizer's direction; mutates `s` (the reference keeps state in place). */
export function refDirection(opt: string, g0: number[], th: number[], s: RefState, h: H, t: number): Dir {
  const len = th.length;
  const wd = (h.weight_decay as number | undefined) ?? 0;
  const ensure = (k: string, v = 0) => (s[k] ??= filled(len, v));
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
      return { d: u.map((x) => x * r), scale: 1, decay: 1 };
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
  }
  throw new Error(`reference: no optimizer ${opt}`);
}

/** One step of optimizer x rule on theta (returns the new theta; mutates state). */
export function refStep(opt: string, rule: string, th: number[], g: number[], s: RefState, rs: RefState, h: H, t: number): number[] {
  const { after, ...dir } = refDirection(opt, g, th, s, h, t);
  const next = refRule(rule, th, dir, rs, h);
  after?.(next);
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
